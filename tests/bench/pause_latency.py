"""Pause latency: from ``is_active()`` turning true to the last byte on the wire.

Run by hand (pytest does not collect tests/bench)::

    .venv/bin/python tests/bench/pause_latency.py [--files 4] [--size-mib 1024] [--trials 20] [--caps 10,0]
    .venv/bin/python tests/bench/pause_latency.py --size-mib 128 --trials 3    # smoke run

A byte-counting TCP proxy (its own process) sits between the client and moto's
S3 server (another process). Each trial ingests a session of 4 files of 1 GiB
(cached under /tmp/ursa-bench-data) through the proxy at the default upload
config (4 files at once x 2 parts of 16 MiB in flight), into fresh buckets,
with a state database as the daemon has (the paused multipart uploads stay
open, to be resumed); hashing is skipped (``known_hashes``: it is not what is
measured, and the files do not change). Each bandwidth cap in ``--caps``
(MB/s, ``upload.bandwidth_bytes_per_s``; 0: none) gets ``--trials`` trials:
10 MB/s stands for a slow rig uplink. At a random moment (uniform in ``--flip-after``) the benchmark
flips ``is_active()`` to True, then waits until no byte has gone to the server
for ``--quiet`` s. The latency is the proxy's timestamp of the last byte it
forwarded to the server minus the flip time (both ``time.monotonic()``).
"Bytes after flip" is what the proxy
forwarded to the server after the flip. Because a slow server leaves the
pre-flip bytes queued in socket buffers, the client side is also reported:
the last byte the proxy *read from the client* (when the client stopped
sending) and the bytes it sent after the flip. Also reported: when
``ingest()`` returned, and multipart uploads left open afterwards (one per file
in flight: kept for part-level resume).

Target: p99 <= 100 ms at any cap (issue 8: a pause cuts the requests in flight;
before, a part in flight was finished: 1.6 s for a 16 MiB part at 10 MB/s).
With 20 trials p99 is the worst trial (nearest rank).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    MiB,
    MotoProcess,
    ProxyProcess,
    add_upload_args,
    emit_json,
    ensure_session,
    known_hashes,
    median,
    percentile,
    print_table,
    quiet_logs,
    s3_data,
    session_files,
    upload_config_used,
    upload_overrides,
    warm,
)


def one_trial(
    moto: MotoProcess,
    proxy: ProxyProcess,
    rec: Path,
    hashes: dict[str, str],
    flip_after: float,
    quiet: float,
    upload: dict[str, int],
) -> dict[str, Any]:
    from ursa_daemon.daemon.state import StateDB
    from ursa_daemon.transfer.ingest import ingest

    moto.reset()
    raw, assets = moto.fresh_buckets("pause")
    scratch = Path(tempfile.mkdtemp(prefix="ursa-bench-pause-"))
    journal = StateDB(scratch / "state")
    try:
        data = s3_data(proxy.endpoint, raw, assets, scratch, upload)
        proxy.wait_quiet(0.2)
        active = threading.Event()
        flip: dict[str, Any] = {}

        def flipper() -> None:
            time.sleep(flip_after)
            st = proxy.stats()
            flip["bytes"], flip["recv_bytes"] = st.c2s_bytes, st.c2s_recv_bytes
            flip["t"] = time.monotonic()
            active.set()

        start_bytes = proxy.stats().c2s_bytes
        timer = threading.Thread(target=flipper, daemon=True)
        timer.start()
        res = ingest(data, rec, is_active=active.is_set, known_hashes=hashes, journal=journal)
        returned = time.monotonic()
        timer.join()
        st = proxy.wait_quiet(quiet)
        open_uploads = moto.open_multipart_uploads(raw)
        return {
            "paused": res.paused,
            "flip_after_s": flip_after,
            "latency_ms": (st.last_c2s - flip["t"]) * 1000,
            "return_ms": (returned - flip["t"]) * 1000,
            "bytes_after_flip": st.c2s_bytes - flip["bytes"],
            "client_stop_ms": (st.last_c2s_recv - flip["t"]) * 1000,
            "client_bytes_after_flip": st.c2s_recv_bytes - flip["recv_bytes"],
            "bytes_before_flip": flip["bytes"] - start_bytes,
            "files_uploaded": res.files_uploaded,
            "open_multipart_uploads": open_uploads,
        }
    finally:
        journal.close()
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--size-mib", type=int, default=1024, help="size of each file (MiB)")
    parser.add_argument("--trials", type=int, default=20, help="trials per cap")
    parser.add_argument("--caps", default="10,0", help="bandwidth caps to run, MB/s, comma-separated (0: none)")
    parser.add_argument("--flip-after", type=float, nargs=2, default=(1.0, 6.0), metavar=("MIN_S", "MAX_S"))
    parser.add_argument("--quiet", type=float, default=1.0, help="seconds without a byte that end a trial")
    parser.add_argument("--seed", type=int, default=None)
    add_upload_args(parser)
    args = parser.parse_args()
    quiet_logs()
    rng = random.Random(args.seed)
    caps = [float(c) for c in args.caps.split(",") if c.strip()]

    rec = ensure_session(args.files, args.size_mib * MiB)
    warm(session_files(rec))
    hashes = known_hashes(rec)

    figures: dict[str, Any] = {
        "bench": "pause_latency",
        "files": args.files,
        "file_mib": args.size_mib,
        "trials_per_cap": args.trials,
        "target_p99_ms": 100,
        "ours_upload_config": upload_config_used(upload_overrides(args)),
        "caps": {},
    }
    rows: list[list[str]] = []
    with MotoProcess() as moto, ProxyProcess(moto.port) as proxy:
        for cap in caps:
            upload = upload_overrides(args)
            if cap > 0:
                upload["bandwidth_bytes_per_s"] = int(cap * 1e6)
            label = f"{cap:g} MB/s cap" if cap > 0 else "no cap"
            trials = run_trials(moto, proxy, rec, hashes, args, rng, upload, label)
            figures["caps"][label] = summarize(trials, args.files)
            rows.extend(table_rows(label, trials, args.files))
    print_table(
        ["figure", "p50", "p99", "max"],
        rows,
        title=f"pause latency: {args.files} x {args.size_mib} MiB through a counting proxy to moto, "
        f"{args.trials} trials per cap",
    )
    worst = max(c["latency_ms_p99"] for c in figures["caps"].values())
    figures["latency_ms_p99_worst_cap"] = worst
    figures["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    print(
        "p99 flip -> last byte at the server: "
        + ", ".join(f"{k} {v['latency_ms_p99']:.0f} ms" for k, v in figures["caps"].items())
        + f" (target <= 100 ms: {'met' if worst <= 100 else 'MISSED'})"
    )
    emit_json(figures)
    return 0


def run_trials(
    moto: MotoProcess,
    proxy: ProxyProcess,
    rec: Path,
    hashes: dict[str, str],
    args: argparse.Namespace,
    rng: random.Random,
    upload: dict[str, int],
    label: str,
) -> list[dict[str, Any]]:
    trials: list[dict[str, Any]] = []
    skipped = 0
    while len(trials) < args.trials:
        r = one_trial(moto, proxy, rec, hashes, rng.uniform(*args.flip_after), args.quiet, upload)
        if not r["paused"]:  # finished before the flip: not a pause
            skipped += 1
            if skipped > args.trials:
                raise SystemExit("the upload keeps finishing before the flip: lower --flip-after")
            continue
        trials.append(r)
        print(
            f"  {label} trial {len(trials):2d}: flip at {r['flip_after_s']:.2f} s, "
            f"last byte +{r['latency_ms']:4.0f} ms "
            f"(client +{r['client_stop_ms']:4.0f} ms), {r['bytes_after_flip'] / MiB:5.2f} MiB after flip, "
            f"ingest returned +{r['return_ms']:4.0f} ms, open uploads {r['open_multipart_uploads']}",
            file=sys.stderr,
            flush=True,
        )
    return trials


def summarize(trials: list[dict[str, Any]], files: int) -> dict[str, Any]:
    def col(key: str) -> list[float]:
        return [float(r[key]) for r in trials]

    rate = [r["bytes_before_flip"] / r["flip_after_s"] / 1e6 for r in trials]
    out: dict[str, Any] = {
        "trials": len(trials),
        "upload_mb_s_before_flip_median": round(median(rate), 1),
        "open_multipart_uploads_max": max(r["open_multipart_uploads"] for r in trials),
    }
    for key in ("latency_ms", "client_stop_ms", "return_ms"):
        xs = col(key)
        out.update({f"{key}_p50": round(percentile(xs, 50), 1), f"{key}_p99": round(percentile(xs, 99), 1)})
    for key in ("bytes_after_flip", "client_bytes_after_flip"):
        xs = col(key)
        out.update({f"{key}_p50": int(percentile(xs, 50)), f"{key}_p99": int(percentile(xs, 99))})
    out["runs"] = [{k: (round(v, 1) if isinstance(v, float) else v) for k, v in r.items()} for r in trials]
    return out


def table_rows(label: str, trials: list[dict[str, Any]], files: int) -> list[list[str]]:
    def row(name: str, key: str, scale: float = 1.0, fmt: str = "{:.0f}") -> list[str]:
        xs = [float(r[key]) / scale for r in trials]
        return [f"[{label}] {name}", *(fmt.format(v) for v in (percentile(xs, 50), percentile(xs, 99), max(xs)))]

    rate = median([r["bytes_before_flip"] / r["flip_after_s"] / 1e6 for r in trials])
    return [
        [f"[{label}] upload rate before the flip (MB/s)", f"{rate:.1f}", "", ""],
        row("flip -> last byte forwarded to server (ms)", "latency_ms"),
        row("bytes forwarded to server after flip (MiB)", "bytes_after_flip", MiB, "{:.2f}"),
        row("flip -> last byte sent by the client (ms)", "client_stop_ms"),
        row("bytes sent by the client after flip (MiB)", "client_bytes_after_flip", MiB, "{:.2f}"),
        row("flip -> ingest() returned (ms)", "return_ms"),
    ]


if __name__ == "__main__":
    raise SystemExit(main())
