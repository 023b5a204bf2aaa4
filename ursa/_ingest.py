"""The seeds' ``DataInterface.ingest`` (runbook Path A) and ``ingest_from_r2`` (Path B) over
:func:`ursa_daemon.transfer.ingest.ingest` and :func:`ursa_daemon.transfer.backfill.register_from_store`:
the seeds' argument checks, and one half of a dual-node session registered as it is."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

from ursa._query import with_legacy_id
from ursa_daemon.api import DataInterface as _CoreInterface
from ursa_daemon.config import Role
from ursa_daemon.errors import NodesPending, WritesNotEnabled
from ursa_daemon.session import MANIFEST_NAME, NODE_MANIFEST_DIR
from ursa_daemon.transfer.backfill import register_from_store
from ursa_daemon.transfer.ingest import IngestResult, UploadProgress
from ursa_daemon.transfer.ingest import ingest as _ingest

__all__ = ["checked_source_dir", "ingest_result", "ingest_session", "register_stored"]


def ingest_result(res: IngestResult) -> IngestResult:
    if res.recording is None:
        return res
    return dataclasses.replace(res, recording=with_legacy_id(res.recording))


def checked_source_dir(
    core: _CoreInterface, manifest_path: str | os.PathLike[str], source_dir: str | os.PathLike[str]
) -> Path:
    """``source_dir`` resolved, once it holds the session ``manifest_path`` describes and ``core``
    may write the raw bucket and the catalog; else the error that says what to do."""
    src = Path(source_dir)
    manifest = Path(manifest_path)
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
    if not core.writes_enabled:
        raise WritesNotEnabled(
            "ingest() uploads raw bytes and writes the catalog: call "
            "enable_writes(roles=('assets_rw', 'raw_rw')) first"
        )
    try:
        core.store(Role.RAW_RW)
    except WritesNotEnabled:
        raise WritesNotEnabled(
            "ingest() uploads raw bytes: call enable_writes(roles=('assets_rw', 'raw_rw')) first"
        ) from None
    return s


def ingest_session(
    core: _CoreInterface,
    s: Path,
    *,
    participant: str | None,
    progress: Callable[[UploadProgress], None] | None,
    overwrite: bool,
    is_active: Callable[[], bool] | None,
    max_concurrent_files: int | None,
) -> IngestResult:
    """Path A for the checked session directory ``s``; one half of a dual-node session is
    registered as it is (the peer's half adds its modality rows when it is ingested)."""
    try:
        res = _ingest(
            core,
            s,
            participant=participant,
            is_active=is_active,
            progress=progress,
            overwrite=overwrite,
            max_concurrent_files=max_concurrent_files,
        )
    except NodesPending as exc:  # one half of a dual-node session: register what is there
        done = register_from_store(
            core, exc.rec_id, participant=participant, allow_partial=True, overwrite=overwrite
        )
        moved: IngestResult | None = exc.result
        res = dataclasses.replace(
            moved if moved is not None else done, paused=False, recording=done.recording, pending=None
        )
    return ingest_result(res)


def register_stored(core: _CoreInterface, rec_id: str, participant: str | None) -> IngestResult:
    """Path B: register a session whose bytes are already in the store."""
    if participant is not None and not participant.strip():
        participant = None
    return ingest_result(register_from_store(core, rec_id, participant=participant))
