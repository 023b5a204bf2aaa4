"""Context: the operations below the API run on it alone, its writes are gated, and it is cheap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import local_config_dict

from ursa_daemon.config import config_from_dict
from ursa_daemon.errors import WritesNotEnabled
from ursa_daemon.transfer.context import Context
from ursa_daemon.transfer.download import download
from ursa_daemon.transfer.ingest import ingest
from ursa_daemon.transfer.query import QuerySpec, query, resolve
from ursa_daemon.transfer.reader import get
from ursa_daemon.transfer.verify import verify

REC = "rec_20260520_195628_c0de"
FILES = {"eeg_a/seg_1.bin": os.urandom(70_000), "camera/v.mp4": os.urandom(5_000)}


def _context(root: Path) -> Context:
    return Context(config_from_dict(local_config_dict(root), base_dir=root))


def _session(root: Path) -> Path:
    rec = root / "rigs" / REC
    for rel, body in FILES.items():
        (rec / rel).parent.mkdir(parents=True, exist_ok=True)
        (rec / rel).write_bytes(body)
    (rec / "participant.txt").write_text("Aria Lin")
    doc = {"recording_id": REC, "start_time": "2026-05-20T19:56:28.120+00:00", "duration_s": 30}
    (rec / "manifest.json").write_text(json.dumps(doc))
    return rec


def test_a_plain_context_ingests_queries_reads_downloads_and_verifies(tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    with pytest.raises(WritesNotEnabled, match="Context is read-only"):
        ctx.write_catalog()
    with pytest.raises(WritesNotEnabled, match="raw_rw"):
        ingest(ctx, _session(tmp_path))
    ctx.enable_writes(roles=("assets_rw", "raw_rw"))
    res = ingest(ctx, tmp_path / "rigs" / REC)
    assert res.recording is not None and res.files_uploaded == len(FILES)

    [found] = query(ctx, QuerySpec(participants=["Aria Lin"]))
    assert (found.rec_id, sorted(found.modalities)) == (REC, ["camera", "eeg"])
    assert resolve(ctx, found.recording_hash) == resolve(ctx, REC) == [found]
    with pytest.raises(LookupError, match="rec_id"):
        resolve(ctx, "rec_20260101_000000_dead")

    got = get(ctx, REC)
    assert dict(got.modalities["eeg"].segments) == {f"recordings/{REC}/eeg_a/seg_1.bin": FILES["eeg_a/seg_1.bin"]}
    paths = download(ctx, found, tmp_path / "out")
    assert sorted(p.read_bytes() for p in paths) == sorted(FILES.values())
    [report] = verify(ctx, REC, deep=True)
    assert report.ok and report.files_checked == len(FILES)


def test_importing_and_building_a_context_opens_no_catalog(tmp_path: Path) -> None:
    """Start-up cost: the daemon builds its Context on every command; lancedb/pyarrow load only
    when a catalog handle is first used."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps(local_config_dict(tmp_path)))
    script = (
        "import sys\n"
        "from ursa_daemon.config import load_config\n"
        "from ursa_daemon.transfer.context import Context\n"
        f"ctx = Context(load_config({str(config)!r}))\n"
        "ctx.enable_writes(roles=('raw_rw',))\n"
        "ctx.store('raw_rw').list('recordings/')\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'lancedb', 'pyarrow', 'lance'}))\n"
        "ctx.catalog\n"
        "print('lancedb' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split("\n")[:2] == ["[]", "True"], out.stderr
