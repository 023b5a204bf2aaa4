"""``ursa-daemon ingest``, ``register-from-store``, ``reconstruct-manifest``: one session by hand (Paths A, B, C)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from ursa_daemon.cli.common import Context, emit_json, errors_to_exit, logs_to_stderr
from ursa_daemon.cli.render import hb, human_duration
from ursa_daemon.errors import NodesPending

__all__ = ["ingest", "reconstruct_manifest", "register_from_store_cmd"]


def ingest_summary(result: Any, rec_id: str) -> dict[str, Any]:
    rec = result.recording
    return {
        "rec_id": rec_id,
        "recording_hash": None if rec is None else rec.recording_hash,
        "paused": result.paused,
        "files_uploaded": result.files_uploaded,
        "files_skipped": result.files_skipped,
        "bytes_uploaded": result.bytes_uploaded,
    }


@click.command()
@click.argument("rec_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--participant", default=None, help="Participant name (overrides participant.txt).")
@click.option("--overwrite", is_flag=True, help="Upload every file again and replace differing catalog rows.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.pass_obj
@errors_to_exit
def ingest(obj: Context, rec_dir: Path, participant: str | None, overwrite: bool, as_json: bool) -> None:
    """Upload one session and register it (Path A)."""
    logs_to_stderr(as_json)
    if not rec_dir.is_dir() and not rec_dir.is_symlink():  # a link is refused by load_session, by name
        what = "does not exist" if not rec_dir.exists() else "is not a directory"
        raise click.BadParameter(f"{rec_dir} {what}; give the rec_* session directory to ingest")
    data = obj.data()
    data.enable_writes(roles=("assets_rw", "raw_rw"))
    began = time.monotonic()
    try:
        result = _ingest_with_progress(data, rec_dir, participant=participant, overwrite=overwrite)
    except NodesPending as exc:  # a dual-node half is in; the peer's is not yet: not a failure
        _ingest_waiting(exc, rec_dir.name, as_json)
        return
    summary = ingest_summary(result, rec_dir.name)
    if as_json:
        emit_json(summary)
    else:
        click.echo(
            f"{rec_dir.name}: registered {summary['recording_hash']} "
            f"({result.files_uploaded} uploaded, {result.files_skipped} skipped, "
            f"{hb(result.bytes_uploaded)} in {human_duration(time.monotonic() - began)})",
            err=True,
        )


def _ingest_with_progress(data: Any, rec_dir: Path, *, participant: str | None, overwrite: bool) -> Any:
    """The ingest under a byte bar on stderr: files decided plus the bytes of files on their way."""
    from rich.console import Console

    from ursa_daemon.log import byte_progress
    from ursa_daemon.transfer.ingest import UploadProgress
    from ursa_daemon.transfer.ingest import ingest as run_ingest

    with byte_progress(Console(stderr=True)) as bar:
        task = bar.add_task(rec_dir.name, total=None)
        decided = [0]
        in_flight: dict[str, int] = {}

        def on_progress(p: UploadProgress) -> None:  # a file is done (uploaded or skipped)
            in_flight.pop(p.current_file, None)
            decided[0] = p.bytes_processed
            bar.update(task, total=p.bytes_total, completed=decided[0] + sum(in_flight.values()))

        def on_file_bytes(rel_path: str, n: int) -> None:  # bytes of a file on their way
            in_flight[rel_path] = in_flight.get(rel_path, 0) + n
            bar.update(task, completed=decided[0] + sum(in_flight.values()))

        return run_ingest(
            data, rec_dir, participant=participant, overwrite=overwrite, progress=on_progress,
            on_file_bytes=on_file_bytes,
        )


def _ingest_waiting(exc: NodesPending, rec_id: str, as_json: bool) -> None:
    """``ingest`` of a dual-node half whose peer has not uploaded yet: exit 0, say who is missing."""
    result = exc.result
    counts = {
        "files_uploaded": 0 if result is None else result.files_uploaded,
        "files_skipped": 0 if result is None else result.files_skipped,
        "bytes_uploaded": 0 if result is None else result.bytes_uploaded,
    }
    if as_json:
        doc = {"rec_id": rec_id, "recording_hash": None, "paused": False, **counts}
        emit_json({**doc, "waiting": True, "missing": exc.missing})
        return
    click.echo(
        f"{rec_id}: uploaded ({counts['files_uploaded']} uploaded, {counts['files_skipped']} skipped, "
        f"{hb(counts['bytes_uploaded'])}); waiting for node(s) {', '.join(exc.missing)}: "
        "it is registered when their half is in (or: register-from-store --allow-partial)",
        err=True,
    )


@click.command("register-from-store")
@click.argument("rec_id")
@click.option("--participant", default=None, help="Participant name (overrides participant.txt in the store).")
@click.option("--allow-partial", is_flag=True, help="Register a dual-node session before every node's half is in.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.pass_obj
@errors_to_exit
def register_from_store_cmd(
    obj: Context, rec_id: str, participant: str | None, allow_partial: bool, as_json: bool
) -> None:
    """Verify bytes already in the store and register them (Path B)."""
    logs_to_stderr(as_json)
    from ursa_daemon.transfer.backfill import register_from_store

    data = obj.data()
    data.enable_writes(roles=("assets_rw",))
    result = register_from_store(data, rec_id, participant=participant, allow_partial=allow_partial)
    summary = ingest_summary(result, rec_id)
    if as_json:
        emit_json(summary)
    else:
        verified = f"({result.files_skipped} files verified)"
        click.echo(f"{rec_id}: registered {summary['recording_hash']} {verified}", err=True)


@click.command("reconstruct-manifest")
@click.argument("target")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.pass_obj
@errors_to_exit
def reconstruct_manifest(obj: Context, target: str, as_json: bool) -> None:
    """Rebuild a missing manifest from the files of REC_DIR (disk) or REC_ID (store) (Path C)."""
    logs_to_stderr(as_json)
    from ursa_daemon.transfer.backfill import reconstruct_from_disk, reconstruct_from_store

    path = Path(target)
    if path.is_dir():
        written = reconstruct_from_disk(path)
        doc = json.loads(written.read_text(encoding="utf-8"))
        where = str(written)
    else:
        data = obj.data()
        data.enable_writes(roles=("raw_rw",))
        doc = reconstruct_from_store(data, target)
        where = f"recordings/{target}/manifest.json in the raw bucket"
    if as_json:
        emit_json({"manifest": where, "recording_hash": doc["recording_hash"], "files": len(doc["files"])})
    else:
        click.echo(f"{where}: {len(doc['files'])} files, recording_hash {doc['recording_hash']}", err=True)
