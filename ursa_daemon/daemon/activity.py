"""Is the rig recording, and may we upload now? Debounced activity → ``is_active()``; upload windows.

Sources, combined: writes inside any session that is not complete yet (fed
by the session watcher's inotify stream through :meth:`Activity.touch`), a
flag file whose presence means "recording", and recorder processes (psutil)
holding files open for writing under the recordings root. The rig counts as
active until ``quiet_seconds`` have passed with none of them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from datetime import time as dtime
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

if TYPE_CHECKING:
    from ursa_daemon.config import Config

__all__ = ["Activity", "build_activity", "in_upload_window", "lower_own_priority", "recorder_writing"]


def recorder_writing(names: Iterable[str], root: Path) -> bool:
    """True when a process named in ``names`` has a file under ``root`` open for writing."""
    wanted = set(names)
    if not wanted:
        return False
    for proc in psutil.process_iter(["name"]):
        if proc.info.get("name") not in wanted:
            continue
        try:
            for f in proc.open_files():
                if f.mode in ("w", "a", "r+", "a+", "w+") and Path(f.path).is_relative_to(root):
                    return True
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return False


class Activity:
    """Thread-safe ``is_active()`` with a quiet period."""

    def __init__(
        self,
        *,
        quiet_seconds: float,
        flag_file: Path | None = None,
        probe: Callable[[], bool] | None = None,
        probe_interval: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.quiet_seconds = quiet_seconds
        self.flag_file = flag_file
        self.probe = probe
        self.probe_interval = probe_interval
        self._clock = clock
        self._last_activity = float("-inf")
        self._last_probe = float("-inf")
        self._lock = threading.Lock()

    def touch(self) -> None:
        """Something was written by the rig just now."""
        with self._lock:
            self._last_activity = self._clock()

    def _poll_sources(self, now: float) -> None:
        if self.flag_file is not None and self.flag_file.exists():
            self._last_activity = now
        if self.probe is not None and now - self._last_probe >= self.probe_interval:
            self._last_probe = now
            if self.probe():
                self._last_activity = now

    def is_active(self) -> bool:
        """True while recording, and for ``quiet_seconds`` after the last sign of it."""
        with self._lock:
            now = self._clock()
            self._poll_sources(now)
            return now - self._last_activity < self.quiet_seconds or (
                self.quiet_seconds == 0 and self._last_activity == now
            )


def lower_own_priority() -> None:
    """Nice 10 and the idle I/O class, so a recording always wins."""
    me = psutil.Process()
    try:
        me.nice(max(me.nice(), 10))
        if hasattr(psutil, "IOPRIO_CLASS_IDLE"):
            me.ionice(psutil.IOPRIO_CLASS_IDLE)
    except (psutil.AccessDenied, OSError):
        pass


def build_activity(config: Config) -> Activity:
    """The configured sources: the flag file, recorder processes under the recordings root."""
    cfg = config.activity
    root = config.recordings_root
    probe = (lambda: recorder_writing(cfg.recorder_processes, root)) if cfg.recorder_processes else None
    return Activity(quiet_seconds=cfg.quiet_seconds, flag_file=cfg.flag_file, probe=probe)


def in_upload_window(windows: list[str], now: datetime | None = None) -> bool:
    """True when no windows are configured, or local time is inside one ``HH:MM-HH:MM``
    (a window may wrap midnight: ``19:00-07:00``)."""
    if not windows:
        return True
    t = (now or datetime.now()).time()
    for w in windows:
        start_s, end_s = w.split("-")
        start, end = dtime.fromisoformat(start_s), dtime.fromisoformat(end_s)
        inside = start <= t < end if start <= end else (t >= start or t < end)
        if inside:
            return True
    return False
