"""Prometheus metrics of ``run`` and ``drain``: the optional ``metrics:`` section of the config.

```yaml
metrics:
  enabled: true
  port: 9464          # http://127.0.0.1:9464/metrics
  host: 127.0.0.1     # loopback only: scrape it locally or through an SSH tunnel / node agent
```

Every metric lives in one private :class:`~prometheus_client.CollectorRegistry`
(never the library's global one). The daemon updates the counters where
outcomes and progress already happen (``Daemon._ingest``, ``_reject``,
``_fail``); they are cheap and kept whether or not the endpoint is served.
What the state database knows (sessions by state, the age of the oldest
pending session, whether the rig records) is read at scrape time.

Metrics (counters and gauges that move during uploads change as each file completes):

- ``ursa_sessions{state}`` (gauge): sessions in the state database, by state (SPEC section 5)
- ``ursa_uploaded_bytes_total``, ``ursa_uploaded_files_total`` (counters): PUT to the raw bucket
- ``ursa_skipped_files_total`` (counter): already in the store with the same size and sha256
- ``ursa_upload_throughput_bytes_per_second`` (gauge): upload rate of the session in flight,
  else of the last session that moved bytes
- ``ursa_session_upload_seconds`` (histogram): upload start to registered, per registered session
- ``ursa_sessions_registered_total`` (counter): sessions registered by this process
- ``ursa_sessions_paused_total`` (counter): uploads paused (rig recording, window closed, stop)
- ``ursa_sessions_failed_total`` (counter): failed attempts, each retried with backoff
- ``ursa_sessions_rejected_total`` (counter): bad input, not retried until the session changes
- ``ursa_last_registration_timestamp_seconds`` (gauge): unix time of the last registration
  (taken from the state database at start)
- ``ursa_oldest_pending_session_age_seconds`` (gauge): now minus the manifest mtime of the oldest
  complete session not yet registered (0: none)
- ``ursa_rig_recording`` (gauge): 1 while ``run`` sees the rig recording (uploads paused)

Names: ``ursa_sessions_<outcome>_total`` for what happened to sessions, ``ursa_<verb>_<unit>_total``
for what moved, base units (``_bytes``, ``_seconds``). Counters are exposed without the
``_created`` series prometheus_client adds by default (a second, confusing series per counter).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ursa_daemon.daemon.state_schema import SessionState
from ursa_daemon.log import get_logger

if TYPE_CHECKING:
    from ursa_daemon.config import Config
    from ursa_daemon.daemon.outcome import Outcome
    from ursa_daemon.daemon.state import StateDB
    from ursa_daemon.transfer.ingest import UploadProgress

__all__ = ["METRICS", "Metrics", "MetricsServer", "serve"]

log = get_logger("ursa.metrics")

#: states of a session that still has work to do
PENDING_STATES = (
    SessionState.DISCOVERED,
    SessionState.HASHING,
    SessionState.UPLOADING,
    SessionState.PAUSED,
    SessionState.REGISTERING,
    SessionState.FAILED,
)

#: upload start → registered, seconds: a small session to a 40 GB day on a slow uplink
SESSION_SECONDS_BUCKETS = (1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400)


@dataclass
class _Track:
    started: float
    bytes_uploaded: int = 0
    files_uploaded: int = 0
    files_skipped: int = 0


class _StateCollector(Collector):
    """What the state database holds, read at scrape time."""

    def __init__(self, state: StateDB, pending_dirs: Callable[[], Iterable[Path]] | None) -> None:
        self.state = state
        self.pending_dirs = pending_dirs

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("ursa_sessions", "Sessions in the state database, by state.", labels=["state"]),
            GaugeMetricFamily(
                "ursa_oldest_pending_session_age_seconds",
                "Seconds since the oldest complete session that is not yet registered was finished by the rig "
                "(manifest mtime); 0 when nothing is pending.",
            ),
            GaugeMetricFamily("ursa_rig_recording", "1 while the daemon sees the rig recording (uploads paused)."),
        )

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        sessions, oldest, recording = self._families()
        try:
            counts = self.state.counts()
            pending = [rec for st in PENDING_STATES for rec in self.state.sessions(st)]
            active = self.state.meta("active") == "1"
        except Exception as exc:  # a closed or busy database must not break a scrape
            log.debug("metrics.state_unreadable", error=repr(exc))
            return []
        for st in SessionState:
            sessions.add_metric([st.value], counts.get(st.value, 0))
        now = time.time()
        times = [_completed_at(Path(rec.root) / rec.rec_id) or rec.updated_at for rec in pending]
        if self.pending_dirs is not None:
            known = {rec.rec_id for rec in pending}
            for rec_dir in self._queued(known):
                t = _completed_at(rec_dir)
                if t is not None:
                    times.append(t)
        oldest.add_metric([], max(0.0, now - min(times)) if times else 0.0)
        recording.add_metric([], 1.0 if active else 0.0)
        return [sessions, oldest, recording]

    def _queued(self, known: set[str]) -> Iterator[Path]:
        """Complete sessions the runner has queued that the database does not list as pending."""
        assert self.pending_dirs is not None
        for rec_dir in self.pending_dirs():
            if rec_dir.name in known:
                continue
            rec = self.state.session(rec_dir.name)
            if rec is None or rec.state in PENDING_STATES:
                yield rec_dir


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


class Metrics:
    """The daemon's counters and gauges, in a private registry."""

    def __init__(self) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series beside each counter
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.bytes_uploaded = Counter(
            "ursa_uploaded_bytes", "Bytes PUT to the raw bucket (skipped files not counted).", registry=r
        )
        self.files_uploaded = Counter("ursa_uploaded_files", "Files PUT to the raw bucket.", registry=r)
        self.files_skipped = Counter(
            "ursa_skipped_files", "Files already in the store with the same size and sha256.", registry=r
        )
        self.throughput = Gauge(
            "ursa_upload_throughput_bytes_per_second",
            "Upload rate of the session in flight, else of the last session that moved bytes.",
            registry=r,
        )
        self.session_seconds = Histogram(
            "ursa_session_upload_seconds",
            "Seconds from upload start to registered, per registered session.",
            buckets=SESSION_SECONDS_BUCKETS,
            registry=r,
        )
        self.registered = Counter("ursa_sessions_registered", "Sessions registered by this process.", registry=r)
        self.pauses = Counter(
            "ursa_sessions_paused", "Uploads paused (rig recording, upload window closed, stop).", registry=r
        )
        self.failures = Counter(
            "ursa_sessions_failed", "Failed session attempts; each is retried with backoff.", registry=r
        )
        self.rejected = Counter(
            "ursa_sessions_rejected", "Sessions rejected as bad input (not retried until they change).", registry=r
        )
        self.last_registration = Gauge(
            "ursa_last_registration_timestamp_seconds", "Unix time of the last successful registration.", registry=r
        )
        self._lock = threading.Lock()
        self._tracks: dict[str, _Track] = {}
        self._collector: _StateCollector | None = None
        self._last_registration_at = 0.0

    # -- hooks the daemon calls -------------------------------------------

    def session_started(self, rec_id: str) -> None:
        """Uploading of ``rec_id`` starts now (its progress counts from zero)."""
        with self._lock:
            self._tracks[rec_id] = _Track(started=time.monotonic())

    def progress(self, rec_id: str, p: UploadProgress) -> None:
        """A file of ``rec_id`` is done: count what moved since the last call."""
        with self._lock:
            t = self._tracks.setdefault(rec_id, _Track(started=time.monotonic()))
            delta = p.bytes_uploaded - t.bytes_uploaded
            if delta > 0:
                t.bytes_uploaded = p.bytes_uploaded
                t.files_uploaded += 1
                self.bytes_uploaded.inc(delta)
                self.files_uploaded.inc()
                elapsed = time.monotonic() - t.started
                if elapsed > 0:
                    self.throughput.set(t.bytes_uploaded / elapsed)

    def outcome(self, o: Outcome) -> Outcome:
        """One ``process`` call ended: reconcile the counts, count the outcome; returns ``o``."""
        with self._lock:
            t = self._tracks.pop(o.rec_id, None)
            if t is not None:
                self.bytes_uploaded.inc(max(0, o.bytes_uploaded - t.bytes_uploaded))
                self.files_uploaded.inc(max(0, o.files_uploaded - t.files_uploaded))
                self.files_skipped.inc(max(0, o.files_skipped))
                elapsed = time.monotonic() - t.started
                if o.bytes_uploaded > 0 and elapsed > 0:
                    self.throughput.set(o.bytes_uploaded / elapsed)
            if o.status == "registered":
                self.registered.inc()
                self._last_registration_at = time.time()
                self.last_registration.set(self._last_registration_at)
                if t is not None:
                    self.session_seconds.observe(time.monotonic() - t.started)
            elif o.status == "paused":
                self.pauses.inc()
            elif o.status == "failed":
                self.failures.inc()
            elif o.status == "rejected":
                self.rejected.inc()
        return o

    # -- the state database, read at scrape time --------------------------

    def bind(self, state: StateDB, pending_dirs: Callable[[], Iterable[Path]] | None = None) -> _StateCollector:
        """Expose what ``state`` holds (replacing an earlier binding)."""
        collector = _StateCollector(state, pending_dirs)
        with self._lock:
            if self._collector is not None:
                self.registry.unregister(self._collector)
            self.registry.register(collector)
            self._collector = collector
        if self._last_registration_at == 0.0:
            try:
                done = state.sessions(SessionState.REGISTERED)
            except Exception:
                done = []
            if done:
                self._last_registration_at = max(rec.updated_at for rec in done)
                self.last_registration.set(self._last_registration_at)
        return collector

    def unbind(self, collector: _StateCollector) -> None:
        with self._lock:
            if self._collector is collector:
                self.registry.unregister(collector)
                self._collector = None

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """One sample's value, for tests and ``check-config``."""
        return self.registry.get_sample_value(name, labels)


#: the one instance the daemon updates
METRICS = Metrics()


class MetricsServer:
    """The ``/metrics`` endpoint while ``run`` or ``drain`` lives; ``close()`` stops it."""

    def __init__(self, collector: _StateCollector, httpd: Any = None, thread: threading.Thread | None = None,
                 url: str | None = None) -> None:
        self._collector = collector
        self._httpd = httpd
        self._thread = thread
        self.url = url

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            if self._thread is not None:
                self._thread.join(timeout=2)
            self._httpd = None
            log.info("metrics.stopped", url=self.url)
        METRICS.unbind(self._collector)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(
    config: Config, state: StateDB, *, pending_dirs: Callable[[], Iterable[Path]] | None = None
) -> MetricsServer:
    """Serve ``/metrics`` on ``config.metrics`` when enabled. A port in use is a warning, never fatal."""
    collector = METRICS.bind(state, pending_dirs)
    cfg = config.metrics
    if not cfg.enabled:
        return MetricsServer(collector)
    try:
        httpd, thread = start_http_server(cfg.port, addr=cfg.host, registry=METRICS.registry)
    except OSError as exc:
        log.warning("metrics.unavailable", error=f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}")
        return MetricsServer(collector)
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    url = f"http://{host}:{cfg.port}/metrics"
    log.info("metrics.serving", url=url)
    return MetricsServer(collector, httpd, thread, url)
