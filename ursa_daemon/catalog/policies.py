"""Conflict policies: what ``register_*`` stores when a row with the same key is already there.

Pure functions over rows (no I/O): an identical row is a no-op, a differing one
raises :class:`CatalogRowExists` with a field-by-field diff unless the table's
``on_conflict`` policy resolves it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ursa_daemon.catalog.rows import CatalogRow, ModalityRow, ParticipantRow, RecordingRow, RowT, SessionRows
from ursa_daemon.errors import CatalogRowExists


def conflict(existing: CatalogRow, diff: dict[str, tuple[Any, Any]]) -> CatalogRowExists:
    return CatalogRowExists(existing.__table__, existing.primary_key_items(), diff)


def resolve(existing: RowT, candidate: RowT, policy: str) -> RowT:
    """The row to store given the stored one; ``existing`` itself means "write nothing"."""
    diff = existing.diff(candidate)
    if not diff:
        return existing
    if policy == "overwrite":
        return candidate
    if policy == "keep":
        return existing
    if policy == "extend" and set(diff) == {"duration_ns"} and isinstance(existing, RecordingRow):
        longest = max(existing.duration_ns, candidate.duration_ns)  # type: ignore[attr-defined]
        if longest == existing.duration_ns:
            return existing
        return existing.model_copy(update={"duration_ns": longest})
    if policy == "merge_participants" and set(diff) == {"participant_ids"} and isinstance(existing, RecordingRow):
        union = sorted(set(existing.participant_ids) | set(candidate.participant_ids))  # type: ignore[attr-defined]
        if union == existing.participant_ids:
            return existing
        return existing.model_copy(update={"participant_ids": union})
    raise conflict(existing, diff)


def strict(existing: RowT, candidate: RowT, policy: str) -> RowT:
    raise conflict(existing, existing.diff(candidate))


POLICIES: dict[str, frozenset[str]] = {
    "participants": frozenset({"error", "overwrite", "keep"}),
    "recordings": frozenset({"error", "overwrite", "extend", "merge_participants"}),
    "modalities": frozenset({"error", "overwrite"}),
    "events": frozenset({"error"}),
}


def check_policy(table: str, policy: str) -> None:
    if policy not in POLICIES[table]:
        raise ValueError(f"on_conflict for {table} must be one of {sorted(POLICIES[table])}; got {policy!r}")


def check_session(
    participants: Sequence[ParticipantRow], recording: RecordingRow, modalities: Sequence[ModalityRow]
) -> None:
    """The rows of one session must agree with each other."""
    stray = sorted(m.worker_subdir for m in modalities if m.recording_hash != recording.recording_hash)
    if stray:
        raise ValueError(f"modalities {stray} do not belong to recording {recording.recording_hash}")
    extra = sorted({p.participant_id for p in participants} - set(recording.participant_ids))
    if extra:
        raise ValueError(f"participants {extra} are not in the recording's participant_ids")


Key = tuple[Any, ...]

#: The tables a session writes, in commit order: the recording row, last, makes it visible.
SESSION_TABLES = ("participants", "modalities", "recordings")


def session_rows(session: SessionRows, table: str) -> Sequence[CatalogRow]:
    """The rows ``session`` has for ``table`` (one of :data:`SESSION_TABLES`)."""
    if table == "participants":
        return session.participants
    return session.modalities if table == "modalities" else [session.recording]


class SessionBatch:
    """The sessions of one ``register_sessions`` call, each checked on its own against the
    stored rows and the batch's earlier sessions; what to write piles up per table."""

    def __init__(self, stored: dict[str, dict[Key, CatalogRow]], policies: Mapping[str, str]) -> None:
        self.stored = stored
        self.policies = policies
        #: key -> row to write, per table, in the order they were staged
        self.staged: dict[str, dict[Key, CatalogRow]] = {table: {} for table in SESSION_TABLES}

    def add(self, session: SessionRows) -> RecordingRow:
        """Stage ``session``'s rows; return its recording row as it will be stored.

        On a conflict, raise (:class:`CatalogRowExists`, ``ValueError``) with none of
        the session's rows staged.
        """
        mine = self._resolve(session)
        for table, rows in mine.items():
            for key, row in rows.items():
                if row is not self._current(table, key):
                    self.staged[table][key] = row
        (recording,) = mine["recordings"].values()
        assert isinstance(recording, RecordingRow)
        return recording

    def writes(self, table: str) -> tuple[list[CatalogRow], int]:
        """The rows to commit to ``table``, and how many of them replace a stored row."""
        rows = list(self.staged[table].values())
        return rows, sum(1 for row in rows if row.primary_key() in self.stored[table])

    def _current(self, table: str, key: Key) -> CatalogRow | None:
        return self.staged[table].get(key) or self.stored[table].get(key)

    def _resolve(self, session: SessionRows) -> dict[str, dict[Key, CatalogRow]]:
        """Per table, the row to store for each of ``session``'s keys; raise on a conflict."""
        check_session(session.participants, session.recording, session.modalities)
        mine: dict[str, dict[Key, CatalogRow]] = {table: {} for table in SESSION_TABLES}
        for table in SESSION_TABLES:
            for row in session_rows(session, table):
                key = row.primary_key()
                seen = mine[table].get(key)
                if seen is not None and seen.diff(row):
                    what = dict(row.primary_key_items())
                    raise ValueError(f"{table}: two different rows for {what} in one session")
                current = self._current(table, key)
                mine[table][key] = row if current is None else resolve(current, row, self.policies[table])
        self._check_participants(session.recording, mine["participants"])
        return mine

    def _check_participants(self, recording: RecordingRow, passed: dict[Key, CatalogRow]) -> None:
        """Every participant of ``recording`` is in the session, staged or stored."""
        known = set(passed) | set(self.staged["participants"]) | set(self.stored["participants"])
        unknown = sorted(p for p in recording.participant_ids if (p,) not in known)
        if unknown:
            raise ValueError(f"recording {recording.rec_id} names unregistered participants {unknown}")
