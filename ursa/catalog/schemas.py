"""``ursa.catalog.schemas``: the row classes, enums and the id/time type names the seeds import.

Re-exports of :mod:`ursa.catalog`; the type names are plain aliases.
"""

from __future__ import annotations

from typing import Any

from ursa.catalog import (
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
)

#: a catalog id (``recording_hash``, ``participant_id``, ...)
CatalogID = str
#: nanoseconds since the Unix epoch, UTC
EpochNs = int
#: a row's free-form ``metadata``
MetadataDict = dict[str, Any]
#: a modality's name (the worker family: ``eeg``, ``camera``, ...)
ModalityName = str

__all__ = [
    "BenchmarkResultRow",
    "BenchmarkSuiteRow",
    "CatalogID",
    "CatalogRow",
    "CheckpointRow",
    "EmbeddingRow",
    "EpochNs",
    "EventRow",
    "IngestionStatus",
    "MetadataDict",
    "ModalityName",
    "ModalityRow",
    "ParticipantRow",
    "RecordingRow",
    "StorageFormat",
    "VirgoAssetRow",
]
