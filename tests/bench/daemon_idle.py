"""Idle cost and detection latency of ``ursa-daemon run`` (issue 4, benchmarks 1 and 2; issues 17, 25).

1. Rig impact: ``run`` over a root holding N registered sessions (``--sessions``, default
   1,000 and 10,000, each kept on disk), from its start: CPU % of one core in each minute
   of its first ``--first-seconds`` (default 300, the start-up scan included; target
   <= 0.5 % in every minute, the first included) and their mean, RSS at the end of that
   window (target <= 100 MiB) and whether lancedb/pyarrow are mapped. ``--runs`` starts
   ``run`` that many times over the same sessions (medians reported). The daemon runs as
   installed by pip: its bytecode compiled beforehand (``compileall``), whatever
   ``PYTHONDONTWRITEBYTECODE`` says here. Peer: ``inotifywait -m -r`` on the same root when
   installed (the floor for a recursive inotify watcher), over ``--peer-seconds``.
2. Detection: from the moment a session becomes complete (its last write +
   ``settle_seconds``) to its first object appearing in the store; median
   over ``--trials``. Target: at most settle_seconds + 1 s after the last write.
3. After work: the trials brought the catalog stack in; once idle for
   ``watch.shed_after_idle_seconds`` (default 60) the process re-executes itself:
   RSS and mapped stack a few seconds after its ``daemon.shed`` (target <= 100 MiB).

Registering 10,000 sessions takes ~10 minutes on a 2-core machine: ``--keep DIR`` keeps
each N's root and state under DIR and uses them again next time.

    .venv/bin/python tests/bench/daemon_idle.py [--sessions 1000 10000] [--first-seconds 300]
        [--runs 1] [--trials 5] [--keep DIR]
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


def compiled_env() -> dict[str, str]:
    """The environment of the daemon: bytecode compiled and used, as after ``pip install``."""
    import compileall

    import ursa_daemon

    compileall.compile_dir(str(Path(ursa_daemon.__file__).parent), quiet=1)
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def registered_root(base: Path, n: int, shed_after: float) -> tuple[Path, float]:
    """``base`` with ``n`` sessions under ``recordings`` registered by ``drain`` (kept from an
    earlier run when there), and the seconds the drain took (0 when kept)."""
    root, cfg_path = base / "recordings", base / "config.yaml"
    cfg_path.parent.mkdir(parents=True, exist_ok=True)
    cfg_path.write_text(
        yaml.safe_dump(
            {
                "profile": "local",
                "recordings_root": "recordings",
                "state_dir": "state",
                "profiles": {"local": {"kind": "local", "root": "store"}},
                "watch": {"settle_seconds": SETTLE_S, "shed_after_idle_seconds": shed_after},
                "activity": {"quiet_seconds": 0},
            }
        )
    )
    if (base / "registered").exists():
        return cfg_path, 0.0
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(base / "state", ignore_errors=True)
    root.mkdir()
    for i in range(n):
        write_session(root, f"rec_20260101_{i // 60:04d}{i % 60:02d}_{i:04x}", os.urandom(1024))
    t0 = time.perf_counter()
    with Daemon(load_config(cfg_path)) as d:
        summary = d.drain([root])
    assert len(summary.registered) == n, summary.as_json()
    (base / "registered").touch()
    return cfg_path, time.perf_counter() - t0


def start_run(cfg_path: Path, env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen[bytes], float]:
    log = open(log_path, "ab")  # noqa: SIM115
    started = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ursa_daemon.cli", "--config", str(cfg_path), "run"], stdout=log, stderr=log, env=env
    )
    return proc, started


def bench_one(n: int, base: Path, args: argparse.Namespace, env: dict[str, str]) -> dict[str, object]:
    cfg_path, setup_s = registered_root(base, n, args.shed_after)
    root, tmp, run_log = base / "recordings", base, base / "run.log"
    run_log.write_bytes(b"")
    step = min(60.0, args.first_seconds)
    runs: list[list[float]] = []
    for _ in range(args.runs - 1):  # the earlier runs: the first window only
        proc, started = start_run(cfg_path, env, run_log)
        runs.append(cpu_per_window(psutil.Process(proc.pid), started, args.first_seconds, step=step))
        proc.terminate()
        proc.wait(timeout=10)
    proc, started = start_run(cfg_path, env, run_log)
    ps = psutil.Process(proc.pid)
    try:
        runs.append(cpu_per_window(ps, started, args.first_seconds, step=step))
        per_min = [statistics.median(c) for c in zip(*runs, strict=True)]
        cpu = statistics.fmean(per_min)
        rss_idle = ps.memory_info().rss
        mapped_idle = stack_mapped(proc.pid)

        peer_cpu = None
        if shutil.which("inotifywait") and args.peer_seconds > 0:
            peer = subprocess.Popen(["inotifywait", "-q", "-m", "-r", str(root)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            time.sleep(2)
            peer_cpu, _, _ = cpu_over(psutil.Process(peer.pid), args.peer_seconds)
            peer.kill()

        latencies = []
        for t in range(args.trials):
            rec_id = f"rec_20270101_000000_{t:04x}"
            shutil.rmtree(root / rec_id, ignore_errors=True)  # (a kept root: from an earlier run)
            shutil.rmtree(tmp / "store" / "raw" / "recordings" / rec_id, ignore_errors=True)
            write_session(root, rec_id, os.urandom(4096))
            last_write = time.time()
            target = tmp / "store" / "raw" / "recordings" / rec_id / "eeg" / "seg.bin"
            while not target.exists():
                time.sleep(0.01)
                if time.time() - last_write > 60:
                    raise SystemExit(f"session {rec_id} not picked up in 60 s; see {run_log}")
            latencies.append(time.time() - last_write)
        rss_worked = ps.memory_info().rss
        rss_shed, mapped_shed = None, None
        if latencies:
            deadline = time.monotonic() + args.shed_after + 120
            while b"daemon.shed" not in run_log.read_bytes():
                if time.monotonic() > deadline:
                    raise SystemExit(f"no daemon.shed within {args.shed_after + 120:.0f} s; see {run_log}")
                time.sleep(0.5)
            time.sleep(5)  # the new image is up and has rescanned
            rss_shed = ps.memory_info().rss
            mapped_shed = stack_mapped(proc.pid)
            assert ps.pid == proc.pid and proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    mib = 2**20
    det = statistics.median(latencies) if latencies else None
    return {
        "sessions": n,
        "setup_drain_s": round(setup_s, 1),
        "load_average": round(os.getloadavg()[0], 2),
        "first_seconds": args.first_seconds,
        "runs": args.runs,
        "run_cpu_pct_one_core_first_window": round(cpu, 3),
        "run_cpu_pct_per_minute": [round(c, 3) for c in per_min],
        "run_cpu_pct_per_minute_each_run": [[round(c, 3) for c in r] for r in runs],
        "run_cpu_pct_max_minute": round(max(per_min), 3),
        "idle_rss_mib": round(rss_idle / mib, 1),
        "idle_catalog_stack_mapped": mapped_idle,
        "peer_inotifywait_cpu_pct": None if peer_cpu is None else round(peer_cpu, 3),
        "settle_seconds": SETTLE_S,
        "detection_median_s": None if det is None else round(det, 3),
        "detection_max_s": round(max(latencies), 3) if latencies else None,
        "detection_over_settle_median_s": None if det is None else round(det - SETTLE_S, 3),
        "rss_after_work_mib": round(rss_worked / mib, 1),
        "shed_after_idle_seconds": args.shed_after,
        "rss_after_shed_mib": None if rss_shed is None else round(rss_shed / mib, 1),
        "after_shed_catalog_stack_mapped": mapped_shed,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--first-seconds", type=float, default=300.0)
    ap.add_argument("--runs", type=int, default=1, help="starts of run over the same sessions (medians)")
    ap.add_argument("--peer-seconds", type=float, default=60.0)
    ap.add_argument("--trials", type=int, default=5, help="detection trials (0: skip them and the re-exec)")
    ap.add_argument("--shed-after", type=float, default=60.0, help="watch.shed_after_idle_seconds")
    ap.add_argument("--keep", type=Path, default=None, help="keep each N's registered root here, reuse it")
    args = ap.parse_args()
    setup_logging(json=True, level="WARNING")
    env = compiled_env()
    tmp = Path(tempfile.mkdtemp(prefix="ursa-bench-idle-"))
    results = []
    try:
        for n in args.sessions:
            base = (args.keep / f"sessions-{n}") if args.keep else tmp / f"sessions-{n}"
            results.append(bench_one(n, base, args, env))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    def row(what: str, key: str, fmt: str = "{:.3f}") -> None:
        cells = [r[key] for r in results]
        print(f"{what:<46}" + "".join(f"{'-' if c is None else fmt.format(c):>14}" for c in cells))

    print(f"{'what':<46}" + "".join(f"{'N = ' + str(r['sessions']):>14}" for r in results))
    print(f"{'run CPU % of one core, first ' + str(int(args.first_seconds)) + ' s':<46}"
          + "".join(f"{r['run_cpu_pct_one_core_first_window']:>14.3f}" for r in results))
    minutes = max(len(r["run_cpu_pct_per_minute"]) for r in results)  # type: ignore[arg-type]
    for m in range(minutes):
        label = f"  minute {m + 1} (<= 0.5)" + (f", median of {args.runs}" if args.runs > 1 else "")
        cells = [r["run_cpu_pct_per_minute"][m] for r in results]  # type: ignore[index]
        print(f"{label:<46}" + "".join(f"{c:>14.3f}" for c in cells))
    row("peer inotifywait -m -r CPU %", "peer_inotifywait_cpu_pct")
    row("idle RSS MiB (<= 100)", "idle_rss_mib", "{:.1f}")
    row("idle: lancedb/pyarrow mapped", "idle_catalog_stack_mapped", "{!s}")
    row(f"detection median s (settle {SETTLE_S} s)", "detection_median_s")
    row("detection beyond settle, median s (<= 1)", "detection_over_settle_median_s")
    row("RSS MiB right after work", "rss_after_work_mib", "{:.1f}")
    row("RSS MiB after the idle re-exec (<= 100)", "rss_after_shed_mib", "{:.1f}")
    row("after re-exec: lancedb/pyarrow mapped", "after_shed_catalog_stack_mapped", "{!s}")
    row("setup: drain of the N sessions, s (0: kept)", "setup_drain_s", "{:.1f}")
    print(json.dumps({"results": results}))


if __name__ == "__main__":
    main()
