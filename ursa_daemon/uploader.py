"""A thread pool of cancellable uploads, part-level resumable on S3.

Three ways a file goes up, chosen by size and store:

* small files, and every file on the local store: one ``Store.put`` whose
  body is a :class:`CancellableFile` (chunks that ask ``should_stop()`` before
  each one and re-hash what they send: bytes that differ from the sha256
  computed at hashing time raise before the last chunk, so the object is never
  completed);
* on a :class:`~ursa_daemon.store.base.MultipartStore` (S3), files up to one
  part: one ``put_stream`` whose body is a :class:`FileRegion` (the PUT
  carries the sha256, which the server verifies; with checksums off the body
  is checked here against the CRC32C hashing took);
* larger files there: a multipart upload whose id and confirmed parts go to
  an :class:`UploadJournal` (the SQLite state) as each part is confirmed.
  The next attempt, after a pause, a SIGKILL or a reboot, lists the server's
  parts and sends only the missing ones of the same upload; an upload the
  server forgot starts again from zero. Each part carries the CRC32C that
  :func:`~ursa_daemon.manifest.hash_files` took in the same read as the
  file's sha256 (``x-amz-checksum-crc32c``, which the server verifies: R2
  refuses a sha256 on a part; with checksums off the body is held to it here
  as it is sent); after the last part the file must still be the one opened, with the
  same size and mtime (a file still growing is caught). A mismatch aborts the
  upload and reports the file changed. So a file is read twice (hash, send)
  and sha256-hashed once.

A pause cuts the wire: a watcher thread polls ``should_stop()`` every 20 ms and
sets the shared cancel event; a :class:`FileRegion` checks it before every
64 KiB slice and raises :class:`UploadInterrupted`, which makes the HTTP layer
drop the request and its connection (with a reset: unsent bytes are dropped).
A request stuck in a send (the server not reading) would only see the event
once the server reads again, so the watcher also shuts down the sockets of the
requests whose body is still being read (:class:`_Wire`). Confirmed parts are kept, the part in
flight is lost. Bodies are read from disk slice by slice (``os.pread``): memory
does not grow with the part size.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import random
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, Protocol

from ursa_daemon.errors import (
    ChecksumMismatch,
    InputError,
    ObjectMismatch,
    StoreError,
    TransientStoreError,
    UploadGone,
)
from ursa_daemon.log import get_logger
from ursa_daemon.manifest import FileEntry, rel_key
from ursa_daemon.store._common import check_key
from ursa_daemon.store.base import (
    DEFAULT_CHUNK_SIZE,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_PART_SIZE,
    CompletedPart,
    MultipartRecord,
    MultipartStore,
    PartInfo,
    PartRecord,
    Store,
)
from ursa_daemon.store.local import LocalStore
from ursa_daemon.store.multipart import b64_crc32c

__all__ = [
    "CancellableFile",
    "FileRegion",
    "FileUpload",
    "RateLimiter",
    "UploadInterrupted",
    "UploadJournal",
    "UploadLimits",
    "abort_orphan_uploads",
    "abort_uploads",
    "discard_partials",
    "kept_partials",
    "upload_files",
]

log = get_logger("ursa.upload")

#: on a MultipartStore, files larger than this go through the cuttable part-level calls
DEFAULT_SMALL_PUT_MAX = 512 << 10
#: bytes per read of a streamed body: a pause and the rate limiter act between two slices
DEFAULT_SLICE_SIZE = 64 << 10
#: the same without a bandwidth cap (urllib3 asks for 128 KiB; a pause resets the socket anyway)
DEFAULT_UNCAPPED_SLICE_SIZE = 256 << 10
#: how often the stop watcher polls ``should_stop()`` (each wake-up costs ~40 us of CPU)
DEFAULT_STOP_POLL_S = 0.02
#: tries of one part (or streamed PUT) on transient errors, backoff doubling from/capped at
DEFAULT_PART_ATTEMPTS = 5
DEFAULT_BACKOFF_S = 0.5
DEFAULT_BACKOFF_CAP_S = 15.0
_HASH_READ = 1 << 20
#: the local profile keeps a paused copy here, under the raw directory (outside ``recordings/``)
PARTIAL_DIR = ".ursa-partial"
#: bytes per slice of a local copy without a bandwidth cap (a pause acts between two slices)
DEFAULT_LOCAL_SLICE_SIZE = 4 << 20


class UploadInterrupted(Exception):
    """A stream stopped because the rig became active or the daemon is stopping.

    Control flow, not a failure: never logged as an error.
    """


@dataclass(frozen=True)
class UploadLimits:
    """How hard one session's upload may push."""

    max_concurrent_files: int = 4
    max_concurrency_per_file: int = DEFAULT_MAX_CONCURRENCY
    part_size: int = DEFAULT_PART_SIZE
    chunk_size: int = DEFAULT_CHUNK_SIZE
    bandwidth_bytes_per_s: int | None = None
    small_put_max: int = DEFAULT_SMALL_PUT_MAX
    slice_size: int = DEFAULT_SLICE_SIZE


class UploadJournal(Protocol):
    """Where multipart uploads and their confirmed parts are kept (``StateDB``)."""

    def multipart_upload(self, rec_id: str, rel_path: str) -> MultipartRecord | None: ...

    def multipart_uploads(self, rec_id: str | None = None) -> list[MultipartRecord]: ...

    def start_multipart(self, rec: MultipartRecord) -> None: ...

    def record_part(self, upload_id: str, part: PartRecord) -> None: ...

    def parts(self, upload_id: str) -> dict[int, PartRecord]: ...

    def forget_multipart(self, upload_id: str) -> None: ...


class RateLimiter:
    """A token bucket shared by every stream; ``None`` rate means unlimited."""

    def __init__(self, rate: int | None, *, burst_s: float = 0.25) -> None:
        self.rate = rate
        self._capacity = (rate or 0) * burst_s
        self._tokens = self._capacity
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self, n: int, cancel: threading.Event) -> bool:
        """Take ``n`` bytes, waiting off any debt; False (at once) when ``cancel`` is or gets set."""
        if cancel.is_set():
            return False
        if not self.rate:
            return True
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= n
            debt_s = -self._tokens / self.rate
        if debt_s > 0:
            return not cancel.wait(debt_s)
        return True


class CancellableFile:
    """The body of one upload: chunks of ``path``, checked and throttled as they go."""

    def __init__(
        self,
        path: Path,
        entry: FileEntry,
        *,
        rec_id: str,
        should_stop: Callable[[], bool],
        cancel: threading.Event,
        limiter: RateLimiter,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        on_bytes: Callable[[int], None] | None = None,
    ) -> None:
        self.path = path
        self.entry = entry
        self.rec_id = rec_id
        self.should_stop = should_stop
        self.cancel = cancel
        self.limiter = limiter
        self.chunk_size = chunk_size
        self.on_bytes = on_bytes
        self.bytes_read = 0
        #: why this stream stopped, if it did: the store may wrap it beyond recognition
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._chunks()
        except BaseException as exc:
            self.error = exc
            raise

    def _chunks(self) -> Iterator[bytes]:
        h = hashlib.sha256()
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - closed in finally
        except FileNotFoundError:
            raise self._changed("vanished before it was uploaded") from None
        try:
            while True:
                if self.cancel.is_set() or self.should_stop():
                    self.cancel.set()
                    raise UploadInterrupted(self.entry.rel_path)
                chunk = f.read(self.chunk_size)
                if not chunk:
                    break
                h.update(chunk)
                self.bytes_read += len(chunk)
                if self.bytes_read > self.entry.size:
                    raise self._changed(f"grew past {self.entry.size} bytes")
                if self.bytes_read == self.entry.size and h.hexdigest() != self.entry.sha256:
                    raise self._changed("bytes changed since it was hashed")
                self.limiter.acquire(len(chunk), self.cancel)
                if self.on_bytes is not None:
                    self.on_bytes(len(chunk))
                yield chunk
        finally:
            f.close()
        if self.bytes_read != self.entry.size:
            raise self._changed(f"shrank to {self.bytes_read} bytes (hashed at {self.entry.size})")
        if self.entry.size == 0 and h.hexdigest() != self.entry.sha256:
            raise self._changed("bytes changed since it was hashed")

    def _changed(self, what: str) -> InputError:
        return _changed(self.rec_id, self.entry, what)


class _Wire:
    """The sockets of requests whose body is still being sent; :meth:`cut` shuts them all down.

    A body finds its socket on its first read: the HTTP layer's connection
    object (``self.sock``) is a few frames up the stack (urllib3's
    ``HTTPConnection.request`` iterating the body). If it is not there, the
    body is simply not registered and stops at its next read instead.
    A socket stays registered until its request returns (a body fully sent may
    still sit in kernel buffers). ``shutdown`` wakes a thread blocked in
    ``sendall`` or waiting for the response; the HTTP layer then closes the
    connection with a reset, which drops what the kernel still held.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self.cut_done = False

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            if self.cut_done:
                _shutdown(sock)
            else:
                self._socks.add(sock)

    def discard(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.discard(sock)

    def cut(self) -> None:
        with self._lock:
            self.cut_done = True
            socks, self._socks = self._socks, set()
        for sock in socks:
            _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    """Reset ``sock`` now, dropping what its kernel queue still holds; its owner sees an error.

    On Linux, ``connect()`` to an ``AF_UNSPEC`` address disconnects a TCP socket
    (``tcp_disconnect``: a reset, the send queue purged, blocked callers woken)
    without closing the descriptor, which its owner thread still uses.
    Elsewhere, or if that fails, ``shutdown`` wakes the owner, whose close then
    resets the connection (``SO_LINGER`` 0).
    """
    fd = sock.fileno()
    if fd >= 0 and _disconnect(fd):
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _disconnect(fd: int) -> bool:
    global _libc
    if not sys.platform.startswith("linux"):
        return False
    try:
        if _libc is None:
            import ctypes

            _libc = ctypes.CDLL(None, use_errno=True)
        unspec = struct.pack("=H14x", socket.AF_UNSPEC)
        return int(_libc.connect(fd, unspec, len(unspec))) == 0
    except (OSError, AttributeError):
        return False


_libc: Any = None


def _sending_socket() -> socket.socket | None:
    """The socket of the HTTP connection whose body read called us, if the stack shows it."""
    frame: FrameType | None = sys._getframe(3)  # _sending_socket <- _register <- _read <- read <- HTTP layer
    for _ in range(6):
        if frame is None:
            return None
        sock = getattr(frame.f_locals.get("self"), "sock", None)
        if isinstance(sock, socket.socket):
            return sock
        frame = frame.f_back
    return None


class FileRegion:
    """A binary file object over ``size`` bytes of ``fd`` from ``offset``: the body of one request.

    ``read`` returns at most ``slice_size`` bytes (``os.pread``: nothing is
    buffered), takes them from the shared :class:`RateLimiter` first, and raises
    :class:`UploadInterrupted` once ``cancel`` is set: the HTTP layer then drops
    the request and its connection. With ``sha256`` (or the far cheaper
    ``crc32c``) the bytes are hashed as they go and a mismatch with the value
    taken when the file was hashed raises ``changed(...)`` before the last slice
    is handed over. ``seek``/``tell`` let the HTTP layer rewind for a retry. ``error``
    keeps what ``read`` raised (the store may wrap it).
    """

    def __init__(
        self,
        fd: int,
        offset: int,
        size: int,
        *,
        cancel: threading.Event,
        limiter: RateLimiter,
        changed: Callable[[str], InputError],
        sha256: str | None = None,
        crc32c: int | None = None,
        slice_size: int = DEFAULT_SLICE_SIZE,
        on_bytes: Callable[[int], None] | None = None,
        wire: _Wire | None = None,
    ) -> None:
        self.fd = fd
        self.offset = offset
        self.size = size
        self.cancel = cancel
        self.limiter = limiter
        self.changed = changed
        self.sha256 = sha256
        self.slice_size = slice_size
        self.on_bytes = on_bytes
        self.error: BaseException | None = None
        self._pos = 0
        self._hash = hashlib.sha256() if sha256 is not None else None
        self.crc32c = crc32c
        self._crc = 0
        self._wire = wire
        self._sock: socket.socket | None = None

    def __len__(self) -> int:
        return self.size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self.size}[whence]
        new = max(0, min(self.size, base + pos))
        if new != self._pos and (self._hash is not None or self.crc32c is not None):
            if new != 0:
                raise OSError("a checked FileRegion can only rewind to its start")
            if self._hash is not None:
                self._hash = hashlib.sha256()
            self._crc = 0
        self._pos = new
        return new

    def read(self, n: int | None = -1) -> bytes:
        try:
            return self._read(n)
        except BaseException as exc:
            self.error = exc
            self._unregister()
            raise

    def _register(self) -> None:
        if self._wire is not None and self._sock is None:
            self._sock = _sending_socket()
            if self._sock is not None:
                self._wire.add(self._sock)

    def _unregister(self) -> None:
        if self._wire is not None and self._sock is not None:
            self._wire.discard(self._sock)
            self._sock = None

    def _read(self, n: int | None) -> bytes:
        left = self.size - self._pos
        if left <= 0:
            return b""
        if self.cancel.is_set():
            raise UploadInterrupted()
        self._register()
        want = min(left, self.slice_size if n is None or n < 0 else max(1, min(n, self.slice_size)))
        if not self.limiter.acquire(want, self.cancel):
            raise UploadInterrupted()
        data = os.pread(self.fd, want, self.offset + self._pos)
        if len(data) < want:
            raise self.changed(f"shrank below {self.offset + self.size} bytes")
        self._pos += want
        if self._hash is not None:
            self._hash.update(data)
            if self._pos == self.size and self._hash.hexdigest() != self.sha256:
                raise self.changed("bytes changed since it was hashed")
        if self.crc32c is not None:
            self._crc = _crc32c_extend(self._crc, data)
            if self._pos == self.size and self._crc != self.crc32c:
                raise self.changed("bytes changed since it was hashed")
        if self.on_bytes is not None:
            self.on_bytes(want)
        return data

    def close(self) -> None:
        """The request is over (whatever its outcome): stop tracking its socket."""
        self._unregister()


@dataclass(frozen=True)
class FileUpload:
    """The outcome of one file: uploaded (True) or skipped, and its size."""

    entry: FileEntry
    uploaded: bool


@dataclass
class _Job:
    """What the part-level paths of one file share."""

    store: MultipartStore
    key: str
    path: Path
    entry: FileEntry
    rec_id: str
    limits: UploadLimits
    cancel: threading.Event
    limiter: RateLimiter
    journal: UploadJournal | None
    on_bytes: Callable[[int], None] | None
    wire: _Wire | None = None
    #: (inode, device, size, mtime) when the file was opened for upload
    seen: tuple[int, int, int, int] | None = None

    def changed(self, what: str) -> InputError:
        return _changed(self.rec_id, self.entry, what)

    @property
    def server_checks(self) -> bool:
        """The store sends each body's checksum for the server to verify (S3, R2, SeaweedFS, MinIO do)."""
        return bool(getattr(self.store, "sends_checksums", False))

    def open(self) -> int:
        """Open the file; it must be the size (and, if hashing saw it, have the mtime) it was hashed at."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise self.changed("vanished before it was uploaded") from None
        st = os.fstat(fd)
        if st.st_size != self.entry.size:
            os.close(fd)
            raise self.changed(f"is now {st.st_size} bytes (hashed at {self.entry.size})")
        if self.entry.mtime_ns is not None and st.st_mtime_ns != self.entry.mtime_ns:
            os.close(fd)
            raise self.changed("changed since it was hashed (written to)")
        self.seen = (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)
        return fd

    def check_settled(self, fd: int) -> None:
        """After the last byte was read: still the same file, size and mtime as at :meth:`open`.

        Catches a file that grows or is rewritten while it is uploaded (its bytes
        beyond the hashed size would otherwise never be looked at) and a file
        replaced by a rename."""
        st = os.fstat(fd)
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            raise self.changed("vanished while it was uploaded") from None
        current = (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)
        if current != self.seen or (now.st_ino, now.st_dev) != current[:2]:
            what = f"grew to {st.st_size} bytes" if st.st_size != self.entry.size else "changed (written to)"
            raise self.changed(what)

    def send(
        self,
        fd: int,
        offset: int,
        size: int,
        send: Callable[[FileRegion], str | None],
        *,
        sha256: str | None = None,
        crc32c: int | None = None,
    ) -> str | None:
        """One request whose body is ``size`` bytes at ``offset``, retried on transient errors.

        ``sha256`` / ``crc32c``: check the body as it goes against the value
        taken at hashing time. A server that finds the body does not match the
        checksum header (``ChecksumMismatch``) means the file changed.
        """
        for attempt in range(DEFAULT_PART_ATTEMPTS):
            if self.cancel.is_set():  # not even the headers of another request
                raise UploadInterrupted()
            region = FileRegion(
                fd,
                offset,
                size,
                cancel=self.cancel,
                limiter=self.limiter,
                changed=self.changed,
                # slices are the rate limiter's grain; uncapped, the HTTP layer's block size
                slice_size=self.limits.slice_size if self.limiter.rate else DEFAULT_UNCAPPED_SLICE_SIZE,
                on_bytes=self.on_bytes,
                sha256=sha256,
                crc32c=crc32c,
                wire=self.wire,
            )
            try:
                return send(region)
            except ChecksumMismatch:
                if region.error is not None:
                    raise region.error from None
                raise self.changed("bytes changed since it was hashed") from None
            except TransientStoreError as exc:
                if region.error is not None:
                    raise region.error from None
                if self.cancel.is_set():
                    raise UploadInterrupted() from None
                if attempt == DEFAULT_PART_ATTEMPTS - 1:
                    raise
                delay = min(DEFAULT_BACKOFF_CAP_S, DEFAULT_BACKOFF_S * 2**attempt) * random.uniform(0.75, 1.25)
                log.info("upload.retry", rec_id=self.rec_id, key=self.key, error=str(exc), retry_in_s=round(delay, 2))
                if self.cancel.wait(delay):
                    raise UploadInterrupted() from None
            except BaseException as exc:
                if region.error is not None and region.error is not exc:
                    raise region.error from None
                raise
            finally:
                region.close()  # the request is over: its socket is no longer ours to cut
        raise AssertionError("unreachable")


def _put_stream(job: _Job) -> None:
    """Files up to one part: one PUT, cut by a pause, checked as it goes.

    The body is held to the CRC32C taken when the file was hashed (its sha256
    again only when hashing took none, as for a file trusted from the state);
    the PUT carries the sha256, which the server verifies too."""
    fd = job.open()
    crcs = job.entry.part_crc32c
    crc = crcs[0] if len(crcs) == 1 and job.entry.part_size >= job.entry.size else None
    if job.server_checks:  # the PUT's sha256 header is verified by the server: no second pass here
        crc = None
    try:
        job.send(
            fd,
            0,
            job.entry.size,
            lambda body: job.store.put_stream(job.key, body, size=job.entry.size, sha256=job.entry.sha256 or ""),
            sha256=job.entry.sha256 if crc is None and not job.server_checks else None,
            crc32c=crc,
        )
        job.check_settled(fd)
    finally:
        os.close(fd)


def _crc32c_extend(crc: int, data: bytes) -> int:
    import google_crc32c

    return int(google_crc32c.extend(crc, data))


def _checksum_region(
    fd: int, offset: int, size: int, cancel: threading.Event, *, md5: bool
) -> tuple[int, str | None]:
    """CRC32C (and md5, on request) of ``size`` bytes at ``offset``: for parts hashing did not checksum."""
    crc = 0
    m = hashlib.md5(usedforsecurity=False) if md5 else None
    done = 0
    while done < size:
        if cancel.is_set():
            raise UploadInterrupted()
        data = os.pread(fd, min(_HASH_READ, size - done), offset + done)
        if not data:
            break
        crc = _crc32c_extend(crc, data)
        if m is not None:
            m.update(data)
        done += len(data)
    return crc, (m.hexdigest() if m is not None else None)


def _part_tag(crc: int) -> str:
    """How the journal records a part's checksum."""
    return f"crc32c:{crc:08x}"


def _proves(listed: PartInfo, crc: int, md5: str | None) -> bool:
    """A part the server holds but the journal missed (killed between the two) has these bytes.

    The ETag of a part is the MD5 of its bytes on S3, R2, MinIO and SeaweedFS:
    with it the proof is 128 bits strong; the CRC32C the server lists (where it
    lists one) must agree too."""
    if listed.checksum_crc32c is not None and listed.checksum_crc32c != b64_crc32c(crc):
        return False
    etag = listed.etag.strip('"').lower()
    if md5 is not None and len(etag) == 32:
        return etag == md5
    return False


def _older_parts(journal: UploadJournal | None, upload_id: str) -> bool:
    """Parts an older version journaled with a sha256: their upload cannot take CRC32C parts."""
    parts = journal.parts(upload_id) if journal is not None else {}
    return any(not p.checksum.startswith("crc32c:") for p in parts.values())


class _Multipart:
    """One file as a multipart upload that continues where the journal says it stopped."""

    def __init__(self, job: _Job) -> None:
        self.job = job
        self.part_size = job.limits.part_size
        self.nparts = -(-job.entry.size // self.part_size)
        self.upload_id = ""
        self.recorded: dict[int, PartRecord] = {}
        self.unrecorded: dict[int, PartInfo] = {}

    def run(self) -> None:
        job = self.job
        fd = job.open()
        try:
            self._begin()
            try:
                parts = self._send_all(fd)
                self._complete(parts)
            except (InputError, UploadGone):
                self._abandon()
                raise
            except UploadInterrupted:
                if job.journal is None:  # nobody could continue it: do not leave it on the server
                    self._abandon()
                raise
        finally:
            os.close(fd)

    # -- the upload id ---------------------------------------------------------

    def _begin(self) -> None:
        job = self.job
        journal = job.journal
        rec = journal.multipart_upload(job.rec_id, job.entry.rel_path) if journal is not None else None
        if rec is not None and (
            rec.bucket != job.store.bucket
            or rec.key != job.key
            or rec.size != job.entry.size
            or rec.sha256 != job.entry.sha256
            or rec.part_size != self.part_size
            or _older_parts(journal, rec.upload_id)
        ):
            if rec.bucket == job.store.bucket:
                job.store.abort_multipart(rec.key, rec.upload_id)
            assert journal is not None
            journal.forget_multipart(rec.upload_id)
            log.info("upload.multipart_replaced", rec_id=job.rec_id, key=job.key, upload_id=rec.upload_id)
            rec = None
        if rec is not None:
            assert journal is not None
            try:
                listed = {p.number: p for p in job.store.list_parts(job.key, rec.upload_id)}
            except UploadGone:
                journal.forget_multipart(rec.upload_id)
                log.info("upload.multipart_gone", rec_id=job.rec_id, key=job.key, upload_id=rec.upload_id)
                rec = None
            else:
                self.upload_id = rec.upload_id
                for n, p in journal.parts(rec.upload_id).items():
                    server = listed.get(n)
                    if server is not None and server.etag == p.etag and server.size == p.size:
                        self.recorded[n] = p
                self.unrecorded = {n: p for n, p in listed.items() if n not in self.recorded}
                log.info(
                    "upload.multipart_resumed",
                    rec_id=job.rec_id,
                    key=job.key,
                    upload_id=rec.upload_id,
                    parts_confirmed=len(self.recorded),
                    parts_total=self.nparts,
                )
        if rec is None:
            self.upload_id = job.store.create_multipart(job.key, sha256=job.entry.sha256)
            if journal is not None:
                journal.start_multipart(
                    MultipartRecord(
                        upload_id=self.upload_id,
                        rec_id=job.rec_id,
                        rel_path=job.entry.rel_path,
                        bucket=job.store.bucket,
                        key=job.key,
                        size=job.entry.size,
                        sha256=job.entry.sha256 or "",
                        part_size=self.part_size,
                    )
                )

    # -- the parts ---------------------------------------------------------------

    def _send_all(self, fd: int) -> list[CompletedPart]:
        """Send the parts not confirmed yet, each with its CRC32C, then check the file did not move.

        The CRC32Cs come from the read that took the file's sha256
        (``FileEntry.part_crc32c``); a part hashing did not checksum (a file
        trusted from the state, a part to prove from ListParts) is read once
        more for it. The server verifies each part's CRC32C header (with
        checksums off, the body is held to it here as it is sent), so bytes
        that changed since hashing never complete the upload; after the last part the file must still be
        the one opened, with the same size and mtime (a file still growing is
        caught here).
        """
        job = self.job
        entry = job.entry
        fits = entry.part_size == self.part_size and len(entry.part_crc32c) == self.nparts
        hashed = entry.part_crc32c if fits else ()
        done: dict[int, CompletedPart] = {}
        lanes = max(1, job.limits.max_concurrency_per_file)
        pool = ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="ursa-part")
        pending: set[Future[CompletedPart]] = set()

        def collect(futures: set[Future[CompletedPart]]) -> None:
            for fut in futures:
                part = fut.result()
                done[part.number] = part

        try:
            for n in range(1, self.nparts + 1):
                if job.cancel.is_set():
                    raise UploadInterrupted()
                offset = (n - 1) * self.part_size
                size = min(self.part_size, entry.size - offset)
                listed = self.unrecorded.get(n)
                md5: str | None = None
                if hashed and listed is None:
                    crc = hashed[n - 1]
                else:
                    crc, md5 = _checksum_region(fd, offset, size, job.cancel, md5=listed is not None)
                prior = self.recorded.get(n)
                if prior is not None and prior.checksum == _part_tag(crc) and prior.size == size:
                    done[n] = CompletedPart(n, prior.etag, crc)
                    continue
                if listed is not None and listed.size == size and _proves(listed, crc, md5):
                    if job.journal is not None:
                        job.journal.record_part(self.upload_id, PartRecord(n, size, listed.etag, _part_tag(crc)))
                    done[n] = CompletedPart(n, listed.etag, crc)
                    continue
                while len(pending) >= lanes:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    collect(finished)
                pending.add(pool.submit(self._send_part, fd, n, offset, size, crc))
            finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
            collect(finished)
        except BaseException:
            job.cancel.set()  # the other lanes stop at their next slice; the session stops anyway
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        job.check_settled(fd)
        return [done[n] for n in sorted(done)]

    def _send_part(self, fd: int, n: int, offset: int, size: int, crc: int) -> CompletedPart:
        job = self.job

        def send(body: FileRegion) -> str:
            return job.store.upload_part(job.key, self.upload_id, n, body, size=size, crc32c=crc)

        # the server verifies the header; where it is not sent, the body is checked here
        etag = job.send(fd, offset, size, send, crc32c=None if job.server_checks else crc)
        assert etag is not None
        if job.journal is not None:
            job.journal.record_part(self.upload_id, PartRecord(n, size, etag, _part_tag(crc)))
        return CompletedPart(n, etag, crc)

    def _complete(self, parts: list[CompletedPart]) -> None:
        job = self.job
        if job.cancel.is_set():
            raise UploadInterrupted()
        job.store.complete_multipart(job.key, self.upload_id, parts)
        if job.journal is not None:
            job.journal.forget_multipart(self.upload_id)

    def _abandon(self) -> None:
        """Abort the upload on the server and forget it (best effort: the sweep retries)."""
        job = self.job
        if not self.upload_id:
            return
        try:
            job.store.abort_multipart(job.key, self.upload_id)
        except StoreError as exc:
            log.warning("upload.abort_failed", rec_id=job.rec_id, key=job.key, error=str(exc))
            return
        if job.journal is not None:
            job.journal.forget_multipart(self.upload_id)


def upload_files(
    store: Store,
    rec_dir: Path,
    rec_id: str,
    files: list[FileEntry],
    *,
    should_stop: Callable[[], bool],
    limits: UploadLimits,
    limiter: RateLimiter,
    on_done: Callable[[FileUpload], None],
    on_bytes: Callable[[int], None] | None = None,
    journal: UploadJournal | None = None,
    on_file_bytes: Callable[[str, int], None] | None = None,
) -> bool:
    """Upload ``files`` concurrently; return False when stopped (paused), True when all done.

    ``on_bytes(n)``/``on_file_bytes(rel_path, n)`` are told of bytes as they are
    sent (from worker threads); on the local profile, a resumed copy reports the
    bytes it kept from an earlier attempt at once.
    ``on_done`` runs on the calling thread after each file, in completion order.
    The first error other than a pause cancels the remaining streams and is raised.
    ``journal`` keeps multipart uploads across attempts; without one, a paused
    multipart upload is aborted.
    """
    cancel = threading.Event()
    finished = threading.Event()
    parts = isinstance(store, MultipartStore)
    on_bytes_all = on_bytes
    wire = _Wire()

    def watch() -> None:
        # time.sleep, not Event.wait: half the CPU per wake-up (a Condition's timed lock),
        # which adds up over a long upload on a slow uplink; ``finished`` is seen one poll late
        while True:
            time.sleep(DEFAULT_STOP_POLL_S)
            if finished.is_set() or cancel.is_set():
                break
            try:
                stop = should_stop()
            except Exception:  # a broken probe must not hide the upload's own outcome
                continue
            if stop:
                cancel.set()
                break
        if cancel.is_set():
            wire.cut()

    def one(entry: FileEntry) -> FileUpload:
        key = rel_key(rec_id, entry.rel_path)
        path = rec_dir / entry.rel_path
        on_bytes = _per_file(entry.rel_path, on_bytes_all, on_file_bytes)
        if isinstance(store, LocalStore):
            _copy_local(store, key, path, entry, rec_id, should_stop, cancel, limiter, limits, on_bytes)
        elif parts and entry.size > limits.small_put_max:
            assert isinstance(store, MultipartStore)
            job = _Job(store, key, path, entry, rec_id, limits, cancel, limiter, journal, on_bytes, wire)
            if entry.size > limits.part_size:
                _Multipart(job).run()
            else:
                _put_stream(job)
        else:
            _put_chunks(store, key, path, entry, rec_id, should_stop, cancel, limiter, limits, on_bytes)
        confirm_object(store, key, entry, rec_id)
        return FileUpload(entry, True)

    watcher = threading.Thread(target=watch, name="ursa-stop-watch", daemon=True)
    watcher.start()
    pool = ThreadPoolExecutor(max_workers=limits.max_concurrent_files, thread_name_prefix="ursa-up")
    pending: set[Future[FileUpload]] = set()
    queue = iter(files)
    error: BaseException | None = None
    interrupted = False
    try:
        while True:
            while len(pending) < limits.max_concurrent_files and not cancel.is_set():
                entry = next(queue, None)
                if entry is None:
                    break
                pending.add(pool.submit(one, entry))
            if not pending:
                break
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
            for fut in done:
                exc = fut.exception()
                if isinstance(exc, UploadInterrupted):
                    interrupted = True
                elif exc is not None:
                    error = error or exc
                    cancel.set()
                else:
                    on_done(fut.result())
            if cancel.is_set() and not pending:
                break
    finally:
        if error is not None:
            cancel.set()
        pool.shutdown(wait=True, cancel_futures=True)
        finished.set()
        watcher.join()
    if error is not None:
        raise error
    return not (interrupted or cancel.is_set())


def _per_file(
    rel_path: str, on_bytes: Callable[[int], None] | None, on_file_bytes: Callable[[str, int], None] | None
) -> Callable[[int], None] | None:
    if on_file_bytes is None:
        return on_bytes
    if on_bytes is None:
        return lambda n: on_file_bytes(rel_path, n)

    def both(n: int) -> None:
        on_bytes(n)
        on_file_bytes(rel_path, n)

    return both


def _partial(store: LocalStore, rec_id: str, entry: FileEntry) -> Path:
    """The local profile's partial copy of ``entry``: named by a digest of its rel_path (two
    files never share one; any name length fits) and by its sha256, so it is only ever continued
    with the same bytes."""
    name = hashlib.sha256(entry.rel_path.encode("utf-8", "surrogateescape")).hexdigest()[:24]
    return Path(store.directory, PARTIAL_DIR, rec_id, f"{name}-{entry.sha256}")


def kept_partials(store: Store, rec_id: str, files: list[FileEntry]) -> dict[str, int]:
    """rel_path → bytes a paused local copy kept (the local profile; empty elsewhere)."""
    if not isinstance(store, LocalStore):
        return {}
    out = {}
    for entry in files:
        with contextlib.suppress(OSError):
            out[entry.rel_path] = _partial(store, rec_id, entry).stat().st_size
    return out


def discard_partials(store: Store, rec_id: str) -> None:
    """Drop the partial copies of ``rec_id`` (every file is in, or the session was rejected)."""
    if isinstance(store, LocalStore):
        import shutil

        shutil.rmtree(Path(store.directory, PARTIAL_DIR, rec_id), ignore_errors=True)


def _copy_local(
    store: LocalStore,
    key: str,
    path: Path,
    entry: FileEntry,
    rec_id: str,
    should_stop: Callable[[], bool],
    cancel: threading.Event,
    limiter: RateLimiter,
    limits: UploadLimits,
    on_bytes: Callable[[int], None] | None,
) -> None:
    """The local profile: copy into a partial file that a pause keeps, then rename it into place.

    The copy goes in slices (``pread``/``pwrite`` of one buffer), each taken from
    the rate limiter, with a pause checked between two; the next attempt hashes
    the kept prefix (a read, no write) and continues after it. The bytes are
    hashed as they go: a copy whose sha256 is not the file's is never renamed
    into place (a kept prefix that turns out stale is dropped and the copy
    starts again once). A file of one slice or less is copied into a private
    file (no lock, nothing kept): a pause loses at most one slice.
    """
    check_key(key)
    dest = Path(store.directory, key)
    part = _partial(store, rec_id, entry)
    try:
        src = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise _changed(rec_id, entry, "vanished before it was uploaded") from None
    try:
        size = os.fstat(src).st_size
        if size != entry.size:
            raise _changed(rec_id, entry, f"is now {size} bytes (hashed at {entry.size})")
        small = entry.size <= DEFAULT_LOCAL_SLICE_SIZE
        for fresh in (small, True):
            dst, mine = _open_partial(part, fresh=fresh, private=small)
            try:
                digest, kept = _copy_slices(
                    src, dst, entry, should_stop, cancel, limiter, limits, on_bytes, rec_id, key
                )
                if digest == entry.sha256:
                    try:  # still holding the partial's lock: nobody moved it
                        os.replace(mine, dest)
                    except FileNotFoundError:  # the first file of its directory
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        os.replace(mine, dest)
                    return
                if fresh or not kept:
                    raise _changed(rec_id, entry, "bytes changed since it was hashed")
            except BaseException as exc:
                if mine != part or isinstance(exc, InputError):  # a private or a wrong copy is not kept
                    mine.unlink(missing_ok=True)
                raise
            finally:
                os.close(dst)
    finally:
        os.close(src)


def _open_partial(part: Path, *, fresh: bool, private: bool = False) -> tuple[int, Path]:
    """The partial copy, locked (``flock``) so that no other process writes or moves it meanwhile;
    if another holds it (two processes on one session), or with ``private``, a copy of our own
    that is not kept."""
    for _ in range(3 if not private else 0):
        fd = _open_creating(part, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            break
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.stat(part).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # moved into place by its previous holder while we waited: open the path again
            os.close(fd)
            continue
        if fresh:
            os.ftruncate(fd, 0)
        return fd, part
    mine = part.with_name(f"{part.name}.{os.getpid()}-{threading.get_ident()}")
    return _open_creating(mine, os.O_RDWR | os.O_CREAT | os.O_TRUNC), mine


def _open_creating(path: Path, flags: int) -> int:
    """``os.open``, making the parent directory on the first file of a session."""
    try:
        return os.open(path, flags, 0o644)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, flags, 0o644)


def _copy_slices(
    src: int,
    dst: int,
    entry: FileEntry,
    should_stop: Callable[[], bool],
    cancel: threading.Event,
    limiter: RateLimiter,
    limits: UploadLimits,
    on_bytes: Callable[[int], None] | None,
    rec_id: str,
    key: str,
) -> tuple[str, int]:
    """Continue the copy of ``src`` into ``dst`` after what ``dst`` holds: (sha256 of the whole,
    bytes kept from before)."""
    h = hashlib.sha256()
    size = entry.size
    have = os.fstat(dst).st_size
    if have > size:
        os.ftruncate(dst, 0)
        have = 0
    slice_size = limits.slice_size if limiter.rate else DEFAULT_LOCAL_SLICE_SIZE
    buf = bytearray(max(1, min(max(slice_size, _HASH_READ), size)))  # a small file: a small buffer
    view = memoryview(buf)
    pos = 0
    kept = have
    while pos < have:  # the kept prefix: hashed, not copied again
        if cancel.is_set():
            raise UploadInterrupted(entry.rel_path)
        got = os.preadv(dst, [view[: min(len(buf), have - pos)]], pos)
        if got <= 0:
            break
        h.update(view[:got])
        pos += got
    if pos:
        log.info("upload.local_resumed", rec_id=rec_id, key=key, bytes_done=pos, bytes_total=size)
        if on_bytes is not None:
            on_bytes(pos)
    os.ftruncate(dst, pos)
    while pos < size:
        if cancel.is_set() or should_stop():
            cancel.set()
            raise UploadInterrupted(entry.rel_path)
        want = min(slice_size, size - pos)
        if not limiter.acquire(want, cancel):
            raise UploadInterrupted(entry.rel_path)
        got = os.preadv(src, [view[:want]], pos)
        if got < want:
            raise _changed(rec_id, entry, f"shrank below {size} bytes")
        h.update(view[:got])
        written = 0
        while written < got:
            written += os.pwrite(dst, view[written:got], pos + written)
        pos += got
        if on_bytes is not None:
            on_bytes(got)
    if os.pread(src, 1, size):
        raise _changed(rec_id, entry, f"grew past {size} bytes")
    return h.hexdigest(), kept


def _put_chunks(
    store: Store,
    key: str,
    path: Path,
    entry: FileEntry,
    rec_id: str,
    should_stop: Callable[[], bool],
    cancel: threading.Event,
    limiter: RateLimiter,
    limits: UploadLimits,
    on_bytes: Callable[[int], None] | None,
) -> None:
    """Small files and the local store: one ``Store.put`` of a :class:`CancellableFile`."""
    body = CancellableFile(
        path,
        entry,
        rec_id=rec_id,
        should_stop=should_stop,
        cancel=cancel,
        limiter=limiter,
        chunk_size=limits.chunk_size,
        on_bytes=on_bytes,
    )
    try:
        store.put(
            key,
            body,
            sha256=entry.sha256,
            part_size=limits.part_size,
            max_concurrency=limits.max_concurrency_per_file,
        )
    except (StoreError, OSError) as exc:
        if body.error is not None and body.error is not exc:
            raise body.error from None
        raise


def abort_uploads(store: Store, journal: UploadJournal, uploads: list[MultipartRecord]) -> int:
    """Abort ``uploads`` on the server and forget them; how many were. Failures are logged and kept."""
    if not isinstance(store, MultipartStore):
        return 0
    n = 0
    for rec in uploads:
        if rec.bucket != store.bucket:
            continue  # another profile's bucket: not this store's to abort
        try:
            store.abort_multipart(rec.key, rec.upload_id)
        except StoreError as exc:
            log.warning("upload.abort_failed", rec_id=rec.rec_id, key=rec.key, error=str(exc))
            continue
        journal.forget_multipart(rec.upload_id)
        log.info("upload.multipart_aborted", rec_id=rec.rec_id, key=rec.key, upload_id=rec.upload_id)
        n += 1
    return n


def abort_orphan_uploads(store: Store, rec_id: str, journal: UploadJournal | None) -> int:
    """Abort the incomplete multipart uploads under ``recordings/<rec_id>/`` that no journal knows of
    (its state database was lost, or another process died mid-upload); how many were. Call it only
    once every file of the session is confirmed in the store: nothing left there is needed."""
    if not isinstance(store, MultipartStore):
        return 0
    known = {u.upload_id for u in journal.multipart_uploads(rec_id)} if journal is not None else set()
    try:
        listed = store.list_multipart(f"recordings/{rec_id}/")
    except StoreError as exc:
        log.warning("upload.orphan_list_failed", rec_id=rec_id, error=str(exc))
        return 0
    n = 0
    for key, upload_id in listed:
        if upload_id in known:
            continue
        try:
            store.abort_multipart(key, upload_id)
        except StoreError as exc:
            log.warning("upload.abort_failed", rec_id=rec_id, key=key, error=str(exc))
            continue
        log.info("upload.orphan_aborted", rec_id=rec_id, key=key, upload_id=upload_id)
        n += 1
    return n


def _changed(rec_id: str, entry: FileEntry, what: str) -> InputError:
    return InputError(
        f"{rec_id}: {entry.rel_path} {what} during upload; the session is still "
        "being written or was modified: let it settle (or restore the file) and retry",
        rec_id=rec_id,
        file=entry.rel_path,
    )


def confirm_object(store: Store, key: str, entry: FileEntry, rec_id: str) -> None:
    """The object is there with the file's size (and sha256, where the store returns it)."""
    meta = store.head(key)
    if meta.size != entry.size or (meta.sha256 is not None and meta.sha256 != entry.sha256):
        got = f"{meta.size} bytes" + (f", sha256 {meta.sha256}" if meta.sha256 else "")
        raise ObjectMismatch(
            f"{rec_id}: {key} in the store has {got}, expected {entry.size} bytes, sha256 "
            f"{entry.sha256}; it will be uploaded again on the next attempt",
            key=key,
        )
