"""``ursa.register.orchestrator``: the seeds' module-level ingest functions.

:func:`ingest` and :func:`ingest_from_r2` are :meth:`ursa.DataInterface.ingest` and
:meth:`ursa.DataInterface.ingest_from_r2` with the orchestrator's argument names;
:class:`IngestResult`, :class:`UploadProgress` and :class:`UploadInterrupted` (raised by a
read the ``is_active`` callback stopped; :func:`ingest` catches it and returns a paused
result) are ``ursa_daemon``'s. Events are
logged by structlog as ``ursa.ingest`` (``upload.file_done`` per file, at INFO;
``upload.file_skipped`` at DEBUG; ``session.paused``, ``session.registered``),
which ``import ursa`` routes to the stdlib logger of that name.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from ursa_daemon.transfer.body import UploadInterrupted
from ursa_daemon.transfer.ingest import IngestResult, UploadProgress

if TYPE_CHECKING:
    from ursa.data_interface import DataInterface

__all__ = ["IngestResult", "UploadInterrupted", "UploadProgress", "ingest", "ingest_from_r2"]


def ingest(
    data: DataInterface,
    manifest_path: str | os.PathLike[str],
    *,
    source_dir: str | os.PathLike[str],
    participant_id: str | None,
    is_active: Callable[[], bool] | None = None,
    progress: Callable[[UploadProgress], None] | None = None,
    overwrite: bool = False,
    collapse_modalities: bool = True,
    max_concurrent_files: int = 4,
) -> IngestResult:
    """Upload a session's raw files and register its catalog rows (see :meth:`ursa.DataInterface.ingest`).

    ``participant_id`` is the participant (an id, or the typed name it is made from).
    Modality rows are always the worker's family with its suffix as ``worker_id``
    (``camera_0`` → ``camera``/``0``), which is what ``collapse_modalities=True``
    asked for; ``False`` (modality = the whole subdirectory name) is not possible
    in this catalog's schema and is refused.
    """
    if not collapse_modalities:
        raise ValueError(
            "collapse_modalities=False is not supported: a modality row is the worker's family "
            "(camera) with the suffix in worker_id (0); QueryResult.modalities keys say camera_0 "
            "only where a recording has several cameras"
        )
    if max_concurrent_files < 1:
        raise ValueError("max_concurrent_files must be at least 1")
    return data.ingest(
        manifest_path,
        source_dir=source_dir,
        participant=participant_id,
        progress=progress,
        overwrite=overwrite,
        is_active=is_active,
        max_concurrent_files=max_concurrent_files,
    )


def ingest_from_r2(data: DataInterface, rec_id: str, *, participant_id: str | None) -> IngestResult:
    """Register a session whose bytes are already in the store (see :meth:`ursa.DataInterface.ingest_from_r2`)."""
    return data.ingest_from_r2(rec_id, participant=participant_id)
