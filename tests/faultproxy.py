"""A TCP proxy on 127.0.0.1 that injects transport faults, for tests (threads, no deps).

    with FaultProxy(("127.0.0.1", moto_port)) as proxy:
        proxy.reset_next(3, after_bytes=64 << 10)   # the next 3 connections die mid-response
        ... point an S3 client at proxy.endpoint ...
        assert proxy.faults == 3

Modes:

* pass (the default): bytes flow both ways untouched.
* :meth:`FaultProxy.reset_next`: the next ``n`` connections whose server→client
  byte count reaches ``after_bytes`` are reset (RST, via ``SO_LINGER`` 0) on
  both sides at that point. ``after_bytes=0`` resets a connection on accept.
  Counting per connection, at the moment it crosses the threshold, works with
  clients that keep connections alive: a small listing passes, the next large
  body through the same connection is cut.
* :meth:`FaultProxy.stall_next`: the same trigger, but the response stops for
  ``seconds`` (no server→client byte is forwarded), then carries on.
* :meth:`FaultProxy.cut_upload_next`: the next ``n`` connections whose
  client→server byte count (a request body: an upload) reaches ``after_bytes``
  are reset at that point, mid-body.
* :meth:`FaultProxy.refuse`: an outage. Live connections are reset and the
  port stops listening, so a connect is refused (ECONNREFUSED) until
  :meth:`FaultProxy.restore` listens on the same port again.
* :meth:`FaultProxy.passthrough`: cancel whatever is armed.

``bytes_up`` counts every byte forwarded client→server (what the server
received), for tests that check how much an upload sent.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from dataclasses import dataclass
from typing import Literal

__all__ = ["FaultProxy"]

_BUF = 256 << 10


@dataclass
class _Fault:
    kind: Literal["reset", "stall", "cut_upload"]
    remaining: int
    after_bytes: int
    seconds: float = 0.0


class _Conn:
    """One proxied connection: two pumps and the per-connection byte count."""

    def __init__(self, proxy: FaultProxy, client: socket.socket, server: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.server = server
        self.s2c = 0
        self.c2s = 0
        self.triggered = False
        self.closed = threading.Event()

    def run(self) -> None:
        if self.proxy._take(self, 0):
            return
        threads = [
            threading.Thread(target=self._pump, args=(self.client, self.server, False), daemon=True),
            threading.Thread(target=self._pump, args=(self.server, self.client, True), daemon=True),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self._close(reset=False)

    def _pump(self, src: socket.socket, dst: socket.socket, to_client: bool) -> None:
        try:
            while not self.closed.is_set():
                data = src.recv(_BUF)
                if not data:
                    break
                if to_client:
                    data = self._forward_to_client(data, dst)
                elif not self.triggered:
                    data = self._forward_to_server(data, dst)
                if data is None:
                    return
                dst.sendall(data)
                if not to_client:
                    self.proxy._count_up(len(data))
        except OSError:
            pass
        finally:
            for sock, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
                with contextlib.suppress(OSError):
                    sock.shutdown(how)

    def _forward_to_client(self, data: bytes, dst: socket.socket) -> bytes | None:
        """Send what lies before a fault's trigger point; ``None`` if the connection was reset."""
        if not self.triggered:
            fault = self.proxy._armed()
            if fault is not None and fault.kind != "cut_upload" and self.s2c + len(data) >= fault.after_bytes:
                head = max(0, fault.after_bytes - self.s2c)
                if head:
                    dst.sendall(data[:head])
                    self.s2c += head
                if self.proxy._take(self, self.s2c):
                    return None
                data = data[head:]
        self.s2c += len(data)
        return data

    def _forward_to_server(self, data: bytes, dst: socket.socket) -> bytes | None:
        """Request bytes up to a ``cut_upload`` trigger point; ``None`` once the connection is reset."""
        fault = self.proxy._armed()
        if fault is not None and fault.kind == "cut_upload" and self.c2s + len(data) >= fault.after_bytes:
            head = max(0, fault.after_bytes - self.c2s)
            if head:
                dst.sendall(data[:head])
            self.c2s += head
            if self.proxy._take(self, self.c2s, direction="c2s"):
                return None
            data = data[head:]
        self.c2s += len(data)
        return data

    def _close(self, *, reset: bool) -> None:
        """Close both sides; ``reset`` aborts the client side with an RST instead of a FIN.

        ``shutdown`` first wakes a pump blocked in ``recv`` (a bare ``close`` would
        not, and the socket would live on until that ``recv`` returned). On the
        client side a reset only shuts the read half, so no FIN precedes the RST.
        """
        self.closed.set()
        for sock in (self.client, self.server):
            abort = reset and sock is self.client
            try:
                if abort:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RD if abort else socket.SHUT_RDWR)
            except OSError:
                pass
            with contextlib.suppress(OSError):
                sock.close()


class FaultProxy:
    """127.0.0.1:<port> → ``target``; see the module docstring for the fault modes."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._lock = threading.Lock()
        self._fault: _Fault | None = None
        self._listener: socket.socket | None = self._listen(0)
        self.port: int = self._listener.getsockname()[1]
        #: True during an outage (:meth:`refuse`)
        self.refusing = False
        self.endpoint = f"http://127.0.0.1:{self.port}"
        #: connections accepted, and faults injected so far
        self.connections = 0
        self.faults = 0
        #: bytes forwarded client→server so far
        self.bytes_up = 0
        self._stopping = threading.Event()
        self._conns: list[_Conn] = []
        self._thread = threading.Thread(target=self._accept_loop, name="faultproxy", daemon=True)

    # -- control ----------------------------------------------------------------------

    def passthrough(self) -> None:
        with self._lock:
            self._fault = None

    def reset_next(self, n: int, *, after_bytes: int = 0) -> None:
        """Reset the next ``n`` connections when their response bytes reach ``after_bytes``."""
        with self._lock:
            self._fault = _Fault("reset", n, after_bytes)

    def stall_next(self, n: int, *, seconds: float, after_bytes: int = 0) -> None:
        """Silence the next ``n`` connections for ``seconds`` once their response bytes reach ``after_bytes``."""
        with self._lock:
            self._fault = _Fault("stall", n, after_bytes, seconds)

    def cut_upload_next(self, n: int, *, after_bytes: int) -> None:
        """Reset the next ``n`` connections once their request bytes reach ``after_bytes`` (mid-body)."""
        with self._lock:
            self._fault = _Fault("cut_upload", n, after_bytes)

    def refuse(self) -> None:
        """Start an outage: reset every live connection and stop listening (connects are refused)."""
        with self._lock:
            self.refusing = True
            listener, self._listener = self._listener, None
            conns, self._conns = list(self._conns), []
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.close()
        for conn in conns:
            conn._close(reset=True)

    def restore(self) -> None:
        """End an outage: listen on the same port again."""
        listener = self._listen(self.port)
        with self._lock:
            self.refusing = False
            self._listener = listener

    # -- internals --------------------------------------------------------------------

    def _count_up(self, n: int) -> None:
        with self._lock:
            self.bytes_up += n

    def _armed(self) -> _Fault | None:
        with self._lock:
            return self._fault if self._fault is not None and self._fault.remaining > 0 else None

    def _take(self, conn: _Conn, count: int, *, direction: str = "s2c") -> bool:
        """Apply the armed fault to ``conn`` if it triggers at ``count`` bytes; True if it was reset."""
        with self._lock:
            fault = self._fault
            if conn.triggered or fault is None or fault.remaining <= 0 or count < fault.after_bytes:
                return False
            if (fault.kind == "cut_upload") != (direction == "c2s"):
                return False
            fault.remaining -= 1
            conn.triggered = True
            self.faults += 1
        if fault.kind in ("reset", "cut_upload"):
            conn._close(reset=True)
            return True
        self._stopping.wait(fault.seconds)
        return False

    @staticmethod
    def _listen(port: int) -> socket.socket:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(64)
        sock.settimeout(0.2)  # so the accept loop sees stop() and refuse()
        return sock

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            listener = self._listener
            if listener is None:
                self._stopping.wait(0.05)
                continue
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping.is_set():
                    return
                continue  # refuse() closed it
            client.settimeout(None)
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = _Conn(self, client, server)
            with self._lock:
                self.connections += 1
                self._conns.append(conn)
            threading.Thread(target=conn.run, name="faultproxy-conn", daemon=True).start()

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            conn._close(reset=False)
        self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
