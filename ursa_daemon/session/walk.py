"""Which sessions exist under a root, and which are complete (SPEC section 2).

A session is complete when ``manifest.json`` (or a ``_node_manifests/*.json``)
exists and nothing under its directory has changed for ``settle_seconds``.
Non-``rec_*`` directories and files at the root are left alone.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ursa_daemon.session.keys import MANIFEST_NAME, NODE_MANIFEST_DIR, REC_ID_RE

__all__ = [
    "SessionDir", "has_manifest", "in_shard", "parse_shard", "scan_root", "session_names", "session_of",
    "tree_signature",
]


@dataclass(frozen=True)
class SessionDir:
    """A session directory as seen by one scan."""

    path: Path
    #: newest mtime (seconds) of anything under the directory
    last_change: float
    #: changes whenever any entry's name, size or mtime changes
    signature: str
    has_manifest: bool

    @property
    def rec_id(self) -> str:
        return self.path.name

    def settled(self, settle_seconds: float, now: float | None = None) -> bool:
        return (now if now is not None else time.time()) - self.last_change >= settle_seconds

    def complete(self, settle_seconds: float, now: float | None = None) -> bool:
        return self.has_manifest and self.settled(settle_seconds, now)


def has_manifest(rec_dir: Path) -> bool:
    """A ``manifest.json`` (or node manifest) is there, whatever it is: one that is a
    directory or a link is a bad session to report, not a session still being written.
    A ``rec_*`` entry that is itself a link counts too (it is reported, never followed)."""
    if os.path.lexists(rec_dir / MANIFEST_NAME) or rec_dir.is_symlink():
        return True
    nodes = rec_dir / NODE_MANIFEST_DIR
    return nodes.is_dir() and any(p.suffix == ".json" for p in nodes.iterdir())


def tree_signature(rec_dir: Path) -> tuple[float, str]:
    """(newest mtime, digest of every entry's path, size and mtime). Links are not followed."""
    h = hashlib.sha256()
    st = os.lstat(rec_dir)
    newest = st.st_mtime
    if rec_dir.is_symlink():  # a linked session is reported, never walked
        h.update(f"link\0{os.readlink(rec_dir)}\0{st.st_mtime_ns}".encode("utf-8", "surrogateescape"))
        return newest, h.hexdigest()
    stack = [rec_dir]
    while stack:
        d = stack.pop()
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            newest = max(newest, st.st_mtime)
            h.update(f"{e.path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
            if e.is_dir(follow_symlinks=False):
                stack.append(Path(e.path))
    return newest, h.hexdigest()


def scan_root(root: Path) -> Iterator[SessionDir]:
    """Every ``rec_*`` directory (or link, to be reported) directly under ``root``, sorted by name.

    A ``root`` that is itself a ``rec_*`` session directory is that one session.
    """
    if REC_ID_RE.match(Path(root).name) and os.path.isdir(root):
        try:
            newest, sig = tree_signature(Path(root))
        except FileNotFoundError:
            return
        yield SessionDir(Path(root), newest, sig, has_manifest(Path(root)))
        return
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except FileNotFoundError:
        return
    for e in entries:
        # a rec_* link is yielded too: the daemon reports it (links are never followed)
        if (e.is_dir(follow_symlinks=False) or e.is_symlink()) and REC_ID_RE.match(e.name):
            path = Path(e.path)
            try:
                newest, sig = tree_signature(path)
            except FileNotFoundError:
                continue
            yield SessionDir(path, newest, sig, has_manifest(path))


def session_names(root: Path) -> list[str]:
    """The names of the ``rec_*`` directories (and links) directly under ``root``, sorted, as
    :func:`scan_root` finds them but without looking inside any: one ``scandir`` of the root
    (the entry types come with it), whatever the sessions hold (~7 ms for 10,000)."""
    try:
        with os.scandir(root) as it:
            names = [
                e.name for e in it
                if REC_ID_RE.match(e.name) and (e.is_dir(follow_symlinks=False) or e.is_symlink())
            ]
    except FileNotFoundError:
        return []
    return sorted(names)


def session_of(root: Path, path: str | os.PathLike[str]) -> Path | None:
    """The session directory an event path lies in, or None when it is not in one."""
    try:
        rel = Path(path).relative_to(root)
    except ValueError:
        return None
    if not rel.parts or not REC_ID_RE.match(rel.parts[0]):
        return None
    return root / rel.parts[0]


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` (1 <= K <= N) as ``(K, N)``; ``ValueError`` naming the input otherwise."""
    k, sep, n = text.partition("/")
    if not sep or not k.isdigit() or not n.isdigit() or not 1 <= int(k) <= int(n):
        raise ValueError(f"shard {text!r} must be K/N with 1 <= K <= N, e.g. 2/4")
    return int(k), int(n)


def in_shard(rec_id: str, shard: tuple[int, int] | None) -> bool:
    """Is ``rec_id`` in shard K of N? By a stable hash of the name (the first 8 bytes of its
    sha256), so every machine, Python version and run splits a share the same way."""
    if shard is None:
        return True
    k, n = shard
    return int.from_bytes(hashlib.sha256(rec_id.encode("utf-8", "surrogateescape")).digest()[:8], "big") % n == k - 1
