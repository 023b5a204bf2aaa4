"""``drain``: every complete session under some roots, to the end; one failure stops nothing.

Sessions upload one after the other on the caller's thread; the :class:`_Registrar`
registers those whose bytes are in on its own thread meanwhile, in batches (one
commit per table). No compaction or re-index here: daemons only append
(``ursa-daemon maintain`` does the rest).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from ursa_daemon.daemon.metrics import METRICS
from ursa_daemon.daemon.metrics import serve as serve_metrics
from ursa_daemon.daemon.outcome import INCOMPLETE_HINT, DrainSummary, Outcome
from ursa_daemon.daemon.rigs import RigReporter
from ursa_daemon.daemon.worker import Worker
from ursa_daemon.log import get_logger
from ursa_daemon.session import SessionDir, in_shard, scan_root

__all__ = ["drain", "drain_sessions"]

log = get_logger("ursa.daemon")

#: ``drain`` registers the sessions that wait together, one commit per table for up to this many
DEFAULT_REGISTER_BATCH = 32
#: ... gathered for at most this long after the first of them finished uploading
DEFAULT_REGISTER_LINGER_S = 1.0


def drain(
    worker: Worker,
    roots: list[Path],
    *,
    on_session: Callable[[SessionDir], None] | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
    shard: tuple[int, int] | None = None,
    on_start: Callable[[int], None] | None = None,
    summary: DrainSummary | None = None,
) -> DrainSummary:
    """What :meth:`ursa_daemon.daemon.core.Daemon.drain` does (see there), with ``/metrics`` served
    and the rig's status document (``ursa/rigs/<rig_id>.json``) kept while it runs."""
    with serve_metrics(worker.config, worker.state, paused=worker.pause_reason):
        rig = RigReporter.for_worker(
            worker, "drain", upload_rate=METRICS.upload_rate, started_at=METRICS.started_at
        ).start()
        try:
            return _drain(
                worker, roots, on_session=on_session, on_outcome=on_outcome, on_start=on_start, summary=summary,
                shard=shard,
            )
        finally:
            rig.stop()


def _drain(
    worker: Worker,
    roots: list[Path],
    *,
    on_session: Callable[[SessionDir], None] | None,
    on_outcome: Callable[[Outcome], None] | None,
    on_start: Callable[[int], None] | None,
    summary: DrainSummary | None,
    shard: tuple[int, int] | None = None,
) -> DrainSummary:
    started = time.monotonic()
    summary = summary if summary is not None else DrainSummary()
    lock = threading.Lock()
    sessions = [sd for sd in drain_sessions(roots) if in_shard(sd.rec_id, shard)]
    summary.given = [sd.rec_id for sd in sessions]
    if on_start is not None:
        on_start(len(sessions))

    def report(o: Outcome) -> None:
        with lock:
            if worker.stop_signal is not None and summary.stopped_by is None:
                summary.stopped_by = worker.stop_signal
            summary.add(o)
            if on_outcome is not None:
                on_outcome(o)

    registrar = _Registrar(worker, report)
    try:
        _drain_sessions(worker, sessions, registrar, report, on_session, summary)
    finally:
        registrar.close()  # every session whose bytes are in gets registered, even on SIGTERM
    # no compaction or re-index here: daemons only append (`ursa-daemon maintain` does the rest)
    with lock:
        if worker.stop_signal is not None and summary.stopped_by is None:
            summary.stopped_by = worker.stop_signal
        summary.account_unfinished()
    summary.elapsed_s = time.monotonic() - started
    return summary


def _drain_sessions(
    worker: Worker,
    sessions: list[SessionDir],
    registrar: _Registrar,
    report: Callable[[Outcome], None],
    on_session: Callable[[SessionDir], None] | None,
    summary: DrainSummary,
) -> None:
    for sd in sessions:
        if worker.stopping.is_set():
            break  # the rest are not_started
        if not sd.has_manifest:
            worker.note_incomplete(sd.path)
            report(Outcome(sd.rec_id, "incomplete", INCOMPLETE_HINT.format(path=sd.path)))
            continue
        summary.started.add(sd.rec_id)
        try:
            if on_session is not None:
                on_session(sd)
            outcome = worker.process(sd.path, signature=sd.signature, defer_register=True)
        except Exception as exc:  # a progress callback's bug: this session alone
            outcome = worker._boundary(sd.rec_id, exc, rec_dir=sd.path)
        if outcome.status == "registering":
            registrar.submit(outcome)
        else:
            report(outcome)


class _Registrar:
    """Registers drained sessions on its own thread while the next ones upload.

    What gathers within ``DEFAULT_REGISTER_LINGER_S`` of the first waiting session
    goes in as one batch (one commit per table, at most ``DEFAULT_REGISTER_BATCH``
    sessions): a slow upload's session is registered a second after its last byte,
    a backlog of small sessions in a few large commits.
    """

    def __init__(self, daemon: Worker, report: Callable[[Outcome], None]) -> None:
        self.daemon = daemon
        self.report = report
        self.waiting: list[Outcome] = []
        self.cond = threading.Condition()
        self.closing = False
        self.thread = threading.Thread(target=self._loop, name="ursa-registrar", daemon=True)
        self.thread.start()

    def submit(self, outcome: Outcome) -> None:
        with self.cond:
            self.waiting.append(outcome)
            self.cond.notify()

    def close(self) -> None:
        with self.cond:
            self.closing = True
            self.cond.notify()
        self.thread.join()

    def _loop(self) -> None:
        while True:
            with self.cond:
                while not self.waiting and not self.closing:
                    self.cond.wait()
                if not self.waiting:
                    return
                # let a backlog of small sessions gather for a moment: fewer, larger commits
                deadline = time.monotonic() + DEFAULT_REGISTER_LINGER_S
                while len(self.waiting) < DEFAULT_REGISTER_BATCH and not self.closing:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self.cond.wait(left)
                batch = self.waiting[:DEFAULT_REGISTER_BATCH]
                del self.waiting[: len(batch)]
            try:
                outcomes = self.daemon.register_pending(batch)
            except Exception as exc:  # a bug must not strand sessions as "registering" silently
                log.exception("daemon.registrar_failed", error=repr(exc))
                outcomes = [self.daemon._boundary(o.rec_id, exc) for o in batch]
            for o in outcomes:
                self.report(o)



def drain_sessions(roots: list[Path]) -> list[SessionDir]:
    """Every ``rec_*`` session under ``roots``, each once (a root may also be named inside another)."""
    seen: set[Path] = set()
    out = []
    for root in roots:
        for sd in scan_root(root):
            if sd.path not in seen:
                seen.add(sd.path)
                out.append(sd)
    return out
