"""Catalog query latency: pushed-down queries against the seed's full-scan way.

Run by hand (pytest does not collect tests/bench)::

    .venv/bin/python tests/bench/catalog_query.py [--rebuild] [--runs 50] [--seed-runs 10]

Builds (once, cached under /tmp) a local catalog of 100,000 recordings with 4
modalities each, 10,000 participants with ~10 recordings each, runs
``optimize()``, then times three queries our way and the seed's way (list every
recording, filter in Python, then fetch modalities with an ``IN`` over the
survivors), and prints a table and one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ursa_daemon.catalog import (
    Catalog,
    ModalityRow,
    ParticipantRow,
    RecordingRow,
)

DEFAULT_DIR = Path("/tmp/ursa-bench-catalog-100k")
N_RECORDINGS = 100_000
N_PARTICIPANTS = 10_000
#: family -> sampling rate (None: not a regularly sampled stream)
FAMILIES: dict[str, float | None] = {
    "eeg": 500.0,
    "camera": 30.0,
    "mic": 48_000.0,
    "notes": None,
    "emg": 2_000.0,
    "eye": 120.0,
    "imu": 200.0,
    "ecg": 250.0,
}
MODALITIES_PER_RECORDING = 4
BATCH = 25_000
T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z in ns
#: Bump when the catalog's tables or the generated data change: the cache is rebuilt.
BUILD_FORMAT = 2

Result = list[tuple[RecordingRow, list[ModalityRow]]]


def rec_hash(i: int) -> str:
    return hashlib.sha256(f"recording-{i}".encode()).hexdigest()


def participant_of(i: int) -> list[str]:
    ids = [f"p{i % N_PARTICIPANTS:05d}"]
    if i % 7 == 0:  # some sessions have two people
        ids.append(f"p{(i * 31 + 5) % N_PARTICIPANTS:05d}")
    return ids


def families_of(i: int) -> list[str]:
    names = list(FAMILIES)
    return [names[(i + k) % len(names)] for k in range(MODALITIES_PER_RECORDING)]


def recording(i: int) -> RecordingRow:
    return RecordingRow(
        recording_hash=rec_hash(i),
        rec_id=f"rec_20260101_{i // 3600 % 24:02d}{i // 60 % 60:02d}{i % 60:02d}_{i:08x}",
        participant_ids=participant_of(i),
        start_time=T0 + i * 60_000_000_000,
        duration_ns=1_800_000_000_000,
        device_info={"rig": f"rig-{i % 12}"},
        metadata={"protocol": "rest" if i % 2 else "task", "session": i % 5},
        registered_at=T0,
    )


def modalities(i: int) -> list[ModalityRow]:
    h, rid = rec_hash(i), f"rec_{i:08x}"
    return [
        ModalityRow(
            recording_hash=h,
            modality=fam,
            worker_id=str(i % 3),
            raw_storage_uri=f"s3://constellation-data/recordings/{rid}/{fam}_{i % 3}/",
            sampling_rate=FAMILIES[fam],
            file_count=1 + (i * 7 + k) % 40,
            byte_count=(1 + (i * 7 + k) % 40) * ((i * 13 + k) % 997 + 1) << 16,
            metadata={"codec": "h264"} if fam == "camera" else {},
        )
        for k, fam in enumerate(families_of(i))
    ]


def build(path: Path) -> float:
    started = time.perf_counter()
    shutil.rmtree(path, ignore_errors=True)
    catalog = Catalog.open(str(path))
    catalog.add_rows([ParticipantRow(participant_id=f"p{k:05d}", enrolled_at=T0) for k in range(N_PARTICIPANTS)])
    for lo in range(0, N_RECORDINGS, BATCH):
        idx = range(lo, min(lo + BATCH, N_RECORDINGS))
        catalog.add_rows([m for i in idx for m in modalities(i)])
        catalog.add_rows([recording(i) for i in idx])
        print(f"  built {idx.stop:,} recordings", file=sys.stderr)
    catalog.optimize()
    (path / "BUILT").write_text(json.dumps(_marker()))
    return time.perf_counter() - started


def _marker() -> dict[str, int]:
    return {"recordings": N_RECORDINGS, "format": BUILD_FORMAT}


# -- the seed's way: list everything, filter in Python, then modalities --------------


def seed_query(
    catalog: Catalog,
    *,
    participants: Sequence[str] | None = None,
    modalities: Sequence[str] | None = None,
    recording_hash: str | None = None,
    limit: int | None = None,
) -> Result:
    recordings = catalog.list_recordings()
    if recording_hash is not None:
        recordings = [r for r in recordings if r.recording_hash == recording_hash]
    if participants is not None:
        wanted = set(participants)
        recordings = [r for r in recordings if wanted.intersection(r.participant_ids)]
    if not recordings:
        return []
    where: dict[str, Any] = {"recording_hash": [r.recording_hash for r in recordings]}
    if modalities is not None:
        where["modality"] = list(modalities)
    grouped: dict[str, list[ModalityRow]] = {}
    for row in catalog.list_modalities(where=where):
        grouped.setdefault(row.recording_hash, []).append(row)
    if modalities is not None:
        recordings = [r for r in recordings if grouped.get(r.recording_hash)]
    results = [(r, grouped.get(r.recording_hash, [])) for r in recordings]
    return results[:limit] if limit is not None else results


# -- timing ---------------------------------------------------------------------------


def timed(fn: Callable[[], Result], runs: int) -> tuple[dict[str, float], Result]:
    fn()  # warm caches (index pages, table handles)
    samples, result = [], []
    for _ in range(runs):
        t = time.perf_counter()
        result = fn()
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    p90 = samples[min(len(samples) - 1, round(0.9 * (len(samples) - 1)))]
    return {"median_ms": statistics.median(samples), "p90_ms": p90, "runs": runs}, result


def keyset(result: Result) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
    return {(r.recording_hash, tuple(sorted((m.modality, m.worker_id) for m in ms))) for r, ms in result}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--seed-runs", type=int, default=10)
    args = parser.parse_args()

    build_s = None
    marker = args.dir / "BUILT"
    if args.rebuild or not marker.exists() or json.loads(marker.read_text()) != _marker():
        print(f"building {N_RECORDINGS:,} recordings in {args.dir} ...", file=sys.stderr)
        build_s = build(args.dir)

    t = time.perf_counter()
    catalog = Catalog.open(str(args.dir), writable=False)
    open_ms = (time.perf_counter() - t) * 1000

    target_hash = rec_hash(54_321)
    person = participant_of(4_242)[0]
    cases: list[tuple[str, dict[str, Any], float | None]] = [
        ("point lookup  query(recording_hash=...)", {"recording_hash": target_hash}, 10.0),
        (f"participant   query(participants=[{person!r}])", {"participants": [person]}, 50.0),
        ("modality      query(modalities=['ecg'], limit=100)", {"modalities": ["ecg"], "limit": 100}, None),
    ]
    figures: dict[str, Any] = {"recordings": N_RECORDINGS, "open_ms": round(open_ms, 2), "build_s": build_s}
    rows = []
    for label, kwargs, target in cases:
        ours, got = timed(partial(catalog.query, **kwargs), args.runs)
        seed, want = timed(partial(seed_query, catalog, **kwargs), args.seed_runs)
        same = keyset(got) == keyset(want) if "limit" not in kwargs else len(got) == len(want) == kwargs["limit"]
        ratio = seed["median_ms"] / ours["median_ms"]
        key = label.split()[0]
        figures[key] = {
            "ours": ours,
            "seed": seed,
            "ratio": round(ratio, 1),
            "results": len(got),
            "same_results": same,
            "target_ms": target,
        }
        rows.append((label, ours, seed, ratio, len(got), same, target))

    print(f"\ncatalog: {N_RECORDINGS:,} recordings x {MODALITIES_PER_RECORDING} modalities, {args.dir}")
    print(f"open (read-only, tables lazy): {open_ms:.1f} ms" + (f"; build {build_s:.0f} s" if build_s else ""))
    head = (
        f"{'query':<52} {'ours med':>9} {'ours p90':>9} {'seed med':>10} {'seed p90':>10}"
        f" {'seed/ours':>10} {'rows':>5}  ok"
    )
    print(head)
    print("-" * len(head))
    for label, ours, seed, ratio, n, same, target in rows:
        flag = "" if target is None else ("  target met" if ours["median_ms"] <= target else "  TARGET MISSED")
        print(
            f"{label:<52} {ours['median_ms']:>7.2f}ms {ours['p90_ms']:>7.2f}ms {seed['median_ms']:>8.1f}ms "
            f"{seed['p90_ms']:>8.1f}ms {ratio:>9.0f}x {n:>5}  {'yes' if same else 'NO'}{flag}"
        )
    print(f"(ours: {args.runs} runs each; seed: {args.seed_runs} runs each)")
    print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
