"""``ursa``: the original Ursa client API (the seeds' names and signatures) over ``ursa_daemon``.

Notebooks, apps and runbooks written against Ursa run unchanged::

    from ursa import DataInterface

    data = DataInterface(profile="r2")          # the config's ``r2`` entry
    results = data.query(recording_hash=h, status="raw")
    data.download(results, dest="/tmp/session", progress=on_progress)

Everything here re-exports or adapts :mod:`ursa_daemon`, which holds the one
implementation; its own API (``ursa_daemon.DataInterface``) is unchanged.
"""

from __future__ import annotations

from ursa.catalog import (
    BenchmarkResultRow,
    BenchmarkSuiteRow,
    CatalogRow,
    CatalogRowExists,
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
    WritesNotEnabled,
)
from ursa.data_interface import DataInterface, QueryResultList, QuerySpec
from ursa.store import ObjectStoreError, ObjectStoreTransientError
from ursa_daemon.api import QueryResult
from ursa_daemon.log import library_logging
from ursa_daemon.transfer.download import DownloadProgress
from ursa_daemon.transfer.ingest import IngestResult, UploadProgress

# ursa_daemon's events go to stdlib loggers (ursa.ingest, ...), quiet unless configured; ingest's
# also to the seeds' ``ursa.register.orchestrator`` logger, which their runbook says to subscribe to
library_logging(aliases={"ursa.ingest": "ursa.register.orchestrator"})

__all__ = [
    "BenchmarkResultRow",
    "BenchmarkSuiteRow",
    "CatalogRow",
    "CatalogRowExists",
    "CheckpointRow",
    "DataInterface",
    "DownloadProgress",
    "EmbeddingRow",
    "EventRow",
    "IngestResult",
    "IngestionStatus",
    "ModalityConflict",
    "ModalityRow",
    "ObjectStoreError",
    "ObjectStoreTransientError",
    "ParticipantConflict",
    "ParticipantRow",
    "QueryResult",
    "QueryResultList",
    "QuerySpec",
    "RecordingConflict",
    "RecordingRow",
    "StorageFormat",
    "UploadProgress",
    "VirgoAssetRow",
    "WritesNotEnabled",
]
