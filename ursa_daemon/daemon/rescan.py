"""What ``run`` watches and looks at again, at a cost that does not grow with the rig's history.

A rig keeps thousands of sessions that are done (``registered``, or ``rejected`` until the
operator fixes them). ``run`` must notice when one changes, but must not pay for each of them
at every start or rescan:

- :class:`LiveWatches`: inotify watches the root itself (new, moved and deleted ``rec_*``
  entries) and, recursively, only the sessions the rig may still write (no manifest yet), at
  most :data:`LIVE_WATCHES_MAX` of them, the newest kept. A recursive watch over the whole root
  adds one inotify watch per directory of every session ever recorded, and walks them all at
  every start (20,000 watches at 10,000 sessions of two directories).
- :class:`DeepCheck`: the finished sessions are compared with the signature stored when they
  were done (every file's path, size and mtime: :func:`~ursa_daemon.session.tree_signature`)
  a few per tick of the main loop, at most :data:`DEEP_BUDGET_S` of CPU per tick (0.1 % of a
  core), rejected ones first (again at every rescan), then the newest. The first cycle waits
  :data:`DEEP_FIRST_S` (or ``watch.rescan_seconds`` when shorter), so the minute of a start
  pays for nothing but the start. A cycle over all of them starts at a rescan
  (``watch.rescan_seconds``) once the previous one ended, so a change inside a finished
  session that no event told is caught within ``rescan_seconds`` plus one cycle. A cycle
  lasts what stat'ing every file of every done session costs at 0.1 % of a core: ~60 µs of
  CPU for a session of a few files, so one rescan (300 s) up to ~5,000 such sessions, ~10
  minutes at 10,000; sessions of many files take proportionally longer, and a machine so slow
  that one session exceeds the budget still checks one per tick (0.5 s).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from ursa_daemon.log import get_logger

if TYPE_CHECKING:
    from watchdog.events import FileSystemEventHandler
    from watchdog.observers.api import BaseObserver, ObservedWatch

__all__ = ["DEEP_BUDGET_S", "DEEP_FIRST_S", "LIVE_WATCHES_MAX", "DeepCheck", "LiveWatches"]

log = get_logger("ursa.daemon")

#: CPU (seconds, this thread) the deep check may take per tick of the main loop (0.5 s)
DEEP_BUDGET_S = 0.0005
#: how long after ``run`` starts the first cycle waits (at most ``watch.rescan_seconds``)
DEEP_FIRST_S = 60.0
#: sessions watched recursively at once (the rig writes one or two at a time)
LIVE_WATCHES_MAX = 64


class DeepCheck:
    """The finished sessions (their names) still to compare in the current cycle (see the module)."""

    def __init__(self, budget_s: float = DEEP_BUDGET_S) -> None:
        self.budget_s = budget_s
        self.queue: deque[str] = deque()
        #: cycles begun (a test waits on it); when the current one began (monotonic)
        self.cycles = 0
        self.started_at: float | None = None
        #: no step before this (monotonic): see :data:`DEEP_FIRST_S`
        self.not_before = 0.0

    def refill(self, rejected: Iterable[str], registered: Iterable[str]) -> bool:
        """Begin a cycle over these sessions (rec_ids), unless one is still under way (True: begun).
        Rejected ones first (the operator's fix is what is waited for), then the newest (rec_ids
        begin with their date). A cycle under way gets the rejected ones again at its front: a
        fixed session waits one rescan, not the end of a long cycle."""
        if self.queue:
            self.queue.extendleft(sorted(rejected))  # (extendleft reverses: the newest first)
            return False
        self.queue.extend(sorted(rejected, reverse=True))
        self.queue.extend(sorted(registered, reverse=True))
        self.cycles += 1
        self.started_at = time.monotonic()
        return True

    def step(self, check: Callable[[str], None]) -> int:
        """``check`` the next sessions: at least one, then while this tick's budget lasts."""
        if not self.queue or time.monotonic() < self.not_before:
            return 0
        t0 = time.thread_time()
        n = 0
        while self.queue:
            check(self.queue.popleft())
            n += 1
            if time.thread_time() - t0 >= self.budget_s:
                break
        return n


class LiveWatches:
    """Recursive watches on the sessions the rig may still be writing (see the module)."""

    def __init__(self, observer: BaseObserver, handler: FileSystemEventHandler,
                 limit: int = LIVE_WATCHES_MAX) -> None:
        self.observer = observer
        self.handler = handler
        self.limit = limit
        self._lock = threading.Lock()
        self._watches: dict[Path, ObservedWatch | None] = {}

    def __contains__(self, rec_dir: object) -> bool:
        with self._lock:
            return rec_dir in self._watches

    def __len__(self) -> int:
        with self._lock:
            return len(self._watches)

    def add(self, rec_dir: Path) -> bool:
        """Watch ``rec_dir`` and everything under it (a link is never followed, so never watched);
        when :attr:`limit` are watched, the oldest (by name: rec_ids begin with their date) makes
        room for a newer one. True when it is watched (now or already)."""
        with self._lock:
            if rec_dir in self._watches:  # (asked at every event inside it: answered without a syscall)
                return True
        if rec_dir.is_symlink():
            return False
        evict: Path | None = None
        with self._lock:
            if rec_dir in self._watches:
                return True
            if len(self._watches) >= self.limit:
                evict = min(self._watches, key=lambda p: p.name)
                if evict.name >= rec_dir.name:
                    return False
            self._watches[rec_dir] = None  # taken: a concurrent add of the same one stops here
        if evict is not None:
            self.discard(evict)
        try:
            watch = self.observer.schedule(self.handler, str(rec_dir), recursive=True)
        except OSError as exc:  # gone already, or out of inotify watches: the rescans still see it
            log.debug("daemon.watch_failed", rec_id=rec_dir.name, error=str(exc))
            with self._lock:
                self._watches.pop(rec_dir, None)
            return False
        with self._lock:
            if rec_dir in self._watches:
                self._watches[rec_dir] = watch
                return True
        self._unschedule(watch)  # discarded meanwhile
        return False

    def discard(self, rec_dir: Path) -> None:
        """Stop watching ``rec_dir`` (its work is done, or it is gone)."""
        with self._lock:
            watch = self._watches.pop(rec_dir, None)
        if watch is not None:
            self._unschedule(watch)

    def _unschedule(self, watch: ObservedWatch) -> None:
        # unscheduled already (the observer stopped), or its directory is gone
        with contextlib.suppress(KeyError, OSError):
            self.observer.unschedule(watch)
