"""Queries over a :class:`~ursa_daemon.transfer.context.Context`: a :class:`QuerySpec` in,
one :class:`QueryResult` per matching recording out, and :func:`resolve` (a recording_hash,
a rec_id or results, as a list of results) for the downloads, readers and verification.

``ursa_daemon.api`` re-exports ``QuerySpec`` and ``QueryResult``; ``DataInterface.query``
and ``DataInterface.resolve`` are these functions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from ursa_daemon.catalog import ModalityRow, RecordingRow
from ursa_daemon.session import participant_id

if TYPE_CHECKING:
    from ursa_daemon.transfer.context import Context

__all__ = ["QueryResult", "QuerySpec", "modality_key", "query", "resolve"]


class QuerySpec(BaseModel):
    """What ``DataInterface.query`` filters on. Every filter set must match."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    participants: list[str] | None = None
    modalities: list[str] | None = None
    recording_hash: str | None = None
    rec_id: str | None = None
    metadata: dict[str, Any] | None = None
    limit: int | None = Field(default=None, ge=1)


class QueryResult(BaseModel):
    """One matching recording with its modality rows.

    ``modalities`` is keyed by the family (``eeg``) when the recording has one
    worker of that family, else by the worker subdirectory (``eeg_a``).
    """

    model_config = ConfigDict(frozen=True)

    recording_hash: str
    rec_id: str
    participant_ids: list[str]
    start_time: int
    duration_ns: int
    device_info: dict[str, Any]
    metadata: dict[str, Any]
    modalities: dict[str, ModalityRow]

    @property
    def duration(self) -> timedelta:
        return timedelta(microseconds=self.duration_ns / 1000)

    def to_json(self) -> dict[str, Any]:
        """The ``query --json`` shape of SPEC section 5."""
        return {
            "recording_hash": self.recording_hash,
            "rec_id": self.rec_id,
            "participant_ids": list(self.participant_ids),
            "start_time": self.start_time,
            "duration_ns": self.duration_ns,
            "device_info": self.device_info,
            "metadata": self.metadata,
            "modalities": {
                key: {
                    "modality": m.modality,
                    "worker_id": m.worker_id,
                    "ingestion_status": str(m.ingestion_status),
                    "raw_storage_uri": m.raw_storage_uri,
                    "storage_uri": m.storage_uri,
                    "format": None if m.format is None else str(m.format),
                    "file_count": m.file_count,
                    "byte_count": m.byte_count,
                }
                for key, m in self.modalities.items()
            },
        }


def modality_key(modality: str, worker_id: str) -> str:
    """The worker subdirectory name a modality row came from."""
    return f"{modality}_{worker_id}" if worker_id else modality


def _keyed_modalities(rows: Iterable[ModalityRow]) -> dict[str, ModalityRow]:
    rows = sorted(rows, key=lambda m: (m.modality, m.worker_id))
    families: dict[str, int] = {}
    for m in rows:
        families[m.modality] = families.get(m.modality, 0) + 1
    return {
        (m.modality if families[m.modality] == 1 else modality_key(m.modality, m.worker_id)): m
        for m in rows
    }


def _query_result(rec: RecordingRow, mods: Iterable[ModalityRow]) -> QueryResult:
    return QueryResult(
        recording_hash=rec.recording_hash,
        rec_id=rec.rec_id,
        participant_ids=list(rec.participant_ids),
        start_time=rec.start_time,
        duration_ns=rec.duration_ns,
        device_info=dict(rec.device_info),
        metadata=dict(rec.metadata),
        modalities=_keyed_modalities(mods),
    )


def _participant_filter(participants: list[str] | None) -> list[str] | None:
    """Each value as given (an exact ``participant_id``) and as a typed name normalized
    the way ingest makes ids (``"Aria Lin"`` -> ``aria_lin``)."""
    if participants is None:
        return None
    out: list[str] = []
    for p in participants:
        for v in (p, participant_id(p)):
            if v and v not in out:
                out.append(v)
    return out


def query(ctx: Context, spec: QuerySpec) -> list[QueryResult]:
    """The recordings matching every filter of ``spec``, through the read-only catalog handle."""
    found = ctx.catalog.query(
        participants=_participant_filter(spec.participants),
        modalities=spec.modalities,
        recording_hash=spec.recording_hash,
        rec_id=spec.rec_id,
        metadata=spec.metadata,
        limit=spec.limit,
    )
    return [_query_result(rec, mods) for rec, mods in found]


def resolve(ctx: Context, target: str | QueryResult | Iterable[QueryResult]) -> list[QueryResult]:
    """A recording_hash, a rec_id, or query results, as a list of results."""
    if isinstance(target, QueryResult):
        return [target]
    if isinstance(target, str):
        by_hash = re.fullmatch(r"[0-9a-f]{64}", target) is not None
        found = query(ctx, QuerySpec(recording_hash=target) if by_hash else QuerySpec(rec_id=target))
        by = "recording_hash" if by_hash else "rec_id"
        if not found:
            raise LookupError(f"no registered recording with {by} {target!r}")
        return found
    return list(target)
