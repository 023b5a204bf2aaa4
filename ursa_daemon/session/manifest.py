"""A session's manifest: read (or merge from node manifests), validate, load, augment (SPEC section 2). Pure.

Every problem with a session is an :class:`InputError` that names the
session, the file and the fix.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ursa_daemon.errors import InputError
from ursa_daemon.session.files import FileEntry, walk_session
from ursa_daemon.session.hashing import recording_hash
from ursa_daemon.session.keys import (
    MANIFEST_NAME,
    NODE_MANIFEST_DIR,
    NODE_NAME_RE,
    PARTICIPANT_NAME,
    REC_ID_RE,
    check_rel_path,
    refuse_linked_session,
    symlink_error,
)
from ursa_daemon.session.parse import load_json, parse_duration_ns, parse_time_ns

__all__ = [
    "MANIFEST_VERSION",
    "Session",
    "augment",
    "load_session",
    "manifest_bytes",
    "merge_node_manifests",
    "node_files",
    "read_manifest",
    "read_participant",
    "validate_manifest",
]

MANIFEST_VERSION = 1
MAX_PARTICIPANT_BYTES = 256


def read_manifest(rec_dir: Path) -> tuple[dict[str, Any], str]:
    """The session's manifest and the file it came from.

    ``manifest.json`` if present, else the merge of ``_node_manifests/*.json``.
    """
    rec_id = rec_dir.name
    path = rec_dir / MANIFEST_NAME
    if os.path.lexists(path):  # a directory or a link here is an error, not a missing manifest
        return load_json(path, rec_id, MANIFEST_NAME), MANIFEST_NAME
    node_dir = rec_dir / NODE_MANIFEST_DIR
    nodes = sorted(node_dir.glob("*.json")) if node_dir.is_dir() else []
    if not nodes:
        raise InputError(
            f"{rec_id}: no {MANIFEST_NAME} and no {NODE_MANIFEST_DIR}/*.json; "
            "wait for the rig to finish, or run `ursa-daemon reconstruct-manifest`",
            rec_id=rec_id,
            file=MANIFEST_NAME,
        )
    docs = []
    for p in nodes:
        docs.append(load_json(p, rec_id, f"{NODE_MANIFEST_DIR}/{p.name}"))
    return merge_node_manifests(docs, rec_id), NODE_MANIFEST_DIR


def _check_node_fields(doc: dict[str, Any], rec_id: str) -> None:
    """``nodes`` is a list of host names and ``workers`` an object, in a node manifest."""
    nodes = doc.get("nodes")
    if nodes is not None and (
        not isinstance(nodes, list) or not all(isinstance(n, str) and NODE_NAME_RE.match(n) for n in nodes)
    ):
        raise InputError(
            f"{rec_id}: {NODE_MANIFEST_DIR}: nodes must be a list of host names (letters, digits, '.', '_', '-'); "
            f"got {json.dumps(nodes, default=str)[:80]}; fix the node manifest",
            rec_id=rec_id,
            file=NODE_MANIFEST_DIR,
        )
    workers = doc.get("workers")
    if workers is not None and not isinstance(workers, dict):
        raise InputError(
            f"{rec_id}: {NODE_MANIFEST_DIR}: workers must be an object keyed by worker directory; "
            "fix the node manifest",
            rec_id=rec_id,
            file=NODE_MANIFEST_DIR,
        )


def merge_node_manifests(docs: list[dict[str, Any]], rec_id: str) -> dict[str, Any]:
    """One manifest from the halves of a dual-node session (earliest start, latest end)."""
    merged: dict[str, Any] = dict(docs[0])
    files: dict[str, Any] = {}
    workers: dict[str, Any] = {}
    nodes: list[str] = []
    for doc in docs:
        _check_node_fields(doc, rec_id)
        if doc.get("recording_id") != merged.get("recording_id"):
            raise InputError(
                f"{rec_id}: node manifests disagree on recording_id; each node's manifest must "
                "name the same session",
                rec_id=rec_id,
                file=NODE_MANIFEST_DIR,
            )
        for f in doc.get("files") or []:
            key = f.get("rel_path") if isinstance(f, dict) else None
            if isinstance(key, str) and key in files and files[key] != f:
                raise InputError(
                    f"{rec_id}: {key} is listed differently by two node manifests; fix one of them",
                    rec_id=rec_id,
                    file=key,
                )
            files[str(key)] = f
        workers.update(doc.get("workers") or {})
        nodes.extend(n for n in doc.get("nodes") or [] if n not in nodes)
    merged["files"] = list(files.values())
    merged["workers"] = workers
    merged["nodes"] = nodes
    return merged


@dataclass(frozen=True)
class Session:
    """A validated session: its manifest, data files and derived catalog fields."""

    rec_dir: Path
    rec_id: str
    manifest: dict[str, Any]
    files: tuple[FileEntry, ...]
    start_time_ns: int
    duration_ns: int
    participant: str | None
    #: dual-node sessions: each local ``_node_manifests/<hostname>.json`` as the rig wrote it
    node_manifests: tuple[tuple[str, dict[str, Any]], ...] = ()

    @property
    def bytes_total(self) -> int:
        return sum(f.size for f in self.files)

    @property
    def workers(self) -> list[str]:
        return sorted({f.worker for f in self.files})


def load_session(rec_dir: Path) -> Session:
    """Read, validate and walk a session; hashes are not computed yet.

    Raises InputError for every SPEC violation: bad JSON, missing keys, a
    rec_id that is not the directory name, unsafe or missing files, links.
    """
    rec_dir = Path(rec_dir)
    rec_id = rec_dir.name
    if not REC_ID_RE.match(rec_id):
        raise InputError(
            f"{rec_id!r}: a session directory must be named rec_YYYYMMDD_HHMMSS_<hex>; rename it",
            rec_id=rec_id,
        )
    refuse_linked_session(rec_dir)
    doc, src = read_manifest(rec_dir)
    validate_manifest(doc, rec_id, src)
    start_ns = parse_time_ns(doc["start_time"], rec_id=rec_id, key="start_time", file=src)
    duration_ns = parse_duration_ns(doc, start_ns, rec_id, src)
    on_disk = walk_session(rec_dir)
    if not on_disk:
        raise InputError(
            f"{rec_id}: no data files under any worker directory; a session needs at least "
            "one file in a <family>[_<suffix>]/ subdirectory",
            rec_id=rec_id,
        )
    files = _check_listed_files(doc, on_disk, rec_dir, src)
    participant = read_participant(rec_dir)
    nodes = tuple(_read_node_manifests(rec_dir)) if src == NODE_MANIFEST_DIR else ()
    return Session(rec_dir, rec_id, doc, tuple(files), start_ns, duration_ns, participant, nodes)


def _read_node_manifests(rec_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(hostname, doc)`` of every ``_node_manifests/*.json``, hostname from the file name."""
    rec_id = rec_dir.name
    out = []
    for p in sorted((rec_dir / NODE_MANIFEST_DIR).glob("*.json")):
        host = p.stem
        if not NODE_NAME_RE.match(host):
            raise InputError(
                f"{rec_id}: {NODE_MANIFEST_DIR}/{p.name} is not named <hostname>.json (letters, digits, "
                "'.', '_' and '-' only); rename it after the node that wrote it",
                rec_id=rec_id,
                file=f"{NODE_MANIFEST_DIR}/{p.name}",
            )
        out.append((host, load_json(p, rec_id, f"{NODE_MANIFEST_DIR}/{p.name}")))
    return out


def node_files(
    host: str, doc: dict[str, Any], nodes: Sequence[tuple[str, dict[str, Any]]], files: Sequence[FileEntry]
) -> list[FileEntry]:
    """The files a node's manifest covers: those it lists, else every file no other local
    node manifest lists (the usual case: one node's half on its own rig)."""
    listed = {f["rel_path"] for f in doc.get("files") or [] if isinstance(f, dict)}
    if listed:
        return [f for f in files if f.rel_path in listed]
    others = {
        f["rel_path"] for h, d in nodes if h != host for f in d.get("files") or [] if isinstance(f, dict)
    }
    return [f for f in files if f.rel_path not in others]


def validate_manifest(doc: dict[str, Any], rec_id: str, src: str) -> None:
    """The required keys and the shape of ``files`` (SPEC section 2)."""
    for key in ("recording_id", "start_time"):
        if key not in doc:
            raise InputError(
                f"{rec_id}: {src} has no {key!r}; the rig writes it, add it by hand "
                "or run `ursa-daemon reconstruct-manifest`",
                rec_id=rec_id,
                file=src,
            )
    if doc["recording_id"] != rec_id:
        raise InputError(
            f"{rec_id}: {src} says recording_id {str(doc['recording_id'])[:80]!r}, not the "
            "directory name; rename the directory or fix the manifest",
            rec_id=rec_id,
            file=src,
        )
    files = doc.get("files")
    if files is not None and not isinstance(files, list):
        raise InputError(f"{rec_id}: {src}: files must be a list; fix the manifest", rec_id=rec_id, file=src)
    for f in files or []:
        if not isinstance(f, dict):
            raise InputError(f"{rec_id}: {src}: every files[] entry must be an object", rec_id=rec_id, file=src)
        check_rel_path(f.get("rel_path"), rec_id, src)
        size = f.get("size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InputError(
                f"{rec_id}: {src}: size of {f.get('rel_path')!r} must be a non-negative integer",
                rec_id=rec_id,
                file=str(f.get("rel_path")),
            )


def _check_listed_files(
    doc: dict[str, Any], on_disk: list[FileEntry], rec_dir: Path, src: str
) -> list[FileEntry]:
    """The session's data files: the manifest's list when it has one (each must exist
    with its size, inside the session), else every data file on disk."""
    listed = doc.get("files")
    if not listed:
        return on_disk
    rec_id = rec_dir.name
    sizes = {e.rel_path: e.size for e in on_disk}
    root = rec_dir.resolve()
    missing, wrong = [], []
    for f in listed:
        rel = f["rel_path"]
        if not (rec_dir / rel).resolve().is_relative_to(root):
            raise InputError(
                f"{rec_id}: {src}: rel_path {rel!r} resolves outside the session; fix the manifest",
                rec_id=rec_id,
                file=rel,
            )
        if rel not in sizes:
            missing.append(rel)
        elif sizes[rel] != f["size"]:
            wrong.append(f"{rel} (manifest {f['size']}, disk {sizes[rel]})")
    if missing or wrong:
        parts = []
        if missing:
            parts.append(f"missing: {', '.join(missing[:20])}")
        if wrong:
            parts.append(f"size differs: {', '.join(wrong[:20])}")
        raise InputError(
            f"{rec_id}: files listed in {src} do not match the disk ({'; '.join(parts)}); "
            "copy the missing files back, or fix the manifest",
            rec_id=rec_id,
            file=(missing or wrong)[0].split(" ")[0],
        )
    wanted = {f["rel_path"] for f in listed}
    return [e for e in on_disk if e.rel_path in wanted]


def read_participant(rec_dir: Path) -> str | None:
    """The operator-typed name in ``participant.txt``, or None when there is no file."""
    rec_id = rec_dir.name
    path = rec_dir / PARTICIPANT_NAME
    if path.is_symlink():
        symlink_error(rec_id, PARTICIPANT_NAME)
    if not path.exists():
        return None
    if not path.is_file():
        raise InputError(
            f"{rec_id}: {PARTICIPANT_NAME} is not a regular file (a directory?); it should be a text file "
            "holding one name: replace it or remove it",
            rec_id=rec_id,
            file=PARTICIPANT_NAME,
        )
    with open(path, "rb") as f:
        data = f.read(MAX_PARTICIPANT_BYTES + 1)
    if len(data) > MAX_PARTICIPANT_BYTES:
        raise InputError(
            f"{rec_id}: {PARTICIPANT_NAME} is larger than {MAX_PARTICIPANT_BYTES} bytes; "
            "it should hold one name: fix it",
            rec_id=rec_id,
            file=PARTICIPANT_NAME,
        )
    try:
        name = data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise InputError(
            f"{rec_id}: {PARTICIPANT_NAME} is not UTF-8; rewrite it as UTF-8 text",
            rec_id=rec_id,
            file=PARTICIPANT_NAME,
        ) from None
    if not name:  # an operator who typed nothing: the session has no participant, as with no file
        return None
    return name


def augment(
    doc: Mapping[str, Any],
    files: Iterable[FileEntry],
    *,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> dict[str, Any]:
    """The augmented manifest: per-file sha256 sorted by rel_path, recording_hash, version.

    Idempotent: augmenting an augmented manifest over the same bytes returns
    it unchanged (``augmented_at`` included). The rig's fields are kept.
    """
    entries = sorted(files, key=lambda e: e.rel_path)
    if any(e.sha256 is None for e in entries):
        raise ValueError("augment() needs hashed files")
    rig_entries = {f.get("rel_path"): f for f in doc.get("files") or [] if isinstance(f, dict)}
    # the rig's own keys of an entry (say "channel") are kept; ours are set
    new_files = [{**rig_entries.get(e.rel_path, {}), **e.as_json()} for e in entries]
    rh = recording_hash(e.sha256 for e in entries if e.sha256)
    if doc.get("files") == new_files and doc.get("recording_hash") == rh and "augmented_at" in doc:
        return dict(doc)
    out = dict(doc)
    out["files"] = new_files
    out["recording_hash"] = rh
    out["manifest_version"] = MANIFEST_VERSION
    out["augmented_at"] = now().isoformat(timespec="milliseconds")
    return out


def manifest_bytes(doc: Mapping[str, Any]) -> bytes:
    """The canonical serialisation written to disk and to the store."""
    return (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode("utf-8")

