"""The daemon layer (rank 4): the per-session state machine, ``run`` and ``drain``.

Modules, lowest first (each imports only those above it, never ``ursa_daemon.api``):

- ``state_schema``, ``state``, ``lock``: the SQLite resume state (the only SQL) and its lock
- ``outcome``: what one session's processing and a drain report
- ``activity``: is the rig recording, is an upload window open
- ``systemd``: ``sd_notify`` and the SIGTERM/SIGINT handlers
- ``metrics``: the optional Prometheus endpoint
- ``progress``: live progress of the session in flight, for ``status``
- ``worker``: one session through SPEC section 5's states (the error boundary)
- ``drain``, ``watch``: the two loops (``drain``; ``run``'s watcher and scheduler)
- ``core``: :class:`Daemon`, the state lock plus the loops
- ``maintain``: catalog maintenance as one job, under a lease

Names are imported on first use: ``import ursa_daemon.daemon`` costs nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_SOURCES = {
    "DEFAULT_STOP_BUDGET_S": "systemd",
    "Daemon": "core",
    "DrainSummary": "outcome",
    "LiveProgress": "progress",
    "Outcome": "outcome",
    "build_activity": "activity",
    "drain_sessions": "drain",
    "in_upload_window": "activity",
    "install_stop_handlers": "systemd",
    "sd_notify": "systemd",
}

if TYPE_CHECKING:
    from ursa_daemon.daemon.activity import build_activity, in_upload_window
    from ursa_daemon.daemon.core import Daemon
    from ursa_daemon.daemon.drain import drain_sessions
    from ursa_daemon.daemon.outcome import DrainSummary, Outcome
    from ursa_daemon.daemon.progress import LiveProgress
    from ursa_daemon.daemon.systemd import DEFAULT_STOP_BUDGET_S, install_stop_handlers, sd_notify

__all__ = [
    "DEFAULT_STOP_BUDGET_S",
    "Daemon",
    "DrainSummary",
    "LiveProgress",
    "Outcome",
    "build_activity",
    "drain_sessions",
    "in_upload_window",
    "install_stop_handlers",
    "sd_notify",
]


def __getattr__(name: str) -> Any:
    module = _SOURCES.get(name)
    if module is None:
        raise AttributeError(f"module 'ursa_daemon.daemon' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ursa_daemon.daemon.{module}"), name)
    globals()[name] = value
    return value
