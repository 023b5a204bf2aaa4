"""Streamed, parallel sha256 of a session's files (with the CRC32C of each upload part) and the
recording hash. Pure: reads the files, writes nothing."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ursa_daemon.errors import InputError
from ursa_daemon.session.files import FileEntry

__all__ = ["HASH_CHUNK_SIZE", "HashingStopped", "hash_file", "hash_file_parts", "hash_files", "recording_hash"]

HASH_CHUNK_SIZE = 1 << 20


class HashingStopped(Exception):
    """``should_stop`` turned true while files were being hashed: control flow, not a failure."""


def hash_file(
    path: Path,
    *,
    chunk_size: int = HASH_CHUNK_SIZE,
    on_bytes: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[str, int]:
    """Streamed sha256 and byte count of one file; memory stays at one chunk.

    ``on_bytes`` is told each chunk's size; ``should_stop`` is asked before each
    chunk and raises :class:`HashingStopped` when it says so.
    """
    h = hashlib.sha256()
    n = 0
    buf = bytearray(chunk_size)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            if should_stop is not None and should_stop():
                raise HashingStopped(str(path))
            got = f.readinto(buf)
            if not got:
                break
            h.update(view[:got])
            n += got
            if on_bytes is not None:
                on_bytes(got)
    return h.hexdigest(), n


def hash_file_parts(
    path: Path,
    part_size: int,
    *,
    chunk_size: int = HASH_CHUNK_SIZE,
    on_bytes: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> tuple[str, int, tuple[int, ...], int, bool]:
    """One read of ``path``: its sha256, byte count, the CRC32C of each ``part_size`` slice,
    its mtime (ns) when the read began, and whether it stayed the same file with the same
    size and mtime throughout (False: it was written while it was read). ``on_bytes`` and
    ``should_stop`` as for :func:`hash_file`."""
    import google_crc32c

    h = hashlib.sha256()
    crcs: list[int] = []
    crc = 0
    in_part = 0
    n = 0
    with open(path, "rb", buffering=0) as f:
        before = os.fstat(f.fileno())
        while True:
            if should_stop is not None and should_stop():
                raise HashingStopped(str(path))
            data = f.read(chunk_size)  # bytes: google_crc32c takes no memoryview
            got = len(data)
            if not got:
                break
            h.update(data)
            n += got
            if on_bytes is not None:
                on_bytes(got)
            at = 0
            while at < got:
                take = min(got - at, part_size - in_part)
                crc = google_crc32c.extend(crc, data if take == got else data[at : at + take])
                at += take
                in_part += take
                if in_part == part_size:
                    crcs.append(crc)
                    crc, in_part = 0, 0
        after = os.fstat(f.fileno())
    if in_part or not crcs:
        crcs.append(crc)
    steady = (before.st_mtime_ns, before.st_size) == (after.st_mtime_ns, after.st_size) == (before.st_mtime_ns, n)
    return h.hexdigest(), n, tuple(crcs), before.st_mtime_ns, steady


def hash_files(
    rec_dir: Path,
    entries: Iterable[FileEntry],
    *,
    max_workers: int | None = None,
    known: Mapping[str, str] | None = None,
    on_bytes: Callable[[int], None] | None = None,
    on_file: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    part_size: int | None = None,
) -> list[FileEntry]:
    """Hash files in parallel (hashlib releases the GIL); sizes are re-checked.

    ``known`` maps rel_path → sha256 already trusted (the caller vouches that
    the file has not changed); those files are not read again (``on_bytes`` is
    told their size at once). ``on_bytes`` and ``on_file`` (a file's rel_path once
    it is hashed) may be called from several threads.
    ``should_stop`` stops the hashing with :class:`HashingStopped`. With
    ``part_size`` (an S3 store's), the same read also takes the CRC32C of every
    ``part_size`` slice and the file's mtime, which the uploader sends and
    checks instead of hashing the file again; a file written while it is read
    is an input error.
    """
    entries = list(entries)
    known = known or {}
    rec_id = rec_dir.name
    workers = max_workers or min(32, (os.cpu_count() or 2))

    def one(e: FileEntry) -> FileEntry:
        if e.rel_path in known:
            if on_bytes is not None:
                on_bytes(e.size)
            if on_file is not None:
                on_file(e.rel_path)
            return FileEntry(e.rel_path, e.size, known[e.rel_path])
        mtime_ns: int | None = None
        crcs: tuple[int, ...] = ()
        try:
            if part_size:
                digest, n, crcs, mtime_ns, steady = hash_file_parts(
                    rec_dir / e.rel_path, part_size, on_bytes=on_bytes, should_stop=should_stop
                )
                if not steady and n == e.size:
                    n = -1  # written while it was read: same message as a size change
            else:
                digest, n = hash_file(rec_dir / e.rel_path, on_bytes=on_bytes, should_stop=should_stop)
        except FileNotFoundError:
            raise InputError(
                f"{rec_id}: {e.rel_path} vanished while it was being hashed; "
                "wait until the session is complete and retry",
                rec_id=rec_id,
                file=e.rel_path,
            ) from None
        if n != e.size:
            raise InputError(
                f"{rec_id}: {e.rel_path} changed while it was being hashed "
                + (f"({e.size} -> {n} bytes)" if n >= 0 else "(written to)")
                + "; wait until the session is complete and retry",
                rec_id=rec_id,
                file=e.rel_path,
            )
        if on_file is not None:
            on_file(e.rel_path)
        return FileEntry(e.rel_path, n, digest, mtime_ns, part_size or 0, crcs)

    if len(entries) <= 1:
        return [one(e) for e in entries]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ursa-hash") as pool:
        return list(pool.map(one, entries))


def recording_hash(sha256s: Iterable[str]) -> str:
    """sha256 of the sorted per-file hex digests joined by newlines (no trailing newline)."""
    return hashlib.sha256("\n".join(sorted(sha256s)).encode("utf-8")).hexdigest()

