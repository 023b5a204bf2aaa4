"""Disk and state faults: the state database lost or damaged, its disk full, a session deleted mid-upload.

Disk full: an unprivileged test cannot mount a tiny tmpfs or a loop device, so
the daemon runs under ``RLIMIT_FSIZE`` (``setrlimit`` in the child): any write
that would grow a file past the limit fails with EFBIG (CPython ignores
SIGXFSZ), which SQLite reports as an I/O error, the same path as ENOSPC.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import DaemonProc, cli, make_config, write_session
from invariants import check_invariants

from ursa_daemon.api import DataInterface
from ursa_daemon.config import load_config
from ursa_daemon.daemon.state import StateDB
from ursa_daemon.errors import StateError


@pytest.fixture
def cfg(moto_server, s3_buckets, s3_env, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    return make_config(tmp_path, moto_server.endpoint, *s3_buckets, upload={"bandwidth_bytes_per_s": 8_000_000})


def _small(root: Path, rec_id: str, n: int = 3, participant: str | None = "Aria Lin") -> Path:
    return write_session(root, rec_id, {f"eeg/{i}.bin": os.urandom(2000 + i) for i in range(n)},
                         participant=participant)


@pytest.mark.parametrize("damage", ["deleted", "torn"])
def test_state_db_lost_or_damaged_between_runs_rebuilds_without_duplicates(damage: str, cfg: Path,
                                                                            tmp_path: Path) -> None:
    root = tmp_path / "recordings"
    done = [_small(root, f"rec_20260103_00000{i}_aaaa") for i in range(2)]
    assert cli(cfg, "drain").returncode == 0
    big = write_session(root, "rec_20260103_000009_bbbb", {"eeg/big.bin": os.urandom(7 << 20),
                                                          "mic/a.bin": os.urandom(5000)})
    # the next drain is killed inside the big session's multipart upload
    proc = DaemonProc(cfg, "drain")
    assert proc.wait_event(lambda e: e.get("event") == "session.hashing" and e["rec_id"] == big.name), proc.text()
    time.sleep(0.8)  # the first 5 MiB part is read at 0.65 s: the multipart upload is open
    proc.kill()
    data = DataInterface(config=load_config(cfg))
    assert {r.rec_id for r in data.list_recordings()} == {d.name for d in done}
    stamps = {r.rec_id: r.registered_at for r in data.list_recordings()}

    state = tmp_path / "state" / "state.sqlite3"
    with sqlite3.connect(state) as db:  # fold the WAL in, so damage to the file is damage to the state
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    if damage == "deleted":
        for p in state.parent.glob("state.sqlite3*"):
            p.unlink()
    else:  # torn: the header survives, pages after it are zeroed
        body = bytearray(state.read_bytes())
        body[4096:] = bytes(len(body) - 4096)
        state.write_bytes(bytes(body[: max(len(body), 8192)]))

    again = cli(cfg, "drain", "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    summary = json.loads(again.stdout)
    assert sorted(summary["registered"] + summary["already_registered"]) == sorted(p.name for p in [*done, big])
    # what the store already holds is not sent again: only the big session's missing files move
    assert summary["bytes_uploaded"] <= sum(p.stat().st_size for p in big.rglob("*.bin")), summary
    # the rows already there were not written again (an overwrite would restamp registered_at)
    after = {r.rec_id: r.registered_at for r in DataInterface(config=load_config(cfg)).list_recordings()}
    assert {k: after[k] for k in stamps} == stamps
    if damage != "deleted":
        assert any("state.rebuilt" in line for line in again.stderr.splitlines()), again.stderr[-2000:]
        assert list(state.parent.glob("state.sqlite3.corrupt-*"))
    check_invariants(cfg, valid=[*done, big])


def test_garbage_state_db_is_moved_aside_by_the_lock_holder_only(tmp_path: Path) -> None:
    """What ``status`` (no lock) and the daemon (the lock holder) do with a state file that is not SQLite."""
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "state.sqlite3").write_bytes(os.urandom(8192))
    with pytest.raises(StateError, match="unreadable"):
        StateDB(state_dir)  # a reader never touches it
    assert not list(state_dir.glob("*.corrupt-*"))
    db = StateDB(state_dir, rebuild=True)
    assert db.sessions() == []
    db.close()
    assert len(list(state_dir.glob("state.sqlite3.corrupt-*"))) == 1


def test_state_disk_full_fails_cleanly_then_recovers(cfg: Path, tmp_path: Path) -> None:
    root = tmp_path / "recordings"
    first = _small(root, "rec_20260104_000000_aaaa")
    assert cli(cfg, "drain").returncode == 0
    many = write_session(root, "rec_20260104_000001_bbbb", {f"eeg/{i:04d}.bin": b"%d" % i for i in range(150)})
    limit = (tmp_path / "state" / "state.sqlite3").stat().st_size + 8192

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    full = subprocess.run([sys.executable, "-m", "ursa_daemon.cli", "--config", str(cfg), "drain", "--json"],
                          capture_output=True, text=True, timeout=180, preexec_fn=small_disk)
    assert full.returncode == 1, full.stderr[-3000:]
    assert "Traceback" not in full.stderr, full.stderr[-3000:]
    assert "state database" in full.stderr and "not full" in full.stderr, full.stderr[-3000:]
    assert not DataInterface(config=load_config(cfg)).query(rec_id=many.name)
    check_invariants(cfg, valid=[first], also=[many.name])
    # space is back: the next run finishes the job
    again = cli(cfg, "drain", "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["registered"] == [many.name]
    check_invariants(cfg, valid=[first, many])


def test_session_removed_mid_upload_is_rejected_then_registered_when_restored(cfg: Path, tmp_path: Path) -> None:
    root = tmp_path / "recordings"
    files = {"eeg/big.bin": os.urandom(7 << 20), **{f"mic/{i}.bin": os.urandom(300_000) for i in range(6)}}
    doomed = write_session(root, "rec_20260105_000000_dead", files)
    other = _small(root, "rec_20260105_000001_aaaa")
    proc = DaemonProc(cfg, "run", log=tmp_path / "run.log")
    try:
        assert proc.wait_event(lambda e: e.get("event") == "session.hashing" and e["rec_id"] == doomed.name)
        time.sleep(0.8)
        shutil.rmtree(doomed)
        ev = proc.wait_event(lambda e: e.get("rec_id") == doomed.name and e.get("event") in (
            "session.rejected", "session.failed", "session.registered"), timeout=60)
        assert ev is not None and ev["event"] == "session.rejected", proc.text()
        assert doomed.name in ev["error"] and "vanished" in ev["error"], ev
        assert proc.wait_event(lambda e: e.get("event") == "session.registered" and e["rec_id"] == other.name,
                               timeout=60), proc.text()
        check_invariants(cfg, valid=[other], invalid=[doomed.name])
        # the operator restores the directory: it is a new signature, so it is taken again
        write_session(root, doomed.name, files)
        assert proc.wait_event(lambda e: e.get("event") == "session.registered" and e["rec_id"] == doomed.name,
                               timeout=90), proc.text()
    finally:
        assert proc.stop() == 0, proc.text()
    check_invariants(cfg, valid=[doomed, other])
