"""A session's catalog rows and their registration: what ingest (Path A) and
registration from the store (Path B) share.

:func:`session_rows` builds the participant, recording and modality rows from a
hashed session; :func:`register_rows` and :func:`register_many` write them, one
commit per changed table, the recording row last. :func:`put_small` and
:func:`object_sha256` are the small-object helpers both paths use on the raw store.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
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
from ursa_daemon.errors import InputError
from ursa_daemon.log import get_logger
from ursa_daemon.session import MANIFEST_NAME, FileEntry, participant_id, rel_key, split_worker
from ursa_daemon.store import Store, storage_uri

if TYPE_CHECKING:
    from ursa_daemon.transfer.context import Context

__all__ = [
    "IngestResult",
    "SessionSpan",
    "duplicate_error",
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
    return SessionRows(participants, recording, _modality_rows(profile, rh, rec_id, files, doc))


def _modality_rows(
    profile: LocalProfile | S3Profile, rh: str, rec_id: str, files: list[FileEntry], doc: dict[str, Any]
) -> list[ModalityRow]:
    """One raw modality row per worker subdirectory, with its ``workers.<name>`` sampling rate."""
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
    return modalities


def register_session(
    data: Context,
    span: SessionSpan,
    files: list[FileEntry],
    doc: dict[str, Any],
    *,
    participant: str | None,
    overwrite: bool = False,
    one_per_rec_id: bool = False,
) -> RecordingRow:
    """Write a session's rows: one commit per table, the recording row last."""
    rows = session_rows(data.profile, span, files, doc, participant=participant)
    return register_rows(data, rows, overwrite=overwrite, one_per_rec_id=one_per_rec_id)


def _policies(overwrite: bool) -> dict[str, Any]:
    """A participant already in the catalog is kept as it is (a later session
    of the same person must not conflict on ``enrolled_at``)."""
    policy: Literal["overwrite", "error"] = "overwrite" if overwrite else "error"
    return {"on_conflict_recording": policy, "on_conflict_modality": policy, "on_conflict_participant": "keep"}


def register_rows(
    data: Context, rows: SessionRows, *, overwrite: bool = False, one_per_rec_id: bool = False
) -> RecordingRow:
    """Register one session's rows, one commit per changed table (``one_per_rec_id``: see
    :meth:`~ursa_daemon.catalog.writes.CatalogWrites.register_session`)."""
    row = data.write_catalog().register_session(
        participants=rows.participants,
        recording=rows.recording,
        modalities=rows.modalities,
        one_per_rec_id=one_per_rec_id,
        **_policies(overwrite),
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
