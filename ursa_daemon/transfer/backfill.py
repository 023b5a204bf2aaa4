"""Offline recovery: register bytes already in the store (Path B), rebuild a missing
manifest from disk or from the store (Path C)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from ursa_daemon.catalog import ModalityRow, RecordingRow, SessionRows
from ursa_daemon.errors import InputError, NodesPending, ObjectNotFound, RecordingIdTaken
from ursa_daemon.log import get_logger
from ursa_daemon.session import (
    MANIFEST_NAME,
    MAX_MANIFEST_BYTES,
    NODE_MANIFEST_DIR,
    PARTICIPANT_NAME,
    REC_ID_RE,
    FileEntry,
    augment,
    check_rel_path,
    hash_files,
    is_data_name,
    manifest_bytes,
    merge_node_manifests,
    parse_json_document,
    parse_time_ns,
    recording_hash,
    rel_key,
    validate_manifest,
    walk_session,
)
from ursa_daemon.store import Store
from ursa_daemon.transfer.register import (
    IngestResult,
    SessionSpan,
    object_sha256,
    put_small,
    register_rows,
    register_session,
    session_rows,
)

if TYPE_CHECKING:
    from ursa_daemon.transfer.context import Context

__all__ = ["reconstruct_from_disk", "reconstruct_from_store", "register_from_store"]

log = get_logger("ursa.backfill")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _check_rec_id(rec_id: str) -> None:
    if not REC_ID_RE.match(rec_id):
        raise InputError(
            f"{rec_id!r} is not a session id (rec_YYYYMMDD_HHMMSS_<hex>); check the argument",
            rec_id=rec_id,
        )


def _load_store_json(store: Store, key: str, rec_id: str) -> dict[str, Any]:
    meta = store.head(key)
    if meta.size > MAX_MANIFEST_BYTES:
        raise InputError(f"{rec_id}: {key} is {meta.size} bytes, too large for a manifest", rec_id=rec_id, file=key)
    try:  # UTF-8, bounded in size and depth: never a RecursionError
        return parse_json_document(store.get(key), rec_id, key)
    except InputError as exc:
        raise InputError(
            f"{exc} (in the store; or run `ursa-daemon reconstruct-manifest {rec_id}`)", rec_id=rec_id, file=key
        ) from None


def _store_manifest(store: Store, rec_id: str) -> tuple[dict[str, Any], list[dict[str, Any]], set[str]]:
    """The session manifest in the store, the node manifests it was merged from (if any) and
    those nodes' names: one listing, so the node check and the union see the same nodes."""
    try:
        return _load_store_json(store, rel_key(rec_id, MANIFEST_NAME), rec_id), [], set()
    except ObjectNotFound:
        pass
    prefix = rel_key(rec_id, NODE_MANIFEST_DIR) + "/"
    keys = sorted(m.key for m in store.list(prefix) if m.key.endswith(".json"))
    if not keys:
        raise InputError(
            f"{rec_id}: no {MANIFEST_NAME} and no {NODE_MANIFEST_DIR}/*.json under "
            f"recordings/{rec_id}/ in the store; upload the session (ingest) or run "
            f"`ursa-daemon reconstruct-manifest {rec_id}`",
            rec_id=rec_id,
            file=MANIFEST_NAME,
        )
    nodes = [_load_store_json(store, k, rec_id) for k in keys]
    return merge_node_manifests(nodes, rec_id), nodes, {PurePosixPath(k).stem for k in keys}


def _augmented_files(doc: dict[str, Any], rec_id: str, src: str) -> list[FileEntry]:
    files = []
    for f in doc.get("files") or []:
        sha = f.get("sha256")
        if not isinstance(sha, str) or not _HEX64.match(sha):
            raise InputError(
                f"{rec_id}: {src} lists {f.get('rel_path')!r} without a sha256: it was not augmented; "
                f"run `ursa-daemon reconstruct-manifest {rec_id}` first",
                rec_id=rec_id,
                file=str(f.get("rel_path")),
            )
        files.append(FileEntry(f["rel_path"], f["size"], sha))
    if not files:
        raise InputError(f"{rec_id}: {src} lists no files; nothing to register", rec_id=rec_id, file=src)
    return files


def register_from_store(
    data: Context,
    rec_id: str,
    *,
    participant: str | None = None,
    allow_partial: bool = False,
    overwrite: bool = False,
    confirmed: frozenset[str] = frozenset(),
) -> IngestResult:
    """Path B: verify every listed object (size and sha256), then register. No upload.

    Refuses with the complete list of what is missing or different. A dual-node
    session needs every node's manifest (else :class:`NodesPending`) unless
    ``allow_partial`` or the recording is already registered: then a half that
    arrives later adds its modality rows to the recording of the same ``rec_id``
    and never changes its ``recording_hash``. ``confirmed`` names files whose
    objects the caller has just confirmed (not read again).
    """
    _check_rec_id(rec_id)
    raw = data.store("raw_ro")
    doc, nodes, hosts = _store_manifest(raw, rec_id)
    src = MANIFEST_NAME if not nodes else NODE_MANIFEST_DIR
    validate_manifest(doc, rec_id, src)
    files = _augmented_files(doc, rec_id, src)
    found = _registered(data, rec_id) if nodes else None
    existing = found[0] if found else None
    if nodes and existing is None and not allow_partial:
        _check_nodes(rec_id, doc, hosts)
    _check_objects(raw, rec_id, files, confirmed)
    rh = recording_hash(f.sha256 for f in files if f.sha256)
    if not nodes and doc.get("recording_hash") not in (None, rh):
        raise InputError(
            f"{rec_id}: {MANIFEST_NAME} says recording_hash {doc.get('recording_hash')!r} but its "
            f"files hash to {rh}; run `ursa-daemon reconstruct-manifest {rec_id}`",
            rec_id=rec_id,
            file=MANIFEST_NAME,
        )
    doc = {**doc, "recording_hash": rh}
    span = _span(doc, rec_id, src)
    if participant is None:
        participant = _store_participant(raw, rec_id)
    if found is not None and found[0].recording_hash != rh:
        recording = _add_late_half(data, *found, span, files, doc, participant)
    else:
        try:
            recording = register_session(
                data, span, files, doc, participant=participant, overwrite=overwrite, one_per_rec_id=bool(nodes)
            )
        except RecordingIdTaken:  # the other half's writer registered the recording meanwhile
            found = _registered(data, rec_id)
            if found is None:
                raise
            recording = _add_late_half(data, *found, span, files, doc, participant)
    return IngestResult(False, recording, 0, len(files), 0)


def _check_objects(raw: Store, rec_id: str, files: list[FileEntry], confirmed: frozenset[str]) -> None:
    """Every listed object is in the store with the manifest's size and sha256, else one
    :class:`InputError` listing every one that is missing or different."""
    problems = []
    for entry in files:
        if entry.rel_path in confirmed:
            continue
        key = rel_key(rec_id, entry.rel_path)
        try:
            meta = raw.head(key)
        except ObjectNotFound:
            problems.append(f"{entry.rel_path}: missing")
            continue
        sha = meta.sha256 or object_sha256(raw, key)
        if meta.size != entry.size:
            problems.append(f"{entry.rel_path}: {meta.size} bytes, manifest says {entry.size}")
        elif sha != entry.sha256:
            problems.append(f"{entry.rel_path}: sha256 differs from the manifest")
    if problems:
        raise InputError(
            f"{rec_id}: {len(problems)} object(s) in the store do not match the manifest, nothing "
            f"registered: {'; '.join(problems)}. Upload the session again (`ursa-daemon ingest`)",
            rec_id=rec_id,
            file=problems[0].split(":")[0],
        )


def _span(doc: dict[str, Any], rec_id: str, src: str) -> SessionSpan:
    """The session's start and duration: ``end_time`` if given, else ``duration_s``."""
    start_ns = parse_time_ns(doc["start_time"], rec_id=rec_id, key="start_time", file=src)
    end = doc.get("end_time")
    duration_ns = (
        max(0, parse_time_ns(end, rec_id=rec_id, key="end_time", file=src) - start_ns)
        if end is not None
        else round(float(doc.get("duration_s") or 0) * 1e9)
    )
    return SessionSpan(rec_id, start_ns, duration_ns)


def _registered(data: Context, rec_id: str) -> tuple[RecordingRow, list[ModalityRow]] | None:
    """The recording already registered under ``rec_id`` (a dual-node session's first
    registration) with its modality rows."""
    found = data.write_catalog().query(rec_id=rec_id, limit=1)
    return found[0] if found else None


def _add_late_half(
    data: Context,
    existing: RecordingRow,
    modalities: list[ModalityRow],
    span: SessionSpan,
    files: list[FileEntry],
    doc: dict[str, Any],
    participant: str | None,
) -> RecordingRow:
    """A dual-node half that arrived after the recording was registered: add the modality
    rows of workers the recording lacks; the recording row, and its hash, stay as they are."""
    rows = session_rows(
        data.profile, span, files, {**doc, "recording_hash": existing.recording_hash}, participant=participant
    )
    have = {(m.modality, m.worker_id) for m in modalities}
    new = [m for m in rows.modalities if (m.modality, m.worker_id) not in have]
    known = [p for p in rows.participants if p.participant_id in existing.participant_ids]
    recording = register_rows(data, SessionRows(known, existing, new))
    log.info(
        "session.late_half_registered",
        rec_id=span.rec_id,
        recording_hash=existing.recording_hash,
        modalities=[m.worker_subdir for m in new],
    )
    return recording


def _check_nodes(rec_id: str, doc: dict[str, Any], have: set[str]) -> None:
    """Every node named in ``nodes`` is among ``have``, the node manifests merged into ``doc``
    (not a second listing: a node that lands in between would pass the check without
    being in the union, and the recording would be registered over a half)."""
    wanted = [str(n) for n in doc.get("nodes") or []]
    missing = [n for n in wanted if n not in have]
    if missing:
        raise NodesPending(
            f"{rec_id}: node manifest(s) of {', '.join(missing)} are not in the store yet; wait for "
            "those nodes to upload, or pass --allow-partial to register what is there",
            rec_id=rec_id,
            missing=missing,
        )


def _store_participant(store: Store, rec_id: str) -> str | None:
    try:
        text = store.get(rel_key(rec_id, PARTICIPANT_NAME))[:256].decode("utf-8", "replace").strip()
    except ObjectNotFound:
        return None
    return text or None


def _start_from_rec_id(rec_id: str) -> str:
    stamp = datetime.strptime(rec_id[4:19], "%Y%m%d_%H%M%S").replace(tzinfo=UTC)
    return stamp.isoformat(timespec="milliseconds")


def _reconstructed(rec_id: str, files: list[FileEntry], participant: str | None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "recording_id": rec_id,
        "start_time": _start_from_rec_id(rec_id),
        "reconstruction": {"reconstructed_at": datetime.now(UTC).isoformat(timespec="seconds"),
                           "start_time_from": "rec_id (assumed UTC)",
                           # the runbook's flag: no participant.txt (or a blank one) to take the name from
                           "reconstructed_participant": not participant},
    }
    if participant:
        doc["participant"] = participant
    return augment(doc, files)


def reconstruct_from_disk(rec_dir: Path) -> Path:
    """Path C on disk: write ``manifest.json`` from the files of a session without one."""
    rec_dir = Path(rec_dir)
    rec_id = rec_dir.name
    _check_rec_id(rec_id)
    path = rec_dir / MANIFEST_NAME
    if path.exists():
        raise InputError(
            f"{rec_id}: {MANIFEST_NAME} already exists; nothing to reconstruct (delete it first if it is wrong)",
            rec_id=rec_id,
            file=MANIFEST_NAME,
        )
    files = hash_files(rec_dir, walk_session(rec_dir))
    if not files:
        raise InputError(f"{rec_id}: no data files to build a manifest from", rec_id=rec_id)
    doc = _reconstructed(rec_id, files, None)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_bytes(manifest_bytes(doc))
    tmp.replace(path)
    return path


def reconstruct_from_store(data: Context, rec_id: str) -> dict[str, Any]:
    """Path C in the store: hash every object under ``recordings/<rec_id>/`` and PUT the manifest.

    A session whose manifest is already there and valid is left alone.
    """
    _check_rec_id(rec_id)
    raw = data.store("raw_rw")
    try:
        existing = _load_store_json(raw, rel_key(rec_id, MANIFEST_NAME), rec_id)
        validate_manifest(existing, rec_id, MANIFEST_NAME)
        _augmented_files(existing, rec_id, MANIFEST_NAME)
        return existing
    except (ObjectNotFound, InputError):
        pass
    prefix = f"recordings/{rec_id}/"
    files = []
    for meta in sorted(raw.list(prefix), key=lambda m: m.key):
        rel = meta.key[len(prefix):]
        top = rel.split("/", 1)[0]
        if rel in (MANIFEST_NAME, PARTICIPANT_NAME) or top == NODE_MANIFEST_DIR:
            continue
        check_rel_path(rel, rec_id, "store listing")
        if not all(is_data_name(p) for p in rel.split("/")):
            continue
        head = raw.head(meta.key)
        files.append(FileEntry(rel, head.size, head.sha256 or object_sha256(raw, meta.key)))
    if not files:
        raise InputError(f"{rec_id}: no objects under {prefix} to build a manifest from", rec_id=rec_id)
    doc = _reconstructed(rec_id, files, _store_participant(raw, rec_id))
    put_small(raw, rel_key(rec_id, MANIFEST_NAME), manifest_bytes(doc), "application/json")
    log.info("manifest.reconstructed", rec_id=rec_id, recording_hash=doc["recording_hash"])
    return doc
