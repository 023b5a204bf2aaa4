"""``ursa-daemon demo``: a sample rig session through the whole path on the local profile."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from rich.console import Console

from ursa_daemon.api import DataInterface
from ursa_daemon.config import Config, LocalProfile
from ursa_daemon.log import byte_progress
from ursa_daemon.session import rel_key
from ursa_daemon.transfer.ingest import UploadProgress, ingest

__all__ = ["make_sample_session", "run_demo"]

#: (rel_path, size) of the sample session: a few MiB over four workers
SAMPLE_FILES = (
    ("camera_0/seg_000001.mp4", 2 << 20),
    ("camera_0/seg_000002.mp4", 1 << 20),
    ("eeg_4559/seg_000001.bin", 1 << 20),
    ("mic_a/seg_000001.wav", 512 << 10),
    ("notes_x/notes.jsonl", 0),
)


def make_sample_session(root: Path, *, participant: str | None = "Aria Lin") -> Path:
    """Write a complete rig session (manifest last, as a rig does) under ``root``."""
    start = datetime.now(UTC).replace(microsecond=0)
    rec_id = f"rec_{start:%Y%m%d_%H%M%S}_{secrets.token_hex(2)}"
    rec_dir = root / rec_id
    for rel, size in SAMPLE_FILES:
        path = rec_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel.endswith(".jsonl"):
            path.write_text(
                "".join(json.dumps({"t": i, "note": f"trial {i}"}) + "\n" for i in range(20)),
                encoding="utf-8",
            )
        else:
            path.write_bytes(os.urandom(size))
    if participant is not None:
        (rec_dir / "participant.txt").write_text(participant + "\n", encoding="utf-8")
    manifest = {
        "recording_id": rec_id,
        "start_time": start.isoformat(timespec="milliseconds"),
        "end_time": (start + timedelta(minutes=12)).isoformat(timespec="milliseconds"),
        "device_info": {"rig": "demo-rig"},
        "workers": {"eeg_4559": {"sampling_rate": 500.0}},
        "nodes": ["demo-rig"],
    }
    (rec_dir / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return rec_dir


def _fleet_step(config: Config, local: LocalProfile, tmp: Path, console: Console) -> None:
    """A ``drain`` of the demo's root (its own state, so a running ``run`` is not disturbed) keeps
    this rig's status document in the store; ``fleet`` reads it back as a laptop would."""
    import time

    from ursa_daemon.cli.render import print_fleet
    from ursa_daemon.config import Role
    from ursa_daemon.daemon import Daemon
    from ursa_daemon.daemon.fleet import assess, read_fleet
    from ursa_daemon.store import get_store

    cfg = config.model_copy(update={
        "profile": "local", "profiles": {**config.profiles, "local": local},
        "state_dir": tmp / "state", "recordings_root": tmp,
    })
    with Daemon(cfg) as daemon:
        summary = daemon.drain([tmp])
    console.print(
        f"[bold]5. drain[/bold] of the rig's root: "
        f"{len(summary.registered) + len(summary.already_registered)} session(s) in the catalog, no byte sent "
        f"twice; the rig's status document is ursa/rigs/{cfg.rig}.json"
    )
    now = time.time()
    entries = [assess(e, now=now, stale_after_s=900, max_age_s=86400)
               for e in read_fleet(get_store(local, Role.ASSETS_RO))]
    console.print("[bold]6. ursa-daemon fleet[/bold] (every rig of the lab, read with assets_ro)")
    print_fleet(entries, now)


def run_demo(config: Config) -> None:
    """Make a session, ingest it with a progress bar, query it, read every byte back, drain the
    rig's root and show the fleet."""
    console = Console(stderr=True)
    local = config.profiles.get("local")
    if not isinstance(local, LocalProfile):
        local = LocalProfile(kind="local", root=Path(tempfile.mkdtemp(prefix="ursa-demo-store-")))
    data = DataInterface(profile="local", path=local.root)
    data.enable_writes(roles=("assets_rw", "raw_rw"))
    with tempfile.TemporaryDirectory(prefix="ursa-demo-") as tmp:
        rec_dir = make_sample_session(Path(tmp))
        console.print(f"[bold]1. A rig session[/bold] {rec_dir.name} ({len(SAMPLE_FILES)} files) in {tmp}")
        with byte_progress(console) as bar:
            task = bar.add_task("2. ingest", total=None)

            def on_progress(p: UploadProgress) -> None:
                bar.update(task, total=p.bytes_total, completed=p.bytes_processed)

            result = ingest(data, rec_dir, progress=on_progress)
        assert result.recording is not None
        rh = result.recording.recording_hash
        console.print(
            f"   uploaded {result.files_uploaded} files ({result.bytes_uploaded:,} bytes) "
            f"to {local.root}, registered recording_hash {rh[:16]}…"
        )
        again = ingest(data, rec_dir)
        console.print(
            f"   re-run: {again.files_uploaded} uploaded, {again.files_skipped} skipped (idempotent)"
        )
        found = data.query(rec_id=rec_dir.name)
        console.print(f"[bold]3. query(rec_id=…)[/bold] → {len(found)} recording")
        console.print_json(json.dumps([r.to_json() for r in found]))
        raw = data.store("raw_ro")
        checked = 0
        for rel, _size in SAMPLE_FILES:
            with raw.open(rel_key(rec_dir.name, rel)) as src:
                h = hashlib.sha256()
                while chunk := src.read(1 << 20):
                    h.update(chunk)
            if h.hexdigest() != hashlib.sha256((rec_dir / rel).read_bytes()).hexdigest():
                raise SystemExit(f"demo: {rel} did not read back byte-exact")
            checked += 1
        console.print(f"[bold]4. read back[/bold] {checked}/{len(SAMPLE_FILES)} files byte-exact")
        _fleet_step(config, local, Path(tmp), console)
    console.print(f"[green]demo done[/green]: catalog and store under {local.root}")
