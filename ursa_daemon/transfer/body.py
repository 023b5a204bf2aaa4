"""The bodies of upload requests: file chunks and file regions, checked, throttled, cancellable.

A body asks for a stop before every slice and raises :class:`UploadInterrupted`,
which makes the HTTP layer drop the request and its connection. A body that
hashes what it sends raises :func:`~ursa_daemon.transfer.source.file_changed` before handing over the last
slice when the bytes are not the ones hashed, so the object is never completed.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from ursa_daemon.errors import InputError
from ursa_daemon.session import FileEntry
from ursa_daemon.store.base import DEFAULT_CHUNK_SIZE
from ursa_daemon.transfer.limits import DEFAULT_SLICE_SIZE, RateLimiter
from ursa_daemon.transfer.source import file_changed
from ursa_daemon.transfer.wire import _Wire, sending_socket

__all__ = ["CancellableFile", "FileRegion", "UploadInterrupted"]


class UploadInterrupted(RuntimeError):
    """A stream stopped because the rig became active or the daemon is stopping.

    Control flow, not a failure: never logged as an error. A ``RuntimeError``, as the
    seeds' ``ursa.register.orchestrator.UploadInterrupted`` is (re-exported there).
    """


def _crc32c_extend(crc: int, data: bytes) -> int:
    import google_crc32c

    return int(google_crc32c.extend(crc, data))


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
        return file_changed(self.rec_id, self.entry, what)


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
            self._sock = sending_socket()
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
