"""``ursa-daemon run``: the daemon under systemd."""

from __future__ import annotations

import os
import sys

import click

from ursa_daemon.cli.common import EXIT_OK, Context, errors_to_exit

__all__ = ["run"]


@click.command()
@click.pass_obj
@errors_to_exit
def run(obj: Context) -> None:
    """The daemon: watch, pause/resume, upload, register; stops cleanly on SIGTERM/SIGINT."""
    from ursa_daemon.daemon import Daemon

    with Daemon(obj.config, offline_ok=True) as daemon:
        daemon.run(shed=True)
    # Stopped cleanly: the state is closed and the lock released. Leave now rather than wait for the
    # interpreter's teardown, where dropping the catalog's Rust runtime was seen to take ~5 s, past
    # the stop budget systemd and the operator are promised.
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(EXIT_OK)
