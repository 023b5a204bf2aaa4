"""Catalog rows: one frozen pydantic model per table (SPEC §4), their validated field types and enums.

Pure: pydantic only, no pyarrow or lancedb, so code that builds or inspects rows
(ingest, the download planner, the seeds' API) does not load the storage stack.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StringConstraints,
)

# ---------------------------------------------------------------------------
# Validated field types
# ---------------------------------------------------------------------------

ID_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,127}$"
RECORDING_HASH_PATTERN = r"^[0-9a-f]{64}$"
MODALITY_PATTERN = r"^[a-z][a-z0-9]*$"
_WORKER_ID_PATTERN = r"^(?:[a-z0-9][a-z0-9_.-]{0,127})?$"


CatalogID = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
RecordingHash = Annotated[str, StringConstraints(pattern=RECORDING_HASH_PATTERN)]
ModalityName = Annotated[str, StringConstraints(pattern=MODALITY_PATTERN)]
WorkerID = Annotated[str, StringConstraints(pattern=_WORKER_ID_PATTERN)]
NonEmptyStr = Annotated[str, StringConstraints(min_length=1)]
EpochNs = StrictInt
Count = Annotated[StrictInt, Field(ge=0)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


def dump_json(value: Any) -> str:
    """Canonical JSON: sorted keys, no whitespace, no NaN."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def canonical_dict(value: dict[str, Any]) -> dict[str, Any]:
    """Round-trip through JSON so a stored row compares equal to its candidate."""
    try:
        out: dict[str, Any] = json.loads(dump_json(value))
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


JsonDict = Annotated[dict[str, Any], AfterValidator(canonical_dict)]
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
        if (
            "metadata" in out
            and isinstance(candidate, RecordingRow)
            and _without_legacy_id(self) == _without_legacy_id(candidate)
        ):
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


def one_per_key(rows: list[RowT]) -> list[RowT]:
    """``rows`` with one row per primary key, in their order: of rows sharing a key (a duplicate
    ``maintain`` has not repaired yet), the earliest registered stands, as the repair keeps it."""
    if len(rows) < 2:
        return rows
    best: dict[tuple[Any, ...], RowT] = {}
    for row in rows:
        key = row.primary_key()
        seen = best.get(key)
        if seen is None or getattr(row, "registered_at", 0) < getattr(seen, "registered_at", 0):
            best[key] = row
    if len(best) == len(rows):
        return rows
    return [row for row in rows if best[row.primary_key()] is row]


@dataclass(frozen=True)
class SessionRows:
    """One session's rows for :meth:`Catalog.register_sessions`."""

    participants: Sequence[ParticipantRow]
    recording: RecordingRow
    modalities: Sequence[ModalityRow]
