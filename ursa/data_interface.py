"""``ursa.DataInterface``: the seeds' class surface over :class:`ursa_daemon.api.DataInterface`.

Every verb forwards to the one implementation in :mod:`ursa_daemon`; this module
only maps the seeds' names, arguments and defaults onto it:

* ``DataInterface(profile="r2", *, path=None, config_path=None)``: ``profile``
  names an entry of the config's ``profiles:`` (the config found the usual way,
  or ``config_path``). ``profile="local", path=P``: ``P`` is the catalog on
  local disk, either a local store's root (``P/raw``, ``P/assets``) or its
  catalog directory (``<root>/assets/ursa/catalog/<name>``); a new or empty
  directory starts a new local store there. A path inside another store or
  catalog is refused, never turned into a second, empty catalog.
* ``query(spec=None, **filters)`` keeps the modality rows of ``status``
  (``"ingested"``: processed, the default; ``"raw"``; ``"all"``); the
  processed-store filters (``time_range``, ``pipeline_version``,
  ``time_filters``, ``metadata_filters``, ``derived``) raise
  :class:`NotImplementedError`, as in the seeds.
* ``ingest(manifest_path, *, source_dir, ...)`` / ``ingest_from_r2(rec_id, ...)``
  are :func:`ursa_daemon.transfer.ingest.ingest` (Path A) and
  :func:`ursa_daemon.transfer.backfill.register_from_store` (Path B).
* Recording rows carry the session id in ``metadata["manifest_recording_id"]``
  (filled in from ``rec_id`` for rows registered before ingest wrote it).

The class stays here (the seeds name it ``ursa.data_interface.DataInterface``); the
mapping behind its verbs lives beside it: ``_local`` (profile and ``path=``), ``_query``
(the query spec, ``status``, ``limit``, the legacy id) and ``_ingest`` (Paths A and B).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from ursa._ingest import checked_source_dir, ingest_session, register_stored
from ursa._local import UnknownProfileError, core_interface, local_store_root
from ursa._query import PROCESSED_FILTERS, QueryResultList, QuerySpec, Status, with_legacy_id
from ursa._query import query as _query
from ursa_daemon.api import DataInterface as _CoreInterface
from ursa_daemon.api import QueryResult
from ursa_daemon.catalog import (
    LEGACY_ID_KEY,
    BenchmarkResultRow,
    BenchmarkSuiteRow,
    Catalog,
    CheckpointRow,
    EmbeddingRow,
    EventRow,
    IngestionStatus,
    ModalityConflict,
    ModalityRow,
    ParticipantRow,
    RecordingConflict,
    RecordingRow,
    StorageFormat,
    VirgoAssetRow,
)
from ursa_daemon.config import Config
from ursa_daemon.session import split_worker
from ursa_daemon.transfer.download import DownloadProgress, Layout, Source
from ursa_daemon.transfer.ingest import IngestResult, UploadProgress
from ursa_daemon.transfer.reader import Chunk

__all__ = [
    "PROCESSED_FILTERS",
    "DataInterface",
    "QueryResultList",
    "QuerySpec",
    "Status",
    "UnknownProfileError",
    "local_store_root",
]


class DataInterface:
    """The seeds' entry point: read, register and ingest through one object.

    Reads use the ``assets_ro`` role; ``register_*`` raises
    :class:`~ursa.catalog.WritesNotEnabled` until :meth:`enable_writes`;
    :meth:`ingest` also needs ``raw_rw`` (``enable_writes(roles=("assets_rw", "raw_rw"))``).
    The :attr:`core` is the :class:`ursa_daemon.api.DataInterface` doing the work.
    """

    def __init__(
        self,
        profile: str = "r2",
        *,
        path: str | os.PathLike[str] | None = None,
        config_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self._profile = profile
        self._core = core_interface(profile, path, config_path)

    def __repr__(self) -> str:
        return f"ursa.DataInterface(profile={self._profile!r}, writes_enabled={self.writes_enabled})"

    # -- handles -----------------------------------------------------------------------

    @property
    def core(self) -> _CoreInterface:
        """The :class:`ursa_daemon.api.DataInterface` every verb forwards to."""
        return self._core

    @property
    def profile(self) -> str:
        return self._profile

    @property
    def config(self) -> Config:
        return self._core.config

    @property
    def catalog(self) -> Catalog:
        """The read-only catalog handle (``assets_ro``)."""
        return self._core.catalog

    @property
    def writes_enabled(self) -> bool:
        return self._core.writes_enabled

    def enable_writes(self, roles: Iterable[str] = ("assets_rw",)) -> None:
        """Open the write handles of ``roles`` (``assets_rw``, ``raw_rw``). Idempotent."""
        self._core.enable_writes(roles=roles)

    # -- ingest (Paths A and B) ----------------------------------------------------------

    def ingest(
        self,
        manifest_path: str | os.PathLike[str],
        *,
        source_dir: str | os.PathLike[str],
        participant: str | None = None,
        progress: Callable[[UploadProgress], None] | None = None,
        overwrite: bool = False,
        is_active: Callable[[], bool] | None = None,
        max_concurrent_files: int | None = None,
    ) -> IngestResult:
        """Upload the session in ``source_dir`` and register its rows (runbook Path A).

        ``manifest_path`` is the session's ``manifest.json`` (a rig manifest is
        augmented here) or one of its ``_node_manifests/<host>.json``. Files
        already in the store with the same size and sha256 are skipped (``overwrite``
        uploads every file again and replaces differing rows). ``is_active``
        returning true pauses: ``IngestResult(paused=True, recording=None)``,
        nothing registered. One half of a dual-node session is registered as it
        is; the other half adds its modality rows when it is ingested.
        ``max_concurrent_files`` defaults to the config's ``upload.max_concurrent_files``.
        """
        if participant is not None and not participant.strip():
            participant = None  # a blank participant.txt read by the caller: no participant
        s = checked_source_dir(self._core, manifest_path, source_dir)
        return ingest_session(
            self._core,
            s,
            participant=participant,
            progress=progress,
            overwrite=overwrite,
            is_active=is_active,
            max_concurrent_files=max_concurrent_files,
        )

    def ingest_from_r2(self, rec_id: str, *, participant: str | None = None) -> IngestResult:
        """Register a session whose bytes are already in the store (runbook Path B).

        Reads ``recordings/<rec_id>/manifest.json`` (or merges the node manifests),
        checks every listed object's size and sha256, and registers; nothing is
        uploaded. ``participant`` defaults to the stored ``participant.txt``.
        """
        return register_stored(self._core, rec_id, participant)

    # -- read verbs ----------------------------------------------------------------------

    def query(self, spec: QuerySpec | None = None, **filters: Any) -> QueryResultList:
        """Recordings matching every filter, each with its modality rows of ``status``.

        Filters: ``participants``, ``modalities``, ``recording_hash``, ``rec_id``,
        ``metadata``, ``limit``, ``status`` (``"ingested"`` by default: processed
        rows; ``"raw"``; ``"all"``, which also shows ``ingesting``/``failed``
        rows). A recording without a row of that status is not returned. Pass a
        :class:`QuerySpec` or the filter keywords, not both (``limit`` and
        ``status`` go with either).
        """
        return _query(self._core, spec, filters)

    def get(self, target: QueryResult | Iterable[QueryResult], *, concat: bool = False) -> Any:
        """``target``'s modalities in memory (see :func:`ursa_daemon.transfer.reader.get`).

        One ``RecordingData`` for a :class:`QueryResult`, a list for an iterable.
        ``concat=True`` over several recordings needs aligned time domains, which
        only a processed-path reader establishes: after checking that the
        recordings have the same modalities (else :class:`ValueError`) it raises
        :class:`NotImplementedError`.
        """
        if concat and not isinstance(target, QueryResult | str):
            target = list(target)
            keys = {frozenset(r.modalities) for r in target}
            if len(keys) > 1:
                raise ValueError(
                    f"concat requires aligned modalities across recordings; got {[sorted(k) for k in keys]!r}"
                )
            raise NotImplementedError(
                "concat over recordings needs aligned time domains, which only the processed path "
                "establishes; get() them without concat"
            )
        return self._core.get(target)

    def materialize(self, target: QueryResult | Iterable[QueryResult], *, concat: bool = False) -> Any:
        """The seeds' in-memory delivery verb (next to ``stream`` and ``download``): :meth:`get`."""
        return self.get(target, concat=concat)

    def download(
        self,
        target: QueryResult | Iterable[QueryResult],
        dest: str | os.PathLike[str],
        *,
        layout: Layout = "by_recording",
        overwrite: bool = False,
        source: Source = "auto",
        progress: Callable[[DownloadProgress], None] | None = None,
    ) -> list[Path]:
        """Stream ``target``'s bytes to files under ``dest`` (see :func:`ursa_daemon.transfer.download.download`)."""
        return self._core.download(target, dest, layout=layout, overwrite=overwrite, source=source, progress=progress)

    def stream(
        self,
        target: QueryResult | Iterable[QueryResult],
        *,
        source: Source = "auto",
        chunk_size: int = 1 << 20,
    ) -> Iterator[Chunk]:
        """Every object of ``target`` as ``Chunk`` s, one object after another, never a whole
        object in memory (the tutorial's ``stream()``; see :func:`ursa_daemon.transfer.reader.stream`)."""
        chunks: Iterator[Chunk] = self._core.stream(target, source=source, chunk_size=chunk_size)
        return chunks

    # -- register verbs (assets_rw) -------------------------------------------------------

    def register_participant(
        self,
        *,
        participant_id: str,
        enrolled_at: int | datetime,
        metadata: Mapping[str, Any] | None = None,
        display_name: str | None = None,
        on_conflict: Literal["error", "overwrite"] = "error",
    ) -> ParticipantRow:
        return self._core.register_participant(
            participant_id=participant_id,
            enrolled_at=enrolled_at,
            display_name=display_name,
            metadata=metadata,
            on_conflict=on_conflict,
        )

    def register_recording(
        self,
        *,
        recording_hash: str,
        participant_ids: list[str],
        start_time: int | datetime,
        duration: timedelta,
        device_info: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        on_conflict: RecordingConflict = "error",
        rec_id: str | None = None,
    ) -> RecordingRow:
        """Register a recording. The session id (the ``rec_id`` column) is ``rec_id``, else
        ``metadata["manifest_recording_id"]``, else the stored row's, else the recording_hash
        (a recording with no legacy id)."""
        meta = dict(metadata or {})
        if rec_id is None:
            legacy = meta.get(LEGACY_ID_KEY)
            if isinstance(legacy, str):
                rec_id = legacy
            else:
                existing = self._core.get_recording(recording_hash)
                rec_id = existing.rec_id if existing is not None else recording_hash
        if rec_id != recording_hash:
            meta.setdefault(LEGACY_ID_KEY, rec_id)
        row = self._core.register_recording(
            recording_hash=recording_hash,
            rec_id=rec_id,
            participant_ids=participant_ids,
            start_time=start_time,
            duration=duration,
            device_info=device_info,
            metadata=meta,
            on_conflict=on_conflict,
        )
        return with_legacy_id(row)

    def register_modality(
        self,
        *,
        recording_hash: str,
        modality: str,
        raw_storage_uri: str,
        storage_uri: str | None = None,
        ingestion_status: IngestionStatus | str = IngestionStatus.RAW,
        format: StorageFormat | str | None = None,
        domain_intervals: list[tuple[float, float]] | None = None,
        sampling_rate: float | None = None,
        channel_spec: Mapping[str, Any] | None = None,
        metadata: Mapping[str, Any] | None = None,
        worker_id: str | None = None,
        on_conflict: ModalityConflict = "error",
    ) -> ModalityRow:
        """Register one modality row. ``modality`` is the family (``eeg``) or a worker
        subdirectory name (``eeg_4559``: family ``eeg``, worker ``4559``)."""
        if worker_id is None:
            modality, worker_id = split_worker(modality)
        return self._core.register_modality(
            recording_hash=recording_hash,
            modality=modality,
            worker_id=worker_id,
            raw_storage_uri=raw_storage_uri,
            storage_uri=storage_uri,
            ingestion_status=ingestion_status,
            format=format,
            sampling_rate=sampling_rate,
            domain_intervals=domain_intervals,
            channel_spec=channel_spec,
            metadata=metadata,
            on_conflict=on_conflict,
        )

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
        return self._core.register_event(
            event_id=event_id,
            recording_hash=recording_hash,
            event_time=event_time,
            event_type=event_type,
            prompt=prompt,
            response=response,
            metadata=metadata,
        )

    # -- per-table reads (assets_ro) ---------------------------------------------------

    def list_participants(self, **kwargs: Any) -> list[ParticipantRow]:
        return self.catalog.list_participants(**kwargs)

    def list_recordings(self, **kwargs: Any) -> list[RecordingRow]:
        return [with_legacy_id(r) for r in self.catalog.list_recordings(**kwargs)]

    def list_modalities(self, **kwargs: Any) -> list[ModalityRow]:
        return self.catalog.list_modalities(**kwargs)

    def list_events(self, **kwargs: Any) -> list[EventRow]:
        return self.catalog.list_events(**kwargs)

    def list_embeddings(self, **kwargs: Any) -> list[EmbeddingRow]:
        return self.catalog.list_embeddings(**kwargs)

    def list_virgo_assets(self, **kwargs: Any) -> list[VirgoAssetRow]:
        return self.catalog.list_virgo_assets(**kwargs)

    def list_checkpoints(self, **kwargs: Any) -> list[CheckpointRow]:
        return self.catalog.list_checkpoints(**kwargs)

    def list_benchmark_suites(self, **kwargs: Any) -> list[BenchmarkSuiteRow]:
        return self.catalog.list_benchmark_suites(**kwargs)

    def list_benchmark_results(self, **kwargs: Any) -> list[BenchmarkResultRow]:
        return self.catalog.list_benchmark_results(**kwargs)

    def get_participant(self, participant_id: str) -> ParticipantRow | None:
        return self.catalog.get_participant(participant_id)

    def get_recording(self, recording_hash: str) -> RecordingRow | None:
        row = self.catalog.get_recording(recording_hash)
        return None if row is None else with_legacy_id(row)

    def get_modality(self, recording_hash: str, modality: str) -> ModalityRow | None:
        """The modality row named like a ``QueryResult.modalities`` key: the family
        (``eeg``) when the recording has one worker of it, else the worker
        subdirectory (``eeg_a``). A family with several workers is a ``ValueError``
        listing them."""
        family, worker_id = split_worker(modality)
        if worker_id:
            return self.catalog.get_modality(recording_hash, family, worker_id)
        rows = self.catalog.list_modalities(where={"recording_hash": recording_hash, "modality": family})
        if len(rows) <= 1:
            return rows[0] if rows else None
        bare = [m for m in rows if m.worker_id == ""]
        if bare:
            return bare[0]
        names = sorted(m.worker_subdir for m in rows)
        raise ValueError(
            f"recording {recording_hash} has {len(rows)} workers of {family!r} ({', '.join(names)}); "
            f"name one, e.g. get_modality({recording_hash[:12]}..., {names[0]!r})"
        )

    def get_event(self, event_id: str) -> EventRow | None:
        return self.catalog.get_event(event_id)

    def get_embedding(self, embedding_id: str) -> EmbeddingRow | None:
        return self.catalog.get_embedding(embedding_id)

    def get_virgo_asset(self, asset_id: str) -> VirgoAssetRow | None:
        return self.catalog.get_virgo_asset(asset_id)

    def get_checkpoint(self, checkpoint_id: str) -> CheckpointRow | None:
        return self.catalog.get_checkpoint(checkpoint_id)

    def get_benchmark_suite(self, suite_name: str, suite_version: int) -> BenchmarkSuiteRow | None:
        return self.catalog.get_benchmark_suite(suite_name, suite_version)

    def get_benchmark_result(self, result_id: str) -> BenchmarkResultRow | None:
        return self.catalog.get_benchmark_result(result_id)
