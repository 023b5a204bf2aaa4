"""The seeds' ``DataInterface.query``: its spec (with the processed-store filters), ``status``,
``limit``, and the legacy session id ``metadata["manifest_recording_id"]`` over
:meth:`ursa_daemon.api.DataInterface.query`."""

from __future__ import annotations

import warnings
from typing import Any, Literal

from pydantic import Field

from ursa_daemon.api import DataInterface as _CoreInterface
from ursa_daemon.api import QueryResult
from ursa_daemon.api import QuerySpec as _CoreQuerySpec
from ursa_daemon.catalog import LEGACY_ID_KEY, IngestionStatus, RecordingRow

__all__ = [
    "PROCESSED_FILTERS",
    "QueryResultList",
    "QuerySpec",
    "Status",
    "query",
    "result_with_legacy_id",
    "with_legacy_id",
]

Status = Literal["ingested", "raw", "all"]
_STATUS_ROWS: dict[str, frozenset[IngestionStatus] | None] = {
    "ingested": frozenset({IngestionStatus.PROCESSED}),
    "raw": frozenset({IngestionStatus.RAW}),
    "all": None,
}
#: Filters that need the processed store (the seeds' ``_PROCESSED_KWARGS``).
PROCESSED_FILTERS = ("time_range", "pipeline_version", "time_filters", "metadata_filters", "derived")
_FILTERS = ("participants", "modalities", "recording_hash", "rec_id", "metadata", *PROCESSED_FILTERS)


class QuerySpec(_CoreQuerySpec):
    """The seeds' query spec: ``ursa_daemon``'s filters plus the processed-store ones."""

    time_range: tuple[int, int] | None = None
    pipeline_version: str | None = None
    time_filters: list[Any] = Field(default_factory=list)
    metadata_filters: list[Any] = Field(default_factory=list)
    derived: list[Any] = Field(default_factory=list)

    def processed_filters(self) -> list[str]:
        """Names of the processed-store filters that are set."""
        return [k for k in PROCESSED_FILTERS if getattr(self, k)]

    def has_processed_kwarg(self) -> bool:
        return bool(self.processed_filters())


class QueryResultList(list[QueryResult]):
    """What :meth:`DataInterface.query` returns: a list of :class:`QueryResult`."""


def with_legacy_id(row: RecordingRow) -> RecordingRow:
    if LEGACY_ID_KEY in row.metadata or row.rec_id == row.recording_hash:
        return row
    return row.model_copy(update={"metadata": {**row.metadata, LEGACY_ID_KEY: row.rec_id}})


def result_with_legacy_id(qr: QueryResult) -> QueryResult:
    if LEGACY_ID_KEY in qr.metadata or qr.rec_id == qr.recording_hash:
        return qr
    return qr.model_copy(update={"metadata": {**qr.metadata, LEGACY_ID_KEY: qr.rec_id}})


def _checked_args(spec: QuerySpec | None, filters: dict[str, Any]) -> tuple[QuerySpec, str, int | None]:
    """The spec, ``status`` and ``limit`` of a ``query()`` call; a ``TypeError``/``ValueError``
    naming the argument for anything the seeds refuse."""
    status = filters.pop("status", "ingested")
    limit = filters.pop("limit", None)
    if status not in _STATUS_ROWS:
        raise ValueError(f"status must be one of {sorted(_STATUS_ROWS)}; got {status!r}")
    unknown = sorted(k for k in filters if k not in _FILTERS)
    if unknown:
        raise TypeError(f"DataInterface.query() got unexpected keyword argument(s) {unknown}; filters: {_FILTERS}")
    if spec is not None:
        given = [k for k in _FILTERS if filters.get(k) is not None]
        if given:
            raise TypeError(
                f"DataInterface.query(spec=..., {given[0]}=...): pass either a QuerySpec or individual "
                f"filter kwargs, not both. Offending kwargs: {given!r}."
            )
    else:
        spec = QuerySpec(**filters)
    if limit is None:
        limit = spec.limit
    elif isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive integer; got {limit!r}")
    return spec, status, limit


def query(core: _CoreInterface, spec: QuerySpec | None, filters: dict[str, Any]) -> QueryResultList:
    """:meth:`ursa.DataInterface.query` (its docstring says what the arguments mean)."""
    spec, status, limit = _checked_args(spec, filters)
    if spec.metadata is not None and limit is not None:  # the seeds warn here; it is as true here
        warnings.warn(
            "DataInterface.query(metadata=..., limit=...) reads the metadata of every recording the other "
            "filters leave (a full catalog scan without them) before the limit applies",
            UserWarning,
            stacklevel=3,
        )
    meta = dict(spec.metadata) if spec.metadata is not None else None
    rec_id = spec.rec_id
    if meta is not None and LEGACY_ID_KEY in meta:  # rows registered before it was written lack it
        legacy = meta.pop(LEGACY_ID_KEY)
        if rec_id is not None and rec_id != legacy:
            return QueryResultList()
        rec_id = legacy
    wanted = _STATUS_ROWS[status]
    found = core.query(
        _CoreQuerySpec(
            participants=spec.participants,
            modalities=spec.modalities,
            recording_hash=spec.recording_hash,
            rec_id=rec_id,
            metadata=meta or None,
            limit=limit if wanted is None else None,
        )
    )
    results = QueryResultList()
    for qr in found:
        mods = {k: m for k, m in qr.modalities.items() if wanted is None or m.ingestion_status in wanted}
        if not mods:
            continue
        results.append(result_with_legacy_id(qr.model_copy(update={"modalities": mods})))
        if limit is not None and len(results) >= limit:
            break
    processed = spec.processed_filters()
    if processed and results:
        _processed_gate(processed[0], results)
    return results


def _processed_gate(kwarg: str, results: list[QueryResult]) -> None:
    """The seeds' error for a processed-store filter: it needs processed rows, and even
    over those this catalog has no engine for it yet."""
    for qr in results:
        for m in qr.modalities.values():
            if m.ingestion_status == IngestionStatus.RAW:
                raise NotImplementedError(
                    f"DataInterface.query({kwarg}=...) requires processed modalities; modality "
                    f"{m.worker_subdir!r} on recording {qr.recording_hash!r} has ingestion_status='raw'."
                )
    raise NotImplementedError(
        f"DataInterface.query({kwarg}=...) filters inside processed assets, which this catalog "
        "cannot do yet; query without it and filter the data from get()"
    )
