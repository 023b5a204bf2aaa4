"""The daemon: the state lock and the loops around the :class:`~ursa_daemon.daemon.worker.Worker`.

``Daemon.process(rec_dir)`` (the worker's) takes one session through SPEC section 5's
states, keeping every step in the SQLite state so a restart continues where it stopped.
``drain`` runs it over every complete session under some roots (``daemon/drain.py``);
``run`` adds the inotify watcher, the activity gate, the scheduler (retries, rescans,
upload windows, systemd watchdog) and signal handling (``daemon/watch.py``).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from ursa_daemon.config import Config
from ursa_daemon.daemon.activity import Activity, lower_own_priority
from ursa_daemon.daemon.drain import drain as drain_roots
from ursa_daemon.daemon.lock import StateLock
from ursa_daemon.daemon.outcome import DrainSummary, Outcome
from ursa_daemon.daemon.state import StateDB
from ursa_daemon.daemon.worker import Worker
from ursa_daemon.errors import CatalogError, CatalogPermissionError, StoreError, StorePermissionError
from ursa_daemon.log import get_logger
from ursa_daemon.session import SessionDir

__all__ = ["Daemon"]

log = get_logger("ursa.daemon")


class Daemon(Worker):
    """Owns the state lock, the state database and the write handles."""

    def __init__(self, config: Config, *, activity: Activity | None = None, offline_ok: bool = False) -> None:
        """``offline_ok`` (``run``): an unreachable store at start is not fatal; sessions fail and
        retry until it is back. ``drain`` wants to hear at once that there is no network.

        ``run`` opens no catalog at start (the catalog stack, lancedb and pyarrow, is imported
        with the first session to work on): it only checks that the stores answer.
        """
        self.lock = StateLock(config.state_dir)  # StateLocked → exit 3
        try:
            super().__init__(config, StateDB(config.state_dir, rebuild=True), activity=activity)
            self._connect(offline_ok)
        except BaseException:
            self.lock.close()
            raise

    def _connect(self, offline_ok: bool) -> None:
        try:
            if offline_ok:
                self._probe_stores()
            else:
                self._enable_writes()
        except (StoreError, CatalogError) as exc:
            if not offline_ok or isinstance(exc, StorePermissionError | CatalogPermissionError):
                raise
            # the store is unreachable (a rig booting offline): keep running; every session
            # fails and retries with backoff until it is back
            log.warning("daemon.store_unreachable", error=str(exc))

    def close(self) -> None:
        self.state.close()
        self.lock.close()

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def drain(
        self,
        roots: list[Path],
        *,
        on_session: Callable[[SessionDir], None] | None = None,
        on_outcome: Callable[[Outcome], None] | None = None,
        shard: tuple[int, int] | None = None,
        on_start: Callable[[int], None] | None = None,
        summary: DrainSummary | None = None,
    ) -> DrainSummary:
        """Every session under ``roots``, to the end; one failure stops nothing.

        Each session given ends in exactly one list of the summary: a session
        without a manifest is ``incomplete``; when ``stopping`` is set, the session
        in progress is ``interrupted`` (its progress kept) and the rest ``not_started``.
        ``summary`` (filled in as it goes) lets a signal handler report what is known;
        ``on_start`` is told how many sessions were found.
        ``shard=(K, N)``: only the sessions whose ``rec_id`` hashes to shard K of N
        (:func:`ursa_daemon.session.in_shard`), so N machines can drain one share at once.
        Serves ``/metrics`` meanwhile when ``metrics.enabled`` (see ``ursa_daemon.daemon.metrics``).
        """
        return drain_roots(
            self, roots, on_session=on_session, on_outcome=on_outcome, shard=shard, on_start=on_start,
            summary=summary,
        )

    def run(self, *, shed: bool = False) -> None:
        """Watch, pause and resume, upload, register, until SIGTERM/SIGINT.

        ``shed`` (the ``run`` command only: it replaces the process image): once a session
        brought in the catalog stack (lancedb, pyarrow; ~100 MiB that Python cannot unload)
        and nothing was to do for ``watch.shed_after_idle_seconds``, the process re-executes
        itself with the same arguments, keeping its pid (systemd sees nothing), its state lock
        and its stdout: the new image starts small and rescans the root as at any start.
        Monitoring sees nothing of it either: ``/metrics`` keeps its listening socket (a scrape
        meanwhile waits in the backlog), its counters and ``started_at`` go on, and the logs say
        ``daemon.shed`` then ``daemon.shed_done`` (no ``daemon.stopped``, no ``daemon.started``).
        """
        from ursa_daemon.daemon.metrics import METRICS
        from ursa_daemon.daemon.watch import Runner

        shed_from = METRICS.take_over()  # this image continues one that re-executed itself
        lower_own_priority()
        runner = Runner(self)
        runner.run(shed=shed, shed_from=shed_from)
        if runner.shed_requested:
            self._reexec(runner.handover)
            log.info("daemon.stopped")  # a signal came first: no re-exec

    def _reexec(self, handover: dict[str, str]) -> None:
        """Replace this process image by a fresh ``run`` (see :meth:`run`), handing it ``handover``
        (the metrics' socket and counters) and the state lock. Returns only when a stop signal
        came first."""
        import psutil

        # SIGTERM/SIGINT wait, blocked, until the new image has its handlers (the mask survives exec)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        if self.stopping.is_set():
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT})
            return
        env = dict(os.environ, **handover, **self.lock.hand_over())
        log.info("daemon.shed", rss_mib=round(psutil.Process().memory_info().rss / 2**20, 1))
        self.state.close()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.execve(sys.executable, sys.orig_argv, env)

