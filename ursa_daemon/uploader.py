"""A thread pool of cancellable chunked streams.

Each file body is a :class:`CancellableFile`: an iterator of chunks that asks
``should_stop()`` before every chunk, takes its bytes from a shared
:class:`RateLimiter`, and re-hashes what it sends. When the bytes differ from
the sha256 computed at hashing time the stream raises before the last chunk is
handed over, so the store never completes the object.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from ursa_daemon.errors import InputError, ObjectMismatch, StoreError
from ursa_daemon.manifest import FileEntry, rel_key
from ursa_daemon.store.base import DEFAULT_CHUNK_SIZE, DEFAULT_MAX_CONCURRENCY, DEFAULT_PART_SIZE, Store

__all__ = [
    "CancellableFile",
    "FileUpload",
    "RateLimiter",
    "UploadInterrupted",
    "UploadLimits",
    "upload_files",
]


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


class RateLimiter:
    """A token bucket shared by every stream; ``None`` rate means unlimited."""

    def __init__(self, rate: int | None, *, burst_s: float = 0.25) -> None:
        self.rate = rate
        self._capacity = (rate or 0) * burst_s
        self._tokens = self._capacity
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self, n: int, cancel: threading.Event) -> None:
        """Take ``n`` bytes, waiting off any debt; returns early when ``cancel`` is set."""
        if not self.rate:
            return
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._capacity, self._tokens + (now - self._last) * self.rate)
            self._last = now
            self._tokens -= n
            debt_s = -self._tokens / self.rate
        if debt_s > 0:
            cancel.wait(debt_s)


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
        return InputError(
            f"{self.rec_id}: {self.entry.rel_path} {what} during upload; the session is still "
            "being written or was modified: let it settle (or restore the file) and retry",
            rec_id=self.rec_id,
            file=self.entry.rel_path,
        )


@dataclass(frozen=True)
class FileUpload:
    """The outcome of one file: uploaded (True) or skipped, and its size."""

    entry: FileEntry
    uploaded: bool


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
) -> bool:
    """Upload ``files`` concurrently; return False when stopped (paused), True when all done.

    ``on_done`` runs on the calling thread after each file, in completion order.
    The first error other than a pause cancels the remaining streams and is raised.
    """
    cancel = threading.Event()

    def one(entry: FileEntry) -> FileUpload:
        body = CancellableFile(
            rec_dir / entry.rel_path,
            entry,
            rec_id=rec_id,
            should_stop=should_stop,
            cancel=cancel,
            limiter=limiter,
            chunk_size=limits.chunk_size,
            on_bytes=on_bytes,
        )
        key = rel_key(rec_id, entry.rel_path)
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
        confirm_object(store, key, entry, rec_id)
        return FileUpload(entry, True)

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
            if not done and should_stop():
                cancel.set()
            if cancel.is_set() and not pending:
                break
    finally:
        if error is not None:
            cancel.set()
        pool.shutdown(wait=True, cancel_futures=True)
    if error is not None:
        raise error
    return not (interrupted or cancel.is_set())


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
