"""How much of one session is in the store: the one meaning of ``bytes_done``.

``bytes_done`` (the ``upload.*`` and ``session.*`` events, ``status``, :class:`UploadProgress`)
is the bytes of the session confirmed in the store: its files uploaded now or found there
already, plus, for a file not finished yet, what the store keeps of it: its confirmed
multipart parts (S3: of earlier attempts and of this one) or its partial copy (the local
profile, files over one slice: every byte written to it stays). Bytes sent but not confirmed
yet (a part or a single PUT in flight, a small local copy) are ``bytes_sending``: a pause
loses them, so they are never in ``bytes_done``, which therefore only grows while the
session's files stay the same (an upload the server forgot, restarted from zero, is the one
exception). ``bytes_moved`` is what this attempt sent itself, the rate's numerator: kept
bytes and files already in the store did not move now.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ursa_daemon.session import FileEntry
from ursa_daemon.store.base import MultipartRecord, PartRecord
from ursa_daemon.transfer.multipart_upload import UploadJournal

__all__ = ["SessionTally", "Tally", "TallyJournal"]


@dataclass(frozen=True)
class Tally:
    """One moment of a session's upload (``seq`` orders moments told from several threads)."""

    seq: int
    files_done: int
    files_total: int
    bytes_done: int
    bytes_sending: int
    bytes_moved: int
    bytes_total: int
    #: a file was just decided (uploaded or found in the store): worth writing down at once
    file_done: bool = False


class SessionTally:
    """The byte accounting of one session's upload; thread-safe. ``on_change(Tally)`` is told of
    every change once :meth:`start` was called (from the threads that made it)."""

    def __init__(self, files: Iterable[FileEntry], *, copies_kept_over: int | None = None,
                 on_change: Callable[[Tally], None] | None = None) -> None:
        """``copies_kept_over``: the local profile keeps the partial copy of a file larger than
        this (smaller ones are copied to a private file a pause drops); None: no copy is kept (S3)."""
        self.sizes = {f.rel_path: f.size for f in files}
        self.bytes_total = sum(self.sizes.values())
        self.copies_kept_over = copies_kept_over
        self.on_change = on_change
        self._lock = threading.Lock()
        self._seq = itertools.count(1)
        self._started = False
        self._files_done = 0
        self._decided = 0
        self._finished: set[str] = set()
        self._parts: dict[str, dict[int, int]] = {}  # confirmed parts of unfinished files
        self._copied: dict[str, int] = {}  # kept partial copies of unfinished files
        self._copy_start: dict[str, int] = {}  # ... as an earlier attempt left them
        self._sent: dict[str, int] = {}  # bytes sent now, not confirmed (or, local, this attempt's copy)
        self._moved = 0

    # -- what earlier attempts kept (before :meth:`start`) -------------------------

    def keep_parts(self, rel_path: str, parts: dict[int, int]) -> None:
        """Part number → size of the multipart upload of ``rel_path`` the journal holds."""
        with self._lock:
            self._parts[rel_path] = dict(parts)

    def keep_copy(self, rel_path: str, size: int) -> None:
        """The local profile's partial copy of ``rel_path`` holds ``size`` bytes."""
        with self._lock:
            if self._keeps_copy(rel_path):
                self._copied[rel_path] = self._copy_start[rel_path] = size

    def start(self) -> None:
        """From now on every change is told (the first telling: the counts as they are now)."""
        with self._lock:
            self._started = True
        self._tell(True)

    # -- as the upload goes ----------------------------------------------------------

    def sent(self, rel_path: str, n: int) -> None:
        """``n`` more bytes of ``rel_path`` went out (the local profile: were written to its copy;
        a resumed copy first tells the kept prefix it continues from)."""
        with self._lock:
            before = self._sent.get(rel_path, 0)
            self._sent[rel_path] = after = before + n
            if self._keeps_copy(rel_path):
                start = self._copy_start.get(rel_path, 0)
                self._moved += max(0, after - max(before, start))
                self._copied[rel_path] = max(self._copied.get(rel_path, 0), after)
            else:
                self._moved += n
        self._tell(False)

    def part_confirmed(self, rel_path: str, part: PartRecord) -> None:
        with self._lock:
            parts = self._parts.setdefault(rel_path, {})
            if part.number not in parts:
                self._sent[rel_path] = max(0, self._sent.get(rel_path, 0) - part.size)
            parts[part.number] = part.size
        self._tell(False)

    def upload_started(self, rel_path: str) -> None:
        """A new multipart upload of ``rel_path``: what an older one held is not kept."""
        with self._lock:
            self._parts.pop(rel_path, None)
        self._tell(False)

    def file_done(self, rel_path: str) -> Tally:
        """``rel_path`` is in the store (uploaded now, or found there): the moment after."""
        with self._lock:
            if rel_path not in self._finished:
                self._finished.add(rel_path)
                self._files_done += 1
                self._decided += self.sizes.get(rel_path, 0)
            for kept in (self._parts, self._copied, self._sent):
                kept.pop(rel_path, None)
        return self._tell(True)

    def now(self) -> Tally:
        with self._lock:
            return self._snapshot(False)

    # -- the figures ---------------------------------------------------------------------

    def _keeps_copy(self, rel_path: str) -> bool:
        return self.copies_kept_over is not None and self.sizes.get(rel_path, 0) > self.copies_kept_over

    def _held(self, rel_path: str) -> int:
        return sum(self._parts.get(rel_path, {}).values()) + self._copied.get(rel_path, 0)

    def _snapshot(self, file_done: bool) -> Tally:
        done = self._decided
        sending = 0
        for rel in {*self._parts, *self._copied, *self._sent}:
            size = self.sizes.get(rel, 0)
            held = min(size, self._held(rel))
            done += held
            if not self._keeps_copy(rel):
                sending += min(self._sent.get(rel, 0), size - held)
        return Tally(next(self._seq), self._files_done, len(self.sizes), done, sending, self._moved,
                     self.bytes_total, file_done)

    def _tell(self, file_done: bool) -> Tally:
        with self._lock:
            snap = self._snapshot(file_done)
            started = self._started
        if started and self.on_change is not None:
            self.on_change(snap)
        return snap


class TallyJournal:
    """An :class:`UploadJournal` that also tells a :class:`SessionTally` of each confirmed part
    and each new upload (so ``bytes_done`` follows the parts as the server confirms them)."""

    def __init__(self, journal: UploadJournal, tally: SessionTally, rec_id: str) -> None:
        self.journal = journal
        self.tally = tally
        self._files: dict[str, str] = {}  # upload id → rel_path
        for rec in journal.multipart_uploads(rec_id):
            self._files[rec.upload_id] = rec.rel_path
            if rec.rel_path in tally.sizes:
                tally.keep_parts(rec.rel_path, {n: p.size for n, p in journal.parts(rec.upload_id).items()})

    def multipart_upload(self, rec_id: str, rel_path: str) -> MultipartRecord | None:
        return self.journal.multipart_upload(rec_id, rel_path)

    def multipart_uploads(self, rec_id: str | None = None) -> list[MultipartRecord]:
        return self.journal.multipart_uploads(rec_id)

    def start_multipart(self, rec: MultipartRecord) -> None:
        self.journal.start_multipart(rec)
        self._files[rec.upload_id] = rec.rel_path
        self.tally.upload_started(rec.rel_path)

    def record_part(self, upload_id: str, part: PartRecord) -> None:
        self.journal.record_part(upload_id, part)
        rel = self._files.get(upload_id)
        if rel is not None:
            self.tally.part_confirmed(rel, part)

    def parts(self, upload_id: str) -> dict[int, PartRecord]:
        return self.journal.parts(upload_id)

    def forget_multipart(self, upload_id: str) -> None:
        self.journal.forget_multipart(upload_id)
