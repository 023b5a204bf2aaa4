"""The data files of one session on disk: walk the worker directories, refuse what no store can hold."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ursa_daemon.errors import InputError
from ursa_daemon.session.keys import NODE_MANIFEST_DIR, is_data_name, rel_key, split_worker, symlink_error

__all__ = ["MAX_KEY_BYTES", "FileEntry", "walk_session"]

#: S3 (and R2) refuse object keys longer than this many UTF-8 bytes
MAX_KEY_BYTES = 1024
#: obstore's local store cannot hold a file whose name ends in ``#<digits>`` (its staging names)
_LOCAL_RESERVED_RE = re.compile(r"#\d+$")
FAMILY_RE = re.compile(r"^[a-z][a-z0-9]*$")
ID_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class FileEntry:
    """One data file: its path relative to the session, size, and sha256 once hashed."""

    rel_path: str
    size: int
    sha256: str | None = None
    #: what hashing saw besides the sha256, for the uploader to hold the file to (never in a
    #: manifest): the mtime, and the CRC32C of each ``part_size`` slice (empty: not computed)
    mtime_ns: int | None = field(default=None, compare=False, repr=False)
    part_size: int = field(default=0, compare=False, repr=False)
    part_crc32c: tuple[int, ...] = field(default=(), compare=False, repr=False)

    @property
    def worker(self) -> str:
        return self.rel_path.split("/", 1)[0]

    def as_json(self) -> dict[str, Any]:
        return {"rel_path": self.rel_path, "size": self.size, "sha256": self.sha256}


def _worker_name_ok(name: str) -> bool:
    family, worker_id = split_worker(name)
    return bool(FAMILY_RE.match(family)) and (worker_id == "" or bool(ID_RE.match(worker_id)))


def walk_session(rec_dir: Path) -> list[FileEntry]:
    """Every data file of the session, sorted by rel_path. Symlinks are input errors."""
    rec_id = rec_dir.name
    entries: list[FileEntry] = []
    try:
        top = sorted(os.scandir(rec_dir), key=lambda e: e.name)
    except FileNotFoundError:
        raise InputError(f"{rec_id}: session directory {rec_dir} does not exist", rec_id=rec_id) from None
    workers: dict[tuple[str, str], str] = {}
    for entry in top:
        if entry.is_symlink():
            symlink_error(rec_id, entry.name)
        if not entry.is_dir(follow_symlinks=False):
            continue  # manifest.json, participant.txt, stray files at the root: not data
        if entry.name == NODE_MANIFEST_DIR or not is_data_name(entry.name):
            continue
        if not _worker_name_ok(entry.name):
            raise InputError(
                f"{rec_id}: directory {_printable(entry.name)!r} is not a worker name "
                "(<family>[_<suffix>], family ^[a-z][a-z0-9]*$, suffix lowercase letters, "
                "digits, '_', '.', '-'); rename it or move it out of the session",
                rec_id=rec_id,
                file=_printable(entry.name),
            )
        key = split_worker(entry.name)
        if key in workers:
            raise InputError(
                f"{rec_id}: worker directories {workers[key]!r} and {entry.name!r} are the same modality "
                f"({key[0]!r}, worker id {key[1]!r}) and would overwrite each other's catalog row; "
                "rename one of them",
                rec_id=rec_id,
                file=entry.name,
            )
        workers[key] = entry.name
        _walk_worker(Path(entry.path), entry.name, rec_id, entries)
    entries.sort(key=lambda e: e.rel_path)
    return entries


def _walk_worker(path: Path, rel: str, rec_id: str, out: list[FileEntry]) -> None:
    for entry in os.scandir(path):
        rel_path = f"{rel}/{entry.name}"
        if entry.is_symlink():
            symlink_error(rec_id, rel_path)
        if not is_data_name(entry.name):
            continue
        _check_name(entry.name, rel_path, rec_id)
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            _walk_worker(Path(entry.path), rel_path, rec_id, out)
        elif stat.S_ISREG(st.st_mode):
            _check_file_name(entry.name, rel_path, rec_id)
            out.append(FileEntry(rel_path, st.st_size))


def _printable(rel_path: str) -> str:
    """``rel_path`` for a message: bytes that are not UTF-8 shown as ``\\xNN``."""
    return os.fsencode(rel_path).decode("utf-8", "backslashreplace")


def _check_name(name: str, rel_path: str, rec_id: str) -> None:
    """A name every store can carry: UTF-8, no backslash, no control character."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise InputError(
            f"{rec_id}: file name '{_printable(rel_path)}' is not UTF-8 (bytes from another encoding); "
            "object keys are UTF-8: rename it",
            rec_id=rec_id,
            file=_printable(rel_path),
        ) from None
    if "\\" in name or any(ord(c) < 0x20 or c == "\x7f" for c in name):
        raise InputError(
            f"{rec_id}: file name {rel_path!r} holds a backslash or a control character "
            "(line break, tab, ...); rename it",
            rec_id=rec_id,
            file=rel_path,
        )


def _check_file_name(name: str, rel_path: str, rec_id: str) -> None:
    """What one of the stores cannot hold is refused on every profile alike, before upload."""
    if _LOCAL_RESERVED_RE.search(name):
        raise InputError(
            f"{rec_id}: file name {rel_path!r} ends in '#<digits>', which the local store keeps for its "
            "own temporary files and cannot hold; rename it (say 'take#2' to 'take_2')",
            rec_id=rec_id,
            file=rel_path,
        )
    key_bytes = len(rel_key(rec_id, rel_path).encode("utf-8"))
    if key_bytes > MAX_KEY_BYTES:
        raise InputError(
            f"{rec_id}: path {rel_path[:80]!r}... makes an object key of {key_bytes} bytes; S3 and R2 "
            f"refuse keys over {MAX_KEY_BYTES} bytes: shorten the directory or file names",
            rec_id=rec_id,
            file=rel_path,
        )

