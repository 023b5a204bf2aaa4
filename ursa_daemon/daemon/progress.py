"""Live progress of the session in flight: what ``status`` (and a drain's bar) show while bytes move."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ursa_daemon.errors import UrsaError
from ursa_daemon.log import get_logger

if TYPE_CHECKING:
    from ursa_daemon.daemon.state import StateDB
    from ursa_daemon.transfer.ingest import UploadProgress

__all__ = ["DEFAULT_PROGRESS_WRITE_S", "LiveProgress"]

log = get_logger("ursa.daemon")

#: ``status`` progress is written at most this often while bytes move (a file done always writes)
DEFAULT_PROGRESS_WRITE_S = 0.5


class LiveProgress:
    """What ``status`` shows of one session while it moves, written to the state DB.

    Hashing: files and bytes hashed. Uploading: files decided (uploaded or
    skipped) plus, for the files in flight, what earlier attempts kept (confirmed
    multipart parts, the local profile's partial copy) and what this attempt sent.
    Writes are throttled to one per ``DEFAULT_PROGRESS_WRITE_S`` (a file done
    always writes); when paused, only what the store kept is counted.
    """

    def __init__(
        self,
        state: StateDB,
        rec_id: str,
        files_total: int,
        bytes_total: int,
        on_change: Callable[[str, str, int, int], None] | None = None,
    ) -> None:
        """``on_change(rec_id, phase, bytes_done, bytes_total)`` is told of every change, unthrottled."""
        self.state = state
        self.on_change = on_change
        self.phase = "hashing"
        self.rec_id = rec_id
        self.files_total = files_total
        self.bytes_total = bytes_total
        self.files_done = 0
        self.bytes_base = 0
        self.in_flight: dict[str, int] = {}
        self.kept: dict[str, int] = {}
        self._lock = threading.Lock()
        self._last_write = 0.0

    def _bytes(self) -> int:
        flight = sum(self.in_flight.values()) + sum(self.kept.values())
        return min(self.bytes_total, self.bytes_base + flight)

    def _write(self, *, force: bool = False) -> None:
        if self.on_change is not None:
            try:
                self.on_change(self.rec_id, self.phase, self._bytes(), self.bytes_total)
            except Exception as exc:  # a broken display must not stop the upload
                log.warning("session.progress_callback_failed", rec_id=self.rec_id, error=repr(exc))
                self.on_change = None
        now = time.monotonic()
        if not force and now - self._last_write < DEFAULT_PROGRESS_WRITE_S:
            return
        self._last_write = now
        try:
            self.state.set_progress(
                self.rec_id, files_done=self.files_done, files_total=self.files_total,
                bytes_done=self._bytes(), bytes_total=self.bytes_total,
            )
        except UrsaError as exc:  # progress is informative: a failed write must not stop the upload
            log.warning("session.progress_write_failed", rec_id=self.rec_id, error=str(exc))

    def begin(self) -> None:
        with self._lock:
            self._write(force=True)
        self.state.start_moving(self.rec_id, bytes_from=0)

    def hashed(self, n: int) -> None:
        with self._lock:
            self.bytes_base += n
            self._write()

    def file_hashed(self, _rel_path: str) -> None:
        with self._lock:
            self.files_done += 1
            self._write()

    def uploading(self, parts: list[Any]) -> None:
        """Hashing is over: count again from the files decided, plus the parts kept by earlier attempts."""
        with self._lock:
            self.phase = "uploading"
            self.files_done = self.bytes_base = 0
            self.kept = {p.rel_path: p.bytes_done for p in parts}
            self._write(force=True)
            start = self._bytes()
        self.state.start_moving(self.rec_id, bytes_from=start)

    def sent(self, rel_path: str, n: int) -> None:
        """``n`` more bytes of ``rel_path`` went out (or, on the local profile, were found kept)."""
        with self._lock:
            self.in_flight[rel_path] = self.in_flight.get(rel_path, 0) + n
            self._write()

    def file_done(self, p: UploadProgress) -> None:
        with self._lock:
            self.files_done = p.files_done
            self.bytes_base = p.bytes_processed
            self.in_flight.pop(p.current_file, None)
            self.kept.pop(p.current_file, None)
            self._write(force=True)

    def paused(self, parts: list[Any], kept: dict[str, int]) -> None:
        """Stopped: what the store keeps is the truth (bytes in flight were lost)."""
        with self._lock:
            self.in_flight = {}
            self.kept = {**{p.rel_path: p.bytes_done for p in parts}, **kept}
            self._write(force=True)
