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
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ursa_daemon.api import ACTIVE_POINTER_KEY, DEFAULT_CATALOG_PREFIX, QueryResult
from ursa_daemon.api import DataInterface as _CoreInterface
from ursa_daemon.api import QuerySpec as _CoreQuerySpec
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
from ursa_daemon.config import Config, Role, find_config, load_config
from ursa_daemon.errors import ConfigError, NodesPending, WritesNotEnabled
from ursa_daemon.session import MANIFEST_NAME, NODE_MANIFEST_DIR, split_worker
from ursa_daemon.transfer.backfill import register_from_store
from ursa_daemon.transfer.download import DownloadProgress, Layout, Source
from ursa_daemon.transfer.ingest import IngestResult, UploadProgress
from ursa_daemon.transfer.ingest import ingest as _ingest
from ursa_daemon.transfer.reader import Chunk

__all__ = [
    "PROCESSED_FILTERS",
    "DataInterface",
    "QueryResultList",
    "QuerySpec",
    "Status",
    "UnknownProfileError",
]

Status = Literal["ingested", "raw", "all"]
_STATUS_ROWS: dict[str, frozenset[IngestionStatus] | None] = {
    "ingested": frozenset({IngestionStatus.PROCESSED}),
    "raw": frozenset({IngestionStatus.RAW}),
    "all": None,
}
#: Filters that need the processed store (the seeds' ``_PROCESSED_KWARGS``).
PROCESSED_FILTERS = ("time_range", "pipeline_version", "time_filters", "metadata_filters", "derived")
_FILTERS = ("participants", "modalities", "recording_hash", "rec_id", "metadata", *PROCESSED_FILTERS)


class UnknownProfileError(ConfigError, ValueError):
    """``profile`` names no entry of the config's ``profiles:``."""


class QuerySpec(_CoreQuerySpec):
    """The seeds' query spec: ``ursa_daemon``'s filters plus the processed-store ones."""

    time_range: tuple[int, int] | None = None
    pipeline_version: str | None = None
    time_filters: list[Any] = Field(default_factory=list)
    metadata_filters: list[Any] = Field(default_factory=list)
    derived: list[Any] = Field(default_factory=list)

    def processed_filters(self) -> list[str]:
        """Names of the processed-store filters that are set."""
        return [k for k in PROCESSED_FILTERS if getattr(self, k)]

    def has_processed_kwarg(self) -> bool:
        return bool(self.processed_filters())


class QueryResultList(list[QueryResult]):
    """What :meth:`DataInterface.query` returns: a list of :class:`QueryResult`."""


def _with_legacy_id(row: RecordingRow) -> RecordingRow:
    if LEGACY_ID_KEY in row.metadata or row.rec_id == row.recording_hash:
        return row
    return row.model_copy(update={"metadata": {**row.metadata, LEGACY_ID_KEY: row.rec_id}})


def _result_with_legacy_id(qr: QueryResult) -> QueryResult:
    if LEGACY_ID_KEY in qr.metadata or qr.rec_id == qr.recording_hash:
        return qr
    return qr.model_copy(update={"metadata": {**qr.metadata, LEGACY_ID_KEY: qr.rec_id}})


def _ingest_result(res: IngestResult) -> IngestResult:
    if res.recording is None:
        return res
    return dataclasses.replace(res, recording=_with_legacy_id(res.recording))


# -- where profile="local", path=... points --------------------------------------------


def _is_store_root(d: Path) -> bool:
    return (d / "assets" / ACTIVE_POINTER_KEY).is_file() or ((d / "raw").is_dir() and (d / "assets").is_dir())


def _is_lance_catalog(d: Path) -> bool:
    if d.suffix == ".lance":
        return True
    try:
        return d.is_dir() and any(c.suffix == ".lance" and c.is_dir() for c in d.iterdir())
    except OSError:
        return False


def _active_catalog(root: Path) -> Path:
    pointer = root / "assets" / ACTIVE_POINTER_KEY
    prefix = DEFAULT_CATALOG_PREFIX
    if pointer.is_file():
        try:
            found = json.loads(pointer.read_text(encoding="utf-8"))["catalog_prefix"]
        except (OSError, ValueError, KeyError, TypeError):
            found = None
        if isinstance(found, str):
            prefix = found
    return root / "assets" / prefix


def local_store_root(path: str | os.PathLike[str]) -> Path:
    """The local store root that ``DataInterface(profile="local", path=path)`` opens.

    ``path`` is a store root, or the active catalog directory of one
    (``<root>/assets/ursa/catalog/<name>``), or a directory in no store and no
    catalog (a new store is started there). Anything inside an existing store or
    LanceDB catalog, or a directory right above a store, is a :class:`ValueError`
    naming what to pass instead.
    """
    p = Path(path).expanduser().resolve()
    if _is_store_root(p):
        return p
    enclosing = next((a for a in p.parents if _is_store_root(a)), None)
    if enclosing is not None:
        active = _active_catalog(enclosing)
        if p == active:
            return enclosing
        raise ValueError(
            f"path={str(path)!r} is inside the local store {enclosing}, whose catalog is {active}; "
            f"pass path={str(active)!r} (or the store root {str(enclosing)!r}): a new catalog is never "
            "created inside another one"
        )
    try:
        holds = next((c for c in p.iterdir() if c.is_dir() and _is_store_root(c)), None) if p.is_dir() else None
    except OSError:
        holds = None
    if holds is not None:
        raise ValueError(
            f"path={str(path)!r} holds the local store {holds}; pass path={str(holds)!r} (or its catalog "
            f"{str(_active_catalog(holds))!r}) instead of starting another store beside it"
        )
    inside = next((a for a in (p, *p.parents) if _is_lance_catalog(a)), None)
    if inside is not None:
        raise ValueError(
            f"path={str(path)!r} is (inside) the LanceDB catalog {inside}, which is not part of a local "
            "store (<root>/assets/ursa/catalog/<name> beside <root>/raw); pass a local store's root or "
            "its catalog directory"
        )
    return p


def _core_interface(
    profile: str, path: str | os.PathLike[str] | None, config_path: str | os.PathLike[str] | None
) -> _CoreInterface:
    if path is not None:
        if profile != "local":
            raise ValueError(
                f"profile={profile!r} resolves its catalog from the config's profiles:; "
                "path= is only valid with profile='local'"
            )
        if config_path is not None:
            raise ValueError("give path= (a local catalog) or config_path=, not both")
        return _CoreInterface(profile="local", path=local_store_root(path))
    try:
        source = find_config(config_path)
    except ConfigError as exc:
        if profile == "local":
            raise ValueError(
                "profile='local' requires path= (catalog root on local disk) when no config file is found; "
                f"use DataInterface(profile='local', path=...) ({exc})"
            ) from exc
        raise
    config = load_config(source)
    if profile not in config.profiles:
        raise UnknownProfileError(
            f"profile {profile!r} is not in profiles: of {config.source} (have {sorted(config.profiles)}); "
            "add it there or pass config_path= to another config",
            key="profile",
            path=str(config.source),
        )
    return _CoreInterface(profile=profile, config=config)


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
        self._core = _core_interface(profile, path, config_path)

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
        src = Path(source_dir)
        manifest = Path(manifest_path)
        if participant is not None and not participant.strip():
            participant = None  # a blank participant.txt read by the caller: no participant
        if not src.is_dir():
            raise FileNotFoundError(f"source_dir {str(src)!r} is not a directory")
        if not manifest.is_file():
            raise FileNotFoundError(
                f"{manifest}: no manifest; reconstruct it first "
                f"(`ursa-daemon reconstruct-manifest {src}`), then ingest"
            )
        m, s = manifest.resolve(), src.resolve()
        if m != s / MANIFEST_NAME and m.parent != s / NODE_MANIFEST_DIR:
            raise ValueError(
                f"manifest_path {str(manifest)!r} must be {s / MANIFEST_NAME} (or a node manifest under "
                f"{s / NODE_MANIFEST_DIR}): the manifest describes the session in source_dir"
            )
        if not self._core.writes_enabled:
            raise WritesNotEnabled(
                "ingest() uploads raw bytes and writes the catalog: call "
                "enable_writes(roles=('assets_rw', 'raw_rw')) first"
            )
        try:
            self._core.store(Role.RAW_RW)
        except WritesNotEnabled:
            raise WritesNotEnabled(
                "ingest() uploads raw bytes: call enable_writes(roles=('assets_rw', 'raw_rw')) first"
            ) from None
        try:
            res = _ingest(
                self._core,
                s,
                participant=participant,
                is_active=is_active,
                progress=progress,
                overwrite=overwrite,
                max_concurrent_files=max_concurrent_files,
            )
        except NodesPending as exc:  # one half of a dual-node session: register what is there
            done = register_from_store(
                self._core, exc.rec_id, participant=participant, allow_partial=True, overwrite=overwrite
            )
            moved: IngestResult | None = exc.result
            res = dataclasses.replace(
                moved if moved is not None else done, paused=False, recording=done.recording, pending=None
            )
        return _ingest_result(res)

    def ingest_from_r2(self, rec_id: str, *, participant: str | None = None) -> IngestResult:
        """Register a session whose bytes are already in the store (runbook Path B).

        Reads ``recordings/<rec_id>/manifest.json`` (or merges the node manifests),
        checks every listed object's size and sha256, and registers; nothing is
        uploaded. ``participant`` defaults to the stored ``participant.txt``.
        """
        if participant is not None and not participant.strip():
            participant = None
        return _ingest_result(register_from_store(self._core, rec_id, participant=participant))

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
        status = filters.pop("status", "ingested")
        limit = filters.pop("limit", None)
        if status not in _STATUS_ROWS:
            raise ValueError(f"status must be one of {sorted(_STATUS_ROWS)}; got {status!r}")
        unknown = sorted(k for k in filters if k not in _FILTERS)
        if unknown:
            raise TypeError(f"DataInterface.query() got unexpected keyword argument(s) {unknown}; filters: {_FILTERS}")
        if spec is not None:
            given = [k for k in _FILTERS if filters.get(k) is not None]
            if given:
                raise TypeError(
                    f"DataInterface.query(spec=..., {given[0]}=...): pass either a QuerySpec or individual "
                    f"filter kwargs, not both. Offending kwargs: {given!r}."
                )
        else:
            spec = QuerySpec(**filters)
        if limit is None:
            limit = spec.limit
        elif isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValueError(f"limit must be a positive integer; got {limit!r}")
        meta = dict(spec.metadata) if spec.metadata is not None else None
        rec_id = spec.rec_id
        if meta is not None and LEGACY_ID_KEY in meta:  # rows registered before it was written lack it
            legacy = meta.pop(LEGACY_ID_KEY)
            if rec_id is not None and rec_id != legacy:
                return QueryResultList()
            rec_id = legacy
        wanted = _STATUS_ROWS[status]
        found = self._core.query(
            _CoreQuerySpec(
                participants=spec.participants,
                modalities=spec.modalities,
                recording_hash=spec.recording_hash,
                rec_id=rec_id,
                metadata=meta or None,
                limit=limit if wanted is None else None,
            )
        )
        results = QueryResultList()
        for qr in found:
            mods = {k: m for k, m in qr.modalities.items() if wanted is None or m.ingestion_status in wanted}
            if not mods:
                continue
            results.append(_result_with_legacy_id(qr.model_copy(update={"modalities": mods})))
            if limit is not None and len(results) >= limit:
                break
        processed = spec.processed_filters()
        if processed and results:
            _processed_gate(processed[0], results)
        return results

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
        return _with_legacy_id(row)

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
        return [_with_legacy_id(r) for r in self.catalog.list_recordings(**kwargs)]

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
        return None if row is None else _with_legacy_id(row)

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


def _processed_gate(kwarg: str, results: list[QueryResult]) -> None:
    """The seeds' error for a processed-store filter: it needs processed rows, and even
    over those this catalog has no engine for it yet."""
    for qr in results:
        for m in qr.modalities.values():
            if m.ingestion_status == IngestionStatus.RAW:
                raise NotImplementedError(
                    f"DataInterface.query({kwarg}=...) requires processed modalities; modality "
                    f"{m.worker_subdir!r} on recording {qr.recording_hash!r} has ingestion_status='raw'."
                )
    raise NotImplementedError(
        f"DataInterface.query({kwarg}=...) filters inside processed assets, which this catalog "
        "cannot do yet; query without it and filter the data from get()"
    )
