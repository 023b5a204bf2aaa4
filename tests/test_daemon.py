"""The real ``ursa-daemon`` process (run, drain, status) against moto's S3 server."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import s3_config_dict

from ursa_daemon.api import DataInterface
from ursa_daemon.config import load_config
from ursa_daemon.daemon import Daemon

STABLE_KEYS = {"timestamp", "level", "logger", "event"}


def write_session(root: Path, rec_id: str, files: dict[str, bytes], *, manifest: bool = True) -> Path:
    rec = root / rec_id
    for rel, body in files.items():
        p = rec / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(body)
    if manifest:
        (rec / "manifest.json").write_text(json.dumps({"recording_id": rec_id, "start_time": 1_000_000}))
    return rec


@pytest.fixture
def daemon_env(moto_server, s3_buckets, s3_env, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A config file for the s3 profile on moto, a recordings root and a flag file."""
    doc = s3_config_dict(moto_server.endpoint, *s3_buckets, tmp_path)
    doc["watch"] = {"settle_seconds": 1.0, "rescan_seconds": 2.0, "retry_check_seconds": 1.0}
    doc["activity"] = {"quiet_seconds": 1.0, "flag_file": str(tmp_path / "recording.flag")}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    (tmp_path / "recordings").mkdir()
    return path


def cli(config: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ursa_daemon.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start_run(config: Path, log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 - lives as long as the process
    return subprocess.Popen(
        [sys.executable, "-m", "ursa_daemon.cli", "--config", str(config), "run"], stdout=out, stderr=out
    )


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.2) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def registered(config: Path, rec_id: str) -> bool:
    return bool(DataInterface(config=load_config(config)).query(rec_id=rec_id))


@pytest.fixture
def running(daemon_env: Path, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    proc = start_run(daemon_env, tmp_path / "run.log")
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def test_run_registers_a_new_session_but_not_one_still_being_written(
    daemon_env: Path, running: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    root = tmp_path / "recordings"
    time.sleep(1.0)  # the observer is up
    done = write_session(root, "rec_20260101_000000_aaaa", {"eeg/a.bin": b"a" * 5000})
    busy = write_session(root, "rec_20260101_000000_bbbb", {"eeg/b.bin": b"b"}, manifest=False)
    assert wait_for(lambda: registered(daemon_env, done.name), timeout=40), (tmp_path / "run.log").read_text()
    assert not registered(daemon_env, busy.name)
    # status shows the session the rig is still writing as discovered
    sessions = {s["rec_id"]: s for s in json.loads(cli(daemon_env, "status", "--json").stdout)["sessions"]}
    assert sessions[busy.name]["state"] == "discovered"
    # the rig finishes the second session: it is registered once it settles
    (busy / "manifest.json").write_text(json.dumps({"recording_id": busy.name, "start_time": 5}))
    assert wait_for(lambda: registered(daemon_env, busy.name), timeout=40)
    running.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    assert running.wait(timeout=10) == 0
    assert time.monotonic() - t0 < 5
    for line in (tmp_path / "run.log").read_text().splitlines():
        doc = json.loads(line)
        assert set(doc) >= STABLE_KEYS, line


def test_flag_file_pauses_an_upload_in_flight_and_it_resumes(daemon_env: Path, tmp_path: Path) -> None:
    doc = yaml.safe_load(daemon_env.read_text())
    doc["upload"] = {"bandwidth_bytes_per_s": 1_000_000, "max_concurrent_files": 1}
    daemon_env.write_text(yaml.safe_dump(doc))
    root = tmp_path / "recordings"
    rec = write_session(root, "rec_20260101_000000_cccc", {f"eeg/{i}.bin": os.urandom(1 << 20) for i in range(4)})
    old = time.time() - 60
    for p in rec.rglob("*"):
        os.utime(p, (old, old))
    log = tmp_path / "run.log"
    proc = start_run(daemon_env, log)
    try:
        assert wait_for(lambda: '"upload.file_done"' in log.read_text() or "uploading" in status_text(daemon_env),
                        timeout=30)
        (tmp_path / "recording.flag").touch()
        assert wait_for(lambda: '"session.paused"' in log.read_text(), timeout=10), log.read_text()
        assert not registered(daemon_env, rec.name)
        st = json.loads(cli(daemon_env, "status", "--json").stdout)
        assert st["sessions"][0]["state"] == "paused"
        (tmp_path / "recording.flag").unlink()
        assert wait_for(lambda: registered(daemon_env, rec.name), timeout=60), log.read_text()
        assert '"daemon.resumed"' in log.read_text()
        resumed = [json.loads(line) for line in log.read_text().splitlines() if '"session.resumed"' in line]
        assert resumed and resumed[0]["rec_id"] == rec.name
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def status_text(config: Path) -> str:
    return cli(config, "status", "--json").stdout


def test_sigkill_mid_upload_then_restart_registers_once(daemon_env: Path, tmp_path: Path) -> None:
    doc = yaml.safe_load(daemon_env.read_text())
    doc["upload"] = {"bandwidth_bytes_per_s": 2_000_000, "max_concurrent_files": 2}
    daemon_env.write_text(yaml.safe_dump(doc))
    root = tmp_path / "recordings"
    files = {f"eeg/{i}.bin": os.urandom(1 << 20) for i in range(6)}
    rec = write_session(root, "rec_20260101_000000_dddd", files)
    old = time.time() - 60
    for p in rec.rglob("*"):
        os.utime(p, (old, old))
    log = tmp_path / "run.log"
    proc = start_run(daemon_env, log)
    assert wait_for(lambda: log.read_text().count('"upload.file_done"') >= 1 or "uploading" in status_text(daemon_env),
                    timeout=30)
    time.sleep(0.5)
    proc.kill()
    proc.wait()
    assert not registered(daemon_env, rec.name)
    proc = start_run(daemon_env, log)
    try:
        assert wait_for(lambda: registered(daemon_env, rec.name), timeout=60), log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
    data = DataInterface(config=load_config(daemon_env))
    assert len(data.list_recordings(where={"rec_id": rec.name})) == 1
    raw = data.store("raw_ro")
    for rel, body in files.items():
        assert raw.get(f"recordings/{rec.name}/{rel}") == body


def test_second_process_on_same_state_dir_exits_3(daemon_env: Path, running: subprocess.Popen[bytes]) -> None:
    time.sleep(1.5)
    assert running.poll() is None
    proc = cli(daemon_env, "drain")
    assert proc.returncode == 3
    assert "state lock" in proc.stderr


def test_drain_good_and_bad_sessions(daemon_env: Path, tmp_path: Path) -> None:
    root = tmp_path / "recordings"
    good = [write_session(root, f"rec_20260101_00000{i}_aaaa", {"eeg/x.bin": os.urandom(1000 + i)}) for i in range(3)]
    bad_json = write_session(root, "rec_20260101_000009_bad1", {"eeg/x.bin": b"1"})
    (bad_json / "manifest.json").write_text("{not json")
    bad_worker = write_session(root, "rec_20260101_000009_bad2", {"Camera/x.bin": b"1"})
    (root / "not_a_session").mkdir()
    (root / "stray.txt").write_text("x")
    proc = cli(daemon_env, "drain", "--json")
    assert proc.returncode == 1, proc.stderr
    summary = json.loads(proc.stdout)
    assert sorted(summary["registered"]) == sorted(r.name for r in good)
    rejected = {r["rec_id"]: r["error"] for r in summary["rejected"]}
    assert set(rejected) == {bad_json.name, bad_worker.name}
    assert "not valid JSON" in rejected[bad_json.name]
    assert "Camera" in rejected[bad_worker.name]
    uploaded = []
    for line in proc.stderr.splitlines():
        doc = json.loads(line)
        assert set(doc) >= STABLE_KEYS
        if doc["event"] == "upload.file_done":
            uploaded.append(doc["key"])
    assert sorted(uploaded) == sorted(f"recordings/{r.name}/eeg/x.bin" for r in good)  # at INFO, object keys
    st = json.loads(cli(daemon_env, "status", "--json").stdout)
    states = {s["rec_id"]: s for s in st["sessions"]}
    assert states[bad_json.name]["state"] == "rejected"
    assert "not valid JSON" in states[bad_json.name]["last_error"]
    assert st["counts"] == {"registered": 3, "rejected": 2}

    # a re-run over a drained root moves no bytes and writes nothing to the catalog
    data = DataInterface(config=load_config(daemon_env))
    versions = data.catalog.table_versions()
    again = json.loads(cli(daemon_env, "drain", "--json").stdout)
    assert sorted(again["already_registered"]) == sorted(r.name for r in good)
    assert again["bytes_uploaded"] == 0 and again["files_uploaded"] == 0
    assert DataInterface(config=load_config(daemon_env)).catalog.table_versions() == versions

    # sessions whose bytes are in register as a batch: one commit per table for all three
    more = [write_session(root, f"rec_20260102_00000{i}_bbbb", {"eeg/y.bin": os.urandom(500 + i)}) for i in range(3)]
    with Daemon(load_config(daemon_env)) as daemon:
        waiting = [daemon.process(r, defer_register=True) for r in more]
        assert [o.status for o in waiting] == ["registering"] * 3
        assert not registered(daemon_env, more[0].name)  # uploaded, not yet visible
        before = daemon.data._write_catalog().table_versions()
        done = daemon.register_pending(waiting)
        after = daemon.data._write_catalog().table_versions()
    assert [o.status for o in done] == ["registered"] * 3
    assert {t: after[t] - before[t] for t in before if after[t] != before[t]} == {"recordings": 1, "modalities": 1}
    assert json.loads(cli(daemon_env, "status", "--json").stdout)["counts"] == {"registered": 6, "rejected": 2}
