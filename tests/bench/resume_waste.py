"""Resume waste: a 1 GiB file, SIGKILL of the daemon at a random point, restart; bytes sent / file size.

Run by hand (pytest does not collect tests/bench)::

    .venv/bin/python tests/bench/resume_waste.py [--size-mib 1024] [--trials 10]
    .venv/bin/python tests/bench/resume_waste.py --size-mib 128 --trials 2    # smoke run

Each trial: moto's S3 server (own process, reset) behind a byte-counting proxy
(own process), fresh buckets and a fresh state directory; ``ursa-daemon drain``
(the real process, default UploadConfig: 16 MiB parts, 2 in flight) uploads a
session holding one file of ``--size-mib``. When the bytes forwarded to the
server reach a uniformly random fraction (``--kill-at``) of the file, the
process gets SIGKILL; a second ``drain`` then finishes the session. The figure
is every byte the server received over both runs (requests, parts, manifest
and catalog commits included) divided by the file size.

The peer is file-level resume (restart from byte zero, as rclone, the AWS CLI,
s5cmd and obstore do, and this daemon did before): its bytes are those sent
before the kill plus the whole file again, derived from the same trial.

Target: median <= 1 + part size / file size (1.0156 at 16 MiB parts of 1 GiB).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    MiB,
    MotoProcess,
    ProxyProcess,
    add_upload_args,
    boto3_client,
    emit_json,
    ensure_session,
    median,
    print_table,
    s3_config_dict,
    session_files,
    set_credentials_env,
    upload_config_used,
    upload_overrides,
    warm,
)


def drain(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ursa_daemon.cli", "--config", str(config), "drain", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def one_trial(
    moto: MotoProcess, proxy: ProxyProcess, rec: Path, size: int, kill_at: float, upload: dict[str, int]
) -> dict[str, Any]:
    import yaml

    moto.reset()
    raw, assets = moto.fresh_buckets("resume")
    scratch = Path(tempfile.mkdtemp(prefix="ursa-bench-resume-"))
    try:
        doc = s3_config_dict(proxy.endpoint, raw, assets, scratch)
        doc["recordings_root"] = str(rec.parent)
        if upload:
            doc["upload"] = dict(upload)
        config = scratch / "config.yaml"
        config.write_text(yaml.safe_dump(doc))
        proxy.wait_quiet(0.2)
        start = proxy.stats().c2s_bytes
        target = start + int(kill_at * size)
        first = drain(config)
        while proxy.stats().c2s_bytes < target and first.poll() is None:
            time.sleep(0.002)
        killed = first.poll() is None
        first.send_signal(signal.SIGKILL)
        first.communicate(timeout=60)
        st = proxy.wait_quiet(0.5)
        before_kill = st.c2s_bytes - start
        t = time.monotonic()
        second = drain(config)
        out, err = second.communicate(timeout=1800)
        resume_s = time.monotonic() - t
        if second.returncode != 0:
            raise RuntimeError(f"second drain exited {second.returncode}: {err[-2000:]}")
        registered = json.loads(out)["registered"]
        st = proxy.wait_quiet(0.5)
        total = st.c2s_bytes - start
        events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        resumed = [e for e in events if e.get("event") == "upload.multipart_resumed"]
        stored = moto.object_sizes(raw)
        data_key = next(k for k in stored if k.endswith(".bin"))
        if stored[data_key] != size or registered != [rec.name]:
            raise RuntimeError(f"the session did not land: {stored}, registered {registered}")
        open_uploads = len(boto3_client(moto.endpoint).list_multipart_uploads(Bucket=raw).get("Uploads", []))
        return {
            "kill_at": kill_at,
            "killed_mid_upload": killed,
            "bytes_before_kill": before_kill,
            "bytes_total": total,
            "ratio": total / size,
            "peer_ratio": (before_kill + size) / size,
            "resumed_same_upload": bool(resumed),
            "parts_confirmed_at_restart": resumed[0]["parts_confirmed"] if resumed else 0,
            "resume_s": resume_s,
            "open_multipart_uploads": open_uploads,
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024, help="size of the one file (MiB)")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--kill-at", type=float, nargs=2, default=(0.05, 0.95), metavar=("MIN", "MAX"))
    parser.add_argument("--seed", type=int, default=None)
    add_upload_args(parser)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    set_credentials_env()
    upload = upload_overrides(args)
    part = upload.get("part_size_bytes", upload_config_used(upload)["part_size_bytes"])

    size = args.size_mib * MiB
    rec = ensure_session(1, size)
    warm(session_files(rec))
    trials: list[dict[str, Any]] = []
    with MotoProcess() as moto, ProxyProcess(moto.port) as proxy:
        for i in range(args.trials):
            r = one_trial(moto, proxy, rec, size, rng.uniform(*args.kill_at), upload)
            trials.append(r)
            print(
                f"  trial {i + 1:2d}: killed at {r['bytes_before_kill'] / MiB:7.1f} MiB sent, "
                f"{r['parts_confirmed_at_restart']:3d} parts confirmed, same upload resumed: "
                f"{r['resumed_same_upload']}, total {r['ratio']:.4f} x file (restart from zero: "
                f"{r['peer_ratio']:.3f})",
                file=sys.stderr,
                flush=True,
            )

    target = 1 + part / size
    ratios = [r["ratio"] for r in trials]
    peer = [r["peer_ratio"] for r in trials]
    waste_parts = [(r["bytes_total"] - size) / part for r in trials]
    figures = {
        "bench": "resume_waste",
        "file_mib": args.size_mib,
        "part_mib": part / MiB,
        "trials": len(trials),
        "ratio_median": round(median(ratios), 4),
        "ratio_max": round(max(ratios), 4),
        "target_ratio": round(target, 4),
        "peer_restart_from_zero_ratio_median": round(median(peer), 4),
        "waste_parts_median": round(median(waste_parts), 3),
        "resumed_same_upload": sum(r["resumed_same_upload"] for r in trials),
        "open_multipart_uploads_max": max(r["open_multipart_uploads"] for r in trials),
        "ours_upload_config": upload_config_used(upload),
        "loadavg_1m_end": round(os.getloadavg()[0], 2),
        "runs": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()} for r in trials],
    }

    def row(name: str, xs: list[float], fmt: str = "{:.4f}") -> list[str]:
        return [name, fmt.format(median(xs)), fmt.format(min(xs)), fmt.format(max(xs))]

    print_table(
        ["figure", "median", "min", "max"],
        [
            row("bytes sent / file size: part-level resume (ours)", ratios),
            row("bytes sent / file size: restart from zero (peer, derived)", peer),
            row("waste in parts (bytes beyond the file / part size)", waste_parts, "{:.2f}"),
            row("killed after (fraction of the file)", [r["kill_at"] for r in trials], "{:.2f}"),
        ],
        title=f"resume waste: 1 x {args.size_mib} MiB, SIGKILL of `drain` at a random point, restart; "
        f"{len(trials)} trials, {part / MiB:.0f} MiB parts",
    )
    med = figures["ratio_median"]
    print(f"median {med:.4f} x file size (target <= {target:.4f}: {'met' if med <= target else 'MISSED'})")
    emit_json(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
