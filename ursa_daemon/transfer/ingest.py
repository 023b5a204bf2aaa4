"""Ingest one session: hash, upload every byte, confirm, then register (Path A).

The order is the guarantee: data files, then ``participant.txt``, then the
augmented ``manifest.json`` (the marker that every byte before it is in),
and only then the catalog rows, one commit per table. A query never returns
a row whose download would 404.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ursa_daemon.catalog import RecordingRow, SessionRows
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
    rel_key,
)
from ursa_daemon.store import LocalStore, Store
from ursa_daemon.transfer.abort import abort_orphan_uploads, abort_uploads
from ursa_daemon.transfer.backfill import register_from_store
from ursa_daemon.transfer.limits import RateLimiter, UploadLimits
from ursa_daemon.transfer.local_copy import DEFAULT_LOCAL_SLICE_SIZE, discard_partials, kept_partials
from ursa_daemon.transfer.multipart_upload import UploadJournal
from ursa_daemon.transfer.register import (
    IngestResult,
    SessionSpan,
    duplicate_error,
    object_sha256,
    put_small,
    register_rows,
    session_rows,
)
from ursa_daemon.transfer.tally import SessionTally, Tally, TallyJournal
from ursa_daemon.transfer.upload import FileUpload, upload_files

if TYPE_CHECKING:
    from ursa_daemon.transfer.context import Context

__all__ = ["IngestResult", "UploadProgress", "hash_part_size", "ingest"]

log = get_logger("ursa.ingest")


@dataclass(frozen=True)
class UploadProgress:
    """After each file: cumulative counts for one session.

    ``bytes_uploaded`` counts PUT bytes only; ``bytes_processed`` counts every
    file decided (uploaded or skipped), so a resumed session's bar climbs
    through the skips (the seeds' fields, exactly; the log lines' ``bytes_done``, what the store
    holds of the session, is :class:`~ursa_daemon.transfer.tally.Tally`'s: see ``on_tally``).
    """

    files_done: int
    files_total: int
    bytes_uploaded: int
    bytes_processed: int
    bytes_total: int
    current_file: str


def hash_part_size(data: Context) -> int | None:
    """The part size to take part checksums at when hashing: an S3 store sends them with the parts;
    the local profile checks a kept partial copy against them. Either way the same read records the
    file's mtime, which the upload holds the file to instead of hashing it again."""
    return data.upload.part_size_bytes


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
    on_tally: Callable[[Tally], None] | None = None,
    pause_reason: Callable[[], str | None] | None = None,
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
    ``on_tally`` is told of every change of the session's bytes (:class:`~ursa_daemon.transfer.tally.Tally`:
    confirmed in the store, sending, moved now; from worker threads); ``pause_reason()`` says
    why ``is_active`` stopped the upload, for the ``session.paused`` line.
    """
    should_stop = is_active or (lambda: False)
    session = load_session(Path(rec_dir))
    rec_id = session.rec_id
    log.info("session.hashing", rec_id=rec_id, bytes_total=session.bytes_total)
    files = _hashed_files(data, session, hashed, known_hashes)
    doc = augment(session.manifest, files)
    rh = doc["recording_hash"]
    raw = data.store("raw_rw")
    limits = _limits(data, max_concurrent_files)
    name = participant if participant is not None else session.participant
    span = SessionSpan(rec_id, session.start_time_ns, session.duration_ns)
    _check_rows(data, span, files, doc, name)  # what the catalog would refuse, refused before any byte moves
    tally = SessionTally(files, copies_kept_over=DEFAULT_LOCAL_SLICE_SIZE if isinstance(raw, LocalStore) else None,
                         on_change=on_tally)
    tracker = _Progress(files, progress, rec_id, tally)
    stored_doc = _stored_manifest(raw, rec_id)
    if not session.node_manifests:
        _refuse_duplicate(data, rec_id, rh)
        _replace_changed_version(data, rec_id, rh, stored_doc, overwrite)
    todo, found = (files, []) if overwrite else _files_to_upload(raw, rec_id, files, stored_doc)
    # what earlier attempts left in the store counts at once, before the first byte moves
    journal = TallyJournal(journal, tally, rec_id) if journal is not None else None
    for rel, size in kept_partials(raw, rec_id, todo).items():
        tally.keep_copy(rel, size)
    for entry in found:
        tally.file_done(entry.rel_path)
    tally.start()
    for entry in found:
        tracker.file_done(FileUpload(entry, uploaded=False))

    def sent(rel_path: str, n: int) -> None:
        tally.sent(rel_path, n)
        if on_file_bytes is not None:
            on_file_bytes(rel_path, n)

    started = time.monotonic()
    done = _upload(
        raw,
        session,
        todo,
        should_stop=should_stop,
        limits=limits,
        limiter=limiter or RateLimiter(limits.bandwidth_bytes_per_s),
        tracker=tracker,
        journal=journal,
        on_file_bytes=sent,
    )
    if not done or should_stop():
        log.info("session.paused", rec_id=rec_id, recording_hash=rh, reason=pause_reason() if pause_reason else None,
                 bytes_done=tally.now().bytes_done, bytes_total=tally.bytes_total,
                 bytes_uploaded=tracker.bytes_uploaded)
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
        bytes_done=tally.now().bytes_done,
        bytes_total=tally.bytes_total,
        bytes_uploaded=tracker.bytes_uploaded,
        elapsed_s=round(time.monotonic() - started, 3),
    )
    rows = session_rows(data.profile, span, files, doc, participant=name)
    if defer_register:
        return tracker.result(paused=False, recording=None, pending=rows)
    recording = register_rows(data, rows, overwrite=overwrite)
    return tracker.result(paused=False, recording=recording)


def _hashed_files(
    data: Context, session: Session, hashed: list[FileEntry] | None, known: dict[str, str] | None
) -> list[FileEntry]:
    """The caller's ``hashed`` when it lists exactly the session's files, else a fresh hash."""
    if hashed is not None and sorted(f.rel_path for f in hashed) == sorted(f.rel_path for f in session.files):
        return hashed
    return hash_files(session.rec_dir, session.files, known=known, part_size=hash_part_size(data))


def _limits(data: Context, max_concurrent_files: int | None) -> UploadLimits:
    cfg = data.upload
    return UploadLimits(
        max_concurrent_files=max_concurrent_files or cfg.max_concurrent_files,
        max_concurrency_per_file=cfg.max_concurrency_per_file,
        part_size=cfg.part_size_bytes,
        bandwidth_bytes_per_s=cfg.bandwidth_bytes_per_s,
    )


def _upload(
    raw: Store,
    session: Session,
    todo: list[FileEntry],
    *,
    should_stop: Callable[[], bool],
    limits: UploadLimits,
    limiter: RateLimiter,
    tracker: _Progress,
    journal: UploadJournal | None,
    on_file_bytes: Callable[[str, int], None] | None,
) -> bool:
    """Upload ``todo``; True when every file is in. Then, and when a file changed meanwhile,
    no open multipart upload or partial local copy of this session is left in the store."""
    rec_id = session.rec_id
    try:
        done = upload_files(
            raw,
            session.rec_dir,
            rec_id,
            todo,
            should_stop=should_stop,
            limits=limits,
            limiter=limiter,
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
    return done


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
    raw = data.store("raw_rw")
    rec_id = session.rec_id
    for host, node_doc in session.node_manifests:
        own = node_files(host, node_doc, session.node_manifests, files)
        body = manifest_bytes(augment(node_doc, own))
        put_small(raw, rel_key(rec_id, f"{NODE_MANIFEST_DIR}/{host}.json"), body, "application/json")
    log.info("upload.session_done", rec_id=rec_id, bytes_done=tracker.tally.now().bytes_done,
             bytes_total=tracker.tally.bytes_total, bytes_uploaded=tracker.bytes_uploaded,
             nodes=len(session.node_manifests))
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
    store: Store, rec_id: str, files: list[FileEntry], stored_doc: dict[str, Any] | None
) -> tuple[list[FileEntry], list[FileEntry]]:
    """Files whose object is not already there with the same size and sha256, and those that are.

    S3 returns the ``sha256`` user metadata with ``head``. The local store has
    no metadata: there the previously uploaded manifest vouches for it, else
    the object (on the same machine) is hashed: a read, no bytes moved.
    """
    stored = _stored_hashes(stored_doc)
    todo, found = [], []
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
            found.append(entry)
        else:
            todo.append(entry)
    return todo, found


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

    def __init__(self, files: list[FileEntry], callback: Callable[[UploadProgress], None] | None, rec_id: str,
                 tally: SessionTally):
        self.files_total = len(files)
        self.bytes_total = sum(f.size for f in files)
        self.callback = callback
        self.rec_id = rec_id
        self.tally = tally
        self.files_done = self.files_uploaded = self.bytes_uploaded = self.bytes_processed = 0
        self._lock = threading.Lock()

    def file_done(self, up: FileUpload) -> None:
        done = self.tally.file_done(up.entry.rel_path).bytes_done
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
            bytes_done=done,
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


