"""Start-up cost of the CLI (issue 14, "Start-up cost"): whole-process wall and CPU seconds.

Each command runs ``--runs`` times after one warm-up against a small local catalog
(one drained sample session); the figures are the medians of the operating
system's accounting of each finished child (``os.wait4``: user + sys, wall around
it). Peers in the same run: the bare interpreter (``python -c pass``, the floor)
and a plain ``import lancedb`` (what a command touching the catalog paid before
the REST namespace client was deferred). Targets: ``query`` <= 1 s wall,
``status`` <= 0.3 s.

    .venv/bin/python tests/bench/startup.py [--runs 7]
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

import yaml

from ursa_daemon.cli.demo import make_sample_session


def timed(argv: list[str], cwd: Path) -> tuple[float, float, int]:
    """(wall s, cpu s, exit status) of one run of ``argv``, its output discarded."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, usage.ru_utime + usage.ru_stime, proc.returncode


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ursa-bench-startup-"))
    try:
        cfg = tmp / "config.yaml"
        cfg.write_text(
            yaml.safe_dump(
                {
                    "profile": "local",
                    "recordings_root": "recordings",
                    "state_dir": "state",
                    "profiles": {"local": {"kind": "local", "root": "store"}},
                }
            )
        )
        make_sample_session(tmp / "recordings")
        cli = [sys.executable, "-m", "ursa_daemon.cli", "--config", str(cfg)]
        subprocess.run([*cli, "drain", "--json"], check=True, capture_output=True)
        commands = {
            "python -c pass (floor)": [sys.executable, "-c", "pass"],
            "python -c 'import lancedb' (peer)": [sys.executable, "-c", "import lancedb"],
            "ursa-daemon --help": [*cli, "--help"],
            "ursa-daemon status": [*cli, "status"],
            "ursa-daemon status --json": [*cli, "status", "--json"],
            "ursa-daemon query --json": [*cli, "query", "--json"],
            "ursa-daemon query --participant 'Aria Lin'": [*cli, "query", "--participant", "Aria Lin"],
        }
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for argv in commands.values():
            timed(argv, tmp)  # warm-up: page cache, .pyc
        for _ in range(args.runs):  # interleaved, so a noisy moment hits every command alike
            for name, argv in commands.items():
                wall, cpu, code = timed(argv, tmp)
                if code != 0:
                    raise SystemExit(f"{name} exited {code}")
                samples[name].append((wall, cpu))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    med = {
        name: (statistics.median(w for w, _ in s), statistics.median(c for _, c in s)) for name, s in samples.items()
    }
    peer_wall = med["python -c 'import lancedb' (peer)"][0]
    print(f"load average {os.getloadavg()[0]:.2f}, {args.runs} runs each, medians")
    print(f"{'command':<44}{'wall s':>9}{'cpu s':>9}{'wall / import lancedb':>24}")
    for name, (wall, cpu) in med.items():
        print(f"{name:<44}{wall:>9.3f}{cpu:>9.3f}{wall / peer_wall:>24.2f}")
    print(
        json.dumps(
            {
                "runs": args.runs,
                "load_average": round(os.getloadavg()[0], 2),
                "median_wall_s": {k: round(v[0], 3) for k, v in med.items()},
                "median_cpu_s": {k: round(v[1], 3) for k, v in med.items()},
                "targets": {"query_wall_s": 1.0, "status_wall_s": 0.3},
            }
        )
    )


if __name__ == "__main__":
    main()
