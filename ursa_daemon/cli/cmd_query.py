"""``ursa-daemon query``: search the catalog."""

from __future__ import annotations

import click

from ursa_daemon.cli.common import Context, emit_json, errors_to_exit, logs_to_stderr
from ursa_daemon.cli.render import print_results

__all__ = ["query"]


@click.command()
@click.option("--recording-hash", default=None, help="Exactly this recording.")
@click.option("--participant", "participants", multiple=True, help="Recordings of this participant (repeatable).")
@click.option("--modality", "modalities", multiple=True, help="Recordings with this modality (repeatable: any of).")
@click.option("--rec-id", default=None, help="Exactly this session id.")
@click.option("--limit", type=click.IntRange(min=1), default=None)
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.pass_obj
@errors_to_exit
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
    logs_to_stderr(as_json)
    results = obj.data().query(
        recording_hash=recording_hash,
        participants=list(participants) or None,
        modalities=list(modalities) or None,
        rec_id=rec_id,
        limit=limit,
    )
    if as_json:
        emit_json([r.to_json() for r in results])
        return
    print_results(results)
