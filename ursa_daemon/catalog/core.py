"""The LanceDB catalog: row models, table schemas, idempotent writes, pushed-down queries.

This is the only module that imports :mod:`lancedb` (through
:func:`ursa_daemon._lance_import.import_lancedb`, which defers the REST namespace
client lancedb never uses here). It imports nothing else from the package but
:mod:`ursa_daemon.errors`.

Tables (SPEC §4), one Lance dataset each under the catalog URI::

    participants       participant_id
    recordings         recording_hash
    modalities         (recording_hash, modality, worker_id)
    events             event_id
    embeddings         embedding_id            \\
    virgo_assets       asset_id                 |  written by other systems;
    checkpoints        checkpoint_id            |  readable here, add_* for seeding
    benchmark_suites   (suite_name, suite_version)
    benchmark_results  result_id               /

Dict columns (``metadata``, ``device_info``, ``channel_spec``) are stored as
canonical JSON strings (sorted keys) and parsed back; ``participant_ids`` is a
``list<string>`` column.

Writes
------
``add_*`` is a strict insert. ``register_*`` is idempotent: an identical row is a
no-op returning the stored row, a differing one raises :class:`CatalogRowExists`
with a field-by-field diff unless an ``on_conflict`` policy says otherwise.
:meth:`Catalog.register_session` checks every row of a session before writing any,
then makes at most one commit per table (``merge_insert``), in the order
participants → modalities → recordings: the recording row, written last, is what
makes the session visible to :meth:`Catalog.query`.

Each write re-reads the latest table versions before its checks. Writes through one
:class:`Catalog` are serialised by a lock; between handles and processes, Lance's
commit protocol (a conditional PUT on S3/R2, see :meth:`Catalog.open`) keeps each
commit atomic, and a row another writer inserted between our check and our commit
is caught (the insert-only merge skips it) and compared afterwards.

Reads
-----
Point lookups and :meth:`Catalog.query` filters are pushed down to Lance as SQL
filters on indexed columns (BTREE on keys, BITMAP on ``modalities.modality``,
LABEL_LIST on ``recordings.participant_ids``). Rows appended after the last
:meth:`Catalog.optimize` sit in unindexed fragments, which Lance scans, so results
are the same whether or not the indexes are fresh. Values are always quoted here;
column names are checked against the schema. Rows read back are built with
``model_construct``: they were validated when written.

LanceDB is driven through its async API on one background event loop, which lets
the two reads of a point lookup run concurrently.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeVar

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
)

from ursa_daemon.catalog._lance_import import import_lancedb
from ursa_daemon.errors import CatalogError, CatalogPermissionError, CatalogRowExists, WritesNotEnabled

if TYPE_CHECKING:
    from lancedb.db import AsyncConnection
    from lancedb.index import Bitmap, BTree, LabelList
    from lancedb.table import AsyncTable

__all__ = [
    "DEFAULT_READ_CONSISTENCY",
    "ID_PATTERN",
    "LEGACY_ID_KEY",
    "MODALITY_PATTERN",
    "RECORDING_HASH_PATTERN",
    "TABLE_NAMES",
    "BenchmarkResultRow",
    "BenchmarkSuiteRow",
    "Catalog",
    "CatalogRow",
    "CheckpointRow",
    "EmbeddingRow",
    "EventRow",
    "IngestionStatus",
    "ModalityConflict",
    "ModalityRow",
    "ParticipantConflict",
    "ParticipantRow",
    "RecordingConflict",
    "RecordingRow",
    "SessionRows",
    "StorageFormat",
    "VirgoAssetRow",
]

# ---------------------------------------------------------------------------
# Validated field types
# ---------------------------------------------------------------------------

ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,127}$"
RECORDING_HASH_PATTERN = r"^[0-9a-f]{64}$"
MODALITY_PATTERN = r"^[a-z][a-z0-9]*$"
_WORKER_ID_PATTERN = r"^(?:[a-z0-9][a-z0-9_.-]{0,127})?$"

#: How stale a read may be: tables re-check their latest version at most this often.
#: Writes always re-check before their conflict checks, whatever this is.
DEFAULT_READ_CONSISTENCY = timedelta(seconds=5)

#: Rows per Arrow batch handed back by a scan (see ``Catalog._ascan``).
_MAX_BATCH_ROWS = 1 << 20
#: Values per ``IN (...)`` list; longer lists are split into several queries.
_IN_CHUNK = 1000
#: Above this many keys, filter in Arrow after a narrow scan instead of an ``IN`` list.
_IN_PUSHDOWN_MAX = 2000

CatalogID = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
RecordingHash = Annotated[str, StringConstraints(pattern=RECORDING_HASH_PATTERN)]
ModalityName = Annotated[str, StringConstraints(pattern=MODALITY_PATTERN)]
WorkerID = Annotated[str, StringConstraints(pattern=_WORKER_ID_PATTERN)]
NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
EpochNs = StrictInt
Count = Annotated[StrictInt, Field(ge=0)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


def _dump_json(value: Any) -> str:
    """Canonical JSON: sorted keys, no whitespace, no NaN."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def _canonical_dict(value: dict[str, Any]) -> dict[str, Any]:
    """Round-trip through JSON so a stored row compares equal to its candidate."""
    try:
        out: dict[str, Any] = json.loads(_dump_json(value))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"must be JSON-serialisable without NaN/inf: {exc}") from exc
    return out


def _sorted_unique(value: list[str]) -> list[str]:
    return sorted(set(value))


def _check_intervals(value: list[tuple[float, float]] | None) -> list[tuple[float, float]] | None:
    if value is not None:
        for start, end in value:
            if end < start:
                raise ValueError(f"interval ({start}, {end}) ends before it starts")
    return value


JsonDict = Annotated[dict[str, Any], AfterValidator(_canonical_dict)]
ParticipantIDs = Annotated[list[CatalogID], AfterValidator(_sorted_unique)]
Intervals = Annotated[list[tuple[FiniteFloat, FiniteFloat]] | None, AfterValidator(_check_intervals)]


class IngestionStatus(StrEnum):
    RAW = "raw"
    INGESTING = "ingesting"
    PROCESSED = "processed"
    FAILED = "failed"


class StorageFormat(StrEnum):
    RAW = "raw"
    ZARR = "zarr"
    LANCE = "lance"
    MP4 = "mp4"
    PARQUET = "parquet"


RecordingConflict = Literal["error", "overwrite", "extend", "merge_participants"]
ModalityConflict = Literal["error", "overwrite"]
#: ``keep`` leaves a differing stored participant as it is (only in register_session).
ParticipantConflict = Literal["error", "overwrite", "keep"]

# ---------------------------------------------------------------------------
# Row models
# ---------------------------------------------------------------------------


class CatalogRow(BaseModel):
    """One catalog row. Frozen; validated on construction.

    Rows read back from the store are built with ``model_construct`` (they were
    validated when written).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    __table__: ClassVar[str]
    __primary_key__: ClassVar[tuple[str, ...]]
    #: Fields ignored when deciding whether two rows are the same registration.
    __compare_exclude__: ClassVar[frozenset[str]] = frozenset()

    def primary_key(self) -> tuple[Any, ...]:
        return tuple(getattr(self, f) for f in self.__primary_key__)

    def primary_key_items(self) -> tuple[tuple[str, Any], ...]:
        return tuple((f, getattr(self, f)) for f in self.__primary_key__)

    def diff(self, candidate: CatalogRow) -> dict[str, tuple[Any, Any]]:
        """``{field: (self's value, candidate's value)}`` for every compared field that differs."""
        out: dict[str, tuple[Any, Any]] = {}
        for name in type(self).model_fields:
            if name in self.__compare_exclude__:
                continue
            mine, theirs = getattr(self, name), getattr(candidate, name)
            if mine != theirs:
                out[name] = (mine, theirs)
        return out


class ParticipantRow(CatalogRow):
    __table__: ClassVar[str] = "participants"
    __primary_key__: ClassVar[tuple[str, ...]] = ("participant_id",)
    #: The first enrolment stands: a later session of the same person is the same participant.
    __compare_exclude__: ClassVar[frozenset[str]] = frozenset({"enrolled_at"})

    participant_id: CatalogID
    enrolled_at: EpochNs = Field(default_factory=time.time_ns)
    display_name: str | None = None
    metadata: JsonDict = Field(default_factory=dict)


class RecordingRow(CatalogRow):
    __table__: ClassVar[str] = "recordings"
    __primary_key__: ClassVar[tuple[str, ...]] = ("recording_hash",)
    __compare_exclude__: ClassVar[frozenset[str]] = frozenset({"registered_at"})

    recording_hash: RecordingHash
    rec_id: CatalogID
    participant_ids: ParticipantIDs = Field(default_factory=list)
    start_time: EpochNs
    duration_ns: Count
    device_info: JsonDict = Field(default_factory=dict)
    metadata: JsonDict = Field(default_factory=dict)
    registered_at: EpochNs = Field(default_factory=time.time_ns)

    @property
    def duration(self) -> timedelta:
        return timedelta(microseconds=self.duration_ns / 1000)

    def diff(self, candidate: CatalogRow) -> dict[str, tuple[Any, Any]]:
        """As :meth:`CatalogRow.diff`, but ``metadata[LEGACY_ID_KEY]`` equal to the row's own
        ``rec_id`` counts as absent: rows registered before ingest wrote it stay identical."""
        out = super().diff(candidate)
        if "metadata" in out and isinstance(candidate, RecordingRow):
            if _without_legacy_id(self) == _without_legacy_id(candidate):
                del out["metadata"]
        return out


#: ``RecordingRow.metadata`` key holding the session id, where the seeds' API reads it.
LEGACY_ID_KEY = "manifest_recording_id"


def _without_legacy_id(row: RecordingRow) -> dict[str, Any]:
    meta = dict(row.metadata)
    if meta.get(LEGACY_ID_KEY) == row.rec_id:
        del meta[LEGACY_ID_KEY]
    return meta


class ModalityRow(CatalogRow):
    __table__: ClassVar[str] = "modalities"
    __primary_key__: ClassVar[tuple[str, ...]] = ("recording_hash", "modality", "worker_id")

    recording_hash: RecordingHash
    modality: ModalityName
    worker_id: WorkerID = ""
    ingestion_status: IngestionStatus = IngestionStatus.RAW
    raw_storage_uri: NonEmptyStr
    storage_uri: str | None = None
    format: StorageFormat | None = None
    sampling_rate: Annotated[FiniteFloat, Field(ge=0)] | None = None
    domain_intervals: Intervals = None
    channel_spec: JsonDict | None = None
    file_count: Count = 0
    byte_count: Count = 0
    metadata: JsonDict = Field(default_factory=dict)

    @property
    def worker_subdir(self) -> str:
        """The session subdirectory this modality came from: ``family`` or ``family_worker``."""
        return f"{self.modality}_{self.worker_id}" if self.worker_id else self.modality


class EventRow(CatalogRow):
    __table__: ClassVar[str] = "events"
    __primary_key__: ClassVar[tuple[str, ...]] = ("event_id",)

    event_id: CatalogID
    recording_hash: RecordingHash
    event_time: FiniteFloat
    event_type: NonEmptyStr
    prompt: str | None = None
    response: str | None = None
    metadata: JsonDict = Field(default_factory=dict)


class EmbeddingRow(CatalogRow):
    __table__: ClassVar[str] = "embeddings"
    __primary_key__: ClassVar[tuple[str, ...]] = ("embedding_id",)

    embedding_id: CatalogID
    recording_hash: RecordingHash
    modality: ModalityName
    model_name: NonEmptyStr
    dim: Count
    storage_uri: NonEmptyStr
    created_at: EpochNs = Field(default_factory=time.time_ns)
    metadata: JsonDict = Field(default_factory=dict)


class VirgoAssetRow(CatalogRow):
    __table__: ClassVar[str] = "virgo_assets"
    __primary_key__: ClassVar[tuple[str, ...]] = ("asset_id",)

    asset_id: CatalogID
    recording_hash: RecordingHash
    asset_type: NonEmptyStr
    storage_uri: NonEmptyStr
    created_at: EpochNs = Field(default_factory=time.time_ns)
    metadata: JsonDict = Field(default_factory=dict)


class CheckpointRow(CatalogRow):
    __table__: ClassVar[str] = "checkpoints"
    __primary_key__: ClassVar[tuple[str, ...]] = ("checkpoint_id",)

    checkpoint_id: CatalogID
    model_name: NonEmptyStr
    storage_uri: NonEmptyStr
    step: Count | None = None
    created_at: EpochNs = Field(default_factory=time.time_ns)
    metadata: JsonDict = Field(default_factory=dict)


class BenchmarkSuiteRow(CatalogRow):
    __table__: ClassVar[str] = "benchmark_suites"
    __primary_key__: ClassVar[tuple[str, ...]] = ("suite_name", "suite_version")

    suite_name: CatalogID
    suite_version: Count
    description: str | None = None
    created_at: EpochNs = Field(default_factory=time.time_ns)
    metadata: JsonDict = Field(default_factory=dict)


class BenchmarkResultRow(CatalogRow):
    __table__: ClassVar[str] = "benchmark_results"
    __primary_key__: ClassVar[tuple[str, ...]] = ("result_id",)

    result_id: CatalogID
    suite_name: CatalogID
    suite_version: Count
    checkpoint_id: CatalogID | None = None
    recording_hash: RecordingHash | None = None
    score: FiniteFloat | None = None
    created_at: EpochNs = Field(default_factory=time.time_ns)
    metadata: JsonDict = Field(default_factory=dict)


RowT = TypeVar("RowT", bound=CatalogRow)
T = TypeVar("T")

# ---------------------------------------------------------------------------
# Table specs: the Arrow schema and indexes of each table
# ---------------------------------------------------------------------------

_STR, _I64, _F64 = pa.string(), pa.int64(), pa.float64()
_INTERVAL = pa.struct([("start", _F64), ("end", _F64)])
IndexKind = Literal["BTREE", "BITMAP", "LABEL_LIST"]


@dataclass(frozen=True)
class _TableSpec:
    model: type[CatalogRow]
    schema: pa.Schema
    indexes: tuple[tuple[str, IndexKind], ...]
    #: A derived single-column key for ``merge_insert``: Lance joins through a scalar
    #: index only on one column, so a composite key would scan the whole table.
    merge_key: str | None = None

    @property
    def name(self) -> str:
        return self.model.__table__

    @property
    def pk(self) -> tuple[str, ...]:
        return self.model.__primary_key__

    @property
    def columns(self) -> list[str]:
        """The row model's columns (what reads select)."""
        return list(self.model.model_fields)

    @property
    def merge_on(self) -> list[str]:
        return [self.merge_key] if self.merge_key else list(self.pk)

    def column_type(self, column: str) -> pa.DataType:
        return self.schema.field(column).type

    @property
    def json_columns(self) -> frozenset[str]:
        return frozenset(n for n in self.columns if n in _JSON_COLUMNS)


def _derived_key(row: CatalogRow) -> str:
    """``recording_hash/modality/worker_id``: no key part can hold a ``/``."""
    return "/".join(str(v) for v in row.primary_key())


_JSON_COLUMNS = frozenset({"metadata", "device_info", "channel_spec"})
_ENUM_COLUMNS: dict[str, type[StrEnum]] = {"ingestion_status": IngestionStatus, "format": StorageFormat}


def _spec(
    model: type[CatalogRow],
    fields: list[tuple[str, pa.DataType]],
    *indexes: tuple[str, IndexKind],
    merge_key: str | None = None,
) -> _TableSpec:
    names = [n for n, _ in fields]
    if names != [*model.model_fields, *([merge_key] if merge_key else [])]:
        raise AssertionError(f"{model.__name__}: schema {names} != fields {list(model.model_fields)}")
    # Declaring the merge key as Lance's (unenforced) primary key makes merge_insert record the
    # keys it inserts in its commit, so two writers inserting the same new key conflict and the
    # loser retries against the winner's row: without it both commit and the key is duplicated.
    keys = {merge_key} if merge_key else set(model.__primary_key__)
    schema = pa.schema(
        [pa.field(n, t, nullable=False, metadata=_PK_METADATA) if n in keys else pa.field(n, t) for n, t in fields]
    )
    return _TableSpec(model, schema, tuple(indexes), merge_key)


_PK_METADATA = {b"lance-schema:unenforced-primary-key": b"true"}


_SPECS: dict[str, _TableSpec] = {
    s.name: s
    for s in (
        _spec(
            ParticipantRow,
            [("participant_id", _STR), ("enrolled_at", _I64), ("display_name", _STR), ("metadata", _STR)],
            ("participant_id", "BTREE"),
        ),
        _spec(
            RecordingRow,
            [
                ("recording_hash", _STR),
                ("rec_id", _STR),
                ("participant_ids", pa.list_(_STR)),
                ("start_time", _I64),
                ("duration_ns", _I64),
                ("device_info", _STR),
                ("metadata", _STR),
                ("registered_at", _I64),
            ],
            ("recording_hash", "BTREE"),
            ("rec_id", "BTREE"),
            ("participant_ids", "LABEL_LIST"),
        ),
        _spec(
            ModalityRow,
            [
                ("recording_hash", _STR),
                ("modality", _STR),
                ("worker_id", _STR),
                ("ingestion_status", _STR),
                ("raw_storage_uri", _STR),
                ("storage_uri", _STR),
                ("format", _STR),
                ("sampling_rate", _F64),
                ("domain_intervals", pa.list_(_INTERVAL)),
                ("channel_spec", _STR),
                ("file_count", _I64),
                ("byte_count", _I64),
                ("metadata", _STR),
                ("modality_key", _STR),
            ],
            ("recording_hash", "BTREE"),
            ("modality", "BITMAP"),
            ("modality_key", "BTREE"),
            merge_key="modality_key",
        ),
        _spec(
            EventRow,
            [
                ("event_id", _STR),
                ("recording_hash", _STR),
                ("event_time", _F64),
                ("event_type", _STR),
                ("prompt", _STR),
                ("response", _STR),
                ("metadata", _STR),
            ],
            ("event_id", "BTREE"),
            ("recording_hash", "BTREE"),
        ),
        _spec(
            EmbeddingRow,
            [
                ("embedding_id", _STR),
                ("recording_hash", _STR),
                ("modality", _STR),
                ("model_name", _STR),
                ("dim", _I64),
                ("storage_uri", _STR),
                ("created_at", _I64),
                ("metadata", _STR),
            ],
            ("embedding_id", "BTREE"),
            ("recording_hash", "BTREE"),
        ),
        _spec(
            VirgoAssetRow,
            [
                ("asset_id", _STR),
                ("recording_hash", _STR),
                ("asset_type", _STR),
                ("storage_uri", _STR),
                ("created_at", _I64),
                ("metadata", _STR),
            ],
            ("asset_id", "BTREE"),
            ("recording_hash", "BTREE"),
        ),
        _spec(
            CheckpointRow,
            [
                ("checkpoint_id", _STR),
                ("model_name", _STR),
                ("storage_uri", _STR),
                ("step", _I64),
                ("created_at", _I64),
                ("metadata", _STR),
            ],
            ("checkpoint_id", "BTREE"),
        ),
        _spec(
            BenchmarkSuiteRow,
            [
                ("suite_name", _STR),
                ("suite_version", _I64),
                ("description", _STR),
                ("created_at", _I64),
                ("metadata", _STR),
            ],
            ("suite_name", "BTREE"),
        ),
        _spec(
            BenchmarkResultRow,
            [
                ("result_id", _STR),
                ("suite_name", _STR),
                ("suite_version", _I64),
                ("checkpoint_id", _STR),
                ("recording_hash", _STR),
                ("score", _F64),
                ("created_at", _I64),
                ("metadata", _STR),
            ],
            ("result_id", "BTREE"),
        ),
    )
}

TABLE_NAMES: tuple[str, ...] = tuple(_SPECS)


def _index_config(kind: IndexKind) -> BTree | Bitmap | LabelList:
    import_lancedb()
    from lancedb.index import Bitmap, BTree, LabelList

    if kind == "BTREE":
        return BTree()
    return Bitmap() if kind == "BITMAP" else LabelList()

# ---------------------------------------------------------------------------
# Arrow <-> rows
# ---------------------------------------------------------------------------


def _encode_value(column: str, value: Any) -> Any:
    if value is None:
        return None
    if column in _JSON_COLUMNS:
        return _dump_json(value)
    if column == "domain_intervals":
        return [{"start": a, "end": b} for a, b in value]
    if isinstance(value, StrEnum):
        return value.value
    return value


def _to_arrow(spec: _TableSpec, rows: Sequence[CatalogRow]) -> pa.Table:
    arrays = [pa.array([_encode_value(c, getattr(r, c)) for r in rows], type=spec.column_type(c)) for c in spec.columns]
    if spec.merge_key:
        arrays.append(pa.array([_derived_key(r) for r in rows], type=_STR))
    return pa.Table.from_arrays(arrays, schema=spec.schema)


def _decoder(spec: _TableSpec) -> Callable[[dict[str, Any]], None]:
    """An in-place converter of one ``to_pylist`` record to model field values."""
    fields = spec.model.model_fields
    # A null dict column reads back as None where the field allows None, else as {}.
    json_cols = [(c, fields[c].default is not None or fields[c].default_factory is not None) for c in spec.json_columns]
    enum_cols = [(c, e) for c, e in _ENUM_COLUMNS.items() if c in spec.columns]
    has_intervals = "domain_intervals" in spec.columns
    has_pids = "participant_ids" in spec.columns

    def decode(rec: dict[str, Any]) -> None:
        for col, dict_when_null in json_cols:
            raw = rec[col]
            rec[col] = json.loads(raw) if raw is not None else ({} if dict_when_null else None)
        for col, enum in enum_cols:
            if rec[col] is not None:
                rec[col] = enum(rec[col])
        if has_intervals and rec["domain_intervals"] is not None:
            rec["domain_intervals"] = [(d["start"], d["end"]) for d in rec["domain_intervals"]]
        if has_pids and rec["participant_ids"] is None:
            rec["participant_ids"] = []

    return decode


_DECODERS = {name: _decoder(spec) for name, spec in _SPECS.items()}


def _from_arrow(spec: _TableSpec, table: pa.Table) -> list[Any]:
    decode = _DECODERS[spec.name]
    construct = spec.model.model_construct
    out = []
    for rec in table.to_pylist():
        decode(rec)
        out.append(construct(**rec))
    return out


# ---------------------------------------------------------------------------
# SQL building: values are always quoted here, never interpolated raw
# ---------------------------------------------------------------------------


def _sql_literal(value: Any) -> str:
    """A Lance SQL literal for ``value``; strings are single-quoted with ``'`` doubled."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, str):  # StrEnum included
        return "'" + str(value).replace("'", "''") + "'"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot filter on a non-finite float: {value!r}")
        return repr(value)
    raise TypeError(f"cannot use a {type(value).__name__} as a filter value")


def _in_list(column: str, values: Iterable[Any]) -> str:
    items = list(values)
    if not items:
        return "FALSE"
    if len(items) == 1:
        return f"{column} = {_sql_literal(items[0])}"
    return f"{column} IN ({', '.join(_sql_literal(v) for v in items)})"


def _has_any(column: str, values: Iterable[str]) -> str:
    items = list(values)
    if not items:
        return "FALSE"
    return f"array_has_any({column}, [{', '.join(_sql_literal(v) for v in items)}])"


def _and(clauses: Iterable[str | None]) -> str | None:
    parts = [c for c in clauses if c]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    return " AND ".join(f"({c})" for c in parts)


def _is_many(value: Any) -> bool:
    return isinstance(value, list | tuple | set | frozenset)


def _column_clause(spec: _TableSpec, column: str, value: Any) -> str:
    if column not in spec.schema.names:
        raise ValueError(f"{spec.name} has no column {column!r}; columns: {', '.join(spec.columns)}")
    if pa.types.is_list(spec.column_type(column)):
        if column != "participant_ids":
            raise ValueError(f"{spec.name}.{column} cannot be filtered with a dict")
        return _has_any(column, [value] if isinstance(value, str) else sorted(value))
    values = list(value) if _is_many(value) else [value]
    if column in spec.json_columns:
        values = [_dump_json(v) if isinstance(v, Mapping) else v for v in values]
    has_null = any(v is None for v in values)
    values = [v for v in values if v is not None]
    clause = _in_list(column, values) if values else None
    if has_null:
        clause = f"{column} IS NULL" if clause is None else f"({clause}) OR {column} IS NULL"
    return clause or "FALSE"


def _where_sql(spec: _TableSpec, where: str | Mapping[str, Any] | None) -> str | None:
    """A Lance filter from ``where``: a raw SQL string, or ``{column: value | [values]}``.

    In the dict form every value is quoted and every column checked against the
    table's schema; a list means ``IN``; ``None`` means ``IS NULL``; on
    ``participant_ids`` a value (or list) means "contains any of".
    """
    if where is None:
        return None
    if isinstance(where, str):
        return where.strip() or None
    return _and(_column_clause(spec, col, val) for col, val in sorted(where.items()))


def _chunks(items: Sequence[Any], size: int = _IN_CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# ---------------------------------------------------------------------------
# Conflict policies (pure)
# ---------------------------------------------------------------------------


def _conflict(existing: CatalogRow, diff: dict[str, tuple[Any, Any]]) -> CatalogRowExists:
    return CatalogRowExists(existing.__table__, existing.primary_key_items(), diff)


def _resolve(existing: RowT, candidate: RowT, policy: str) -> RowT:
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
    raise _conflict(existing, diff)


def _strict(existing: RowT, candidate: RowT, policy: str) -> RowT:
    raise _conflict(existing, existing.diff(candidate))


_POLICIES: dict[str, frozenset[str]] = {
    "participants": frozenset({"error", "overwrite", "keep"}),
    "recordings": frozenset({"error", "overwrite", "extend", "merge_participants"}),
    "modalities": frozenset({"error", "overwrite"}),
    "events": frozenset({"error"}),
}


def _test_crash_point(table: str) -> None:
    """Test-only: ``URSA_TEST_CRASH_AFTER_TABLE=<table>`` SIGKILLs this process right after that
    table's commit in ``register_session``/``register_sessions`` (tests/test_reliability_crash.py)."""
    if os.environ.get("URSA_TEST_CRASH_AFTER_TABLE") == table:
        os.kill(os.getpid(), signal.SIGKILL)


def _check_policy(table: str, policy: str) -> None:
    if policy not in _POLICIES[table]:
        raise ValueError(f"on_conflict for {table} must be one of {sorted(_POLICIES[table])}; got {policy!r}")


@dataclass
class _Write:
    """What one table receives in one commit."""

    spec: _TableSpec
    rows: list[CatalogRow]
    replaced: int  # rows among ``rows`` that replace a stored row

    @property
    def inserted(self) -> int:
        return len(self.rows) - self.replaced


@dataclass(frozen=True)
class SessionRows:
    """One session's rows for :meth:`Catalog.register_sessions`."""

    participants: Sequence[ParticipantRow]
    recording: RecordingRow
    modalities: Sequence[ModalityRow]


# ---------------------------------------------------------------------------
# The catalog
# ---------------------------------------------------------------------------

_LANCE_ERRORS = (ValueError, RuntimeError, OSError)

QueryResultRow = tuple[RecordingRow, list[ModalityRow]]


class _EventLoop:
    """A background asyncio loop that runs LanceDB's async API for synchronous callers.

    LanceDB's own sync API does the same on its loop, plus a schema fetch and a
    branch check per query: calling the async API directly saves ~1.5 ms a read and
    lets independent reads (a point lookup's two tables) run concurrently. One per
    process, shared by every :class:`Catalog`; a forked child makes its own.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ursa-catalog-loop", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()


_LOOP_LOCK = threading.Lock()
_LOOP: _EventLoop | None = None

#: Commits made in this process, per catalog URI, through any handle.
_COMMITS: dict[str, int] = {}
_COMMITS_LOCK = threading.Lock()


def _process_commits(uri: str) -> int:
    return _COMMITS.get(uri, 0)


def _note_commit(uri: str) -> int:
    with _COMMITS_LOCK:
        _COMMITS[uri] = _COMMITS.get(uri, 0) + 1
        return _COMMITS[uri]


def _event_loop() -> _EventLoop:
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None or _LOOP.pid != os.getpid():
            _LOOP = _EventLoop()
        return _LOOP


class Catalog:
    """A LanceDB catalog at one URI. Open with :meth:`open`; thread-safe."""

    def __init__(self, db: AsyncConnection, *, uri: str, existing: set[str], writable: bool, loop: _EventLoop) -> None:
        self._db = db
        self._uri = uri
        self._existing = existing
        self._writable = writable
        self._loop = loop
        self._tables: dict[str, AsyncTable] = {}
        self._seen_commits = _process_commits(uri)
        self._open_lock = threading.Lock()
        self._write_lock = threading.RLock()

    # -- opening ------------------------------------------------------------

    @classmethod
    def open(
        cls,
        uri: str,
        *,
        storage_options: dict[str, str] | None = None,
        writable: bool = True,
        read_consistency_interval: timedelta | None = DEFAULT_READ_CONSISTENCY,
    ) -> Catalog:
        """Open the catalog at ``uri`` (a local directory or ``s3://bucket/prefix``).

        Missing tables are created (with their indexes) when ``writable``; tables
        that exist are opened lazily, on first use. A read-only catalog treats a
        missing table as empty and refuses writes with :class:`WritesNotEnabled`.

        ``storage_options`` takes Lance's keys: ``aws_access_key_id``,
        ``aws_secret_access_key``, ``aws_session_token``, ``aws_endpoint``,
        ``aws_region``, ``allow_http``. On ``s3://`` Lance commits a version by
        writing its manifest with a conditional PUT (``If-None-Match: *``), so two
        writers never overwrite each other's commit: the loser re-reads and
        retries. AWS S3 and R2 both honour it; a store that ignores the header is
        safe for one writer only.

        ``read_consistency_interval``: how stale a read may be (None: never look
        for other processes' commits; call :meth:`refresh`).
        """
        lancedb = import_lancedb()  # here, not at import: the upload path never pays for it

        loop = _event_loop()
        with _lance_errors(f"open catalog {_redact(uri)}", role="assets_rw" if writable else "assets_ro"):
            db = loop.run(
                lancedb.connect_async(
                    uri, storage_options=storage_options, read_consistency_interval=read_consistency_interval
                )
            )
            existing = loop.run(_list_tables(db))
        catalog = cls(db, uri=uri, existing=existing, writable=writable, loop=loop)
        if writable:
            for name in TABLE_NAMES:
                if name not in existing:
                    catalog._create_table(_SPECS[name])
        return catalog

    @property
    def uri(self) -> str:
        return self._uri

    @property
    def writable(self) -> bool:
        return self._writable

    def _run(self, coro: Coroutine[Any, Any, T], action: str) -> T:
        if self._loop.pid != os.getpid():
            coro.close()
            raise CatalogError(f"{action}: this catalog was opened before a fork; open it again in this process")
        with _lance_errors(action, role="assets_rw" if self._writable else "assets_ro"):
            return self._loop.run(coro)

    def _create_table(self, spec: _TableSpec) -> None:
        async def create() -> AsyncTable:
            # two writers opening an empty catalog at once race to create the same tables and
            # indexes: the loser's commit conflicts; it opens the winner's table and checks again
            for attempt in range(_CREATE_ATTEMPTS):
                try:
                    table = await self._db.create_table(spec.name, schema=spec.schema, exist_ok=True)
                    await _ensure_indexes(table, spec)
                    return table
                except _LANCE_ERRORS as exc:
                    if attempt + 1 == _CREATE_ATTEMPTS or not _is_commit_conflict(exc):
                        raise
                    await asyncio.sleep(0.05 * (attempt + 1))
            raise AssertionError("unreachable")

        self._tables[spec.name] = self._run(create(), f"create table {spec.name}")
        self._existing.add(spec.name)

    def _table(self, spec: _TableSpec) -> AsyncTable | None:
        self._catch_up()
        table = self._tables.get(spec.name)
        if table is not None:
            return table
        with self._open_lock:
            if spec.name not in self._tables:
                if spec.name not in self._existing:
                    return None
                self._tables[spec.name] = self._run(_open_table(self._db, spec), f"open table {spec.name}")
            return self._tables[spec.name]

    def _catch_up(self) -> None:
        """Read our own process's writes: refresh after a commit through another handle.

        (The read-only and read-write handles of one process are separate catalogs.)
        """
        latest = _process_commits(self._uri)
        if latest != self._seen_commits:
            self._seen_commits = latest
            self._checkout_latest(list(self._tables.values()))

    def _writable_table(self, spec: _TableSpec) -> AsyncTable:
        if not self._writable:
            raise WritesNotEnabled(f"catalog {_redact(self._uri)} was opened read-only; {spec.name} cannot be written")
        table = self._table(spec)
        if table is None:  # writable catalogs create every table on open
            raise CatalogError(f"table {spec.name} is missing from {_redact(self._uri)}")
        return table

    # -- maintenance ----------------------------------------------------------

    def table_versions(self) -> dict[str, int]:
        """The current version of every table (0 for a table that does not exist)."""
        out: dict[str, int] = {}
        for name, spec in _SPECS.items():
            table = self._table(spec)
            out[name] = self._run(table.version(), f"version of {name}") if table is not None else 0
        return out

    def refresh(self) -> None:
        """See every commit made so far, by any process."""
        self._checkout_latest(list(self._tables.values()))

    def optimize(self, *, keep_versions: timedelta | None = None) -> None:
        """Compact small fragments, bring every index up to date with new rows, and remove
        the table versions superseded more than ``keep_versions`` ago (None: Lance's 7 days).

        Queries are correct without it (unindexed rows are scanned); it keeps them fast.
        Run it from one place at a time (``ursa-daemon maintain`` holds a lease for that);
        a commit that loses to a concurrent writer's is retried against the new version.
        """

        async def optimize(table: AsyncTable, spec: _TableSpec) -> None:
            for attempt in range(_CREATE_ATTEMPTS):
                try:
                    await _checkout_latest(table)
                    await table.optimize(cleanup_older_than=keep_versions)
                    await _ensure_indexes(table, spec)
                    return
                except _LANCE_ERRORS as exc:
                    if attempt + 1 == _CREATE_ATTEMPTS or not _is_commit_conflict(exc):
                        raise
                    await asyncio.sleep(0.05 * (attempt + 1))

        for spec in _SPECS.values():
            table = self._writable_table(spec)
            with self._write_lock:
                self._run(optimize(table, spec), f"optimize {spec.name}")

    # -- low-level reads --------------------------------------------------------

    async def _ascan(
        self,
        spec: _TableSpec,
        table: AsyncTable | None,
        where: str | None,
        *,
        columns: Sequence[str] | None = None,
        limit: int | None = None,
        order_by: Sequence[str] | None = None,
    ) -> pa.Table:
        cols = list(columns) if columns is not None else spec.columns
        if table is None:
            return spec.schema.empty_table().select(cols)  # a missing table reads as empty
        query = table.query().select(cols)
        if where:
            query = query.where(where)
        if order_by:
            from lancedb.query import ColumnOrdering

            query = query.order_by([ColumnOrdering(column_name=c) for c in order_by])
        if limit is not None:
            query = query.limit(limit)
        # Lance's default batches are ~1k rows, and each one costs a hop through the
        # event loop: a 100k-row scan took 29 ms that way and 2 ms in one batch.
        reader = await query.to_batches(max_batch_length=_MAX_BATCH_ROWS)
        return pa.Table.from_batches(await reader.read_all(), schema=reader.schema)

    def _scan(
        self,
        spec: _TableSpec,
        where: str | None,
        *,
        columns: Sequence[str] | None = None,
        limit: int | None = None,
        order_by: Sequence[str] | None = None,
    ) -> pa.Table:
        """Rows of ``spec`` matching ``where`` as Arrow; filter, order and limit run in Lance."""
        coro = self._ascan(spec, self._table(spec), where, columns=columns, limit=limit, order_by=order_by)
        return self._run(coro, f"read {spec.name}")

    def _scan_many(self, spec: _TableSpec, wheres: Sequence[str | None]) -> list[pa.Table]:
        """Several filtered reads of one table, run concurrently."""
        table = self._table(spec)

        async def scan_all() -> list[pa.Table]:
            return list(await asyncio.gather(*(self._ascan(spec, table, w) for w in wheres)))

        return self._run(scan_all(), f"read {spec.name}")

    def _rows(self, spec: _TableSpec, where: str | None, *, limit: int | None = None) -> list[Any]:
        order = spec.pk if limit is not None else None
        result = self._scan(spec, where, limit=limit, order_by=order)
        if order is None and result.num_rows > 1:
            result = result.sort_by([(c, "ascending") for c in spec.pk])
        return _from_arrow(spec, result)

    def _get(self, spec: _TableSpec, **key: Any) -> Any:
        rows = self._rows(spec, _and(f"{c} = {_sql_literal(key[c])}" for c in spec.pk))
        return rows[0] if rows else None

    def _scan_in(self, spec: _TableSpec, column: str, values: Sequence[Any], also: str | None = None) -> list[pa.Table]:
        """Rows whose ``column`` is in ``values`` (and match ``also``).

        Short lists go to Lance as ``IN`` filters (index lookups); long ones as one
        scan filtered in Arrow, cheaper than tens of thousands of literals.
        """
        if not values:
            return []
        if len(values) > _IN_PUSHDOWN_MAX:
            found = self._scan(spec, also)
            value_set = pa.array(list(values), type=spec.column_type(column))
            return [found.filter(pc.is_in(found.column(column), value_set=value_set))]
        return self._scan_many(spec, [_and([_in_list(column, chunk), also]) for chunk in _chunks(values)])

    def _fetch_by_keys(self, spec: _TableSpec, keys: Sequence[tuple[Any, ...]]) -> dict[tuple[Any, ...], Any]:
        """Stored rows for ``keys`` (filtered on the first key column, exact-matched here)."""
        wanted = set(keys)
        firsts = sorted({k[0] for k in wanted})
        found: dict[tuple[Any, ...], Any] = {}
        for table in self._scan_in(spec, spec.pk[0], firsts):
            for row in _from_arrow(spec, table):
                key = row.primary_key()
                if key in wanted:
                    found[key] = row
        return found

    # -- low-level writes ---------------------------------------------------------

    def _plan(
        self,
        spec: _TableSpec,
        candidates: Sequence[RowT],
        policy: str,
        resolve: Callable[[RowT, RowT, str], RowT] = _resolve,
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
        result = self._run(builder.execute(_to_arrow(spec, write.rows)), f"write {spec.name}")
        if _note_commit(self._uri) == self._seen_commits + 1:
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
                raise _conflict(other, diff)

    def _refresh(self, *specs: _TableSpec) -> None:
        self._checkout_latest([self._writable_table(spec) for spec in specs])

    def _checkout_latest(self, tables: Sequence[AsyncTable]) -> None:
        async def refresh_all() -> None:
            await asyncio.gather(*(_checkout_latest(t) for t in tables))

        self._run(refresh_all(), "refresh tables")

    def _register(self, spec: _TableSpec, row: RowT, policy: str) -> RowT:
        with self._write_lock:
            self._refresh(spec)
            write, (stored,) = self._plan(spec, [row], policy)
            self._commit(write)
            return stored

    def _add(self, spec: _TableSpec, rows: Sequence[CatalogRow]) -> None:
        with self._write_lock:
            self._refresh(spec)
            write, _ = self._plan(spec, rows, "error", _strict)
            self._commit(write)

    # -- strict inserts -----------------------------------------------------------

    def add_rows(self, rows: Sequence[CatalogRow]) -> None:
        """Insert rows of one table in one commit; :class:`CatalogRowExists` if any key is stored."""
        if not rows:
            return
        self._add(_SPECS[type(rows[0]).__table__], rows)

    def add_participant(self, row: ParticipantRow) -> None:
        self._add(_SPECS["participants"], [row])

    def add_recording(self, row: RecordingRow) -> None:
        self._add(_SPECS["recordings"], [row])

    def add_modality(self, row: ModalityRow) -> None:
        self._add(_SPECS["modalities"], [row])

    def add_event(self, row: EventRow) -> None:
        self._add(_SPECS["events"], [row])

    def add_embedding(self, row: EmbeddingRow) -> None:
        self._add(_SPECS["embeddings"], [row])

    def add_virgo_asset(self, row: VirgoAssetRow) -> None:
        self._add(_SPECS["virgo_assets"], [row])

    def add_checkpoint(self, row: CheckpointRow) -> None:
        self._add(_SPECS["checkpoints"], [row])

    def add_benchmark_suite(self, row: BenchmarkSuiteRow) -> None:
        self._add(_SPECS["benchmark_suites"], [row])

    def add_benchmark_result(self, row: BenchmarkResultRow) -> None:
        self._add(_SPECS["benchmark_results"], [row])

    # -- idempotent registration --------------------------------------------------

    def register_participant(
        self, row: ParticipantRow, on_conflict: Literal["error", "overwrite"] = "error"
    ) -> ParticipantRow:
        _check_policy("participants", on_conflict)
        return self._register(_SPECS["participants"], row, on_conflict)

    def register_recording(self, row: RecordingRow, on_conflict: RecordingConflict = "error") -> RecordingRow:
        _check_policy("recordings", on_conflict)
        return self._register(_SPECS["recordings"], row, on_conflict)

    def register_modality(self, row: ModalityRow, on_conflict: ModalityConflict = "error") -> ModalityRow:
        _check_policy("modalities", on_conflict)
        return self._register(_SPECS["modalities"], row, on_conflict)

    def register_event(self, row: EventRow) -> EventRow:
        return self._register(_SPECS["events"], row, "error")

    def register_session(
        self,
        *,
        participants: Sequence[ParticipantRow],
        recording: RecordingRow,
        modalities: Sequence[ModalityRow],
        on_conflict_recording: RecordingConflict = "error",
        on_conflict_modality: ModalityConflict = "error",
        on_conflict_participant: ParticipantConflict = "error",
    ) -> RecordingRow:
        """Register one session's rows: every check first, then one commit per changed table.

        Commits go participants → modalities → recordings; the recording row comes
        last because it is what makes the session visible. An identical re-register
        commits nothing. Returns the stored recording row.
        """
        _check_policy("recordings", on_conflict_recording)
        _check_policy("modalities", on_conflict_modality)
        _check_policy("participants", on_conflict_participant)
        _check_session(participants, recording, modalities)
        p_spec, m_spec, r_spec = _SPECS["participants"], _SPECS["modalities"], _SPECS["recordings"]
        with self._write_lock:
            self._refresh(p_spec, m_spec, r_spec)
            p_write, _ = self._plan(p_spec, participants, on_conflict_participant)
            self._require_participants(recording, participants)
            m_write, _ = self._plan(m_spec, modalities, on_conflict_modality)
            r_write, (stored,) = self._plan(r_spec, [recording], on_conflict_recording)
            for write in (p_write, m_write, r_write):
                self._commit(write)
                _test_crash_point(write.spec.name)
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
        _check_policy("recordings", on_conflict_recording)
        _check_policy("modalities", on_conflict_modality)
        _check_policy("participants", on_conflict_participant)
        p_spec, m_spec, r_spec = _SPECS["participants"], _SPECS["modalities"], _SPECS["recordings"]
        plan = (
            (p_spec, on_conflict_participant, lambda s: s.participants),
            (m_spec, on_conflict_modality, lambda s: s.modalities),
            (r_spec, on_conflict_recording, lambda s: [s.recording]),
        )
        results: list[RecordingRow | Exception] = []
        with self._write_lock:
            self._refresh(p_spec, m_spec, r_spec)
            stored = {
                spec.name: self._fetch_by_keys(spec, list({r.primary_key() for s in sessions for r in rows(s)}))
                for spec, _, rows in plan
            }
            # key -> row to write, per table, in the order they were staged
            staged: dict[str, dict[tuple[Any, ...], CatalogRow]] = {spec.name: {} for spec, _, _ in plan}
            for session in sessions:
                try:
                    _check_session(session.participants, session.recording, session.modalities)
                    mine: dict[str, dict[tuple[Any, ...], CatalogRow]] = {spec.name: {} for spec, _, _ in plan}
                    for spec, policy, rows in plan:
                        for row in rows(session):
                            key = row.primary_key()
                            seen = mine[spec.name].get(key)
                            if seen is not None and seen.diff(row):
                                what = dict(row.primary_key_items())
                                raise ValueError(f"{spec.name}: two different rows for {what} in one session")
                            current = staged[spec.name].get(key) or stored[spec.name].get(key)
                            mine[spec.name][key] = row if current is None else _resolve(current, row, policy)
                    known = set(mine["participants"]) | set(staged["participants"]) | set(stored["participants"])
                    unknown = sorted(p for p in session.recording.participant_ids if (p,) not in known)
                    if unknown:
                        raise ValueError(
                            f"recording {session.recording.rec_id} names unregistered participants {unknown}"
                        )
                except (CatalogRowExists, ValueError) as exc:
                    results.append(exc)
                    continue
                for spec, _, _ in plan:
                    for key, row in mine[spec.name].items():
                        current = staged[spec.name].get(key) or stored[spec.name].get(key)
                        if row is not current:
                            staged[spec.name][key] = row
                (key,) = mine["recordings"]
                results.append(mine["recordings"][key])  # type: ignore[arg-type]
            for spec, _, _ in plan:
                rows_ = list(staged[spec.name].values())
                replaced = sum(1 for r in rows_ if r.primary_key() in stored[spec.name])
                self._commit(_Write(spec, rows_, replaced))
                _test_crash_point(spec.name)
        return results

    def delete_recording(self, recording_hash: str) -> bool:
        """Remove a recording and its modality rows; False when there was none.

        The recording row goes first (it is what makes the session visible), then
        its modalities, so a crash between the two leaves no visible row pointing
        at anything. For ``ingest --overwrite`` of a session whose files changed.
        """
        r_spec, m_spec = _SPECS["recordings"], _SPECS["modalities"]
        where = f"recording_hash = {_sql_literal(recording_hash)}"
        with self._write_lock:
            self._refresh(r_spec, m_spec)
            found = bool(self._rows(r_spec, where, limit=1)) or bool(self._rows(m_spec, where, limit=1))
            if not found:
                return False
            for spec in (r_spec, m_spec):
                table = self._writable_table(spec)
                self._run(table.delete(where), f"delete from {spec.name}")
                if _note_commit(self._uri) == self._seen_commits + 1:
                    self._seen_commits += 1
        return True

    def _require_participants(self, recording: RecordingRow, passed: Sequence[ParticipantRow]) -> None:
        """Every participant of ``recording`` is passed along or already registered."""
        missing = sorted(set(recording.participant_ids) - {p.participant_id for p in passed})
        if missing:
            stored = self._fetch_by_keys(_SPECS["participants"], [(p,) for p in missing])
            unknown = [p for p in missing if (p,) not in stored]
            if unknown:
                raise ValueError(f"recording {recording.rec_id} names unregistered participants {unknown}")

    # -- point lookups ----------------------------------------------------------------

    def get_participant(self, participant_id: str) -> ParticipantRow | None:
        row: ParticipantRow | None = self._get(_SPECS["participants"], participant_id=participant_id)
        return row

    def get_recording(self, recording_hash: str) -> RecordingRow | None:
        row: RecordingRow | None = self._get(_SPECS["recordings"], recording_hash=recording_hash)
        return row

    def get_modality(self, recording_hash: str, modality: str, worker_id: str = "") -> ModalityRow | None:
        row: ModalityRow | None = self._get(
            _SPECS["modalities"], recording_hash=recording_hash, modality=modality, worker_id=worker_id
        )
        return row

    def get_event(self, event_id: str) -> EventRow | None:
        row: EventRow | None = self._get(_SPECS["events"], event_id=event_id)
        return row

    def get_embedding(self, embedding_id: str) -> EmbeddingRow | None:
        row: EmbeddingRow | None = self._get(_SPECS["embeddings"], embedding_id=embedding_id)
        return row

    def get_virgo_asset(self, asset_id: str) -> VirgoAssetRow | None:
        row: VirgoAssetRow | None = self._get(_SPECS["virgo_assets"], asset_id=asset_id)
        return row

    def get_checkpoint(self, checkpoint_id: str) -> CheckpointRow | None:
        row: CheckpointRow | None = self._get(_SPECS["checkpoints"], checkpoint_id=checkpoint_id)
        return row

    def get_benchmark_suite(self, suite_name: str, suite_version: int) -> BenchmarkSuiteRow | None:
        row: BenchmarkSuiteRow | None = self._get(
            _SPECS["benchmark_suites"], suite_name=suite_name, suite_version=suite_version
        )
        return row

    def get_benchmark_result(self, result_id: str) -> BenchmarkResultRow | None:
        row: BenchmarkResultRow | None = self._get(_SPECS["benchmark_results"], result_id=result_id)
        return row

    # -- listings ---------------------------------------------------------------------

    def _list(self, table: str, where: str | Mapping[str, Any] | None, limit: int | None) -> list[Any]:
        spec = _SPECS[table]
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0; got {limit}")
        if limit == 0:
            return []
        return self._rows(spec, _where_sql(spec, where), limit=limit)

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
            f"recording_hash = {_sql_literal(recording_hash)}" if recording_hash is not None else None,
            f"rec_id = {_sql_literal(rec_id)}" if rec_id is not None else None,
            _has_any("participant_ids", sorted(set(participants))) if participants is not None else None,
        ]
        if recording_hash is not None:
            return self._query_one(recording_hash, _and(clauses), families, metadata)
        candidates: pa.Array | None = None
        if families is not None:
            candidates = self._recordings_with(families, recording_hash)
            if len(candidates) == 0:
                return []
            if len(candidates) <= _IN_PUSHDOWN_MAX:
                clauses.append(_in_list("recording_hash", candidates.to_pylist()))
                candidates = None
        recordings = self._matching_recordings(_and(clauses), candidates, metadata, limit)
        grouped = self._modalities_of([r.recording_hash for r in recordings], families)
        return [(r, grouped.get(r.recording_hash, [])) for r in recordings]

    def _query_one(
        self, recording_hash: str, where: str | None, families: Sequence[str] | None, metadata: Mapping[str, Any] | None
    ) -> list[QueryResultRow]:
        """A known hash: its recording row and its modality rows, read concurrently."""
        r_spec, m_spec = _SPECS["recordings"], _SPECS["modalities"]
        r_table, m_table = self._table(r_spec), self._table(m_spec)
        m_where = _and(
            [
                f"recording_hash = {_sql_literal(recording_hash)}",
                _in_list("modality", families) if families is not None else None,
            ]
        )

        async def both() -> tuple[pa.Table, pa.Table]:
            recs, mods = await asyncio.gather(
                self._ascan(r_spec, r_table, where), self._ascan(m_spec, m_table, m_where)
            )
            return recs, mods

        recs, mods = self._run(both(), "read recordings")
        rows: list[RecordingRow] = _from_arrow(r_spec, recs)
        if metadata is not None:
            wanted = _canonical_dict(dict(metadata))
            rows = [r for r in rows if _metadata_matches(r.metadata, wanted)]
        mod_rows: list[ModalityRow] = _from_arrow(m_spec, mods.sort_by([(c, "ascending") for c in m_spec.pk]))
        if not rows or (families is not None and not mod_rows):
            return []
        return [(rows[0], mod_rows)]

    def _recordings_with(self, families: Sequence[str], recording_hash: str | None) -> pa.Array:
        """Distinct recording hashes having a modality of one of ``families``."""
        where = _and(
            [
                _in_list("modality", families),
                f"recording_hash = {_sql_literal(recording_hash)}" if recording_hash is not None else None,
            ]
        )
        hashes = self._scan(_SPECS["modalities"], where, columns=["recording_hash"]).column("recording_hash")
        return pc.unique(hashes.combine_chunks())

    def _matching_recordings(
        self,
        where: str | None,
        candidates: pa.Array | None,
        metadata: Mapping[str, Any] | None,
        limit: int | None,
    ) -> list[RecordingRow]:
        spec = _SPECS["recordings"]
        order = ["start_time", "recording_hash"]
        sort_keys = [(c, "ascending") for c in order]
        if candidates is None and metadata is None:
            # One pushed-down query: filter, order and limit all run in Lance.
            found = self._scan(spec, where, limit=limit, order_by=order if limit is not None else None)
            return list(_from_arrow(spec, found.sort_by(sort_keys)))
        # Narrow scan of the keys first, then full rows for the survivors only.
        narrow_cols = [*order, "metadata"] if metadata is not None else order
        keys = self._scan(spec, where, columns=narrow_cols)
        if candidates is not None:
            keys = keys.filter(pc.is_in(keys.column("recording_hash"), value_set=candidates))
        if metadata is not None:
            wanted = _canonical_dict(dict(metadata))
            mask = [_metadata_matches(json.loads(m) if m else {}, wanted) for m in keys.column("metadata").to_pylist()]
            keys = keys.filter(pa.array(mask, type=pa.bool_()))
        keys = keys.sort_by(sort_keys)
        if limit is not None:
            keys = keys.slice(0, limit)
        hashes = keys.column("recording_hash").to_pylist()
        rows = self._fetch_by_keys(spec, [(h,) for h in hashes])
        return [rows[(h,)] for h in hashes if (h,) in rows]

    def _modalities_of(self, hashes: Sequence[str], families: Sequence[str] | None) -> dict[str, list[ModalityRow]]:
        """Modality rows of ``hashes`` (only of ``families`` if given), grouped and sorted."""
        if not hashes:
            return {}
        spec = _SPECS["modalities"]
        family_clause = _in_list("modality", families) if families is not None else None
        tables = self._scan_in(spec, "recording_hash", hashes, family_clause)
        grouped: dict[str, list[ModalityRow]] = {}
        for table in tables:
            for row in _from_arrow(spec, table.sort_by([(c, "ascending") for c in spec.pk])):
                grouped.setdefault(row.recording_hash, []).append(row)
        return grouped


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _metadata_matches(actual: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Equality on every key of ``wanted``; a missing key does not match."""
    return all(k in actual and actual[k] == v for k, v in wanted.items())


def _check_session(
    participants: Sequence[ParticipantRow], recording: RecordingRow, modalities: Sequence[ModalityRow]
) -> None:
    """The rows of one session must agree with each other."""
    stray = sorted(m.worker_subdir for m in modalities if m.recording_hash != recording.recording_hash)
    if stray:
        raise ValueError(f"modalities {stray} do not belong to recording {recording.recording_hash}")
    extra = sorted({p.participant_id for p in participants} - set(recording.participant_ids))
    if extra:
        raise ValueError(f"participants {extra} are not in the recording's participant_ids")


async def _list_tables(db: AsyncConnection) -> set[str]:
    names: set[str] = set()
    token: str | None = None
    while True:
        page = await db.list_tables(page_token=token)
        names.update(page.tables)
        token = page.page_token
        if not token:
            return names


async def _open_table(db: AsyncConnection, spec: _TableSpec) -> AsyncTable:
    """Open ``spec``'s table and check it has every column we read and write."""
    table = await db.open_table(spec.name)
    present = set((await table.schema()).names)
    missing = [c for c in spec.schema.names if c not in present]
    if missing:
        raise CatalogError(
            f"table {spec.name} lacks columns {missing}: it was made by another version of "
            "ursa-daemon; migrate it or point ACTIVE.json at a new catalog"
        )
    return table


async def _checkout_latest(table: AsyncTable) -> None:
    """Move ``table`` to its newest version (LanceDB leaves this method untyped)."""
    await table.checkout_latest()  # type: ignore[no-untyped-call]


async def _ensure_indexes(table: AsyncTable, spec: _TableSpec) -> None:
    """Create the scalar indexes of ``spec`` that ``table`` lacks (an empty table can be indexed)."""
    indexed = {tuple(ix.columns) for ix in await table.list_indices()}
    for column, kind in spec.indexes:
        if (column,) not in indexed:
            await table.create_index(column, config=_index_config(kind), replace=False)


_CREATE_ATTEMPTS = 5


def _is_commit_conflict(exc: BaseException) -> bool:
    """Lance's "another writer committed first" (it says retryable), not a real failure."""
    text = str(exc).lower()
    return "commit conflict" in text or "concurrent transaction" in text


def _redact(uri: str) -> str:
    """The URI without any query string (which could hold a signature)."""
    return uri.split("?", 1)[0]


#: what Lance's object store says when the server answered 401/403
_DENIED_MARKERS = ("lacked the necessary privileges", "403 Forbidden", "AccessDenied", "401 Unauthorized")


@contextmanager
def _lance_errors(action: str, *, role: str = "assets_rw") -> Iterator[None]:
    """Translate LanceDB's exceptions into :class:`CatalogError` at the boundary.

    A refusal by the store becomes :class:`CatalogPermissionError` naming ``role``
    and the fix, without the storage engine's text.
    """
    try:
        yield
    except CatalogError:
        raise
    except _LANCE_ERRORS as exc:
        if any(m in str(exc) for m in _DENIED_MARKERS):
            raise CatalogPermissionError(action, role) from None
        raise CatalogError(f"{action}: {exc}") from exc
