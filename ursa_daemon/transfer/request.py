"""One file's requests on a part-level store (S3): open, send with retries, check it did not move.

:class:`FileJob` is what the part-level paths of one file share: the file is
opened at the size (and mtime) it was hashed at, each request's body is a
:class:`~ursa_daemon.transfer.body.FileRegion` retried on transient errors
with a backoff the pause cancels, and after the last byte the file must still
be the one opened. :func:`put_stream` sends a file of up to one part in one PUT.
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ursa_daemon.errors import ChecksumMismatch, InputError, TransientStoreError
from ursa_daemon.log import get_logger
from ursa_daemon.session import FileEntry
from ursa_daemon.store.base import MultipartStore
from ursa_daemon.transfer.body import FileRegion, UploadInterrupted
from ursa_daemon.transfer.limits import RateLimiter, UploadLimits
from ursa_daemon.transfer.source import Seen, check_settled, file_changed, open_hashed
from ursa_daemon.transfer.wire import _Wire

__all__ = ["FileJob", "put_stream"]

log = get_logger("ursa.upload")

#: the same without a bandwidth cap (urllib3 asks for 128 KiB; a pause resets the socket anyway)
DEFAULT_UNCAPPED_SLICE_SIZE = 256 << 10
#: tries of one part (or streamed PUT) on transient errors, backoff doubling from/capped at
DEFAULT_PART_ATTEMPTS = 5
DEFAULT_BACKOFF_S = 0.5
DEFAULT_BACKOFF_CAP_S = 15.0


@dataclass
class FileJob:
    """What the part-level paths of one file share."""

    store: MultipartStore
    key: str
    path: Path
    entry: FileEntry
    rec_id: str
    limits: UploadLimits
    cancel: threading.Event
    limiter: RateLimiter
    on_bytes: Callable[[int], None] | None
    wire: _Wire | None = None
    #: (inode, device, size, mtime) when the file was opened for upload
    seen: Seen | None = None

    def changed(self, what: str) -> InputError:
        return file_changed(self.rec_id, self.entry, what)

    @property
    def server_checks(self) -> bool:
        """The store sends each body's checksum for the server to verify (S3, R2, SeaweedFS, MinIO do)."""
        return bool(getattr(self.store, "sends_checksums", False))

    def open(self) -> int:
        """Open the file; it must be the size (and, if hashing saw it, have the mtime) it was hashed at."""
        fd, self.seen = open_hashed(self.path, self.entry, self.rec_id)
        return fd

    def check_settled(self, fd: int) -> None:
        """After the last byte was read: still the same file, size and mtime as at :meth:`open`."""
        check_settled(fd, self.path, self.seen, self.entry, self.rec_id)

    def send(
        self,
        fd: int,
        offset: int,
        size: int,
        send: Callable[[FileRegion], str | None],
        *,
        sha256: str | None = None,
        crc32c: int | None = None,
    ) -> str | None:
        """One request whose body is ``size`` bytes at ``offset``, retried on transient errors.

        ``sha256`` / ``crc32c``: check the body as it goes against the value
        taken at hashing time. A server that finds the body does not match the
        checksum header (``ChecksumMismatch``) means the file changed.
        """
        for attempt in range(DEFAULT_PART_ATTEMPTS):
            if self.cancel.is_set():  # not even the headers of another request
                raise UploadInterrupted()
            region = FileRegion(
                fd,
                offset,
                size,
                cancel=self.cancel,
                limiter=self.limiter,
                changed=self.changed,
                # slices are the rate limiter's grain; uncapped, the HTTP layer's block size
                slice_size=self.limits.slice_size if self.limiter.rate else DEFAULT_UNCAPPED_SLICE_SIZE,
                on_bytes=self.on_bytes,
                sha256=sha256,
                crc32c=crc32c,
                wire=self.wire,
            )
            try:
                return send(region)
            except ChecksumMismatch:
                if region.error is not None:
                    raise region.error from None
                raise self.changed("bytes changed since it was hashed") from None
            except TransientStoreError as exc:
                if region.error is not None:
                    raise region.error from None
                if self.cancel.is_set():
                    raise UploadInterrupted() from None
                if attempt == DEFAULT_PART_ATTEMPTS - 1:
                    raise
                delay = min(DEFAULT_BACKOFF_CAP_S, DEFAULT_BACKOFF_S * 2**attempt) * random.uniform(0.75, 1.25)
                log.info("upload.retry", rec_id=self.rec_id, key=self.key, error=str(exc), retry_in_s=round(delay, 2))
                if self.cancel.wait(delay):
                    raise UploadInterrupted() from None
            except BaseException as exc:
                if region.error is not None and region.error is not exc:
                    raise region.error from None
                raise
            finally:
                region.close()  # the request is over: its socket is no longer ours to cut
        raise AssertionError("unreachable")


def put_stream(job: FileJob) -> None:
    """Files up to one part: one PUT, cut by a pause, checked as it goes.

    The body is held to the CRC32C taken when the file was hashed (its sha256
    again only when hashing took none, as for a file trusted from the state);
    the PUT carries the sha256, which the server verifies too."""
    fd = job.open()
    crcs = job.entry.part_crc32c
    crc = crcs[0] if len(crcs) == 1 and job.entry.part_size >= job.entry.size else None
    if job.server_checks:  # the PUT's sha256 header is verified by the server: no second pass here
        crc = None
    try:
        job.send(
            fd,
            0,
            job.entry.size,
            lambda body: job.store.put_stream(job.key, body, size=job.entry.size, sha256=job.entry.sha256 or ""),
            sha256=job.entry.sha256 if crc is None and not job.server_checks else None,
            crc32c=crc,
        )
        job.check_settled(fd)
    finally:
        os.close(fd)
