"""Catalog writes: strict inserts, idempotent registration, whole sessions, deletes.

``add_*`` is a strict insert. ``register_*`` is idempotent: an identical row is a
no-op returning the stored row, a differing one raises :class:`CatalogRowExists`
with a field-by-field diff unless an ``on_conflict`` policy says otherwise.
``register_session`` checks every row of a session before writing any, then makes
at most one commit per table (``merge_insert``), in the order participants →
modalities → recordings: the recording row, written last, is what makes the
session visible to ``query``.

**Exactly once: why writers take a commit lock.** Every write (check, then commit)
runs under this handle's lock and the catalog's *commit lock* (``commit_lock`` of
:meth:`CatalogCore.open`: an object in the assets bucket taken by an atomic create,
:mod:`ursa_daemon.store.lease`), and re-reads the latest table versions inside it.
So a writer's check sees every row any earlier writer committed, and two writers never
insert the same key. Lance alone does not give that. What we rely on, read in the
source of lance 13.0.0 (the one lancedb 0.40.0 bundles):

* ``merge_insert`` commits an ``Operation::Update``; a concurrent insert of the same
  key is a (retryable) conflict only when *both* transactions carry an
  ``inserted_rows_filter`` (``conflict_resolver.rs``, ``check_update_txn``: "The
  presence of inserted_rows_filter means this is a primary key operation and strict
  conflict detection should be applied"; ``(None, _)`` falls through to ``_ => {}``).
* The filter is recorded only on the DataFusion path (``FullSchemaMergeInsertExec``,
  "Check if ON columns match the schema's unenforced primary key"); when a scalar index
  covers the join key (``can_use_create_plan``: ``would_use_scalar_index``), the legacy
  ``Merger`` path runs and commits ``inserted_rows_filter: None, // not implemented for
  v1``. Our keys have BTREE indexes; a BTREE counts once its fragment bitmap meets the
  table's fragments (``load_scalar_index``), i.e. after ``maintain``'s index update. From
  then on two writers inserting one key both commit: the duplicates lance-format/lance
  #4585, #8949 and the open #9238 describe, and issue 22 measured. ``use_index(False)``
  keeps the filter but joins the whole key column on every commit (measured 100-250 ms
  on local disk at 1M rows, and that many bytes read from the store each time).
* Compaction (``Rewrite``) and index commits (``CreateIndex``) are compatible with an
  insert-only ``Update`` (they touch none of its fragments) and never duplicate rows;
  an upsert whose deleted rows sit in a rewritten fragment is a retryable conflict and
  Lance re-runs the whole join against the new version (``execute_with_retry``).
  Maintenance therefore runs without the commit lock: a rig never waits for it.

The lock holds for a time budget (:data:`COMMIT_LOCK_TTL_S` in the context layer); a
holder that dies is replaced at once on its own host, else after the budget. A holder
that overran its budget (another may have taken the lock meanwhile) re-checks the keys it
wrote right after its commit and repairs a duplicate (:mod:`ursa_daemon.catalog.repair`),
as ``maintain`` does for the whole catalog.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ursa_daemon.catalog._loop import note_commit
from ursa_daemon.catalog.core import HeldLock
from ursa_daemon.catalog.policies import (
    SESSION_TABLES,
    SessionBatch,
    check_policy,
    check_session,
    conflict,
    resolve,
    session_rows,
    strict,
)
from ursa_daemon.catalog.queries import sql_literal
from ursa_daemon.catalog.repair import CatalogRepair, log_repair, merge_key_of
from ursa_daemon.catalog.rows import (
    BenchmarkResultRow,
    BenchmarkSuiteRow,
    CatalogRow,
    CheckpointRow,
    EmbeddingRow,
    EventRow,
    ModalityConflict,
    ModalityRow,
    ParticipantConflict,
    ParticipantRow,
    RecordingConflict,
    RecordingRow,
    RowT,
    SessionRows,
    VirgoAssetRow,
)
from ursa_daemon.catalog.schema import SPECS, TableSpec, to_arrow
from ursa_daemon.errors import CatalogError, CatalogRowExists, RecordingIdTaken


def _test_crash_point(table: str) -> None:
    """Test-only: ``URSA_TEST_CRASH_AFTER_TABLE=<table>`` SIGKILLs this process right after that
    table's commit in ``register_session``/``register_sessions`` (tests/test_reliability_crash.py)."""
    if os.environ.get("URSA_TEST_CRASH_AFTER_TABLE") == table:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class _Write:
    """What one table receives in one commit."""

    spec: TableSpec
    rows: list[CatalogRow]
    replaced: int  # rows among ``rows`` that replace a stored row

    @property
    def inserted(self) -> int:
        return len(self.rows) - self.replaced


class CatalogWrites(CatalogRepair):
    """Inserts, registrations and deletes (see the module doc)."""

    # -- low-level writes ---------------------------------------------------------

    def _plan(
        self,
        spec: TableSpec,
        candidates: Sequence[RowT],
        policy: str,
        resolve: Callable[[RowT, RowT, str], RowT] = resolve,
    ) -> tuple[_Write, list[RowT]]:
        """Check ``candidates`` against the store; raise on conflict, write nothing.

        Returns what to write and, per candidate, the row that will be stored.
        """
        unique: dict[tuple[Any, ...], RowT] = {}
        for row in candidates:
            if not isinstance(row, spec.model):
                raise TypeError(f"{spec.name} takes {spec.model.__name__}, not {type(row).__name__}")
            key = row.primary_key()
            seen = unique.get(key)
            if seen is not None and seen.diff(row):
                raise ValueError(f"{spec.name}: two different rows for {dict(row.primary_key_items())} in one call")
            unique.setdefault(key, row)
        existing = self._fetch_by_keys(spec, list(unique))
        write = _Write(spec, [], 0)
        result: dict[tuple[Any, ...], RowT] = {}
        for key, row in unique.items():
            stored = existing.get(key)
            if stored is None:
                write.rows.append(row)
                result[key] = row
                continue
            resolved = resolve(stored, row, policy)
            result[key] = resolved
            if resolved is not stored:
                write.rows.append(resolved)
                write.replaced += 1
        return write, [result[r.primary_key()] for r in candidates]

    def _commit(self, write: _Write) -> None:
        """One ``merge_insert`` commit for ``write``; nothing when it is empty."""
        if not write.rows:
            return
        spec = write.spec
        table = self._writable_table(spec)
        builder = table.merge_insert(spec.merge_on)
        if write.replaced:
            builder = builder.when_matched_update_all()
        builder = builder.when_not_matched_insert_all()
        result = self._run(builder.execute(to_arrow(spec, write.rows)), f"write {spec.name}")
        if note_commit(self._uri) == self._seen_commits + 1:
            self._seen_commits += 1  # nobody else committed meanwhile: we are current
        if result.num_inserted_rows < write.inserted:
            self._check_race(write)

    def _check_race(self, write: _Write) -> None:
        """A concurrent writer inserted some of our keys first: fine if its rows equal ours."""
        stored = self._fetch_by_keys(write.spec, [r.primary_key() for r in write.rows])
        for row in write.rows:
            other = stored.get(row.primary_key())
            if other is None:
                raise CatalogError(f"{write.spec.name}: row {dict(row.primary_key_items())} was not written")
            diff = other.diff(row)
            if diff:
                raise conflict(other, diff)

    def _recheck(self, held: HeldLock | None, writes: Sequence[_Write]) -> None:
        """After the commits of a hold that overran its budget: one row per key we wrote."""
        if held is None or not held.overran():
            return
        for write in writes:
            if write.rows:
                keys = [merge_key_of(write.spec, r) for r in write.rows]
                for repair in self._dedupe(write.spec, keys):
                    log_repair(repair, after="an overrun commit lock")

    def _register(self, spec: TableSpec, row: RowT, policy: str) -> RowT:
        with self._exclusive() as held:
            self._refresh(spec)
            write, (stored,) = self._plan(spec, [row], policy)
            self._commit(write)
            self._recheck(held, [write])
            return stored

    def _add(self, spec: TableSpec, rows: Sequence[CatalogRow]) -> None:
        with self._exclusive() as held:
            self._refresh(spec)
            write, _ = self._plan(spec, rows, "error", strict)
            self._commit(write)
            self._recheck(held, [write])

    # -- strict inserts -----------------------------------------------------------

    def add_rows(self, rows: Sequence[CatalogRow]) -> None:
        """Insert rows of one table in one commit; :class:`CatalogRowExists` if any key is stored."""
        if not rows:
            return
        self._add(SPECS[type(rows[0]).__table__], rows)

    def add_participant(self, row: ParticipantRow) -> None:
        self._add(SPECS["participants"], [row])

    def add_recording(self, row: RecordingRow) -> None:
        self._add(SPECS["recordings"], [row])

    def add_modality(self, row: ModalityRow) -> None:
        self._add(SPECS["modalities"], [row])

    def add_event(self, row: EventRow) -> None:
        self._add(SPECS["events"], [row])

    def add_embedding(self, row: EmbeddingRow) -> None:
        self._add(SPECS["embeddings"], [row])

    def add_virgo_asset(self, row: VirgoAssetRow) -> None:
        self._add(SPECS["virgo_assets"], [row])

    def add_checkpoint(self, row: CheckpointRow) -> None:
        self._add(SPECS["checkpoints"], [row])

    def add_benchmark_suite(self, row: BenchmarkSuiteRow) -> None:
        self._add(SPECS["benchmark_suites"], [row])

    def add_benchmark_result(self, row: BenchmarkResultRow) -> None:
        self._add(SPECS["benchmark_results"], [row])

    # -- idempotent registration --------------------------------------------------

    def register_participant(
        self, row: ParticipantRow, on_conflict: Literal["error", "overwrite"] = "error"
    ) -> ParticipantRow:
        check_policy("participants", on_conflict)
        return self._register(SPECS["participants"], row, on_conflict)

    def register_recording(self, row: RecordingRow, on_conflict: RecordingConflict = "error") -> RecordingRow:
        check_policy("recordings", on_conflict)
        return self._register(SPECS["recordings"], row, on_conflict)

    def register_modality(self, row: ModalityRow, on_conflict: ModalityConflict = "error") -> ModalityRow:
        check_policy("modalities", on_conflict)
        return self._register(SPECS["modalities"], row, on_conflict)

    def register_event(self, row: EventRow) -> EventRow:
        return self._register(SPECS["events"], row, "error")

    def register_session(
        self,
        *,
        participants: Sequence[ParticipantRow],
        recording: RecordingRow,
        modalities: Sequence[ModalityRow],
        on_conflict_recording: RecordingConflict = "error",
        on_conflict_modality: ModalityConflict = "error",
        on_conflict_participant: ParticipantConflict = "error",
        one_per_rec_id: bool = False,
    ) -> RecordingRow:
        """Register one session's rows: every check first, then one commit per changed table.

        Commits go participants → modalities → recordings; the recording row comes
        last because it is what makes the session visible. An identical re-register
        commits nothing. Returns the stored recording row.

        ``one_per_rec_id``: a recording of the same ``rec_id`` under another hash, found
        under the commit lock, raises :class:`RecordingIdTaken` (both halves of a dual-node
        session register one recording, whoever is first).
        """
        check_policy("recordings", on_conflict_recording)
        check_policy("modalities", on_conflict_modality)
        check_policy("participants", on_conflict_participant)
        check_session(participants, recording, modalities)
        p_spec, m_spec, r_spec = SPECS["participants"], SPECS["modalities"], SPECS["recordings"]
        with self._exclusive() as held:
            self._refresh(p_spec, m_spec, r_spec)
            if one_per_rec_id:
                self._require_rec_id_free(recording)
            p_write, _ = self._plan(p_spec, participants, on_conflict_participant)
            self._require_participants(recording, participants)
            m_write, _ = self._plan(m_spec, modalities, on_conflict_modality)
            r_write, (stored,) = self._plan(r_spec, [recording], on_conflict_recording)
            for write in (p_write, m_write, r_write):
                self._commit(write)
                _test_crash_point(write.spec.name)
            self._recheck(held, [p_write, m_write, r_write])
        return stored

    def register_sessions(
        self,
        sessions: Sequence[SessionRows],
        *,
        on_conflict_recording: RecordingConflict = "error",
        on_conflict_modality: ModalityConflict = "error",
        on_conflict_participant: ParticipantConflict = "error",
    ) -> list[RecordingRow | Exception]:
        """Register many sessions with one commit per changed table for the whole batch.

        Each session is checked on its own, as :meth:`register_session` would, against
        the stored rows and the batch's earlier sessions: a session that conflicts gets
        its exception in its slot of the result and none of its rows are written; the
        others go on. Commits go participants → modalities → recordings, so a crash
        between them leaves no recording visible without its modalities. Returns, per
        session, the stored recording row or the exception that kept it out.
        """
        check_policy("recordings", on_conflict_recording)
        check_policy("modalities", on_conflict_modality)
        check_policy("participants", on_conflict_participant)
        policies = {
            "participants": on_conflict_participant,
            "modalities": on_conflict_modality,
            "recordings": on_conflict_recording,
        }
        specs = [SPECS[name] for name in SESSION_TABLES]
        results: list[RecordingRow | Exception] = []
        with self._exclusive() as held:
            self._refresh(*specs)
            batch = SessionBatch({spec.name: self._stored_rows(spec, sessions) for spec in specs}, policies)
            for session in sessions:
                try:
                    results.append(batch.add(session))
                except (CatalogRowExists, ValueError) as exc:
                    results.append(exc)
            writes = [_Write(spec, *batch.writes(spec.name)) for spec in specs]
            for write in writes:
                self._commit(write)
                _test_crash_point(write.spec.name)
            self._recheck(held, writes)
        return results

    def _stored_rows(self, spec: TableSpec, sessions: Sequence[SessionRows]) -> dict[tuple[Any, ...], CatalogRow]:
        """The stored rows of ``spec``'s table that ``sessions`` have keys for."""
        keys = {row.primary_key() for session in sessions for row in session_rows(session, spec.name)}
        return self._fetch_by_keys(spec, list(keys))

    def delete_recording(self, recording_hash: str) -> bool:
        """Remove a recording and its modality rows; False when there was none.

        The recording row goes first (it is what makes the session visible), then
        its modalities, so a crash between the two leaves no visible row pointing
        at anything. For ``ingest --overwrite`` of a session whose files changed.
        """
        r_spec, m_spec = SPECS["recordings"], SPECS["modalities"]
        where = f"recording_hash = {sql_literal(recording_hash)}"
        with self._exclusive():
            self._refresh(r_spec, m_spec)
            found = bool(self._rows(r_spec, where, limit=1)) or bool(self._rows(m_spec, where, limit=1))
            if not found:
                return False
            for spec in (r_spec, m_spec):
                table = self._writable_table(spec)
                self._run(table.delete(where), f"delete from {spec.name}")
                if note_commit(self._uri) == self._seen_commits + 1:
                    self._seen_commits += 1
        return True

    def _require_rec_id_free(self, recording: RecordingRow) -> None:
        """No recording of ``recording.rec_id`` under another hash (see ``one_per_rec_id``)."""
        r_spec = SPECS["recordings"]
        for other in self._rows(r_spec, f"rec_id = {sql_literal(recording.rec_id)}"):
            if other.recording_hash != recording.recording_hash:
                raise RecordingIdTaken(other.rec_id, other.recording_hash)

    def _require_participants(self, recording: RecordingRow, passed: Sequence[ParticipantRow]) -> None:
        """Every participant of ``recording`` is passed along or already registered."""
        missing = sorted(set(recording.participant_ids) - {p.participant_id for p in passed})
        if missing:
            stored = self._fetch_by_keys(SPECS["participants"], [(p,) for p in missing])
            unknown = [p for p in missing if (p,) not in stored]
            if unknown:
                raise ValueError(f"recording {recording.rec_id} names unregistered participants {unknown}")
