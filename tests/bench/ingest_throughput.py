"""Ingest throughput to moto's S3 server on loopback: ours against boto3 and rclone.

Run by hand (pytest does not collect tests/bench)::

    .venv/bin/python tests/bench/ingest_throughput.py [--files 8] [--size-mib 256] [--trials 3]
    .venv/bin/python tests/bench/ingest_throughput.py --size-mib 32 --trials 1   # smoke run

The session (8 files of 256 MiB of random bytes = 2 GiB) is created once under
/tmp/ursa-bench-data and cached; every file is read once before the trials so
all clients start from the page cache. moto's server runs in its own process
(request logging off) and is reset between runs, each run gets fresh buckets.
Trials interleave the clients (the order rotates each trial).

* ``ours``: ``ingest(data, rec, journal=StateDB(...))`` on an ``s3`` profile,
  as the daemon runs it: default UploadConfig (4 files at once x 2 parts in
  flight, 16 MiB parts), every confirmed part recorded in a SQLite state
  (part-level resume), hashing, the manifest and the catalog commits
  included: the whole call is timed.
* ``ours-nojournal``: the same upload without the resume bookkeeping (no
  state: no part records, no ListParts). Not a peer: ``ours`` / this is the
  cost of the bookkeeping (target >= 0.95).
* ``boto3``: ``client.upload_file`` of every file of the session, default
  ``TransferConfig`` (8 MiB parts, 10 threads), one calling thread per file
  (``--boto3-mode threads``, default: 8 transfers each with its own 10-thread
  pool) or one shared TransferManager for all files (``--boto3-mode manager``:
  10 threads in all, as ``aws s3 cp --recursive`` drives s3transfer).
* ``rclone``: ``rclone copy SESSION moto:BUCKET/...`` with its defaults
  (4 transfers, 5 MiB parts, 4 parts in flight per file; it MD5s each file
  first), remote configured by RCLONE_CONFIG_MOTO_* environment variables.

References (the server's ceiling, zero client work, ``http.client``, unsigned):

* ``raw PUT``: the same bytes as single 16 MiB PUTs over 8 connections.
* ``raw multipart``: the same files as multipart uploads in our shape (4 files
  at once, 2 parts of 16 MiB in flight each, SHA256 composite checksum announced
  as ours does), parts read with ``os.pread``.

Each row also gives moto's CPU (cores busy on average) and the client's CPU.
The figures are MB/s (10^6 bytes per second) of data-file bytes.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    MOTO_KEY_ID,
    MOTO_SECRET,
    MiB,
    MotoProcess,
    add_upload_args,
    boto3_client,
    data_bytes,
    emit_json,
    ensure_session,
    known_hashes,
    mb_per_s,
    median,
    print_table,
    quiet_logs,
    s3_data,
    session_files,
    upload_config_used,
    upload_overrides,
    warm,
)

PEERS = ("ours", "ours-nojournal", "boto3", "rclone")
#: variants of ours, compared with ``ours`` rather than counted as peers
VARIANTS = ("ours-nojournal",)
REFS = ("raw PUT", "raw multipart")
PART = 16 * MiB


def cpu_now() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


# -- the clients ------------------------------------------------------------------------


def run_ours(
    moto: MotoProcess, rec: Path, bucket: str, assets: str, scratch: Path, upload: dict[str, int], *, journal: bool
) -> Callable[[], None]:
    from ursa_daemon.daemon.state import StateDB
    from ursa_daemon.transfer.ingest import ingest

    data = s3_data(moto.endpoint, bucket, assets, scratch, upload)
    state = StateDB(scratch / "state") if journal else None

    def go() -> None:
        res = ingest(data, rec, journal=state)
        if res.paused or res.recording is None:
            raise RuntimeError(f"ingest did not finish: {res}")

    return go


def run_boto3(moto: MotoProcess, rec: Path, bucket: str, mode: str) -> Callable[[], None]:
    from boto3.s3.transfer import TransferConfig, create_transfer_manager  # type: ignore[import-untyped]

    client = boto3_client(moto.endpoint)
    files = session_files(rec)
    prefix = f"recordings/{rec.name}/"

    def key(p: Path) -> str:
        return prefix + p.relative_to(rec).as_posix()

    def go() -> None:
        if mode == "manager":
            with create_transfer_manager(client, TransferConfig()) as tm:
                futures = [tm.upload(str(p), bucket, key(p)) for p in files]
                for f in futures:
                    f.result()
        else:
            with ThreadPoolExecutor(max_workers=len(files)) as pool:
                list(pool.map(lambda p: client.upload_file(str(p), bucket, key(p)), files))

    return go


def rclone_env(endpoint: str) -> dict[str, str]:
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


def run_rclone(moto: MotoProcess, rec: Path, bucket: str) -> Callable[[], None]:
    env = rclone_env(moto.endpoint)
    cmd = ["rclone", "copy", str(rec), f"moto:{bucket}/recordings/{rec.name}"]

    def go() -> None:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"rclone exited {done.returncode}: {done.stderr[-2000:]}")

    return go


def run_raw_put(moto: MotoProcess, rec: Path, bucket: str) -> Callable[[], None]:
    files = [p for p in session_files(rec) if p.parent != rec]
    jobs = [(p, off) for p in files for off in range(0, p.stat().st_size, PART)]

    def worker(mine: list[tuple[Path, int]]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", moto.port)
        buf = bytearray(PART)
        for path, off in mine:
            with open(path, "rb", buffering=0) as f:
                n = os.preadv(f.fileno(), [buf], off)
            conn.request("PUT", f"/{bucket}/raw/{path.parent.name}/{off}", body=memoryview(buf)[:n])
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"raw PUT: HTTP {resp.status}")
        conn.close()

    def go() -> None:
        lanes = 8
        with ThreadPoolExecutor(max_workers=lanes) as pool:
            list(pool.map(worker, [jobs[i::lanes] for i in range(lanes)]))

    return go


def _raw_multipart_file(port: int, bucket: str, key: str, path: Path, per_file: int) -> None:
    def call(conn: http.client.HTTPConnection, method: str, url: str, body: Any = None) -> tuple[bytes, Any]:
        conn.request(method, url, body=body)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"raw multipart {method} {url}: HTTP {resp.status} {data[:300]!r}")
        return data, resp

    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.putrequest("POST", f"/{bucket}/{key}?uploads")
    # moto's default for an upload without one is a CRC64NVME over the whole object at
    # completion (slow, in Python); ours announces SHA256 (composite, per part): do the same
    conn.putheader("x-amz-checksum-algorithm", "SHA256")
    conn.putheader("Content-Length", "0")
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read()
    if resp.status != 200:
        raise RuntimeError(f"raw multipart create: HTTP {resp.status} {body[:300]!r}")
    m = re.search(rb"<UploadId>([^<]+)</UploadId>", body)
    assert m is not None
    upload_id = m.group(1).decode()
    size = path.stat().st_size
    parts = list(enumerate(range(0, size, PART), start=1))
    etags: dict[int, str] = {}
    lock = threading.Lock()

    def lane() -> None:
        c = http.client.HTTPConnection("127.0.0.1", port)
        buf = bytearray(PART)
        with open(path, "rb", buffering=0) as f:
            while True:
                with lock:
                    if not parts:
                        break
                    number, off = parts.pop(0)
                n = os.preadv(f.fileno(), [buf], off)
                _, resp = call(
                    c, "PUT", f"/{bucket}/{key}?partNumber={number}&uploadId={upload_id}", memoryview(buf)[:n]
                )
                with lock:
                    etags[number] = resp.getheader("ETag")
        c.close()

    lanes = [threading.Thread(target=lane) for _ in range(per_file)]
    for t in lanes:
        t.start()
    for t in lanes:
        t.join()
    xml = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{etags[n]}</ETag></Part>" for n in sorted(etags))
    call(
        conn,
        "POST",
        f"/{bucket}/{key}?uploadId={upload_id}",
        f"<CompleteMultipartUpload>{xml}</CompleteMultipartUpload>".encode(),
    )
    conn.close()


def run_raw_multipart(moto: MotoProcess, rec: Path, bucket: str) -> Callable[[], None]:
    files = [p for p in session_files(rec) if p.parent != rec]

    def go() -> None:
        with ThreadPoolExecutor(max_workers=4) as pool:
            futures = [
                pool.submit(_raw_multipart_file, moto.port, bucket, f"raw/{p.relative_to(rec).as_posix()}", p, 2)
                for p in files
            ]
            for f in futures:
                f.result()

    return go


# -- one timed run ------------------------------------------------------------------------


def one_run(name: str, moto: MotoProcess, rec: Path, nbytes: int, args: argparse.Namespace) -> dict[str, float]:
    moto.reset()
    raw, assets = moto.fresh_buckets(re.sub(r"[^a-z0-9]", "", name))
    scratch = Path(tempfile.mkdtemp(prefix="ursa-bench-"))
    try:
        if name in ("ours", "ours-nojournal"):
            go = run_ours(moto, rec, raw, assets, scratch, upload_overrides(args), journal=name == "ours")
        elif name == "boto3":
            go = run_boto3(moto, rec, raw, args.boto3_mode)
        elif name == "rclone":
            go = run_rclone(moto, rec, raw)
        elif name == "raw PUT":
            go = run_raw_put(moto, rec, raw)
        else:
            go = run_raw_multipart(moto, rec, raw)
        moto_cpu0, cpu0 = moto.cpu_seconds(), cpu_now()
        t0 = time.perf_counter()
        go()
        wall = time.perf_counter() - t0
        moto_cpu, cpu = moto.cpu_seconds() - moto_cpu0, cpu_now() - cpu0
        stored = moto.object_sizes(raw)
        got = sum(v for k, v in stored.items() if not k.endswith(("manifest.json", "participant.txt")))
        if got != nbytes:
            raise RuntimeError(f"{name}: {got} data bytes in the bucket, expected {nbytes}")
        return {
            "seconds": wall,
            "mb_s": mb_per_s(nbytes, wall),
            "moto_cores": moto_cpu / wall,
            "client_cores": cpu / wall,
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--size-mib", type=int, default=256, help="size of each file (MiB)")
    parser.add_argument("--trials", type=int, default=3, help="runs of each client (median reported)")
    parser.add_argument("--ref-trials", type=int, default=1, help="runs of each raw reference (0: skip)")
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset of " + ",".join(PEERS))
    parser.add_argument("--boto3-mode", choices=("threads", "manager"), default="threads")
    add_upload_args(parser)
    args = parser.parse_args()
    quiet_logs()
    peers = [p for p in args.peers.split(",") if p]
    if "rclone" in peers and shutil.which("rclone") is None:
        raise SystemExit("rclone is not installed: apt-get update && apt-get install -y rclone")

    rec = ensure_session(args.files, args.size_mib * MiB)
    nbytes = data_bytes(rec)
    warm_s = warm(session_files(rec))
    t = time.perf_counter()
    known_hashes(rec)
    hash_s = time.perf_counter() - t

    runs: dict[str, list[dict[str, float]]] = {name: [] for name in [*peers, *REFS]}
    with MotoProcess() as moto:
        for trial in range(args.trials):
            order = peers[trial % len(peers) :] + peers[: trial % len(peers)]
            for name in order:
                r = one_run(name, moto, rec, nbytes, args)
                runs[name].append(r)
                print(
                    f"  trial {trial + 1}: {name:<14} {r['mb_s']:7.1f} MB/s  ({r['seconds']:.1f} s)",
                    file=sys.stderr,
                    flush=True,
                )
            if trial < args.ref_trials:
                for name in REFS:
                    r = one_run(name, moto, rec, nbytes, args)
                    runs[name].append(r)
                    print(
                        f"  trial {trial + 1}: {name:<14} {r['mb_s']:7.1f} MB/s  ({r['seconds']:.1f} s)",
                        file=sys.stderr,
                        flush=True,
                    )

    def summary(rs: list[dict[str, float]]) -> dict[str, Any]:
        return {
            "mb_s_median": round(median([r["mb_s"] for r in rs]), 1),
            "mb_s_runs": [round(r["mb_s"], 1) for r in rs],
            "seconds_median": round(median([r["seconds"] for r in rs]), 2),
            "moto_cores": round(median([r["moto_cores"] for r in rs]), 2),
            "client_cores": round(median([r["client_cores"] for r in rs]), 2),
        }

    figures: dict[str, Any] = {
        "bench": "ingest_throughput",
        "files": args.files,
        "file_mib": args.size_mib,
        "bytes": nbytes,
        "trials": args.trials,
        "boto3_mode": args.boto3_mode,
        "hash_only_s": round(hash_s, 2),
        "warm_read_s": round(warm_s, 2),
        "ours_upload_config": upload_config_used(upload_overrides(args)),
        "loadavg_1m_end": None,
    }
    for name, rs in runs.items():
        if rs:
            figures[name.replace(" ", "_")] = summary(rs)
    other = [p for p in peers if p != "ours" and p not in VARIANTS]
    if "ours" in peers and other:
        best = max(other, key=lambda p: figures[p]["mb_s_median"])
        figures["best_peer"] = best
        figures["ratio_ours_over_best_peer"] = round(figures["ours"]["mb_s_median"] / figures[best]["mb_s_median"], 3)
    if "ours" in peers and "ours-nojournal" in peers:
        figures["ratio_resume_bookkeeping_on_over_off"] = round(
            figures["ours"]["mb_s_median"] / figures["ours-nojournal"]["mb_s_median"], 3
        )
    ceiling = max((figures[r.replace(" ", "_")]["mb_s_median"] for r in REFS if runs[r]), default=None)
    if ceiling:
        figures["server_ceiling_mb_s"] = ceiling

    rows = []
    for name, rs in runs.items():
        if not rs:
            continue
        s = figures[name.replace(" ", "_")]
        rows.append(
            [
                name + (" (reference)" if name in REFS else ""),
                f"{s['mb_s_median']:.1f}",
                " ".join(f"{x:.0f}" for x in s["mb_s_runs"]),
                f"{s['seconds_median']:.1f}",
                f"{s['moto_cores']:.2f}",
                f"{s['client_cores']:.2f}",
                f"{s['mb_s_median'] / ceiling:.0%}" if ceiling else "-",
            ]
        )
    print_table(
        ["client", "MB/s med", "runs MB/s", "s med", "moto cores", "client cores", "of ceiling"],
        rows,
        title=f"ingest throughput: {args.files} x {args.size_mib} MiB = {nbytes / 2**30:.2f} GiB to moto on loopback "
        f"(boto3 mode {args.boto3_mode}; hashing alone {hash_s:.1f} s)",
    )
    if "ratio_ours_over_best_peer" in figures:
        r = figures["ratio_ours_over_best_peer"]
        print(f"ours / best peer ({figures['best_peer']}): {r:.2f}  (target >= 1.0: {'met' if r >= 1.0 else 'MISSED'})")
    if "ratio_resume_bookkeeping_on_over_off" in figures:
        r = figures["ratio_resume_bookkeeping_on_over_off"]
        print(f"resume bookkeeping on / off: {r:.3f}  (target >= 0.95: {'met' if r >= 0.95 else 'MISSED'})")
    figures["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    emit_json(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
