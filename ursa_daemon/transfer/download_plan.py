"""Planning a download before any byte moves: which objects each modality row
contributes (raw segments or the processed asset, chosen by ``source``), and where
each lands under the destination, every destination checked first (see
:mod:`ursa_daemon.transfer.download` for the whole order of work).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from ursa_daemon.catalog import IngestionStatus, ModalityRow, StorageFormat
from ursa_daemon.config import Role
from ursa_daemon.errors import InputError, ObjectNotFound, StoreError, UrsaError
from ursa_daemon.session import MANIFEST_NAME, PARTICIPANT_NAME
from ursa_daemon.store import BucketKind, ObjectMeta, Store, parse_storage_uri
from ursa_daemon.transfer.query import QueryResult, resolve
from ursa_daemon.transfer.resumable import DEFAULT_RETRY, RetryPolicy, call_with_retry

if TYPE_CHECKING:
    from ursa_daemon.config import LocalProfile, S3Profile
    from ursa_daemon.transfer.context import Context

__all__ = [
    "LAYOUTS",
    "SOURCES",
    "DestinationExistsError",
    "DownloadPlanError",
    "Layout",
    "ModalityPlan",
    "PlannedObject",
    "PlannedWrite",
    "RecordingNotFoundError",
    "Source",
    "StoreFor",
    "UnsafeKeyError",
    "check_choice",
    "part_path",
    "plan_modalities",
    "plan_writes",
    "resolve_targets",
]

Layout = Literal["by_recording", "by_modality", "flat"]
Source = Literal["auto", "raw", "processed"]
#: Which store serves a bucket kind (``raw`` or ``assets``), read-only role.
StoreFor = Callable[[BucketKind], Store]
LAYOUTS: tuple[Layout, ...] = ("by_recording", "by_modality", "flat")
SOURCES: tuple[Source, ...] = ("auto", "raw", "processed")
#: Destinations shown in one error message (the exception carries them all).
_SHOWN = 50
_PART_SUFFIX = ".part"


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


def check_choice(value: str, allowed: Sequence[str], name: str) -> None:
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
    check_choice(source, SOURCES, "source")
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
class PlannedWrite:
    """One object to stream to ``dest``."""

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


def part_path(dest: Path) -> Path:
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


def plan_writes(
    plans: Sequence[ModalityPlan], dest: Path, *, layout: Layout, overwrite: bool
) -> list[list[PlannedWrite]]:
    """Destinations of every object, grouped per modality; all checks before any write."""
    check_choice(layout, LAYOUTS, "layout")
    root = Path(os.path.abspath(dest))
    root_real = os.path.realpath(root)
    groups: list[list[PlannedWrite]] = []
    owner: dict[Path, str] = {}
    duplicates: list[str] = []
    for plan in plans:
        base = _modality_dir(root, layout, plan.recording_hash, plan.name)
        group = []
        for obj in plan.objects:
            target = base.joinpath(*obj.rel.split("/"))
            _inside(root_real, target, obj.key)
            clash = owner.get(target) or owner.get(part_path(target))
            if clash is not None:
                duplicates.append(f"{target} (from {clash!r} and {obj.key!r})")
            owner[target] = owner[part_path(target)] = obj.key
            group.append(PlannedWrite(plan.store, obj.key, obj.size, target))
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
