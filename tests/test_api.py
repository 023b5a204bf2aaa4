"""DataInterface: write gating, registers, query, the ACTIVE.json pointer, and secrets."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from conftest import MOTO_SECRET, s3_config_dict

from ursa_daemon.api import ACTIVE_POINTER_KEY, DataInterface
from ursa_daemon.errors import CatalogError, CatalogRowExists, WritesNotEnabled
from ursa_daemon.transfer.ingest import ingest

H1 = "a" * 64
H2 = "b" * 64


def raw_uri(data: DataInterface, rec_id: str, worker: str) -> str:
    from ursa_daemon.store import storage_uri

    return storage_uri(data.profile, "raw", f"recordings/{rec_id}/{worker}/")


def seed(data: DataInterface) -> None:
    data.enable_writes()
    data.register_participant(participant_id="p1", enrolled_at=1, display_name="P One")
    for h, rec_id, pids, mods in (
        (H1, "rec_20260101_000000_aaaa", ["p1"], [("eeg", ""), ("camera", "0"), ("camera", "1")]),
        (H2, "rec_20260102_000000_bbbb", ["p2", "p1"], [("mic", "")]),
    ):
        data.register_recording(
            recording_hash=h,
            rec_id=rec_id,
            participant_ids=pids,
            start_time=datetime(2026, 1, 1, tzinfo=UTC),
            duration=timedelta(seconds=90),
            device_info={"rig": "r1"},
        )
        for fam, wid in mods:
            worker = f"{fam}_{wid}" if wid else fam
            data.register_modality(
                recording_hash=h, modality=fam, worker_id=wid, raw_storage_uri=raw_uri(data, rec_id, worker)
            )


def test_writes_need_enable_writes(backend_config) -> None:  # type: ignore[no-untyped-def]
    data = DataInterface(config=backend_config)
    with pytest.raises(WritesNotEnabled, match="enable_writes"):
        data.register_participant(participant_id="p1", enrolled_at=1)
    with pytest.raises(WritesNotEnabled):
        data.store("raw_rw")
    data.enable_writes()
    assert data.writes_enabled
    data.register_participant(participant_id="p1", enrolled_at=1)
    assert data.get_participant("p1") is not None


def test_query_and_modality_keys(backend_config) -> None:  # type: ignore[no-untyped-def]
    data = DataInterface(config=backend_config)
    seed(data)
    [r1] = data.query(recording_hash=H1)
    assert set(r1.modalities) == {"eeg", "camera_0", "camera_1"}  # two cameras: full names
    assert r1.duration == timedelta(seconds=90)
    assert {r.recording_hash for r in data.query(participants=["p1"])} == {H1, H2}
    assert [r.recording_hash for r in data.query(participants=["p2"])] == [H2]
    [mic] = data.query(modalities=["mic"])
    assert set(mic.modalities) == {"mic"}
    assert data.query(rec_id="rec_20260102_000000_bbbb")[0].recording_hash == H2
    assert data.query(participants=["nobody"]) == []
    assert len(data.query(limit=1)) == 1
    doc = r1.to_json()
    assert doc["modalities"]["eeg"]["ingestion_status"] == "raw"
    assert set(doc) >= {"recording_hash", "rec_id", "participant_ids", "start_time", "duration_ns",
                        "device_info", "metadata", "modalities"}


def test_register_recording_conflicts(tmp_path: Path) -> None:
    data = DataInterface(profile="local", path=tmp_path)
    seed(data)
    kwargs = dict(recording_hash=H1, rec_id="rec_20260101_000000_aaaa", participant_ids=["p1"],
                  start_time=datetime(2026, 1, 1, tzinfo=UTC), device_info={"rig": "r1"})
    data.register_recording(duration=timedelta(seconds=90), **kwargs)  # identical: no-op
    with pytest.raises(CatalogRowExists) as info:
        data.register_recording(duration=timedelta(seconds=120), **kwargs)
    assert set(info.value.diff) == {"duration_ns"}
    assert data.register_recording(duration=timedelta(seconds=120), on_conflict="extend", **kwargs).duration_ns == 120e9


def test_register_modality_keeps_raw_pointer_in_raw_bucket(tmp_path: Path) -> None:
    data = DataInterface(profile="local", path=tmp_path)
    data.enable_writes()
    assets_uri = (tmp_path / "assets" / "processed" / H1 / "eeg").as_uri() + "/"
    with pytest.raises(ValueError, match="raw bucket"):
        data.register_modality(recording_hash=H1, modality="eeg", raw_storage_uri=assets_uri)


def test_active_pointer_created_once_and_validated(tmp_path: Path) -> None:
    data = DataInterface(profile="local", path=tmp_path)
    assert data.query() == []
    pointer = tmp_path / "assets" / ACTIVE_POINTER_KEY
    assert json.loads(pointer.read_text()) == {"catalog_prefix": "ursa/catalog/main"}
    pointer.write_text(json.dumps({"catalog_prefix": "../../etc"}))
    with pytest.raises(CatalogError, match="catalog_prefix"):
        DataInterface(profile="local", path=tmp_path).query()
    pointer.write_text("not json")
    with pytest.raises(CatalogError, match="not valid"):
        DataInterface(profile="local", path=tmp_path).query()


def test_constructor_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="path="):
        DataInterface(profile="r2", path=tmp_path)


def test_secret_never_leaks(moto_server, s3_buckets, s3_env, tmp_path: Path,  # type: ignore[no-untyped-def]
                            caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]) -> None:
    """Register, query and fail with credentials set: no log line, error text or repr holds the secret."""
    from ursa_daemon.config import config_from_dict
    from ursa_daemon.log import setup_logging

    logs = io.StringIO()
    setup_logging(json=True, level="DEBUG", stream=logs)
    caplog.set_level(logging.DEBUG)
    raw_b, assets_b = s3_buckets
    cfg = config_from_dict(s3_config_dict(moto_server.endpoint, raw_b, assets_b, tmp_path), base_dir=tmp_path)
    data = DataInterface(config=cfg)
    seed(data)
    data.enable_writes(roles=("assets_rw", "raw_rw"))
    rec = tmp_path / "rec_20260103_000000_cccc"
    (rec / "eeg").mkdir(parents=True)
    (rec / "eeg" / "x.bin").write_bytes(b"x" * 100)
    (rec / "manifest.json").write_text(json.dumps({"recording_id": rec.name, "start_time": 0}))
    ingest(data, rec)
    texts = [repr(data), repr(data.catalog), repr(data.store("assets_ro")), repr(cfg), str(cfg.model_dump())]
    assert data.query(participants=["p1"])
    try:
        data.register_recording(recording_hash=H1, rec_id="rec_20260101_000000_aaaa", participant_ids=["zz"],
                                start_time=0, duration_ns=1)
    except CatalogRowExists as exc:
        texts.append(str(exc))
    # a wrong bucket and a closed port: the errors must not carry the secret either
    bad = config_from_dict(s3_config_dict("http://127.0.0.1:9", "nope", "nope2", tmp_path), base_dir=tmp_path)
    with pytest.raises(Exception) as info:
        DataInterface(config=bad).query()
    texts.append(str(info.value))
    texts.append(repr(info.value))
    out, err = capfd.readouterr()
    texts += [out, err, caplog.text, logs.getvalue()]
    logging.getLogger().handlers.clear()
    assert '"event": "session.registered"' in logs.getvalue()
    for text in texts:
        assert MOTO_SECRET not in text


def run_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ursa_daemon.cli", *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_query_json(tmp_path: Path) -> None:
    cfg = {
        "profile": "local",
        "recordings_root": "rec",
        "state_dir": "state",
        "profiles": {"local": {"kind": "local", "root": "store"}},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    seed(DataInterface(profile="local", path=tmp_path / "store"))
    proc = run_cli("query", "--participant", "p2", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    [doc] = json.loads(proc.stdout)
    assert doc["recording_hash"] == H2 and doc["participant_ids"] == ["p1", "p2"]
    assert doc["modalities"]["mic"]["worker_id"] == ""
    bad = run_cli("--config", str(tmp_path / "missing.yaml"), "query", cwd=tmp_path)
    assert bad.returncode == 2 and "missing.yaml" in bad.stderr
