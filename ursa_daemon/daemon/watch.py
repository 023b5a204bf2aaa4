"""``ursa-daemon run``: the inotify watcher, the periodic jobs and the main loop.

- A watchdog observer on ``recordings_root`` notes the ``rec_*`` entries that appear,
  move or go, and every change inside the sessions the rig may still write (no manifest
  yet, see ``daemon/rescan.py``); a write inside a session without a manifest is rig
  activity (the rig is recording) and pauses uploads.
- A scan of the root at start-up and every ``watch.rescan_seconds`` is the safety net
  for missed events: sessions not done yet become candidates, and the done ones
  (registered, rejected) are compared with their stored signature a few per tick
  (``DeepCheck``), so neither costs more with the rig's history; failed sessions come
  back when their backoff expires.
- One worker processes one session at a time; the rig's activity, an upload
  window, or SIGTERM stop its streams before their next chunk.
- A sweep (soon after start, then every ``SWEEP_S``) aborts the multipart
  uploads the state knows that will never be completed: their session is
  registered, rejected or forgotten, or no part was confirmed for
  ``STALE_UPLOAD_S``.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from apscheduler.schedulers.background import BackgroundScheduler
from watchdog.events import (
    DirCreatedEvent,
    DirModifiedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from ursa_daemon.daemon.activity import SOURCES, build_activity
from ursa_daemon.daemon.metrics import METRICS
from ursa_daemon.daemon.metrics import serve as serve_metrics
from ursa_daemon.daemon.rescan import DEEP_FIRST_S, DeepCheck, LiveWatches
from ursa_daemon.daemon.rigs import RigReporter
from ursa_daemon.daemon.state_schema import SessionRecord, SessionState
from ursa_daemon.daemon.systemd import install_stop_handlers, sd_notify
from ursa_daemon.daemon.worker import report_unexpected
from ursa_daemon.errors import UrsaError
from ursa_daemon.log import get_logger
from ursa_daemon.session import REC_ID_RE, has_manifest, session_names, session_of, tree_signature
from ursa_daemon.transfer.abort import abort_uploads
from ursa_daemon.transfer.local_copy import sweep_partials

if TYPE_CHECKING:
    from ursa_daemon.daemon.outcome import Outcome
    from ursa_daemon.daemon.worker import Worker

__all__ = ["Runner"]

log = get_logger("ursa.daemon")

#: events that mean "bytes or names changed" (reads and opens are not changes)
_CHANGE_EVENTS = (
    FileCreatedEvent,
    FileModifiedEvent,
    FileDeletedEvent,
    FileMovedEvent,
    FileClosedEvent,
    DirCreatedEvent,
    DirModifiedEvent,
)
TICK_S = 0.5
HEARTBEAT_S = 5.0
#: how often, and how soon after start, stale multipart uploads are aborted
SWEEP_S = 3600.0
SWEEP_FIRST_S = 60.0
#: what ``run`` sheds by re-executing itself when idle (imported by the first session worked on)
HEAVY_MODULES = ("lancedb", "pyarrow")
#: a multipart upload with no part confirmed for this long is given up (R2 drops them after 7 days)
STALE_UPLOAD_S = 6 * 86400.0


class _Events(FileSystemEventHandler):
    def __init__(self, runner: Runner) -> None:
        self.runner = runner

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, _CHANGE_EVENTS):
            path = event.src_path if isinstance(event.src_path, str) else event.src_path.decode()
            self.runner.changed(path)


class Runner:
    """The long-running loop around a :class:`~ursa_daemon.daemon.worker.Worker` (the Daemon)."""

    def __init__(self, daemon: Worker) -> None:
        self.daemon = daemon
        self.config = daemon.config
        self.root = Path(self.config.recordings_root)
        if daemon.activity is None:
            daemon.activity = build_activity(self.config)
        self.activity = daemon.activity
        self.last_change: dict[Path, float] = {}
        self.lock = threading.Lock()
        self.rescan_due = threading.Event()
        self.rescan_due.set()
        #: the done sessions still to compare in this cycle; the sessions watched recursively
        self.deep = DeepCheck()
        #: where the sessions are (the root's parent when the root is itself one)
        self._sessions_dir = self.root.parent if self._root_is_session() else self.root
        self.deep.not_before = time.monotonic() + min(DEEP_FIRST_S, self.config.watch.rescan_seconds)
        self.live: LiveWatches | None = None
        self.active_reported = False
        #: set by :meth:`run` when it returned to be re-executed (see ``shed``), with the
        #: environment that hands ``/metrics`` (its socket, its counters) to the next image
        self.shed_requested = False
        self.handover: dict[str, str] = {}
        self._worked_at: float | None = None
        #: the pause in progress (its first reason, since when), logged once as ``daemon.paused``
        self._paused_for: str | None = None
        self._paused_at = 0.0
        daemon.on_pause_change = self._pause_changed

    # -- events -----------------------------------------------------------

    def changed(self, path: str) -> None:
        rec_dir = session_of(self.root, path)
        if rec_dir is None:
            return
        with self.lock:
            new = rec_dir not in self.last_change
            self.last_change[rec_dir] = time.time()
        if new:
            self.daemon.note_discovered(rec_dir)
        if not has_manifest(rec_dir):
            self.activity.touch()  # the rig is writing a session that is not complete
            if self.live is not None:
                self.live.add(rec_dir)  # and its next writes are seen too

    # -- loop -------------------------------------------------------------

    def run(self, *, shed: bool = False, shed_from: dict[str, Any] | None = None) -> None:
        """Until SIGTERM/SIGINT. With ``shed`` (the ``run`` command), also return with
        :attr:`shed_requested` set once nothing was to do for ``watch.shed_after_idle_seconds``
        after a session brought the catalog stack in: the caller re-executes the process.
        ``shed_from`` (what the previous image handed over, see ``Metrics.take_over``): this
        image continues that one, so it says ``daemon.shed_done``, not ``daemon.started``."""
        stop = self.daemon.stopping
        self._write_pause(None)  # what an earlier process left is not so any more
        install_stop_handlers(stop)
        # a re-executed image starts with them blocked, so none is lost in between: now they stop us
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
        self.root.mkdir(parents=True, exist_ok=True)
        observer = Observer()
        handler = _Events(self)
        # the root's own entries; a session is watched inside only while the rig may write it
        observer.schedule(handler, str(self.root), recursive=self._root_is_session())
        observer.start()
        self.live = LiveWatches(observer, handler)
        # apscheduler runs each job in its executor's pool (a slow sweep delays no heartbeat) with
        # max_instances=1 (a job never overlaps itself) and coalesce (missed runs are not made up)
        scheduler = BackgroundScheduler(daemon=True, job_defaults={"coalesce": True, "max_instances": 1})
        jobs = (
            ("rescan", self.config.watch.rescan_seconds, self.rescan_due.set, None),
            ("heartbeat", HEARTBEAT_S, self._heartbeat, None),
            ("retries", self.config.watch.retry_check_seconds, self._queue_due_retries, None),
            ("sweep_uploads", SWEEP_S, self.sweep_uploads, datetime.now() + timedelta(seconds=SWEEP_FIRST_S)),
        )
        for name, seconds, job, first in jobs:
            # (next_run_time=None would add the job paused: pass it only when it is a time)
            when = {"next_run_time": first} if first is not None else {}
            scheduler.add_job(_guarded(job, name), "interval", seconds=seconds, id=name, **when)
        scheduler.start()
        metrics_server = serve_metrics(
            self.config, self.daemon.state, pending_dirs=self._queued_dirs, paused=self.daemon.pause_reason
        )
        rig = RigReporter.for_worker(
            self.daemon, "run", upload_rate=METRICS.upload_rate, started_at=METRICS.started_at,
            queued=self._queued_dirs,
        ).start()
        if shed_from is None:
            log.info("daemon.started", root=str(self.root), profile=self.config.profile, rig_id=rig.rig_id)
        else:
            log.info("daemon.shed_done", rig_id=rig.rig_id, rss_mib=_rss_mib(),
                     elapsed_s=round(max(0.0, time.time() - float(shed_from.get("shed_at") or 0)), 3))
        sd_notify("READY=1\nSTATUS=watching " + str(self.root))
        try:
            while not stop.is_set():
                try:
                    rec_dir = self._next_session()
                except Exception as exc:  # a scan that fails (a root gone, a state write) stops nothing
                    if not report_unexpected(exc, "daemon.scan_failed"):
                        log.warning("daemon.scan_failed", error=f"{type(exc).__name__}: {exc}")
                    stop.wait(TICK_S)
                    continue
                if rec_dir is None:
                    if shed and self._shed_due():
                        self.shed_requested = True
                        break
                    stop.wait(TICK_S)
                    continue
                outcome = self._process(rec_dir)  # the session's error boundary: never raises
                self._worked_at = time.monotonic()
                if outcome.status == "paused":  # ingest logged session.paused
                    self._wait_until_quiet()
        finally:
            shedding = self.shed_requested  # the idle re-exec is no stop: monitoring sees nothing of it
            sd_notify("STATUS=re-executing to shed memory" if shedding else "STOPPING=1")
            rig.stop(final=not self.shed_requested)  # the idle re-exec is no stop to the fleet
            if shedding:
                self.handover = metrics_server.hand_over()
            else:
                metrics_server.close()
            scheduler.shutdown(wait=False)
            observer.stop()
            observer.join(timeout=2)
            if not shedding:
                self.daemon.on_pause_change = None
                self._write_pause(None)
                log.info("daemon.stopped")

    def _process(self, rec_dir: Path) -> Outcome:
        """``process``, with the pause reason looked at every ``TICK_S`` meanwhile (registering a
        session polls nothing): a recording that starts shows in ``status`` and the metrics at once."""
        done = threading.Event()

        def look() -> None:
            while not done.wait(TICK_S):
                self.daemon.pause_reason()

        watcher = threading.Thread(target=look, name="ursa-pause-watch", daemon=True)
        watcher.start()
        try:
            return self.daemon.process(rec_dir)
        finally:
            done.set()
            watcher.join()

    def _pause_changed(self, reason: str | None) -> None:
        """The worker's pause reason changed (told at once, under its lock): a pause is logged once
        as ``daemon.paused`` and paired by ``daemon.resumed`` (a stop is no pause: ``daemon.stopping``
        says so), and the state's meta says it for ``status`` and ``ursa_rig_recording``."""
        if reason is not None and reason != "stopping" and self._paused_for is None:
            self._paused_for, self._paused_at = reason, time.monotonic()
            log.info("daemon.paused", reason=reason)
        elif reason is None and self._paused_for is not None:
            log.info("daemon.resumed", reason=self._paused_for, paused_s=round(time.monotonic() - self._paused_at, 1))
            self._paused_for = None
        self._write_pause(reason)

    def _write_pause(self, reason: str | None) -> None:
        """``pause_reason`` and ``active`` (the rig records) in the state's meta (a state database
        that refuses is said, and stops nothing: the pause itself holds)."""
        state = self.daemon.state
        try:
            state.set_meta("pause_reason", reason or "")
            if reason != "stopping":  # the stop hides whether the rig records: leave it as it was
                active = reason in SOURCES
                if active != self.active_reported or reason is None:
                    state.set_meta("active", "1" if active else "0")
                    self.active_reported = active
        except UrsaError as exc:
            log.warning("daemon.pause_report_failed", error=str(exc))

    def _shed_due(self) -> bool:
        """Idle long enough after work that brought in the catalog stack, nothing queued or settling."""
        after = self.config.watch.shed_after_idle_seconds
        if after <= 0 or self._worked_at is None or time.monotonic() - self._worked_at < after:
            return False
        if not any(m in sys.modules for m in HEAVY_MODULES):
            return False
        with self.lock:
            queued = bool(self.last_change)
        return not queued and not self.daemon.should_pause()

    def _heartbeat(self) -> None:
        reason = self.daemon.pause_reason()  # a change went to the state's meta when it was seen
        counts = self.daemon.state.counts()
        status = ", ".join(f"{k}={v}" for k, v in sorted(counts.items())) or "idle"
        paused = "" if reason is None else ("recording, " if reason in SOURCES else "") + f"paused ({reason}); "
        sd_notify(f"WATCHDOG=1\nSTATUS={paused}{status}")

    def sweep_uploads(self, stale_after_s: float = STALE_UPLOAD_S) -> int:
        """Abort the multipart uploads that will not be continued (how many were), and drop the
        local profile's partial copies that will not be continued either."""
        state = self.daemon.state
        if self.config.active_profile.kind == "local":
            self._sweep_partials(stale_after_s)
        stale = state.stale_multipart_uploads(older_than=time.time() - stale_after_s)
        if not stale:
            return 0
        try:
            store = self.daemon.data.store("raw_rw")
        except UrsaError as exc:  # credentials gone: try again next time
            log.warning("upload.sweep_failed", error=str(exc))
            return 0
        n = abort_uploads(store, state, stale)
        log.info("upload.swept", aborted=n, stale=len(stale))
        return n

    def _sweep_partials(self, stale_after_s: float) -> None:
        state = self.daemon.state

        def finished(rec_id: str) -> bool:  # asked for the few sessions with partials, not the history
            rec = state.session(rec_id)
            return rec is not None and rec.state in (SessionState.REGISTERED, SessionState.REJECTED)

        try:
            swept = sweep_partials(
                self.daemon.data.store("raw_rw"),
                untouched_since=time.time() - stale_after_s,
                finished=finished,
            )
        except (UrsaError, OSError) as exc:  # a sweep that fails stops nothing: next time
            log.warning("upload.sweep_failed", error=str(exc))
            return
        for rec_id in swept:
            log.info("upload.partials_swept", rec_id=rec_id)

    def _queued_dirs(self) -> list[Path]:
        """Session directories waiting for the worker (for the metrics' oldest pending age)."""
        with self.lock:
            return list(self.last_change)

    def _queue_due_retries(self) -> None:
        """Failed sessions, and dual-node halves waiting for another node, whose backoff
        has expired become candidates again."""
        now = time.time()
        due = [*self.daemon.state.sessions(SessionState.FAILED), *self.daemon.state.sessions(SessionState.REGISTERING)]
        for rec in due:
            if (rec.next_attempt_at or 0) <= now:
                rec_dir = Path(rec.root) / rec.rec_id
                with self.lock:
                    self.last_change.setdefault(rec_dir, 0.0)

    def _wait_until_quiet(self) -> None:
        """Until uploads may go on (``daemon.resumed`` is logged as the pause reason goes)."""
        stop = self.daemon.stopping
        while not stop.is_set() and self.daemon.should_pause():
            stop.wait(TICK_S)

    def _next_session(self) -> Path | None:
        """The next complete session that needs work, or None."""
        if self.daemon.should_pause():
            return None
        if self.rescan_due.is_set():
            self.rescan_due.clear()
            self._full_scan()
        self.deep.step(self._deep_check)
        settle = self.config.watch.settle_seconds
        now = time.time()
        with self.lock:
            candidates = sorted(self.last_change.items(), key=lambda kv: kv[1])
        for rec_dir, changed_at in candidates:
            if now - changed_at < settle:
                continue
            if not rec_dir.is_dir() and not rec_dir.is_symlink():  # a link is reported, not dropped
                with self.lock:
                    self.last_change.pop(rec_dir, None)
                self._unwatch(rec_dir)
                continue
            if not has_manifest(rec_dir):
                continue
            newest, _ = tree_signature(rec_dir)
            if now - newest < settle:
                with self.lock:
                    self.last_change[rec_dir] = newest
                continue
            if self._needs_work(rec_dir, now):
                return rec_dir
            with self.lock:
                if self.last_change.get(rec_dir) == changed_at:
                    del self.last_change[rec_dir]
                    dropped = True
                else:
                    dropped = False
            if dropped:
                self._unwatch(rec_dir)
        return None

    def _unwatch(self, rec_dir: Path) -> None:
        if self.live is not None:
            self.live.discard(rec_dir)

    def _needs_work(self, rec_dir: Path, now: float) -> bool:
        rec = self.daemon.state.session(rec_dir.name)
        if rec is None:
            return True
        if rec.state in (SessionState.REGISTERED, SessionState.REJECTED):
            _, sig = tree_signature(rec_dir)
            return sig != rec.signature
        return not _backing_off(rec, now)

    def _full_scan(self) -> None:
        """Every session under the root not done yet becomes a candidate (settle still applies);
        the done ones (registered, rejected) go to the :class:`DeepCheck`, not read here: one
        ``scandir`` of the root and one query, whatever the history."""
        now = time.time()
        done = self.daemon.state.states_of((SessionState.REGISTERED, SessionState.REJECTED))
        rejected: list[str] = []
        registered: list[str] = []
        unwritten: list[Path] = []  # no manifest: the rig may be writing them
        names = [self.root.name] if self._root_is_session() else session_names(self.root)
        for name in names:
            st = done.get(name)
            if st is not None:
                (rejected if st is SessionState.REJECTED else registered).append(name)
                continue
            path = self._sessions_dir / name
            rec = self.daemon.state.session(name)
            if rec is None:
                self.daemon.note_discovered(path)
            elif rec.state in (SessionState.REGISTERED, SessionState.REJECTED) or _backing_off(rec, now):
                continue  # done since the query, or waiting for its retry
            try:
                newest, _ = tree_signature(path)
            except FileNotFoundError:
                continue
            with self.lock:
                self.last_change[path] = min(self.last_change.get(path, newest), newest)
            if not has_manifest(path):
                unwritten.append(path)
        for path in reversed(unwritten):  # the newest first: when too many, the oldest are not watched
            if self.live is not None:
                self.live.add(path)
        self.deep.refill(rejected, registered)
        log.debug("daemon.rescan", sessions=len(names))

    def _root_is_session(self) -> bool:
        """``recordings_root`` is itself one ``rec_*`` session (then that one is the only one)."""
        return bool(REC_ID_RE.match(self.root.name)) and self.root.is_dir()

    def _deep_check(self, rec_id: str) -> None:
        """A done session whose files are no longer those it was done with becomes a candidate
        (``_needs_work`` compares again once it settled)."""
        rec_dir = self._sessions_dir / rec_id
        rec = self.daemon.state.session(rec_id)
        if rec is None or rec.state not in (SessionState.REGISTERED, SessionState.REJECTED):
            return  # forgotten, or back in work: the rescans see it as any other
        try:
            newest, sig = tree_signature(rec_dir)
        except FileNotFoundError:
            return  # gone: nothing to do
        if sig != rec.signature:
            with self.lock:
                self.last_change[rec_dir] = min(self.last_change.get(rec_dir, newest), newest)


def _rss_mib() -> float:
    import psutil

    return round(float(psutil.Process().memory_info().rss) / 2**20, 1)


def _guarded(job: Callable[[], object], name: str) -> Callable[[], None]:
    """``job`` for the scheduler: an exception it raises is logged (``daemon.job_failed``; ERROR with
    the traceback when it is a bug) and the job runs again at its next time."""

    def run() -> None:
        try:
            job()
        except Exception as exc:
            if not report_unexpected(exc, "daemon.job_failed", job=name):
                log.warning("daemon.job_failed", job=name, error=f"{type(exc).__name__}: {exc}")

    return run


def _backing_off(rec: SessionRecord, now: float) -> bool:
    """A failed session, or a dual-node half waiting for another node, before its next attempt."""
    return rec.state in (SessionState.FAILED, SessionState.REGISTERING) and (rec.next_attempt_at or 0) > now
