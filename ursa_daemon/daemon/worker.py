"""One session at a time through SPEC section 5's states, shared by ``run`` and ``drain``.

``Worker.process(rec_dir)`` takes one session as far as it goes now, keeping every
step in the SQLite state so a restart continues where it stopped; it is the session's
error boundary (nothing a session does stops the daemon). The :class:`~ursa_daemon.daemon.core.Daemon`
adds the state lock and the loops around it (``drain``, and ``run``'s watcher).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from ursa_daemon.config import Config, Role
from ursa_daemon.daemon.activity import Activity, in_upload_window
from ursa_daemon.daemon.metrics import METRICS
from ursa_daemon.daemon.outcome import Outcome, one_line
from ursa_daemon.daemon.progress import LiveProgress
from ursa_daemon.daemon.state import SessionState, StateDB
from ursa_daemon.errors import CatalogRowExists, InputError, NodesPending, UrsaError
from ursa_daemon.log import get_logger
from ursa_daemon.session import (
    HashingStopped,
    hash_files,
    load_session,
    recording_hash,
    refuse_linked_session,
    tree_signature,
)
from ursa_daemon.transfer.limits import RateLimiter

if TYPE_CHECKING:  # imported when a session is worked on, so an idle `run` holds no catalog stack
    from ursa_daemon.catalog import RecordingRow
    from ursa_daemon.transfer.context import Context
    from ursa_daemon.transfer.ingest import UploadProgress

__all__ = ["Worker", "report_unexpected"]

log = get_logger("ursa.daemon")


class Worker:
    """The state database, the write handles, and what to do with one session."""

    def __init__(self, config: Config, state: StateDB, *, activity: Activity | None = None) -> None:
        self.config = config
        self.state = state
        self._data: Context | None = None
        self._writes_ready = False
        self.limiter = RateLimiter(config.upload.bandwidth_bytes_per_s)
        self.stopping = threading.Event()
        #: ``SIGINT``/``SIGTERM`` once a signal set ``stopping``
        self.stop_signal: str | None = None
        self.activity = activity
        self.progress: Callable[[str, UploadProgress], None] | None = None
        #: ``(rec_id, phase, bytes_done, bytes_total)`` as bytes are hashed and sent (for a display)
        self.on_bytes: Callable[[str, str, int, int], None] | None = None
        #: told the new :meth:`pause_reason` on each change, under a lock (``run``: ``daemon.paused``)
        self.on_pause_change: Callable[[str | None], None] | None = None
        #: the last reason uploads were paused for (what a ``session.paused`` line says)
        self.last_pause_reason: str | None = None
        self._reason_seen: str | None = None
        self._reason_lock = threading.Lock()

    @property
    def data(self) -> Context:
        """The write handles (stores per role, catalog); built on first use."""
        if self._data is None:
            from ursa_daemon.transfer.context import Context

            self._data = Context(self.config)
        return self._data

    def _probe_stores(self) -> None:
        """Do both buckets answer with the write credentials? (No catalog: a HEAD of the pointer.)"""
        from contextlib import suppress

        from ursa_daemon.errors import ObjectNotFound
        from ursa_daemon.store import get_store

        profile = self.config.active_profile
        for role, key in ((Role.ASSETS_RW, "ursa/ACTIVE.json"), (Role.RAW_RW, "recordings/ursa-daemon-probe")):
            with suppress(ObjectNotFound):
                get_store(profile, role).head(key)

    def _enable_writes(self) -> None:
        if not self._writes_ready:
            self.data.enable_writes(roles=("assets_rw", "raw_rw"))
            self._writes_ready = True

    # -- one session ------------------------------------------------------

    def should_pause(self) -> bool:
        """Stop the streams: the daemon is stopping, the rig records, or the window closed."""
        return self.pause_reason() is not None

    def pause_reason(self) -> str | None:
        """Why uploads are paused now, None when they are not: ``stopping``; the rig records,
        named by what says so (``flag_file``, ``recorder_process``, ``session_writes``: see
        :data:`~ursa_daemon.daemon.activity.SOURCES`); or ``upload_window`` (outside
        ``upload.windows``). The bandwidth cap is no pause: it throttles.

        Thread-safe; a change is told to :attr:`on_pause_change` before this returns."""
        with self._reason_lock:
            reason = None
            if self.stopping.is_set():
                reason = "stopping"
            elif self.activity is not None and (active := self.activity.reason()) is not None:
                reason = active
            elif not in_upload_window(self.config.upload.windows):
                reason = "upload_window"
            if reason != self._reason_seen:
                self._reason_seen = reason
                if reason is not None:
                    self.last_pause_reason = reason
                if self.on_pause_change is not None:
                    try:
                        self.on_pause_change(reason)
                    except Exception as exc:  # a report must never stop an upload
                        log.warning("daemon.pause_report_failed", error=one_line(exc))
            return reason

    def note_discovered(self, rec_dir: Path) -> None:
        """First sight of a session: a ``discovered`` row, so ``status`` shows it while
        the rig still writes it or it settles."""
        rec_id = rec_dir.name
        if self.state.session(rec_id) is None:
            self.state.upsert_session(rec_id, str(rec_dir.parent), SessionState.DISCOVERED)
            log.info("session.discovered", rec_id=rec_id)

    def note_incomplete(self, rec_dir: Path) -> None:
        """A session with no manifest yet is ``discovered`` (never ``rejected``): it may still be recorded."""
        rec_id = rec_dir.name
        prior = self.state.session(rec_id)
        if prior is None:
            self.note_discovered(rec_dir)
        elif prior.state is SessionState.REJECTED:
            self.state.set_state(rec_id, SessionState.DISCOVERED)
        log.info("session.incomplete", rec_id=rec_id, error="no manifest yet")

    def process(self, rec_dir: Path, *, signature: str | None = None, defer_register: bool = False) -> Outcome:
        """Take one session as far as it goes now. Never raises for a bad or failing session.

        This is the session's error boundary: whatever goes wrong (any ``Exception``, bugs
        included) ends this session ``rejected`` (bad input) or ``failed`` (retried with
        backoff), with a one-line reason in ``status`` and the traceback in a DEBUG log line.

        With ``defer_register`` a session whose bytes are all in comes back as
        ``registering`` with its rows in ``pending``: pass such outcomes to
        :meth:`register_pending`.
        """
        rec_id = rec_dir.name
        try:
            return self._process(rec_dir, signature, defer_register)
        except Exception as exc:  # the boundary: one session must never stop the daemon
            return self._boundary(rec_id, exc, rec_dir=rec_dir)

    def _boundary(self, rec_id: str, exc: BaseException, *, rec_dir: Path | None = None) -> Outcome:
        """Classify what escaped one session's processing; never raises."""
        if isinstance(exc, HashingStopped):  # stopped (or the rig records) before every file was hashed
            reason, row = self.last_pause_reason, None
            try:
                self.state.set_state(rec_id, SessionState.PAUSED, pause_reason=reason)
                row = self.state.session(rec_id)
            except Exception as again:
                log.warning("session.state_write_failed", rec_id=rec_id, error=one_line(again))
            kept = {"bytes_done": row.bytes_done, "bytes_total": row.bytes_total} if row is not None else {}
            log.info("session.paused", rec_id=rec_id, reason=reason, **kept)
            return METRICS.outcome(Outcome(rec_id, "paused"))
        report_unexpected(exc, "session.error", rec_id=rec_id)
        try:
            if isinstance(exc, InputError):
                return self._reject(rec_id, str(exc), rec_dir=rec_dir)
            if isinstance(exc, NodesPending):
                return self._wait_for_nodes(rec_id, exc)
            if isinstance(exc, CatalogRowExists):
                return self._reject(rec_id, f"{rec_id}: {exc}", rec_dir=rec_dir)
            return self._fail(rec_id, exc, rec_dir=rec_dir)
        except Exception as again:  # the state database itself fails: still report, never raise
            log.warning("session.state_write_failed", rec_id=rec_id, error=one_line(again))
            status = "rejected" if isinstance(exc, InputError | CatalogRowExists) else "failed"
            return METRICS.outcome(Outcome(rec_id, status, one_line(exc)))

    def _process(self, rec_dir: Path, signature: str | None, defer_register: bool) -> Outcome:
        rec_id = rec_dir.name
        root = str(rec_dir.parent)
        if signature is None:
            _, signature = tree_signature(rec_dir)
        prior = self.state.session(rec_id)
        if prior is not None and prior.signature == signature:
            if prior.state is SessionState.REGISTERED:
                return Outcome(rec_id, "already_registered")
            if prior.state is SessionState.REJECTED:
                return Outcome(rec_id, "rejected", prior.last_error)
        if prior is None:
            log.info("session.discovered", rec_id=rec_id)
        elif prior.signature != signature:
            self.state.reset_attempts(rec_id)
        if prior is not None and prior.state is SessionState.PAUSED:
            log.info("session.resumed", rec_id=rec_id)  # the pair of session.paused, per session
        self.state.upsert_session(rec_id, root, SessionState.HASHING, signature=signature)
        log.info("session.queued", rec_id=rec_id)
        started = time.monotonic()
        refuse_linked_session(rec_dir)
        return self._ingest(rec_dir, started, defer_register)

    def _ingest(self, rec_dir: Path, started: float, defer_register: bool = False) -> Outcome:
        from ursa_daemon.transfer.ingest import hash_part_size, ingest

        rec_id = rec_dir.name
        self._enable_writes()
        session = load_session(rec_dir)
        known = self._trusted_hashes(rec_id, rec_dir)
        live = LiveProgress(self.state, rec_id, len(session.files), session.bytes_total, self.on_bytes)
        live.begin()
        files = hash_files(
            rec_dir, session.files, known=known, on_bytes=live.hashed_bytes,
            should_stop=self.should_pause, part_size=hash_part_size(self.data),
        )
        self.state.record_hashes(
            rec_id, [(f.rel_path, f.size, _mtime_ns(rec_dir / f.rel_path), f.sha256 or "") for f in files]
        )
        rh = None if session.node_manifests else recording_hash(f.sha256 or "" for f in files)
        self.state.set_state(rec_id, SessionState.UPLOADING, recording_hash=rh)
        live.uploading()
        METRICS.session_started(rec_id)

        def on_progress(p: UploadProgress) -> None:
            self.state.confirm_file(rec_id, p.current_file)
            METRICS.progress(rec_id, p)
            if self.progress is not None:
                self.progress(rec_id, p)

        result = ingest(
            self.data,
            rec_dir,
            is_active=self.should_pause,
            progress=on_progress,
            limiter=self.limiter,
            known_hashes={f.rel_path: f.sha256 for f in files if f.sha256},
            defer_register=defer_register,
            journal=self.state,
            hashed=files,
            on_tally=live.moved,
            pause_reason=lambda: self.last_pause_reason,
        )
        counts = (result.files_uploaded, result.files_skipped, result.bytes_uploaded)
        if result.paused:
            live.paused()
            self.state.set_state(rec_id, SessionState.PAUSED, pause_reason=self.last_pause_reason)
            return METRICS.outcome(Outcome(rec_id, "paused", None, *counts))
        if result.pending is not None:
            self.state.set_state(rec_id, SessionState.REGISTERING)
            return Outcome(rec_id, "registering", None, *counts, pending=result.pending, started=started)
        assert result.recording is not None
        return self._registered(Outcome(rec_id, "registered", None, *counts, started=started), result.recording)

    def _registered(self, outcome: Outcome, recording: RecordingRow) -> Outcome:
        rec_id = outcome.rec_id
        self.state.set_state(rec_id, SessionState.REGISTERED, recording_hash=recording.recording_hash)
        row = self.state.session(rec_id)
        elapsed = round(time.monotonic() - outcome.started, 3)
        done = METRICS.outcome(outcome)  # counted before it is said: a scrape after the line sees it
        log.info(
            "session.done",
            rec_id=rec_id,
            recording_hash=recording.recording_hash,
            bytes_done=row.bytes_done if row is not None else None,
            bytes_total=row.bytes_total if row is not None else None,
            bytes_uploaded=outcome.bytes_uploaded,
            elapsed_s=elapsed,
        )
        return done

    def register_pending(self, waiting: list[Outcome]) -> list[Outcome]:
        """Register sessions left ``registering`` by ``process(defer_register=True)``,
        one commit per table for the whole batch; one bad session stops nothing."""
        from ursa_daemon.transfer.register import register_many

        batch = [o for o in waiting if o.pending is not None]
        if not batch:
            return []
        try:
            results = register_many(self.data, [o.pending for o in batch if o.pending is not None])
        except Exception as exc:  # the catalog itself is unreachable: retry them all later
            log.debug("daemon.register_batch_failed", sessions=[o.rec_id for o in batch], error=one_line(exc))
            return [self._boundary(o.rec_id, exc) for o in batch]
        out = []
        for o, res in zip(batch, results, strict=True):
            counts = (o.files_uploaded, o.files_skipped, o.bytes_uploaded)
            done = Outcome(o.rec_id, "registered", None, *counts, started=o.started)
            if isinstance(res, CatalogRowExists | InputError | ValueError | TypeError | OverflowError):
                # this session's rows can never go in (the others of the batch went on)
                log.debug("session.error", rec_id=o.rec_id, error=one_line(res), exc_info=res)
                out.append(self._reject(o.rec_id, self._conflict_reason(o, res)))
            elif isinstance(res, Exception):
                out.append(self._boundary(o.rec_id, res))
            else:
                try:
                    out.append(self._registered(done, res))
                except Exception as exc:
                    out.append(self._boundary(o.rec_id, exc))
        return out

    def _conflict_reason(self, o: Outcome, exc: Exception) -> str:
        """Say what happened: a registration refused because the same bytes are already
        registered under another ``rec_id`` (a copied session) is said as such."""
        if isinstance(exc, CatalogRowExists) and o.pending is not None:
            rh = o.pending.recording.recording_hash
            try:
                other = self.data.write_catalog().get_recording(rh)
            except Exception:  # the plain conflict is still a reason
                other = None
            if other is not None and other.rec_id != o.rec_id:
                self._discard_unregistered(o.rec_id)
                from ursa_daemon.transfer.register import duplicate_error

                return str(duplicate_error(o.rec_id, other.rec_id, rh))
        text = str(exc)
        return text if text.startswith(o.rec_id) else f"{o.rec_id}: {text}"

    def _discard_unregistered(self, rec_id: str) -> None:
        """Delete a refused copy's uploaded objects (its twin registered first, within the same
        batch), unless some catalog row belongs to this ``rec_id``: no bytes are left behind."""
        try:
            catalog = self.data.write_catalog()
            if catalog.list_recordings(where={"rec_id": rec_id}, limit=1):
                return
            raw = self.data.store("raw_rw")
            for meta in list(raw.list(f"recordings/{rec_id}/")):
                raw.delete(meta.key)
            log.info("session.discarded", rec_id=rec_id)
        except Exception as exc:  # the refusal stands; the sweep or an operator can remove them
            log.warning("session.discard_failed", rec_id=rec_id, error=one_line(exc))

    def _trusted_hashes(self, rec_id: str, rec_dir: Path) -> dict[str, str]:
        """sha256s from the state whose file still has the same size and mtime."""
        out = {}
        for rel, f in self.state.files(rec_id).items():
            try:
                st = os.lstat(rec_dir / rel)
            except OSError:
                continue
            if f.sha256 and st.st_size == f.size and st.st_mtime_ns == f.mtime_ns:
                out[rel] = f.sha256
        return out

    def _reject(self, rec_id: str, error: str, *, rec_dir: Path | None = None) -> Outcome:
        """``rejected``, with a state row even when the session was refused before it had one."""
        error = one_line(error)
        self._ensure_row(rec_id, rec_dir)
        self.state.set_state(rec_id, SessionState.REJECTED, error=error)
        log.warning("session.rejected", rec_id=rec_id, error=error)
        return METRICS.outcome(Outcome(rec_id, "rejected", error))

    def _ensure_row(self, rec_id: str, rec_dir: Path | None) -> None:
        if rec_dir is not None and self.state.session(rec_id) is None:
            try:
                _, signature = tree_signature(rec_dir)
            except OSError:
                signature = None
            self.state.upsert_session(rec_id, str(rec_dir.parent), SessionState.DISCOVERED, signature=signature)

    def _wait_for_nodes(self, rec_id: str, exc: NodesPending) -> Outcome:
        """Our half is in; look again later (backoff as for failures, capped at the same hour)."""
        _, delay = self._next_delay(rec_id)
        self.state.set_state(
            rec_id, SessionState.REGISTERING, error=str(exc), next_attempt_at=time.time() + delay, count_attempt=True
        )
        log.info("session.waiting_for_nodes", rec_id=rec_id, nodes=exc.missing, retry_in_s=round(delay, 1))
        r = exc.result
        counts = (r.files_uploaded, r.files_skipped, r.bytes_uploaded) if r is not None else (0, 0, 0)
        return METRICS.outcome(Outcome(rec_id, "waiting", str(exc), *counts))

    def _next_delay(self, rec_id: str) -> tuple[int, float]:
        """``(attempt number, seconds to wait)``: base * 2**attempts, capped, with ±25 % jitter."""
        prior = self.state.session(rec_id)
        attempts = (prior.attempts if prior else 0) + 1
        watch = self.config.watch
        delay = min(watch.retry_max_seconds, watch.retry_base_seconds * 2 ** (attempts - 1))
        return attempts, delay * random.uniform(0.75, 1.25)

    def _fail(self, rec_id: str, exc: BaseException, *, rec_dir: Path | None = None) -> Outcome:
        self._ensure_row(rec_id, rec_dir)
        attempts, delay = self._next_delay(rec_id)
        error = one_line(exc)
        self.state.set_state(
            rec_id, SessionState.FAILED, error=error, next_attempt_at=time.time() + delay, count_attempt=True
        )
        log.warning("session.failed", rec_id=rec_id, error=error, attempts=attempts, retry_in_s=round(delay, 1))
        return METRICS.outcome(Outcome(rec_id, "failed", error))


def report_unexpected(exc: BaseException, event: str, **fields: object) -> bool:
    """An exception that is neither ours (``UrsaError``: bad input, a store or catalog fault) nor the
    operating system's (``OSError``: a disk, a socket) is a bug: logged at ERROR with its traceback
    and counted in ``ursa_internal_errors_total``. Anything else is logged at DEBUG (its WARNING is
    the caller's ``session.failed``/``session.rejected``). True when it was a bug."""
    if isinstance(exc, UrsaError | OSError):
        log.debug(event, error=one_line(exc), exc_info=exc, **fields)
        return False
    METRICS.internal_errors.inc()
    log.error(event, error=one_line(exc), internal=True, exc_info=exc, **fields)
    return True


def _mtime_ns(path: Path) -> int:
    try:
        return os.lstat(path).st_mtime_ns
    except OSError:
        return 0
