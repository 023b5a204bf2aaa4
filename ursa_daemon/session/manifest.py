"""Sessions on disk: walk, validate, hash and augment manifests (SPEC section 2). Pure.

Every problem with a session is an :class:`InputError` that names the
session, the file and the fix.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import stat
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from ursa_daemon.errors import InputError

__all__ = [
    "HASH_CHUNK_SIZE",
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "NODE_MANIFEST_DIR",
    "NODE_NAME_RE",
    "PARTICIPANT_NAME",
    "REC_ID_RE",
    "FileEntry",
    "HashingStopped",
    "Session",
    "augment",
    "check_rel_path",
    "hash_file",
    "hash_files",
    "is_data_name",
    "load_session",
    "node_files",
    "parse_time_ns",
    "parse_json_document",
    "participant_id",
    "read_manifest",
    "read_participant",
    "recording_hash",
    "split_worker",
    "walk_session",
]

MANIFEST_NAME = "manifest.json"
PARTICIPANT_NAME = "participant.txt"
NODE_MANIFEST_DIR = "_node_manifests"
MANIFEST_VERSION = 1
HASH_CHUNK_SIZE = 1 << 20
#: a manifest larger than this is not a rig manifest
MAX_MANIFEST_BYTES = 64 << 20
MAX_PARTICIPANT_BYTES = 256
#: JSON nested deeper than this is not a rig manifest (and would exhaust Python's recursion)
MAX_JSON_DEPTH = 64
#: the catalog keeps times and durations as int64 epoch nanoseconds
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
#: S3 (and R2) refuse object keys longer than this many UTF-8 bytes
MAX_KEY_BYTES = 1024
#: obstore's local store cannot hold a file whose name ends in ``#<digits>`` (its staging names)
_LOCAL_RESERVED_RE = re.compile(r"#\d+$")

REC_ID_RE = re.compile(r"^rec_\d{8}_\d{6}_[0-9a-f]{4,32}$")
#: a node manifest is named after its node: ``_node_manifests/<hostname>.json``
NODE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
FAMILY_RE = re.compile(r"^[a-z][a-z0-9]*$")
ID_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")
_SKIP_SUFFIXES = (".part", ".tmp", "~")


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


def split_worker(name: str) -> tuple[str, str]:
    """``eeg_4559`` → (``eeg``, ``4559``); ``mic`` → (``mic``, ``""``)."""
    family, _, worker_id = name.partition("_")
    return family, worker_id


def _worker_name_ok(name: str) -> bool:
    family, worker_id = split_worker(name)
    return bool(FAMILY_RE.match(family)) and (worker_id == "" or bool(ID_RE.match(worker_id)))


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
            _symlink_error(rec_id, entry.name)
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
            _symlink_error(rec_id, rel_path)
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


def _symlink_error(rec_id: str, rel: str) -> None:
    raise InputError(
        f"{rec_id}: {rel!r} is a symbolic link; links are never followed. "
        "Replace it with the real file (or remove it) and retry",
        rec_id=rec_id,
        file=rel,
    )


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


def parse_time_ns(value: Any, *, rec_id: str, key: str, file: str) -> int:
    """An ISO-8601 time with an offset, or integer epoch nanoseconds, as epoch ns."""
    if isinstance(value, int) and not isinstance(value, bool):
        return _int64(value, rec_id=rec_id, key=key, file=file)
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            dt = None
        if dt is not None and dt.tzinfo is not None:
            try:
                delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
            except OverflowError:  # an offset that pushes the time past year 1 or 9999
                delta = None
            if delta is not None:
                ns = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
                return _int64(ns, rec_id=rec_id, key=key, file=file)
    raise InputError(
        f"{rec_id}: {file}: {key} must be ISO-8601 with an offset "
        "(2026-05-20T19:56:28.120+00:00) or integer epoch nanoseconds; got "
        f"{type(value).__name__}; fix the manifest",
        rec_id=rec_id,
        file=file,
    )


def _int64(ns: int, *, rec_id: str, key: str, file: str) -> int:
    """``ns`` if it fits the catalog's int64 nanoseconds, else an InputError naming ``key``."""
    if INT64_MIN <= ns <= INT64_MAX:
        return ns
    raise InputError(
        f"{rec_id}: {file}: {key} is out of range: the catalog keeps times as int64 epoch nanoseconds "
        "(years 1677 to 2262); fix the manifest",
        rec_id=rec_id,
        file=file,
    )


def _json_depth_ok(doc: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when ``doc`` nests no deeper than ``limit`` (iterative: no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            if depth > limit:
                return False
            stack.extend((child, depth + 1) for child in node if isinstance(child, dict | list))
    return True


_TOO_DEEP = object()


def parse_json_document(body: bytes, rec_id: str, rel: str) -> dict[str, Any]:
    """A manifest-like JSON object from ``body``: UTF-8, at most ``MAX_MANIFEST_BYTES``, nested at
    most ``MAX_JSON_DEPTH`` deep. Anything else is an InputError naming ``rel``, never a
    ``RecursionError``."""
    if len(body) > MAX_MANIFEST_BYTES:
        raise InputError(
            f"{rec_id}: {rel} is {len(body)} bytes, larger than any rig manifest; fix or remove it",
            rec_id=rec_id,
            file=rel,
        )
    try:
        doc = json.loads(body)
    except UnicodeDecodeError as exc:
        raise InputError(f"{rec_id}: {rel} is not UTF-8 ({exc.reason}); rewrite it as UTF-8 JSON",
                         rec_id=rec_id, file=rel) from None
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{rec_id}: {rel} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "fix the file, or delete it and run `ursa-daemon reconstruct-manifest`",
            rec_id=rec_id,
            file=rel,
        ) from None
    except RecursionError:  # nested deeper than Python parses
        doc = _TOO_DEEP
    except ValueError as exc:  # an integer literal of thousands of digits
        raise InputError(f"{rec_id}: {rel} is not a usable JSON document ({exc}); fix the file",
                         rec_id=rec_id, file=rel) from None
    if doc is _TOO_DEEP or not _json_depth_ok(doc):
        raise InputError(
            f"{rec_id}: {rel} nests JSON deeper than {MAX_JSON_DEPTH} levels; no rig manifest does: fix the file",
            rec_id=rec_id,
            file=rel,
        )
    if not isinstance(doc, dict):
        raise InputError(f"{rec_id}: {rel} must hold a JSON object; fix the file", rec_id=rec_id, file=rel)
    return doc


def _load_json(path: Path, rec_id: str, rel: str) -> dict[str, Any]:
    if path.is_symlink():
        _symlink_error(rec_id, rel)
    if not path.is_file():
        raise InputError(
            f"{rec_id}: {rel} is not a regular file (a directory?); the rig writes it as a JSON file: "
            "remove it and write the file, or run `ursa-daemon reconstruct-manifest`",
            rec_id=rec_id,
            file=rel,
        )
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise InputError(
            f"{rec_id}: {rel} is {size} bytes, larger than any rig manifest; fix or remove it",
            rec_id=rec_id,
            file=rel,
        )
    return parse_json_document(path.read_bytes(), rec_id, rel)


def read_manifest(rec_dir: Path) -> tuple[dict[str, Any], str]:
    """The session's manifest and the file it came from.

    ``manifest.json`` if present, else the merge of ``_node_manifests/*.json``.
    """
    rec_id = rec_dir.name
    path = rec_dir / MANIFEST_NAME
    if os.path.lexists(path):  # a directory or a link here is an error, not a missing manifest
        return _load_json(path, rec_id, MANIFEST_NAME), MANIFEST_NAME
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
        docs.append(_load_json(p, rec_id, f"{NODE_MANIFEST_DIR}/{p.name}"))
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
    doc, src = read_manifest(rec_dir)
    validate_manifest(doc, rec_id, src)
    start_ns = parse_time_ns(doc["start_time"], rec_id=rec_id, key="start_time", file=src)
    duration_ns = _duration_ns(doc, start_ns, rec_id, src)
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
        out.append((host, _load_json(p, rec_id, f"{NODE_MANIFEST_DIR}/{p.name}")))
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


def _duration_ns(doc: dict[str, Any], start_ns: int, rec_id: str, src: str) -> int:
    if doc.get("end_time") is not None:
        end_ns = parse_time_ns(doc["end_time"], rec_id=rec_id, key="end_time", file=src)
        if end_ns < start_ns:
            raise InputError(
                f"{rec_id}: {src}: end_time is before start_time; fix the manifest (or give duration_s instead)",
                rec_id=rec_id,
                file=src,
            )
        return _int64(end_ns - start_ns, rec_id=rec_id, key="end_time", file=src)
    dur = doc.get("duration_s")
    if dur is None:
        return 0
    finite = isinstance(dur, int) or (isinstance(dur, float) and math.isfinite(dur))  # 10**400 is an int
    if isinstance(dur, bool) or not finite or dur < 0:
        raise InputError(f"{rec_id}: {src}: duration_s must be a non-negative number", rec_id=rec_id, file=src)
    try:
        ns = round(dur * 1_000_000_000)
    except OverflowError:  # 1e300 * 1e9 is infinite
        ns = INT64_MAX + 1
    if ns < 0:
        raise InputError(f"{rec_id}: {src}: duration_s must be a non-negative number", rec_id=rec_id, file=src)
    return _int64(ns, rec_id=rec_id, key="duration_s", file=src)


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
        _symlink_error(rec_id, PARTICIPANT_NAME)
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


def rel_key(rec_id: str, rel_path: str) -> str:
    """The raw-bucket key of a session file."""
    return str(PurePosixPath("recordings") / rec_id / rel_path)
