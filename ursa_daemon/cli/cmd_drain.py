"""``ursa-daemon drain``: push every complete session under a root, then exit."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ursa_daemon.cli.common import Context, errors_to_exit, logs_to_stderr
from ursa_daemon.cli.render import drain_report
from ursa_daemon.errors import ConfigError

if TYPE_CHECKING:
    from ursa_daemon.config import Config
    from ursa_daemon.daemon import Daemon, DrainSummary

__all__ = ["drain"]


@click.command()
@click.argument("roots", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--shard",
    metavar="K/N",
    default=None,
    help="Only the sessions whose rec_id hashes to shard K of N (1 <= K <= N): N machines, one share.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON summary on stdout.")
@click.pass_obj
@errors_to_exit
def drain(obj: Context, roots: tuple[Path, ...], shard: str | None, as_json: bool) -> None:
    """Process every complete session under ROOT (default: the configured root), then exit.

    A ROOT that is itself a rec_* session directory is that one session. With
    --shard K/N, N machines (each its own state_dir) split the sessions by a stable
    hash of rec_id, with no overlap; overlapping drains are safe too (a session
    already in the store and catalog is skipped), they only cost bandwidth.
    Exit 0: every session done; 1: some failed or were rejected; 130/143:
    stopped by SIGINT/SIGTERM first (a second signal stops at once). Sessions
    without a manifest yet are listed as incomplete, not as errors.
    """
    began = time.monotonic()
    logs_to_stderr(as_json)
    from ursa_daemon.session import parse_shard

    try:
        shard_kn = None if shard is None else parse_shard(shard)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--shard") from None
    from rich.console import Console

    from ursa_daemon.daemon import Daemon, DrainSummary, install_stop_handlers
    from ursa_daemon.log import drain_progress

    config = obj.config
    targets = [p.resolve() for p in roots] or [config.recordings_root]
    _check_drain_roots(targets, given=bool(roots), config=config)
    console = Console(stderr=True)
    summary = DrainSummary()
    abort = _abort_at_once(summary, began, as_json, console)
    with Daemon(config) as daemon:
        install_stop_handlers(daemon.stopping, daemon=daemon, on_second=abort)
        with drain_progress(console) as bar:
            _drain_with_progress(daemon, bar, targets, summary, shard_kn)
    summary.elapsed_s = time.monotonic() - began  # wall time, the scan included
    drain_report(summary, as_json, console)
    if summary.exit_code:
        sys.exit(summary.exit_code)


def _abort_at_once(summary: DrainSummary, began: float, as_json: bool, console: Any) -> Callable[[str], None]:
    """What a second signal does: say what is known and stop now."""

    def abort(signame: str) -> None:
        summary.stopped_by = summary.stopped_by or signame
        summary.account_unfinished()
        summary.elapsed_s = time.monotonic() - began
        if console.is_terminal:
            console.show_cursor(True)
        drain_report(summary, as_json, console, aborted=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(summary.exit_code if summary.exit_code >= 128 else 128 + int(signal.Signals[signame]))

    return abort


def _drain_with_progress(
    daemon: Daemon, bar: Any, targets: list[Path], summary: DrainSummary, shard: tuple[int, int] | None
) -> None:
    """The drain, with a bar of sessions done and one of the current session's bytes."""
    sessions = bar.add_task("sessions", total=None, unit="sessions")
    current = bar.add_task("", total=None, unit="bytes", visible=False)
    shown = [""]

    def on_bytes(rec_id: str, phase: str, done: int, total: int) -> None:
        label = rec_id if phase == "uploading" else f"{rec_id} {phase}"
        if label != shown[0]:  # a new session or phase: its own rate and time left
            shown[0] = label
            bar.reset(current, description=label, completed=done, total=total, visible=True)
        else:
            bar.update(current, completed=done, total=total)

    daemon.on_bytes = on_bytes
    daemon.drain(
        targets,
        on_outcome=lambda _o: bar.advance(sessions),
        on_start=lambda n: bar.update(sessions, total=n),
        summary=summary,
        shard=shard,
    )


def _check_drain_roots(targets: list[Path], *, given: bool, config: Config) -> None:
    """Exit 2 naming the path when a root is missing or not a directory (a typo must not drain nothing)."""
    for root in targets:
        if root.is_dir():
            continue
        what = "does not exist" if not root.exists() else "is not a directory"
        if given:
            raise click.BadParameter(f"{root} {what}; give a directory of rec_* sessions or one rec_* directory")
        raise ConfigError(
            f"recordings_root {root} {what} (set in {config.source}); create it or fix the config",
            key="recordings_root",
            path=None if config.source is None else str(config.source),
        )
