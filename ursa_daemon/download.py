"""Recording bytes to disk: plan every write, then stream objects concurrently.

``download()`` is the third read verb (``query`` selects, ``get`` materialises
in memory, ``download`` writes the same bytes to disk without parsing them).

Order of work:

1. **Plan, before any byte moves.** Each modality row contributes its raw
   segments (the objects under ``raw_storage_uri``) or its processed asset (the
   object or directory at ``storage_uri``, basename kept, plus an MP4's
   ``.mp4.lance`` frame index beside it), chosen by ``source``. Every
   destination is computed and checked: a key that would land outside ``dest``
   (``..``, absolute, or through a symlink already in ``dest``) is refused
   (:class:`UnsafeKeyError`), every duplicate destination is reported in one
   :class:`DownloadPlanError`, and without ``overwrite`` every pre-existing
   file in one :class:`DestinationExistsError`.
2. **Stream.** A thread pool streams each object through ``<name>.part`` and an
   atomic ``os.replace``; an existing file is never unlinked first, so a
   failure at any point leaves it byte-identical. Each file's size is checked
   against the listing. A transient store error (or a short body) reopens the
   object and resumes where it stopped, with exponential backoff; only
   exhaustion surfaces, naming the key.
3. **Report.** :class:`DownloadProgress` events go to the ``progress``
   callback, on the calling thread, and to the stdlib logger ``ursa.download``
   (INFO at call and modality boundaries, DEBUG per file) with exactly the
   stable ``extra`` keys of :data:`STABLE_KEYS`. Phase order: ``start``,
   ``plan_done``, then per modality ``modality_start``, ``file_done``...,
   ``modality_done``, and ``finish``; ``bytes_done`` only grows.

The returned list is deterministic: target order, then the modalities in
``QueryResult.modalities`` order, then object keys in lexicographic order.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from ursa_daemon.catalog import IngestionStatus, ModalityRow, StorageFormat
from ursa_daemon.config import Role
from ursa_daemon.errors import (
    InputError,
    ObjectMismatch,
    ObjectNotFound,
    StoreError,
    TransientStoreError,
    UrsaError,
)
from ursa_daemon.session import MANIFEST_NAME, PARTICIPANT_NAME
from ursa_daemon.store import BucketKind, ObjectMeta, ObjectReader, Store, parse_storage_uri
from ursa_daemon.transfer.query import QueryResult, resolve

if TYPE_CHECKING:
    from ursa_daemon.config import LocalProfile, S3Profile
    from ursa_daemon.transfer.context import Context

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_MAX_CONCURRENT_FILES",
    "DEFAULT_RETRY",
    "LAYOUTS",
    "LOGGER_NAME",
    "SOURCES",
    "STABLE_KEYS",
    "DestinationExistsError",
    "DownloadCancelled",
    "DownloadPlanError",
    "DownloadProgress",
    "Layout",
    "ModalityPlan",
    "PlannedObject",
    "RecordingNotFoundError",
    "ResumableReader",
    "RetryPolicy",
    "ShortBodyError",
    "Source",
    "StoreFor",
    "UnsafeKeyError",
    "call_with_retry",
    "download",
    "plan_modalities",
    "plan_writes",
    "resolve_targets",
]

Layout = Literal["by_recording", "by_modality", "flat"]
Source = Literal["auto", "raw", "processed"]
Phase = Literal["start", "plan_done", "modality_start", "file_done", "modality_done", "finish"]
#: Which store serves a bucket kind (``raw`` or ``assets``), read-only role.
StoreFor = Callable[[BucketKind], Store]

LAYOUTS: tuple[Layout, ...] = ("by_recording", "by_modality", "flat")
SOURCES: tuple[Source, ...] = ("auto", "raw", "processed")
LOGGER_NAME = "ursa.download"
#: The ``extra`` keys of every phase record on ``ursa.download`` (append-only).
STABLE_KEYS = ("phase", "recording_hash", "modality", "worker_id", "key", "bytes_done", "bytes_total", "elapsed_s")
#: Bytes per read of a stream. Small enough to stay in the CPU cache between the
#: network copy and the page-cache copy: at 128 KiB a download used ~20 % less CPU
#: and ~35 MiB less RSS than at 1 MiB (8 streams, tests/bench/download_throughput.py).
DEFAULT_CHUNK_SIZE = 128 << 10
#: Bytes per write(2). Several threads writing 1 MiB each make Linux spend ~5x the
#: CPU copying into the page cache that 256 KiB writes cost (measured: 0.9 vs 3+ GB/s).
_WRITE_SLICE = 256 << 10
#: Objects streamed at once.
DEFAULT_MAX_CONCURRENT_FILES = 8
#: Destinations shown in one error message (the exception carries them all).
_SHOWN = 50
_PART_SUFFIX = ".part"

log = logging.getLogger(LOGGER_NAME)
_retry_log = logging.getLogger(LOGGER_NAME + ".retry")

T = TypeVar("T")


# -- errors -------------------------------------------------------------------------


class DownloadPlanError(UrsaError, ValueError):
    """The request cannot be planned: a bad option, an ineligible row, duplicate destinations."""


class UnsafeKeyError(InputError, ValueError):
    """A key from the store would land outside the destination directory; nothing was written."""


class DestinationExistsError(UrsaError, FileExistsError):
    """Destination files exist and ``overwrite`` is off. ``paths`` holds every one of them."""

    def __init__(self, message: str, *, paths: Sequence[Path]) -> None:
        super().__init__(message)
        self.paths = tuple(paths)


class RecordingNotFoundError(UrsaError, LookupError):
    """No registered recording has that recording_hash or rec_id."""


class DownloadCancelled(Exception):
    """A stream stopped because the call is being torn down (never surfaces from ``download``)."""


class ShortBodyError(TransientStoreError):
    """A body ended before the size the listing gave: retried, then :class:`ObjectMismatch`."""


# -- progress -----------------------------------------------------------------------


@dataclass(frozen=True)
class DownloadProgress:
    """One progress event. ``bytes_done`` is cumulative over the whole call.

    ``recording_hash``, ``modality`` and ``worker_id`` are ``None`` on the call-scoped
    phases (``start``, ``plan_done``, ``finish``); ``worker_id`` is a ``str``
    (``""`` for a single-worker family) on the modality phases. ``key`` is the
    object key on ``file_done`` only. ``bytes_total`` is set from ``plan_done`` on.
    """

    phase: Phase
    recording_hash: str | None
    modality: str | None
    worker_id: str | None
    key: str | None
    bytes_done: int
    bytes_total: int | None
    elapsed_s: float

    def extra(self) -> dict[str, Any]:
        """The logger's ``extra`` mapping: exactly :data:`STABLE_KEYS`."""
        return dataclasses.asdict(self)


class _Reporter:
    """Emits events to the logger and the callback; a failing callback is logged, not raised.

    ``KeyboardInterrupt`` and ``SystemExit`` raised by the callback do propagate.
    """

    def __init__(self, callback: Callable[[DownloadProgress], None] | None) -> None:
        self.callback = callback
        self.started = time.monotonic()

    def emit(
        self,
        phase: Phase,
        *,
        bytes_done: int,
        bytes_total: int | None,
        plan: ModalityPlan | None = None,
        key: str | None = None,
    ) -> None:
        event = DownloadProgress(
            phase=phase,
            recording_hash=None if plan is None else plan.recording_hash,
            modality=None if plan is None else plan.row.modality,
            worker_id=None if plan is None else plan.row.worker_id,
            key=key,
            bytes_done=bytes_done,
            bytes_total=bytes_total,
            elapsed_s=round(time.monotonic() - self.started, 6),
        )
        level = logging.DEBUG if phase == "file_done" else logging.INFO
        if log.isEnabledFor(level):
            log.log(level, "download.%s", phase, extra=event.extra())
        if self.callback is None:
            return
        try:
            self.callback(event)
        except Exception as exc:  # a broken callback must not break the download
            log.warning("download.callback_error", extra={"callback_error": f"{phase}: {exc!r}"})


# -- retries ------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How often a transiently failing object is tried, and the backoff between tries.

    The wait before try ``n + 1`` is ``init_backoff * 2**(n - 1)``, capped at
    ``max_backoff``, with up to 50 % jitter subtracted.
    """

    attempts: int = 5
    init_backoff: float = 0.25
    max_backoff: float = 8.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")

    def delay(self, failed_attempts: int) -> float:
        base = min(self.max_backoff, self.init_backoff * 2.0 ** (failed_attempts - 1))
        return base * (1.0 - random.random() / 2)


DEFAULT_RETRY = RetryPolicy()


def call_with_retry(
    fn: Callable[[], T],
    *,
    key: str,
    op: str,
    retry: RetryPolicy = DEFAULT_RETRY,
    cancel: threading.Event | None = None,
) -> T:
    """``fn()``, tried again on :class:`TransientStoreError` with backoff.

    Exhaustion raises :class:`StoreError` (:class:`ObjectMismatch` for a body
    that kept ending short) naming ``key``; other errors pass through at once.
    """
    cancel = cancel or threading.Event()
    last: TransientStoreError | None = None
    for attempt in range(1, retry.attempts + 1):
        try:
            return fn()
        except TransientStoreError as exc:
            last = exc
            if attempt == retry.attempts:
                break
            wait = retry.delay(attempt)
            _retry_log.info("download.retry", extra={"key": key, "error": f"{op} try {attempt}: {exc}"})
            if cancel.wait(wait):
                raise DownloadCancelled(key) from exc
    assert last is not None
    cls = ObjectMismatch if isinstance(last, ShortBodyError) else StoreError
    raise cls(f"{op} {key}: gave up after {retry.attempts} attempt(s); last error: {last}", key=key) from last


class ResumableReader:
    """Reads one object of known ``size`` forward, resuming after transient failures.

    A failed stream is reopened and the bytes already delivered are skipped
    (the store has no ranged read), so a caller sees each byte once. Every
    :meth:`read` gets ``retry.attempts`` tries; a body that ends short counts as
    transient, one longer than ``size`` is an :class:`ObjectMismatch` at once.
    """

    def __init__(
        self,
        store: Store,
        key: str,
        size: int,
        *,
        retry: RetryPolicy = DEFAULT_RETRY,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        cancel: threading.Event | None = None,
    ) -> None:
        self.store = store
        self.key = key
        self.size = size
        self.retry = retry
        self.chunk_size = chunk_size
        self.cancel = cancel or threading.Event()
        self.offset = 0
        self._src: ObjectReader | None = None

    def _open_at(self, offset: int) -> ObjectReader:
        src = self.store.open(self.key, chunk_size=self.chunk_size)
        skip = offset
        while skip > 0:
            got = src.read(min(skip, self.chunk_size))
            if not got:
                src.close()
                raise ShortBodyError(f"get {self.key}: the body ended before byte {offset}", key=self.key)
            skip -= len(got)
        return src

    def _read_once(self) -> bytes:
        try:
            if self._src is None:
                self._src = self._open_at(self.offset)
            chunk = self._src.read(self.chunk_size)
            if not chunk and self.offset < self.size:
                raise ShortBodyError(
                    f"get {self.key}: the body ended at {self.offset} bytes, the listing said {self.size}",
                    key=self.key,
                )
            return chunk
        except TransientStoreError:
            self.close()
            raise

    def read(self) -> bytes:
        """The next chunk (at most ``chunk_size`` bytes); ``b""`` once all ``size`` bytes were read."""
        if self.cancel.is_set():
            raise DownloadCancelled(self.key)
        chunk = call_with_retry(self._read_once, key=self.key, op="get", retry=self.retry, cancel=self.cancel)
        self.offset += len(chunk)
        if self.offset > self.size:
            raise ObjectMismatch(
                f"get {self.key}: the object is larger than the {self.size} bytes listed (changed meanwhile?)",
                key=self.key,
            )
        return chunk

    def close(self) -> None:
        if self._src is not None:
            self._src.close()
            self._src = None

    def __enter__(self) -> ResumableReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- targets and plans --------------------------------------------------------------


def resolve_targets(data: Context, target: Any) -> list[QueryResult]:
    """A QueryResult, an iterable of them, a recording_hash or a rec_id, as a list of results."""
    try:
        return resolve(data, target)
    except LookupError as exc:
        raise RecordingNotFoundError(str(exc)) from None


@dataclass(frozen=True)
class PlannedObject:
    """One object of a modality: its key, listed size, and path below the modality directory."""

    key: str
    size: int
    rel: str


@dataclass(frozen=True)
class ModalityPlan:
    """What one modality row contributes: ``objects`` sorted by key, all in ``store``."""

    recording_hash: str
    #: the key of the row in ``QueryResult.modalities`` (``eeg``, ``camera_0``)
    name: str
    row: ModalityRow
    source: Literal["raw", "processed"]
    store: Store
    #: the storage URI that was listed (``raw_storage_uri`` or ``storage_uri``)
    uri: str
    #: key of the processed asset (no trailing ``/``); ``None`` for raw segments
    asset_key: str | None
    objects: tuple[PlannedObject, ...]

    @property
    def nbytes(self) -> int:
        return sum(o.size for o in self.objects)


class _Stores:
    """One store per bucket kind for the duration of a call."""

    def __init__(self, data: Context, store_for: StoreFor | None) -> None:
        self._make: StoreFor = store_for or (
            lambda kind: data.store(Role.RAW_RO if kind == "raw" else Role.ASSETS_RO)
        )
        self._cache: dict[str, Store] = {}

    def __call__(self, kind: BucketKind) -> Store:
        if kind not in self._cache:
            self._cache[kind] = self._make(kind)
        return self._cache[kind]


def _check_choice(value: str, allowed: Sequence[str], name: str) -> None:
    if value not in allowed:
        raise DownloadPlanError(f"{name} must be one of {list(allowed)}, not {value!r}")


def _source_of(name: str, row: ModalityRow, source: Source) -> Literal["raw", "processed"]:
    status = IngestionStatus(row.ingestion_status)
    where = f"modality {name!r} of recording {row.recording_hash}"
    if status in (IngestionStatus.INGESTING, IngestionStatus.FAILED):
        raise DownloadPlanError(
            f"{where} has ingestion_status {status.value!r}: a catalog marker, not bytes to deliver; "
            "wait for it to be processed or select rows with status raw or processed"
        )
    if source == "raw":
        return "raw"
    if status is IngestionStatus.RAW:
        if source == "processed":
            raise DownloadPlanError(
                f"{where} has no processed asset (ingestion_status 'raw'); use source='raw' or 'auto'"
            )
        return "raw"
    return "processed"


def _unsafe(key: str, uri: str) -> UnsafeKeyError:
    return UnsafeKeyError(
        f"refusing to download {uri}: object key {key!r} is not a plain relative path below it "
        "(absolute, '..', '.', empty segment, backslash or control character); nothing was written",
        file=key,
    )


def _check_rel(rel: str, key: str, uri: str) -> str:
    """``rel`` if it is a safe relative path, else :class:`UnsafeKeyError` naming ``key``."""
    if (
        not rel
        or rel.startswith("/")
        or "\\" in rel
        or any(p in ("", ".", "..") for p in rel.split("/"))
        or any(ord(c) < 0x20 or c == "\x7f" for c in rel)
    ):
        raise _unsafe(key, uri)
    return rel


def _list(store: Store, prefix: str, uri: str, retry: RetryPolicy) -> list[ObjectMeta]:
    def run() -> list[ObjectMeta]:
        return list(store.list(prefix))

    try:
        return call_with_retry(run, key=prefix, op="list", retry=retry)
    except StoreError as exc:
        # obstore refuses to parse a listed key with '..', '.' or empty segments
        # ("invalid path"): that listing holds an unsafe key, say so plainly.
        if "invalid path" in str(exc).lower():
            raise UnsafeKeyError(
                f"refusing to download {uri}: the store lists an object whose key is not a safe "
                f"relative path; nothing was written ({exc})",
                file=prefix,
            ) from exc
        raise


def _raw_objects(
    name: str, row: ModalityRow, profile: LocalProfile | S3Profile, stores: _Stores, retry: RetryPolicy
) -> tuple[Store, str, list[PlannedObject]]:
    uri = row.raw_storage_uri
    kind, prefix = parse_storage_uri(uri, profile)
    if kind != "raw" or not prefix.strip("/"):
        raise DownloadPlanError(
            f"modality {name!r}: raw_storage_uri {uri!r} must be a prefix in the raw bucket "
            "(recordings/<rec_id>/<worker>/)"
        )
    prefix = prefix.rstrip("/") + "/"
    store = stores("raw")
    objects = []
    # below a worker prefix (recordings/<rec_id>/<worker>/) a file named manifest.json is data;
    # only a prefix of a whole session would list the session's own side files
    session_prefix = len(prefix.strip("/").split("/")) < 3
    for meta in _list(store, prefix, uri, retry):
        if not meta.key.startswith(prefix):
            raise _unsafe(meta.key, uri)
        rel = _check_rel(meta.key[len(prefix) :], meta.key, uri)
        if not (session_prefix and rel in (MANIFEST_NAME, PARTICIPANT_NAME)):
            objects.append(PlannedObject(meta.key, meta.size, rel))
    return store, prefix, objects


def _processed_objects(
    name: str, row: ModalityRow, profile: LocalProfile | S3Profile, stores: _Stores, retry: RetryPolicy
) -> tuple[Store, str, list[PlannedObject]]:
    """The asset at ``storage_uri``: an object, a directory (Zarr, Lance), an MP4 and its index.

    Paths keep the asset's basename: ``eeg.zarr/zarr.json``, ``camera.mp4``,
    ``camera.mp4.lance/...``.
    """
    uri = row.storage_uri
    if not uri:
        raise DownloadPlanError(f"modality {name!r} of {row.recording_hash} is processed but has no storage_uri")
    kind, key = parse_storage_uri(uri, profile)
    key = key.rstrip("/")
    if kind != "assets" or not key:
        raise DownloadPlanError(
            f"modality {name!r}: storage_uri {uri!r} of a processed row must name an asset in the assets bucket"
        )
    parent = key.rpartition("/")[0]
    base = parent + "/" if parent else ""
    sidecar = key + ".lance/" if row.format == StorageFormat.MP4 or key.endswith(".mp4") else None
    store = stores("assets")
    objects = []
    for meta in _list(store, key, uri, retry):
        k = meta.key
        if k == key or k.startswith(key + "/") or (sidecar is not None and k.startswith(sidecar)):
            objects.append(PlannedObject(k, meta.size, _check_rel(k[len(base) :], k, uri)))
    return store, key, objects


def _eligible(results: Sequence[QueryResult], source: Source) -> dict[tuple[str, str], Literal["raw", "processed"]]:
    """The source of every row; one :class:`DownloadPlanError` naming every ineligible row."""
    chosen: dict[tuple[str, str], Literal["raw", "processed"]] = {}
    refused: list[str] = []
    for qr in results:
        for name, row in qr.modalities.items():
            try:
                chosen[(qr.recording_hash, name)] = _source_of(name, row, source)
            except DownloadPlanError as exc:
                refused.append(str(exc))
    if refused:
        raise DownloadPlanError(f"{len(refused)} modality row(s) cannot be delivered: " + "; ".join(refused))
    return chosen


def plan_modalities(
    data: Context,
    results: Sequence[QueryResult],
    *,
    source: Source = "auto",
    store_for: StoreFor | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> list[ModalityPlan]:
    """Every modality of ``results`` with the objects it contributes, listed and checked.

    Raises :class:`DownloadPlanError` for an ineligible row, :class:`UnsafeKeyError`
    for a listed key that is not a plain relative path, :class:`ObjectNotFound`
    for a row whose URI lists nothing.
    """
    _check_choice(source, SOURCES, "source")
    chosen_sources = _eligible(results, source)
    stores = _Stores(data, store_for)
    plans = []
    for qr in results:
        for name, row in qr.modalities.items():
            chosen = chosen_sources[(qr.recording_hash, name)]
            lister = _raw_objects if chosen == "raw" else _processed_objects
            store, where, objects = lister(name, row, data.profile, stores, retry)
            if not objects:
                uri = row.raw_storage_uri if chosen == "raw" else row.storage_uri
                raise ObjectNotFound(
                    f"no objects at {uri} for modality {name!r} of recording {qr.recording_hash}: "
                    "a registered row without bytes is a catalog or upload bug",
                    key=where,
                )
            objects.sort(key=lambda o: o.key)
            plans.append(
                ModalityPlan(
                    recording_hash=qr.recording_hash,
                    name=name,
                    row=row,
                    source=chosen,
                    store=store,
                    uri=str(row.raw_storage_uri if chosen == "raw" else row.storage_uri),
                    asset_key=None if chosen == "raw" else where,
                    objects=tuple(objects),
                )
            )
    return plans


# -- destinations -------------------------------------------------------------------


@dataclass(frozen=True)
class _Write:
    store: Store
    key: str
    size: int
    dest: Path


def _modality_dir(root: Path, layout: Layout, recording_hash: str, name: str) -> Path:
    if layout == "by_recording":
        return root / recording_hash / name
    if layout == "by_modality":
        return root / name / recording_hash
    if "__" in recording_hash or "__" in name:
        raise DownloadPlanError(
            f"layout='flat' joins recording_hash and modality with '__': {recording_hash!r} / {name!r} "
            "already hold '__'; use by_recording or by_modality"
        )
    return root / f"{recording_hash}__{name}"


def _part(dest: Path) -> Path:
    return dest.with_name(dest.name + _PART_SUFFIX)


def _inside(root_real: str, dest: Path, key: str) -> None:
    """Refuse a destination that resolves (through existing symlinks) outside ``root_real``."""
    real = os.path.realpath(dest)
    if os.path.commonpath([root_real, real]) != root_real or real == root_real:
        raise UnsafeKeyError(
            f"refusing to download {key!r}: its destination {dest} resolves to {real}, outside "
            f"{root_real} (a symlink in the destination tree?); nothing was written",
            file=key,
        )


def _show(paths: Sequence[object]) -> str:
    shown = "; ".join(str(p) for p in paths[:_SHOWN])
    return shown + (f"; …and {len(paths) - _SHOWN} more" if len(paths) > _SHOWN else "")


def _blocked(dest: Path, root: Path) -> bool:
    """True if ``dest`` is a directory, or a parent below ``root`` exists but is not one."""
    if dest.is_dir() and not dest.is_symlink():
        return True
    for parent in dest.parents:
        if parent == root or root not in parent.parents:
            return False
        if os.path.lexists(parent) and not parent.is_dir():
            return True
    return False


def plan_writes(plans: Sequence[ModalityPlan], dest: Path, *, layout: Layout, overwrite: bool) -> list[list[_Write]]:
    """Destinations of every object, grouped per modality; all checks before any write."""
    _check_choice(layout, LAYOUTS, "layout")
    root = Path(os.path.abspath(dest))
    root_real = os.path.realpath(root)
    groups: list[list[_Write]] = []
    owner: dict[Path, str] = {}
    duplicates: list[str] = []
    for plan in plans:
        base = _modality_dir(root, layout, plan.recording_hash, plan.name)
        group = []
        for obj in plan.objects:
            target = base.joinpath(*obj.rel.split("/"))
            _inside(root_real, target, obj.key)
            clash = owner.get(target) or owner.get(_part(target))
            if clash is not None:
                duplicates.append(f"{target} (from {clash!r} and {obj.key!r})")
            owner[target] = owner[_part(target)] = obj.key
            group.append(_Write(plan.store, obj.key, obj.size, target))
        groups.append(group)
    parents = {p for path in owner for p in path.parents}
    duplicates += [f"{path} (a file for {key!r} and a directory)" for path, key in owner.items() if path in parents]
    if duplicates:
        raise DownloadPlanError(
            f"layout={layout!r} gives {len(duplicates)} duplicate destination(s): {_show(duplicates)}; "
            "was a recording given twice?"
        )
    writes = [w for g in groups for w in g]
    blocked = [w.dest for w in writes if _blocked(w.dest, root)]
    if blocked:
        raise DestinationExistsError(
            f"{len(blocked)} destination(s) are directories or lie below a file: {_show(blocked)}; "
            "move them away or pick another DEST",
            paths=blocked,
        )
    if not overwrite:
        existing = [w.dest for w in writes if os.path.lexists(w.dest)]
        if existing:
            raise DestinationExistsError(
                f"refusing to overwrite {len(existing)} existing file(s): {_show(existing)}; "
                "pass overwrite=True (--overwrite) to replace them",
                paths=existing,
            )
    return groups


# -- streaming ----------------------------------------------------------------------


def _stream_to_disk(w: _Write, cancel: threading.Event, retry: RetryPolicy, chunk_size: int) -> None:
    """``w.key`` → ``<dest>.part`` → ``os.replace`` onto ``dest``; the ``.part`` never survives."""
    w.dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = _part(w.dest)
    tmp.unlink(missing_ok=True)  # a stale one from a killed run (unlink never follows a link)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    try:
        with (
            os.fdopen(fd, "wb") as out,
            ResumableReader(w.store, w.key, w.size, retry=retry, chunk_size=chunk_size, cancel=cancel) as src,
        ):
            while chunk := src.read():
                view = memoryview(chunk)
                for start in range(0, len(view), _WRITE_SLICE):
                    out.write(view[start : start + _WRITE_SLICE])
        os.replace(tmp, w.dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _execute(
    plans: Sequence[ModalityPlan],
    groups: Sequence[Sequence[_Write]],
    reporter: _Reporter,
    total: int,
    *,
    max_concurrent_files: int,
    retry: RetryPolicy,
    chunk_size: int,
) -> None:
    """Stream every write on a pool; report per modality, in plan order, on this thread."""
    cancel = threading.Event()
    n = sum(len(g) for g in groups)
    pool = ThreadPoolExecutor(max_workers=max(1, min(max_concurrent_files, n)), thread_name_prefix="ursa-download")
    try:
        submitted = [
            {pool.submit(_stream_to_disk, w, cancel, retry, chunk_size): w for w in group} for group in groups
        ]
        done = 0
        for plan, futures in zip(plans, submitted, strict=True):
            reporter.emit("modality_start", plan=plan, bytes_done=done, bytes_total=total)
            for fut in as_completed(futures):
                fut.result()
                w = futures[fut]
                done += w.size
                reporter.emit("file_done", plan=plan, key=w.key, bytes_done=done, bytes_total=total)
            reporter.emit("modality_done", plan=plan, bytes_done=done, bytes_total=total)
    except BaseException:
        cancel.set()  # running streams stop at their next chunk and remove their .part
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def download(
    data: Context,
    target: Any,
    dest: str | os.PathLike[str],
    *,
    layout: Layout = "by_recording",
    overwrite: bool = False,
    source: Source = "auto",
    progress: Callable[[DownloadProgress], None] | None = None,
    max_concurrent_files: int = DEFAULT_MAX_CONCURRENT_FILES,
    retry: RetryPolicy = DEFAULT_RETRY,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    store_for: StoreFor | None = None,
) -> list[Path]:
    """Stream ``target``'s bytes to files under ``dest``; the files written, in plan order.

    ``target``: a QueryResult, an iterable of them, a recording_hash or a rec_id.
    ``layout``: ``by_recording`` (``dest/<hash>/<modality>/...``), ``by_modality``
    (``dest/<modality>/<hash>/...``) or ``flat`` (``dest/<hash>__<modality>/...``),
    where ``<modality>`` is the row's key in ``QueryResult.modalities``.
    ``source``: ``auto`` (raw rows: segments; processed rows: the asset),
    ``raw`` (always segments) or ``processed`` (a raw row is a ``ValueError``).
    ``store_for`` overrides which store serves each bucket kind (tests, tuning).
    """
    _check_choice(layout, LAYOUTS, "layout")
    _check_choice(source, SOURCES, "source")
    if max_concurrent_files < 1:
        raise DownloadPlanError("max_concurrent_files must be at least 1")
    reporter = _Reporter(progress)
    reporter.emit("start", bytes_done=0, bytes_total=None)
    results = resolve_targets(data, target)
    plans = plan_modalities(data, results, source=source, store_for=store_for, retry=retry)
    groups = plan_writes(plans, Path(dest), layout=layout, overwrite=overwrite)
    total = sum(w.size for g in groups for w in g)
    reporter.emit("plan_done", bytes_done=0, bytes_total=total)
    Path(dest).mkdir(parents=True, exist_ok=True)
    _execute(
        plans,
        groups,
        reporter,
        total,
        max_concurrent_files=max_concurrent_files,
        retry=retry,
        chunk_size=chunk_size,
    )
    reporter.emit("finish", bytes_done=total, bytes_total=total)
    return [w.dest for g in groups for w in g]
