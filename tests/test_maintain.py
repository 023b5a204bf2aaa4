"""Catalog maintenance as one job (``ursa-daemon maintain``): real processes on one catalog.

Runs started together never work at once (the lease in the assets bucket), a held lease
leaves the catalog untouched (exit 3), an expired one is taken over, and the daemons
themselves only append: a drain makes its registration commits and nothing else.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import local_config_dict
from harness import write_session

from ursa_daemon.api import DataInterface
from ursa_daemon.config import load_config
from ursa_daemon.daemon.maintain import LEASE_KEY


def _cli(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ursa_daemon.cli", "--config", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _versions(config: Path) -> dict[str, int]:
    data = DataInterface(config=load_config(config))
    data.enable_writes(roles=("assets_rw",))
    return data._write_catalog().table_versions()


@pytest.fixture
def drained(tmp_path: Path) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**local_config_dict(tmp_path), "watch": {"settle_seconds": 0}}))
    root = tmp_path / "recordings"
    for i in range(3):
        write_session(root, f"rec_20260101_00000{i}_aaaa", {"eeg/x.bin": bytes([i]) * 1000})
    before = _versions(config)
    proc = _cli(config, "drain", "--json")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert len(json.loads(out)["registered"]) == 3
    after = _versions(config)
    # a daemon only appends: one commit per table for the batch, no compaction, no re-index
    assert {t: after[t] - before[t] for t in before if after[t] != before[t]} == {"recordings": 1, "modalities": 1}
    assert "catalog.optimiz" not in err
    return config


def _events(stderr: str) -> list[dict[str, Any]]:
    out = []
    for line in stderr.splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict):
            out.append(ev)
    return out


def test_maintain_runs_started_together_never_overlap(drained: Path) -> None:
    procs = [_cli(drained, "maintain", "--json") for _ in range(4)]
    spans = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode in (0, 3), err[-3000:]
        doc = json.loads(out)
        if proc.returncode == 3:
            assert "already running" in doc["error"] or "taken by another run" in doc["error"]
            assert "catalog.maintenance_started" not in err
            continue
        evs = {e["event"]: e for e in _events(err)}
        start = time.mktime(time.strptime(evs["catalog.maintenance_started"]["timestamp"][:19], "%Y-%m-%dT%H:%M:%S"))
        start += float("0." + evs["catalog.maintenance_started"]["timestamp"][20:-1])
        end = time.mktime(time.strptime(evs["catalog.maintained"]["timestamp"][:19], "%Y-%m-%dT%H:%M:%S"))
        end += float("0." + evs["catalog.maintained"]["timestamp"][20:-1])
        spans.append((start, end, doc["holder"]))
    assert spans, "at least one run maintained the catalog"
    spans.sort()
    for (_, end, a), (start, _, b) in zip(spans, spans[1:], strict=False):
        assert end <= start, f"{a} and {b} maintained at once"
    assert not (drained.parent / "store" / "assets" / LEASE_KEY).exists()  # given back
    assert len(DataInterface(config=load_config(drained)).query()) == 3


def test_held_lease_leaves_the_catalog_alone_and_expired_one_is_taken_over(drained: Path) -> None:
    lease = drained.parent / "store" / "assets" / LEASE_KEY
    lease.parent.mkdir(parents=True, exist_ok=True)
    lease.write_text(json.dumps({"holder": "rig-7:123:1", "expires_at": time.time() + 600}))
    before = _versions(drained)
    proc = _cli(drained, "maintain", "--json")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 3, err[-3000:]
    assert "rig-7:123:1" in json.loads(out)["error"]
    assert _versions(drained) == before and lease.exists()
    # the holder died: its lease expired; the next run takes it over and gives it back
    lease.write_text(json.dumps({"holder": "rig-7:123:1", "expires_at": time.time() - 1}))
    proc = _cli(drained, "maintain", "--json")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    assert any(e.get("event") == "catalog.lease_expired" for e in _events(err))
    doc = json.loads(out)
    assert doc["versions_after"]["recordings"] > doc["versions_before"]["recordings"]  # compacted, re-indexed
    assert not lease.exists()
    assert len(DataInterface(config=load_config(drained)).query()) == 3


def test_keep_versions_under_an_hour_is_refused(drained: Path) -> None:
    proc = _cli(drained, "maintain", "--keep-versions-hours", "0.5")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "keep-versions-hours" in err


@pytest.mark.parametrize("contract_config", ["local", "seaweed"], indirect=True)
@pytest.mark.parametrize("racers", [2, 6])
def test_runs_that_find_the_same_expired_lease_never_both_take_it(contract_config: Any, racers: int) -> None:
    # Real threads through the real store (atomic creates on SeaweedFS and on local disk): every
    # racer reads the same expired lease; exactly one may hold the lease afterwards, every other
    # one is told it is held. Several rounds, each with a fresh expired lease.
    import threading

    from ursa_daemon.daemon.maintain import LeaseHeld, _take_lease
    from ursa_daemon.store import get_store

    store = get_store(contract_config.active_profile, "assets_rw")
    for rnd in range(4):
        store.put(LEASE_KEY, json.dumps({"holder": f"dead:{rnd}:{time.time_ns()}", "expires_at": 1.0}).encode())
        gate = threading.Barrier(racers)
        won: list[str] = []
        lost: list[str] = []

        def race(i: int, rnd: int = rnd, gate: threading.Barrier = gate, won: list = won, lost: list = lost) -> None:
            holder = f"racer-{rnd}-{i}"
            gate.wait()
            try:
                _take_lease(store, holder, timedelta(minutes=5))
            except LeaseHeld as exc:
                lost.append(str(exc))
            else:
                won.append(holder)

        threads = [threading.Thread(target=race, args=(i,)) for i in range(racers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert len(won) == 1, (won, lost)
        assert len(lost) == racers - 1
        assert json.loads(store.get(LEASE_KEY))["holder"] == won[0]  # the one winner's lease stands
        store.delete(LEASE_KEY)


def _catalog_of(tmp_path: Path, n: int) -> Path:
    """A local catalog of ``n`` recordings (one modality each), written in one commit per table."""
    import hashlib

    from ursa_daemon.catalog import ModalityRow, RecordingRow

    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(local_config_dict(tmp_path)))
    data = DataInterface(config=load_config(config))
    data.enable_writes(roles=("assets_rw",))
    catalog = data._write_catalog()
    hashes = [hashlib.sha256(f"r{i}".encode()).hexdigest() for i in range(n)]
    catalog.add_rows([
        ModalityRow(recording_hash=h, modality="eeg", worker_id="0", raw_storage_uri=f"file:///x/{i}/",
                    file_count=1, byte_count=1)
        for i, h in enumerate(hashes)
    ])
    catalog.add_rows([
        RecordingRow(recording_hash=h, rec_id=f"rec_20260101_000000_{i:08x}", participant_ids=[],
                     start_time=i, duration_ns=1, registered_at=0)
        for i, h in enumerate(hashes)
    ])
    return config


def test_lance_gets_a_memory_pool_big_enough_to_reindex_and_an_operators_own_is_kept(tmp_path: Path) -> None:
    """Lance's default pool (150 MiB a CPU: 300 MiB here) failed the index update of a 1M-recording
    catalog. The process gives Lance at least 1 GiB; a pool too small for the table is a clear
    error naming the variable and the fix (here forced with a tiny pool an operator set)."""
    import os

    config = _catalog_of(tmp_path, 3000)
    env = {k: v for k, v in os.environ.items() if k != "LANCE_MEM_POOL_SIZE"}
    probe = ("import os; from ursa_daemon.catalog import lance; lance.import_lancedb(); "
             "print(os.environ['LANCE_MEM_POOL_SIZE'])")
    pool = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert int(pool.stdout) == max(1 << 30, (150 << 20) * (os.cpu_count() or 1))

    small = subprocess.run(
        [sys.executable, "-m", "ursa_daemon.cli", "--config", str(config), "maintain", "--json"],
        env={**env, "LANCE_MEM_POOL_SIZE": "200000"}, capture_output=True, text=True, timeout=300,
    )
    assert small.returncode != 0, "maintain said it was done when Lance refused the memory"
    error = json.loads(small.stdout)["error"] if small.stdout.strip() else small.stderr
    assert "LANCE_MEM_POOL_SIZE=200000" in error and "larger" in error and "maintain" in error, error
    before = _versions(config)
    proc = subprocess.run(
        [sys.executable, "-m", "ursa_daemon.cli", "--config", str(config), "maintain", "--json"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert _versions(config) != before
