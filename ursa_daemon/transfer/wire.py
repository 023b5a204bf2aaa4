"""Cutting requests in flight: the sockets of bodies still being sent, reset on a pause.

A pause must stop the wire at once, also for a request stuck in ``sendall``
(the server not reading): a body checks the cancel event only between two
slices, so the stop watcher also resets the sockets registered here.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import sys
import threading
from types import FrameType
from typing import Any

__all__ = ["_Wire", "sending_socket"]


class _Wire:
    """The sockets of requests whose body is still being sent; :meth:`cut` shuts them all down.

    A body finds its socket on its first read: the HTTP layer's connection
    object (``self.sock``) is a few frames up the stack (urllib3's
    ``HTTPConnection.request`` iterating the body). If it is not there, the
    body is simply not registered and stops at its next read instead.
    A socket stays registered until its request returns (a body fully sent may
    still sit in kernel buffers). ``shutdown`` wakes a thread blocked in
    ``sendall`` or waiting for the response; the HTTP layer then closes the
    connection with a reset, which drops what the kernel still held.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._socks: set[socket.socket] = set()
        self.cut_done = False

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            if self.cut_done:
                _shutdown(sock)
            else:
                self._socks.add(sock)

    def discard(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.discard(sock)

    def cut(self) -> None:
        with self._lock:
            self.cut_done = True
            socks, self._socks = self._socks, set()
        for sock in socks:
            _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    """Reset ``sock`` now, dropping what its kernel queue still holds; its owner sees an error.

    On Linux, ``connect()`` to an ``AF_UNSPEC`` address disconnects a TCP socket
    (``tcp_disconnect``: a reset, the send queue purged, blocked callers woken)
    without closing the descriptor, which its owner thread still uses.
    Elsewhere, or if that fails, ``shutdown`` wakes the owner, whose close then
    resets the connection (``SO_LINGER`` 0).
    """
    fd = sock.fileno()
    if fd >= 0 and _disconnect(fd):
        return
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _disconnect(fd: int) -> bool:
    global _libc
    if not sys.platform.startswith("linux"):
        return False
    try:
        if _libc is None:
            import ctypes

            _libc = ctypes.CDLL(None, use_errno=True)
        unspec = struct.pack("=H14x", socket.AF_UNSPEC)
        return int(_libc.connect(fd, unspec, len(unspec))) == 0
    except (OSError, AttributeError):
        return False


_libc: Any = None


def sending_socket() -> socket.socket | None:
    """The socket of the HTTP connection whose body read called us, if the stack shows it."""
    frame: FrameType | None = sys._getframe(3)  # sending_socket <- _register <- _read <- read <- HTTP layer
    for _ in range(6):
        if frame is None:
            return None
        sock = getattr(frame.f_locals.get("self"), "sock", None)
        if isinstance(sock, socket.socket):
            return sock
        frame = frame.f_back
    return None
