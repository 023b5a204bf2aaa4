"""verify: every cataloged object against the manifest in the store, on both backends, and its CLI."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from test_download import ingested_session, run_cli, s3_data, write_config

from ursa_daemon.api import DataInterface
from ursa_daemon.config import Role
from ursa_daemon.transfer.verify import Problem, verify


@pytest.fixture
def data(backend_config) -> DataInterface:  # type: ignore[no-untyped-def]
    di = DataInterface(config=backend_config)
    di.enable_writes(roles=("assets_rw", "raw_rw"))
    return di


FILES = {
    "eeg_a/seg_1.bin": os.urandom(300_000),
    "eeg_a/seg_2.bin": os.urandom(1000),
    "camera/deep/v.mp4": os.urandom(50_000),
    "mic/m.wav": b"",
}


def test_fresh_session_verifies(data: DataInterface, tmp_path: Path) -> None:
    s = ingested_session(data, tmp_path, FILES)
    [report] = verify(data, s.rec_id)
    assert report.ok and report.problems == ()
    assert (report.rec_id, report.recording_hash) == (s.rec_id, s.recording_hash)
    assert report.files_checked == len(FILES)
    assert report.bytes_checked == sum(len(b) for b in FILES.values())
    assert verify(data, s.recording_hash, deep=True)[0].ok


def test_tampered_missing_and_resized_objects_are_named(data: DataInterface, tmp_path: Path) -> None:
    s = ingested_session(data, tmp_path, FILES)
    raw = data.store(Role.RAW_RW)
    key = f"recordings/{s.rec_id}/"
    raw.put(key + "eeg_a/seg_1.bin", os.urandom(300_000))  # same size, other bytes
    raw.delete(key + "eeg_a/seg_2.bin")
    raw.put(key + "camera/deep/v.mp4", b"short")
    [report] = verify(data, s.rec_id)
    assert not report.ok
    by_key = {p.key: p for p in report.problems}
    assert set(by_key) == {key + "eeg_a/seg_1.bin", key + "eeg_a/seg_2.bin", key + "camera/deep/v.mp4"}
    assert by_key[key + "eeg_a/seg_1.bin"].problem == "sha256"
    assert by_key[key + "eeg_a/seg_1.bin"].expected == hashlib.sha256(FILES["eeg_a/seg_1.bin"]).hexdigest()
    assert by_key[key + "eeg_a/seg_2.bin"] == Problem(key + "eeg_a/seg_2.bin", "missing", 1000, None)
    assert by_key[key + "camera/deep/v.mp4"] == Problem(key + "camera/deep/v.mp4", "size", 50_000, 5)
    assert "eeg_a/seg_1.bin: sha256 is" in str(by_key[key + "eeg_a/seg_1.bin"])


def test_lying_sha256_metadata_needs_deep(moto_server, s3_buckets, s3_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = s3_data(moto_server.endpoint, s3_buckets, tmp_path)
    s = ingested_session(data, tmp_path, FILES)
    key = f"recordings/{s.rec_id}/eeg_a/seg_1.bin"
    stale = hashlib.sha256(FILES["eeg_a/seg_1.bin"]).hexdigest()
    data.store(Role.RAW_RW).put(key, os.urandom(300_000), sha256=stale)  # other bytes, the old hash as metadata
    assert verify(data, s.rec_id)[0].ok  # head() vouches with the metadata
    [deep] = verify(data, s.rec_id, deep=True)
    assert [(p.key, p.problem) for p in deep.problems] == [(key, "sha256")]


def test_cataloged_modality_without_manifest_files_is_reported(data: DataInterface, tmp_path: Path) -> None:
    from ursa_daemon.store import storage_uri

    s = ingested_session(data, tmp_path, FILES)
    prefix = f"recordings/{s.rec_id}/ghost/"
    data.register_modality(
        recording_hash=s.recording_hash, modality="ghost", raw_storage_uri=storage_uri(data.profile, "raw", prefix)
    )
    [report] = verify(data, s.rec_id)
    assert [(p.key, p.problem) for p in report.problems] == [(prefix, "manifest")]


def test_cli_verify_exit_codes(tmp_path: Path) -> None:
    data = DataInterface(profile="local", path=tmp_path / "store")
    data.enable_writes(roles=("assets_rw", "raw_rw"))
    good = ingested_session(data, tmp_path, FILES)
    bad = ingested_session(data, tmp_path, {"eeg/x.bin": b"x" * 100}, rec_id="rec_20260521_000000_beef")
    tampered = f"recordings/{bad.rec_id}/eeg/x.bin"
    data.store(Role.RAW_RW).put(tampered, b"y" * 100)
    cfg = write_config(data, tmp_path)
    ok, failed = run_cli(cfg, ["verify", good.rec_id, "--json"], ["verify", bad.recording_hash])
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["ok"] is True and doc["recordings"][0]["files_checked"] == len(FILES)
    assert failed.returncode == 1
    assert tampered in failed.stderr and "sha256" in failed.stderr


@pytest.mark.parametrize("target", ["rec_20990101_000000_dead", "f" * 64])
def test_unknown_target(tmp_path: Path, target: str) -> None:
    from ursa_daemon.transfer.download import RecordingNotFoundError

    data = DataInterface(profile="local", path=tmp_path / "store")
    with pytest.raises(RecordingNotFoundError, match=target):
        verify(data, target)


def test_a_session_replaced_in_the_store_after_registration_is_named(data: DataInterface, tmp_path: Path) -> None:
    """Objects and manifest of another version, all self-consistent: only the catalog's hash can tell."""
    s = ingested_session(data, tmp_path, FILES)
    raw = data.store(Role.RAW_RW)
    key = f"recordings/{s.rec_id}/"
    other = os.urandom(1000)
    raw.put(key + "eeg_a/seg_2.bin", other)
    doc = json.loads(raw.get(key + "manifest.json"))
    for f in doc["files"]:
        if f["rel_path"] == "eeg_a/seg_2.bin":
            f["sha256"] = hashlib.sha256(other).hexdigest()
    raw.put(key + "manifest.json", json.dumps(doc).encode())
    [report] = verify(data, s.rec_id)
    assert [p.problem for p in report.problems] == ["manifest"]
    assert s.recording_hash in str(report.problems[0]) and "--overwrite" in str(report.problems[0])
