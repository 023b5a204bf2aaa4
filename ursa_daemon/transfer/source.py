"""The file being uploaded, held to what hashing saw: same file, size and mtime from the hash to the last byte.

Every upload path opens the session's file with :func:`open_hashed` and, after
its last byte was read or copied, calls :func:`check_settled`. Between the two,
a write to the file changes its mtime, a rename-over changes the inode at its
path: both are reported as a change (:func:`file_changed`), so bytes that are
not the ones hashed are never completed into an object. This is what lets the
local profile copy in the kernel without hashing the bytes again (see
:mod:`ursa_daemon.transfer.local_copy`).
"""

from __future__ import annotations

import os
from pathlib import Path

from ursa_daemon.errors import InputError
from ursa_daemon.session import FileEntry

__all__ = ["Seen", "check_settled", "file_changed", "open_hashed"]

#: (inode, device, size, mtime_ns) of an open file
Seen = tuple[int, int, int, int]


def file_changed(rec_id: str, entry: FileEntry, what: str) -> InputError:
    return InputError(
        f"{rec_id}: {entry.rel_path} {what} during upload; the session is still "
        "being written or was modified: let it settle (or restore the file) and retry",
        rec_id=rec_id,
        file=entry.rel_path,
    )


def open_hashed(path: Path, entry: FileEntry, rec_id: str) -> tuple[int, Seen]:
    """Open ``path`` read-only; it must be the size (and, if hashing saw it, have the mtime) it was hashed at."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise file_changed(rec_id, entry, "vanished before it was uploaded") from None
    st = os.fstat(fd)
    if st.st_size != entry.size:
        os.close(fd)
        raise file_changed(rec_id, entry, f"is now {st.st_size} bytes (hashed at {entry.size})")
    if entry.mtime_ns is not None and st.st_mtime_ns != entry.mtime_ns:
        os.close(fd)
        raise file_changed(rec_id, entry, "changed since it was hashed (written to)")
    return fd, (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)


def check_settled(fd: int, path: Path, seen: Seen | None, entry: FileEntry, rec_id: str) -> None:
    """After the last byte was read: still the same file, size and mtime as at :func:`open_hashed`.

    Catches a file that grows or is rewritten while it is uploaded (its bytes
    beyond the hashed size would otherwise never be looked at) and a file
    replaced by a rename."""
    st = os.fstat(fd)
    try:
        now = os.stat(path)
    except FileNotFoundError:
        raise file_changed(rec_id, entry, "vanished while it was uploaded") from None
    current = (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)
    if current != seen or (now.st_ino, now.st_dev) != current[:2]:
        what = f"grew to {st.st_size} bytes" if st.st_size != entry.size else "changed (written to)"
        raise file_changed(rec_id, entry, what)
