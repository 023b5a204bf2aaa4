"""Aborting multipart uploads nobody will continue: those the journal keeps, and orphans.

A writer never aborts an upload another live writer is sending (SPEC section 4): several
writers may upload the same session at once (overlapping drains, a rig and a NAS drain),
each with its own journal, and ListMultipartUploads cannot tell whose an upload is. So
an orphan (an upload under the session's prefix that this writer's journal does not
know) is aborted only once the server says it was initiated more than
:data:`ORPHAN_MIN_AGE_S` ago; younger ones, and those whose age the server does not say,
are left alone (R2 aborts incomplete uploads itself after 7 days).
"""

from __future__ import annotations

from datetime import UTC, datetime

from ursa_daemon.errors import StoreError
from ursa_daemon.log import get_logger
from ursa_daemon.store.base import MultipartRecord, MultipartStore, MultipartUpload, Store
from ursa_daemon.transfer.multipart_upload import UploadJournal

__all__ = ["ORPHAN_MIN_AGE_S", "abort_orphan_uploads", "abort_uploads", "upload_age_s"]

log = get_logger("ursa.upload")

#: an upload no journal of this writer knows is taken for abandoned only when the server
#: initiated it longer ago than this (server clock). No live upload of ours gets that old
#: unseen: a file goes up in hours at the slowest uplink we plan for, and an upload paused
#: longer is its own writer's, whose journal continues (or its sweep aborts) it; were it
#: aborted all the same, its writer starts it again (``Multipart``), nothing fails. R2
#: aborts incomplete uploads itself after 7 days.
ORPHAN_MIN_AGE_S = 24 * 3600.0


def abort_uploads(store: Store, journal: UploadJournal, uploads: list[MultipartRecord]) -> int:
    """Abort ``uploads`` on the server and forget them; how many were. Failures are logged and kept."""
    if not isinstance(store, MultipartStore):
        return 0
    n = 0
    for rec in uploads:
        if rec.bucket != store.bucket:
            continue  # another profile's bucket: not this store's to abort
        try:
            store.abort_multipart(rec.key, rec.upload_id)
        except StoreError as exc:
            log.warning("upload.abort_failed", rec_id=rec.rec_id, key=rec.key, error=str(exc))
            continue
        journal.forget_multipart(rec.upload_id)
        log.info("upload.multipart_aborted", rec_id=rec.rec_id, key=rec.key, upload_id=rec.upload_id)
        n += 1
    return n


def abort_orphan_uploads(
    store: Store, rec_id: str, journal: UploadJournal | None, *, min_age_s: float = ORPHAN_MIN_AGE_S
) -> int:
    """Abort the incomplete multipart uploads under ``recordings/<rec_id>/`` that no journal knows of
    (its state database was lost, or another process died mid-upload) and that the server initiated
    more than ``min_age_s`` ago; how many were. A younger one may be a live peer's (another writer
    sending the same session), and one whose age the server does not say is taken for live: both are
    left alone. Call it only once every file of the session is confirmed in the store."""
    if not isinstance(store, MultipartStore):
        return 0
    known = {u.upload_id for u in journal.multipart_uploads(rec_id)} if journal is not None else set()
    try:
        listed = store.list_multipart(f"recordings/{rec_id}/")
    except StoreError as exc:
        log.warning("upload.orphan_list_failed", rec_id=rec_id, error=str(exc))
        return 0
    n = 0
    for up in listed:
        if up.upload_id in known:
            continue
        age = upload_age_s(up)
        if age is None or age <= min_age_s:
            log.debug("upload.orphan_kept", rec_id=rec_id, key=up.key, upload_id=up.upload_id, age_s=age)
            continue
        try:
            store.abort_multipart(up.key, up.upload_id)
        except StoreError as exc:
            log.warning("upload.abort_failed", rec_id=rec_id, key=up.key, error=str(exc))
            continue
        log.info("upload.orphan_aborted", rec_id=rec_id, key=up.key, upload_id=up.upload_id)
        n += 1
    return n


def upload_age_s(up: MultipartUpload) -> float | None:
    """Seconds since the server initiated ``up``, by the server's clock when it listed it (the local
    clock if it sent none); None when the server did not say when it was initiated."""
    if up.initiated is None:
        return None
    now = up.listed_at or datetime.now(UTC)
    return (now - up.initiated).total_seconds()
