"""A catalog at lab scale on object storage (issue 17): bulk rows, then a tail of small commits.

On a real SeaweedFS server, for each size in ``--rows``: a fresh catalog gets that many
recordings with 4 modalities each (plus 10,000 participants) in large batches
(``--batch`` recordings per commit), then ``--tail`` sessions registered one at a time as
rigs do (``register_session``: one commit per changed table each). The point lookup
``query(recording_hash=)`` and the participant query ``query(participants=[one])`` are
timed in a fresh reader (p50/p99) after the bulk build, at checkpoints through the tail,
and after one ``maintain`` (compaction, index refresh). Also: table versions, and the
catalog's objects and bytes in the bucket. The peer is the same query right after the bulk
build, indexes fresh (ratios against it).

Rows are made by tests/bench/catalog_query.py's generators (the same shapes as its 100k
local catalog).

``--maintain-every M`` runs the real ``maintain`` job (lease and all, as the hourly timer
does in production) after every M tail commits; checkpoints then fall just before a
maintenance run, the worst point of its cycle. Without it the tail never maintains.

    .venv/bin/python tests/bench/catalog_scale.py [--rows 10000,100000] [--tail 1000] [--batch 50000]
    .venv/bin/python tests/bench/catalog_scale.py --rows 1000000 --tail 10000 --maintain-every 500 --runs 20
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import catalog_query as gen  # noqa: E402
from _common import emit_json, load_seaweed, percentile, print_table, s3_config_dict  # noqa: E402

from ursa_daemon.api import DataInterface  # noqa: E402
from ursa_daemon.catalog import ParticipantRow  # noqa: E402
from ursa_daemon.config import config_from_dict  # noqa: E402
from ursa_daemon.daemon.maintain import maintain  # noqa: E402


def timed(reader_cfg: Any, n_rows: int, rng: random.Random, runs: int) -> dict[str, float]:
    data = DataInterface(config=reader_cfg)
    data.query(recording_hash=gen.rec_hash(0))  # open the tables
    point, part = [], []
    for _ in range(runs):
        i = rng.randrange(n_rows)
        t = time.perf_counter()
        got = data.query(recording_hash=gen.rec_hash(i))
        point.append(time.perf_counter() - t)
        assert len(got) == 1 and len(got[0].modalities) == gen.MODALITIES_PER_RECORDING, got
    for _ in range(max(5, runs // 2)):
        p = gen.participant_of(rng.randrange(n_rows))[0]
        t = time.perf_counter()
        got = data.query(participants=[p])
        part.append(time.perf_counter() - t)
        assert got
    ms = 1000.0
    return {
        "point_p50_ms": round(percentile(point, 50) * ms, 1),
        "point_p99_ms": round(percentile(point, 99) * ms, 1),
        "participant_p50_ms": round(percentile(part, 50) * ms, 1),
        "participant_p99_ms": round(percentile(part, 99) * ms, 1),
    }


def storage(weed: Any, bucket: str) -> tuple[int, int]:
    s3 = weed.client()
    objects = nbytes = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="ursa/catalog/"):
        for o in page.get("Contents", []):
            objects += 1
            nbytes += o["Size"]
    return objects, nbytes


def one_size(weed: Any, n_rows: int, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    raw, assets = weed.create_buckets()
    os.environ.update(weed.credentials_env())
    doc = s3_config_dict(weed.endpoint, raw, assets, work / f"r{n_rows}")
    cfg = config_from_dict(doc, base_dir=work)
    writer = DataInterface(config=cfg)
    writer.enable_writes(roles=("assets_rw",))
    catalog = writer._write_catalog()
    rng = random.Random(n_rows)
    phases: list[dict[str, Any]] = []

    def phase(name: str, **extra: Any) -> None:
        objects, nbytes = storage(weed, assets)
        versions = catalog.table_versions()
        row = {
            "rows": n_rows,
            "phase": name,
            **extra,
            **timed(cfg, n_rows, rng, args.runs),
            "versions_recordings": versions["recordings"],
            "versions_modalities": versions["modalities"],
            "objects": objects,
            "mib": round(nbytes / 2**20, 1),
        }
        phases.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    people = [ParticipantRow(participant_id=f"p{k:05d}", enrolled_at=gen.T0) for k in range(gen.N_PARTICIPANTS)]
    catalog.add_rows(people)
    for lo in range(0, n_rows, args.batch):
        idx = range(lo, min(lo + args.batch, n_rows))
        catalog.add_rows([m for i in idx for m in gen.modalities(i)])
        catalog.add_rows([gen.recording(i) for i in idx])
        print(f"  built {idx.stop:,} recordings, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    build_s = time.perf_counter() - t0
    catalog.optimize(keep_versions=timedelta(hours=24))  # a built catalog starts indexed
    phase("bulk built + maintained", build_s=round(build_s, 1), tail_commits=0)

    done = 0
    every = args.maintain_every
    maint_s: list[float] = []

    def run_maintain() -> None:  # what the hourly timer does: the real job, lease and all
        t = time.perf_counter()
        maintain(writer, keep_versions=timedelta(hours=24))
        maint_s.append(time.perf_counter() - t)
        catalog.refresh()

    # early checkpoints too: a long tail cut short still says how latency grows with commits
    checkpoints = sorted({c for c in (100, 1000, args.tail // 4, args.tail // 2, args.tail) if 0 < c <= args.tail})
    committing = 0.0
    for cp in checkpoints:
        t0 = time.perf_counter()
        while done < cp:
            if every and done and done % every == 0 and len(maint_s) < done // every:
                tm = time.perf_counter()
                run_maintain()
                committing -= time.perf_counter() - tm  # maintenance is not commit time
            i = n_rows + done
            t1 = time.perf_counter()
            catalog.register_session(participants=[], recording=gen.recording(i), modalities=gen.modalities(i))
            done += 1
            if done % 100 == 0:  # the commit rate as it goes (stderr; the table is unchanged)
                elapsed = committing + time.perf_counter() - t0
                print(f"  tail: {done} commits, last {1000 * (time.perf_counter() - t1):.0f} ms, "
                      f"mean {1000 * elapsed / done:.0f} ms, {len(maint_s)} maintenance runs",
                      file=sys.stderr, flush=True)
        committing += time.perf_counter() - t0
        per_commit_ms = round(committing / done * 1000, 1)
        since = done - every * len(maint_s) if every else done
        extra: dict[str, Any] = {"tail_commits": done, "tail_commit_ms": per_commit_ms, "since_maintain": since}
        if maint_s:
            extra.update(maintain_runs=len(maint_s), maintain_s_max=round(max(maint_s), 1))
        phase(f"after {done} single-session commits ({since} since maintain)", **extra)
    run_maintain()
    phase("after maintain", tail_commits=done, maintain_s=round(maint_s[-1], 1))
    return phases


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="10000,100000", help="comma-separated recording counts")
    ap.add_argument("--tail", type=int, default=1000, help="single-session commits after the bulk build")
    ap.add_argument("--batch", type=int, default=50_000, help="recordings per bulk commit")
    ap.add_argument("--maintain-every", type=int, default=0,
                    help="run maintain (lease and all, as the hourly timer does) after every M tail commits; 0: never")
    ap.add_argument("--runs", type=int, default=40, help="point lookups per phase")
    args = ap.parse_args()
    weed = load_seaweed().SeaweedServer().start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally below: no weed left behind
    work = Path(tempfile.mkdtemp(prefix="ursa-bench-scale-"))
    results: list[dict[str, Any]] = []
    try:
        for n in (int(x) for x in args.rows.split(",")):
            results.extend(one_size(weed, n, args, work))
    finally:
        weed.stop()
    base = {r["rows"]: r for r in results if r["phase"].startswith("bulk")}
    print_table(
        ["rows", "phase", "point p50 ms", "p99", "x fresh", "participant p50 ms", "p99", "versions rec/mod",
         "objects", "MiB"],
        [
            [
                r["rows"], r["phase"], r["point_p50_ms"], r["point_p99_ms"],
                f"{r['point_p50_ms'] / max(base[r['rows']]['point_p50_ms'], 1e-9):.2f}",
                r["participant_p50_ms"], r["participant_p99_ms"],
                f"{r['versions_recordings']}/{r['versions_modalities']}", r["objects"], r["mib"],
            ]
            for r in results
        ],
        title=f"catalog at scale on SeaweedFS (load average {os.getloadavg()[0]:.1f})",
    )
    emit_json({"catalog_scale": results, "load_average": round(os.getloadavg()[0], 2)})


if __name__ == "__main__":
    main()
