"""The offline-ingest runbook (seed 004), run as written.

Its Python examples are extracted from the document's text (``seed_docs``) and run
with ``exec`` against a catalog built by the real ``ursa-daemon drain`` process on
moto's S3 server. The only changes: the config's ``r2`` profile points at moto
(the config found the usual way, ``./config.yaml``), and the NAS paths, session
ids and recording hashes are filled in. Path C's shell command runs the real
``examples/reconstruct_missing_manifests.py``.
"""

from __future__ import annotations

import json
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import MotoServer
from harness import cli, write_session
from seed_docs import block_with, check_shared_copy, drained_r2_site, replace, section, text

REPO = Path(__file__).resolve().parents[1]
DOC = text("offline_ingest_runbook.txt")
NAS = "/Volumes/Shared_Drive/constellation-data/recordings"
DOC_REC_ID = "rec_20260520_195628_b1dd"

BASE = "rec_20260521_101500_0a1b"  # drained: verification step
COPY = "rec_20260521_111500_0c2d"  # drained, then also on the NAS (batch loop: all skipped)
CRASHED = "rec_20260522_090000_beef"  # drain killed after the modalities commit: Path B
LEGACY = "rec_20260523_120000_cafe"  # bytes in the store, no manifest: Path C


@dataclass
class Site:
    dir: Path
    config: Path
    server: MotoServer
    raw: str
    assets: str
    files: dict[str, dict[str, bytes]]

    def client(self) -> Any:
        return self.server.client()

    def object(self, rec_id: str, rel: str) -> bytes:
        return bytes(self.client().get_object(Bucket=self.raw, Key=f"recordings/{rec_id}/{rel}")["Body"].read())


def _files(rng: random.Random, *workers: str) -> dict[str, bytes]:
    return {f"{w}/seg_{i:06d}.bin": rng.randbytes(rng.randint(1_000, 40_000)) for w in workers for i in (1, 2)}


@pytest.fixture(scope="module")
def site(moto_server: MotoServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """A config whose ``r2`` profile is moto, and a catalog built by ``ursa-daemon drain``."""
    root = tmp_path_factory.mktemp("runbook")
    rng = random.Random(4)
    files = {
        BASE: _files(rng, "camera_0", "eeg_4559"),
        COPY: _files(rng, "mic"),
        CRASHED: _files(rng, "eeg_4559", "notes"),
    }
    sessions = {BASE: (files[BASE], "Aria Lin"), COPY: (files[COPY], None)}
    with drained_r2_site(moto_server, root, "rb", sessions) as (config, raw, assets, _env):
        crashed = write_session(root / "crashed", CRASHED, files[CRASHED], participant="Bo Chen")
        killed = cli(config, "drain", str(crashed), env={"URSA_TEST_CRASH_AFTER_TABLE": "modalities"})
        assert killed.returncode == -9, killed.stderr[-2000:]
        yield Site(root, config, moto_server, raw, assets, files)


@pytest.fixture
def at_site(site: Site, monkeypatch: pytest.MonkeyPatch, s3_env: None) -> Site:
    monkeypatch.chdir(site.dir)
    return site


def run(src: str, ns: dict[str, Any] | None = None) -> dict[str, Any]:
    ns = {} if ns is None else ns
    exec(compile(src, "<runbook example>", "exec"), ns)
    return ns


def test_vendored_runbook_is_the_seed() -> None:
    check_shared_copy("offline_ingest_runbook.txt")


def test_config_selection(at_site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    """``DataInterface(profile="r2")`` is the config's ``r2`` entry; ``config_path=`` picks another
    config; no ``URSA_CONFIG`` variable is read."""
    monkeypatch.setenv("URSA_CONFIG", str(at_site.dir / "missing.yaml"))
    config_section = section(DOC, "Config selection", "Path A")
    ns = run(block_with(config_section, 'data = DataInterface(profile="r2")\n'))
    assert ns["data"].config.active_profile.raw_bucket == at_site.raw
    assert ns["data"].config.source == at_site.config
    override = at_site.dir / "override.yaml"
    doc = yaml.safe_load(at_site.config.read_text())
    doc["profiles"]["r2"]["assets_bucket"] = "staging-assets"
    override.write_text(yaml.safe_dump(doc))
    ns = run(replace(block_with(config_section, "config_path="), ("/tmp/my-override.yaml", str(override))),
             {"DataInterface": ns["DataInterface"]})
    assert ns["data"].config.source == override
    assert ns["data"].config.active_profile.assets_bucket == "staging-assets"


def test_path_a_upload_register_overwrite_and_progress(
    at_site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(1)
    files = _files(rng, "camera_0", "eeg_4559")
    write_session(tmp_path / "nas", DOC_REC_ID, files, participant="Aria Lin")
    ns = run(replace(block_with(DOC, "data.ingest(", "ingested:"), (NAS, str(tmp_path / "nas"))))
    out = capsys.readouterr().out.splitlines()
    rec = ns["result"].recording
    assert out == [f"ingested: {rec.recording_hash}", f"files uploaded: {len(files)}, skipped: 0"]
    data = ns["data"]
    assert data.get_recording(rec.recording_hash).participant_ids == ["aria_lin"]
    assert rec.metadata["manifest_recording_id"] == DOC_REC_ID
    for rel, body in files.items():
        assert at_site.object(DOC_REC_ID, rel) == body
    assert data.get_participant("aria_lin").display_name == "Aria Lin"

    # "If you're re-running ingest because the previous attempt failed mid-upload, pass overwrite=True"
    run(block_with(DOC, "overwrite=True"), ns)
    assert ns["result"].files_uploaded == len(files) and ns["result"].recording.recording_hash == rec.recording_hash
    assert len(data.query(rec_id=DOC_REC_ID, status="raw")) == 1

    # Progress reporting, for the next session off the NAS
    more = _files(rng, "mic_a", "eeg_4559")
    rec_dir = write_session(tmp_path / "nas", "rec_20260520_201000_c0de", more)
    ns.update(rec_dir=rec_dir, manifest=rec_dir / "manifest.json", participant=None)
    run(block_with(DOC, "def on_progress", "progress=on_progress"), ns)
    lines = capsys.readouterr().out.splitlines()
    total = sum(len(b) for b in more.values())
    assert sorted(line.split(":")[0].strip() for line in lines) == sorted(more)
    done = [int(line.rsplit(" ", 1)[1].split("/")[0].replace(",", "")) for line in lines]
    assert done == sorted(done) and done[-1] == total
    assert all(line.endswith(f"/{total:,}") for line in lines)
    assert ns["result"].recording is not None and not ns["result"].paused


def test_path_b_registers_bytes_already_in_the_store(at_site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    from ursa import DataInterface

    before = DataInterface(profile="r2")
    assert before.query(rec_id=CRASHED, status="all") == []  # the drain died before the recording row
    ns = run(replace(block_with(DOC, "ingest_from_r2("), (DOC_REC_ID, CRASHED)))
    rec = ns["result"].recording
    assert capsys.readouterr().out.splitlines() == [f"registered: {rec.recording_hash}"]
    assert rec.participant_ids == ["aria_lin"]  # the participant= of the call, not the stored "Bo Chen"
    [found] = ns["data"].query(rec_id=CRASHED, status="raw")
    assert sorted(found.modalities) == ["eeg", "notes"]
    assert ns["result"].files_uploaded == 0 and ns["result"].files_skipped == len(at_site.files[CRASHED])


def _shell_command(doc: str) -> tuple[str, list[str]]:
    """Path C's shell example: the ``cd`` target and the command (continuation lines joined)."""
    lines = doc.splitlines()
    i = next(n for n, line in enumerate(lines) if line.startswith("cd ") and "reconstruct" in lines[n + 1])
    cmd = lines[i + 1]
    j = i + 2
    while cmd.endswith("\\"):
        cmd = cmd[:-1] + " " + lines[j].strip()
        j += 1
    return lines[i][3:].strip(), shlex.split(cmd)


def test_path_c_reconstruct_then_register(at_site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    from ursa import DataInterface
    from ursa.catalog import CatalogRowExists  # noqa: F401 - the seeds' import path

    client = at_site.client()
    rng = random.Random(3)
    files = _files(rng, "eeg_4559", "camera_0")
    for rel, body in files.items():  # a v0.1.0-era upload: no manifest, no sha256 metadata
        client.put_object(Bucket=at_site.raw, Key=f"recordings/{LEGACY}/{rel}", Body=body)
    client.put_object(Bucket=at_site.raw, Key=f"recordings/{LEGACY}/participant.txt", Body=b"Aria Lin\n")
    data = DataInterface(profile="r2")
    data.enable_writes()
    with pytest.raises(Exception, match="reconstruct-manifest"):
        data.ingest_from_r2(LEGACY)

    cd, argv = _shell_command(DOC)
    assert cd == "/path/to/ursa" and argv[:3] == ["uv", "run", "python"]
    argv = replace(" ".join(argv[3:]), (DOC_REC_ID, LEGACY)).split()
    script = REPO / argv[0]
    # the checkout is REPO; the config is found the usual way, from the operator's directory
    cmd = [sys.executable, str(script), *argv[1:]]
    asked = subprocess.run(cmd[:-1], cwd=at_site.dir, input="n\n", capture_output=True, text=True, timeout=60)
    assert asked.returncode == 1 and "[y/N]" in asked.stderr  # without --yes it asks first
    done = subprocess.run(cmd, cwd=at_site.dir, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads(at_site.object(LEGACY, "manifest.json"))
    assert sorted(f["rel_path"] for f in manifest["files"]) == sorted(files)
    assert manifest["participant"] == "Aria Lin" and manifest["reconstruction"]["reconstructed_participant"] is False
    again = subprocess.run(cmd, cwd=at_site.dir, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and json.loads(at_site.object(LEGACY, "manifest.json")) == manifest

    # Path B refuses while an object the manifest lists is missing, then registers
    missing = sorted(files)[0]
    client.delete_object(Bucket=at_site.raw, Key=f"recordings/{LEGACY}/{missing}")
    with pytest.raises(Exception, match=missing):
        data.ingest_from_r2(LEGACY, participant="Aria Lin")
    client.put_object(Bucket=at_site.raw, Key=f"recordings/{LEGACY}/{missing}", Body=files[missing])
    capsys.readouterr()
    ns = run(replace(block_with(DOC, "ingest_from_r2("), (DOC_REC_ID, LEGACY)))
    assert ns["result"].recording.recording_hash == manifest["recording_hash"]
    assert ns["result"].recording.participant_ids == ["aria_lin"]


def test_batch_loop(at_site: Site, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    nas = tmp_path / "nas"
    rng = random.Random(5)
    fresh = "rec_20260524_080000_0001"
    no_manifest = "rec_20260524_090000_0002"
    broken = "rec_20260524_100000_0003"
    write_session(nas, fresh, _files(rng, "eeg_4559"), participant="Bo Chen")
    (nas / no_manifest / "eeg").mkdir(parents=True)
    (nas / no_manifest / "eeg" / "seg_000001.bin").write_bytes(b"x" * 100)
    write_session(nas, broken, {"eeg/seg_000001.bin": b"y" * 100}, manifest={
        "recording_id": broken, "start_time": 1_700_000_000_000_000_000,
        "files": [{"rel_path": "eeg/seg_000001.bin", "size": 999}],
    })
    shutil.copytree(at_site.dir / "recordings" / COPY, nas / COPY)
    ns = run(replace(block_with(DOC, "for rec_dir in sorted(nas_root.glob"), (NAS, str(nas))))
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"OK {COPY}: 0 uploaded, {len(at_site.files[COPY])} skipped"
    assert out[1] == f"OK {fresh}: 2 uploaded, 0 skipped"
    assert out[2] == f"SKIP {no_manifest}: no manifest (run reconstruct first)"
    assert out[3].startswith(f"FAIL {broken}: InputError: ") and "eeg/seg_000001.bin" in out[3]
    assert len(out) == 4
    data = ns["data"]
    assert [r.rec_id for r in data.query(rec_id=fresh, status="raw")] == [fresh]
    assert data.query(rec_id=broken, status="all") == []


def test_verification_step(at_site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    from ursa import DataInterface

    [drained] = DataInterface(profile="r2").query(rec_id=BASE, status="raw")
    ns = run(replace(block_with(DOC, "get_recording("), ("<recording_hash>", drained.recording_hash)))
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"recording: rec_id={BASE}, participants=['aria_lin']"
    assert out[1].startswith("modalities: ")
    assert sorted(eval(out[1].split(": ", 1)[1])) == [("camera", "0"), ("eeg", "4559")]

    # Round-trip a file to confirm bytes resolve
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    run(block_with(DOC, 'modalities=["camera"], status="raw"'), ns)
    [dest] = tmp_path.glob("ursa_verify_*")
    got = {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}
    want = {f"{drained.recording_hash}/camera/{rel.split('/', 1)[1]}": body
            for rel, body in at_site.files[BASE].items() if rel.startswith("camera_0/")}
    assert got == want
