"""The local profile's upload: a copy into a partial file that a pause keeps, renamed into place."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import threading
from collections.abc import Callable
from pathlib import Path

from ursa_daemon.errors import InputError
from ursa_daemon.log import get_logger
from ursa_daemon.session import FileEntry
from ursa_daemon.store._common import check_key
from ursa_daemon.store.base import Store
from ursa_daemon.store.local import LocalStore
from ursa_daemon.transfer.body import UploadInterrupted, file_changed
from ursa_daemon.transfer.limits import RateLimiter, UploadLimits

__all__ = ["PARTIAL_DIR", "copy_local", "discard_partials", "kept_partials"]

log = get_logger("ursa.upload")

_HASH_READ = 1 << 20
#: the local profile keeps a paused copy here, under the raw directory (outside ``recordings/``)
PARTIAL_DIR = ".ursa-partial"
#: bytes per slice of a local copy without a bandwidth cap (a pause acts between two slices)
DEFAULT_LOCAL_SLICE_SIZE = 4 << 20


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


def copy_local(
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
        raise file_changed(rec_id, entry, "vanished before it was uploaded") from None
    try:
        size = os.fstat(src).st_size
        if size != entry.size:
            raise file_changed(rec_id, entry, f"is now {size} bytes (hashed at {entry.size})")
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
                    raise file_changed(rec_id, entry, "bytes changed since it was hashed")
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
            raise file_changed(rec_id, entry, f"shrank below {size} bytes")
        h.update(view[:got])
        written = 0
        while written < got:
            written += os.pwrite(dst, view[written:got], pos + written)
        pos += got
        if on_bytes is not None:
            on_bytes(got)
    if os.pread(src, 1, size):
        raise file_changed(rec_id, entry, f"grew past {size} bytes")
    return h.hexdigest(), kept
