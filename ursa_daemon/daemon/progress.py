"""Live progress of the session in flight: what ``status`` (and a drain's bar) show while bytes move."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from ursa_daemon.errors import UrsaError
from ursa_daemon.log import get_logger

if TYPE_CHECKING:
    from ursa_daemon.daemon.state import StateDB
    from ursa_daemon.transfer.tally import Tally

__all__ = ["DEFAULT_PROGRESS_WRITE_S", "LiveProgress"]

log = get_logger("ursa.daemon")

#: ``status`` progress is written at most this often while bytes move (a file done always writes)
DEFAULT_PROGRESS_WRITE_S = 0.5


class LiveProgress:
    """What ``status`` shows of one session while it moves, written to the state DB.

    ``bytes_done`` is the bytes of the session confirmed in the store, whatever the phase
    (:mod:`ursa_daemon.transfer.tally`): hashing leaves it as an earlier attempt left it, and
    shows its own progress as ``bytes_moved`` (``status``: ``bytes_hashed``). Uploading: the
    :class:`~ursa_daemon.transfer.tally.Tally` of the upload, with the bytes sent but not
    confirmed yet as ``bytes_sending``, and what this attempt itself sent as ``bytes_moved``
    (the rate counts only that: bytes kept from before a pause or found in the store did not
    move now). Writes are throttled to one per ``DEFAULT_PROGRESS_WRITE_S`` (a file done always
    writes); when paused, what was sending is dropped (a pause loses it).
    """

    def __init__(
        self,
        state: StateDB,
        rec_id: str,
        files_total: int,
        bytes_total: int,
        on_change: Callable[[str, str, int, int], None] | None = None,
    ) -> None:
        """``on_change(rec_id, phase, bytes, bytes_total)`` is told of every change, unthrottled
        (for a display: bytes hashed, or confirmed plus sending)."""
        self.state = state
        self.on_change = on_change
        self.phase = "hashing"
        self.rec_id = rec_id
        self.files_total = files_total
        self.bytes_total = bytes_total
        self.hashed = 0
        self.tally: Tally | None = None
        self._lock = threading.Lock()
        self._last_write = 0.0

    def _display(self) -> int:
        if self.tally is None:
            return min(self.bytes_total, self.hashed) if self.phase == "hashing" else 0
        return min(self.bytes_total, self.tally.bytes_done + self.tally.bytes_sending)

    def _write(self, *, force: bool = False) -> None:
        if self.on_change is not None:
            try:
                self.on_change(self.rec_id, self.phase, self._display(), self.bytes_total)
            except Exception as exc:  # a broken display must not stop the upload
                log.warning("session.progress_callback_failed", rec_id=self.rec_id, error=repr(exc))
                self.on_change = None
        now = time.monotonic()
        if not force and now - self._last_write < DEFAULT_PROGRESS_WRITE_S:
            return
        self._last_write = now
        t = self.tally
        try:
            if t is None:  # hashing: bytes_done and files_done stay what the store holds
                self.state.set_progress(
                    self.rec_id, files_done=None, files_total=self.files_total, bytes_done=None,
                    bytes_total=self.bytes_total, bytes_moved=self.hashed,
                )
            else:
                self.state.set_progress(
                    self.rec_id, files_done=t.files_done, files_total=t.files_total, bytes_done=t.bytes_done,
                    bytes_total=t.bytes_total, bytes_sending=t.bytes_sending, bytes_moved=t.bytes_moved,
                )
        except UrsaError as exc:  # progress is informative: a failed write must not stop the upload
            log.warning("session.progress_write_failed", rec_id=self.rec_id, error=str(exc))

    def begin(self) -> None:
        with self._lock:
            self._write(force=True)
        self.state.start_moving(self.rec_id, bytes_from=0)

    def hashed_bytes(self, n: int) -> None:
        with self._lock:
            self.hashed += n
            self._write()

    def uploading(self) -> None:
        """Hashing is over: the rate counts again, from what the upload sends itself."""
        with self._lock:
            self.phase = "uploading"
        self.state.start_moving(self.rec_id, bytes_from=0)

    def moved(self, t: Tally) -> None:
        """The upload's tally changed (from any of its threads; an older moment told late is ignored)."""
        with self._lock:
            if self.tally is not None and t.seq <= self.tally.seq:
                return
            self.tally = t
            self._write(force=t.file_done)

    def paused(self) -> None:
        """Stopped: what was being sent is lost; what the store keeps stays counted."""
        with self._lock:
            if self.tally is not None:
                self.tally = replace(self.tally, bytes_sending=0)
                self._write(force=True)
