"""``DataInterface``: the scientists' Python API (query, list/get, register).

A fresh interface reads through the ``assets_ro`` role only. ``register_*``
raises :class:`WritesNotEnabled` until :meth:`DataInterface.enable_writes`
opens a second catalog handle on ``assets_rw``. On the local profile there is
no credential boundary, so the flag is the only difference.

The catalog's location comes from the pointer ``<assets>/ursa/ACTIVE.json``
(``{"catalog_prefix": "ursa/catalog/<name>"}``), written on first open of an
empty store.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ursa_daemon.catalog import (
    Catalog,
    EventRow,
    IngestionStatus,
    ModalityRow,
    ParticipantRow,
    RecordingRow,
    StorageFormat,
)
from ursa_daemon.config import (
    Config,
    LocalProfile,
    Role,
    S3Profile,
    config_from_dict,
    load_config,
    resolve_credentials,
)
from ursa_daemon.errors import (
    CatalogError,
    CatalogPermissionError,
    ObjectExists,
    ObjectNotFound,
    StorePermissionError,
    WritesNotEnabled,
)
from ursa_daemon.manifest import participant_id
from ursa_daemon.store import Store, get_store, parse_storage_uri
from ursa_daemon.store.s3 import lance_storage_options

__all__ = [
    "ACTIVE_POINTER_KEY",
    "DEFAULT_CATALOG_PREFIX",
    "DataInterface",
    "QueryResult",
    "QuerySpec",
    "modality_key",
    "open_catalog",
]

#: Where the catalog pointer lives in the assets bucket.
ACTIVE_POINTER_KEY = "ursa/ACTIVE.json"
DEFAULT_CATALOG_PREFIX = "ursa/catalog/main"
_CATALOG_PREFIX_RE = re.compile(r"^ursa/catalog/[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

RecordingConflict = Literal["error", "overwrite", "extend", "merge_participants"]
ModalityConflict = Literal["error", "overwrite"]


class QuerySpec(BaseModel):
    """What ``DataInterface.query`` filters on. Every filter set must match."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    participants: list[str] | None = None
    modalities: list[str] | None = None
    recording_hash: str | None = None
    rec_id: str | None = None
    metadata: dict[str, Any] | None = None
    limit: int | None = Field(default=None, ge=1)


class QueryResult(BaseModel):
    """One matching recording with its modality rows.

    ``modalities`` is keyed by the family (``eeg``) when the recording has one
    worker of that family, else by the worker subdirectory (``eeg_a``).
    """

    model_config = ConfigDict(frozen=True)

    recording_hash: str
    rec_id: str
    participant_ids: list[str]
    start_time: int
    duration_ns: int
    device_info: dict[str, Any]
    metadata: dict[str, Any]
    modalities: dict[str, ModalityRow]

    @property
    def duration(self) -> timedelta:
        return timedelta(microseconds=self.duration_ns / 1000)

    def to_json(self) -> dict[str, Any]:
        """The ``query --json`` shape of SPEC section 5."""
        return {
            "recording_hash": self.recording_hash,
            "rec_id": self.rec_id,
            "participant_ids": list(self.participant_ids),
            "start_time": self.start_time,
            "duration_ns": self.duration_ns,
            "device_info": self.device_info,
            "metadata": self.metadata,
            "modalities": {
                key: {
                    "modality": m.modality,
                    "worker_id": m.worker_id,
                    "ingestion_status": str(m.ingestion_status),
                    "raw_storage_uri": m.raw_storage_uri,
                    "storage_uri": m.storage_uri,
                    "format": None if m.format is None else str(m.format),
                    "file_count": m.file_count,
                    "byte_count": m.byte_count,
                }
                for key, m in self.modalities.items()
            },
        }


def modality_key(modality: str, worker_id: str) -> str:
    """The worker subdirectory name a modality row came from."""
    return f"{modality}_{worker_id}" if worker_id else modality


def _keyed_modalities(rows: Iterable[ModalityRow]) -> dict[str, ModalityRow]:
    rows = sorted(rows, key=lambda m: (m.modality, m.worker_id))
    families: dict[str, int] = {}
    for m in rows:
        families[m.modality] = families.get(m.modality, 0) + 1
    return {
        (m.modality if families[m.modality] == 1 else modality_key(m.modality, m.worker_id)): m
        for m in rows
    }


def _query_result(rec: RecordingRow, mods: Iterable[ModalityRow]) -> QueryResult:
    return QueryResult(
        recording_hash=rec.recording_hash,
        rec_id=rec.rec_id,
        participant_ids=list(rec.participant_ids),
        start_time=rec.start_time,
        duration_ns=rec.duration_ns,
        device_info=dict(rec.device_info),
        metadata=dict(rec.metadata),
        modalities=_keyed_modalities(mods),
    )


def _participant_filter(participants: list[str] | None) -> list[str] | None:
    """Each value as given (an exact ``participant_id``) and as a typed name normalized
    the way ingest makes ids (``"Aria Lin"`` -> ``aria_lin``)."""
    if participants is None:
        return None
    out: list[str] = []
    for p in participants:
        for v in (p, participant_id(p)):
            if v and v not in out:
                out.append(v)
    return out


def _epoch_ns(value: int | datetime) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError(f"datetime {value!r} has no timezone; give an aware datetime or epoch ns")
        return int(value.timestamp() * 1_000_000_000)
    return int(value)


def open_catalog(profile: LocalProfile | S3Profile, role: Role | str) -> Catalog:
    """Open the catalog that ``ACTIVE.json`` points at, through ``role``'s credential.

    An empty store gets the pointer to ``ursa/catalog/main`` on first open.
    """
    role = Role(role)
    store = get_store(profile, role)
    try:
        prefix = _read_or_create_pointer(store)
    except StorePermissionError:
        raise CatalogPermissionError(f"open the catalog pointer {ACTIVE_POINTER_KEY}", role.value) from None
    if isinstance(profile, LocalProfile):  # one handle serves reads and writes
        return Catalog.open(str(Path(profile.root) / "assets" / prefix))
    creds = resolve_credentials(profile, role)
    return Catalog.open(
        f"s3://{profile.assets_bucket}/{prefix}",
        storage_options=lance_storage_options(profile, creds),
        writable=role is Role.ASSETS_RW,
    )


def _read_or_create_pointer(store: Store) -> str:
    try:
        raw = store.get(ACTIVE_POINTER_KEY)
    except ObjectNotFound:
        doc = json.dumps({"catalog_prefix": DEFAULT_CATALOG_PREFIX}).encode()
        try:
            store.put(ACTIVE_POINTER_KEY, doc, content_type="application/json", create_only=True)
        except ObjectExists:  # another process won the race: read theirs
            raw = store.get(ACTIVE_POINTER_KEY)
        else:
            return DEFAULT_CATALOG_PREFIX
    try:
        prefix = json.loads(raw)["catalog_prefix"]
    except (ValueError, KeyError, TypeError):
        raise CatalogError(
            f"{store.uri(ACTIVE_POINTER_KEY)} is not valid: it must be JSON "
            '{"catalog_prefix": "ursa/catalog/<name>"}; fix or delete it'
        ) from None
    if not isinstance(prefix, str) or not _CATALOG_PREFIX_RE.match(prefix):
        raise CatalogError(
            f"{store.uri(ACTIVE_POINTER_KEY)}: catalog_prefix must look like "
            "'ursa/catalog/<name>' (letters, digits, '_', '.', '-'); fix the pointer"
        )
    return prefix


class DataInterface:
    """Query, read and register recordings in the catalog.

    ``DataInterface()`` reads ``config.yaml`` (the same search as the CLI) and
    uses its ``profile``; ``profile=`` picks another entry of ``profiles:``.
    ``DataInterface(profile="local", path=DIR)`` needs no config file: ``DIR``
    is the local store root (``DIR/raw``, ``DIR/assets``).
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
        self._config = config
        self._ro_catalog: Catalog | None = None
        self._rw_catalog: Catalog | None = None
        self._roles: frozenset[Role] = frozenset()

    def __repr__(self) -> str:
        return f"DataInterface(profile={self._config.profile!r}, writes={sorted(self._roles)!r})"

    # -- handles ---------------------------------------------------------

    @property
    def config(self) -> Config:
        return self._config

    @property
    def profile(self) -> LocalProfile | S3Profile:
        return self._config.active_profile

    @property
    def catalog(self) -> Catalog:
        """The read-only catalog handle (``assets_ro``), opened on first use."""
        if self._ro_catalog is None:
            self._ro_catalog = open_catalog(self.profile, Role.ASSETS_RO)
        return self._ro_catalog

    @property
    def writes_enabled(self) -> bool:
        return Role.ASSETS_RW in self._roles

    def enable_writes(self, roles: Iterable[str] = ("assets_rw",)) -> None:
        """Open write handles for ``roles`` (``assets_rw``, ``raw_rw``). Idempotent."""
        wanted = {Role(r) for r in roles}
        bad = [r.value for r in wanted if r not in (Role.ASSETS_RW, Role.RAW_RW)]
        if bad:
            raise ValueError(f"enable_writes takes write roles assets_rw and raw_rw, not {bad}")
        if Role.ASSETS_RW in wanted and self._rw_catalog is None:
            if isinstance(self.profile, LocalProfile):
                self._rw_catalog = self.catalog
            else:
                self._rw_catalog = open_catalog(self.profile, Role.ASSETS_RW)
        if Role.RAW_RW in wanted and isinstance(self.profile, S3Profile):
            resolve_credentials(self.profile, Role.RAW_RW)  # fail now, not mid-upload
        self._roles = self._roles | wanted

    def store(self, role: Role | str) -> Store:
        """The object store of ``role``; write roles need :meth:`enable_writes` first."""
        role = Role(role)
        if role in (Role.ASSETS_RW, Role.RAW_RW) and role not in self._roles:
            raise WritesNotEnabled(
                f"role {role.value!r} is not enabled: call enable_writes(roles=[{role.value!r}])"
            )
        return get_store(self.profile, role)

    def _write_catalog(self) -> Catalog:
        if self._rw_catalog is None:
            raise WritesNotEnabled(
                "DataInterface is read-only: call enable_writes() before register_*; "
                "writes use the assets_rw credential role"
            )
        return self._rw_catalog

    # -- ingest ----------------------------------------------------------

    def ingest(self, rec_dir: str | os.PathLike[str], **kwargs: Any) -> Any:
        """Upload a session and register it (Path A); see :func:`ursa_daemon.ingest.ingest`.

        Needs ``enable_writes(roles=("assets_rw", "raw_rw"))``. Returns an ``IngestResult``.
        """
        from ursa_daemon.ingest import ingest

        return ingest(self, Path(rec_dir), **kwargs)

    def register_from_store(self, rec_id: str, **kwargs: Any) -> Any:
        """Verify bytes already in the store and register them (Path B)."""
        from ursa_daemon.backfill import register_from_store

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
        spec = spec or QuerySpec(**kwargs)
        found = self.catalog.query(
            participants=_participant_filter(spec.participants),
            modalities=spec.modalities,
            recording_hash=spec.recording_hash,
            rec_id=spec.rec_id,
            metadata=spec.metadata,
            limit=spec.limit,
        )
        return [_query_result(rec, mods) for rec, mods in found]

    def resolve(self, target: str | QueryResult | Iterable[QueryResult]) -> list[QueryResult]:
        """A recording_hash, a rec_id, or query results, as a list of results."""
        if isinstance(target, QueryResult):
            return [target]
        if isinstance(target, str):
            by_hash = re.fullmatch(r"[0-9a-f]{64}", target) is not None
            found = self.query(QuerySpec(recording_hash=target) if by_hash else QuerySpec(rec_id=target))
            by = "recording_hash" if by_hash else "rec_id"
            if not found:
                raise LookupError(f"no registered recording with {by} {target!r}")
            return found
        return list(target)

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
        catalog = self._write_catalog()
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
        catalog = self._write_catalog()
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
        catalog = self._write_catalog()
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
        catalog = self._write_catalog()
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
        :mod:`ursa_daemon.download`.
        """
        from ursa_daemon.download import DEFAULT_MAX_CONCURRENT_FILES, download

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
        opened with their format's library. See :mod:`ursa_daemon.reader`.
        """
        from ursa_daemon.reader import get

        return get(self, target, source=source)

    def stream(
        self,
        target: str | QueryResult | Iterable[QueryResult],
        *,
        source: Literal["auto", "raw", "processed"] = "auto",
        chunk_size: int = 1 << 20,
    ) -> Any:
        """An iterator of ``Chunk`` s over every object of ``target``, never a whole object."""
        from ursa_daemon.reader import stream

        return stream(self, target, source=source, chunk_size=chunk_size)
