"""One rig's status, as the metrics and the fleet see it (SPEC sections 3 and 5).

:func:`snapshot` reads what the state database holds (counts, what is pending and since
when, the last registration and the last error) and the disk under the recordings root.
The Prometheus collector (``daemon/metrics.py``) exposes it at scrape time; the
:class:`RigReporter` of ``run`` and ``drain`` keeps it as ``ursa/rigs/<rig_id>.json`` in
the assets bucket; ``ursa-daemon fleet`` reads every such document back
(``daemon/fleet.py``).

The document holds names, counts, sizes and times only: never a credential, a URL with a
query, or a path outside the recordings root.
"""

from __future__ import annotations

import functools
import json
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ursa_daemon.daemon.state_schema import SessionState
from ursa_daemon.log import get_logger, scrub

if TYPE_CHECKING:
    from ursa_daemon.config import Config
    from ursa_daemon.daemon.state import StateDB
    from ursa_daemon.store import Store

__all__ = [
    "PENDING_STATES",
    "RIGS_PREFIX",
    "RigReporter",
    "RigSnapshot",
    "package_version",
    "rig_key",
    "snapshot",
]

log = get_logger("ursa.daemon")

#: where the rig documents live in the assets bucket
RIGS_PREFIX = "ursa/rigs/"
#: a change of state is written at most this often; a heartbeat at least this often
CHANGE_MIN_S = 60.0
HEARTBEAT_S = 300.0
#: how often a running command looks whether its document is due
TICK_S = 15.0

#: states of a session that still has work to do
PENDING_STATES = (
    SessionState.DISCOVERED,
    SessionState.HASHING,
    SessionState.UPLOADING,
    SessionState.PAUSED,
    SessionState.REGISTERING,
    SessionState.FAILED,
)
#: states whose ``bytes_done`` counts bytes confirmed in the store
_SENDING = (SessionState.UPLOADING, SessionState.PAUSED, SessionState.REGISTERING)


def rig_key(rig_id: str) -> str:
    return f"{RIGS_PREFIX}{rig_id}.json"


def iso(t: float | None) -> str | None:
    """Unix time → ISO-8601 UTC as the logs write it (``2026-12-07T23:59:01.123456Z``)."""
    if t is None:
        return None
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_iso(v: object) -> float | None:
    if not isinstance(v, str) or len(v) > 40:
        return None
    try:
        dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()


@dataclass
class RigSnapshot:
    """What one rig's state database and disk say now."""

    counts: dict[str, int]
    pending_sessions: int
    pending_bytes: int
    oldest_pending: tuple[str, float] | None  # (rec_id, age_s)
    last_registration_at: float | None
    last_error: tuple[str, str, float] | None  # (rec_id, error, at)
    recording: bool
    free_bytes: int | None
    size_bytes: int | None


def snapshot(
    state: StateDB,
    root: Path,
    *,
    queued: Callable[[], Iterable[Path]] | None = None,
    now: float | None = None,
) -> RigSnapshot:
    """Read the state database (and ``queued``: session directories the runner waits on that the
    database does not list as pending). Raises what the database raises."""
    now = time.time() if now is None else now
    counts = state.counts()
    pending = state.sessions_in(PENDING_STATES)
    waiting = [(r.rec_id, _completed_at(Path(r.root) / r.rec_id) or r.updated_at) for r in pending]
    if queued is not None:
        known = {r.rec_id for r in pending}
        for rec_dir in queued():
            if rec_dir.name in known:
                continue
            rec = state.session(rec_dir.name)
            if rec is not None and rec.state not in PENDING_STATES:
                continue  # registered or rejected, only being looked at again
            t = _completed_at(rec_dir)
            if t is not None:
                waiting.append((rec_dir.name, t))
    oldest = min(waiting, key=lambda w: w[1]) if waiting else None
    pending_bytes = sum(
        max(0, r.bytes_total - (r.bytes_done if r.state in _SENDING else 0)) for r in pending
    )
    last = state.last_error()
    free: int | None = None
    size: int | None = None
    try:
        du = shutil.disk_usage(_existing(root))
        free, size = du.free, du.total
    except OSError:
        pass
    return RigSnapshot(
        counts=counts,
        pending_sessions=len({w[0] for w in waiting}),
        pending_bytes=pending_bytes,
        oldest_pending=(oldest[0], max(0.0, now - oldest[1])) if oldest else None,
        last_registration_at=state.last_change(SessionState.REGISTERED),
        last_error=(last.rec_id, last.last_error or "", last.updated_at) if last else None,
        recording=state.meta("active") == "1",
        free_bytes=free,
        size_bytes=size,
    )


def _existing(path: Path) -> Path:
    """``path``, or its nearest parent that exists (a root not created yet is on that disk)."""
    for p in (path, *path.parents):
        if p.exists():
            return p
    return path


def _completed_at(rec_dir: Path) -> float | None:
    """When the rig finished the session: its manifest's mtime (the earliest node manifest's)."""
    from ursa_daemon.session import MANIFEST_NAME, NODE_MANIFEST_DIR

    try:
        return (rec_dir / MANIFEST_NAME).stat().st_mtime
    except OSError:
        pass
    try:
        return min(p.stat().st_mtime for p in (rec_dir / NODE_MANIFEST_DIR).glob("*.json"))
    except (OSError, ValueError):
        return None


@functools.cache  # the installed distribution's metadata, parsed once per process
def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ursa-daemon")
    except PackageNotFoundError:
        return "unknown"


class _Worker(Protocol):
    config: Config
    state: StateDB

    def pause_reason(self) -> str | None: ...


class RigReporter:
    """Keeps ``ursa/rigs/<rig_id>.json`` up to date for one ``run`` or ``drain``.

    :meth:`tick` is cheap and called often (every few seconds by the caller's scheduler): it
    writes when the rig's state changed and :data:`CHANGE_MIN_S` passed since the last write,
    or when :data:`HEARTBEAT_S` passed; :meth:`publish` writes now (at start and at a clean
    stop). A failed write is logged (``rig.status_failed``) and retried at the next tick;
    it never raises, so it never stops an upload.
    """

    def __init__(
        self,
        *,
        rig_id: str,
        command: str,
        state: StateDB,
        root: Path,
        store: Callable[[], Store],
        pause_reason: Callable[[], str | None] = lambda: None,
        upload_rate: Callable[[], float] = lambda: 0.0,
        queued: Callable[[], Iterable[Path]] | None = None,
        started_at: float | None = None,
        profile: str = "",
    ) -> None:
        self.rig_id = rig_id
        self.command = command
        self.state = state
        self.root = root
        self._store = store
        self.pause_reason = pause_reason
        self.upload_rate = upload_rate
        self.queued = queued
        self.started_at = time.time() if started_at is None else started_at
        self.profile = profile
        self.host = socket.gethostname()
        self.version = package_version()
        self._lock = threading.Lock()
        self._written_at = 0.0
        self._written_sig: object = None
        self.writes = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_worker(
        cls,
        worker: _Worker,
        command: str,
        *,
        upload_rate: Callable[[], float],
        started_at: float,
        queued: Callable[[], Iterable[Path]] | None = None,
    ) -> RigReporter:
        """The reporter of ``worker``'s rig (config ``rig_id``), writing through ``assets_rw``."""
        from ursa_daemon.config import Role
        from ursa_daemon.store import get_store

        config = worker.config
        stores: list[Store] = []

        def store() -> Store:
            if not stores:  # resolved on first write: credentials that fail now may work later
                stores.append(get_store(config.active_profile, Role.ASSETS_RW))
            return stores[0]

        def reason() -> str | None:
            return worker.pause_reason()

        return cls(
            rig_id=config.rig, command=command, state=worker.state, root=config.recordings_root, store=store,
            pause_reason=reason, upload_rate=upload_rate, queued=queued, started_at=started_at,
            profile=config.profile,
        )

    def start(self, every_s: float = TICK_S) -> RigReporter:
        """Write now, then :meth:`tick` every ``every_s`` in a background thread until :meth:`stop`."""
        self.publish()
        self._thread = threading.Thread(target=self._loop, args=(every_s,), name="ursa-rig-status", daemon=True)
        self._thread.start()
        return self

    def _loop(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            self.tick()

    def stop(self, *, final: bool = True) -> None:
        """Stop ticking; with ``final``, write the document once more saying the command stopped
        (not across the idle re-exec, which monitoring must not see)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if final:
            self.publish(running=False)

    def document(self, *, running: bool = True, now: float | None = None) -> dict[str, Any]:
        """The document as it would be written now (SPEC section 5's ``fleet`` keys, less
        ``stale`` and ``needs_attention``, plus ``pause_reason``, ``size_bytes`` and ``running``)."""
        now = time.time() if now is None else now
        snap = snapshot(self.state, self.root, queued=self.queued, now=now)
        reason = self.pause_reason() if running else None
        return {
            "rig_id": self.rig_id,
            "host": self.host,
            "version": self.version,
            "command": self.command,
            "profile": self.profile,
            "running": running,
            "started_at": iso(self.started_at),
            "written_at": iso(now),
            "counts": snap.counts,
            "pending_sessions": snap.pending_sessions,
            "pending_bytes": snap.pending_bytes,
            "oldest_pending": (
                {"rec_id": snap.oldest_pending[0], "age_s": round(snap.oldest_pending[1], 1)}
                if snap.oldest_pending else None
            ),
            "last_registration_at": iso(snap.last_registration_at),
            "last_error": (
                {"rec_id": snap.last_error[0], "error": snap.last_error[1], "at": iso(snap.last_error[2])}
                if snap.last_error else None
            ),
            "recording": snap.recording,
            "paused": reason is not None,
            "pause_reason": reason,
            "free_bytes": snap.free_bytes,
            "size_bytes": snap.size_bytes,
            "upload_rate_bytes_per_s": round(self.upload_rate(), 1),
            "status_writes": self.writes + 1,  # this one included: what the document costs in requests
        }

    @staticmethod
    def _signature(doc: dict[str, Any]) -> object:
        """What counts as a change of the rig's state: recording or paused (and why), sessions
        failing or rejected, a new last error, running or stopped. Progress (sessions registered,
        bytes moved, the clock) is not: the heartbeat carries it, so a busy rig does not pay a
        write per session."""
        counts = doc["counts"]
        return (
            doc["recording"], doc["paused"], doc["pause_reason"], doc["running"],
            counts.get("failed", 0), counts.get("rejected", 0),
            doc["last_error"] and (doc["last_error"]["rec_id"], doc["last_error"]["at"]),
        )

    def tick(self, now: float | None = None) -> bool:
        """Write if due (see the class); True when a document was written."""
        now = time.time() if now is None else now
        try:
            doc = self.document(now=now)
        except Exception as exc:  # a busy state database: next tick
            log.warning("rig.status_failed", rig_id=self.rig_id, error=f"{type(exc).__name__}: {exc}")
            return False
        since = now - self._written_at
        changed = self._signature(doc) != self._written_sig
        if since >= HEARTBEAT_S or (changed and since >= CHANGE_MIN_S):
            return self._write(doc, now)
        return False

    def publish(self, *, running: bool = True) -> bool:
        """Write now (start, clean stop); True when it was written."""
        now = time.time()
        try:
            doc = self.document(running=running, now=now)
        except Exception as exc:
            log.warning("rig.status_failed", rig_id=self.rig_id, error=f"{type(exc).__name__}: {exc}")
            return False
        return self._write(doc, now)

    def _write(self, doc: dict[str, Any], now: float) -> bool:
        body = json.dumps(scrub(doc), sort_keys=True, separators=(",", ":")).encode()
        with self._lock:
            try:
                self._store().put(rig_key(self.rig_id), body, content_type="application/json")
            except Exception as exc:  # the store is down or refuses: logged, never fatal
                self.failures += 1
                log.warning("rig.status_failed", rig_id=self.rig_id, key=rig_key(self.rig_id),
                            error=f"{type(exc).__name__}: {exc}")
                return False
            self.writes += 1
            self._written_at = now
            self._written_sig = self._signature(doc)
        log.debug("rig.status_written", rig_id=self.rig_id, key=rig_key(self.rig_id))
        return True
