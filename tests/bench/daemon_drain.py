"""Drain of many small sessions on the local profile (issue 4, benchmark 3).

200 sessions of 20 files x 100 KiB. Reports sessions/s for the first drain and
for a re-run over the drained root, and the catalog table versions written.
The peer is the same bytes copied with ``cp -r`` plus ``sha256sum`` (the floor
for a local ingest), measured in the same run.

    .venv/bin/python tests/bench/daemon_drain.py [--sessions 200] [--files 20] [--size 102400]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from ursa_daemon.config import config_from_dict
from ursa_daemon.daemon import Daemon
from ursa_daemon.log import setup_logging


def make_sessions(root: Path, n: int, files: int, size: int) -> None:
    for i in range(n):
        rec_id = f"rec_20260101_{i // 60:04d}{i % 60:02d}_{i:04x}"
        rec = root / rec_id
        (rec / "eeg_a").mkdir(parents=True)
        for j in range(files):
            (rec / "eeg_a" / f"seg_{j:03d}.bin").write_bytes(os.urandom(size))
        (rec / "manifest.json").write_text(json.dumps({"recording_id": rec_id, "start_time": i}))
        (rec / "participant.txt").write_text(f"Subject {i % 7}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--files", type=int, default=20)
    ap.add_argument("--size", type=int, default=100 * 1024)
    args = ap.parse_args()
    setup_logging(json=True, level="WARNING")
    with tempfile.TemporaryDirectory(prefix="ursa-bench-drain-") as tmp_s:
        tmp = Path(tmp_s)
        root = tmp / "recordings"
        make_sessions(root, args.sessions, args.files, args.size)
        cfg = config_from_dict(
            {
                "profile": "local",
                "recordings_root": str(root),
                "state_dir": str(tmp / "state"),
                "profiles": {"local": {"kind": "local", "root": str(tmp / "store")}},
                "watch": {"settle_seconds": 0},
            },
            base_dir=tmp,
        )
        with Daemon(cfg) as daemon:
            before = daemon.data.catalog.table_versions()
            t0 = time.perf_counter()
            first = daemon.drain([root])
            first_s = time.perf_counter() - t0
            after = daemon.data.catalog.table_versions()
            t0 = time.perf_counter()
            again = daemon.drain([root])
            again_s = time.perf_counter() - t0
            after_again = daemon.data.catalog.table_versions()
        assert len(first.registered) == args.sessions, first.as_json()
        assert len(again.already_registered) == args.sessions

        peer_dst = tmp / "peer"
        t0 = time.perf_counter()
        shutil.copytree(root, peer_dst)
        subprocess.run(
            f"find {peer_dst} -type f -name '*.bin' -print0 | xargs -0 -P 2 -n 200 sha256sum > /dev/null",
            shell=True,
            check=True,
        )
        peer_s = time.perf_counter() - t0

    commits = {t: after[t] - before.get(t, 0) for t in after}
    figures = {
        "sessions": args.sessions,
        "files_per_session": args.files,
        "file_size": args.size,
        "drain_s": round(first_s, 3),
        "drain_sessions_per_s": round(args.sessions / first_s, 1),
        "rerun_s": round(again_s, 3),
        "rerun_sessions_per_s": round(args.sessions / again_s, 1),
        "rerun_catalog_commits": sum(after_again[t] - after[t] for t in after),
        "catalog_commits_per_table": commits,
        "commits_per_session_per_table_max": round(max(commits.values()) / args.sessions, 3),
        "peer_cp_sha256sum_s": round(peer_s, 3),
        "ratio_drain_vs_peer_time": round(first_s / peer_s, 2),
    }
    print(f"{'what':<40}{'value':>14}")
    print(f"{'drain (first run) s':<40}{first_s:>14.2f}")
    print(f"{'  sessions/s (target >= 20)':<40}{args.sessions / first_s:>14.1f}")
    print(f"{'re-run over drained root s':<40}{again_s:>14.2f}")
    print(f"{'  sessions/s':<40}{args.sessions / again_s:>14.1f}")
    print(f"{'  catalog commits on re-run':<40}{figures['rerun_catalog_commits']:>14}")
    for t, c in sorted(commits.items()):
        print(f"{'  commits: ' + t:<40}{c:>14}")
    print(f"{'peer: cp -r + sha256sum -P2 s':<40}{peer_s:>14.2f}")
    print(f"{'ratio drain / peer (time)':<40}{first_s / peer_s:>14.2f}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
