"""Part-level S3 uploads over botocore: resumable multipart and cuttable single PUTs.

obstore (the rest of the store layer) streams a multipart upload as one call:
it owns the upload id and the parts, so an interrupted upload can only start
again from byte zero, and a request in flight cannot be stopped. boto3's
low-level client exposes each step (CreateMultipartUpload, UploadPart,
ListParts, CompleteMultipartUpload, AbortMultipartUpload), so the uploader can
record every confirmed part and, after a pause or a crash, continue the same
upload. It stays inside ``ursa_daemon.store``: callers see
:class:`~ursa_daemon.store.base.MultipartStore` and ``ursa_daemon.errors``.

How a request is sent:

* ``payload_signing_enabled=False``: the SigV4 signature does not cover the
  body (``UNSIGNED-PAYLOAD``), so botocore never reads a body to hash it;
  integrity is a checksum header the caller computed when it hashed the file
  and the server verifies: ``x-amz-checksum-crc32c`` on each part (R2 answers
  501 to a part carrying ``x-amz-checksum-sha256``; it takes CRC32, CRC32C and
  Content-MD5), ``x-amz-checksum-sha256`` on a single PUT. A mismatch (the file
  changed since it was hashed) is ``BadDigest``: :class:`ChecksumMismatch`.
* ``request_checksum_calculation="when_required"``: botocore adds no checksum
  of its own (it would read the body ahead, or switch to aws-chunked trailers).
* Bodies are file objects the HTTP layer reads in small slices; an exception
  from ``read`` (a pause) leaves urllib3 mid-request: it closes the connection
  and the server stops receiving at once. That exception is re-raised
  unchanged. Data connections close with a reset (``SO_LINGER`` 0): what the
  kernel still held of a cut request is dropped instead of trickling out
  over a slow uplink.
* Two clients share one botocore session per credential: control calls retry
  transient errors (botocore ``standard`` mode); data calls (parts, PUTs) try
  once, because their caller retries with a backoff it can cancel.

ListMultipartUploads returns each upload's ``Initiated`` time and the server's
``Date`` (:class:`~ursa_daemon.store.base.MultipartUpload`), so a caller can age
an upload by the server's clock; a timestamp the server garbles parses to None
(the clients' timestamp parser is lenient) instead of failing the call.

boto3 is imported on the first call, so processes that never upload a large
file do not pay for it. Secrets are only in the client's credential object;
every message is redacted with :func:`~ursa_daemon.store._errors.redact`.
"""

from __future__ import annotations

import base64
import email.utils
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from ursa_daemon.errors import (
    ChecksumMismatch,
    ObjectNotFound,
    StoreError,
    StorePermissionError,
    TransientStoreError,
    UploadGone,
)
from ursa_daemon.store._errors import redact
from ursa_daemon.store.base import CompletedPart, MultipartUpload, PartInfo, StreamBody

__all__ = ["BotoMultipart", "b64_crc32c", "b64_sha256"]

#: attempts of a control call (create, list, complete, abort) before it fails
DEFAULT_CONTROL_ATTEMPTS = 5
#: connections per client: files at once x parts in flight, with room to spare
DEFAULT_MAX_POOL = 64

#: what servers answer a body whose checksum header does not match it
_DIGEST_CODES = frozenset({"BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch", "XAmzContentSHA256Mismatch"})
_TRANSIENT_CODES = frozenset(
    {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "TooManyRequests", "Throttling"}
)
_clients: dict[tuple[Any, ...], tuple[Any, Any]] = {}
_clients_lock = threading.Lock()


def b64_sha256(hex_digest: str) -> str:
    """The base64 form S3's ``x-amz-checksum-sha256`` wants of a hex sha256."""
    return base64.b64encode(bytes.fromhex(hex_digest)).decode("ascii")


def b64_crc32c(value: int) -> str:
    """The base64 form of a CRC32C (big-endian, as ``x-amz-checksum-crc32c`` wants)."""
    return base64.b64encode(value.to_bytes(4, "big")).decode("ascii")


def _make_clients(
    endpoint: str,
    region: str,
    access_key_id: str,
    secret_access_key: str,
    session_token: str | None,
    connect_timeout: float,
    read_timeout: float,
) -> tuple[Any, Any]:
    import boto3
    import botocore.session
    from botocore.config import Config

    core = botocore.session.get_session()
    # a timestamp the server garbles (ListMultipartUploads' Initiated) is None, not a failed call
    core.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_lenient_timestamp)
    session = boto3.session.Session(
        botocore_session=core,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        aws_session_token=session_token,
        region_name=region,
    )

    def config(attempts: int) -> Any:
        return Config(
            signature_version="s3v4",
            s3={"addressing_style": "path", "payload_signing_enabled": False},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": attempts, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            max_pool_connections=DEFAULT_MAX_POOL,
            tcp_keepalive=True,
        )

    control = session.client("s3", endpoint_url=endpoint, config=config(DEFAULT_CONTROL_ATTEMPTS))
    data = session.client("s3", endpoint_url=endpoint, config=config(1))
    _reset_on_close(data)
    _send_blocks(data)
    return control, data


def _lenient_timestamp(value: Any) -> datetime | None:
    """botocore's timestamp parser, but None for a value it cannot parse (it would raise)."""
    from botocore.utils import parse_timestamp

    try:
        return parse_timestamp(value)  # type: ignore[no-any-return]
    except (ValueError, TypeError, OverflowError, RuntimeError):
        return None


def _aware(value: object) -> datetime | None:
    """``value`` as a timezone-aware datetime (a naive one is taken as UTC); None if it is none."""
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _server_date(resp: dict[str, Any]) -> datetime | None:
    """The ``Date`` header of a botocore response: the server's clock when it answered."""
    header = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    if not isinstance(header, str):
        return None
    try:
        return _aware(email.utils.parsedate_to_datetime(header))
    except (ValueError, TypeError, IndexError):
        return None


#: bytes http.client asks a request body for per read: botocore's 128 KiB cost ~5 % more client
#: CPU per GiB (twice the reads, limiter grants, checksum updates and sendall calls), 1 MiB ~4 %
#: more (a fresh 1 MiB buffer per read); matches the transfer layer's uncapped slice
SEND_BLOCK = 256 << 10


def _send_blocks(client: Any) -> None:
    """Make ``client``'s connections read request bodies in :data:`SEND_BLOCK` blocks.

    urllib3 passes its pool manager's ``connection_pool_kw`` to every connection it
    makes (``blocksize`` is a keyword of its ``HTTPConnection``); botocore has no public
    knob for it. If that ever changes, bodies are read in botocore's blocks, as before.
    """
    manager = getattr(getattr(getattr(client, "_endpoint", None), "http_session", None), "_manager", None)
    pool_kw = getattr(manager, "connection_pool_kw", None)
    if isinstance(pool_kw, dict):
        pool_kw["blocksize"] = SEND_BLOCK


def _reset_on_close(client: Any) -> None:
    """Make closing a connection of ``client`` send a reset and drop unsent bytes (``SO_LINGER`` 0).

    botocore has no public knob for socket options; its urllib3 session keeps
    them in a list it hands to each connection pool, created on first use.
    If that ever changes, connections close gracefully, as before.
    """
    session = getattr(getattr(client, "_endpoint", None), "http_session", None)
    options = getattr(session, "_socket_options", None)
    if isinstance(options, list):
        options.append((socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)))


class BotoMultipart:
    """The :class:`~ursa_daemon.store.base.MultipartStore` calls for one bucket.

    ``where`` names an object for messages (its URI); ``secrets`` are cut from
    every message. Clients are built on first use and shared by every instance
    with the same endpoint, credential and timeouts (building one costs ~0.2 s).
    """

    def __init__(
        self,
        *,
        bucket: str,
        endpoint: str,
        region: str,
        access_key_id: str,
        secret_access_key: str,
        session_token: str | None,
        checksum: bool,
        where: Callable[[str], str],
        secrets: tuple[str, ...],
        connect_timeout: float = 10.0,
        read_timeout: float = 120.0,
    ) -> None:
        self.bucket = bucket
        self.checksum = checksum
        self._where = where
        self._secrets = secrets
        self._client_key = (
            endpoint,
            region,
            access_key_id,
            secret_access_key,
            session_token,
            connect_timeout,
            read_timeout,
        )

    def _clients(self) -> tuple[Any, Any]:
        with _clients_lock:
            pair = _clients.get(self._client_key)
            if pair is None:
                pair = _clients[self._client_key] = _make_clients(*self._client_key)
            return pair

    # -- calls --------------------------------------------------------------

    def put_stream(self, key: str, body: StreamBody, *, size: int, sha256: str) -> None:
        args: dict[str, Any] = {"Metadata": {"sha256": sha256}}
        if self.checksum:
            args["ChecksumSHA256"] = b64_sha256(sha256)
        _, data = self._clients()
        with self._translating("put", key):
            data.put_object(Bucket=self.bucket, Key=key, Body=body, ContentLength=size, **args)

    def create_multipart(self, key: str, *, sha256: str | None = None) -> str:
        args: dict[str, Any] = {}
        if sha256 is not None:
            args["Metadata"] = {"sha256": sha256}
        if self.checksum:
            args["ChecksumAlgorithm"] = "CRC32C"
        control, _ = self._clients()
        with self._translating("create multipart upload", key):
            resp = control.create_multipart_upload(Bucket=self.bucket, Key=key, **args)
        return str(resp["UploadId"])

    def upload_part(self, key: str, upload_id: str, number: int, body: StreamBody, *, size: int, crc32c: int) -> str:
        args: dict[str, Any] = {}
        if self.checksum:
            args["ChecksumCRC32C"] = b64_crc32c(crc32c)
        _, data = self._clients()
        with self._translating(f"upload part {number}", key, upload=True):
            resp = data.upload_part(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
                ContentLength=size,
                **args,
            )
        return str(resp["ETag"])

    def list_parts(self, key: str, upload_id: str) -> list[PartInfo]:
        control, _ = self._clients()
        parts: list[PartInfo] = []
        marker = 0
        truncated = True
        while truncated:
            with self._translating("list parts", key, upload=True):
                resp = control.list_parts(Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker)
            for p in resp.get("Parts", []):
                parts.append(PartInfo(int(p["PartNumber"]), int(p["Size"]), str(p["ETag"]), p.get("ChecksumCRC32C")))
            truncated = bool(resp.get("IsTruncated"))
            marker = int(resp.get("NextPartNumberMarker") or 0)
        return parts

    def complete_multipart(self, key: str, upload_id: str, parts: Sequence[CompletedPart]) -> None:
        listed = []
        for p in parts:
            item: dict[str, Any] = {"PartNumber": p.number, "ETag": p.etag}
            if self.checksum:
                item["ChecksumCRC32C"] = b64_crc32c(p.crc32c)
            listed.append(item)
        control, _ = self._clients()
        with self._translating("complete multipart upload", key, upload=True):
            control.complete_multipart_upload(
                Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": listed}
            )

    def abort_multipart(self, key: str, upload_id: str) -> None:
        control, _ = self._clients()
        try:
            with self._translating("abort multipart upload", key, upload=True):
                control.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except UploadGone:
            pass

    def list_multipart(self, prefix: str) -> list[MultipartUpload]:
        control, _ = self._clients()
        out: list[MultipartUpload] = []
        args: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            with self._translating("list multipart uploads", prefix):
                resp = control.list_multipart_uploads(**args)
            listed_at = _server_date(resp)
            out.extend(
                MultipartUpload(str(u["Key"]), str(u["UploadId"]), _aware(u.get("Initiated")), listed_at)
                for u in resp.get("Uploads", [])
            )
            if not resp.get("IsTruncated"):
                return out
            args["KeyMarker"], args["UploadIdMarker"] = resp.get("NextKeyMarker"), resp.get("NextUploadIdMarker")

    # -- errors ---------------------------------------------------------------

    def _translating(self, op: str, key: str, *, upload: bool = False) -> _Translating:
        return _Translating(self, op, key, upload)

    def translate(self, exc: BaseException, op: str, key: str, *, upload: bool = False) -> BaseException:
        """The ``ursa_daemon.errors`` class for a botocore error; a body's own exception unchanged."""
        from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError

        where = self._where(key)
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            detail = redact(f"{code}: {err.get('Message', '')}".strip(": "), self._secrets)
            message = f"{op} {redact(where, self._secrets)}: {detail}"
            if code in _DIGEST_CODES:
                return ChecksumMismatch(message + " (the bytes sent do not match their checksum)", key=key)
            if code == "NoSuchUpload" or (upload and status == 404 and code != "NoSuchBucket"):
                return UploadGone(message + " (the multipart upload no longer exists)", key=key)
            if code == "NoSuchBucket":
                return StoreError(
                    f"{op} {where}: the bucket does not exist (check the profile's bucket names)", key=key
                )
            if code == "NoSuchKey" or status == 404:
                return ObjectNotFound(message, key=key)
            if status in (401, 403):
                return StorePermissionError(message, key=key)
            if code in _TRANSIENT_CODES or (isinstance(status, int) and (status >= 500 or status in (408, 429))):
                return TransientStoreError(message, key=key)
            return StoreError(message, key=key)
        if isinstance(exc, HTTPClientError):
            inner = exc.kwargs.get("error")
            if isinstance(inner, BaseException) and not _is_transport_error(inner):
                return inner  # the body's own exception (a pause, a changed file)
        if isinstance(exc, BotoCoreError | OSError):
            detail = redact(f"{type(exc).__name__}: {exc}", self._secrets)
            return TransientStoreError(f"{op} {redact(where, self._secrets)}: {detail}", key=key)
        return exc


def _is_transport_error(exc: BaseException) -> bool:
    import urllib3.exceptions

    return isinstance(exc, OSError | urllib3.exceptions.HTTPError)


class _Translating:
    """``with``: re-raise botocore's exceptions as :mod:`ursa_daemon.errors` (``from`` the original)."""

    def __init__(self, owner: BotoMultipart, op: str, key: str, upload: bool) -> None:
        self.owner, self.op, self.key, self.upload = owner, op, key, upload

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc is None or isinstance(exc, StoreError) or not isinstance(exc, Exception):
            return
        out = self.owner.translate(exc, self.op, self.key, upload=self.upload)
        if out is exc:
            return
        if isinstance(out, StoreError):
            raise out from exc
        raise out  # the body's own exception, as it was raised
