"""``ursa.catalog``: the catalog's row classes, enums, conflict policies and errors.

Re-exports of :mod:`ursa_daemon.catalog` and :mod:`ursa_daemon.errors` under the
seeds' names; nothing here is a second implementation.
"""

from __future__ import annotations

from ursa_daemon.catalog import (
    LEGACY_ID_KEY,
    BenchmarkResultRow,
    BenchmarkSuiteRow,
    Catalog,
    CatalogRow,
    CheckpointRow,
    EmbeddingRow,
    EventRow,
    IngestionStatus,
    ModalityConflict,
    ModalityRow,
    ParticipantConflict,
    ParticipantRow,
    RecordingConflict,
    RecordingRow,
    StorageFormat,
    VirgoAssetRow,
)
from ursa_daemon.errors import CatalogError, CatalogRowExists, WritesNotEnabled

#: The seeds name the catalog-level primary-key clash separately; here it is the same class.
CatalogPKConflict = CatalogRowExists

__all__ = [
    "LEGACY_ID_KEY",
    "BenchmarkResultRow",
    "BenchmarkSuiteRow",
    "Catalog",
    "CatalogError",
    "CatalogPKConflict",
    "CatalogRow",
    "CatalogRowExists",
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
    "StorageFormat",
    "VirgoAssetRow",
    "WritesNotEnabled",
]
