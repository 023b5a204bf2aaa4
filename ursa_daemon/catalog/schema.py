"""Table specs (the Arrow schema and scalar indexes of each table) and the rows <-> Arrow encoding.

Dict columns (``metadata``, ``device_info``, ``channel_spec``) are stored as
canonical JSON strings (sorted keys) and parsed back; ``participant_ids`` is a
``list<string>`` column. Rows read back are built with ``model_construct``: they
were validated when written.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

import pyarrow as pa  # type: ignore[import-untyped]

from ursa_daemon.catalog.rows import (
    BenchmarkResultRow,
    BenchmarkSuiteRow,
    CatalogRow,
    CheckpointRow,
    EmbeddingRow,
    EventRow,
    IngestionStatus,
    ModalityRow,
    ParticipantRow,
    RecordingRow,
    StorageFormat,
    VirgoAssetRow,
    dump_json,
)

# ---------------------------------------------------------------------------
# Table specs: the Arrow schema and indexes of each table
# ---------------------------------------------------------------------------

_STR, _I64, _F64 = pa.string(), pa.int64(), pa.float64()
_INTERVAL = pa.struct([("start", _F64), ("end", _F64)])
IndexKind = Literal["BTREE", "BITMAP", "LABEL_LIST"]


@dataclass(frozen=True)
class TableSpec:
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
        return frozenset(n for n in self.columns if n in JSON_COLUMNS)


def derived_key(row: CatalogRow) -> str:
    """``recording_hash/modality/worker_id``: no key part can hold a ``/``."""
    return "/".join(str(v) for v in row.primary_key())


JSON_COLUMNS = frozenset({"metadata", "device_info", "channel_spec"})
ENUM_COLUMNS: dict[str, type[StrEnum]] = {"ingestion_status": IngestionStatus, "format": StorageFormat}


def _spec(
    model: type[CatalogRow],
    fields: list[tuple[str, pa.DataType]],
    *indexes: tuple[str, IndexKind],
    merge_key: str | None = None,
) -> TableSpec:
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
    return TableSpec(model, schema, tuple(indexes), merge_key)


_PK_METADATA = {b"lance-schema:unenforced-primary-key": b"true"}


SPECS: dict[str, TableSpec] = {
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

TABLE_NAMES: tuple[str, ...] = tuple(SPECS)

# ---------------------------------------------------------------------------
# Arrow <-> rows
# ---------------------------------------------------------------------------


def _encode_value(column: str, value: Any) -> Any:
    if value is None:
        return None
    if column in JSON_COLUMNS:
        return dump_json(value)
    if column == "domain_intervals":
        return [{"start": a, "end": b} for a, b in value]
    if isinstance(value, StrEnum):
        return value.value
    return value


def to_arrow(spec: TableSpec, rows: Sequence[CatalogRow]) -> pa.Table:
    arrays = [pa.array([_encode_value(c, getattr(r, c)) for r in rows], type=spec.column_type(c)) for c in spec.columns]
    if spec.merge_key:
        arrays.append(pa.array([derived_key(r) for r in rows], type=_STR))
    return pa.Table.from_arrays(arrays, schema=spec.schema)


def _decoder(spec: TableSpec) -> Callable[[dict[str, Any]], None]:
    """An in-place converter of one ``to_pylist`` record to model field values."""
    fields = spec.model.model_fields
    # A null dict column reads back as None where the field allows None, else as {}.
    json_cols = [(c, fields[c].default is not None or fields[c].default_factory is not None) for c in spec.json_columns]
    enum_cols = [(c, e) for c, e in ENUM_COLUMNS.items() if c in spec.columns]
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


_DECODERS = {name: _decoder(spec) for name, spec in SPECS.items()}


def from_arrow(spec: TableSpec, table: pa.Table) -> list[Any]:
    decode = _DECODERS[spec.name]
    construct = spec.model.model_construct
    out = []
    for rec in table.to_pylist():
        decode(rec)
        out.append(construct(**rec))
    return out
