"""Idle cost and detection latency of ``ursa-daemon run`` (issue 4, benchmarks 1 and 2; issue 17).

1. Rig impact: ``run`` over a root holding N registered sessions, from its start:
   CPU % of one core averaged over its first ``--first-seconds`` (default 300, the
   start-up scan included; target <= 0.5 %) with a per-minute breakdown, RSS at the
   end of that window (target <= 100 MiB) and whether lancedb/pyarrow are mapped.
   Peer: ``inotifywait -m -r`` on the same root when installed (the floor for a
   recursive inotify watcher), over ``--peer-seconds``.
2. Detection: from the moment a session becomes complete (its last write +
   ``settle_seconds``) to its first object appearing in the store; median
   over ``--trials``. Target: at most settle_seconds + 1 s after the last write.
3. After work: the trials brought the catalog stack in; once idle for
   ``watch.shed_after_idle_seconds`` (default 60) the process re-executes itself:
   RSS and mapped stack a few seconds after its ``daemon.shed`` (target <= 100 MiB).

    .venv/bin/python tests/bench/daemon_idle.py [--sessions 1000] [--first-seconds 300] [--trials 5]
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


def stack_mapped(pid: int) -> bool:
    """Is lancedb or pyarrow mapped into ``pid``?"""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return "lancedb" in maps or "pyarrow" in maps


def cpu_per_window(proc: psutil.Process, started: float, seconds: float, step: float = 60.0) -> list[float]:
    """CPU % of one core in consecutive ``step`` windows from ``started`` (process start) for ``seconds``."""
    out = []
    prev = 0.0  # a fresh process: its CPU time at start is ~0
    t = started
    while t + step <= started + seconds + 1e-6:
        t += step
        time.sleep(max(0.0, t - time.monotonic()))
        ct = proc.cpu_times()
        now = ct.user + ct.system
        out.append((now - prev) / step * 100)
        prev = now
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--first-seconds", type=float, default=300.0)
    ap.add_argument("--peer-seconds", type=float, default=60.0)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--shed-after", type=float, default=60.0, help="watch.shed_after_idle_seconds")
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
                    "watch": {"settle_seconds": SETTLE_S, "shed_after_idle_seconds": args.shed_after},
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
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "ursa_daemon.cli", "--config", str(cfg_path), "run"], stdout=log, stderr=log
        )
        ps = psutil.Process(proc.pid)
        per_min = cpu_per_window(ps, started, args.first_seconds, step=min(60.0, args.first_seconds))
        cpu = statistics.fmean(per_min)
        rss_idle = ps.memory_info().rss
        mapped_idle = stack_mapped(proc.pid)

        peer_cpu = None
        if shutil.which("inotifywait"):
            peer = subprocess.Popen(["inotifywait", "-q", "-m", "-r", str(root)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            time.sleep(2)
            peer_cpu, _, _ = cpu_over(psutil.Process(peer.pid), args.peer_seconds)
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
        rss_worked = ps.memory_info().rss
        deadline = time.monotonic() + args.shed_after + 120
        while b"daemon.shed" not in (tmp / "run.log").read_bytes():
            if time.monotonic() > deadline:
                raise SystemExit(f"no daemon.shed within {args.shed_after + 120:.0f} s; see {tmp / 'run.log'}")
            time.sleep(0.5)
        time.sleep(5)  # the new image is up and has rescanned
        rss_shed = ps.memory_info().rss
        mapped_shed = stack_mapped(proc.pid)
        assert ps.pid == proc.pid and proc.poll() is None
        proc.terminate()
        proc.wait(timeout=10)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    det = statistics.median(latencies)
    mib = 2**20
    figures = {
        "sessions": args.sessions,
        "setup_drain_s": round(setup_s, 1),
        "load_average": round(os.getloadavg()[0], 2),
        "first_seconds": args.first_seconds,
        "run_cpu_pct_one_core_first_window": round(cpu, 3),
        "run_cpu_pct_per_minute": [round(c, 3) for c in per_min],
        "idle_rss_mib": round(rss_idle / mib, 1),
        "idle_catalog_stack_mapped": mapped_idle,
        "peer_inotifywait_cpu_pct": None if peer_cpu is None else round(peer_cpu, 3),
        "settle_seconds": SETTLE_S,
        "detection_median_s": round(det, 3),
        "detection_max_s": round(max(latencies), 3),
        "detection_over_settle_median_s": round(det - SETTLE_S, 3),
        "rss_after_work_mib": round(rss_worked / mib, 1),
        "shed_after_idle_seconds": args.shed_after,
        "rss_after_shed_mib": round(rss_shed / mib, 1),
        "after_shed_catalog_stack_mapped": mapped_shed,
    }
    print(f"{'what':<52}{'value':>12}")
    print(f"{f'run CPU % of one core, first {args.first_seconds:.0f} s (<= 0.5)':<52}{cpu:>12.3f}")
    print(f"{'  per minute':<52}{' '.join(f'{c:.2f}' for c in per_min):>12}")
    if peer_cpu is not None:
        print(f"{'peer inotifywait -m -r CPU %':<52}{peer_cpu:>12.3f}")
        print(f"{'ratio run / inotifywait':<52}{cpu / peer_cpu if peer_cpu else float('inf'):>12.1f}")
    print(f"{'idle RSS MiB (<= 100)':<52}{rss_idle / mib:>12.1f}")
    print(f"{'idle: lancedb/pyarrow mapped':<52}{mapped_idle!s:>12}")
    print(f"{'detection median s (settle ' + str(SETTLE_S) + ' s)':<52}{det:>12.3f}")
    print(f"{'detection beyond settle, median s (<= 1)':<52}{det - SETTLE_S:>12.3f}")
    print(f"{'RSS MiB right after work':<52}{rss_worked / mib:>12.1f}")
    print(f"{'RSS MiB after the idle re-exec (<= 100)':<52}{rss_shed / mib:>12.1f}")
    print(f"{'after re-exec: lancedb/pyarrow mapped':<52}{mapped_shed!s:>12}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
