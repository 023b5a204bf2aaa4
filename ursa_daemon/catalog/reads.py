"""Catalog reads: point lookups, listings and :meth:`CatalogReads.query`.

Point lookups and query filters are pushed down to Lance as SQL filters on indexed
columns (BTREE on keys, BITMAP on ``modalities.modality``, LABEL_LIST on
``recordings.participant_ids``). Rows appended after the last ``optimize`` sit in
unindexed fragments, which Lance scans, so results are the same whether or not
the indexes are fresh.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]

from ursa_daemon.catalog.core import CatalogCore
from ursa_daemon.catalog.queries import (
    IN_PUSHDOWN_MAX,
    has_any,
    in_list,
    metadata_matches,
    sql_and,
    sql_literal,
    where_sql,
)
from ursa_daemon.catalog.rows import (
    BenchmarkResultRow,
    BenchmarkSuiteRow,
    CheckpointRow,
    EmbeddingRow,
    EventRow,
    ModalityRow,
    ParticipantRow,
    RecordingRow,
    VirgoAssetRow,
    canonical_dict,
    one_per_key,
)
from ursa_daemon.catalog.schema import SPECS, from_arrow

QueryResultRow = tuple[RecordingRow, list[ModalityRow]]


class CatalogReads(CatalogCore):
    """Point lookups, listings and the recordings query."""

    # -- point lookups ----------------------------------------------------------------

    def get_participant(self, participant_id: str) -> ParticipantRow | None:
        row: ParticipantRow | None = self._get(SPECS["participants"], participant_id=participant_id)
        return row

    def get_recording(self, recording_hash: str) -> RecordingRow | None:
        row: RecordingRow | None = self._get(SPECS["recordings"], recording_hash=recording_hash)
        return row

    def get_modality(self, recording_hash: str, modality: str, worker_id: str = "") -> ModalityRow | None:
        row: ModalityRow | None = self._get(
            SPECS["modalities"], recording_hash=recording_hash, modality=modality, worker_id=worker_id
        )
        return row

    def get_event(self, event_id: str) -> EventRow | None:
        row: EventRow | None = self._get(SPECS["events"], event_id=event_id)
        return row

    def get_embedding(self, embedding_id: str) -> EmbeddingRow | None:
        row: EmbeddingRow | None = self._get(SPECS["embeddings"], embedding_id=embedding_id)
        return row

    def get_virgo_asset(self, asset_id: str) -> VirgoAssetRow | None:
        row: VirgoAssetRow | None = self._get(SPECS["virgo_assets"], asset_id=asset_id)
        return row

    def get_checkpoint(self, checkpoint_id: str) -> CheckpointRow | None:
        row: CheckpointRow | None = self._get(SPECS["checkpoints"], checkpoint_id=checkpoint_id)
        return row

    def get_benchmark_suite(self, suite_name: str, suite_version: int) -> BenchmarkSuiteRow | None:
        row: BenchmarkSuiteRow | None = self._get(
            SPECS["benchmark_suites"], suite_name=suite_name, suite_version=suite_version
        )
        return row

    def get_benchmark_result(self, result_id: str) -> BenchmarkResultRow | None:
        row: BenchmarkResultRow | None = self._get(SPECS["benchmark_results"], result_id=result_id)
        return row

    # -- listings ---------------------------------------------------------------------

    def _list(self, table: str, where: str | Mapping[str, Any] | None, limit: int | None) -> list[Any]:
        spec = SPECS[table]
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0; got {limit}")
        if limit == 0:
            return []
        return self._rows(spec, where_sql(spec, where), limit=limit)

    def list_participants(
        self, where: str | Mapping[str, Any] | None = None, limit: int | None = None
    ) -> list[ParticipantRow]:
        return self._list("participants", where, limit)

    def list_recordings(
        self, where: str | Mapping[str, Any] | None = None, limit: int | None = None
    ) -> list[RecordingRow]:
        return self._list("recordings", where, limit)

    def list_modalities(
        self, where: str | Mapping[str, Any] | None = None, limit: int | None = None
    ) -> list[ModalityRow]:
        return self._list("modalities", where, limit)

    def list_events(self, where: str | Mapping[str, Any] | None = None, limit: int | None = None) -> list[EventRow]:
        return self._list("events", where, limit)

    def list_embeddings(
        self, where: str | Mapping[str, Any] | None = None, limit: int | None = None
    ) -> list[EmbeddingRow]:
        return self._list("embeddings", where, limit)

    def list_virgo_assets(
        self, where: str | Mapping[str, Any] | None = None, limit: int | None = None
    ) -> list[VirgoAssetRow]:
        return self._list("virgo_assets", where, limit)

    def list_checkpoints(
        self, where: str | Mapping[str, Any] | None = None, limit: int | None = None
    ) -> list[CheckpointRow]:
        return self._list("checkpoints", where, limit)

    def list_benchmark_suites(
        self, where: str | Mapping[str, Any] | None = None, limit: int | None = None
    ) -> list[BenchmarkSuiteRow]:
        return self._list("benchmark_suites", where, limit)

    def list_benchmark_results(
        self, where: str | Mapping[str, Any] | None = None, limit: int | None = None
    ) -> list[BenchmarkResultRow]:
        return self._list("benchmark_results", where, limit)

    # -- query ------------------------------------------------------------------------

    def query(
        self,
        *,
        participants: Sequence[str] | None = None,
        modalities: Sequence[str] | None = None,
        recording_hash: str | None = None,
        rec_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        limit: int | None = None,
    ) -> list[QueryResultRow]:
        """Recordings matching every given filter, each with its modality rows.

        ``participants``: the recording has any of them. ``modalities``: it has a
        modality of one of these families (and only those modality rows are
        returned). ``metadata``: equality on each key. Ordered by ``start_time`` then
        ``recording_hash``; ``limit`` applies after ordering.
        """
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0; got {limit}")
        if limit == 0 or (participants is not None and not participants):
            return []
        if modalities is not None and not modalities:
            return []
        families = sorted(set(modalities)) if modalities is not None else None
        clauses = [
            f"recording_hash = {sql_literal(recording_hash)}" if recording_hash is not None else None,
            f"rec_id = {sql_literal(rec_id)}" if rec_id is not None else None,
            has_any("participant_ids", sorted(set(participants))) if participants is not None else None,
        ]
        if recording_hash is not None:
            return self._query_one(recording_hash, sql_and(clauses), families, metadata)
        candidates: pa.Array | None = None
        if families is not None:
            candidates = self._recordings_with(families, recording_hash)
            if len(candidates) == 0:
                return []
            if len(candidates) <= IN_PUSHDOWN_MAX:
                clauses.append(in_list("recording_hash", candidates.to_pylist()))
                candidates = None
        recordings = self._matching_recordings(sql_and(clauses), candidates, metadata, limit)
        grouped = self._modalities_of([r.recording_hash for r in recordings], families)
        return [(r, grouped.get(r.recording_hash, [])) for r in recordings]

    def _query_one(
        self, recording_hash: str, where: str | None, families: Sequence[str] | None, metadata: Mapping[str, Any] | None
    ) -> list[QueryResultRow]:
        """A known hash: its recording row and its modality rows, read concurrently."""
        r_spec, m_spec = SPECS["recordings"], SPECS["modalities"]
        r_table, m_table = self._table(r_spec), self._table(m_spec)
        m_where = sql_and(
            [
                f"recording_hash = {sql_literal(recording_hash)}",
                in_list("modality", families) if families is not None else None,
            ]
        )

        async def both() -> tuple[pa.Table, pa.Table]:
            recs, mods = await asyncio.gather(
                self._ascan(r_spec, r_table, where), self._ascan(m_spec, m_table, m_where)
            )
            return recs, mods

        recs, mods = self._run(both(), "read recordings")
        rows: list[RecordingRow] = one_per_key(from_arrow(r_spec, recs))
        if metadata is not None:
            wanted = canonical_dict(dict(metadata))
            rows = [r for r in rows if metadata_matches(r.metadata, wanted)]
        mod_rows: list[ModalityRow] = one_per_key(
            from_arrow(m_spec, mods.sort_by([(c, "ascending") for c in m_spec.pk]))
        )
        if not rows or (families is not None and not mod_rows):
            return []
        return [(rows[0], mod_rows)]

    def _recordings_with(self, families: Sequence[str], recording_hash: str | None) -> pa.Array:
        """Distinct recording hashes having a modality of one of ``families``."""
        where = sql_and(
            [
                in_list("modality", families),
                f"recording_hash = {sql_literal(recording_hash)}" if recording_hash is not None else None,
            ]
        )
        hashes = self._scan(SPECS["modalities"], where, columns=["recording_hash"]).column("recording_hash")
        return pc.unique(hashes.combine_chunks())

    def _matching_recordings(
        self,
        where: str | None,
        candidates: pa.Array | None,
        metadata: Mapping[str, Any] | None,
        limit: int | None,
    ) -> list[RecordingRow]:
        spec = SPECS["recordings"]
        order = ["start_time", "recording_hash"]
        sort_keys = [(c, "ascending") for c in order]
        if candidates is None and metadata is None:
            # One pushed-down query: filter, order and limit all run in Lance.
            found = self._scan(spec, where, limit=limit, order_by=order if limit is not None else None)
            return one_per_key(from_arrow(spec, found.sort_by(sort_keys)))
        # Narrow scan of the keys first, then full rows for the survivors only.
        narrow_cols = [*order, "metadata"] if metadata is not None else order
        keys = self._scan(spec, where, columns=narrow_cols)
        if candidates is not None:
            keys = keys.filter(pc.is_in(keys.column("recording_hash"), value_set=candidates))
        if metadata is not None:
            wanted = canonical_dict(dict(metadata))
            mask = [metadata_matches(json.loads(m) if m else {}, wanted) for m in keys.column("metadata").to_pylist()]
            keys = keys.filter(pa.array(mask, type=pa.bool_()))
        keys = keys.sort_by(sort_keys)
        if limit is not None:
            keys = keys.slice(0, limit)
        hashes = list(dict.fromkeys(keys.column("recording_hash").to_pylist()))
        rows = self._fetch_by_keys(spec, [(h,) for h in hashes])
        return [rows[(h,)] for h in hashes if (h,) in rows]

    def _modalities_of(self, hashes: Sequence[str], families: Sequence[str] | None) -> dict[str, list[ModalityRow]]:
        """Modality rows of ``hashes`` (only of ``families`` if given), grouped and sorted."""
        if not hashes:
            return {}
        spec = SPECS["modalities"]
        family_clause = in_list("modality", families) if families is not None else None
        tables = self._scan_in(spec, "recording_hash", hashes, family_clause)
        grouped: dict[str, list[ModalityRow]] = {}
        for table in tables:
            for row in one_per_key(from_arrow(spec, table.sort_by([(c, "ascending") for c in spec.pk]))):
                grouped.setdefault(row.recording_hash, []).append(row)
        return grouped
