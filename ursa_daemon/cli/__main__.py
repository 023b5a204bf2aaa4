"""``python -m ursa_daemon.cli``: the ``ursa-daemon`` command."""

from __future__ import annotations

from ursa_daemon.cli.app import main

if __name__ == "__main__":
    main()
