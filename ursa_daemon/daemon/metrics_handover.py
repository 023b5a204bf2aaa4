"""``/metrics`` across ``run``'s idle re-exec: the same listening socket, the same counters.

When ``run`` re-executes itself to shed memory (``Daemon._reexec``), monitoring must see
nothing of it. The old image stops serving but keeps the listening socket open and
inheritable (:func:`hand_over_server`; a connection that arrives meanwhile waits in the
kernel's listen backlog, it is never refused) and puts its descriptor in
:data:`METRICS_FD_ENV`; the new image builds its HTTP server around that socket
(:func:`inherited_socket`, :func:`start_server`: prometheus_client's ``start_http_server``
cannot take a socket, so its WSGI server is built here the way prometheus_client builds it).
The values of every counter and histogram (and the unlabelled gauges), with
``Metrics.started_at``, go through :data:`METRICS_STATE_ENV` (:func:`carry`) and are
restored before the new image serves (:func:`restore`), the way
:meth:`~ursa_daemon.daemon.lock.StateLock.hand_over` carries the state lock.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler, make_wsgi_app

from ursa_daemon.log import get_logger

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = [
    "METRICS_FD_ENV",
    "METRICS_STATE_ENV",
    "carry",
    "hand_over_server",
    "inherited_socket",
    "restore",
    "start_server",
]

log = get_logger("ursa.metrics")

#: the listening socket of ``/metrics``, handed to the next image of ``run``
METRICS_FD_ENV = "URSA_METRICS_FD"
#: the metrics' values and ``started_at``, as JSON, handed to the next image of ``run``
METRICS_STATE_ENV = "URSA_METRICS_STATE"
#: connections that may wait in the listen backlog while the process image is replaced
BACKLOG = 64
#: how long a handover waits for the scrapes being answered to finish
DRAIN_S = 2.0


class Metrics(Protocol):
    """What is carried (``ursa_daemon.daemon.metrics.Metrics``): its counters, histograms and
    gauges are its attributes."""

    started_at: float


class _Server(ThreadingWSGIServer):
    """prometheus_client's threaded WSGI server, with a deeper backlog and a count of the
    requests in progress (a handover lets them finish)."""

    request_queue_size = BACKLOG

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.busy = 0
        self._busy_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._busy_lock:
            self.busy += 1
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._done()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._done()

    def _done(self) -> None:
        with self._busy_lock:
            self.busy -= 1


def _address(host: str, port: int) -> tuple[socket.AddressFamily, str]:
    """The family and address to bind ``host`` with (as prometheus_client picks them)."""
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    return family, str(sockaddr[0])


def inherited_socket(host: str, port: int) -> socket.socket | None:
    """The listening socket the previous image handed over, if it listens on ``host:port``
    (the config may have changed between the two); else None (it is closed)."""
    raw = os.environ.pop(METRICS_FD_ENV, None)
    if raw is None or not raw.isdigit():
        return None
    try:
        sock = socket.socket(fileno=int(raw))
    except OSError:
        return None
    try:
        family, addr = _address(host, port)
        bound = sock.getsockname()
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        if sock.family == family and sock.type == socket.SOCK_STREAM and listening and tuple(bound[:2]) == (addr, port):
            sock.set_inheritable(False)
            return sock
    except OSError:
        pass
    sock.close()
    return None


def start_server(
    host: str, port: int, registry: CollectorRegistry, sock: socket.socket | None = None
) -> tuple[_Server, threading.Thread]:
    """Serve ``registry`` on ``host:port`` in a daemon thread: on ``sock`` when given (an inherited
    listening socket), else on a socket bound now. Raises ``OSError`` when the port is taken."""
    family, addr = _address(host, port)

    class Server(_Server):
        address_family = family

    if sock is None:
        httpd = Server((addr, port), _SilentHandler)
    else:
        httpd = Server((addr, port), _SilentHandler, bind_and_activate=False)
        httpd.socket.close()
        httpd.socket = sock
        httpd.server_address = sock.getsockname()
        httpd.server_name = socket.getfqdn(addr)  # what HTTPServer.server_bind sets
        httpd.server_port = port
        httpd.setup_environ()
    httpd.set_app(make_wsgi_app(registry))
    thread = threading.Thread(target=httpd.serve_forever, name="ursa-metrics", daemon=True)
    thread.start()
    return httpd, thread


def hand_over_server(httpd: _Server, thread: threading.Thread | None) -> dict[str, str]:
    """Stop answering but keep listening: the scrapes in progress finish, new connections wait
    in the backlog; the socket stays open (and is inherited by an ``exec``). The environment
    that names it to the next image."""
    httpd.shutdown()
    if thread is not None:
        thread.join(timeout=2)
    deadline = time.monotonic() + DRAIN_S
    while httpd.busy > 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    fd = httpd.socket.detach()  # no longer the socket object's: collecting it does not close it
    os.set_inheritable(fd, True)
    return {METRICS_FD_ENV: str(fd)}


def carry(metrics: Metrics) -> dict[str, str]:
    """The environment that hands ``metrics``' values to the next image (see :func:`restore`)."""
    samples = []
    for attr, m in vars(metrics).items():
        if isinstance(m, Counter | Histogram | Gauge):
            for family in m.collect():
                for s in family.samples:
                    if isinstance(m, Gauge) and s.labels:
                        continue  # a labelled gauge (rig info) is set again by the new image
                    samples.append([attr, s.name, s.labels, s.value])
    doc = {"started_at": metrics.started_at, "shed_at": time.time(), "samples": samples}
    return {METRICS_STATE_ENV: json.dumps(doc)}


def restore(metrics: Metrics) -> dict[str, Any] | None:
    """In the image ``run`` re-executed itself as, before anything counts or is served: the
    values :func:`carry` handed over, and ``started_at``. What was handed over (None: nothing)."""
    raw = os.environ.pop(METRICS_STATE_ENV, None)
    if not raw:
        return None
    try:
        doc = json.loads(raw)
        metrics.started_at = float(doc["started_at"])
    except (ValueError, KeyError, TypeError):
        return None
    histograms: dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[str, dict[str, str], float]]] = {}
    for attr, name, labels, value in doc.get("samples", []):
        m = getattr(metrics, attr, None)
        try:
            if isinstance(m, Counter) and name.endswith("_total"):
                (m.labels(**labels) if labels else m).inc(value)
            elif isinstance(m, Gauge) and not labels:
                m.set(value)
            elif isinstance(m, Histogram):
                key = tuple(sorted((k, v) for k, v in labels.items() if k != "le"))
                histograms.setdefault((attr, key), []).append((name, labels, value))
        except (ValueError, TypeError) as exc:  # a metric renamed or relabelled by an upgrade
            log.debug("metrics.restore_skipped", error=f"{attr} {name}: {exc}")
    for (attr, key), rows in histograms.items():
        _restore_histogram(getattr(metrics, attr), dict(key), rows)
    return dict(doc)


def _restore_histogram(h: Histogram, labels: dict[str, str], rows: list[tuple[str, dict[str, str], float]]) -> None:
    """Histograms have no public setter: their bucket counts and sum are set through the child's values."""
    child = h.labels(**labels) if labels else h
    buckets = sorted(
        ((float(lab["le"]), v) for name, lab, v in rows if name.endswith("_bucket")), key=lambda b: b[0]
    )
    total = next((v for name, _, v in rows if name.endswith("_sum")), 0.0)
    values = getattr(child, "_buckets", None)
    if values is None or len(values) != len(buckets):
        return  # other buckets than the handing image's: start again
    below = 0.0
    for value, (_, cumulative) in zip(values, buckets, strict=True):
        value.set(cumulative - below)
        below = cumulative
    child._sum.set(total)
