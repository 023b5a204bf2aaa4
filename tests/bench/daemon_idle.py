"""Idle cost and detection latency of ``ursa-daemon run`` (issue 4, benchmarks 1 and 2).

1. Idle: ``run`` over a root holding N registered sessions, measured over
   ``--idle-seconds`` of nothing happening: CPU % of one core and RSS growth.
   Peer: ``inotifywait -m -r`` on the same root when installed (the floor for
   a recursive inotify watcher), measured over the same window.
2. Detection: from the moment a session becomes complete (its last write +
   ``settle_seconds``) to its first object appearing in the store; median
   over ``--trials``. Target: at most settle_seconds + 1 s after the last write.

    .venv/bin/python tests/bench/daemon_idle.py [--sessions 1000] [--idle-seconds 60] [--trials 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import yaml

from ursa_daemon.config import load_config
from ursa_daemon.daemon import Daemon
from ursa_daemon.log import setup_logging

SETTLE_S = 2.0


def write_session(root: Path, rec_id: str, body: bytes) -> None:
    rec = root / rec_id
    (rec / "eeg").mkdir(parents=True)
    (rec / "eeg" / "seg.bin").write_bytes(body)
    (rec / "manifest.json").write_text(json.dumps({"recording_id": rec_id, "start_time": 0}))


def cpu_over(proc: psutil.Process, seconds: float) -> tuple[float, int, int]:
    """(CPU % of one core, RSS before, RSS after) over ``seconds``."""
    rss0 = proc.memory_info().rss
    t0 = proc.cpu_times()
    time.sleep(seconds)
    t1 = proc.cpu_times()
    cpu = (t1.user + t1.system - t0.user - t0.system) / seconds * 100
    return cpu, rss0, proc.memory_info().rss


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--idle-seconds", type=float, default=60.0)
    ap.add_argument("--trials", type=int, default=5)
    args = ap.parse_args()
    setup_logging(json=True, level="WARNING")
    tmp = Path(tempfile.mkdtemp(prefix="ursa-bench-idle-"))
    try:
        root = tmp / "recordings"
        root.mkdir()
        for i in range(args.sessions):
            write_session(root, f"rec_20260101_{i // 60:04d}{i % 60:02d}_{i:04x}", os.urandom(1024))
        cfg_path = tmp / "config.yaml"
        cfg_path.write_text(
            yaml.safe_dump(
                {
                    "profile": "local",
                    "recordings_root": "recordings",
                    "state_dir": "state",
                    "profiles": {"local": {"kind": "local", "root": "store"}},
                    "watch": {"settle_seconds": SETTLE_S},
                    "activity": {"quiet_seconds": 0},
                }
            )
        )
        t0 = time.perf_counter()
        with Daemon(load_config(cfg_path)) as d:
            summary = d.drain([root])
        assert len(summary.registered) == args.sessions, summary.as_json()
        setup_s = time.perf_counter() - t0

        log = open(tmp / "run.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "ursa_daemon.cli", "--config", str(cfg_path), "run"], stdout=log, stderr=log
        )
        ps = psutil.Process(proc.pid)
        time.sleep(5)  # start-up scan done
        cpu, rss0, rss1 = cpu_over(ps, args.idle_seconds)

        peer_cpu = None
        if shutil.which("inotifywait"):
            peer = subprocess.Popen(["inotifywait", "-q", "-m", "-r", str(root)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            time.sleep(2)
            peer_cpu, _, _ = cpu_over(psutil.Process(peer.pid), args.idle_seconds)
            peer.kill()

        latencies = []
        for t in range(args.trials):
            rec_id = f"rec_20270101_000000_{t:04x}"
            write_session(root, rec_id, os.urandom(4096))
            last_write = time.time()
            target = tmp / "store" / "raw" / "recordings" / rec_id / "eeg" / "seg.bin"
            while not target.exists():
                time.sleep(0.01)
                if time.time() - last_write > 60:
                    raise SystemExit(f"session {rec_id} not picked up in 60 s; see {tmp / 'run.log'}")
            latencies.append(time.time() - last_write)
        proc.terminate()
        proc.wait(timeout=10)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    det = statistics.median(latencies)
    figures = {
        "sessions": args.sessions,
        "setup_drain_s": round(setup_s, 1),
        "idle_seconds": args.idle_seconds,
        "idle_cpu_pct_one_core": round(cpu, 3),
        "idle_rss_start_mib": round(rss0 / 2**20, 1),
        "idle_rss_end_mib": round(rss1 / 2**20, 1),
        "peer_inotifywait_cpu_pct": None if peer_cpu is None else round(peer_cpu, 3),
        "settle_seconds": SETTLE_S,
        "detection_median_s": round(det, 3),
        "detection_max_s": round(max(latencies), 3),
        "detection_over_settle_median_s": round(det - SETTLE_S, 3),
    }
    print(f"{'what':<44}{'value':>12}")
    print(f"{'idle CPU % of one core (target <= 0.5)':<44}{cpu:>12.3f}")
    if peer_cpu is not None:
        print(f"{'peer inotifywait -m -r CPU %':<44}{peer_cpu:>12.3f}")
    print(f"{'idle RSS start -> end MiB':<44}{rss0 / 2**20:>6.1f}{rss1 / 2**20:>6.1f}")
    print(f"{'detection median s (settle ' + str(SETTLE_S) + ' s)':<44}{det:>12.3f}")
    print(f"{'detection beyond settle, median s (<= 1)':<44}{det - SETTLE_S:>12.3f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
