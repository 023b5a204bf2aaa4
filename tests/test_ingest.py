"""Ingest (Path A) against both backends: moto's S3 server over HTTP and the local profile."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import pytest

from ursa_daemon.api import DataInterface
from ursa_daemon.errors import InputError
from ursa_daemon.session import recording_hash
from ursa_daemon.transfer.ingest import UploadProgress, ingest

START = "2026-05-20T19:56:28.120+00:00"


def make_session(root: Path, files: dict[str, bytes], *, rec_id: str = "rec_20260520_195628_b1dd",
                 participant: str | None = "Aria Lin") -> Path:
    rec = root / rec_id
    for rel, body in files.items():
        p = rec / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(body)
    if participant is not None:
        (rec / "participant.txt").write_text(participant)
    (rec / "manifest.json").write_text(
        json.dumps({"recording_id": rec_id, "start_time": START, "duration_s": 30,
                    "device_info": {"rig": "green-mantis"}, "workers": {"eeg_4559": {"sampling_rate": 500.0}}})
    )
    return rec


@pytest.fixture
def data(backend_config) -> DataInterface:  # type: ignore[no-untyped-def]
    di = DataInterface(config=backend_config)
    di.enable_writes(roles=("assets_rw", "raw_rw"))
    return di


def read_back(data: DataInterface, key: str) -> bytes:
    with data.store("raw_ro").open(key) as src:
        out = bytearray()
        while chunk := src.read(1 << 20):
            out += chunk
    return bytes(out)


def test_full_ingest_reads_back_byte_exact_and_rerun_moves_nothing(data: DataInterface, tmp_path: Path) -> None:
    files = {
        "eeg_4559/seg_000001.bin": os.urandom(300_000),
        "camera_0/seg_000001.mp4": os.urandom(7 << 20),  # multipart on s3 at 5 MiB parts? (16 MiB default: single)
        "camera_1/seg_000001.mp4": os.urandom(1000),
        "mic/deep/nested.wav": os.urandom(5000),
        "notes_x/notes.jsonl": b"",
    }
    rec = make_session(tmp_path, files)
    events: list[UploadProgress] = []
    res = ingest(data, rec, progress=events.append)
    assert not res.paused and res.recording is not None
    assert res.files_uploaded == 5 and res.files_skipped == 0
    assert res.bytes_uploaded == sum(len(b) for b in files.values())
    assert [e.files_done for e in events] == [1, 2, 3, 4, 5]
    assert events[-1].bytes_processed == events[-1].bytes_total == res.bytes_uploaded
    rh = recording_hash(hashlib.sha256(b).hexdigest() for b in files.values())
    assert res.recording.recording_hash == rh
    for rel, body in files.items():
        assert read_back(data, f"recordings/{rec.name}/{rel}") == body
    stored = json.loads(read_back(data, f"recordings/{rec.name}/manifest.json"))
    assert stored["recording_hash"] == rh and stored["device_info"] == {"rig": "green-mantis"}
    assert read_back(data, f"recordings/{rec.name}/participant.txt").decode().strip() == "Aria Lin"

    [found] = data.query(rec_id=rec.name)
    assert found.participant_ids == ["aria_lin"]
    assert set(found.modalities) == {"eeg", "camera_0", "camera_1", "mic", "notes"}
    assert found.modalities["eeg"].sampling_rate == 500.0
    assert found.modalities["camera_0"].file_count == 1
    assert found.modalities["mic"].raw_storage_uri.endswith(f"recordings/{rec.name}/mic/")
    assert data.get_participant("aria_lin").display_name == "Aria Lin"

    versions = data.catalog.table_versions()
    again = ingest(data, rec)
    assert (again.files_uploaded, again.files_skipped, again.bytes_uploaded) == (0, 5, 0)
    assert data.catalog.table_versions() == versions  # no catalog writes either


def test_pause_then_resume_moves_only_unconfirmed(data: DataInterface, tmp_path: Path) -> None:
    files = {f"eeg_a/seg_{i:03d}.bin": os.urandom(200_000) for i in range(8)}
    rec = make_session(tmp_path, files, participant=None)
    done = threading.Event()

    def progress(p: UploadProgress) -> None:
        if p.files_done >= 3:
            done.set()

    res = ingest(data, rec, is_active=done.is_set, progress=progress, max_concurrent_files=1)
    assert res.paused and res.recording is None
    assert 3 <= res.files_uploaded < 8
    assert data.query(rec_id=rec.name) == []  # nothing registered on pause
    res2 = ingest(data, rec)
    assert not res2.paused and res2.recording is not None
    assert res2.files_skipped == res.files_uploaded
    assert res2.files_uploaded == 8 - res.files_uploaded
    assert data.query(rec_id=rec.name)[0].participant_ids == []


def test_same_size_different_content_is_reuploaded(data: DataInterface, tmp_path: Path) -> None:
    rec = make_session(tmp_path, {"eeg_a/x.bin": b"A" * 4096})
    assert ingest(data, rec).files_uploaded == 1
    (rec / "eeg_a" / "x.bin").write_bytes(b"B" * 4096)
    res = ingest(data, rec, overwrite=True)
    assert res.files_uploaded == 1
    assert read_back(data, f"recordings/{rec.name}/eeg_a/x.bin") == b"B" * 4096


def test_hash_skip_is_not_size_only(data: DataInterface, tmp_path: Path) -> None:
    """An object of the right size but other bytes (no manifest vouching) is uploaded again."""
    rec = make_session(tmp_path, {"eeg_a/x.bin": b"A" * 4096})
    data.store("raw_rw").put(f"recordings/{rec.name}/eeg_a/x.bin", b"Z" * 4096)
    res = ingest(data, rec)
    assert (res.files_uploaded, res.files_skipped) == (1, 0)
    assert read_back(data, f"recordings/{rec.name}/eeg_a/x.bin") == b"A" * 4096


def test_progress_callback_errors_are_ignored(data: DataInterface, tmp_path: Path) -> None:
    rec = make_session(tmp_path, {"eeg_a/x.bin": b"1", "eeg_a/y.bin": b"2"})

    def broken(_: UploadProgress) -> None:
        raise RuntimeError("callback bug")

    res = data.ingest(rec, progress=broken)  # the DataInterface method, same path
    assert res.recording is not None and res.files_uploaded == 2


def test_file_changed_during_upload_fails_and_registers_nothing(
    data: DataInterface, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = make_session(tmp_path, {"eeg_a/x.bin": os.urandom(3 << 20), "eeg_a/y.bin": b"y"})
    from ursa_daemon.transfer import ingest as ingest_mod

    real = ingest_mod.hash_files

    def hash_then_modify(*args, **kwargs):  # type: ignore[no-untyped-def]
        out = real(*args, **kwargs)
        with open(rec / "eeg_a" / "x.bin", "r+b") as f:  # same size, other bytes
            f.write(b"\x00" * 16)
        return out

    monkeypatch.setattr(ingest_mod, "hash_files", hash_then_modify)
    with pytest.raises(InputError) as info:
        ingest(data, rec)
    msg = str(info.value)
    assert rec.name in msg and "eeg_a/x.bin" in msg and "changed" in msg
    assert data.query(rec_id=rec.name) == []
    raw = data.store("raw_ro")
    assert [m.key for m in raw.list(f"recordings/{rec.name}/eeg_a/x.bin")] == []
    assert not [m for m in raw.list(f"recordings/{rec.name}/") if m.key.endswith("manifest.json")]


def test_bad_session_registers_nothing(data: DataInterface, tmp_path: Path) -> None:
    rec = make_session(tmp_path, {"eeg_a/x.bin": b"1"})
    os.symlink("/etc/hostname", rec / "eeg_a" / "link")
    with pytest.raises(InputError, match="symbolic link"):
        ingest(data, rec)
    assert list(data.store("raw_ro").list(f"recordings/{rec.name}/")) == []
    assert data.query(rec_id=rec.name) == []


def s3_data(moto_server, buckets, tmp_path: Path, **upload: object) -> DataInterface:  # type: ignore[no-untyped-def]
    from conftest import s3_config_dict

    from ursa_daemon.config import config_from_dict

    doc = s3_config_dict(moto_server.endpoint, *buckets, tmp_path)
    doc["upload"] = upload
    di = DataInterface(config=config_from_dict(doc, base_dir=tmp_path))
    di.enable_writes(roles=("assets_rw", "raw_rw"))
    return di


def test_pause_mid_file_aborts_multipart(moto_server, s3_buckets, s3_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # at 8 MB/s the file takes ~1.8 s; is_active() is polled every 10 ms: it turns true well before the end
    data = s3_data(moto_server, s3_buckets, tmp_path, part_size_bytes=5 << 20, max_concurrent_files=1,
                   bandwidth_bytes_per_s=8_000_000)
    body = os.urandom(14 << 20)
    rec = make_session(tmp_path, {"camera_0/big.mp4": body})
    polls = 0

    def is_active() -> bool:  # turns true after ~80 ms: mid-file, mid-multipart
        nonlocal polls
        polls += 1
        return polls > 8

    res = ingest(data, rec, is_active=is_active)
    assert res.paused and res.files_uploaded == 0 and res.recording is None
    client = moto_server.client()
    assert client.list_multipart_uploads(Bucket=s3_buckets[0]).get("Uploads", []) == []
    assert client.list_objects_v2(Bucket=s3_buckets[0]).get("KeyCount") == 0
    data = s3_data(moto_server, s3_buckets, tmp_path, part_size_bytes=5 << 20, max_concurrent_files=1)
    res = ingest(data, rec)
    assert res.recording is not None
    assert read_back(data, f"recordings/{rec.name}/camera_0/big.mp4") == body
    assert client.list_multipart_uploads(Bucket=s3_buckets[0]).get("Uploads", []) == []


def test_sigkill_mid_ingest_then_rerun_registers_once(backend_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import signal
    import subprocess
    import sys
    import time

    import yaml

    cfg = backend_config.model_dump(mode="json", exclude={"source"})
    cfg["upload"]["bandwidth_bytes_per_s"] = 2_000_000  # slow enough to be killed mid-way
    cfg["upload"]["max_concurrent_files"] = 2
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    files = {f"eeg_a/seg_{i}.bin": os.urandom(1 << 20) for i in range(6)}
    rec = make_session(tmp_path / "root", files)
    cmd = [sys.executable, "-m", "ursa_daemon.cli", "--config", str(cfg_path), "ingest", str(rec), "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(1.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    data = DataInterface(config=backend_config)
    assert data.query(rec_id=rec.name) == []
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["files_uploaded"] + summary["files_skipped"] == 6
    data = DataInterface(config=backend_config)
    assert len(data.list_recordings(where={"rec_id": rec.name})) == 1
    assert len(data.list_modalities(where={"recording_hash": summary["recording_hash"]})) == 1
    for rel, body in files.items():
        assert read_back(data, f"recordings/{rec.name}/{rel}") == body



def test_a_session_changed_after_upload_is_refused_unless_overwrite(data: DataInterface, tmp_path: Path) -> None:
    """The catalog rows of the stored version must never point at bytes of another version."""
    rec = make_session(tmp_path, {"eeg_4559/a.bin": b"first" * 1000, "mic/b.wav": b"x" * 100})
    first = ingest(data, rec).recording
    assert first is not None
    (rec / "eeg_4559" / "a.bin").write_bytes(b"second" * 1000)
    with pytest.raises(InputError) as err:
        ingest(data, rec)
    assert rec.name in str(err.value) and "--overwrite" in str(err.value) and err.value.file == "manifest.json"
    assert read_back(data, f"recordings/{rec.name}/eeg_4559/a.bin") == b"first" * 1000  # not a byte moved
    [still] = data.query(rec_id=rec.name)
    assert still.recording_hash == first.recording_hash

    second = ingest(data, rec, overwrite=True).recording
    assert second is not None and second.recording_hash != first.recording_hash
    rows = data._write_catalog().query(rec_id=rec.name)
    assert [r.recording_hash for r, _ in rows] == [second.recording_hash]  # the old version's rows are gone
    assert data._write_catalog().get_modality(first.recording_hash, "eeg", "4559") is None
    assert read_back(data, f"recordings/{rec.name}/eeg_4559/a.bin") == b"second" * 1000


def test_small_objects_carry_their_sha256_too(data: DataInterface, tmp_path: Path) -> None:
    rec = make_session(tmp_path, {"eeg_4559/a.bin": b"a" * 10})
    ingest(data, rec)
    raw = data.store("raw_ro")
    for name in ("manifest.json", "participant.txt"):
        key = f"recordings/{rec.name}/{name}"
        meta = raw.head(key)
        if meta.sha256 is not None:  # S3 returns user metadata; the local store keeps none
            assert meta.sha256 == hashlib.sha256(read_back(data, key)).hexdigest()
        else:
            assert data.config.profiles[data.config.profile].kind == "local"
