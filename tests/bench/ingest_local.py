"""Ingest to the local profile against ``cp -r`` + ``sha256sum`` (two workers).

Run by hand (pytest does not collect tests/bench)::

    .venv/bin/python tests/bench/ingest_local.py [--files 8] [--size-mib 256] [--trials 3]
    .venv/bin/python tests/bench/ingest_local.py --size-mib 32 --trials 1    # smoke run

The session (8 files of 256 MiB of random bytes = 2 GiB, the one
ingest_throughput.py uses) is cached under /tmp/ursa-bench-data. The page cache
cannot be dropped here, so every file is read once before the trials: both
sides read from memory and write through the page cache into a fresh
directory on the same file system (``--out-dir``, default /tmp), which is
deleted and ``sync``-ed between runs, outside the timing. Trials alternate
which side goes first.

* ``ours``: ``ingest(DataInterface(profile="local", path=tmpdir), rec)``:
  hashing (parallel sha256, with the part CRC32Cs and mtime in the same
  read), the copy into the local store (``copy_file_range`` in 4 MiB slices
  into a partial file a pause keeps, not hashed again: the file is held to the
  size, mtime and inode hashing saw), the manifest and the LanceDB catalog
  commits.
  Opening the DataInterface (``enable_writes``) is outside the timing.
* ``peer``: ``cp -r SESSION DEST`` then ``sha256sum`` of every copied file,
  two at a time (``find DEST -type f -print0 | xargs -0 -P 2 -n 1 sha256sum``).
  coreutils 9.1's sha256sum is a portable C implementation (~250 MB/s per core
  here): ours / peer <= 1.0 is the first, easy target.
* ``peer_openssl``: the same pipeline with ``openssl dgst -sha256`` (SHA-NI,
  ~1.2 GB/s per core): the floor of issue 14, ours / floor <= 1.2.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    MiB,
    check_disk,
    data_bytes,
    emit_json,
    ensure_session,
    known_hashes,
    median,
    print_table,
    quiet_logs,
    session_files,
    warm,
)

PEER_SCRIPT = 'cp -r "$1" "$2/session" && find "$2/session" -type f -print0 | xargs -0 -P 2 -n 1 {hasher} > /dev/null'
#: the peer the target is set against, and an informative stronger one (OpenSSL's SHA-NI sha256)
HASHERS = {"peer": "sha256sum", "peer_openssl": "openssl dgst -sha256"}


def run_ours(rec: Path, out: Path) -> float:
    from ursa_daemon.api import DataInterface
    from ursa_daemon.transfer.ingest import ingest

    data = DataInterface(profile="local", path=out)
    data.enable_writes(roles=("assets_rw", "raw_rw"))
    t = time.perf_counter()
    res = ingest(data, rec)
    wall = time.perf_counter() - t
    if res.paused or res.recording is None or res.files_skipped:
        raise RuntimeError(f"ingest did not upload everything: {res}")
    return wall


def run_peer(rec: Path, out: Path, hasher: str) -> float:
    t = time.perf_counter()
    subprocess.run(["bash", "-c", PEER_SCRIPT.format(hasher=hasher), "peer", str(rec), str(out)], check=True)
    return time.perf_counter() - t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--size-mib", type=int, default=256, help="size of each file (MiB)")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--out-dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--no-openssl", action="store_true", help="skip the informative cp + openssl row")
    args = parser.parse_args()
    quiet_logs()

    rec = ensure_session(args.files, args.size_mib * MiB)
    nbytes = data_bytes(rec)
    check_disk(args.out_dir, nbytes + (1 << 30))
    warm_s = warm(session_files(rec))
    t = time.perf_counter()
    known_hashes(rec)
    hash_s = time.perf_counter() - t

    sides = ["ours", "peer"] + (["peer_openssl"] if shutil.which("openssl") and not args.no_openssl else [])
    times: dict[str, list[float]] = {name: [] for name in sides}
    for trial in range(args.trials):
        order = sides[trial % len(sides) :] + sides[: trial % len(sides)]
        for name in order:
            out = Path(tempfile.mkdtemp(prefix=f"ursa-bench-local-{name}-", dir=args.out_dir))
            try:
                wall = run_ours(rec, out) if name == "ours" else run_peer(rec, out, HASHERS[name])
            finally:
                shutil.rmtree(out, ignore_errors=True)
                os.sync()
            times[name].append(wall)
            print(f"  trial {trial + 1}: {name:<5} {wall:6.2f} s", file=sys.stderr, flush=True)

    ours, peer = median(times["ours"]), median(times["peer"])
    ratio = ours / peer
    figures: dict[str, Any] = {
        "bench": "ingest_local",
        "files": args.files,
        "file_mib": args.size_mib,
        "bytes": nbytes,
        "trials": args.trials,
        "ratio_ours_over_peer": round(ratio, 3),
        "hash_only_s": round(hash_s, 3),
        "warm_read_s": round(warm_s, 3),
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }
    for name, xs in times.items():
        figures[f"{name}_s_median"] = round(median(xs), 3)
        figures[f"{name}_s_runs"] = [round(x, 3) for x in xs]
    if "peer_openssl" in times:
        figures["ratio_ours_over_peer_openssl"] = round(ours / median(times["peer_openssl"]), 3)
    labels = {
        "ours": "ours: ingest() to local profile",
        "peer": "peer: cp -r + sha256sum -P2",
        "peer_openssl": "floor: cp -r + openssl dgst -sha256 -P2",
    }
    print_table(
        ["side", "s median", "runs (s)", "MB/s", "ours / side"],
        [
            [
                labels[name],
                f"{median(xs):.2f}",
                " ".join(f"{x:.2f}" for x in xs),
                f"{nbytes / median(xs) / 1e6:.0f}",
                f"{ours / median(xs):.2f}",
            ]
            for name, xs in times.items()
        ],
        title=f"local ingest: {args.files} x {args.size_mib} MiB = {nbytes / 2**30:.2f} GiB, warm page cache "
        f"(library hashing alone: {hash_s:.2f} s)",
    )
    print(f"ours / peer: {ratio:.2f}  (target <= 1.0: {'met' if ratio <= 1.0 else 'MISSED'})")
    if "peer_openssl" in times:
        floor = figures["ratio_ours_over_peer_openssl"]
        print(f"ours / floor (cp -r + openssl): {floor:.2f}  (target <= 1.2: {'met' if floor <= 1.2 else 'MISSED'})")
    emit_json(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
