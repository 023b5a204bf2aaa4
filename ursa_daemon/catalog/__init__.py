"""The LanceDB catalog: row models, table specs, idempotent writes, pushed-down queries.

The only package that imports :mod:`lancedb` (through
:func:`ursa_daemon.catalog._lance_import.import_lancedb`, which defers the REST
namespace client lancedb never uses here). It imports nothing from ursa_daemon but
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

Modules, lowest first (each imports only the ones above it)::

    rows          pydantic row models, field types, enums, SessionRows   (pydantic only)
    policies      on_conflict resolution between a stored and a new row   (pure)
    schema        table specs, Arrow schemas, rows <-> Arrow              (pyarrow)
    queries       SQL filter building, always quoted
    _lance_import import lancedb with its REST namespace client deferred
    _loop         the background event loop for LanceDB's async API; commit counter
    lance         the lancedb boundary: table helpers, error translation
    core          CatalogCore: open, tables, maintenance, low-level scans
    reads         CatalogReads: get_*, list_*, query
    writes        CatalogWrites: add_*, register_*, register_session(s), delete_recording
    handle        Catalog = CatalogWrites + CatalogReads

Names are imported on first use: ``from ursa_daemon.catalog import ModalityRow``
loads pydantic only; pyarrow and lancedb load with :class:`Catalog` (lancedb only
when a catalog is opened).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ursa_daemon.catalog.core import DEFAULT_READ_CONSISTENCY
    from ursa_daemon.catalog.handle import Catalog
    from ursa_daemon.catalog.rows import (
        ID_PATTERN,
        LEGACY_ID_KEY,
        MODALITY_PATTERN,
        RECORDING_HASH_PATTERN,
        BenchmarkResultRow,
        BenchmarkSuiteRow,
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
        SessionRows,
        StorageFormat,
        VirgoAssetRow,
    )
    from ursa_daemon.catalog.schema import TABLE_NAMES

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

_SOURCES = {name: "rows" for name in __all__ if name not in {"Catalog", "DEFAULT_READ_CONSISTENCY", "TABLE_NAMES"}} | {
    "Catalog": "handle",
    "DEFAULT_READ_CONSISTENCY": "core",
    "TABLE_NAMES": "schema",
}


def __getattr__(name: str) -> Any:
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module 'ursa_daemon.catalog' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ursa_daemon.catalog.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
