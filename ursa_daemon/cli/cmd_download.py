"""``ursa-daemon download`` and ``verify``: a recording's bytes back, and the check that they are all there."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ursa_daemon.cli.common import EXIT_FAILED, Context, emit_json, errors_to_exit, logs_to_stderr
from ursa_daemon.cli.render import hb

__all__ = ["download", "verify"]


@click.command()
@click.argument("target")
@click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--layout",
    type=click.Choice(["by_recording", "by_modality", "flat"]),
    default="by_recording",
    show_default=True,
    help="DEST/<hash>/<modality>/..., DEST/<modality>/<hash>/... or DEST/<hash>__<modality>/...",
)
@click.option(
    "--source",
    type=click.Choice(["auto", "raw", "processed"]),
    default="auto",
    show_default=True,
    help="Raw segments, processed assets, or each row's own (auto).",
)
@click.option("--overwrite", is_flag=True, help="Replace existing files (atomically: a failure keeps the old file).")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.pass_obj
@errors_to_exit
def download(
    obj: Context, target: str, dest: Path, layout: str, source: str, overwrite: bool, as_json: bool
) -> None:
    """Download a recording's bytes to DEST. TARGET is a recording_hash or a rec_id."""
    logs_to_stderr(as_json)
    import logging

    from rich.console import Console

    from ursa_daemon.log import byte_progress
    from ursa_daemon.transfer.download import LOGGER_NAME, DownloadProgress

    console = Console(stderr=True)
    if console.is_terminal and sys.stdout.isatty():  # the bar tells it all; phase lines would tear it
        logging.getLogger(LOGGER_NAME).setLevel(logging.WARNING)
    done = 0
    with byte_progress(console) as bar:
        task = bar.add_task(target, total=None)

        def on_progress(ev: DownloadProgress) -> None:
            nonlocal done
            done = ev.bytes_done
            if ev.phase == "modality_start":
                worker = f"_{ev.worker_id}" if ev.worker_id else ""
                bar.update(task, description=f"{target} {ev.modality}{worker}")
            bar.update(task, completed=ev.bytes_done, total=ev.bytes_total)

        paths = obj.data().download(
            target, dest, layout=layout, source=source, overwrite=overwrite, progress=on_progress  # type: ignore[arg-type]
        )
    if as_json:
        emit_json({"files": [str(p) for p in paths], "bytes": done})
    else:
        click.echo(f"{target}: {len(paths)} file(s), {hb(done)} in {dest}", err=True)


@click.command()
@click.argument("target", metavar="REC_ID|HASH")
@click.option("--deep", is_flag=True, help="Hash every object, even where the store keeps its sha256.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.pass_obj
@errors_to_exit
def verify(obj: Context, target: str, deep: bool, as_json: bool) -> None:
    """Re-check that every cataloged object exists with its manifest size and sha256.

    Exit 0: all match; 1: some object is missing or differs (each is named).
    """
    logs_to_stderr(as_json)
    from ursa_daemon.transfer.verify import verify as run_verify

    reports = run_verify(obj.data(), target, deep=deep)
    ok = all(r.ok for r in reports)
    if as_json:
        emit_json({"ok": ok, "recordings": [r.as_json() for r in reports]})
    for r in reports:
        status = "ok" if r.ok else f"{len(r.problems)} problem(s)"
        summary = f"{r.files_checked} objects, {hb(r.bytes_checked)}"
        click.echo(f"{r.rec_id} ({r.recording_hash[:12]}…): {summary}: {status}", err=True)
        for p in r.problems:
            click.echo(f"  {p}", err=True)
    if not ok:
        sys.exit(EXIT_FAILED)
