"""The ``ursa-daemon`` command (rank 6, the top layer): ``main`` is the console script.

One module per group of subcommands (``cmd_*``), the shared error mapper and
exit codes in ``common``, what is printed for a person in ``render``; the group
and ``main`` in ``app``. ``checkconfig`` and ``demo`` are what ``check-config``
and ``demo`` run. Every heavy import happens inside a command.
"""

from __future__ import annotations

from ursa_daemon.cli.app import main

__all__ = ["main"]
