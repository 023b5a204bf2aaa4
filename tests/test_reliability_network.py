"""Network faults between the real daemon and moto's S3 server (tests/faultproxy.py in between).

Transient faults (resets, uploads cut mid-body, stalls) are absorbed by the
store's retries: no session is ever marked failed. An outage (connections
refused) outlasts that budget: sessions go ``failed``, come back with growing
backoff, and register once the network returns. The "10-minute outage" runs
compressed 60x: ``watch.retry_base_seconds`` 0.5 instead of 30, the outage
10 s instead of 600 s, so the daemon goes through the same number of retries.
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import pytest
from faultproxy import FaultProxy
from harness import DaemonProc, cli, make_config, random_session
from invariants import check_invariants

from ursa_daemon.api import DataInterface
from ursa_daemon.config import load_config

SEED = 11


@pytest.fixture
def net(moto_server, s3_buckets, s3_env, tmp_path: Path):  # type: ignore[no-untyped-def]
    """(proxy, daemon config through the proxy, checker config straight to moto)."""
    with FaultProxy((moto_server.host, moto_server.port)) as proxy:
        daemon_cfg = make_config(tmp_path, proxy.endpoint, *s3_buckets,
                                 watch={"retry_base_seconds": 0.5, "retry_max_seconds": 60.0},
                                 upload={"bandwidth_bytes_per_s": 4_000_000})
        direct_cfg = make_config(tmp_path, moto_server.endpoint, *s3_buckets, name="direct.yaml")
        yield proxy, daemon_cfg, direct_cfg


def _sessions(tmp_path: Path, n: int) -> list[Path]:
    rng = random.Random(SEED)
    return [random_session(rng, tmp_path / "recordings", i, big=i == 0) for i in range(n)]


def test_transient_faults_are_retried_without_failing_a_session(net, tmp_path: Path) -> None:
    proxy, daemon_cfg, direct_cfg = net
    sessions = _sessions(tmp_path, 3)
    # one fault kind after the other, each armed once the previous one is used up
    plan = [
        ("reset", lambda: proxy.reset_next(2, after_bytes=0)),  # reset on accept
        ("cut", lambda: proxy.cut_upload_next(2, after_bytes=1 << 20)),  # a request body cut after 1 MiB
        ("reset-mid-response", lambda: proxy.reset_next(1, after_bytes=200)),
        ("stall", lambda: proxy.stall_next(2, seconds=2.0, after_bytes=0)),
    ]
    fired: list[str] = []
    done = threading.Event()

    def arm() -> None:
        for name, go in plan:
            target = proxy.faults + (2 if name != "reset-mid-response" else 1)
            go()
            while proxy.faults < target and not done.wait(0.02):
                pass
            if proxy.faults >= target:
                fired.append(name)
        proxy.passthrough()

    armer = threading.Thread(target=arm, daemon=True)
    armer.start()
    proc = cli(daemon_cfg, "drain", "--json")
    done.set()
    armer.join(timeout=5)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert sorted(summary["registered"]) == sorted(s.name for s in sessions)
    assert fired[:2] == ["reset", "cut"], fired  # the upload carries on through both
    status = json.loads(cli(daemon_cfg, "status", "--json").stdout)
    assert all(s["attempts"] == 0 and s["state"] == "registered" for s in status["sessions"]), status
    check_invariants(direct_cfg, valid=sessions)


def test_outage_at_boot_and_mid_upload_fails_then_recovers(net, tmp_path: Path) -> None:
    proxy, daemon_cfg, direct_cfg = net
    sessions = _sessions(tmp_path, 2)
    # 0. an operator's drain with no network says so at once, instead of failing session by session
    proxy.refuse()
    offline = cli(daemon_cfg, "drain", "--json")
    assert offline.returncode == 1, offline.stderr[-2000:]
    assert "Connection refused" in offline.stdout + offline.stderr
    assert "session.failed" not in offline.stderr
    # 1. the rig boots with no network: the daemon stays up and keeps retrying
    proc = DaemonProc(daemon_cfg, "run", log=tmp_path / "run.log")
    try:
        assert proc.wait_event(lambda e: e.get("event") == "session.failed", timeout=60), proc.text()
        assert proc.proc.poll() is None, proc.text()
        assert any(e.get("event") == "daemon.store_unreachable" for e in proc.events)
        proxy.restore()
        # 2. the network returns; uploads start; then a compressed "10-minute" outage hits mid-upload
        assert proc.wait_event(lambda e: e.get("event") == "session.hashing", timeout=60), proc.text()
        time.sleep(0.3)
        proxy.refuse()
        outage_started = time.monotonic()
        failed_before = sum(e.get("event") == "session.failed" for e in proc.events)
        while time.monotonic() - outage_started < 10.0:
            time.sleep(0.5)
        fails = [e for e in proc.events if e.get("event") == "session.failed"][failed_before:]
        assert len(fails) >= 2, proc.text()  # retried, and failed again, through the outage
        assert not DataInterface(config=load_config(direct_cfg)).query(rec_id=fails[0]["rec_id"])
        status = json.loads(cli(daemon_cfg, "status", "--json").stdout)
        failed = [s for s in status["sessions"] if s["state"] == "failed"]
        assert failed and all(s["attempts"] >= 1 and s["last_error"] for s in failed), status
        # the backoff grows (jitter is ±25 %: doubling always wins)
        delays = [e["retry_in_s"] for e in fails if e["rec_id"] == fails[0]["rec_id"]]
        assert all(b > a for a, b in zip(delays, delays[1:], strict=False)), delays
        proxy.restore()
        want = {s.name for s in sessions}
        got: set[str] = {e["rec_id"] for e in proc.events if e.get("event") == "session.registered"}
        while got < want:
            ev = proc.wait_event(lambda e: e.get("event") == "session.registered", timeout=120)
            assert ev is not None, proc.text()
            got.add(ev["rec_id"])
    finally:
        proxy.restore() if proxy.refusing else None
        assert proc.stop() == 0, proc.text()
    check_invariants(direct_cfg, valid=sessions)
