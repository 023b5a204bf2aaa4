"""One file as a multipart upload that continues where the journal says it stopped.

The upload id and each confirmed part go to an :class:`UploadJournal` (the
SQLite state) as the server confirms them. The next attempt, after a pause, a
SIGKILL or a reboot, lists the server's parts and sends only the missing ones
of the same upload; a part the server holds that the journal missed (killed
between the two) is proven by its MD5 ETag; an upload the server forgot
starts again from zero.

An upload can also vanish while it is being sent or completed (``UploadGone``):
another writer aborted it, or it expired. That is not a failure of the file: if
the object is now in the store with the file's size and sha256 (a peer sending
the same session completed it, or our own completion went through and only its
answer was lost) the file is done; otherwise a fresh upload of the file starts
at once, up to :data:`MAX_UPLOAD_RESTARTS` times.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from typing import Protocol

from ursa_daemon.errors import InputError, ObjectNotFound, StoreError, UploadGone
from ursa_daemon.log import get_logger
from ursa_daemon.store.base import CompletedPart, MultipartRecord, PartInfo, PartRecord, Store
from ursa_daemon.store.multipart import b64_crc32c
from ursa_daemon.transfer.body import FileRegion, UploadInterrupted, _crc32c_extend
from ursa_daemon.transfer.request import FileJob

__all__ = ["MAX_UPLOAD_RESTARTS", "Multipart", "UploadJournal"]

log = get_logger("ursa.upload")

_HASH_READ = 1 << 20
#: fresh uploads of one file after its upload vanished mid-way (aborted by another writer),
#: before the ``UploadGone`` is raised
MAX_UPLOAD_RESTARTS = 3


class UploadJournal(Protocol):
    """Where multipart uploads and their confirmed parts are kept (``StateDB``)."""

    def multipart_upload(self, rec_id: str, rel_path: str) -> MultipartRecord | None: ...

    def multipart_uploads(self, rec_id: str | None = None) -> list[MultipartRecord]: ...

    def start_multipart(self, rec: MultipartRecord) -> None: ...

    def record_part(self, upload_id: str, part: PartRecord) -> None: ...

    def parts(self, upload_id: str) -> dict[int, PartRecord]: ...

    def forget_multipart(self, upload_id: str) -> None: ...


def _checksum_region(fd: int, offset: int, size: int, cancel: threading.Event, *, md5: bool) -> tuple[int, str | None]:
    """CRC32C (and md5, on request) of ``size`` bytes at ``offset``: for parts hashing did not checksum."""
    crc = 0
    m = hashlib.md5(usedforsecurity=False) if md5 else None
    done = 0
    while done < size:
        if cancel.is_set():
            raise UploadInterrupted()
        data = os.pread(fd, min(_HASH_READ, size - done), offset + done)
        if not data:
            break
        crc = _crc32c_extend(crc, data)
        if m is not None:
            m.update(data)
        done += len(data)
    return crc, (m.hexdigest() if m is not None else None)


def _part_tag(crc: int) -> str:
    """How the journal records a part's checksum."""
    return f"crc32c:{crc:08x}"


def _proves(listed: PartInfo, crc: int, md5: str | None) -> bool:
    """A part the server holds but the journal missed (killed between the two) has these bytes.

    The ETag of a part is the MD5 of its bytes on S3, R2, MinIO and SeaweedFS:
    with it the proof is 128 bits strong; the CRC32C the server lists (where it
    lists one) must agree too."""
    if listed.checksum_crc32c is not None and listed.checksum_crc32c != b64_crc32c(crc):
        return False
    etag = listed.etag.strip('"').lower()
    if md5 is not None and len(etag) == 32:
        return etag == md5
    return False


def _older_parts(journal: UploadJournal, upload_id: str) -> bool:
    """Parts an older version journaled with a sha256: their upload cannot take CRC32C parts."""
    return any(not p.checksum.startswith("crc32c:") for p in journal.parts(upload_id).values())


class Multipart:
    """One file as a multipart upload that continues where ``journal`` says it stopped.

    Without a journal nobody could continue a paused upload: it is aborted instead.
    """

    def __init__(self, job: FileJob, journal: UploadJournal | None) -> None:
        self.job = job
        self.journal = journal
        self.part_size = job.limits.part_size
        self.nparts = -(-job.entry.size // self.part_size)
        self.upload_id = ""
        self.recorded: dict[int, PartRecord] = {}
        self.unrecorded: dict[int, PartInfo] = {}

    def run(self) -> None:
        job = self.job
        fd = job.open()
        try:
            self._begin()
            restarts = 0
            while True:
                try:
                    parts = self._send_all(fd)
                    self._complete(parts)
                    return
                except UploadGone as exc:
                    if self._gone(exc, restarts):
                        return
                    restarts += 1
                except InputError:
                    self._abandon()
                    raise
                except UploadInterrupted:
                    if self.journal is None:  # nobody could continue it: do not leave it on the server
                        self._abandon()
                    raise
        finally:
            os.close(fd)

    def _gone(self, exc: UploadGone, restarts: int) -> bool:
        """The upload vanished while being sent or completed (another writer aborted it, or it
        expired): True if the object is now in the store with this file's size and sha256 (a
        peer completed it, or our completion's answer was lost); else a fresh upload is started
        (False), or ``exc`` raised once :data:`MAX_UPLOAD_RESTARTS` were."""
        job = self.job
        log.info("upload.multipart_gone", rec_id=job.rec_id, key=job.key, upload_id=self.upload_id)
        if self.journal is not None:
            self.journal.forget_multipart(self.upload_id)
        self.upload_id = ""
        self.recorded, self.unrecorded = {}, {}
        if self._in_store():
            return True
        if restarts >= MAX_UPLOAD_RESTARTS:
            raise exc
        self._create()
        return False

    def _in_store(self) -> bool:
        """The object is in the store with this file's size and sha256 (user metadata)."""
        job = self.job
        store = job.store
        if not isinstance(store, Store) or not job.entry.sha256:
            return False
        try:
            meta = store.head(job.key)
        except ObjectNotFound:
            return False
        return meta.size == job.entry.size and meta.sha256 == job.entry.sha256

    # -- the upload id ---------------------------------------------------------

    def _begin(self) -> None:
        """Continue the journal's upload of this file if it still fits and the server has it, else start one."""
        journal = self.journal
        if journal is not None:
            rec = journal.multipart_upload(self.job.rec_id, self.job.entry.rel_path)
            if rec is not None and not self._fits(journal, rec):
                self._replace(journal, rec)
            elif rec is not None and self._resume(journal, rec):
                return
        self._create()

    def _fits(self, journal: UploadJournal, rec: MultipartRecord) -> bool:
        """The journal's upload is of this file's bytes, to this key, cut into parts of this size."""
        job = self.job
        return (
            rec.bucket == job.store.bucket
            and rec.key == job.key
            and rec.size == job.entry.size
            and rec.sha256 == job.entry.sha256
            and rec.part_size == self.part_size
            and not _older_parts(journal, rec.upload_id)
        )

    def _replace(self, journal: UploadJournal, rec: MultipartRecord) -> None:
        job = self.job
        if rec.bucket == job.store.bucket:
            job.store.abort_multipart(rec.key, rec.upload_id)
        journal.forget_multipart(rec.upload_id)
        log.info("upload.multipart_replaced", rec_id=job.rec_id, key=job.key, upload_id=rec.upload_id)

    def _resume(self, journal: UploadJournal, rec: MultipartRecord) -> bool:
        """Take up ``rec``: its journaled parts the server still lists are confirmed, the other listed
        parts are to be proven; False if the server forgot the upload."""
        job = self.job
        try:
            listed = {p.number: p for p in job.store.list_parts(job.key, rec.upload_id)}
        except UploadGone:
            journal.forget_multipart(rec.upload_id)
            log.info("upload.multipart_gone", rec_id=job.rec_id, key=job.key, upload_id=rec.upload_id)
            return False
        self.upload_id = rec.upload_id
        for n, p in journal.parts(rec.upload_id).items():
            server = listed.get(n)
            if server is not None and server.etag == p.etag and server.size == p.size:
                self.recorded[n] = p
        self.unrecorded = {n: p for n, p in listed.items() if n not in self.recorded}
        log.info(
            "upload.multipart_resumed",
            rec_id=job.rec_id,
            key=job.key,
            upload_id=rec.upload_id,
            parts_confirmed=len(self.recorded),
            parts_total=self.nparts,
        )
        return True

    def _create(self) -> None:
        job = self.job
        self.upload_id = job.store.create_multipart(job.key, sha256=job.entry.sha256)
        if self.journal is not None:
            self.journal.start_multipart(
                MultipartRecord(
                    upload_id=self.upload_id,
                    rec_id=job.rec_id,
                    rel_path=job.entry.rel_path,
                    bucket=job.store.bucket,
                    key=job.key,
                    size=job.entry.size,
                    sha256=job.entry.sha256 or "",
                    part_size=self.part_size,
                )
            )

    # -- the parts ---------------------------------------------------------------

    def _send_all(self, fd: int) -> list[CompletedPart]:
        """Send the parts not confirmed yet, each with its CRC32C, then check the file did not move.

        The CRC32Cs come from the read that took the file's sha256
        (``FileEntry.part_crc32c``); a part hashing did not checksum (a file
        trusted from the state, a part to prove from ListParts) is read once
        more for it. The server verifies each part's CRC32C header (with
        checksums off, the body is held to it here as it is sent), so bytes
        that changed since hashing never complete the upload; after the last part the file must still be
        the one opened, with the same size and mtime (a file still growing is
        caught here).
        """
        job = self.job
        done: dict[int, CompletedPart] = {}
        lanes = max(1, job.limits.max_concurrency_per_file)
        pool = ThreadPoolExecutor(max_workers=lanes, thread_name_prefix="ursa-part")
        pending: set[Future[CompletedPart]] = set()

        def collect(futures: set[Future[CompletedPart]]) -> None:
            for fut in futures:
                part = fut.result()
                done[part.number] = part

        try:
            for n, offset, size, crc in self._parts(fd, done):
                while len(pending) >= lanes:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    collect(finished)
                pending.add(pool.submit(self._send_part, fd, n, offset, size, crc))
            finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
            collect(finished)
        except UploadGone:
            raise  # not the session's end (see ``run``): the other lanes finish the part they send
        except BaseException:
            job.cancel.set()  # the other lanes stop at their next slice; the session stops anyway
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        job.check_settled(fd)
        return [done[n] for n in sorted(done)]

    def _parts(self, fd: int, done: dict[int, CompletedPart]) -> Iterator[tuple[int, int, int, int]]:
        """(number, offset, size, crc32c) of each part to send; parts the server already holds go to ``done``."""
        job = self.job
        entry = job.entry
        fits = entry.part_size == self.part_size and len(entry.part_crc32c) == self.nparts
        hashed = entry.part_crc32c if fits else ()
        for n in range(1, self.nparts + 1):
            if job.cancel.is_set():
                raise UploadInterrupted()
            offset = (n - 1) * self.part_size
            size = min(self.part_size, entry.size - offset)
            listed = self.unrecorded.get(n)
            md5: str | None = None
            if hashed and listed is None:
                crc = hashed[n - 1]
            else:
                crc, md5 = _checksum_region(fd, offset, size, job.cancel, md5=listed is not None)
            held = self._held(n, size, crc, listed, md5)
            if held is not None:
                done[n] = held
            else:
                yield n, offset, size, crc

    def _held(self, n: int, size: int, crc: int, listed: PartInfo | None, md5: str | None) -> CompletedPart | None:
        """Part ``n`` as the server holds it, if it holds these bytes: journaled, or proven from ListParts."""
        prior = self.recorded.get(n)
        if prior is not None and prior.checksum == _part_tag(crc) and prior.size == size:
            return CompletedPart(n, prior.etag, crc)
        if listed is not None and listed.size == size and _proves(listed, crc, md5):
            if self.journal is not None:
                self.journal.record_part(self.upload_id, PartRecord(n, size, listed.etag, _part_tag(crc)))
            return CompletedPart(n, listed.etag, crc)
        return None

    def _send_part(self, fd: int, n: int, offset: int, size: int, crc: int) -> CompletedPart:
        job = self.job

        def send(body: FileRegion) -> str:
            return job.store.upload_part(job.key, self.upload_id, n, body, size=size, crc32c=crc)

        # the server verifies the header; where it is not sent, the body is checked here
        etag = job.send(fd, offset, size, send, crc32c=None if job.server_checks else crc)
        assert etag is not None
        if self.journal is not None:
            self.journal.record_part(self.upload_id, PartRecord(n, size, etag, _part_tag(crc)))
        return CompletedPart(n, etag, crc)

    def _complete(self, parts: list[CompletedPart]) -> None:
        job = self.job
        if job.cancel.is_set():
            raise UploadInterrupted()
        job.store.complete_multipart(job.key, self.upload_id, parts)
        if self.journal is not None:
            self.journal.forget_multipart(self.upload_id)

    def _abandon(self) -> None:
        """Abort the upload on the server and forget it (best effort: the sweep retries)."""
        job = self.job
        if not self.upload_id:
            return
        try:
            job.store.abort_multipart(job.key, self.upload_id)
        except StoreError as exc:
            log.warning("upload.abort_failed", rec_id=job.rec_id, key=job.key, error=str(exc))
            return
        if self.journal is not None:
            self.journal.forget_multipart(self.upload_id)
