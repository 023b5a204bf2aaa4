"""ursa-daemon: the rig-side ingest daemon and the DataInterface read/register API.

Names are imported on first use, so ``import ursa_daemon.config`` (and the
CLI's ``--help``) does not pay for lancedb and obstore.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ursa_daemon.errors import (
    CatalogError,
    CatalogRowExists,
    ConfigError,
    CredentialError,
    InputError,
    ObjectExists,
    ObjectMismatch,
    ObjectNotFound,
    StateError,
    StateLocked,
    StoreError,
    StorePermissionError,
    TransientStoreError,
    UrsaError,
    WritesNotEnabled,
)

_SOURCES = {
    "DataInterface": "api",
    "QueryResult": "api",
    "QuerySpec": "api",
    "Config": "config",
    "load_config": "config",
    "IngestResult": "transfer.register",
    "UploadProgress": "transfer.ingest",
    "ingest": "transfer.ingest",
}

if TYPE_CHECKING:
    from ursa_daemon.api import DataInterface, QueryResult, QuerySpec
    from ursa_daemon.config import Config, load_config
    from ursa_daemon.transfer.ingest import UploadProgress, ingest
    from ursa_daemon.transfer.register import IngestResult


__all__ = [
    "CatalogError",
    "CatalogRowExists",
    "Config",
    "ConfigError",
    "CredentialError",
    "DataInterface",
    "IngestResult",
    "InputError",
    "ObjectExists",
    "ObjectMismatch",
    "ObjectNotFound",
    "QueryResult",
    "QuerySpec",
    "StateError",
    "StateLocked",
    "StoreError",
    "StorePermissionError",
    "TransientStoreError",
    "UploadProgress",
    "UrsaError",
    "WritesNotEnabled",
    "ingest",
    "load_config",
]


def __getattr__(name: str) -> Any:
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module 'ursa_daemon' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ursa_daemon.{module}"), name)
    globals()[name] = value
    return value
