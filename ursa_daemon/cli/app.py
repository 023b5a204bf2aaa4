"""``ursa-daemon``: thin subcommands over the API and the daemon.

Exit codes: 0 done; 1 some sessions failed or were rejected; 2 usage or
config error; 3 another process holds the state lock; 130/143 stopped by
SIGINT/SIGTERM before the work was finished. ``--json`` prints one
JSON document on stdout; human output and progress go to stderr. Heavy
modules are imported inside the commands so ``--help`` stays fast: the
``cmd_*`` modules import only click and this package at load time.
"""

from __future__ import annotations

import sys

import click

from ursa_daemon.cli.cmd_download import download, verify
from ursa_daemon.cli.cmd_drain import drain
from ursa_daemon.cli.cmd_fleet import fleet
from ursa_daemon.cli.cmd_ingest import ingest, reconstruct_manifest, register_from_store_cmd
from ursa_daemon.cli.cmd_maintain import maintain
from ursa_daemon.cli.cmd_query import query
from ursa_daemon.cli.cmd_run import run
from ursa_daemon.cli.cmd_setup import check_config_cmd, demo
from ursa_daemon.cli.cmd_status import status
from ursa_daemon.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Context

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Config file (default: ./config.yaml, else /etc/ursa-daemon/config.yaml).",
)
@click.option("--profile", default=None, help="Use this entry of profiles: instead of the configured one.")
@click.version_option(package_name="ursa-daemon")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, profile: str | None) -> None:
    """Rig-side ingest daemon: hash, upload and catalog recording sessions."""
    from ursa_daemon.log import setup_logging

    setup_logging()
    ctx.obj = Context(config_path, profile)


for _command in (
    query, ingest, register_from_store_cmd, reconstruct_manifest, run, drain, status,
    download, verify, maintain, fleet, demo, check_config_cmd,
):
    cli.add_command(_command)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        cli.main(args=argv, prog_name="ursa-daemon", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        exc.show()
        sys.exit(EXIT_USAGE)
    except click.Abort as exc:  # Ctrl-C before a command installed its own handler
        click.echo("aborted", err=True)
        sys.exit(130 if isinstance(exc.__context__, KeyboardInterrupt) else EXIT_FAILED)
    sys.exit(EXIT_OK)
