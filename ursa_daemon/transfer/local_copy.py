"""The local profile's upload: one kernel-side copy into a partial file a pause keeps, renamed into place.

Integrity without a second sha256 pass. The file's sha256 is taken once, when
the session is hashed, in the same read as the CRC32C of every ``part_size``
slice and with the mtime the file had when that read began
(:func:`~ursa_daemon.session.hashing.hash_files`). The copy does not hash the bytes again:

* The source is held to what hashing saw (:mod:`ursa_daemon.transfer.source`):
  opened at the hashed size and mtime and, after the last byte is copied, still
  the same inode at its path with the same size and mtime. The kernel stamps
  every write with a new mtime, and a rename-over changes the inode, so if both
  checks pass no byte changed between the start of hashing and the end of the
  copy: the bytes copied are the bytes hashed. (The gap: a write within the same
  clock tick as the last write before hashing began. A session is hashed only
  once complete and settled, and since Linux 6.13 a write after a stat gets a
  fresh fine-grained stamp anyway. A change made on purpose with its mtime set
  back, ``touch -d``, is not looked for.)
* A kept partial (a pause, a SIGKILL, a reboot) is continued only if it is named
  by the same sha256, and only as far as its whole parts match the CRC32Cs
  hashing took of the source: the kept prefix is read once and CRC32C-checked
  (~10x cheaper than sha256; the source is not read for it), cut back to the
  last matching part, and the rest is copied. A torn tail (power lost
  mid-write) or bytes of another version fail their CRC32C and are copied again.
* The copy is ``copy_file_range`` in slices (:class:`RangeCopier`: the kernel
  moves the bytes, page cache to page cache, or shares the blocks where the file
  system can), falling back to ``sendfile`` and then ``pread``/``pwrite`` where a
  file system refuses; a pause and the rate limiter act between two slices.

A file whose sha256 the daemon trusted from its state (same size and mtime as
when it was hashed, in an earlier attempt: hashing did not read it this time, so
there is no mtime and no part CRC32Cs in its entry) is held from the moment it
is opened, like a trusted file's multipart upload on S3; its kept prefix is
compared byte for byte with the source (two reads, no hash) and kept up to the
first difference.

A file of one slice or less is copied into a private file (no lock, nothing
kept): a pause loses at most one slice.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ursa_daemon.errors import InputError
from ursa_daemon.log import get_logger
from ursa_daemon.session import FileEntry
from ursa_daemon.store._common import check_key
from ursa_daemon.store.base import Store
from ursa_daemon.store.local import LocalStore
from ursa_daemon.transfer.body import UploadInterrupted, _crc32c_extend
from ursa_daemon.transfer.copy_range import RangeCopier
from ursa_daemon.transfer.limits import RateLimiter, UploadLimits
from ursa_daemon.transfer.source import Seen, check_settled, file_changed, open_hashed

__all__ = ["PARTIAL_DIR", "copy_local", "discard_partials", "kept_partials", "sweep_partials"]

log = get_logger("ursa.upload")

#: bytes per read when a kept partial is checked
_READ = 1 << 20
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


def sweep_partials(store: Store, *, untouched_since: float, finished: Callable[[str], bool]) -> list[str]:
    """Drop the partial copies no ingest will continue; the rec_ids swept (the local profile).

    A session's partials go when none of them was written since ``untouched_since`` (epoch
    seconds: its session vanished, or nobody resumes it) or when ``finished(rec_id)`` (registered
    or rejected: a copy left over). Never while some process holds one of them (a copy in
    progress holds its partial's ``flock``)."""
    if not isinstance(store, LocalStore):
        return []
    swept = []
    with contextlib.suppress(FileNotFoundError):
        for session in sorted(Path(store.directory, PARTIAL_DIR).iterdir()):
            if session.is_dir() and _sweepable(session, untouched_since, finished):
                shutil.rmtree(session, ignore_errors=True)
                swept.append(session.name)
    return swept


def _sweepable(session: Path, untouched_since: float, finished: Callable[[str], bool]) -> bool:
    files = [f for f in session.iterdir() if f.is_file()]
    newest = max((f.stat().st_mtime for f in files), default=session.stat().st_mtime)
    if newest >= untouched_since and not finished(session.name):
        return False
    for f in files:  # in use: a copy holds its partial locked
        try:
            fd = os.open(f, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        finally:
            os.close(fd)
    return True


def discard_partials(store: Store, rec_id: str) -> None:
    """Drop the partial copies of ``rec_id`` (every file is in, or the session was rejected)."""
    if isinstance(store, LocalStore):
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
    """The local profile: copy into a partial file that a pause keeps, then rename it into place."""
    check_key(key)
    dest = Path(store.directory, key)
    part = _partial(store, rec_id, entry)
    src, seen = open_hashed(path, entry, rec_id)
    try:
        small = entry.size <= DEFAULT_LOCAL_SLICE_SIZE
        dst, mine = _open_partial(part, fresh=small, private=small)
        try:
            _LocalCopy(src, path, seen, entry, rec_id, key, should_stop, cancel, limiter, limits, on_bytes).run(dst)
            _move_into_place(mine, dest)  # still holding the partial's lock: nobody moved it
        except BaseException as exc:
            if mine != part or isinstance(exc, InputError):  # a private or a wrong copy is not kept
                mine.unlink(missing_ok=True)
            raise
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _move_into_place(mine: Path, dest: Path) -> None:
    try:
        os.replace(mine, dest)
    except FileNotFoundError:  # the first file of its directory
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(mine, dest)


@dataclass
class _LocalCopy:
    """One file's copy from ``src`` (opened by :func:`open_hashed`, ``seen`` then) into a partial."""

    src: int
    path: Path
    seen: Seen
    entry: FileEntry
    rec_id: str
    key: str
    should_stop: Callable[[], bool]
    cancel: threading.Event
    limiter: RateLimiter
    limits: UploadLimits
    on_bytes: Callable[[int], None] | None

    def run(self, dst: int) -> None:
        """Continue the copy into ``dst`` after the part of what it holds that checks out; then the
        source must still be the file opened, unchanged."""
        size = self.entry.size
        pos = self._verified_prefix(dst)
        if pos:
            log.info("upload.local_resumed", rec_id=self.rec_id, key=self.key, bytes_kept=pos, file_size=size)
            if self.on_bytes is not None:
                self.on_bytes(pos)
        if os.fstat(dst).st_size != pos:
            # only when there is something to cut: on ext4 a truncate makes the close flush the
            # file's data (auto_da_alloc), which doubled a fresh copy's kernel time
            os.ftruncate(dst, pos)
        copier = RangeCopier(self.src, dst)
        while pos < size:
            got = copier.copy(pos, self._next_slice(pos))
            if got <= 0:
                raise file_changed(self.rec_id, self.entry, f"shrank below {size} bytes")
            pos += got
            if self.on_bytes is not None:
                self.on_bytes(got)
        check_settled(self.src, self.path, self.seen, self.entry, self.rec_id)

    def _next_slice(self, pos: int) -> int:
        """Bytes the next slice may move: a pause stops here, the rate limiter waits here."""
        if self.cancel.is_set() or self.should_stop():
            self.cancel.set()
            raise UploadInterrupted(self.entry.rel_path)
        slice_size = self.limits.slice_size if self.limiter.rate else DEFAULT_LOCAL_SLICE_SIZE
        want = min(slice_size, self.entry.size - pos)
        if not self.limiter.acquire(want, self.cancel):
            raise UploadInterrupted(self.entry.rel_path)
        return want

    # -- what a kept partial may keep --------------------------------------------------

    def _verified_prefix(self, dst: int) -> int:
        """How much of what ``dst`` holds to keep: its leading whole parts whose CRC32C is the one
        hashing took of the source's part, or, for a file hashing did not read this time (its sha256
        trusted from the state: no part CRC32Cs), its leading bytes equal to the source's."""
        have = os.fstat(dst).st_size
        size, part_size, crcs = self.entry.size, self.entry.part_size, self.entry.part_crc32c
        if not have or have > size:
            return 0
        if part_size > 0 and len(crcs) == -(-size // part_size):
            return self._parts_matching(dst, have, part_size, crcs)
        return self._bytes_matching(dst, have)

    def _parts_matching(self, dst: int, have: int, part_size: int, crcs: tuple[int, ...]) -> int:
        good = 0
        for crc in crcs:
            end = min(good + part_size, self.entry.size)
            if end > have or self._crc32c(dst, good, end) != crc:
                break
            good = end
        return good

    def _crc32c(self, fd: int, start: int, end: int) -> int:
        crc, pos = 0, start
        while pos < end:
            if self.cancel.is_set():
                raise UploadInterrupted(self.entry.rel_path)
            data = os.pread(fd, min(_READ, end - pos), pos)
            if not data:
                return -1
            crc = _crc32c_extend(crc, data)
            pos += len(data)
        return crc

    def _bytes_matching(self, dst: int, have: int) -> int:
        pos = 0
        while pos < have:
            if self.cancel.is_set():
                raise UploadInterrupted(self.entry.rel_path)
            n = min(_READ, have - pos)
            kept = os.pread(dst, n, pos)
            if len(kept) < n or kept != os.pread(self.src, n, pos):
                break
            pos += n
        return pos


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
        if fresh and os.fstat(fd).st_size:  # never a no-op truncate: see _LocalCopy.run
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
