"""Is the rig recording, and may we upload now? Debounced activity → ``is_active()``; upload windows.

Sources, combined: writes inside any session that is not complete yet (fed
by the session watcher's inotify stream through :meth:`Activity.touch`), a
flag file whose presence means "recording", and recorder processes (psutil)
holding files open for writing under the recordings root. The rig counts as
active until ``quiet_seconds`` have passed with none of them; :meth:`Activity.reason`
says which source keeps it active (:data:`SOURCES`, the first of them when several do).
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

__all__ = ["SOURCES", "Activity", "build_activity", "in_upload_window", "lower_own_priority", "recorder_writing"]

#: what makes the rig active, as :meth:`Activity.reason` names it, first first: the flag file is
#: the rig saying so; a recorder process, what it does; writes in a session, what it leaves
SOURCES = ("flag_file", "recorder_process", "session_writes")


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
    """Thread-safe ``is_active()`` with a quiet period, remembering which source made it active."""

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
        #: source (one of :data:`SOURCES`) → when it was last seen
        self._seen: dict[str, float] = {}
        self._last_probe = float("-inf")
        self._lock = threading.Lock()

    def touch(self) -> None:
        """Something was written by the rig just now (in a session without a manifest)."""
        with self._lock:
            self._seen["session_writes"] = self._clock()

    def _poll_sources(self, now: float) -> None:
        if self.flag_file is not None and self.flag_file.exists():
            self._seen["flag_file"] = now
        if self.probe is not None and now - self._last_probe >= self.probe_interval:
            self._last_probe = now
            if self.probe():
                self._seen["recorder_process"] = now

    def _fresh(self, seen: float, now: float) -> bool:
        return now - seen < self.quiet_seconds or (self.quiet_seconds == 0 and seen == now)

    def reason(self) -> str | None:
        """The first of :data:`SOURCES` seen within ``quiet_seconds`` (one that keeps the rig
        active: steady while it does); None when the rig is quiet."""
        with self._lock:
            now = self._clock()
            self._poll_sources(now)
            for source in SOURCES:
                seen = self._seen.get(source)
                if seen is not None and self._fresh(seen, now):
                    return source
        return None

    def is_active(self) -> bool:
        """True while recording, and for ``quiet_seconds`` after the last sign of it."""
        return self.reason() is not None


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
