"""An HTTP proxy in front of moto that speaks Cloudflare R2's S3 dialect (strict), for tests.

    with R2Proxy(("127.0.0.1", moto_port)) as r2:
        ... point an S3 client at r2.endpoint, region "auto" ...
        assert r2.refused == {}                # or e.g. {"part-sha256": 1}

What it enforces (SPEC section 3: R2's documentation plus a live probe of R2):

* ``sha256/sha1 on a part``: an UploadPart carrying ``x-amz-checksum-sha256`` or
  ``x-amz-checksum-sha1`` (or announcing either with ``x-amz-sdk-checksum-algorithm``
  or as a trailer) is answered ``501 NotImplemented``, whatever the digest.
* ``checksums``: ``x-amz-checksum-crc32``, ``-crc32c`` and ``Content-MD5`` are
  verified on parts, and those plus ``x-amz-checksum-sha256`` on a single PutObject,
  as R2 does: a mismatch is ``400 BadDigest`` and nothing is stored. (moto
  verifies none of them.)
* ``part numbers``: 1 to 10,000, else ``400 InvalidArgument``.
* ``part sizes``: at CompleteMultipartUpload every part but the last has the same
  size, at least 5 MiB, and the last is no larger, else ``400 InvalidPart`` /
  ``EntityTooSmall`` (sizes as this proxy saw them; the smallest size is a knob,
  :attr:`R2Proxy.min_part_size`, for tests that want small parts).
* ``region``: an S3 request signed for a region other than ``auto`` (in the
  ``Authorization`` header or a presigned URL) is ``400 AuthorizationHeaderMalformed``.
  Other services (moto's IAM, its own ``/moto-api``) pass untouched.

Every refusal is counted in :attr:`R2Proxy.refused` by rule name. A client that
drops a request mid-body (a pause, a fault proxy in front) forwards nothing.
Keep-alive connections are kept on both sides.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import re
import threading
import time
import urllib.parse
import zlib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from xml.etree import ElementTree

__all__ = ["R2Proxy"]

MiB = 1 << 20
_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "expect"}
_CRED_RE = re.compile(r"Credential=([^,\s]+)")


def crc32c(data: bytes | memoryview, value: int = 0) -> int:
    import google_crc32c

    return int(google_crc32c.extend(value, bytes(data)))


def _b64_int(value: int) -> str:
    return base64.b64encode(value.to_bytes(4, "big")).decode()


class _Refusal(Exception):
    def __init__(self, rule: str, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.rule, self.status, self.code, self.message = rule, status, code, message


class R2Proxy:
    """127.0.0.1:<port> → ``target`` (moto), refusing what R2 refuses; see the module docstring."""

    def __init__(self, target: tuple[str, int], *, min_part_size: int = 5 * MiB) -> None:
        self.target = target
        self.min_part_size = min_part_size
        self.refused: Counter[str] = Counter()
        #: UploadParts that went through to moto
        self.parts_sent = 0
        #: UploadParts being relayed right now, and the most at once (how many parts a client keeps in flight)
        self.parts_in_flight = 0
        self.parts_in_flight_max = 0
        #: seconds each UploadPart is held before it is relayed (a slow uplink; 0: none)
        self.part_hold_s = 0.0
        #: (upload id, part number) -> size, as the parts went through
        self._parts: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.host = "127.0.0.1"
        self.port = int(self._server.server_address[1])
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="r2proxy", daemon=True)

    def refuse(self, rule: str) -> None:
        with self._lock:
            self.refused[rule] += 1

    def start(self) -> R2Proxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> R2Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the rules ----------------------------------------------------------------------

    def check_head(self, method: str, query: dict[str, str], headers: Any) -> None:
        """What can be refused before the body is read."""
        region = _signing_region(headers, query)
        if region is not None and region != "auto":
            raise _Refusal(
                "region", 400, "AuthorizationHeaderMalformed",
                f"The authorization header is malformed; invalid region: '{region}'; expected 'auto'",
            )
        if method == "PUT" and "uploadId" in query and "partNumber" in query:
            announced = {
                (headers.get("x-amz-sdk-checksum-algorithm") or "").lower(),
                *(t.strip().lower() for t in (headers.get("x-amz-trailer") or "").split(",")),
            }
            if (
                headers.get("x-amz-checksum-sha256") is not None
                or headers.get("x-amz-checksum-sha1") is not None
                or announced & {"sha256", "sha1", "x-amz-checksum-sha256", "x-amz-checksum-sha1"}
            ):
                raise _Refusal(
                    "part-sha256", 501, "NotImplemented",
                    "Header 'x-amz-checksum-sha256' with UploadPart is not implemented"
                )
            try:
                number = int(query["partNumber"])
            except ValueError:
                number = 0
            if not 1 <= number <= 10_000:
                raise _Refusal(
                    "part-number", 400, "InvalidArgument",
                    "Part number must be an integer between 1 and 10000, inclusive"
                )

    def check_body(self, method: str, query: dict[str, str], headers: Any, body: bytes) -> None:
        if method != "PUT" or headers.get("x-amz-copy-source"):
            return
        part = "uploadId" in query and "partNumber" in query
        if not part and "/" not in _key_path(query.get("_path", "")):
            return  # CreateBucket and other bucket-level PUTs
        checks: list[tuple[str, str, Any]] = [
            ("content-md5", "md5", lambda: base64.b64encode(hashlib.md5(body).digest()).decode()),
            ("x-amz-checksum-crc32c", "crc32c", lambda: _b64_int(crc32c(body))),
            ("x-amz-checksum-crc32", "crc32", lambda: _b64_int(zlib.crc32(body))),
        ]
        if not part:
            checks.append(
                ("x-amz-checksum-sha256", "sha256", lambda: base64.b64encode(hashlib.sha256(body).digest()).decode())
            )
        for header, name, compute in checks:
            given = headers.get(header)
            if given is not None and given.strip() != compute():
                raise _Refusal(
                    f"bad-{name}", 400, "BadDigest", f"The {header} you specified did not match what we received."
                )

    def part_started(self) -> None:
        with self._lock:
            self.parts_in_flight += 1
            self.parts_in_flight_max = max(self.parts_in_flight_max, self.parts_in_flight)
        if self.part_hold_s:
            time.sleep(self.part_hold_s)

    def part_ended(self) -> None:
        with self._lock:
            self.parts_in_flight -= 1

    def note_part(self, query: dict[str, str], size: int) -> None:
        with self._lock:
            self.parts_sent += 1
            self._parts[(query["uploadId"], int(query["partNumber"]))] = size

    def check_complete(self, query: dict[str, str], body: bytes) -> None:
        upload_id = query["uploadId"]
        try:
            root = ElementTree.fromstring(body)
        except ElementTree.ParseError:
            return  # moto answers MalformedXML
        numbers = [int(el.text or 0) for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "PartNumber"]
        with self._lock:
            sizes = [self._parts.get((upload_id, n)) for n in numbers]
        if not sizes or any(s is None for s in sizes):
            return  # parts this proxy did not see: moto decides
        known = [int(s) for s in sizes if s is not None]
        first, last = known[0], known[-1]
        if len(known) > 1 and first < self.min_part_size:
            raise _Refusal(
                "part-too-small", 400, "EntityTooSmall",
                "Your proposed upload is smaller than the minimum allowed object size.",
            )
        if any(s != first for s in known[:-1]) or last > first:
            raise _Refusal("part-sizes", 400, "InvalidPart", "All non-trailing parts must have the same length.")

    def forget_upload(self, upload_id: str) -> None:
        with self._lock:
            for k in [k for k in self._parts if k[0] == upload_id]:
                del self._parts[k]


def _key_path(path: str) -> str:
    """``bucket/key`` of a path-style request path (leading slash dropped)."""
    return urllib.parse.unquote(path.lstrip("/"))


def _signing_region(headers: Any, query: dict[str, str]) -> str | None:
    """The region of an S3 SigV4 credential scope, if the request is S3 and signed."""
    cred = query.get("X-Amz-Credential")
    if cred is None:
        m = _CRED_RE.search(headers.get("authorization") or "")
        cred = m.group(1) if m else None
    if cred is None:
        return None
    scope = cred.split("/")
    if len(scope) < 5 or scope[-2] != "s3":
        return None
    return scope[-3]


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that resets its connection (a pause, a fault proxy) is no news


class _Handler(BaseHTTPRequestHandler):
    owner: R2Proxy
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes: no 40 ms delayed-ACK stall
    _upstream: http.client.HTTPConnection | None = None

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        pass

    def _query(self) -> dict[str, str]:
        parsed = urllib.parse.urlsplit(self.path)
        q = {k: v[-1] for k, v in urllib.parse.parse_qs(parsed.query, keep_blank_values=True).items()}
        q["_path"] = parsed.path
        return q

    def handle_expect_100(self) -> bool:
        try:
            self.owner.check_head(self.command, self._query(), self.headers)
        except _Refusal as r:
            self._refuse(r, close=True)
            return False
        return super().handle_expect_100()

    def _refuse(self, r: _Refusal, *, close: bool = False) -> None:
        self.owner.refuse(r.rule)
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>'
            f"<Error><Code>{r.code}</Code><Message>{r.message}</Message></Error>"
        ).encode()
        self.send_response(r.status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _read_body(self) -> bytes | None:
        """The whole request body, or None if the client went away before its end."""
        if (self.headers.get("transfer-encoding") or "").lower() == "chunked":
            out = bytearray()
            while True:
                line = self.rfile.readline()
                if not line:
                    return None
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                chunk = self.rfile.read(size + 2)
                if len(chunk) < size + 2:
                    return None
                out += chunk[:size]
        n = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(n) if n else b""
        return body if len(body) == n else None

    def _relay(self) -> None:
        owner = self.owner
        query = self._query()
        try:
            if "expect" not in self.headers:
                owner.check_head(self.command, query, self.headers)
        except _Refusal as r:
            if self._read_body() is None:
                self.close_connection = True
                return
            self._refuse(r)
            return
        body = self._read_body()
        if body is None:  # cut mid-body: forward nothing
            self.close_connection = True
            return
        try:
            owner.check_body(self.command, query, self.headers, body)
            if self.command == "POST" and "uploadId" in query:
                owner.check_complete(query, body)
        except _Refusal as r:
            self._refuse(r)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        is_part = self.command == "PUT" and "uploadId" in query and "partNumber" in query
        if is_part:
            owner.part_started()
        try:
            resp = self._upstream_request(headers, body)
        except OSError:
            self.close_connection = True
            return
        finally:
            if is_part:
                owner.part_ended()
        status = resp.status
        if status == 200 and self.command == "PUT" and "uploadId" in query and "partNumber" in query:
            owner.note_part(query, len(body))
        elif status in (200, 204) and "uploadId" in query and self.command in ("POST", "DELETE"):
            owner.forget_upload(query["uploadId"])
        self.send_response_only(status, resp.reason)
        length = resp.getheader("content-length")
        for k, v in resp.getheaders():
            if k.lower() in _HOP or k.lower() in ("content-length", "date", "server"):
                continue
            self.send_header(k, v)
        data: bytes | None = None
        if length is None and self.command != "HEAD":
            data = resp.read()
            length = str(len(data))
        if length is not None:
            self.send_header("Content-Length", length)
        self.end_headers()
        if self.command == "HEAD":
            resp.read()
        elif data is not None:
            self.wfile.write(data)
        else:
            while chunk := resp.read(256 << 10):
                self.wfile.write(chunk)
        if resp.will_close:
            self._drop_upstream()

    def _upstream_request(self, headers: dict[str, str], body: bytes) -> http.client.HTTPResponse:
        for attempt in (0, 1):
            if self._upstream is None:
                self._upstream = http.client.HTTPConnection(*self.owner.target, timeout=300)
            try:
                self._upstream.request(self.command, self.path, body=body or None, headers=headers)
                return self._upstream.getresponse()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self._drop_upstream()  # a stale keep-alive connection: once more on a fresh one
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _drop_upstream(self) -> None:
        if self._upstream is not None:
            with contextlib.suppress(OSError):
                self._upstream.close()
            self._upstream = None

    def finish(self) -> None:
        self._drop_upstream()
        with contextlib.suppress(OSError):
            super().finish()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay
