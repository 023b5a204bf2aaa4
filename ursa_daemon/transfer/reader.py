"""In-memory reads: ``get`` materialises modalities, ``stream`` yields their bytes in chunks.

Both take the same targets and ``source`` as :func:`ursa_daemon.download.download`
and the same plan (every object listed and checked before a byte is read).

* A raw modality becomes a :class:`RawModality`: its segments as
  ``(key, bytes)`` pairs sorted by key.
* A processed modality becomes a :class:`ProcessedModality` whose ``asset``
  is opened with the format's own library: Parquet with pyarrow (a
  ``pyarrow.Table``), Zarr with zarr (a group or array over an in-memory copy),
  Lance with pylance (a ``lance.LanceDataset`` opened in place), MP4 as an
  :class:`Mp4Asset` (the video's bytes and its ``.mp4.lance`` frame index).
  Without the library, :class:`MissingDependencyError` says what to install.
  A processed row without a format gives ``{path: bytes}``.
* ``stream`` yields :class:`Chunk` s, one object after another in plan order,
  never holding more than one chunk of an object.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import MappingProxyType, ModuleType
from typing import TYPE_CHECKING, Any

from ursa_daemon.catalog import ModalityRow, StorageFormat
from ursa_daemon.config import Role, S3Profile, resolve_credentials
from ursa_daemon.errors import UrsaError
from ursa_daemon.store import LocalStore, lance_storage_options
from ursa_daemon.transfer.download import DEFAULT_MAX_CONCURRENT_FILES
from ursa_daemon.transfer.download_plan import (
    ModalityPlan,
    PlannedObject,
    Source,
    StoreFor,
    plan_modalities,
    resolve_targets,
)
from ursa_daemon.transfer.query import QueryResult
from ursa_daemon.transfer.resumable import DEFAULT_CHUNK_SIZE, DEFAULT_RETRY, ResumableReader, RetryPolicy

if TYPE_CHECKING:
    from ursa_daemon.transfer.context import Context

__all__ = [
    "Chunk",
    "MissingDependencyError",
    "Mp4Asset",
    "ProcessedModality",
    "RawModality",
    "RecordingData",
    "get",
    "stream",
]

#: format → (module to import, what to ``pip install``)
_LIBRARIES: dict[StorageFormat, tuple[str, str]] = {
    StorageFormat.PARQUET: ("pyarrow.parquet", "pyarrow"),
    StorageFormat.ZARR: ("zarr", "zarr>=3"),
    StorageFormat.LANCE: ("lance", "pylance"),
    StorageFormat.MP4: ("lance", "pylance"),  # for the .mp4.lance frame index
}


class MissingDependencyError(UrsaError, ImportError):
    """A processed asset's format needs a library that is not installed."""


@dataclass(frozen=True)
class RawModality:
    """A raw modality in memory: ``segments`` are ``(key, bytes)`` sorted by key."""

    row: ModalityRow
    segments: tuple[tuple[str, bytes], ...]

    @property
    def nbytes(self) -> int:
        return sum(len(b) for _, b in self.segments)

    @property
    def metadata(self) -> ModalityRow:
        """The modality row: the seeds' ``RawBytes.metadata``."""
        return self.row


@dataclass(frozen=True)
class Mp4Asset:
    """A processed video: the MP4's bytes and its frame index (``None`` when there is none)."""

    video: bytes
    frame_index: Any | None


@dataclass(frozen=True)
class ProcessedModality:
    """A processed asset opened with its format's library (see the module docstring)."""

    row: ModalityRow
    uri: str
    format: StorageFormat | None
    asset: Any

    @property
    def metadata(self) -> ModalityRow:
        """The modality row, under the name the raw side has in the seeds."""
        return self.row


@dataclass(frozen=True)
class RecordingData:
    """One recording: its query result and each modality, keyed like ``QueryResult.modalities``."""

    recording: QueryResult
    modalities: Mapping[str, RawModality | ProcessedModality]

    @property
    def metadata(self) -> QueryResult:
        """The recording: the seeds' ``Data.metadata`` (its row's fields, ``recording_hash`` ...)."""
        return self.recording


@dataclass(frozen=True)
class Chunk:
    """``data`` is bytes ``offset .. offset+len(data)`` of object ``key`` (``size`` bytes in all)."""

    recording_hash: str
    modality: str
    key: str
    offset: int
    size: int
    data: bytes

    @property
    def last(self) -> bool:
        return self.offset + len(self.data) >= self.size


# -- get ----------------------------------------------------------------------------


class _Fetcher:
    """Whole objects into memory, several at once, each read resumably."""

    def __init__(self, pool: ThreadPoolExecutor, retry: RetryPolicy) -> None:
        self.pool = pool
        self.retry = retry

    def one(self, plan: ModalityPlan, obj: PlannedObject) -> bytes:
        parts = []
        with ResumableReader(plan.store, obj.key, obj.size, retry=self.retry) as src:
            while chunk := src.read():
                parts.append(chunk)
        return b"".join(parts)

    def all(self, plan: ModalityPlan, objects: Sequence[PlannedObject]) -> list[bytes]:
        return list(self.pool.map(lambda o: self.one(plan, o), objects))


def _require(fmt: StorageFormat, plan: ModalityPlan) -> ModuleType:
    module, pip_name = _LIBRARIES[fmt]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingDependencyError(
            f"modality {plan.name!r} of recording {plan.recording_hash} is stored as {fmt.value} "
            f"({plan.uri}); reading it needs the {module.split('.')[0]!r} package, which is not "
            f"installed: pip install '{pip_name}' (or use download() to get the files as they are)"
        ) from None


def _below(plan: ModalityPlan, prefix: str) -> list[PlannedObject]:
    return [o for o in plan.objects if o.key.startswith(prefix)]


def _open_parquet(plan: ModalityPlan, fetch: _Fetcher, data: Context) -> Any:
    pq = _require(StorageFormat.PARQUET, plan)
    import pyarrow as pa  # type: ignore[import-untyped]

    objects = [o for o in plan.objects if o.key.endswith(".parquet")] or list(plan.objects)
    tables = [pq.read_table(pa.BufferReader(body)) for body in fetch.all(plan, objects)]
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


def _open_zarr(plan: ModalityPlan, fetch: _Fetcher, data: Context) -> Any:
    zarr = _require(StorageFormat.ZARR, plan)
    prefix = f"{plan.asset_key}/"
    objects = _below(plan, prefix)
    files = {o.key[len(prefix) :]: body for o, body in zip(objects, fetch.all(plan, objects), strict=True)}
    if int(zarr.__version__.split(".")[0]) < 3:
        return zarr.open(store=files, mode="r")
    buffer = importlib.import_module("zarr.core.buffer").default_buffer_prototype().buffer
    store = zarr.storage.MemoryStore({k: buffer.from_bytes(v) for k, v in files.items()}, read_only=True)
    return zarr.open(store=store, mode="r")


def _lance_dataset(plan: ModalityPlan, key: str, data: Context) -> Any:
    """Lance reads its directory in place: a local path, or ``s3://`` with the profile's options."""
    lance = _require(StorageFormat.LANCE, plan)
    if isinstance(plan.store, LocalStore):
        return lance.dataset(os.path.join(plan.store.directory, key))
    profile = data.profile
    if not isinstance(profile, S3Profile):
        raise UrsaError(f"cannot open {plan.uri} with lance: the store is neither local nor the profile's S3")
    options = lance_storage_options(profile, resolve_credentials(profile, Role.ASSETS_RO))
    return lance.dataset(plan.store.uri(key), storage_options=options)


def _open_lance(plan: ModalityPlan, fetch: _Fetcher, data: Context) -> Any:
    return _lance_dataset(plan, str(plan.asset_key), data)


def _open_mp4(plan: ModalityPlan, fetch: _Fetcher, data: Context) -> Mp4Asset:
    key = str(plan.asset_key)
    video = next((o for o in plan.objects if o.key == key), None)
    if video is None:
        raise UrsaError(f"modality {plan.name!r}: no MP4 object at {plan.uri}")
    index_key = key + ".lance"
    has_index = bool(_below(plan, index_key + "/"))
    return Mp4Asset(
        video=fetch.one(plan, video),
        frame_index=_lance_dataset(plan, index_key, data) if has_index else None,
    )


def _open_bytes(plan: ModalityPlan, fetch: _Fetcher, data: Context) -> dict[str, bytes]:
    return {o.rel: body for o, body in zip(plan.objects, fetch.all(plan, plan.objects), strict=True)}


_Opener = Callable[[ModalityPlan, _Fetcher, "Context"], Any]
_OPENERS: dict[StorageFormat, _Opener] = {
    StorageFormat.PARQUET: _open_parquet,
    StorageFormat.ZARR: _open_zarr,
    StorageFormat.LANCE: _open_lance,
    StorageFormat.MP4: _open_mp4,
}


def _materialise(plan: ModalityPlan, fetch: _Fetcher, data: Context) -> RawModality | ProcessedModality:
    if plan.source == "raw":
        bodies = fetch.all(plan, plan.objects)
        return RawModality(plan.row, tuple((o.key, b) for o, b in zip(plan.objects, bodies, strict=True)))
    fmt = None if plan.row.format is None else StorageFormat(plan.row.format)
    opener: _Opener = _open_bytes if fmt is None else _OPENERS.get(fmt, _open_bytes)
    return ProcessedModality(plan.row, plan.uri, fmt, opener(plan, fetch, data))


def get(
    data: Context,
    target: Any,
    *,
    source: Source = "auto",
    max_concurrency: int = DEFAULT_MAX_CONCURRENT_FILES,
    retry: RetryPolicy = DEFAULT_RETRY,
    store_for: StoreFor | None = None,
) -> RecordingData | list[RecordingData]:
    """``target``'s modalities in memory.

    One :class:`RecordingData` for a QueryResult, a recording_hash or a rec_id
    naming one recording; a list for an iterable of results (or a rec_id that
    names several recordings).
    """
    results = resolve_targets(data, target)
    plans = plan_modalities(data, results, source=source, store_for=store_for, retry=retry)
    by_recording: dict[str, dict[str, RawModality | ProcessedModality]] = {}
    with ThreadPoolExecutor(max_workers=max(1, max_concurrency), thread_name_prefix="ursa-get") as pool:
        fetch = _Fetcher(pool, retry)
        for plan in plans:
            by_recording.setdefault(plan.recording_hash, {})[plan.name] = _materialise(plan, fetch, data)
    out = [RecordingData(qr, MappingProxyType(by_recording.get(qr.recording_hash, {}))) for qr in results]
    single = isinstance(target, str | QueryResult)
    return out[0] if single and len(out) == 1 else out


# -- stream -------------------------------------------------------------------------


def stream(
    data: Context,
    target: Any,
    *,
    source: Source = "auto",
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    retry: RetryPolicy = DEFAULT_RETRY,
    store_for: StoreFor | None = None,
) -> Iterator[Chunk]:
    """Every object of ``target`` as chunks of at most ``chunk_size`` bytes, in plan order.

    The plan (listing and checks) is made on the first ``next()``. A transient
    failure mid-object resumes where it stopped: no byte is yielded twice.
    """
    results = resolve_targets(data, target)
    plans = plan_modalities(data, results, source=source, store_for=store_for, retry=retry)
    for plan in plans:
        for obj in plan.objects:
            yield from _object_chunks(plan, obj, chunk_size, retry)


def _object_chunks(plan: ModalityPlan, obj: PlannedObject, chunk_size: int, retry: RetryPolicy) -> Iterator[Chunk]:
    with ResumableReader(plan.store, obj.key, obj.size, retry=retry, chunk_size=chunk_size) as src:
        if obj.size == 0:
            yield Chunk(plan.recording_hash, plan.name, obj.key, 0, 0, b"")
            return
        while True:
            offset = src.offset
            chunk = src.read()
            if not chunk:
                return
            yield Chunk(plan.recording_hash, plan.name, obj.key, offset, obj.size, chunk)
