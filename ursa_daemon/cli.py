"""``ursa-daemon``: thin subcommands over the API and the daemon.

Exit codes: 0 done; 1 some sessions failed or were rejected; 2 usage or
config error; 3 another process holds the state lock. ``--json`` prints one
JSON document on stdout; human output and progress go to stderr. Heavy
modules are imported inside the commands so ``--help`` stays fast.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ursa_daemon.errors import ConfigError, StateLocked, UrsaError

if TYPE_CHECKING:
    from ursa_daemon.api import DataInterface
    from ursa_daemon.config import Config

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3

F = TypeVar("F", bound=Callable[..., Any])


class Context:
    """What the group options resolve to, shared by every command."""

    def __init__(self, config_path: str | None, profile: str | None) -> None:
        self.config_path = config_path
        self.profile = profile
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            from ursa_daemon.config import load_config

            cfg = load_config(self.config_path)
            self._config = cfg.with_profile(self.profile) if self.profile else cfg
        return self._config

    def data(self) -> DataInterface:
        from ursa_daemon.api import DataInterface

        return DataInterface(config=self.config)


def _errors_to_exit(func: F) -> F:
    """Map ``UrsaError`` to a message and exit code; bugs keep their tracebacks."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            click.echo(f"config error: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except StateLocked as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_LOCKED)
        except UrsaError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_FAILED)

    return wrapper  # type: ignore[return-value]


def _emit_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2, sort_keys=False, default=str))


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


@cli.command()
@click.option("--recording-hash", default=None, help="Exactly this recording.")
@click.option("--participant", "participants", multiple=True, help="Recordings of this participant (repeatable: any of).")
@click.option("--modality", "modalities", multiple=True, help="Recordings with this modality (repeatable: any of).")
@click.option("--rec-id", default=None, help="Exactly this session id.")
@click.option("--limit", type=click.IntRange(min=1), default=None)
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.pass_obj
@_errors_to_exit
def query(
    obj: Context,
    recording_hash: str | None,
    participants: tuple[str, ...],
    modalities: tuple[str, ...],
    rec_id: str | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """Search the catalog."""
    results = obj.data().query(
        recording_hash=recording_hash,
        participants=list(participants) or None,
        modalities=list(modalities) or None,
        rec_id=rec_id,
        limit=limit,
    )
    if as_json:
        _emit_json([r.to_json() for r in results])
        return
    _print_results(results)


def _print_results(results: list[Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{len(results)} recording(s)")
    for col in ("rec_id", "recording_hash", "participants", "duration_s", "modalities"):
        table.add_column(col)
    for r in results:
        table.add_row(
            r.rec_id,
            r.recording_hash[:16] + "…",
            ", ".join(r.participant_ids) or "-",
            f"{r.duration_ns / 1e9:.1f}",
            ", ".join(sorted(r.modalities)),
        )
    Console(stderr=False).print(table)


@cli.command()
@click.pass_obj
@_errors_to_exit
def demo(obj: Context) -> None:
    """Make a sample rig session and run the whole path on the local profile."""
    from ursa_daemon.demo import run_demo

    run_demo(obj.config)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        cli.main(args=argv, prog_name="ursa-daemon", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        exc.show()
        sys.exit(EXIT_USAGE)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(EXIT_FAILED)
    sys.exit(EXIT_OK)


if __name__ == "__main__":
    main()
