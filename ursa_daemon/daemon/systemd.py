"""The daemon under systemd: ``sd_notify`` datagrams and the SIGTERM/SIGINT handlers."""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any, Protocol

from ursa_daemon.log import get_logger

__all__ = ["DEFAULT_STOP_BUDGET_S", "Stoppable", "install_stop_handlers", "sd_notify"]

log = get_logger("ursa.daemon")

#: SIGTERM must stop the daemon within this budget (systemd TimeoutStopSec is longer)
DEFAULT_STOP_BUDGET_S = 4.0


class Stoppable(Protocol):
    """What the stop handlers tell of the signal that stopped it (a :class:`~ursa_daemon.daemon.core.Daemon`)."""

    stop_signal: str | None


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


def install_stop_handlers(
    stop: threading.Event,
    *,
    daemon: Stoppable | None = None,
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
