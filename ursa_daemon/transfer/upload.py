"""A thread pool of cancellable uploads, part-level resumable on S3.

Three ways a file goes up, chosen by size and store (:meth:`_Run.upload`):

* small files on S3, and every file on a store without part-level calls: one
  ``Store.put`` whose body is a :class:`~ursa_daemon.transfer.body.CancellableFile`
  (chunks that ask ``should_stop()`` before each one and re-hash what they send:
  bytes that differ from the sha256 computed at hashing time raise before the
  last chunk, so the object is never completed); the local profile copies the
  file instead (:mod:`ursa_daemon.transfer.local_copy`);
* on a :class:`~ursa_daemon.store.base.MultipartStore` (S3), files up to one
  part: one ``put_stream`` whose body is a
  :class:`~ursa_daemon.transfer.body.FileRegion` (the PUT carries the sha256,
  which the server verifies; with checksums off the body is checked here
  against the CRC32C hashing took) (:mod:`ursa_daemon.transfer.request`);
* larger files there: a multipart upload whose id and confirmed parts go to
  an :class:`~ursa_daemon.transfer.multipart_upload.UploadJournal` (the SQLite
  state) as each part is confirmed (:mod:`ursa_daemon.transfer.multipart_upload`).
  The next attempt, after a pause, a SIGKILL or a reboot, lists the server's
  parts and sends only the missing ones of the same upload; an upload the
  server forgot starts again from zero. Each part carries the CRC32C that
  :func:`~ursa_daemon.session.hash_files` took in the same read as the
  file's sha256 (``x-amz-checksum-crc32c``, which the server verifies: R2
  refuses a sha256 on a part; with checksums off the body is held to it here
  as it is sent); after the last part the file must still be the one opened, with the
  same size and mtime (a file still growing is caught). A mismatch aborts the
  upload and reports the file changed. So a file is read twice (hash, send)
  and sha256-hashed once.

A pause cuts the wire: a watcher thread (:class:`_StopWatch`) polls
``should_stop()`` every 20 ms and sets the shared cancel event; a body checks
it before every 64 KiB slice and raises
:class:`~ursa_daemon.transfer.body.UploadInterrupted`, which makes the HTTP
layer drop the request and its connection (with a reset: unsent bytes are
dropped). A request stuck in a send (the server not reading) would only see
the event once the server reads again, so the watcher also shuts down the
sockets of the requests whose body is still being read
(:class:`~ursa_daemon.transfer.wire._Wire`). Confirmed parts are kept, the part
in flight is lost. Bodies are read from disk slice by slice (``os.pread``):
memory does not grow with the part size.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path

from ursa_daemon.errors import ObjectMismatch, StoreError
from ursa_daemon.log import get_logger
from ursa_daemon.session import FileEntry, rel_key
from ursa_daemon.store.base import MultipartStore, Store
from ursa_daemon.store.local import LocalStore
from ursa_daemon.transfer.body import CancellableFile, UploadInterrupted
from ursa_daemon.transfer.limits import RateLimiter, UploadLimits
from ursa_daemon.transfer.local_copy import copy_local
from ursa_daemon.transfer.multipart_upload import Multipart, UploadJournal
from ursa_daemon.transfer.request import FileJob, put_stream
from ursa_daemon.transfer.wire import _Wire

__all__ = ["FileUpload", "confirm_object", "upload_files"]

log = get_logger("ursa.upload")

#: the most parts in flight one upload gets from the session's shared budget: R2 has answered
#: 500s with 5 concurrent parts of one upload, 2-3 is reported safe (an explicit higher
#: ``max_concurrency_per_file`` is the operator's call and is kept)
MAX_SHARED_LANES = 3
#: how often the stop watcher polls ``should_stop()`` (each wake-up costs ~40 us of CPU)
DEFAULT_STOP_POLL_S = 0.02


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
    limits = share_part_lanes(limits, files)
    run = _Run(store, rec_dir, rec_id, should_stop, limits, limiter, journal, on_bytes, on_file_bytes)
    with _StopWatch(should_stop, run.cancel, run.wire):
        interrupted = _run_pool(run, files, on_done)
    return not (interrupted or run.cancel.is_set())


def share_part_lanes(limits: UploadLimits, files: list[FileEntry]) -> UploadLimits:
    """The parts in flight are one budget per session (``max_concurrent_files`` x
    ``max_concurrency_per_file``): with fewer multipart files than file slots, each gets an
    equal share, up to :data:`MAX_SHARED_LANES` (with two, a 1 GiB file went at 0.62 of boto3's
    rate). Never fewer than configured; the part buffers in memory stay within what four files
    would hold."""
    big = sum(1 for f in files if f.size > limits.part_size)
    if big == 0 or big >= limits.max_concurrent_files:
        return limits
    budget = limits.max_concurrent_files * limits.max_concurrency_per_file
    share = min(MAX_SHARED_LANES, budget // big)
    return replace(limits, max_concurrency_per_file=max(limits.max_concurrency_per_file, share))


@dataclass
class _Run:
    """What the files of one :func:`upload_files` call share; :meth:`upload` is the per-file driver."""

    store: Store
    rec_dir: Path
    rec_id: str
    should_stop: Callable[[], bool]
    limits: UploadLimits
    limiter: RateLimiter
    journal: UploadJournal | None
    on_bytes: Callable[[int], None] | None
    on_file_bytes: Callable[[str, int], None] | None
    cancel: threading.Event = field(default_factory=threading.Event)
    wire: _Wire = field(default_factory=_Wire)

    def upload(self, entry: FileEntry) -> FileUpload:
        """One file, the way its size and the store call for, then confirmed in the store."""
        store, limits = self.store, self.limits
        key = rel_key(self.rec_id, entry.rel_path)
        path = self.rec_dir / entry.rel_path
        on_bytes = _per_file(entry.rel_path, self.on_bytes, self.on_file_bytes)
        if isinstance(store, LocalStore):
            copy_local(
                store, key, path, entry, self.rec_id, self.should_stop, self.cancel, self.limiter, limits, on_bytes
            )
        elif isinstance(store, MultipartStore) and entry.size > limits.small_put_max:
            job = FileJob(store, key, path, entry, self.rec_id, limits, self.cancel, self.limiter, on_bytes, self.wire)
            if entry.size > limits.part_size:
                Multipart(job, self.journal).run()
            else:
                put_stream(job)
        else:
            _put_chunks(
                store, key, path, entry, self.rec_id, self.should_stop, self.cancel, self.limiter, limits, on_bytes
            )
        confirm_object(store, key, entry, self.rec_id)
        return FileUpload(entry, True)


class _StopWatch:
    """A thread that polls ``should_stop()`` every 20 ms while the upload runs; on a stop it sets
    ``cancel`` and cuts the requests in flight (``wire``)."""

    def __init__(self, should_stop: Callable[[], bool], cancel: threading.Event, wire: _Wire) -> None:
        self.should_stop = should_stop
        self.cancel = cancel
        self.wire = wire
        self.finished = threading.Event()
        self.thread = threading.Thread(target=self._watch, name="ursa-stop-watch", daemon=True)

    def __enter__(self) -> _StopWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.finished.set()
        self.thread.join()

    def _watch(self) -> None:
        # time.sleep, not Event.wait: half the CPU per wake-up (a Condition's timed lock),
        # which adds up over a long upload on a slow uplink; ``finished`` is seen one poll late
        while True:
            time.sleep(DEFAULT_STOP_POLL_S)
            if self.finished.is_set() or self.cancel.is_set():
                break
            try:
                stop = self.should_stop()
            except Exception:  # a broken probe must not hide the upload's own outcome
                continue
            if stop:
                self.cancel.set()
                break
        if self.cancel.is_set():
            self.wire.cut()


def _run_pool(run: _Run, files: list[FileEntry], on_done: Callable[[FileUpload], None]) -> bool:
    """Keep ``max_concurrent_files`` uploads going until all are done or one stops; whether one was
    interrupted. The first error cancels the others and is raised once they stopped."""
    cancel = run.cancel
    pool = ThreadPoolExecutor(max_workers=run.limits.max_concurrent_files, thread_name_prefix="ursa-up")
    pending: set[Future[FileUpload]] = set()
    queue = iter(files)
    error: BaseException | None = None
    interrupted = False
    try:
        while True:
            while len(pending) < run.limits.max_concurrent_files and not cancel.is_set():
                entry = next(queue, None)
                if entry is None:
                    break
                pending.add(pool.submit(run.upload, entry))
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
    if error is not None:
        raise error
    return interrupted


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
