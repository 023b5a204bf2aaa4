"""``ursa-daemon demo`` and ``check-config``: a rig's first commands."""

from __future__ import annotations

import sys

import click

from ursa_daemon.cli.common import EXIT_FAILED, EXIT_USAGE, Context, emit_json, errors_to_exit, logs_to_stderr
from ursa_daemon.errors import ConfigError

__all__ = ["check_config_cmd", "demo"]


@click.command()
@click.pass_obj
@errors_to_exit
def demo(obj: Context) -> None:
    """Make a sample rig session and run the whole path on the local profile."""
    from ursa_daemon.cli.demo import run_demo
    from ursa_daemon.log import setup_logging

    setup_logging(stream=sys.stderr, level="WARNING")  # the demo narrates on its own

    run_demo(obj.config)


@click.command("check-config")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.pass_obj
@errors_to_exit
def check_config_cmd(obj: Context, as_json: bool) -> None:
    """Validate the config, resolve each role's credentials and probe its bucket.

    Read roles are listed, write roles put, head and delete a tiny object under
    ursa/probe/ (local profile: the directories must be writable). Secrets are
    never shown. Exit 0: all good; 1: some check failed; 2: the config is invalid.
    """
    logs_to_stderr(as_json)
    from ursa_daemon.cli.checkconfig import check_config

    try:
        config = obj.config
    except ConfigError as exc:
        if as_json:
            emit_json(
                {
                    "config": exc.path or obj.config_path,
                    "ok": False,
                    "config_error": str(exc),
                    "key": exc.key,
                    "error": str(exc),
                    "exit_code": EXIT_USAGE,
                }
            )
        click.echo(f"config error: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    report = check_config(config)
    if as_json:
        emit_json(report.as_json())
    else:
        for line in report.lines():
            click.echo(line, err=True)
    if not report.ok:
        sys.exit(EXIT_FAILED)
