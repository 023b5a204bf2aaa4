"""Peak memory while uploading 4 files of 1 GiB at once: ours against boto3.

Run by hand (pytest does not collect tests/bench)::

    .venv/bin/python tests/bench/ingest_memory.py [--files 4] [--size-mib 1024] [--trials 1]
    .venv/bin/python tests/bench/ingest_memory.py --size-mib 128    # smoke run

Each client runs in its own fresh Python process (``--worker``), uploading the
same session (cached under /tmp/ursa-bench-data) to moto's S3 server, which
runs in yet another process, into fresh buckets:

* ``ours``: ``ingest(data, rec)`` at the default UploadConfig (4 files at once
  x 2 parts of 16 MiB in flight), hashing and catalog commits included.
* ``boto3``: ``client.upload_file`` of the 4 files, one calling thread per
  file, default ``TransferConfig`` (8 MiB parts, 10 threads per transfer).

Peak RSS is taken two ways: psutil samples of the worker's RSS every 20 ms
from a thread of this (parent) process, so the sampler adds nothing to the
measured process, and the worker's own ``resource.getrusage(RUSAGE_SELF)
.ru_maxrss`` at exit (which also covers spikes between samples). The worker
also reports its RSS after imports and setup, just before the upload
("baseline"), so "upload" = peak - baseline is what the transfer itself costs.
Target: peak <= 300 MiB for ours.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    MiB,
    MotoProcess,
    RssSampler,
    add_upload_args,
    boto3_client,
    data_bytes,
    emit_json,
    ensure_session,
    median,
    print_table,
    quiet_logs,
    s3_data,
    session_files,
    upload_config_used,
    upload_overrides,
    warm,
)

CLIENTS = ("ours", "boto3")
TARGET_MIB = 300


def self_rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


def worker(args: argparse.Namespace) -> int:
    """One upload in this process; prints one JSON line with its own figures."""
    rec = Path(args.rec)
    if args.worker == "ours":
        from ursa_daemon.transfer.ingest import ingest

        quiet_logs()
        scratch = Path(tempfile.mkdtemp(prefix="ursa-bench-mem-"))
        data = s3_data(args.endpoint, args.bucket, args.assets, scratch, upload_overrides(args))

        def go() -> None:
            res = ingest(data, rec)
            if res.paused or res.recording is None:
                raise RuntimeError(f"ingest did not finish: {res}")
    else:
        client = boto3_client(args.endpoint)
        files = [p for p in session_files(rec) if p.parent != rec]

        def go() -> None:
            def one(p: Path) -> None:
                client.upload_file(str(p), args.bucket, f"recordings/{rec.name}/{p.relative_to(rec).as_posix()}")

            with ThreadPoolExecutor(max_workers=len(files)) as pool:
                list(pool.map(one, files))

    baseline = self_rss()
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()  # the parent's sampler is running
    t = time.perf_counter()
    go()
    wall = time.perf_counter() - t
    print(
        json.dumps(
            {
                "baseline_rss": baseline,
                "maxrss_before_upload": maxrss_before,
                "ru_maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                "seconds": wall,
            }
        ),
        flush=True,
    )
    if args.worker == "ours":
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def measure(client: str, moto: MotoProcess, rec: Path, nbytes: int, passthrough: list[str]) -> dict[str, Any]:
    moto.reset()
    raw, assets = moto.fresh_buckets(client)
    cmd = [
        sys.executable, __file__, "--worker", client, "--rec", str(rec),
        "--endpoint", moto.endpoint, "--bucket", raw, "--assets", assets, *passthrough,
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    ready = proc.stdout.readline()
    if not ready:
        raise RuntimeError(f"{client} worker exited with {proc.wait()} before the upload")
    with RssSampler(proc.pid, interval=0.02) as sampler:
        proc.stdin.write("go\n")
        proc.stdin.flush()
        line = proc.stdout.readline()
        rc = proc.wait()
    if rc != 0 or not line:
        raise RuntimeError(f"{client} worker exited with {rc}")
    out = json.loads(line)
    stored = moto.object_sizes(raw)
    got = sum(v for k, v in stored.items() if not k.endswith(("manifest.json", "participant.txt")))
    if got != nbytes:
        raise RuntimeError(f"{client}: {got} data bytes in the bucket, expected {nbytes}")
    peak = max(sampler.peak, out["ru_maxrss"])
    return {
        "peak_rss": peak,
        "sampled_peak_rss": sampler.peak,
        "ru_maxrss": out["ru_maxrss"],
        "baseline_rss": out["baseline_rss"],
        "upload_rss": peak - out["baseline_rss"],
        "samples": sampler.samples,
        "seconds": out["seconds"],
        "mb_s": nbytes / out["seconds"] / 1e6,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--size-mib", type=int, default=1024, help="size of each file (MiB)")
    parser.add_argument("--trials", type=int, default=1)
    parser.add_argument("--worker", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--rec", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--bucket", help=argparse.SUPPRESS)
    parser.add_argument("--assets", help=argparse.SUPPRESS)
    add_upload_args(parser)
    args = parser.parse_args()
    if args.worker:
        return worker(args)

    rec = ensure_session(args.files, args.size_mib * MiB)
    nbytes = data_bytes(rec)
    warm(session_files(rec))
    passthrough = [
        f"--{name.replace('_', '-')}={getattr(args, name)}"
        for name in ("part_mib", "per_file", "files_at_once")
        if getattr(args, name) is not None
    ]
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in CLIENTS}
    with MotoProcess() as moto:
        for trial in range(args.trials):
            for client in CLIENTS if trial % 2 == 0 else CLIENTS[::-1]:
                r = measure(client, moto, rec, nbytes, passthrough)
                runs[client].append(r)
                print(
                    f"  trial {trial + 1}: {client:<5} peak {r['peak_rss'] / MiB:6.0f} MiB "
                    f"(baseline {r['baseline_rss'] / MiB:.0f} MiB), {r['mb_s']:.0f} MB/s",
                    file=sys.stderr,
                    flush=True,
                )

    figures: dict[str, Any] = {
        "bench": "ingest_memory",
        "files": args.files,
        "file_mib": args.size_mib,
        "trials": args.trials,
        "target_peak_mib": TARGET_MIB,
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "ours_upload_config": upload_config_used(upload_overrides(args)),
    }
    rows = []
    for c in CLIENTS:
        rs = runs[c]
        s = {
            key: round(median([r[key] for r in rs]) / MiB, 1)
            for key in ("peak_rss", "sampled_peak_rss", "ru_maxrss", "baseline_rss", "upload_rss")
        }
        figures[c] = {f"{k}_mib": v for k, v in s.items()}
        figures[c]["mb_s"] = round(median([r["mb_s"] for r in rs]), 1)
        figures[c]["peak_rss_runs_mib"] = [round(r["peak_rss"] / MiB, 1) for r in rs]
        figures[c]["samples"] = sum(r["samples"] for r in rs)
        rows.append(
            [c, f"{s['peak_rss']:.0f}", f"{s['sampled_peak_rss']:.0f}", f"{s['ru_maxrss']:.0f}",
             f"{s['baseline_rss']:.0f}", f"{s['upload_rss']:.0f}", f"{figures[c]['mb_s']:.0f}"]
        )  # fmt: skip
    ours, boto = figures["ours"]["peak_rss_mib"], figures["boto3"]["peak_rss_mib"]
    figures["ratio_ours_over_boto3_peak"] = round(ours / boto, 2)
    figures["ratio_ours_over_boto3_upload"] = round(
        figures["ours"]["upload_rss_mib"] / max(figures["boto3"]["upload_rss_mib"], 1e-9), 2
    )
    print_table(
        ["client", "peak MiB", "sampled", "maxrss", "baseline", "upload", "MB/s"],
        rows,
        title=f"peak RSS uploading {args.files} x {args.size_mib} MiB at once to moto (separate process); "
        f"{args.trials} trial(s), medians",
    )
    print(
        f"ours peak {ours:.0f} MiB (target <= {TARGET_MIB} MiB: {'met' if ours <= TARGET_MIB else 'MISSED'}); "
        f"ours / boto3 peak: {figures['ratio_ours_over_boto3_peak']:.2f}, "
        f"upload part: {figures['ratio_ours_over_boto3_upload']:.2f}"
    )
    emit_json(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
