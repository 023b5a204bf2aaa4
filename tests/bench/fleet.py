"""Many rigs, one catalog (issue 17): N ``ursa-daemon drain`` processes, each a rig with its
own state_dir and recordings root, drain their sessions at the same time into one catalog
on a real SeaweedFS server (atomic ``If-None-Match: *``), while ``ursa-daemon maintain``
runs back to back from another "machine".

Figures per N (fresh buckets each): rows lost and duplicated (must be 0: every session's
recording row, its modality rows, by key), registration latency p50/p99 from a session's
``upload.session_done`` to its ``session.registered`` (the commit that makes the row
visible returned; both from the drain's own log), the conditional PUTs the server refused
with 412 (each a commit race some writer lost and Lance retried; the maintenance lease's
refusals are counted apart), maintenance runs done and skipped (lease held) and whether two
ever overlapped, catalog storage afterwards (objects, bytes under the catalog prefix), and
point lookup (``query(recording_hash=)``) and participant query latency in a fresh reader,
before and after one final maintenance. The peer is N = 1 in the same run: the latency
ratios are against it.

First (issue 23), the status phase: ``--status-rigs`` (16) ``run`` processes live for
``--run-seconds`` while sessions arrive, each keeping ``ursa/rigs/<rig_id>.json``; it reports
the share of all S3 requests that the status documents were (goal <= 1 %) and the wall time of
``ursa-daemon fleet --json`` on a laptop with the ``assets_ro`` keys alone (goal <= 1 s).

    .venv/bin/python tests/bench/fleet.py [--rigs 1,4,16] [--sessions 8] [--file-kib 64]
        [--status-rigs 16] [--run-seconds 180] [--rigs 0 for the status phase alone]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, emit_json, free_port, load_seaweed, percentile, print_table, s3_config_dict  # noqa: E402

PARTICIPANTS = [f"subject {i:02d}" for i in range(12)]


def _load_harness() -> Any:
    spec = importlib.util.spec_from_file_location("_ursa_bench_harness", REPO / "tests" / "harness.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(REPO / "tests"))  # harness imports invariants, conftest
    spec.loader.exec_module(module)
    return module


def start_weed() -> tuple[Any, int]:
    """SeaweedFS with its Prometheus endpoint on (for the 412 count)."""
    weed_mod = load_seaweed()
    metrics_port = free_port()
    real = subprocess.Popen

    def popen(args: Any, *a: Any, **kw: Any) -> Any:
        if isinstance(args, list) and args and str(args[0]).endswith("weed"):
            args = [*args, f"-metricsPort={metrics_port}", "-metricsIp=127.0.0.1"]
        return real(args, *a, **kw)

    subprocess.Popen = popen  # type: ignore[misc]
    try:
        server = weed_mod.SeaweedServer().start()
    finally:
        subprocess.Popen = real  # type: ignore[misc]
    return server, metrics_port


def refused_puts(metrics_port: int, bucket: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    pat = re.compile(r'^SeaweedFS_s3_request_total\{bucket="' + re.escape(bucket) + r'",code="412",type="PUT"\} (\S+)$')
    return sum(int(float(m.group(1))) for line in text.splitlines() if (m := pat.match(line)))


def requests(metrics_port: int, buckets: tuple[str, ...]) -> int:
    """Every S3 request SeaweedFS answered for ``buckets`` (all types, all codes)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    total = 0
    for line in text.splitlines():
        m = re.match(r'^SeaweedFS_s3_request_total\{bucket="([^"]*)",.*\} (\S+)$', line)
        if m and m.group(1) in buckets:
            total += int(float(m.group(2)))
    return total


def ts(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()


def events(text: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        with contextlib.suppress(ValueError):
            ev = json.loads(line)
            if isinstance(ev, dict) and "event" in ev:
                out.append(ev)
    return out


def cli(config: Path, *args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ursa_daemon.cli", "--config", str(config), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


class MaintenanceLoop(threading.Thread):
    """``ursa-daemon maintain`` back to back (``every`` s apart) until stopped; two at a time
    sometimes, to show the lease keeps them apart."""

    def __init__(self, config: Path, env: dict[str, str], every: float) -> None:
        super().__init__(daemon=True)
        self.config, self.env, self.every = config, env, every
        self.stop = threading.Event()
        self.done = 0
        self.skipped = 0
        self.failed: list[str] = []
        self.spans: list[tuple[float, float]] = []

    def run(self) -> None:
        while not self.stop.is_set():
            procs = [cli(self.config, "maintain", "--json", env=self.env) for _ in range(2)]
            for p in procs:
                out, err = p.communicate(timeout=900)
                if p.returncode == 3:
                    self.skipped += 1
                elif p.returncode == 0:
                    self.done += 1
                    evs = {e["event"]: e for e in events(err)}
                    self.spans.append((ts(evs["catalog.maintenance_started"]), ts(evs["catalog.maintained"])))
                else:
                    self.failed.append(err[-500:])
            self.stop.wait(self.every)

    def overlapped(self) -> int:
        s = sorted(self.spans)
        return sum(1 for (_, e), (b, _) in zip(s, s[1:], strict=False) if b < e)


def timed_queries(data: Any, hashes: list[str], rng: random.Random) -> tuple[list[float], list[float]]:
    point, part = [], []
    data.query(recording_hash=hashes[0])  # warm: open the tables
    for h in rng.sample(hashes, min(50, len(hashes))):
        t = time.perf_counter()
        got = data.query(recording_hash=h)
        point.append(time.perf_counter() - t)
        assert len(got) == 1
    for p in PARTICIPANTS[:10]:
        t = time.perf_counter()
        data.query(participants=[p])
        part.append(time.perf_counter() - t)
    return point, part


def scan(catalog: Any, name: str, columns: list[str]) -> list[tuple[Any, ...]]:
    from ursa_daemon.catalog.schema import SPECS

    table = catalog._table(SPECS[name])
    if table is None:
        return []
    arrow = catalog._run(table.query().select(columns).to_arrow(), f"scan {name}")
    cols = [arrow.column(c).to_pylist() for c in columns]
    return list(zip(*cols, strict=True))


def run_fleet(
    weed: Any, metrics_port: int, n: int, args: argparse.Namespace, harness: Any, work: Path
) -> dict[str, Any]:
    from ursa_daemon.api import DataInterface
    from ursa_daemon.config import config_from_dict

    raw, assets = weed.create_buckets()
    env = {**os.environ, **weed.credentials_env(), "URSA_LOG_LEVEL": "INFO"}
    os.environ.update(weed.credentials_env())
    rng = random.Random(n)
    configs, expected = [], {}
    for k in range(n):
        rig = work / f"n{n}" / f"rig{k:02d}"
        doc = s3_config_dict(weed.endpoint, raw, assets, rig)
        doc["watch"] = {"settle_seconds": 0}
        (rig / "recordings").mkdir(parents=True)
        cfg = rig / "config.yaml"
        cfg.write_text(yaml.safe_dump(doc))
        configs.append(cfg)
        for s in range(args.sessions):
            rec_id = f"rec_20260101_{k:02d}{s:04d}_{k:02x}{s:02x}"
            files = {
                "eeg/data.bin": rng.randbytes(args.file_kib * 1024),
                "camera/frames.bin": rng.randbytes(args.file_kib * 1024),
            }
            manifest = {"recording_id": rec_id, "start_time": 1_700_000_000_000_000_000 + s, "duration_s": 60.0}
            harness.write_session(
                rig / "recordings", rec_id, files, participant=rng.choice(PARTICIPANTS), manifest=manifest
            )
            expected[rec_id] = 2
    maint_cfg = work / f"n{n}" / "maintainer.yaml"
    maint_doc = s3_config_dict(weed.endpoint, raw, assets, work / f"n{n}" / "maintainer")
    maint_cfg.write_text(yaml.safe_dump(maint_doc))
    # the lab's catalog exists before the rigs come: created once, as the first rig would
    DataInterface(config=config_from_dict(maint_doc, base_dir=maint_cfg.parent)).enable_writes(roles=("assets_rw",))
    refused0 = refused_puts(metrics_port, assets)

    loop = MaintenanceLoop(maint_cfg, env, args.maintain_every)
    loop.start()
    t0 = time.monotonic()
    procs = [cli(cfg, "drain", "--json", env=env) for cfg in configs]
    outs = [p.communicate(timeout=3600) for p in procs]
    wall = time.monotonic() - t0
    loop.stop.set()
    loop.join(timeout=900)
    refused = refused_puts(metrics_port, assets) - refused0

    latencies, failed = [], []
    for p, (out, err) in zip(procs, outs, strict=True):
        if p.returncode != 0:
            failed.append(err[-1500:])
            continue
        doc = json.loads(out)
        failed.extend(f"{f['rec_id']}: {f['error']}" for f in doc["failed"] + doc["rejected"])
        done: dict[str, float] = {}
        for ev in events(err):
            if ev["event"] == "upload.session_done":
                done[ev["rec_id"]] = ts(ev)
            elif ev["event"] == "session.registered" and ev["rec_id"] in done:
                latencies.append(ts(ev) - done[ev["rec_id"]])
    lease_refusals = loop.skipped  # each skipped run's create-only PUT of the lease was one 412

    reader_cfg = config_from_dict(maint_doc, base_dir=maint_cfg.parent)
    data = DataInterface(config=reader_cfg)
    catalog = data.catalog
    catalog.refresh()
    recs = scan(catalog, "recordings", ["rec_id", "recording_hash"])
    mods = scan(catalog, "modalities", ["recording_hash", "modality", "worker_id"])
    by_rec: dict[str, int] = {}
    for rec_id, _ in recs:
        by_rec[rec_id] = by_rec.get(rec_id, 0) + 1
    mod_keys: dict[tuple[Any, ...], int] = {}
    for key in mods:
        mod_keys[key] = mod_keys.get(key, 0) + 1
    hashes = {rec_id: h for rec_id, h in recs}
    lost = sorted(set(expected) - set(by_rec))
    mods_per_rec: dict[str, int] = {}
    for h, _, _ in mods:
        mods_per_rec[h] = mods_per_rec.get(h, 0) + 1
    lost_mods = sum(max(0, expected[r] - mods_per_rec.get(hashes[r], 0)) for r in expected if r in hashes)
    dup_recs = sum(c - 1 for c in by_rec.values() if c > 1)
    dup_mods = sum(c - 1 for c in mod_keys.values() if c > 1)
    versions = catalog.table_versions()

    s3 = weed.client()
    prefix = json.loads(s3.get_object(Bucket=assets, Key="ursa/ACTIVE.json")["Body"].read())["catalog_prefix"]
    objects = nbytes = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=assets, Prefix=prefix):
        for o in page.get("Contents", []):
            objects += 1
            nbytes += o["Size"]

    qrng = random.Random(7)
    fresh = DataInterface(config=reader_cfg)
    point_before, part_before = timed_queries(fresh, list(hashes.values()), qrng)
    final = cli(maint_cfg, "maintain", "--json", env=env)
    final_out, final_err = final.communicate(timeout=900)
    assert final.returncode == 0, final_err[-2000:]
    fresh = DataInterface(config=reader_cfg)
    point_after, part_after = timed_queries(fresh, list(hashes.values()), qrng)

    return {
        "rigs": n,
        "sessions": len(expected),
        "drain_wall_s": round(wall, 1),
        "failed": failed,
        "rows_lost": len(lost) + lost_mods,
        "rows_duplicated": dup_recs + dup_mods,
        "recordings": len(recs),
        "modalities": len(mods),
        "registration_latency_p50_s": round(percentile(latencies, 50), 3),
        "registration_latency_p99_s": round(percentile(latencies, 99), 3),
        "latencies_measured": len(latencies),
        "puts_refused_412": refused,
        "commit_conflicts_retried": max(0, refused - lease_refusals),
        "maintenance_runs": loop.done,
        "maintenance_skipped_lease_held": loop.skipped,
        "maintenance_failed": loop.failed,
        "maintenance_overlaps": loop.overlapped(),
        "table_versions": {k: versions[k] for k in ("participants", "recordings", "modalities")},
        "catalog_objects": objects,
        "catalog_bytes": nbytes,
        "point_lookup_p50_ms": round(percentile(point_before, 50) * 1000, 1),
        "point_lookup_p99_ms": round(percentile(point_before, 99) * 1000, 1),
        "participant_query_p50_ms": round(percentile(part_before, 50) * 1000, 1),
        "point_lookup_after_maintain_p50_ms": round(percentile(point_after, 50) * 1000, 1),
        "participant_query_after_maintain_p50_ms": round(percentile(part_after, 50) * 1000, 1),
    }


def status_phase(weed: Any, metrics_port: int, args: argparse.Namespace, harness: Any, work: Path) -> dict[str, Any]:
    """16 rigs' ``run`` for ``--run-seconds`` with sessions arriving, each keeping its status document;
    then what the documents cost in requests, and how fast ``fleet`` reads them with ``assets_ro`` alone."""
    raw, assets = weed.create_buckets()
    creds = weed.credentials_env()
    env = {**os.environ, **creds, "URSA_LOG_LEVEL": "INFO"}
    os.environ.update(creds)
    rng = random.Random(16)
    rigs = []
    for k in range(args.status_rigs):
        rig = work / "status" / f"rig{k:02d}"
        doc = s3_config_dict(weed.endpoint, raw, assets, rig)
        doc["rig_id"] = f"rig-{k:02d}"
        doc["watch"] = {"settle_seconds": 0, "rescan_seconds": 2}
        doc["activity"] = {"quiet_seconds": 0}
        (rig / "recordings").mkdir(parents=True)
        cfg = rig / "config.yaml"
        cfg.write_text(yaml.safe_dump(doc))
        rigs.append((rig, cfg))

    def new_session(rig: Path, n: int) -> None:
        rec_id = f"rec_20261201_{n:06d}_{rng.getrandbits(16):04x}"
        files = {"eeg/data.bin": rng.randbytes(args.file_kib * 1024), "camera/frames.bin": rng.randbytes(4096)}
        harness.write_session(rig / "recordings", rec_id, files, participant=rng.choice(PARTICIPANTS))

    from ursa_daemon.api import DataInterface
    from ursa_daemon.config import config_from_dict

    DataInterface(config=config_from_dict(yaml.safe_load(rigs[0][1].read_text()), base_dir=rigs[0][0])).enable_writes(
        roles=("assets_rw",))
    before = requests(metrics_port, (raw, assets))
    procs = [cli(cfg, "run", env=env) for _, cfg in rigs]
    t0 = time.monotonic()
    n = 0
    while time.monotonic() - t0 < args.run_seconds:
        rig, _ = rigs[n % len(rigs)]
        new_session(rig, n)
        n += 1
        time.sleep(args.run_seconds / max(1, args.status_sessions))
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        p.communicate(timeout=120)
    total = requests(metrics_port, (raw, assets))
    # the laptop: the read-only identity alone
    laptop = {**os.environ, **{k: v for k, v in creds.items() if k.startswith("URSA_ASSETS_RO_")}}
    for k in creds:
        if not k.startswith("URSA_ASSETS_RO_"):
            laptop.pop(k, None)
    walls, docs = [], None
    for _ in range(args.fleet_runs):
        t = time.monotonic()
        p = cli(rigs[0][1], "fleet", "--json", env=laptop)
        out, err = p.communicate(timeout=120)
        walls.append(time.monotonic() - t)
        assert p.returncode == 0, err[-2000:]
        docs = json.loads(out)["rigs"]
    assert docs is not None and len(docs) == len(rigs), docs
    status_writes = sum(int(d.get("status_writes") or 0) for d in docs)
    registered = sum(int(d["counts"].get("registered", 0)) for d in docs)
    total_requests = total - before
    return {
        "rigs": len(rigs),
        "run_seconds": args.run_seconds,
        "sessions_registered": registered,
        "sessions_written": n,
        "requests_total": total_requests,
        "status_writes": status_writes,
        "status_share_pct": round(100 * status_writes / max(1, total_requests), 2),
        "fleet_wall_p50_s": round(percentile(walls, 50), 3),
        "fleet_wall_max_s": round(max(walls), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rigs", default="1,4,16", help="comma-separated N")
    ap.add_argument("--sessions", type=int, default=8, help="sessions per rig")
    ap.add_argument("--file-kib", type=int, default=64, help="two files of this size per session")
    ap.add_argument("--maintain-every", type=float, default=3.0, help="seconds between maintenance rounds")
    ap.add_argument("--status-rigs", type=int, default=16, help="rigs of the status phase (0: skip it)")
    ap.add_argument("--run-seconds", type=float, default=180.0, help="how long the status phase's runs live")
    ap.add_argument("--status-sessions", type=int, default=90, help="sessions arriving during it")
    ap.add_argument("--fleet-runs", type=int, default=5, help="`fleet --json` runs timed")
    args = ap.parse_args()
    harness = _load_harness()
    work = Path(tempfile.mkdtemp(prefix="ursa-bench-fleet-"))
    weed, metrics_port = start_weed()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below: no weed left behind
    results = []
    status: dict[str, Any] | None = None
    try:
        if args.status_rigs:
            status = status_phase(weed, metrics_port, args, harness, work)
            print(json.dumps(status), file=sys.stderr, flush=True)
        for n in (int(x) for x in args.rigs.split(",") if x.strip() and int(x) > 0):
            results.append(run_fleet(weed, metrics_port, n, args, harness, work))
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    finally:
        weed.stop()
        shutil.rmtree(work, ignore_errors=True)
    if status is not None:
        print_table(
            ["rigs", "run s", "sessions", "requests", "status writes", "status %", "fleet p50 s", "fleet max s"],
            [[status["rigs"], status["run_seconds"], status["sessions_registered"], status["requests_total"],
              status["status_writes"], status["status_share_pct"], status["fleet_wall_p50_s"],
              status["fleet_wall_max_s"]]],
            title="rig status documents: what they cost the runs, and `fleet --json` with assets_ro alone "
            "(goals: <= 1 %, <= 1 s)",
        )
    if not results:
        emit_json({"status": status, "load_average": round(os.getloadavg()[0], 2)})
        return
    base = results[0]
    print_table(
        ["N rigs", "sessions", "lost", "dup", "reg p50 s", "reg p99 s", "p50 / N=1", "412 retried",
         "maint ok/skip/overlap", "objects", "MiB", "lookup p50 ms", "part. p50 ms", "after maint ms"],
        [
            [
                r["rigs"], r["sessions"], r["rows_lost"], r["rows_duplicated"], r["registration_latency_p50_s"],
                r["registration_latency_p99_s"],
                f"{r['registration_latency_p50_s'] / max(base['registration_latency_p50_s'], 1e-9):.2f}",
                r["commit_conflicts_retried"],
                f"{r['maintenance_runs']}/{r['maintenance_skipped_lease_held']}/{r['maintenance_overlaps']}",
                r["catalog_objects"], f"{r['catalog_bytes'] / 2**20:.1f}", r["point_lookup_p50_ms"],
                r["participant_query_p50_ms"],
                f"{r['point_lookup_after_maintain_p50_ms']} / {r['participant_query_after_maintain_p50_ms']}",
            ]
            for r in results
        ],
        title=f"fleet on SeaweedFS: N drain processes into one catalog, maintenance every {args.maintain_every} s "
        f"(load average {os.getloadavg()[0]:.1f})",
    )
    for r in results:
        if r["failed"] or r["maintenance_failed"]:
            print(f"N={r['rigs']}: failed: {r['failed'][:3]} maintenance: {r['maintenance_failed'][:2]}")
    emit_json({"fleet": results, "status": status, "load_average": round(os.getloadavg()[0], 2)})


if __name__ == "__main__":
    main()
