"""Ingest one session: hash, upload every byte, confirm, then register (Path A).

The order is the guarantee: data files, then ``participant.txt``, then the
augmented ``manifest.json`` (the marker that every byte before it is in),
and only then the catalog rows, one commit per table. A query never returns
a row whose download would 404.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ursa_daemon.catalog import (
    LEGACY_ID_KEY,
    IngestionStatus,
    ModalityRow,
    ParticipantRow,
    RecordingRow,
    SessionRows,
)
from ursa_daemon.config import LocalProfile, S3Profile
from ursa_daemon.errors import InputError, NodesPending, ObjectNotFound
from ursa_daemon.log import get_logger
from ursa_daemon.session import (
    MANIFEST_NAME,
    NODE_MANIFEST_DIR,
    PARTICIPANT_NAME,
    FileEntry,
    Session,
    augment,
    hash_files,
    load_session,
    manifest_bytes,
    node_files,
    parse_json_document,
    participant_id,
    rel_key,
    split_worker,
)
from ursa_daemon.store import LocalStore, Store, storage_uri
from ursa_daemon.store.base import MultipartStore
from ursa_daemon.transfer.abort import abort_orphan_uploads, abort_uploads
from ursa_daemon.transfer.limits import RateLimiter, UploadLimits
from ursa_daemon.transfer.local_copy import discard_partials, kept_partials
from ursa_daemon.transfer.multipart_upload import UploadJournal
from ursa_daemon.transfer.upload import FileUpload, upload_files

if TYPE_CHECKING:
    from ursa_daemon.transfer.context import Context

__all__ = [
    "IngestResult",
    "duplicate_error",
    "SessionSpan",
    "hash_part_size",
    "UploadProgress",
    "ingest",
    "object_sha256",
    "put_small",
    "register_many",
    "register_rows",
    "register_session",
    "session_rows",
]

log = get_logger("ursa.ingest")


@dataclass(frozen=True)
class SessionSpan:
    """What the catalog needs of a session besides its files: id and time span."""

    rec_id: str
    start_time_ns: int
    duration_ns: int


@dataclass(frozen=True)
class UploadProgress:
    """After each file: cumulative counts for one session.

    ``bytes_uploaded`` counts PUT bytes only; ``bytes_processed`` counts every
    file decided (uploaded or skipped), so a resumed session's bar climbs
    through the skips.
    """

    files_done: int
    files_total: int
    bytes_uploaded: int
    bytes_processed: int
    bytes_total: int
    current_file: str


@dataclass(frozen=True)
class IngestResult:
    """``paused=True`` means nothing was registered and the session should be retried.

    With ``defer_register`` every byte is in but nothing is registered yet:
    ``pending`` holds the rows for :func:`register_many`.
    """

    paused: bool
    recording: RecordingRow | None
    files_uploaded: int
    files_skipped: int
    bytes_uploaded: int
    pending: SessionRows | None = None
    #: when paused on the local profile: rel_path → bytes its partial copy kept
    kept_bytes: dict[str, int] = field(default_factory=dict)


def hash_part_size(data: Context) -> int | None:
    """The part size to take part checksums at when hashing (S3 stores), else None."""
    if isinstance(data.store("raw_rw"), MultipartStore):
        return data.config.upload.part_size_bytes
    return None


def ingest(
    data: Context,
    rec_dir: str | Path,
    *,
    participant: str | None = None,
    is_active: Callable[[], bool] | None = None,
    progress: Callable[[UploadProgress], None] | None = None,
    overwrite: bool = False,
    max_concurrent_files: int | None = None,
    limiter: RateLimiter | None = None,
    known_hashes: dict[str, str] | None = None,
    defer_register: bool = False,
    journal: UploadJournal | None = None,
    on_file_bytes: Callable[[str, int], None] | None = None,
    hashed: list[FileEntry] | None = None,
) -> IngestResult:
    """Upload a session's files to the raw bucket and register its catalog rows.

    ``participant`` overrides ``participant.txt``. ``is_active`` is polled
    before every chunk (from worker threads: it must be thread-safe); when it
    turns true every stream stops and the result says ``paused``. A file whose
    object already exists with the same size and sha256 is skipped unless
    ``overwrite``; ``overwrite`` also replaces differing catalog rows.
    ``defer_register`` stops after the manifest upload and returns the rows in
    ``pending``, for a caller that registers many sessions at once.
    ``journal`` (the daemon's ``StateDB``) keeps multipart uploads and their
    confirmed parts, so a paused or killed upload continues with the missing
    parts; without it a paused multipart upload is aborted. ``on_file_bytes(rel_path, n)``
    is told of bytes as they are sent (from worker threads). ``hashed``: the
    caller's own :func:`hash_files` of this session (with :func:`hash_part_size`),
    used when it lists exactly the session's files, so nothing is read twice.
    """
    should_stop = is_active or (lambda: False)
    session = load_session(Path(rec_dir))
    rec_id = session.rec_id
    log.info("session.hashing", rec_id=rec_id, bytes_total=session.bytes_total)
    if hashed is not None and sorted(f.rel_path for f in hashed) == sorted(f.rel_path for f in session.files):
        files = hashed
    else:
        files = hash_files(session.rec_dir, session.files, known=known_hashes, part_size=hash_part_size(data))
    doc = augment(session.manifest, files)
    rh = doc["recording_hash"]
    raw = data.store("raw_rw")
    cfg = data.config.upload
    limits = UploadLimits(
        max_concurrent_files=max_concurrent_files or cfg.max_concurrent_files,
        max_concurrency_per_file=cfg.max_concurrency_per_file,
        part_size=cfg.part_size_bytes,
        bandwidth_bytes_per_s=cfg.bandwidth_bytes_per_s,
    )
    name = participant if participant is not None else session.participant
    span = SessionSpan(rec_id, session.start_time_ns, session.duration_ns)
    _check_rows(data, span, files, doc, name)  # what the catalog would refuse, refused before any byte moves
    tracker = _Progress(files, progress, rec_id)
    stored_doc = _stored_manifest(raw, rec_id)
    if not session.node_manifests:
        _refuse_duplicate(data, rec_id, rh)
        _replace_changed_version(data, rec_id, rh, stored_doc, overwrite)
    todo = files if overwrite else _files_to_upload(raw, rec_id, files, tracker, stored_doc)
    started = time.monotonic()
    try:
        done = upload_files(
            raw,
            session.rec_dir,
            rec_id,
            todo,
            should_stop=should_stop,
            limits=limits,
            limiter=limiter or RateLimiter(limits.bandwidth_bytes_per_s),
            on_done=tracker.file_done,
            journal=journal,
            on_file_bytes=on_file_bytes,
        )
    except InputError:  # a file changed: this session's uploads will not be completed as they are
        if journal is not None:
            abort_uploads(raw, journal, journal.multipart_uploads(rec_id))
        discard_partials(raw, rec_id)
        raise
    if done and journal is not None:  # every file is in: what the journal still holds is left over
        abort_uploads(raw, journal, journal.multipart_uploads(rec_id))
    if done:  # and what no journal holds (a lost state database, a process that died mid-upload)
        abort_orphan_uploads(raw, rec_id, journal)
        discard_partials(raw, rec_id)
    if not done or should_stop():
        log.info("session.paused", rec_id=rec_id, recording_hash=rh, bytes_done=tracker.bytes_uploaded)
        paused = tracker.result(paused=True, recording=None)
        paused.kept_bytes.update(kept_partials(raw, rec_id, todo))
        return paused
    if name is not None:
        put_small(raw, rel_key(rec_id, PARTICIPANT_NAME), (name + "\n").encode("utf-8"), "text/plain")
    if session.node_manifests:
        return _finish_node_half(data, session, files, name, tracker, overwrite)
    put_small(raw, rel_key(rec_id, MANIFEST_NAME), manifest_bytes(doc), "application/json")
    log.info(
        "upload.session_done",
        rec_id=rec_id,
        recording_hash=rh,
        bytes_done=tracker.bytes_uploaded,
        elapsed_s=round(time.monotonic() - started, 3),
    )
    rows = session_rows(data.profile, span, files, doc, participant=name)
    if defer_register:
        return tracker.result(paused=False, recording=None, pending=rows)
    recording = register_rows(data, rows, overwrite=overwrite)
    return tracker.result(paused=False, recording=recording)


def _finish_node_half(
    data: Context,
    session: Session,
    files: list[FileEntry],
    participant: str | None,
    tracker: _Progress,
    overwrite: bool,
) -> IngestResult:
    """A dual-node half (SPEC section 2): upload each local node manifest, augmented over
    its own files, then register once every node named in ``nodes`` is in the store.

    Raises :class:`NodesPending` while another node's half is still missing; no
    ``manifest.json`` is written for a dual-node session (the node manifests are the markers).
    """
    from ursa_daemon.backfill import register_from_store  # backfill builds on this module

    raw = data.store("raw_rw")
    rec_id = session.rec_id
    for host, node_doc in session.node_manifests:
        own = node_files(host, node_doc, session.node_manifests, files)
        body = manifest_bytes(augment(node_doc, own))
        put_small(raw, rel_key(rec_id, f"{NODE_MANIFEST_DIR}/{host}.json"), body, "application/json")
    log.info("upload.session_done", rec_id=rec_id, bytes_done=tracker.bytes_uploaded, nodes=len(session.node_manifests))
    try:
        done = register_from_store(
            data, rec_id, participant=participant, overwrite=overwrite, confirmed=frozenset(f.rel_path for f in files)
        )
    except NodesPending as exc:
        exc.result = tracker.result(paused=False, recording=None)  # what moved before the wait
        raise
    return tracker.result(paused=False, recording=done.recording)


def _check_rows(
    data: Context, span: SessionSpan, files: list[FileEntry], doc: dict[str, Any], participant: str | None
) -> None:
    """Build the session's catalog rows once before upload: a value the catalog cannot hold
    (a NaN in ``device_info``, a sampling rate of 1e400) is an input error naming the field."""
    from pydantic import ValidationError

    try:
        session_rows(data.profile, span, files, doc, participant=participant)
    except ValidationError as exc:
        errors = exc.errors()
        where = ".".join(str(p) for p in errors[0]["loc"]) if errors else "?"
        msg = errors[0]["msg"] if errors else "invalid value"
        raise InputError(
            f"{span.rec_id}: {MANIFEST_NAME}: {exc.title} field {where} cannot be cataloged "
            f"({msg}); fix the manifest",
            rec_id=span.rec_id,
            file=MANIFEST_NAME,
        ) from None
    except (ValueError, TypeError, OverflowError) as exc:
        raise InputError(
            f"{span.rec_id}: {MANIFEST_NAME} holds a value the catalog cannot hold ({type(exc).__name__}: {exc}); "
            "fix the manifest",
            rec_id=span.rec_id,
            file=MANIFEST_NAME,
        ) from None


def duplicate_error(rec_id: str, other: str, rh: str) -> InputError:
    """The refusal of a session whose data files are byte-identical to another registered one."""
    return InputError(
        f"{rec_id}: its data files are byte-identical to those of {other}, already registered as "
        f"recording_hash {rh[:12]}…; one recording cannot be cataloged twice, so nothing of {rec_id} is "
        f"registered. If it is a copy of {other}, delete it; if it is a different recording, its files "
        "should differ: check what the rig wrote",
        rec_id=rec_id,
        file=MANIFEST_NAME,
    )


def _refuse_duplicate(data: Context, rec_id: str, rh: str) -> None:
    """Before any byte moves: the same bytes already registered under another ``rec_id``."""
    existing = data.write_catalog().get_recording(rh)
    if existing is not None and existing.rec_id != rec_id:
        raise duplicate_error(rec_id, existing.rec_id, rh)


def _replace_changed_version(
    data: Context, rec_id: str, rh: str, stored_doc: dict[str, Any] | None, overwrite: bool
) -> None:
    """Refuse to upload over a different version of the session, unless ``overwrite``.

    The stored ``manifest.json`` is written last, so it names the last version whose
    every byte went in (and which may be registered). Uploading changed files over it
    would leave its catalog rows pointing at bytes that are no longer theirs. With
    ``overwrite`` the old version's rows are removed before the first byte moves.
    """
    old = stored_doc.get("recording_hash") if stored_doc else None
    if not isinstance(old, str) or old == rh:
        return
    if not overwrite:
        raise InputError(
            f"{rec_id}: the store already holds a different version of this session (recording_hash "
            f"{old[:12]}…, this one {rh[:12]}…): its files changed after they were uploaded. Restore the "
            "original files, or run `ursa-daemon ingest --overwrite` to replace the stored version and its "
            "catalog rows",
            rec_id=rec_id,
            file=MANIFEST_NAME,
        )
    if data.write_catalog().delete_recording(old):
        log.warning("session.replaced", rec_id=rec_id, recording_hash=old, error="files changed; --overwrite")


def _files_to_upload(
    store: Store, rec_id: str, files: list[FileEntry], tracker: _Progress, stored_doc: dict[str, Any] | None
) -> list[FileEntry]:
    """Files whose object is not already there with the same size and sha256.

    S3 returns the ``sha256`` user metadata with ``head``. The local store has
    no metadata: there the previously uploaded manifest vouches for it, else
    the object (on the same machine) is hashed: a read, no bytes moved.
    """
    stored = _stored_hashes(stored_doc)
    todo = []
    for entry in files:
        key = rel_key(rec_id, entry.rel_path)
        try:
            meta = store.head(key)
        except ObjectNotFound:
            todo.append(entry)
            continue
        sha = meta.sha256 or stored.get(entry.rel_path)
        if sha is None and meta.size == entry.size and isinstance(store, LocalStore):
            sha = object_sha256(store, key)
        if meta.size == entry.size and sha == entry.sha256:
            tracker.file_done(FileUpload(entry, uploaded=False))
        else:
            todo.append(entry)
    return todo


def put_small(store: Store, key: str, body: bytes, content_type: str) -> None:
    """PUT a small object (manifest, participant) with its ``sha256`` metadata, like every raw object."""
    store.put(key, body, sha256=hashlib.sha256(body).hexdigest(), content_type=content_type)


def object_sha256(store: Store, key: str) -> str:
    """Stream an object through sha256."""
    h = hashlib.sha256()
    with store.open(key) as src:
        while chunk := src.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _stored_manifest(store: Store, rec_id: str) -> dict[str, Any] | None:
    """The session's ``manifest.json`` in the store, or None (absent or unreadable)."""
    try:
        return parse_json_document(store.get(rel_key(rec_id, MANIFEST_NAME)), rec_id, MANIFEST_NAME)
    except (ObjectNotFound, InputError):
        return None


def _stored_hashes(doc: dict[str, Any] | None) -> dict[str, str]:
    if doc is None:
        return {}
    try:
        return {f["rel_path"]: f["sha256"] for f in doc.get("files", []) if isinstance(f, dict)}
    except (KeyError, TypeError, AttributeError):
        return {}


class _Progress:
    """Cumulative counters and the (fault-tolerant) progress callback."""

    def __init__(self, files: list[FileEntry], callback: Callable[[UploadProgress], None] | None, rec_id: str):
        self.files_total = len(files)
        self.bytes_total = sum(f.size for f in files)
        self.callback = callback
        self.rec_id = rec_id
        self.files_done = self.files_uploaded = self.bytes_uploaded = self.bytes_processed = 0
        self._lock = threading.Lock()

    def file_done(self, up: FileUpload) -> None:
        with self._lock:
            self.files_done += 1
            self.bytes_processed += up.entry.size
            if up.uploaded:
                self.files_uploaded += 1
                self.bytes_uploaded += up.entry.size
            event = UploadProgress(
                self.files_done,
                self.files_total,
                self.bytes_uploaded,
                self.bytes_processed,
                self.bytes_total,
                up.entry.rel_path,
            )
        (log.info if up.uploaded else log.debug)(
            "upload.file_done" if up.uploaded else "upload.file_skipped",
            rec_id=self.rec_id,
            key=rel_key(self.rec_id, up.entry.rel_path),
            bytes_done=self.bytes_processed,
            bytes_total=self.bytes_total,
        )
        if self.callback is not None:
            try:
                self.callback(event)
            except Exception as exc:  # a broken callback must not break the upload
                log.warning("upload.progress_callback_failed", rec_id=self.rec_id, error=repr(exc))

    def result(
        self, *, paused: bool, recording: RecordingRow | None, pending: SessionRows | None = None
    ) -> IngestResult:
        return IngestResult(
            paused=paused,
            recording=recording,
            files_uploaded=self.files_uploaded,
            files_skipped=self.files_done - self.files_uploaded,
            bytes_uploaded=self.bytes_uploaded,
            pending=pending,
        )


def session_rows(
    profile: LocalProfile | S3Profile,
    span: SessionSpan,
    files: list[FileEntry],
    doc: dict[str, Any],
    *,
    participant: str | None,
) -> SessionRows:
    """The catalog rows of a session: participant, recording, one modality per worker."""
    rh = doc["recording_hash"]
    rec_id = span.rec_id
    participants = []
    if participant is not None:
        pid = participant_id(participant)
        participants.append(
            ParticipantRow(
                participant_id=pid,
                enrolled_at=span.start_time_ns,
                display_name=participant,
                metadata={},
            )
        )
    device_info: dict[str, Any] = doc["device_info"] if isinstance(doc.get("device_info"), dict) else {}
    # the seeds' API reads the session id here (``ursa``: RecordingRow.metadata["manifest_recording_id"])
    metadata: dict[str, Any] = {"manifest_version": doc.get("manifest_version", 1), LEGACY_ID_KEY: rec_id}
    if isinstance(doc.get("nodes"), list):
        metadata["nodes"] = [str(n) for n in doc["nodes"]]
    recording = RecordingRow(
        recording_hash=rh,
        rec_id=rec_id,
        participant_ids=[p.participant_id for p in participants],
        start_time=span.start_time_ns,
        duration_ns=span.duration_ns,
        device_info=device_info,
        metadata=metadata,
        registered_at=time.time_ns(),
    )
    workers_meta: dict[str, Any] = doc["workers"] if isinstance(doc.get("workers"), dict) else {}
    by_worker: dict[str, list[FileEntry]] = {}
    for f in files:
        by_worker.setdefault(f.worker, []).append(f)
    modalities = []
    for worker, wfiles in sorted(by_worker.items()):
        family, worker_id = split_worker(worker)
        uri = storage_uri(profile, "raw", rel_key(rec_id, worker) + "/")
        wmeta: dict[str, Any] = workers_meta[worker] if isinstance(workers_meta.get(worker), dict) else {}
        rate = wmeta.get("sampling_rate")
        if isinstance(rate, int) and not isinstance(rate, bool) and abs(rate) > 2**1023:
            raise ValueError(f"workers.{worker}.sampling_rate is too large for a float")
        modalities.append(
            ModalityRow(
                recording_hash=rh,
                modality=family,
                worker_id=worker_id,
                ingestion_status=IngestionStatus.RAW,
                raw_storage_uri=uri,
                storage_uri=uri,
                format=None,
                sampling_rate=float(rate) if isinstance(rate, int | float) and not isinstance(rate, bool) else None,
                domain_intervals=None,
                channel_spec=None,
                file_count=len(wfiles),
                byte_count=sum(f.size for f in wfiles),
                metadata={},
            )
        )
    return SessionRows(participants, recording, modalities)


def register_session(
    data: Context,
    span: SessionSpan,
    files: list[FileEntry],
    doc: dict[str, Any],
    *,
    participant: str | None,
    overwrite: bool = False,
) -> RecordingRow:
    """Write a session's rows: one commit per table, the recording row last."""
    rows = session_rows(data.profile, span, files, doc, participant=participant)
    return register_rows(data, rows, overwrite=overwrite)


def _policies(overwrite: bool) -> dict[str, Any]:
    """A participant already in the catalog is kept as it is (a later session
    of the same person must not conflict on ``enrolled_at``)."""
    policy: Literal["overwrite", "error"] = "overwrite" if overwrite else "error"
    return {"on_conflict_recording": policy, "on_conflict_modality": policy, "on_conflict_participant": "keep"}


def register_rows(data: Context, rows: SessionRows, *, overwrite: bool = False) -> RecordingRow:
    """Register one session's rows, one commit per changed table."""
    row = data.write_catalog().register_session(
        participants=rows.participants, recording=rows.recording, modalities=rows.modalities, **_policies(overwrite)
    )
    log.info("session.registered", rec_id=rows.recording.rec_id, recording_hash=row.recording_hash)
    return row


def register_many(
    data: Context, batch: list[SessionRows], *, overwrite: bool = False
) -> list[RecordingRow | Exception]:
    """Register a batch of sessions with one commit per changed table for all of them.

    A session that conflicts gets its exception in its slot and the rest go on.
    When the batch commit itself fails (a lost race with another writer), each
    session is retried on its own so one cannot take the others down.
    """
    if not batch:
        return []
    try:
        results = data.write_catalog().register_sessions(batch, **_policies(overwrite))
    except Exception as batch_exc:  # any failure of the batch: one session must not take the others down
        log.debug("catalog.batch_failed", error=f"{type(batch_exc).__name__}: {batch_exc}", exc_info=batch_exc)
        results = []
        for rows in batch:
            try:
                results.append(register_rows(data, rows, overwrite=overwrite))
            except Exception as exc:
                results.append(exc)
        return results
    for rows, res in zip(batch, results, strict=True):
        if not isinstance(res, Exception):
            log.info("session.registered", rec_id=rows.recording.rec_id, recording_hash=res.recording_hash)
    return results
