"""Offline recovery: register-from-store (Path B) and reconstruct-manifest (Path C)."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from ursa_daemon.api import DataInterface
from ursa_daemon.errors import InputError
from ursa_daemon.session import FileEntry, augment, manifest_bytes, recording_hash
from ursa_daemon.transfer.backfill import reconstruct_from_disk, reconstruct_from_store, register_from_store

REC = "rec_20260520_195628_b1dd"
FILES = {"eeg_4559/seg_1.bin": os.urandom(4000), "camera_0/seg_1.mp4": os.urandom(9000)}


@pytest.fixture
def data(backend_config) -> DataInterface:  # type: ignore[no-untyped-def]
    di = DataInterface(config=backend_config)
    di.enable_writes(roles=("assets_rw", "raw_rw"))
    return di


def put_objects(data: DataInterface, files: dict[str, bytes]) -> None:
    raw = data.store("raw_rw")
    for rel, body in files.items():
        raw.put(f"recordings/{REC}/{rel}", body, sha256=hashlib.sha256(body).hexdigest())


def put_manifest(data: DataInterface, files: dict[str, bytes]) -> dict:
    entries = [FileEntry(rel, len(b), hashlib.sha256(b).hexdigest()) for rel, b in files.items()]
    doc = augment({"recording_id": REC, "start_time": 5, "duration_s": 2}, entries)
    data.store("raw_rw").put(f"recordings/{REC}/manifest.json", manifest_bytes(doc))
    return doc


def test_register_from_store(data: DataInterface) -> None:
    put_objects(data, FILES)
    doc = put_manifest(data, FILES)
    data.store("raw_rw").put(f"recordings/{REC}/participant.txt", b"Aria Lin\n")
    res = register_from_store(data, REC)
    assert res.recording is not None and res.recording.recording_hash == doc["recording_hash"]
    [found] = data.query(rec_id=REC)
    assert found.participant_ids == ["aria_lin"] and set(found.modalities) == {"eeg", "camera"}
    assert register_from_store(data, REC).recording == res.recording  # idempotent


def test_register_from_store_refuses_with_every_problem(data: DataInterface) -> None:
    put_objects(data, {"eeg_4559/seg_1.bin": b"other bytes entirely"})
    put_manifest(data, FILES)
    with pytest.raises(InputError) as info:
        register_from_store(data, REC)
    msg = str(info.value)
    assert "camera_0/seg_1.mp4: missing" in msg and "eeg_4559/seg_1.bin" in msg
    assert data.query(rec_id=REC) == []


def test_reconstruct_from_store_then_register(data: DataInterface) -> None:
    put_objects(data, FILES)
    with pytest.raises(InputError, match="reconstruct-manifest"):
        register_from_store(data, REC)
    doc = reconstruct_from_store(data, REC)
    assert doc["reconstruction"]["reconstructed_participant"] is True and "participant" not in doc
    assert doc["recording_hash"] == recording_hash(hashlib.sha256(b).hexdigest() for b in FILES.values())
    assert json.loads(data.store("raw_ro").get(f"recordings/{REC}/manifest.json"))["recording_hash"] == doc[
        "recording_hash"
    ]
    assert register_from_store(data, REC).recording is not None
    assert reconstruct_from_store(data, REC)["recording_hash"] == doc["recording_hash"]  # a no-op now


def test_reconstruct_from_disk(tmp_path: Path) -> None:
    rec = tmp_path / REC
    for rel, body in FILES.items():
        (rec / rel).parent.mkdir(parents=True, exist_ok=True)
        (rec / rel).write_bytes(body)
    path = reconstruct_from_disk(rec)
    doc = json.loads(path.read_text())
    assert doc["recording_id"] == REC and len(doc["files"]) == 2
    assert doc["start_time"].startswith("2026-05-20T19:56:28")
    with pytest.raises(InputError, match="already exists"):
        reconstruct_from_disk(rec)
