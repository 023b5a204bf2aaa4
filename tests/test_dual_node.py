"""Dual-node sessions (SPEC section 2): each node uploads its half and its node manifest;
the recording is registered once every node named in ``nodes`` is in the store, over
the union of files; a half arriving after a partial registration only adds modality rows."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import local_config_dict

from ursa_daemon.api import DataInterface
from ursa_daemon.errors import InputError, NodesPending
from ursa_daemon.session import recording_hash
from ursa_daemon.transfer.backfill import register_from_store
from ursa_daemon.transfer.ingest import ingest

REC = "rec_20260520_195628_d0a1"
START = "2026-05-20T19:56:28.120+00:00"
HALF_A = {"eeg_4559/seg_000001.bin": os.urandom(200_000), "mic/take.wav": os.urandom(3000)}
HALF_B = {"camera_0/seg_000001.mp4": os.urandom(500_000), "camera_0/deep/seg_000002.mp4": b""}


def write_half(
    root: Path, host: str, files: dict[str, bytes], *, nodes: tuple[str, ...] = ("node-a", "node-b")
) -> Path:
    """One node's half of the session as that node's rig leaves it."""
    rec = root / REC
    for rel, body in files.items():
        p = rec / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(body)
    (rec / "_node_manifests").mkdir(parents=True, exist_ok=True)
    doc = {"recording_id": REC, "start_time": START, "duration_s": 30, "nodes": list(nodes), "rig_note": host}
    (rec / "_node_manifests" / f"{host}.json").write_text(json.dumps(doc))
    return rec


def union_hash(*halves: dict[str, bytes]) -> str:
    return recording_hash(hashlib.sha256(b).hexdigest() for h in halves for b in h.values())


@pytest.fixture
def data(backend_config) -> DataInterface:  # type: ignore[no-untyped-def]
    di = DataInterface(config=backend_config)
    di.enable_writes(roles=("assets_rw", "raw_rw"))
    return di


def keys(data: DataInterface) -> set[str]:
    return {m.key for m in data.store("raw_ro").list(f"recordings/{REC}/")}


def test_registered_when_the_last_node_arrives_over_the_union(data: DataInterface, tmp_path: Path) -> None:
    rec_a = write_half(tmp_path / "rig-a", "node-a", HALF_A)
    with pytest.raises(NodesPending) as pending:
        ingest(data, rec_a)
    assert pending.value.missing == ["node-b"] and REC in str(pending.value) and "--allow-partial" in str(pending.value)
    assert data.query(rec_id=REC) == []  # nothing registered for a half
    stored = keys(data)
    assert f"recordings/{REC}/_node_manifests/node-a.json" in stored
    assert f"recordings/{REC}/manifest.json" not in stored  # the node manifests are the markers
    node_doc = json.loads(data.store("raw_ro").get(f"recordings/{REC}/_node_manifests/node-a.json"))
    assert node_doc["rig_note"] == "node-a"  # the rig's own fields kept
    assert sorted(f["rel_path"] for f in node_doc["files"]) == sorted(HALF_A)  # augmented over its own files
    assert node_doc["recording_hash"] == union_hash(HALF_A)

    rec_b = write_half(tmp_path / "rig-b", "node-b", HALF_B)
    result = ingest(data, rec_b)
    assert result.recording is not None
    assert result.recording.recording_hash == union_hash(HALF_A, HALF_B)
    ((row, mods),) = data.catalog.query(rec_id=REC)
    assert row.recording_hash == union_hash(HALF_A, HALF_B)
    assert sorted(m.worker_subdir for m in mods) == ["camera_0", "eeg_4559", "mic"]
    assert row.metadata["nodes"] == ["node-a", "node-b"]
    # every cataloged byte reads back from the store
    for rel, body in {**HALF_A, **HALF_B}.items():
        assert data.store("raw_ro").get(f"recordings/{REC}/{rel}") == body

    # the first node retrying later finds the recording registered, and writes nothing
    versions = data._write_catalog().table_versions()
    again = ingest(data, rec_a)
    assert again.files_uploaded == 0 and again.recording is not None
    assert again.recording.recording_hash == row.recording_hash
    assert data._write_catalog().table_versions() == versions


def test_a_late_half_adds_modalities_and_keeps_the_hash(data: DataInterface, tmp_path: Path) -> None:
    with pytest.raises(NodesPending):
        ingest(data, write_half(tmp_path / "rig-a", "node-a", HALF_A))
    with pytest.raises(NodesPending):  # an operator must ask for a partial registration
        register_from_store(data, REC)
    partial = register_from_store(data, REC, allow_partial=True).recording
    assert partial is not None and partial.recording_hash == union_hash(HALF_A)
    ((_, mods),) = data.catalog.query(rec_id=REC)
    assert sorted(m.worker_subdir for m in mods) == ["eeg_4559", "mic"]

    late = ingest(data, write_half(tmp_path / "rig-b", "node-b", HALF_B)).recording
    assert late is not None and late == partial  # same row, same recording_hash
    ((row, mods),) = data._write_catalog().query(rec_id=REC)
    assert row.recording_hash == union_hash(HALF_A)
    assert sorted(m.worker_subdir for m in mods) == ["camera_0", "eeg_4559", "mic"]
    cam = next(m for m in mods if m.modality == "camera")
    assert cam.recording_hash == partial.recording_hash
    assert (cam.file_count, cam.byte_count) == (2, 500_000)


def test_one_rig_holding_both_halves_registers_at_once(data: DataInterface, tmp_path: Path) -> None:
    """A NAS backlog with both node manifests: each lists its own files."""
    rec = write_half(tmp_path, "node-a", HALF_A)
    write_half(tmp_path, "node-b", HALF_B)
    for host, half in (("node-a", HALF_A), ("node-b", HALF_B)):
        p = rec / "_node_manifests" / f"{host}.json"
        doc = json.loads(p.read_text())
        doc["files"] = [{"rel_path": r, "size": len(b)} for r, b in half.items()]
        p.write_text(json.dumps(doc))
    result = ingest(data, rec)
    assert result.recording is not None and result.recording.recording_hash == union_hash(HALF_A, HALF_B)
    node_b = json.loads(data.store("raw_ro").get(f"recordings/{REC}/_node_manifests/node-b.json"))
    assert sorted(f["rel_path"] for f in node_b["files"]) == sorted(HALF_B)


def test_a_node_manifest_with_a_bad_name_is_an_input_error(data: DataInterface, tmp_path: Path) -> None:
    rec = write_half(tmp_path, "node-a", HALF_A)
    (rec / "_node_manifests" / "node-a.json").rename(rec / "_node_manifests" / "-rf ;x.json")
    with pytest.raises(InputError) as err:
        ingest(data, rec)
    assert REC in str(err.value) and "-rf ;x.json" in str(err.value) and "rename" in str(err.value)
    assert keys(data) == set()  # refused before any byte moved


def test_drain_reports_a_half_as_waiting_not_failed(tmp_path: Path) -> None:
    """The real process: a lone half is uploaded, drain exits 0 and status says why it waits."""
    doc = local_config_dict(tmp_path)
    doc["watch"] = {"settle_seconds": 0}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(doc))
    write_half(tmp_path / "recordings", "node-a", HALF_A)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ursa_daemon.cli", "--config", str(config), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    proc = cli("drain", "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["registered"] == [] and summary["failed"] == [] and summary["rejected"] == []
    assert [w["rec_id"] for w in summary["waiting"]] == [REC] and "node-b" in summary["waiting"][0]["error"]
    assert summary["files_uploaded"] == len(HALF_A)
    status = json.loads(cli("status", "--json").stdout)
    (row,) = status["sessions"]
    assert row["state"] == "registering" and "node-b" in row["last_error"] and row["next_attempt_at"] is not None
