"""Download throughput from moto's S3 server on loopback: ours against boto3 and rclone.

Run by hand (pytest does not collect tests/bench)::

    .venv/bin/python tests/bench/download_throughput.py [--files 8] [--size-mib 256] [--trials 3]
    .venv/bin/python tests/bench/download_throughput.py --size-mib 16 --trials 1   # smoke run

A rig session (8 files of 256 MiB of random bytes = 2 GiB, cached under
/tmp/ursa-bench-data) is ingested once into moto's server, which runs in its
own process. Then every client downloads the same objects to a fresh directory
under /tmp/ursa-bench-download, in its own process (so each peak RSS is its
own); trials interleave the clients and the order rotates each trial.

* ``ours``: ``DataInterface.download(result, dest)`` on an ``s3`` profile
  (``--concurrency`` files at once, 1 MiB reads, ``.part`` + rename per file);
  the call is timed after the catalog query.
* ``boto3``: ``client.download_file`` of every data object under the session's
  prefix, default ``TransferConfig`` (8 MiB ranged GETs, 10 threads per file),
  one file after another (``--boto3-mode sequential``) or one calling thread
  per file (``--boto3-mode threads``); timed after the client is built.
* ``rclone``: ``rclone copy moto:BUCKET/recordings/<rec_id>/ DEST
  --transfers N --exclude /*`` (N = ``--concurrency``; the exclude leaves out
  manifest.json and participant.txt; its other flags default), remote from
  RCLONE_CONFIG_MOTO_* environment variables; the whole process is timed.

Every client's files are checked (count and sizes each run, sha256 in the
first trial). Figures are MB/s (10^6 bytes per second) of data bytes; the
ratio is ours over the best peer (target >= 1.0); our peak RSS target is
<= 300 MiB. The last line is one JSON document.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    MOTO_KEY_ID,
    MOTO_SECRET,
    GiB,
    MiB,
    MotoProcess,
    RssSampler,
    boto3_client,
    check_disk,
    data_bytes,
    emit_json,
    ensure_session,
    known_hashes,
    mb_per_s,
    median,
    print_table,
    quiet_logs,
    s3_data,
    set_credentials_env,
)

PEERS = ("ours", "boto3", "rclone")
OUT_ROOT = Path(os.environ.get("URSA_BENCH_OUT", "/tmp/ursa-bench-download"))
RSS_TARGET_MIB = 300


# -- the clients, each in its own process ----------------------------------------------


def _child_ours(cfg: str, rec_id: str, dest: str, concurrency: str) -> dict[str, Any]:
    from ursa_daemon.api import DataInterface
    from ursa_daemon.config import load_config

    quiet_logs()
    data = DataInterface(config=load_config(cfg))
    [qr] = data.query(rec_id=rec_id)
    t = time.perf_counter()
    paths = data.download(qr, dest, max_concurrent_files=int(concurrency))
    return {"elapsed_s": time.perf_counter() - t, "files": len(paths)}


def _child_boto3(endpoint: str, bucket: str, prefix: str, dest: str, mode: str) -> dict[str, Any]:
    client = boto3_client(endpoint)
    listed = client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    keys = [o["Key"] for o in listed if "/" in o["Key"][len(prefix) :]]  # data files, not manifest.json
    t = time.perf_counter()

    def fetch(key: str) -> None:
        target = Path(dest) / key[len(prefix) :]
        target.parent.mkdir(parents=True, exist_ok=True)
        client.download_file(bucket, key, str(target))

    if mode == "threads":
        with ThreadPoolExecutor(max_workers=len(keys) or 1) as pool:
            list(pool.map(fetch, keys))
    else:
        for key in keys:
            fetch(key)
    return {"elapsed_s": time.perf_counter() - t, "files": len(keys)}


_CHILDREN: dict[str, Callable[..., dict[str, Any]]] = {"_ours": _child_ours, "_boto3": _child_boto3}


def _rclone_env(endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
    env.update(
        RCLONE_CONFIG=os.devnull,
        RCLONE_CONFIG_MOTO_TYPE="s3",
        RCLONE_CONFIG_MOTO_PROVIDER="Other",
        RCLONE_CONFIG_MOTO_ENDPOINT=endpoint,
        RCLONE_CONFIG_MOTO_REGION="us-east-1",
        RCLONE_CONFIG_MOTO_ACCESS_KEY_ID=MOTO_KEY_ID,
        RCLONE_CONFIG_MOTO_SECRET_ACCESS_KEY=MOTO_SECRET,
        RCLONE_CONFIG_MOTO_FORCE_PATH_STYLE="true",
    )
    return env


def _measure(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int, dict[str, Any]]:
    """Run ``cmd``; (wall seconds, peak RSS bytes, its JSON line or {})."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    with RssSampler(proc.pid) as rss:
        out, err = proc.communicate()
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} exited {proc.returncode}: {err[-2000:]}")
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return wall, rss.peak, json.loads(lines[-1]) if lines else {}


class Bench:
    """The shared setup: moto with the session ingested, and how to run each client."""

    def __init__(self, moto: MotoProcess, rec: Path, args: argparse.Namespace) -> None:
        self.moto = moto
        self.rec = rec
        self.args = args
        self.root = Path(tempfile.mkdtemp(prefix="ursa-bench-dl-"))
        self.raw, assets = moto.fresh_buckets("dl")
        data = s3_data(moto.endpoint, self.raw, assets, self.root)
        t = time.perf_counter()
        from ursa_daemon.transfer.ingest import ingest

        result = ingest(data, rec)
        print(f"ingested {rec.name} into moto in {time.perf_counter() - t:.1f} s", file=sys.stderr, flush=True)
        assert result.recording is not None
        self.prefix = f"recordings/{rec.name}/"
        self.cfg = self.root / "config.yaml"
        import yaml

        self.cfg.write_text(yaml.safe_dump(data.config.model_dump(mode="json", exclude={"source"})))

    def run(self, peer: str, dest: Path) -> tuple[float, int]:
        """(seconds, peak RSS bytes) of one download by ``peer`` into ``dest``."""
        me = [sys.executable, __file__]
        conc = str(self.args.concurrency)
        if peer == "ours":
            _, rss, doc = _measure([*me, "_ours", str(self.cfg), self.rec.name, str(dest), conc])
            return float(doc["elapsed_s"]), rss
        if peer == "boto3":
            cmd = [*me, "_boto3", self.moto.endpoint, self.raw, self.prefix, str(dest), self.args.boto3_mode]
            _, rss, doc = _measure(cmd)
            return float(doc["elapsed_s"]), rss
        src = f"moto:{self.raw}/{self.prefix}"
        wall, rss, _ = _measure(
            ["rclone", "copy", src, str(dest), "--transfers", conc, "--exclude", "/*"],  # not manifest.json
            env=_rclone_env(self.moto.endpoint),
        )
        return wall, rss

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 * MiB):
            h.update(block)
    return h.hexdigest()


def check_output(dest: Path, sizes: list[int], hashes: list[str] | None) -> None:
    """``dest`` holds exactly the session's data files: their sizes (and sha256s, when given)."""
    files = [p for p in dest.rglob("*") if p.is_file()]
    if sorted(p.stat().st_size for p in files) != sizes:
        raise AssertionError(f"{dest}: {len(files)} files whose sizes differ from the session's")
    if hashes is not None and sorted(_sha256(p) for p in files) != hashes:
        raise AssertionError(f"{dest}: the files' sha256 differ from the session's")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--size-mib", type=int, default=256, help="size of each file (MiB)")
    parser.add_argument("--trials", type=int, default=3, help="runs of each client (median reported)")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset of " + ",".join(PEERS))
    parser.add_argument("--concurrency", type=int, default=8, help="files at once: ours and rclone --transfers")
    parser.add_argument("--boto3-mode", choices=("sequential", "threads"), default="sequential")
    args = parser.parse_args()
    peers = [p for p in args.peers.split(",") if p]
    if "rclone" in peers and shutil.which("rclone") is None:
        raise SystemExit("rclone is not installed: apt-get update && apt-get install -y rclone")

    quiet_logs()
    set_credentials_env()
    rec = ensure_session(args.files, args.size_mib * MiB)
    nbytes = data_bytes(rec)
    check_disk(OUT_ROOT, nbytes + GiB)
    hashes = sorted(known_hashes(rec).values())
    sizes = sorted(p.stat().st_size for p in rec.rglob("*") if p.is_file() and p.parent != rec)
    runs: dict[str, list[tuple[float, int]]] = {p: [] for p in peers}
    with MotoProcess() as moto:
        bench = Bench(moto, rec, args)
        try:
            for trial in range(args.trials):
                order = peers[trial % len(peers) :] + peers[: trial % len(peers)]
                for peer in order:
                    dest = OUT_ROOT / peer
                    shutil.rmtree(dest, ignore_errors=True)
                    seconds, rss = bench.run(peer, dest)
                    check_output(dest, sizes, hashes if trial == 0 else None)
                    shutil.rmtree(dest, ignore_errors=True)
                    runs[peer].append((seconds, rss))
                    print(f"trial {trial + 1} {peer}: {mb_per_s(nbytes, seconds):.0f} MB/s, "
                          f"peak RSS {rss / MiB:.0f} MiB", file=sys.stderr, flush=True)
        finally:
            bench.close()

    speeds = {p: median([mb_per_s(nbytes, s) for s, _ in runs[p]]) for p in peers}
    best = {p: max(mb_per_s(nbytes, s) for s, _ in runs[p]) for p in peers}
    rss = {p: max(r for _, r in runs[p]) / MiB for p in peers}
    print_table(
        ["client", "MB/s (median)", "MB/s (best)", "peak RSS MiB", "runs"],
        [[p, f"{speeds[p]:.0f}", f"{best[p]:.0f}", f"{rss[p]:.0f}", len(runs[p])] for p in peers],
        title=f"download of {args.files} x {args.size_mib} MiB ({nbytes / GiB:.2f} GiB) from moto on loopback",
    )
    others = [speeds[p] for p in peers if p != "ours"]
    figures: dict[str, Any] = {
        "bench": "download_throughput",
        "files": args.files,
        "size_mib": args.size_mib,
        "bytes": nbytes,
        "trials": args.trials,
        "concurrency": args.concurrency,
        "boto3_mode": args.boto3_mode,
        **{f"{p}_mb_s": round(speeds[p], 1) for p in peers},
        **{f"{p}_peak_rss_mib": round(rss[p], 1) for p in peers},
    }
    if "ours" in peers and others:
        figures["ratio_ours_best"] = round(speeds["ours"] / max(others), 3)
        figures["ratio_target"] = 1.0
    if "ours" in peers:
        figures["ours_rss_target_mib"] = RSS_TARGET_MIB
    emit_json(figures)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] in _CHILDREN:
        print(json.dumps(_CHILDREN[sys.argv[1]](*sys.argv[2:])), flush=True)
        sys.exit(0)
    sys.exit(main())
