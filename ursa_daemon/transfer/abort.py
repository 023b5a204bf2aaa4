"""Aborting multipart uploads nobody will continue: those the journal keeps, and orphans."""

from __future__ import annotations

from ursa_daemon.errors import StoreError
from ursa_daemon.log import get_logger
from ursa_daemon.store.base import MultipartRecord, MultipartStore, Store
from ursa_daemon.transfer.multipart_upload import UploadJournal

__all__ = ["abort_orphan_uploads", "abort_uploads"]

log = get_logger("ursa.upload")


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


def abort_orphan_uploads(store: Store, rec_id: str, journal: UploadJournal | None) -> int:
    """Abort the incomplete multipart uploads under ``recordings/<rec_id>/`` that no journal knows of
    (its state database was lost, or another process died mid-upload); how many were. Call it only
    once every file of the session is confirmed in the store: nothing left there is needed."""
    if not isinstance(store, MultipartStore):
        return 0
    known = {u.upload_id for u in journal.multipart_uploads(rec_id)} if journal is not None else set()
    try:
        listed = store.list_multipart(f"recordings/{rec_id}/")
    except StoreError as exc:
        log.warning("upload.orphan_list_failed", rec_id=rec_id, error=str(exc))
        return 0
    n = 0
    for key, upload_id in listed:
        if upload_id in known:
            continue
        try:
            store.abort_multipart(key, upload_id)
        except StoreError as exc:
            log.warning("upload.abort_failed", rec_id=rec_id, key=key, error=str(exc))
            continue
        log.info("upload.orphan_aborted", rec_id=rec_id, key=key, upload_id=upload_id)
        n += 1
    return n
