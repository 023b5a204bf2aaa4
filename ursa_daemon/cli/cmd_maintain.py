"""``ursa-daemon maintain``: compact the catalog, one run at a time."""

from __future__ import annotations

import sys

import click

from ursa_daemon.cli.common import EXIT_FAILED, EXIT_LOCKED, Context, emit_json, errors_to_exit, fail, logs_to_stderr

__all__ = ["maintain"]


@click.command()
@click.option(
    "--keep-versions-hours",
    type=click.FloatRange(min=1.0),
    default=24.0,
    show_default=True,
    help="Remove table versions superseded longer ago than this (at least 1).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.pass_obj
@errors_to_exit
def maintain(obj: Context, keep_versions_hours: float, as_json: bool) -> None:
    """Repair duplicate keys, compact the catalog, refresh its indexes, remove old versions.

    Exits 1 when rows sharing a primary key differed (a true conflict: the earliest
    registered stands, the others are logged whole) or could not be repaired.

    Holds the lease ursa/maintenance.lease in the assets bucket meanwhile; exits 3
    when another run holds it. Daemons never do this themselves: run it from one
    machine's timer (systemd/ursa-daemon-maintain.timer).
    """
    logs_to_stderr(as_json)
    from datetime import timedelta

    from ursa_daemon.daemon.maintain import LeaseHeld
    from ursa_daemon.daemon.maintain import maintain as run_maintain

    try:
        report = run_maintain(obj.data(), keep_versions=timedelta(hours=keep_versions_hours))
    except LeaseHeld as exc:
        fail(exc, "skipped", EXIT_LOCKED, as_json)
    if as_json:
        emit_json(report.as_json())
    else:
        changed = {t: f"{report.versions_before.get(t, 0)} -> {v}" for t, v in report.versions_after.items()}
        click.echo(f"maintain: done in {report.elapsed_s:.1f}s; table versions {changed}", err=True)
        found = {t: n for t, n in report.duplicates_found.items() if n}
        if found:
            click.echo(
                f"maintain: rows sharing a primary key {found}: {report.duplicates_removed} removed, "
                f"{len(report.conflicts)} true conflict(s)",
                err=True,
            )
    for repair in report.conflicts:
        click.echo(
            f"maintain: {repair.table} {repair.key}: rows differed in {sorted(k for d in repair.diffs for k in d)}; "
            "the earliest registered stands, the others are in the log (catalog.duplicate_repaired) and in --json",
            err=True,
        )
    left = {t: n for t, n in report.duplicates_left.items() if n}
    if left:
        click.echo(f"maintain: rows still sharing a primary key {left}; run maintain again", err=True)
    if left or report.conflicts:
        sys.exit(EXIT_FAILED)
