"""Prometheus metrics of ``run`` and ``drain``: the optional ``metrics:`` section of the config.

```yaml
metrics:
  enabled: true
  port: 9464          # http://127.0.0.1:9464/metrics
  host: 127.0.0.1     # loopback unless allow_remote: true (the lab's Prometheus scrapes the rig)
  allow_remote: false
  textfile: /var/lib/node_exporter/textfile_collector/ursa.prom   # optional: node_exporter
```

``textfile`` writes the same metrics every ``textfile_seconds`` (15) through
``prometheus_client.write_to_textfile``, which writes a temporary file beside it and renames
it over the target (atomic on one filesystem: node_exporter never reads half a file).

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
- ``ursa_uploads_paused`` (gauge): 1 while uploads are paused for any reason (recording, window, stop)
- ``ursa_pending_bytes`` (gauge): bytes of pending sessions not yet confirmed in the store
- ``ursa_recordings_root_free_bytes``, ``ursa_recordings_root_size_bytes`` (gauges): the disk under
  ``recordings_root``
- ``ursa_internal_errors_total`` (counter): unexpected exceptions (bugs), each logged at ERROR
  with its traceback
- ``ursa_rig_info{rig_id,version,host}`` (gauge, 1): which rig and release this endpoint is

Names: ``ursa_sessions_<outcome>_total`` for what happened to sessions, ``ursa_<verb>_<unit>_total``
for what moved, base units (``_bytes``, ``_seconds``). Counters are exposed without the
``_created`` series prometheus_client adds by default (a second, confusing series per counter).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
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

#: upload start → registered, seconds: a small session to a 40 GB day on a slow uplink
SESSION_SECONDS_BUCKETS = (1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400, 43200, 86400)


@dataclass
class _Track:
    started: float
    bytes_uploaded: int = 0
    files_uploaded: int = 0
    files_skipped: int = 0


class _StateCollector(Collector):
    """What the state database and the disk hold (:func:`~ursa_daemon.daemon.rigs.snapshot`),
    read at scrape time."""

    def __init__(self, state: StateDB, pending_dirs: Callable[[], Iterable[Path]] | None, root: Path | None,
                 paused: Callable[[], str | None] | None) -> None:
        self.state = state
        self.pending_dirs = pending_dirs
        self.root = root
        self.paused = paused

    @staticmethod
    def _families() -> dict[str, GaugeMetricFamily]:
        g = GaugeMetricFamily
        return {
            "sessions": g("ursa_sessions", "Sessions in the state database, by state.", labels=["state"]),
            "oldest": g(
                "ursa_oldest_pending_session_age_seconds",
                "Seconds since the oldest complete session that is not yet registered was finished by the rig "
                "(manifest mtime); 0 when nothing is pending.",
            ),
            "recording": g("ursa_rig_recording", "1 while the daemon sees the rig recording (uploads paused)."),
            "paused": g("ursa_uploads_paused", "1 while uploads are paused (recording, upload window, stop)."),
            "pending": g("ursa_pending_bytes", "Bytes of pending sessions not yet confirmed in the store."),
            "free": g("ursa_recordings_root_free_bytes", "Free bytes on the disk of recordings_root."),
            "size": g("ursa_recordings_root_size_bytes", "Size in bytes of the disk of recordings_root."),
        }

    def describe(self) -> Iterable[Metric]:
        return self._families().values()

    def collect(self) -> Iterable[Metric]:
        from ursa_daemon.daemon.rigs import snapshot

        f = self._families()
        try:
            snap = snapshot(self.state, self.root or Path("/"), queued=self.pending_dirs)
        except Exception as exc:  # a closed or busy database must not break a scrape
            log.debug("metrics.state_unreadable", error=repr(exc))
            return []
        for st in SessionState:
            f["sessions"].add_metric([st.value], snap.counts.get(st.value, 0))
        f["oldest"].add_metric([], snap.oldest_pending[1] if snap.oldest_pending else 0.0)
        f["recording"].add_metric([], 1.0 if snap.recording else 0.0)
        f["pending"].add_metric([], snap.pending_bytes)
        out = [f["sessions"], f["oldest"], f["recording"], f["pending"]]
        if self.paused is not None:
            f["paused"].add_metric([], 1.0 if self.paused() is not None else 0.0)
            out.append(f["paused"])
        if self.root is not None and snap.free_bytes is not None and snap.size_bytes is not None:
            f["free"].add_metric([], snap.free_bytes)
            f["size"].add_metric([], snap.size_bytes)
            out += [f["free"], f["size"]]
        return out


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
        self.internal_errors = Counter(
            "ursa_internal_errors",
            "Unexpected exceptions (bugs), each logged at ERROR with its traceback.",
            registry=r,
        )
        self.rig_info = Gauge(
            "ursa_rig_info", "1, labelled with this rig's id, release and host.", ["rig_id", "version", "host"],
            registry=r,
        )
        self._lock = threading.Lock()
        #: when this daemon started (carried across the idle re-exec)
        self.started_at = time.time()
        self._rate = 0.0
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
                    self._set_rate(t.bytes_uploaded / elapsed)

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
                    self._set_rate(o.bytes_uploaded / elapsed)
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

    def bind(
        self,
        state: StateDB,
        pending_dirs: Callable[[], Iterable[Path]] | None = None,
        *,
        root: Path | None = None,
        paused: Callable[[], str | None] | None = None,
    ) -> _StateCollector:
        """Expose what ``state`` holds (replacing an earlier binding); ``root``: the disk to
        report; ``paused``: why uploads are paused now (None: they are not)."""
        collector = _StateCollector(state, pending_dirs, root, paused)
        with self._lock:
            if self._collector is not None:
                self.registry.unregister(self._collector)
            self.registry.register(collector)
            self._collector = collector
        if self._last_registration_at == 0.0:
            try:
                last = state.last_change(SessionState.REGISTERED)
            except Exception:
                last = None
            if last:
                self._last_registration_at = last
                self.last_registration.set(self._last_registration_at)
        return collector

    def _set_rate(self, rate: float) -> None:
        self._rate = rate
        self.throughput.set(rate)

    def upload_rate(self) -> float:
        """The rate ``ursa_upload_throughput_bytes_per_second`` shows, bytes per second."""
        return self._rate

    def identify(self, rig_id: str, version: str, host: str) -> None:
        """``ursa_rig_info``: one series, this rig's."""
        self.rig_info.clear()
        self.rig_info.labels(rig_id=rig_id, version=version, host=host).set(1)

    def unbind(self, collector: _StateCollector) -> None:
        with self._lock:
            if self._collector is collector:
                self.registry.unregister(collector)
                self._collector = None

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """One sample's value, for tests and ``check-config``."""
        return self.registry.get_sample_value(name, labels)

    # -- across ``run``'s idle re-exec (:mod:`ursa_daemon.daemon.metrics_handover`) ----------

    def hand_over(self) -> dict[str, str]:
        """The environment that carries every counter, histogram and ``started_at`` to the next image."""
        from ursa_daemon.daemon.metrics_handover import carry

        return carry(self)

    def take_over(self) -> dict[str, Any] | None:
        """Restore what the previous image handed over (call before serving or counting);
        what it was (``started_at``, ``shed_at``), or None in a process that was not re-executed."""
        from ursa_daemon.daemon.metrics_handover import restore

        doc = restore(self)
        if doc is not None:
            self._rate = self.sample("ursa_upload_throughput_bytes_per_second") or 0.0
        return doc


#: the one instance the daemon updates
METRICS = Metrics()


class _Textfile:
    """``metrics.textfile``: the registry written every ``every_s`` for node_exporter's textfile
    collector, by ``prometheus_client.write_to_textfile`` (a temporary file in the same directory,
    then ``rename(2)``: node_exporter never reads half a file). A failed write is a warning."""

    def __init__(self, path: Path, every_s: float) -> None:
        self.path = path
        self.every_s = every_s
        self._stop = threading.Event()
        self._failing = False
        self._thread = threading.Thread(target=self._loop, name="ursa-metrics-textfile", daemon=True)
        self._thread.start()
        log.info("metrics.textfile", path=str(path), every_s=every_s)

    def write(self) -> bool:
        from prometheus_client import write_to_textfile

        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_to_textfile(str(self.path), METRICS.registry)
        except OSError as exc:
            if not self._failing:  # once per outage, not every 15 s
                log.warning("metrics.textfile_failed", path=str(self.path),
                            error=f"cannot write {self.path}: {exc.strerror or exc}; check the directory "
                                  "exists and the service user may write it")
            self._failing = True
            return False
        self._failing = False
        return True

    def _loop(self) -> None:
        while True:
            self.write()
            if self._stop.wait(self.every_s):
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.write()  # the last figures, as the process leaves them


class MetricsServer:
    """The ``/metrics`` endpoint (and the textfile) while ``run`` or ``drain`` lives; ``close()`` stops it."""

    def __init__(self, collector: _StateCollector, httpd: Any = None, thread: threading.Thread | None = None,
                 url: str | None = None, textfile: _Textfile | None = None) -> None:
        self._collector = collector
        self._httpd = httpd
        self._thread = thread
        self.url = url
        self.textfile = textfile

    def close(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            if self._thread is not None:
                self._thread.join(timeout=2)
            self._httpd = None
            log.info("metrics.stopped", url=self.url)
        if self.textfile is not None:
            self.textfile.close()
            self.textfile = None
        METRICS.unbind(self._collector)

    def hand_over(self) -> dict[str, str]:
        """``run`` is about to re-execute itself: stop answering but keep the listening socket
        (connections wait in its backlog) and hand it, with the metrics' values, to the next
        image; the environment for it. Logs nothing: monitoring sees no stop."""
        from ursa_daemon.daemon.metrics_handover import hand_over_server

        env = {}
        if self._httpd is not None:
            env.update(hand_over_server(self._httpd, self._thread))
            self._httpd = None
        if self.textfile is not None:
            self.textfile.close()
            self.textfile = None
        METRICS.unbind(self._collector)
        env.update(METRICS.hand_over())
        return env

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve(
    config: Config,
    state: StateDB,
    *,
    pending_dirs: Callable[[], Iterable[Path]] | None = None,
    paused: Callable[[], str | None] | None = None,
) -> MetricsServer:
    """Serve ``/metrics`` on ``config.metrics`` when enabled, and write ``metrics.textfile`` when
    set. A port in use is a warning, never fatal."""
    import socket

    from ursa_daemon.daemon.metrics_handover import inherited_socket, start_server
    from ursa_daemon.daemon.rigs import package_version

    collector = METRICS.bind(state, pending_dirs, root=config.recordings_root, paused=paused)
    METRICS.identify(config.rig, package_version(), socket.gethostname())
    cfg = config.metrics
    textfile = _Textfile(cfg.textfile, cfg.textfile_seconds) if cfg.textfile is not None else None
    inherited = inherited_socket(cfg.host, cfg.port)  # the endpoint run's idle re-exec handed over
    if not cfg.enabled:
        if inherited is not None:
            inherited.close()
        return MetricsServer(collector, textfile=textfile)
    try:
        httpd, thread = start_server(cfg.host, cfg.port, METRICS.registry, inherited)
    except OSError as exc:
        log.warning("metrics.unavailable", error=f"cannot listen on {cfg.host}:{cfg.port}: {exc.strerror or exc}")
        return MetricsServer(collector, textfile=textfile)
    host = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
    url = f"http://{host}:{cfg.port}/metrics"
    if inherited is None:  # the same endpoint, never down, across the re-exec: nothing to say
        log.info("metrics.serving", url=url)
    return MetricsServer(collector, httpd, thread, url, textfile)
