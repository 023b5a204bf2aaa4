"""The daemon: one state machine per session, shared by ``run`` and ``drain``.

``Daemon.process(rec_dir)`` takes one session through SPEC section 5's
states, keeping every step in the SQLite state so a restart continues where
it stopped. ``drain`` runs it over every complete session under some roots;
``run`` adds the inotify watcher, the activity gate, the scheduler (retries,
rescans, upload windows, systemd watchdog) and signal handling.
"""

from __future__ import annotations

import os
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from datetime import time as dtime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ursa_daemon.activity import Activity, lower_own_priority, recorder_writing
from ursa_daemon.config import Config, Role
from ursa_daemon.errors import (
    CatalogError,
    CatalogPermissionError,
    CatalogRowExists,
    InputError,
    NodesPending,
    StoreError,
    StorePermissionError,
    UrsaError,
)
from ursa_daemon.log import get_logger
from ursa_daemon.metrics import METRICS
from ursa_daemon.metrics import serve as serve_metrics
from ursa_daemon.session import (
    HashingStopped,
    SessionDir,
    hash_files,
    in_shard,
    load_session,
    recording_hash,
    scan_root,
    tree_signature,
)
from ursa_daemon.state import SessionState, StateDB, StateLock
from ursa_daemon.transfer.limits import RateLimiter

if TYPE_CHECKING:  # imported when a session is worked on, so an idle `run` holds no catalog stack
    from ursa_daemon.api import DataInterface
    from ursa_daemon.catalog import RecordingRow, SessionRows
    from ursa_daemon.transfer.ingest import UploadProgress

__all__ = [
    "Daemon",
    "DrainSummary",
    "Outcome",
    "LiveProgress",
    "build_activity",
    "drain_sessions",
    "in_upload_window",
    "install_stop_handlers",
    "sd_notify",
]

log = get_logger("ursa.daemon")

#: SIGTERM must stop the daemon within this budget (systemd TimeoutStopSec is longer)
DEFAULT_STOP_BUDGET_S = 4.0
#: ``status`` progress is written at most this often while bytes move (a file done always writes)
DEFAULT_PROGRESS_WRITE_S = 0.5
#: ``drain`` registers the sessions that wait together, one commit per table for up to this many
DEFAULT_REGISTER_BATCH = 32
#: ... gathered for at most this long after the first of them finished uploading
DEFAULT_REGISTER_LINGER_S = 1.0


@dataclass
class Outcome:
    """What one ``process`` call did to a session."""

    rec_id: str
    status: str  # registered, already_registered, paused, failed, rejected, registering, waiting, incomplete
    error: str | None = None
    files_uploaded: int = 0
    files_skipped: int = 0
    bytes_uploaded: int = 0
    #: with ``process(defer_register=True)``: every byte is in, these rows wait for a batch
    pending: SessionRows | None = field(default=None, repr=False)
    started: float = field(default=0.0, repr=False)


#: the hint of a session ``drain`` found without a manifest (SPEC section 5: ``incomplete``)
INCOMPLETE_HINT = (
    "no manifest.json yet: still being recorded (drain it again once the rig has finished), or the rig "
    "died; if it will never write one, run `ursa-daemon reconstruct-manifest {path}` and drain again"
)


@dataclass
class DrainSummary:
    """What ``drain`` did: every session it was given is in exactly one list (SPEC section 5)."""

    registered: list[str] = field(default_factory=list)
    already_registered: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)
    #: no manifest yet: being recorded, or a rig that died (not an error)
    incomplete: list[dict[str, str]] = field(default_factory=list)
    #: started, not finished when a signal stopped the drain (its progress is kept)
    interrupted: list[str] = field(default_factory=list)
    #: never reached before a signal stopped the drain
    not_started: list[str] = field(default_factory=list)
    #: stopped by an upload window that closed (not a signal): continued by the next run
    paused: list[str] = field(default_factory=list)
    #: dual-node halves uploaded and waiting for another node's half (not a failure)
    waiting: list[dict[str, str]] = field(default_factory=list)
    files_uploaded: int = 0
    files_skipped: int = 0
    bytes_uploaded: int = 0
    elapsed_s: float = 0.0
    #: the signal that stopped the drain (``SIGINT``/``SIGTERM``), if one did
    stopped_by: str | None = None
    #: every session the drain was given, in order, and those it began
    given: list[str] = field(default_factory=list, repr=False)
    started: set[str] = field(default_factory=set, repr=False)

    def add(self, o: Outcome) -> None:
        if o.status in ("registered", "already_registered"):
            getattr(self, o.status).append(o.rec_id)
        elif o.status in ("failed", "rejected", "waiting"):
            getattr(self, o.status).append({"rec_id": o.rec_id, "error": o.error or ""})
        elif o.status == "incomplete":
            self.incomplete.append({"rec_id": o.rec_id, "hint": o.error or ""})
        elif o.status == "paused":
            (self.interrupted if self.stopped_by else self.paused).append(o.rec_id)
        self.files_uploaded += o.files_uploaded
        self.files_skipped += o.files_skipped
        self.bytes_uploaded += o.bytes_uploaded

    def accounted(self) -> set[str]:
        """Every rec_id already in one of the lists."""
        out = set(self.registered) | set(self.already_registered) | set(self.interrupted)
        out |= set(self.not_started) | set(self.paused)
        for items in (self.failed, self.rejected, self.incomplete, self.waiting):
            out |= {i["rec_id"] for i in items}
        return out

    def account_unfinished(self) -> None:
        """Put every given session not in a list yet under ``interrupted`` (begun) or ``not_started``."""
        done = self.accounted()
        for rec_id in self.given:
            if rec_id not in done:
                (self.interrupted if rec_id in self.started else self.not_started).append(rec_id)
                done.add(rec_id)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.rejected

    @property
    def exit_code(self) -> int:
        """130/143 when a signal stopped it before every session was finished, else 1 on any
        failed or rejected session, else 0 (SPEC section 5)."""
        if self.stopped_by is not None and (self.interrupted or self.not_started):
            return 128 + int(signal.Signals[self.stopped_by])
        return 0 if self.ok else 1

    def as_json(self) -> dict[str, Any]:
        return {
            "registered": self.registered,
            "already_registered": self.already_registered,
            "failed": self.failed,
            "rejected": self.rejected,
            "incomplete": self.incomplete,
            "interrupted": self.interrupted,
            "not_started": self.not_started,
            "paused": self.paused,
            "waiting": self.waiting,
            "files_uploaded": self.files_uploaded,
            "files_skipped": self.files_skipped,
            "bytes_uploaded": self.bytes_uploaded,
            "elapsed_s": round(self.elapsed_s, 3),
            "stopped_by": self.stopped_by,
        }


def sd_notify(message: str) -> bool:
    """Send one sd_notify datagram (READY=1, STATUS=..., WATCHDOG=1) when under systemd."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(addr)
            sock.sendall(message.encode())
    except OSError:
        return False
    return True


class Daemon:
    """Owns the state lock, the state database and the write handles."""

    def __init__(self, config: Config, *, activity: Activity | None = None, offline_ok: bool = False) -> None:
        """``offline_ok`` (``run``): an unreachable store at start is not fatal; sessions fail and
        retry until it is back. ``drain`` wants to hear at once that there is no network.

        ``run`` opens no catalog at start (the catalog stack, lancedb and pyarrow, is imported
        with the first session to work on): it only checks that the stores answer.
        """
        self.config = config
        self.lock = StateLock(config.state_dir)  # StateLocked → exit 3
        self._data: DataInterface | None = None
        self._writes_ready = False
        try:
            self.state = StateDB(config.state_dir, rebuild=True)
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
        except BaseException:
            self.lock.close()
            raise
        self.limiter = RateLimiter(config.upload.bandwidth_bytes_per_s)
        self.stopping = threading.Event()
        #: ``SIGINT``/``SIGTERM`` once a signal set ``stopping``
        self.stop_signal: str | None = None
        self.activity = activity
        self.progress: Callable[[str, UploadProgress], None] | None = None
        #: ``(rec_id, phase, bytes_done, bytes_total)`` as bytes are hashed and sent (for a display)
        self.on_bytes: Callable[[str, str, int, int], None] | None = None

    @property
    def data(self) -> DataInterface:
        """The write handles (stores, catalog); built on first use."""
        if self._data is None:
            from ursa_daemon.api import DataInterface

            self._data = DataInterface(config=self.config)
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

    def close(self) -> None:
        self.state.close()
        self.lock.close()

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one session ------------------------------------------------------

    def should_pause(self) -> bool:
        """Stop the streams: the daemon is stopping, the rig records, or the window closed."""
        return (
            self.stopping.is_set()
            or (self.activity is not None and self.activity.is_active())
            or not in_upload_window(self.config.upload.windows)
        )

    def note_discovered(self, rec_dir: Path) -> None:
        """First sight of a session: a ``discovered`` row, so ``status`` shows it while
        the rig still writes it or it settles."""
        rec_id = rec_dir.name
        if self.state.session(rec_id) is None:
            self.state.upsert_session(rec_id, str(rec_dir.parent), SessionState.DISCOVERED)
            log.info("session.discovered", rec_id=rec_id)

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
            try:
                self.state.set_state(rec_id, SessionState.PAUSED)
            except Exception as again:
                log.warning("session.state_write_failed", rec_id=rec_id, error=_one_line(again))
            log.info("session.paused", rec_id=rec_id)
            return METRICS.outcome(Outcome(rec_id, "paused"))
        log.debug("session.error", rec_id=rec_id, error=_one_line(exc), exc_info=exc)
        try:
            if isinstance(exc, InputError):
                return self._reject(rec_id, str(exc), rec_dir=rec_dir)
            if isinstance(exc, NodesPending):
                return self._wait_for_nodes(rec_id, exc)
            if isinstance(exc, CatalogRowExists):
                return self._reject(rec_id, f"{rec_id}: {exc}", rec_dir=rec_dir)
            return self._fail(rec_id, exc, rec_dir=rec_dir)
        except Exception as again:  # the state database itself fails: still report, never raise
            log.warning("session.state_write_failed", rec_id=rec_id, error=_one_line(again))
            status = "rejected" if isinstance(exc, InputError | CatalogRowExists) else "failed"
            return METRICS.outcome(Outcome(rec_id, status, _one_line(exc)))

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
        if rec_dir.is_symlink():
            raise InputError(
                f"{rec_id}: the session directory is a symbolic link (to {_link_target(rec_dir)}); links are "
                "never followed: move the real directory under the recordings root instead",
                rec_id=rec_id,
            )
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
            rec_dir, session.files, known=known, on_bytes=live.hashed, on_file=live.file_hashed,
            should_stop=self.should_pause, part_size=hash_part_size(self.data),
        )
        self.state.record_hashes(
            rec_id, [(f.rel_path, f.size, _mtime_ns(rec_dir / f.rel_path), f.sha256 or "") for f in files]
        )
        rh = None if session.node_manifests else recording_hash(f.sha256 or "" for f in files)
        self.state.set_state(rec_id, SessionState.UPLOADING, recording_hash=rh)
        live.uploading(self.state.part_progress().get(rec_id, []))
        METRICS.session_started(rec_id)

        def on_progress(p: UploadProgress) -> None:
            live.file_done(p)
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
            on_file_bytes=live.sent,
            hashed=files,
        )
        counts = (result.files_uploaded, result.files_skipped, result.bytes_uploaded)
        if result.paused:
            live.paused(self.state.part_progress().get(rec_id, []), result.kept_bytes)
            self.state.set_state(rec_id, SessionState.PAUSED)
            return METRICS.outcome(Outcome(rec_id, "paused", None, *counts))
        if result.pending is not None:
            self.state.set_state(rec_id, SessionState.REGISTERING)
            return Outcome(rec_id, "registering", None, *counts, pending=result.pending, started=started)
        assert result.recording is not None
        return self._registered(Outcome(rec_id, "registered", None, *counts, started=started), result.recording)

    def _registered(self, outcome: Outcome, recording: RecordingRow) -> Outcome:
        rec_id = outcome.rec_id
        self.state.set_state(rec_id, SessionState.REGISTERED, recording_hash=recording.recording_hash)
        log.info(
            "session.done",
            rec_id=rec_id,
            recording_hash=recording.recording_hash,
            bytes_done=outcome.bytes_uploaded,
            elapsed_s=round(time.monotonic() - outcome.started, 3),
        )
        return METRICS.outcome(outcome)

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
            log.debug("daemon.register_batch_failed", sessions=[o.rec_id for o in batch], error=_one_line(exc),
                      exc_info=exc)
            return [self._boundary(o.rec_id, exc) for o in batch]
        out = []
        for o, res in zip(batch, results, strict=True):
            counts = (o.files_uploaded, o.files_skipped, o.bytes_uploaded)
            done = Outcome(o.rec_id, "registered", None, *counts, started=o.started)
            if isinstance(res, CatalogRowExists | InputError | ValueError | TypeError | OverflowError):
                # this session's rows can never go in (the others of the batch went on)
                log.debug("session.error", rec_id=o.rec_id, error=_one_line(res), exc_info=res)
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
                other = self.data._write_catalog().get_recording(rh)
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
            catalog = self.data._write_catalog()
            if catalog.list_recordings(where={"rec_id": rec_id}, limit=1):
                return
            raw = self.data.store("raw_rw")
            for meta in list(raw.list(f"recordings/{rec_id}/")):
                raw.delete(meta.key)
            log.info("session.discarded", rec_id=rec_id)
        except Exception as exc:  # the refusal stands; the sweep or an operator can remove them
            log.warning("session.discard_failed", rec_id=rec_id, error=_one_line(exc))

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
        error = _one_line(error)
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
        error = _one_line(exc)
        self.state.set_state(
            rec_id, SessionState.FAILED, error=error, next_attempt_at=time.time() + delay, count_attempt=True
        )
        log.warning("session.failed", rec_id=rec_id, error=error, attempts=attempts, retry_in_s=round(delay, 1))
        return METRICS.outcome(Outcome(rec_id, "failed", error))

    # -- drain ------------------------------------------------------------

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
        Serves ``/metrics`` meanwhile when ``metrics.enabled`` (see ``ursa_daemon.metrics``).
        """
        with serve_metrics(self.config, self.state):
            return self._drain(
                roots, on_session=on_session, on_outcome=on_outcome, on_start=on_start, summary=summary,
                shard=shard,
            )

    def _drain(
        self,
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
                if self.stop_signal is not None and summary.stopped_by is None:
                    summary.stopped_by = self.stop_signal
                summary.add(o)
                if on_outcome is not None:
                    on_outcome(o)

        registrar = _Registrar(self, report)
        try:
            self._drain_sessions(sessions, registrar, report, on_session, summary)
        finally:
            registrar.close()  # every session whose bytes are in gets registered, even on SIGTERM
        # no compaction or re-index here: daemons only append (`ursa-daemon maintain` does the rest)
        with lock:
            if self.stop_signal is not None and summary.stopped_by is None:
                summary.stopped_by = self.stop_signal
            summary.account_unfinished()
        summary.elapsed_s = time.monotonic() - started
        return summary

    def _drain_sessions(
        self,
        sessions: list[SessionDir],
        registrar: _Registrar,
        report: Callable[[Outcome], None],
        on_session: Callable[[SessionDir], None] | None,
        summary: DrainSummary,
    ) -> None:
        for sd in sessions:
            if self.stopping.is_set():
                break  # the rest are not_started
            if not sd.has_manifest:
                self.note_incomplete(sd.path)
                report(Outcome(sd.rec_id, "incomplete", INCOMPLETE_HINT.format(path=sd.path)))
                continue
            summary.started.add(sd.rec_id)
            try:
                if on_session is not None:
                    on_session(sd)
                outcome = self.process(sd.path, signature=sd.signature, defer_register=True)
            except Exception as exc:  # a progress callback's bug: this session alone
                outcome = self._boundary(sd.rec_id, exc, rec_dir=sd.path)
            if outcome.status == "registering":
                registrar.submit(outcome)
            else:
                report(outcome)

    def note_incomplete(self, rec_dir: Path) -> None:
        """A session with no manifest yet is ``discovered`` (never ``rejected``): it may still be recorded."""
        rec_id = rec_dir.name
        prior = self.state.session(rec_id)
        if prior is None:
            self.note_discovered(rec_dir)
        elif prior.state is SessionState.REJECTED:
            self.state.set_state(rec_id, SessionState.DISCOVERED)
        log.info("session.incomplete", rec_id=rec_id, error="no manifest yet")

    # -- run --------------------------------------------------------------

    def run(self, *, shed: bool = False) -> None:
        """Watch, pause and resume, upload, register, until SIGTERM/SIGINT.

        ``shed`` (the ``run`` command only: it replaces the process image): once a session
        brought in the catalog stack (lancedb, pyarrow; ~100 MiB that Python cannot unload)
        and nothing was to do for ``watch.shed_after_idle_seconds``, the process re-executes
        itself with the same arguments, keeping its pid (systemd sees nothing), its state lock
        and its stdout: the new image starts small and rescans the root as at any start.
        """
        from ursa_daemon.watch import Runner

        lower_own_priority()
        runner = Runner(self)
        runner.run(shed=shed)
        if runner.shed_requested and not self.stopping.is_set():
            self._reexec()

    def _reexec(self) -> None:
        """Replace this process image by a fresh ``run`` (see :meth:`run`). Does not return."""
        import psutil

        env = dict(os.environ, **self.lock.hand_over())
        log.info("daemon.shed", rss_mib=round(psutil.Process().memory_info().rss / 2**20, 1))
        self.state.close()
        # SIGTERM/SIGINT wait, blocked, until the new image has its handlers (the mask survives exec)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.execve(sys.executable, sys.orig_argv, env)


class _Registrar:
    """Registers drained sessions on its own thread while the next ones upload.

    What gathers within ``DEFAULT_REGISTER_LINGER_S`` of the first waiting session
    goes in as one batch (one commit per table, at most ``DEFAULT_REGISTER_BATCH``
    sessions): a slow upload's session is registered a second after its last byte,
    a backlog of small sessions in a few large commits.
    """

    def __init__(self, daemon: Daemon, report: Callable[[Outcome], None]) -> None:
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


def _one_line(reason: BaseException | str) -> str:
    """One printable line for ``status`` and the logs: an exception as ``Type: message`` (an
    ``UrsaError`` as its message alone), line breaks folded, bytes that are not UTF-8 escaped."""
    if isinstance(reason, BaseException):
        text = str(reason) if isinstance(reason, UrsaError) else f"{type(reason).__name__}: {reason}"
    else:
        text = reason
    text = " ".join(text.split()) or "unknown error"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")[:2000]


def _link_target(path: Path) -> str:
    try:
        return repr(os.readlink(path))
    except OSError:
        return "?"


def _mtime_ns(path: Path) -> int:
    try:
        return os.lstat(path).st_mtime_ns
    except OSError:
        return 0


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


def install_stop_handlers(
    stop: threading.Event,
    *,
    daemon: Daemon | None = None,
    on_second: Callable[[str], None] | None = None,
) -> None:
    """SIGTERM/SIGINT set ``stop``; the streams see it before their next chunk.

    The first signal's name goes to ``daemon.stop_signal``. A second signal calls
    ``on_second(name)`` (``drain``: report and exit at once), if given.
    """

    def handler(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if stop.is_set() and on_second is not None:
            on_second(name)
            return
        log.info("daemon.stopping", signal=name)
        if daemon is not None and daemon.stop_signal is None:
            daemon.stop_signal = name
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def build_activity(config: Config) -> Activity:
    cfg = config.activity
    root = config.recordings_root
    probe = (lambda: recorder_writing(cfg.recorder_processes, root)) if cfg.recorder_processes else None
    return Activity(quiet_seconds=cfg.quiet_seconds, flag_file=cfg.flag_file, probe=probe)
