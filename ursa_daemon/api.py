"""``DataInterface``: the scientists' Python API (query, list/get, register).

A fresh interface reads through the ``assets_ro`` role only. ``register_*``
raises :class:`WritesNotEnabled` until :meth:`DataInterface.enable_writes`
opens a second catalog handle on ``assets_rw``. On the local profile there is
no credential boundary, so the flag is the only difference.

The handles, stores and the catalog pointer ``<assets>/ursa/ACTIVE.json`` are the
:class:`~ursa_daemon.transfer.context.Context` this class is built on; the query
machinery is :mod:`ursa_daemon.transfer.query`. Both are re-exported here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from ursa_daemon.catalog import (
    Catalog,
    EventRow,
    IngestionStatus,
    ModalityRow,
    ParticipantRow,
    RecordingRow,
    StorageFormat,
)
from ursa_daemon.config import Config, config_from_dict, load_config
from ursa_daemon.store import parse_storage_uri
from ursa_daemon.transfer.context import ACTIVE_POINTER_KEY, DEFAULT_CATALOG_PREFIX, Context, open_catalog
from ursa_daemon.transfer.query import QueryResult, QuerySpec, modality_key
from ursa_daemon.transfer.query import query as _query
from ursa_daemon.transfer.query import resolve as _resolve

__all__ = [
    "ACTIVE_POINTER_KEY",
    "DEFAULT_CATALOG_PREFIX",
    "DataInterface",
    "QueryResult",
    "QuerySpec",
    "modality_key",
    "open_catalog",
]

RecordingConflict = Literal["error", "overwrite", "extend", "merge_participants"]
ModalityConflict = Literal["error", "overwrite"]


def _epoch_ns(value: int | datetime) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"datetime {value!r} has no timezone; give an aware datetime or epoch ns")
        return int(value.timestamp() * 1_000_000_000)
    return int(value)


class DataInterface(Context):
    """Query, read and register recordings in the catalog.

    ``DataInterface()`` reads ``config.yaml`` (the same search as the CLI) and
    uses its ``profile``; ``profile=`` picks another entry of ``profiles:``.
    ``DataInterface(profile="local", path=DIR)`` needs no config file: ``DIR``
    is the local store root (``DIR/raw``, ``DIR/assets``).

    The handles (``config``, ``profile``, ``catalog``, ``store()``,
    ``enable_writes()``, ``writes_enabled``) are :class:`Context`'s, so a
    ``DataInterface`` is what ingest, downloads and the daemon take, too.
    """

    def __init__(
        self,
        profile: str | None = None,
        *,
        path: str | os.PathLike[str] | None = None,
        config_path: str | os.PathLike[str] | None = None,
        config: Config | None = None,
    ) -> None:
        if path is not None:
            if profile not in (None, "local") or config_path is not None or config is not None:
                raise ValueError(
                    "path= is the local store root and only goes with profile='local'; "
                    "for other profiles give config_path= (or config=)"
                )
            root = Path(path).resolve()
            config = config_from_dict(
                {
                    "profile": "local",
                    "recordings_root": str(root / "recordings"),
                    "state_dir": str(root / "state"),
                    "profiles": {"local": {"kind": "local", "root": str(root)}},
                },
                base_dir=root,
            )
        elif config is None:
            config = load_config(config_path)
        if profile is not None and path is None:
            config = config.with_profile(profile)
        super().__init__(config)

    # -- ingest ----------------------------------------------------------

    def ingest(self, rec_dir: str | os.PathLike[str], **kwargs: Any) -> Any:
        """Upload a session and register it (Path A); see :func:`ursa_daemon.transfer.ingest.ingest`.

        Needs ``enable_writes(roles=("assets_rw", "raw_rw"))``. Returns an ``IngestResult``.
        """
        from ursa_daemon.transfer.ingest import ingest

        return ingest(self, Path(rec_dir), **kwargs)

    def register_from_store(self, rec_id: str, **kwargs: Any) -> Any:
        """Verify bytes already in the store and register them (Path B)."""
        from ursa_daemon.transfer.backfill import register_from_store

        return register_from_store(self, rec_id, **kwargs)

    # -- query -----------------------------------------------------------

    def query(self, spec: QuerySpec | None = None, **kwargs: Any) -> list[QueryResult]:
        """Recordings matching every filter, each with its modality rows.

        Filters: ``participants`` (any of; a typed name such as ``"Aria Lin"`` also
        matches its normalized id ``aria_lin``), ``modalities`` (any of; only those
        rows are returned), ``recording_hash``, ``rec_id``, ``metadata``
        (equality on each key), ``limit``. Pass a :class:`QuerySpec` or the
        keywords, not both. All filters but ``metadata`` run inside Lance.
        """
        if spec is not None and kwargs:
            raise TypeError(f"pass a QuerySpec or filter keywords, not both (got {sorted(kwargs)})")
        return _query(self, spec or QuerySpec(**kwargs))

    def resolve(self, target: str | QueryResult | Iterable[QueryResult]) -> list[QueryResult]:
        """A recording_hash, a rec_id, or query results, as a list of results."""
        return _resolve(self, target)

    # -- per-table reads (always the read-only handle) --------------------

    def __getattr__(self, name: str) -> Any:
        if name.startswith(("list_", "get_")) and not name.startswith("_"):
            method = getattr(Catalog, name, None)
            if callable(method):
                return getattr(self.catalog, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- registers (the assets_rw handle) ---------------------------------

    def register_participant(
        self,
        *,
        participant_id: str,
        enrolled_at: int | datetime,
        display_name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        on_conflict: Literal["error", "overwrite"] = "error",
    ) -> ParticipantRow:
        catalog = self.write_catalog()
        row = ParticipantRow(
            participant_id=participant_id,
            enrolled_at=_epoch_ns(enrolled_at),
            display_name=display_name,
            metadata=dict(metadata or {}),
        )
        return catalog.register_participant(row, on_conflict=on_conflict)

    def register_recording(
        self,
        *,
        recording_hash: str,
        rec_id: str,
        participant_ids: list[str],
        start_time: int | datetime,
        duration: timedelta | None = None,
        duration_ns: int | None = None,
        device_info: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        on_conflict: RecordingConflict = "error",
    ) -> RecordingRow:
        catalog = self.write_catalog()
        if (duration is None) == (duration_ns is None):
            raise ValueError("give exactly one of duration (timedelta) or duration_ns")
        if duration is not None:
            duration_ns = round(duration.total_seconds() * 1_000_000_000)
        row = RecordingRow(
            recording_hash=recording_hash,
            rec_id=rec_id,
            participant_ids=sorted(set(participant_ids)),
            start_time=_epoch_ns(start_time),
            duration_ns=int(duration_ns or 0),
            device_info=dict(device_info or {}),
            metadata=dict(metadata or {}),
            registered_at=_epoch_ns(datetime.now().astimezone()),
        )
        return catalog.register_recording(row, on_conflict=on_conflict)

    def register_modality(
        self,
        *,
        recording_hash: str,
        modality: str,
        worker_id: str = "",
        raw_storage_uri: str,
        storage_uri: str | None = None,
        ingestion_status: IngestionStatus | str = IngestionStatus.RAW,
        format: StorageFormat | str | None = None,
        sampling_rate: float | None = None,
        domain_intervals: list[tuple[float, float]] | None = None,
        channel_spec: Mapping[str, Any] | None = None,
        file_count: int = 0,
        byte_count: int = 0,
        metadata: Mapping[str, Any] | None = None,
        on_conflict: ModalityConflict = "error",
    ) -> ModalityRow:
        """Register one modality. ``raw_storage_uri`` must stay in the raw bucket;
        a processed ``storage_uri`` must live in the assets bucket."""
        catalog = self.write_catalog()
        kind, _ = parse_storage_uri(raw_storage_uri, self.profile)
        if kind != "raw":
            raise ValueError(
                f"raw_storage_uri {raw_storage_uri!r} must point into the raw bucket "
                "(recordings/<rec_id>/<worker>/)"
            )
        status = IngestionStatus(ingestion_status)
        if storage_uri is not None and status is IngestionStatus.PROCESSED:
            kind, _ = parse_storage_uri(storage_uri, self.profile)
            if kind != "assets":
                raise ValueError(
                    f"storage_uri {storage_uri!r} of a processed modality must point into the "
                    "assets bucket (processed/<recording_hash>/<modality>/)"
                )
        row = ModalityRow(
            recording_hash=recording_hash,
            modality=modality,
            worker_id=worker_id,
            ingestion_status=status,
            raw_storage_uri=raw_storage_uri,
            storage_uri=storage_uri if storage_uri is not None else raw_storage_uri,
            format=None if format is None else StorageFormat(format),
            sampling_rate=sampling_rate,
            domain_intervals=domain_intervals,
            channel_spec=None if channel_spec is None else dict(channel_spec),
            file_count=file_count,
            byte_count=byte_count,
            metadata=dict(metadata or {}),
        )
        return catalog.register_modality(row, on_conflict=on_conflict)

    def register_event(
        self,
        *,
        event_id: str,
        recording_hash: str,
        event_time: float,
        event_type: str,
        prompt: str | None = None,
        response: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> EventRow:
        catalog = self.write_catalog()
        row = EventRow(
            event_id=event_id,
            recording_hash=recording_hash,
            event_time=event_time,
            event_type=event_type,
            prompt=prompt,
            response=response,
            metadata=dict(metadata or {}),
        )
        return catalog.register_event(row)

    # -- bytes: download to disk, get into memory, stream in chunks ---------

    def download(
        self,
        target: str | QueryResult | Iterable[QueryResult],
        dest: str | os.PathLike[str],
        *,
        layout: Literal["by_recording", "by_modality", "flat"] = "by_recording",
        overwrite: bool = False,
        source: Literal["auto", "raw", "processed"] = "auto",
        progress: Any = None,
        max_concurrent_files: int | None = None,
    ) -> list[Path]:
        """Stream ``target``'s bytes to files under ``dest``; the paths, in plan order.

        Raw rows give their segments, processed rows their asset (basename
        kept); the whole plan is checked before a byte moves. ``progress`` is
        called with each ``DownloadProgress`` on this thread. See
        :mod:`ursa_daemon.transfer.download`.
        """
        from ursa_daemon.transfer.download import DEFAULT_MAX_CONCURRENT_FILES, download

        return download(
            self,
            target,
            dest,
            layout=layout,
            overwrite=overwrite,
            source=source,
            progress=progress,
            max_concurrent_files=max_concurrent_files or DEFAULT_MAX_CONCURRENT_FILES,
        )

    def get(
        self,
        target: str | QueryResult | Iterable[QueryResult],
        *,
        source: Literal["auto", "raw", "processed"] = "auto",
    ) -> Any:
        """``target``'s modalities in memory: a ``RecordingData`` (a list for several).

        Raw modalities hold their segments sorted by key; processed assets are
        opened with their format's library. See :mod:`ursa_daemon.transfer.reader`.
        """
        from ursa_daemon.transfer.reader import get

        return get(self, target, source=source)

    def stream(
        self,
        target: str | QueryResult | Iterable[QueryResult],
        *,
        source: Literal["auto", "raw", "processed"] = "auto",
        chunk_size: int = 1 << 20,
    ) -> Any:
        """An iterator of ``Chunk`` s over every object of ``target``, never a whole object."""
        from ursa_daemon.transfer.reader import stream

        return stream(self, target, source=source, chunk_size=chunk_size)
