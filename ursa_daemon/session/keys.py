"""The names a session uses: its directory, files, workers and object keys (SPEC section 2). Pure.

Every problem is an :class:`InputError` that names the session, the file and the fix.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from pathlib import Path, PurePosixPath
from typing import Any

from ursa_daemon.errors import InputError

__all__ = [
    "MANIFEST_NAME",
    "NODE_MANIFEST_DIR",
    "NODE_NAME_RE",
    "PARTICIPANT_NAME",
    "REC_ID_RE",
    "check_rel_path",
    "is_data_name",
    "participant_id",
    "refuse_linked_session",
    "rel_key",
    "split_worker",
    "symlink_error",
]

MANIFEST_NAME = "manifest.json"
PARTICIPANT_NAME = "participant.txt"
NODE_MANIFEST_DIR = "_node_manifests"
REC_ID_RE = re.compile(r"^rec_\d{8}_\d{6}_[0-9a-f]{4,32}$")
#: a node manifest is named after its node: ``_node_manifests/<hostname>.json``
NODE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
_SKIP_SUFFIXES = (".part", ".tmp", "~")


def split_worker(name: str) -> tuple[str, str]:
    """``eeg_4559`` → (``eeg``, ``4559``); ``mic`` → (``mic``, ``""``)."""
    family, _, worker_id = name.partition("_")
    return family, worker_id


def is_data_name(name: str) -> bool:
    """False for dotfiles and the temporary names a writer leaves behind."""
    return not name.startswith(".") and not name.endswith(_SKIP_SUFFIXES)


def check_rel_path(rel_path: Any, rec_id: str, where: str) -> str:
    """Return ``rel_path`` if it is a safe relative ``/`` path, else raise InputError."""
    if not isinstance(rel_path, str) or not rel_path:
        raise InputError(
            f"{rec_id}: {where}: a files[].rel_path is empty or not a string; "
            "give each file as 'worker/name' relative to the session directory",
            rec_id=rec_id,
            file=where,
        )
    parts = rel_path.split("/")
    bad = (
        rel_path.startswith("/")
        or "\\" in rel_path
        or "\x00" in rel_path
        or any(p in ("", ".", "..") for p in parts)
        or len(parts) < 2
    )
    if bad:
        raise InputError(
            f"{rec_id}: {where}: rel_path {rel_path!r} is not a relative path inside a worker "
            "directory (no leading '/', no '..', '.', empty segments or backslashes); "
            "fix the manifest entry",
            rec_id=rec_id,
            file=rel_path,
        )
    return rel_path


def symlink_error(rec_id: str, rel: str) -> None:
    raise InputError(
        f"{rec_id}: {rel!r} is a symbolic link; links are never followed. "
        "Replace it with the real file (or remove it) and retry",
        rec_id=rec_id,
        file=rel,
    )


def refuse_linked_session(rec_dir: Path) -> None:
    """A session directory that is itself a symbolic link is an input error (never followed)."""
    if not rec_dir.is_symlink():
        return
    try:
        target = repr(os.readlink(rec_dir))
    except OSError:
        target = "?"
    raise InputError(
        f"{rec_dir.name}: the session directory is a symbolic link (to {target}); links are "
        "never followed: move the real directory under the recordings root instead",
        rec_id=rec_dir.name,
    )


def participant_id(name: str) -> str:
    """Lowercase; every run of other characters becomes ``_``; trimmed; at most 128.

    A name with no ``a-z``/``0-9`` at all (``李小龍``, ``Ωμέγα``) keeps its typed form as the
    display name and gets the id ``p_`` + the first 12 hex digits of the sha256 of its
    NFC, case-folded form: the same name gives the same id on every rig. Only a blank
    name gives ``""``.
    """
    pid = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    pid = pid[:128].rstrip("_")
    if pid or not name.strip():
        return pid
    folded = unicodedata.normalize("NFC", name.strip()).casefold()
    return "p_" + hashlib.sha256(folded.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def rel_key(rec_id: str, rel_path: str) -> str:
    """The raw-bucket key of a session file."""
    return str(PurePosixPath("recordings") / rec_id / rel_path)

