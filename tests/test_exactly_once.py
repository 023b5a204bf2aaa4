"""Exactly once under contention (issue 22): many writers, two maintainers, random SIGKILLs, on SeaweedFS.

SPEC section 4, "Exactly once": every catalog table holds at most one row per primary key
whatever runs at the same time (writers of every kind, both halves of a dual-node session,
``maintain``, processes killed at any instant), and a writer never aborts an upload another
live writer is sending. This test is the stress test that would have caught the duplicates
of issue 22 (Lance's ``merge_insert`` does not see a concurrent insert of the same new key
once the key's BTREE index covers the data, which it does after ``maintain``'s optimize;
writers aborted each other's multipart uploads as "orphans": the peer failed with
NoSuchUpload).

Each round, on fresh buckets of one real SeaweedFS server (its ``If-None-Match: *`` is
atomic, so Lance's commit protocol is really exercised), with a seeded RNG:

* a catalog in use, not a fresh one: one earlier session (its participant, recording,
  modalities and an event) registered and maintained before the writers start, so every
  key's BTREE index covers data from the first contested commit on;
* one set of sessions: 14 single-node sessions sharing three participants (the participants
  table is contended), two of them with a file over two 5 MiB parts (multipart, sent by
  several writers at once; each writer is throttled to 24 MB/s so their uploads of it
  overlap), and a dual-node session whose node-a half lies in one root and node-b half in
  another;
* six writers at once, each with its own config and state_dir, each after a small random
  delay: four ``ursa-daemon drain --json`` processes over the same roots in different orders
  (two see the node-a half, two the node-b half: different writers send different halves of
  one recording at the same time), and two Python-API processes (``DataInterface.ingest``
  plus ``register_event`` of one event per session: the events table is contended too);
* two loops of ``ursa-daemon maintain --json`` for the whole round (exit 0 done, 3 lease held);
* SIGKILLs at random moments: one or two writers and usually one maintainer. A killed writer
  is restarted at once on its state_dir (the state lock dies with the process); a killed
  maintainer's lease, if still its own, is expired (as if its hour had passed) so the
  other loop goes on.

Then, in named phases, the test counts the raw rows of every catalog table, read straight
from Lance (``to_arrow`` of each table's latest version, no deduplicating query):

* ``after the writers`` (every writer done, maintainers stopped): at most one row per key
  (and one recording_hash per rec_id); every writer run that was not killed exited 0 and
  reported no good session failed or rejected (a dual-node half waiting for its other node
  is fine): a peer's abort (NoSuchUpload) shows here;
* ``after the final drain`` (one more drain of every root, fresh state): exactly one row per
  key, every session registered once with its recording_hash, modality rows and
  participants, the API writers' events, and every cataloged object byte-exact in the store
  and equal to the files on disk (``tests/invariants.py``, deep; its invariant 5, no
  incomplete multipart upload, is waived in rounds that killed a writer: such an upload
  cannot be told from a live peer's, and R2 expires it after 7 days);
* ``after the final maintain``: the same counts again.

Duplicates must never appear: the first phase comes before the final ``maintain`` (which
may repair duplicates) on purpose. On the code before the fix (cc71d4b) every round fails
with duplicate recordings and modality rows (and usually NoSuchUpload failures).

The default suite runs ``URSA_STRESS_ROUNDS`` rounds (default 3, 15-22 s each on two cores).
The thorough profile, run by hand, with its result in the closing note::

    URSA_STRESS_ROUNDS=100 URSA_STRESS_KEEP_GOING=1 .venv/bin/python -m pytest tests/test_exactly_once.py -s

(``-s`` prints one line per round: its seed, kills, process runs and wall times, and each
failing round's violations; without ``URSA_STRESS_KEEP_GOING=1`` the test stops at the first
failing round. A passing round's buckets and files are deleted; a failing round's stay, its
process logs named in the message.)

``URSA_STRESS_SEED=<seed> URSA_STRESS_ROUNDS=1`` replays a failing round's plan (every failure
message names its seed; round r of a run has seed ``URSA_STRESS_SEED + r``, default 22000 + r).
Timing is not replayed: the same plan may race differently.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import seaweed_config_dict
from harness import write_files
from invariants import check_invariants

ROUNDS = int(os.environ.get("URSA_STRESS_ROUNDS", "3"))
BASE_SEED = int(os.environ.get("URSA_STRESS_SEED", "22000"))
#: run every round even after one failed, then report how many failed (the thorough profile)
KEEP_GOING = os.environ.get("URSA_STRESS_KEEP_GOING", "0") == "1"

#: raw-row primary keys per table (SPEC section 4); other tables are checked by their model's key
PRIMARY_KEYS: dict[str, tuple[str, ...]] = {
    "participants": ("participant_id",),
    "recordings": ("recording_hash",),
    "modalities": ("recording_hash", "modality", "worker_id"),
    "events": ("event_id",),
}
PARTICIPANTS = ["Aria Lin", "Bo Chen", "Cy Diaz"]
#: ``maintain``'s lease in the assets bucket (``ursa_daemon.daemon.maintain.LEASE_KEY``)
LEASE_KEY = "ursa/maintenance.lease"
PART_SIZE = 5 << 20
#: each writer's upload rate: a big file takes about half a second, so peers' uploads of it overlap
BANDWIDTH = 24_000_000
DUAL_NODES = ("node-a", "node-b")
N_SINGLE = 12
N_BIG = 2
N_DRAINS = 4
N_API = 2
#: the writers of one round take 10-15 s on two cores; past this something hangs
WRITERS_BUDGET_S = 180

pytestmark = pytest.mark.timeout(300 + 240 * ROUNDS)

#: one Python-API writer: ingest each session given, then register one event for it
API_WRITER = r"""
import json, sys
from pathlib import Path
from ursa_daemon.api import DataInterface
from ursa_daemon.config import load_config
from ursa_daemon.errors import NodesPending

data = DataInterface(config=load_config(Path(sys.argv[1])))
data.enable_writes(roles=("assets_rw", "raw_rw"))
out = {"registered": [], "failed": [], "waiting": []}
for rec in sys.argv[2:]:
    rec_id = Path(rec).name
    try:
        result = data.ingest(rec)
        if result.recording is None:
            out["failed"].append({"rec_id": rec_id, "error": "ingest returned no recording"})
            continue
        data.register_event(event_id=rec_id + ".stress", recording_hash=result.recording.recording_hash,
                            event_time=1.5, event_type="stress", prompt=rec_id)
        out["registered"].append(rec_id)
    except NodesPending as exc:
        out["waiting"].append({"rec_id": rec_id, "error": str(exc)})
    except Exception as exc:
        out["failed"].append({"rec_id": rec_id, "error": f"{type(exc).__name__}: {exc}"})
print(json.dumps(out))
"""


# -- the sessions ---------------------------------------------------------------------------


def _participant_id(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _recording_hash(bodies: list[bytes]) -> str:
    return hashlib.sha256("\n".join(sorted(hashlib.sha256(b).hexdigest() for b in bodies)).encode()).hexdigest()


def _age(path: Path) -> None:
    old = time.time() - 120
    for p in [*path.rglob("*"), path]:
        os.utime(p, (old, old), follow_symlinks=False)


@dataclass
class Expected:
    """What the catalog must hold once every session is registered."""

    rec_dir: Path | None  # None: the dual-node session (two dirs)
    rec_id: str
    files: dict[str, bytes]
    participant: str | None

    @property
    def recording_hash(self) -> str:
        return _recording_hash(list(self.files.values()))

    @property
    def workers(self) -> set[tuple[str, str]]:
        out = set()
        for rel in self.files:
            sub = rel.split("/", 1)[0]
            family, _, rest = sub.partition("_")
            out.add((family, rest))
        return out


def make_sessions(rng: random.Random, base: Path) -> tuple[list[Expected], Expected]:
    """Single-node sessions under ``base/shared``; the dual-node halves under ``base/node-a``, ``base/node-b``."""
    shared = base / "shared"
    month = rng.randint(1, 12)
    out = []
    for n in range(N_SINGLE + N_BIG):
        rec_id = f"rec_2026{month:02d}22_{n:06d}_{rng.getrandbits(32):08x}"
        files: dict[str, bytes] = {}
        workers = rng.sample(["eeg_4559", "camera_0", "mic", "notes_x", "eeg_b"], rng.randint(1, 3))
        for w in workers:
            for i in range(rng.randint(1, 3)):
                files[f"{w}/seg_{i:06d}.bin"] = rng.randbytes(rng.choice([0, 64, 5_000, 40_000]))
        # random bytes in every session: no two sessions share a recording_hash (that is a rejection)
        files[f"{workers[0]}/seg_000000.bin"] = rng.randbytes(rng.choice([64, 5_000, 40_000]))
        if n < N_BIG:  # bigger than a part: a multipart upload, sent by several writers at once
            files[f"{workers[0]}/big.bin"] = rng.randbytes(2 * PART_SIZE + rng.randint(1 << 20, 2 << 20))
        participant = PARTICIPANTS[n % len(PARTICIPANTS)] if n % 4 != 3 else None
        rec = shared / rec_id
        write_files(rec, files, participant)
        (rec / "manifest.json").write_text(json.dumps({
            "recording_id": rec_id, "start_time": 1_700_000_000_000_000_000 + n, "duration_s": 60.0,
            "device_info": {"rig": "stress"}, "workers": {w: {"sampling_rate": 500.0} for w in workers},
        }))
        _age(rec)
        out.append(Expected(rec, rec_id, files, participant))

    rec_id = f"rec_2026{month:02d}22_999999_{rng.getrandbits(32):08x}"
    halves = {
        "node-a": {"eeg_4559/seg_000001.bin": rng.randbytes(30_000), "mic/take.wav": rng.randbytes(3000)},
        "node-b": {"camera_0/seg_000001.mp4": rng.randbytes(50_000), "camera_0/deep/seg_000002.mp4": b""},
    }
    for host, files in halves.items():
        rec = base / host / rec_id
        write_files(rec, files, "Bo Chen")
        (rec / "_node_manifests").mkdir(parents=True)
        (rec / "_node_manifests" / f"{host}.json").write_text(json.dumps({
            "recording_id": rec_id, "start_time": "2026-05-20T19:56:28.120+00:00", "duration_s": 30,
            "nodes": list(DUAL_NODES),
        }))
        _age(rec)
    dual = Expected(None, rec_id, {**halves["node-a"], **halves["node-b"]}, "Bo Chen")
    return out, dual


def make_history(rng: random.Random, base: Path) -> Expected:
    """The session the catalog already holds when the round starts (its own root, its own participant)."""
    rec_id = f"rec_20250101_000000_{rng.getrandbits(32):08x}"
    files = {"eeg_0/seg_000001.bin": rng.randbytes(2000), "mic/take.wav": rng.randbytes(500)}
    rec = base / "history" / rec_id
    write_files(rec, files, "Zed Old")
    (rec / "manifest.json").write_text(json.dumps({"recording_id": rec_id, "start_time": 1_600_000_000_000_000_000,
                                                   "duration_s": 5.0}))
    _age(rec)
    return Expected(rec, rec_id, files, "Zed Old")


# -- processes -------------------------------------------------------------------------------


def _config(base: Path, server: Any, raw: str, assets: str, name: str) -> Path:
    doc = seaweed_config_dict(server, raw, assets, base)
    doc["recordings_root"] = str(base / "shared")
    doc["state_dir"] = str(base / f"state-{name}")
    doc["watch"] = {"settle_seconds": 0.0, "rescan_seconds": 1.0, "retry_check_seconds": 0.5}
    # slow enough that writers' multipart uploads of one file overlap (about 0.5 s each)
    doc["upload"] = {"part_size_bytes": PART_SIZE, "max_concurrent_files": 2, "max_concurrency_per_file": 1,
                     "bandwidth_bytes_per_s": BANDWIDTH}
    doc["activity"] = {"quiet_seconds": 0.0}
    path = base / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@dataclass
class Run:
    """One process of a writer or maintainer; its stdout and stderr go to files."""

    name: str
    argv: list[str]
    out: Path
    err: Path
    proc: subprocess.Popen[bytes]
    killed: bool = False

    @classmethod
    def start(cls, name: str, argv: list[str], logs: Path, env: dict[str, str]) -> Run:
        n = len(list(logs.glob(f"{name}.*.out")))
        out, err = logs / f"{name}.{n}.out", logs / f"{name}.{n}.err"
        with open(out, "wb") as o, open(err, "wb") as e:
            proc = subprocess.Popen(argv, stdout=o, stderr=e, stdin=subprocess.DEVNULL, env=env)
        return cls(name, argv, out, err, proc)

    def kill(self) -> bool:
        if self.proc.poll() is not None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.killed = self.proc.returncode == -signal.SIGKILL  # not if it had just ended by itself
        return self.killed

    def tail(self, n: int = 2500) -> str:
        return self.err.read_text(errors="replace")[-n:]

    def doc(self) -> dict[str, Any] | None:
        """The JSON document on stdout (drain's, whole; an API writer's, its last line after its logs)."""
        text = self.out.read_text(errors="replace").strip()
        for candidate in (text, text.rsplit("\n", 1)[-1]):
            try:
                doc = json.loads(candidate)
            except ValueError:
                continue
            if isinstance(doc, dict):
                return doc
        return None


@dataclass
class Writer:
    name: str
    argv: list[str]
    given: list[str]  # rec_ids
    delay: float
    runs: list[Run] = field(default_factory=list)

    @property
    def current(self) -> Run | None:
        return self.runs[-1] if self.runs else None


class MaintainLoop:
    """``ursa-daemon maintain --json`` back to back until stopped; exit 0 or 3 each time, or killed."""

    def __init__(self, name: str, config: Path, logs: Path, env: dict[str, str]) -> None:
        self.name, self.config, self.logs, self.env = name, config, logs, env
        self.runs: list[Run] = []
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        argv = [sys.executable, "-m", "ursa_daemon.cli", "--config", str(self.config), "maintain", "--json"]
        while not self.stopping.is_set():
            with self.lock:
                if self.stopping.is_set():
                    return
                run = Run.start(self.name, argv, self.logs, self.env)
                self.runs.append(run)
            run.proc.wait()
            time.sleep(0.1)

    def current(self) -> Run | None:
        with self.lock:
            return self.runs[-1] if self.runs else None

    def stop(self, *, kill: bool = False) -> None:
        """No new run; wait for the current one to end (``kill``: end it now)."""
        self.stopping.set()
        run = self.current()
        if kill and run is not None:
            run.kill()
        self.thread.join(timeout=300)
        assert not self.thread.is_alive(), f"{self.name}: a maintain run did not end in 300 s"

    def counts(self) -> Counter[str]:
        return Counter("killed" if r.killed else f"exit {r.proc.returncode}" for r in self.runs)


# -- reading the catalog raw -----------------------------------------------------------------


def raw_tables(server: Any, assets: str) -> dict[str, list[dict[str, Any]]]:
    """Every live row of every catalog table, straight from Lance: no deduplication anywhere."""
    import lancedb

    client = server.client()
    prefix = json.loads(client.get_object(Bucket=assets, Key="ursa/ACTIVE.json")["Body"].read())["catalog_prefix"]
    options = {
        "aws_access_key_id": server.admin.key_id,
        "aws_secret_access_key": server.admin.secret,
        "aws_endpoint": server.endpoint,
        "aws_region": server.region,
        "aws_virtual_hosted_style_request": "false",
        "allow_http": "true",
    }
    db = lancedb.connect(f"s3://{assets}/{prefix}", storage_options=options)
    names: list[str] = []
    token = None
    while True:
        page = db.list_tables(page_token=token)
        names += page.tables
        token = page.page_token
        if not token:
            break
    return {name: db.open_table(name).to_arrow().to_pylist() for name in names}


def _model_keys() -> dict[str, tuple[str, ...]]:
    from ursa_daemon.catalog.schema import SPECS

    keys = {name: tuple(spec.model.__primary_key__) for name, spec in SPECS.items()}
    return {**keys, **PRIMARY_KEYS}


def _show_key(key: tuple[Any, ...], names: dict[str, str]) -> str:
    """A key for a message: a recording_hash shortened and named by its session's rec_id."""
    parts = []
    for v in key:
        if isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v):
            parts.append(f"{names.get(v, '?')}({v[:8]})")
        else:
            parts.append(repr(v))
    return "/".join(parts)


def check_rows(phase: str, tables: dict[str, list[dict[str, Any]]], sessions: list[Expected],
               *, complete: bool, events: tuple[set[str], set[str]]) -> list[str]:
    """Violations of "at most one row per key" (always) and, when ``complete``, of "every
    session registered once with its modality rows, participants and events" (``events``:
    the event ids that must be there, those that may)."""
    bad = []
    names = {s.recording_hash: s.rec_id for s in sessions}
    for name, key in _model_keys().items():
        rows = tables.get(name, [])
        counts = Counter(tuple(r[k] for k in key) for r in rows)
        dups = {k: n for k, n in counts.items() if n > 1}
        if dups:
            shown = ", ".join(f"{_show_key(k, names)} x{n}" for k, n in sorted(dups.items())[:8])
            more = f" and {len(dups) - 8} more" if len(dups) > 8 else ""
            bad.append(f"[{phase}] {name}: DUPLICATE ROWS: {len(rows)} rows, {len(dups)} keys "
                       f"({'/'.join(key)}) held more than once: {shown}{more}")
    recs = tables.get("recordings", [])
    by_rec_id = Counter(r["rec_id"] for r in recs)
    hashes_of: dict[str, set[str]] = {}
    for r in recs:
        hashes_of.setdefault(r["rec_id"], set()).add(r["recording_hash"])
    for rec_id, hs in sorted(hashes_of.items()):
        if len(hs) > 1:
            bad.append(f"[{phase}] recordings: {rec_id} registered under {len(hs)} recording_hashes")
    if not complete:
        return bad
    mods = Counter((m["recording_hash"], m["modality"], m["worker_id"]) for m in tables.get("modalities", []))
    for s in sessions:
        n = by_rec_id.get(s.rec_id, 0)
        if n == 0:
            bad.append(f"[{phase}] {s.rec_id}: not registered (no recordings row)")
            continue
        if hashes_of[s.rec_id] != {s.recording_hash}:
            bad.append(f"[{phase}] {s.rec_id}: recording_hash {sorted(h[:12] for h in hashes_of[s.rec_id])} "
                       f"!= {s.recording_hash[:12]} of its files")
        got = {(m, w) for (h, m, w) in mods if h == s.recording_hash}
        if got != s.workers:
            bad.append(f"[{phase}] {s.rec_id}: modality rows {sorted(got)} != {sorted(s.workers)}")
        row = next(r for r in recs if r["rec_id"] == s.rec_id)
        want_p = [_participant_id(s.participant)] if s.participant else []
        if sorted(row["participant_ids"] or []) != want_p:
            bad.append(f"[{phase}] {s.rec_id}: participant_ids {row['participant_ids']} != {want_p}")
    want_participants = {_participant_id(s.participant) for s in sessions if s.participant}
    got_participants = {p["participant_id"] for p in tables.get("participants", [])}
    if got_participants != want_participants:
        bad.append(f"[{phase}] participants {sorted(got_participants)} != {sorted(want_participants)}")
    got_events = {e["event_id"] for e in tables.get("events", [])}
    must, may = events
    if not must <= got_events <= may:
        bad.append(f"[{phase}] events: missing {sorted(must - got_events)}, unknown {sorted(got_events - may)}")
    return bad


# -- one round -------------------------------------------------------------------------------


def _expire_lease_of(server: Any, assets: str, pid: int) -> None:
    """The killed maintainer's lease, expired as if its hour had passed, so the other loop goes on.

    Only if it is still that process's lease, and only by a conditional PUT (``If-Match``):
    a run that took it over meanwhile keeps its own."""
    client = server.client()
    try:
        got = client.get_object(Bucket=assets, Key=LEASE_KEY)
        doc = json.loads(got["Body"].read())
    except Exception:  # noqa: BLE001 - none, or unreadable: nothing to expire
        return
    if not isinstance(doc, dict) or str(doc.get("holder", "")).split(":")[1:2] != [str(pid)]:
        return
    doc["expires_at"] = 0.0
    with contextlib.suppress(Exception):  # PreconditionFailed: taken over meanwhile
        client.put_object(Bucket=assets, Key=LEASE_KEY, Body=json.dumps(doc).encode(), IfMatch=got["ETag"])


def _log_tail(run: Run, n: int = 6) -> str:
    """The last warnings and errors a run logged (stderr, and stdout for an API writer)."""
    lines = run.err.read_text(errors="replace").splitlines() + run.out.read_text(errors="replace").splitlines()
    hits = [ln[:400] for ln in lines if re.search(r"warn|error|Traceback", ln, re.IGNORECASE)]
    return "\n      ".join(hits[-n:]) or "(no warning or error logged)"


def _writer_report(w: Writer, run: Run, dual_id: str) -> list[str]:
    """Why this (not killed) writer run is wrong, if it is."""
    rc = run.proc.returncode
    doc = run.doc()
    where = f"[after the writers] writer {w.name} (run {w.runs.index(run) + 1} of {len(w.runs)})"
    if doc is None:
        return [f"{where} exited {rc} and printed no JSON document; stdout tail: "
                f"{run.out.read_text(errors='replace')[-800:]!r}; stderr tail:\n{run.tail(1500)}"]
    bad = []
    for item in doc.get("failed", []) + doc.get("rejected", []):
        bad.append(f"{where} exited {rc}, reports good session {item['rec_id']} failed: {item['error'][:600]}")
    if rc != 0 and not bad:
        bad.append(f"{where} exited {rc} (want 0): {json.dumps(doc)[:1000]}"
                   f"\n      its last warnings/errors:\n      {_log_tail(run)}")
    for item in doc.get("waiting", []):
        if item["rec_id"] != dual_id:
            bad.append(f"{where} reports single-node {item['rec_id']} waiting: {item['error']}")
    done = set(doc.get("registered", [])) | set(doc.get("already_registered", []))
    done |= {i["rec_id"] for i in doc.get("waiting", []) + doc.get("failed", []) + doc.get("rejected", [])}
    missing = sorted(set(w.given) - done)
    if missing:
        bad.append(f"{where} did not finish {missing}: {json.dumps(doc)[:1000]}"
                   f"\n      its last warnings/errors:\n      {_log_tail(run)}")
    return bad


def _run_writers(writers: list[Writer], loops: list[MaintainLoop], plan: list[tuple[float, str, int]],
                 kills: list[str], logs: Path, env: dict[str, str], expire: Any) -> None:
    """Start every writer after its delay, kill by ``plan`` (restarting a killed writer at once), and
    return when every writer's last run has ended."""
    began = time.monotonic()
    pending = sorted(writers, key=lambda w: w.delay)
    while True:
        now = time.monotonic() - began
        while pending and pending[0].delay <= now:
            w = pending.pop(0)
            w.runs.append(Run.start(w.name, w.argv, logs, env))
        while plan and plan[0][0] <= now:
            at, kind, idx = plan.pop(0)
            if kind == "writer":
                w = writers[idx]
                run = w.current
                if run is not None and run.kill():
                    kills.append(f"{w.name}@{at:.1f}s")
                    w.runs.append(Run.start(w.name, w.argv, logs, env))  # on the same state_dir, at once
            else:
                run = loops[idx].current()
                if run is not None and run.kill():
                    kills.append(f"{loops[idx].name}@{at:.1f}s")
                    expire(run.proc.pid)
        if not pending and all(w.current is not None and w.current.proc.poll() is not None for w in writers):
            return
        if now > WRITERS_BUDGET_S:
            raise AssertionError(f"writers still running after {WRITERS_BUDGET_S} s: "
                                 f"{[w.name for w in writers if w.current and w.current.proc.poll() is None]}")
        time.sleep(0.05)


def one_round(server: Any, base: Path, rnd: int, seed: int) -> dict[str, Any]:
    t0 = time.monotonic()
    rng = random.Random(seed)
    raw, assets = server.create_buckets()
    env = {**os.environ, **server.credentials_env()}
    env.pop("URSA_LOG_LEVEL", None)
    logs = base / "logs"
    logs.mkdir(parents=True)
    singles, dual = make_sessions(rng, base)
    history = make_history(rng, base)
    everything = [history, *singles, dual]
    shared, root_a, root_b = base / "shared", base / "node-a", base / "node-b"
    cli = [sys.executable, "-m", "ursa_daemon.cli", "--config"]
    maint_cfg = _config(base, server, raw, assets, "maintainer")

    # A catalog in use, not a fresh one: one session registered (a participant, a recording,
    # modalities, an event) and maintained, so every key's BTREE index covers data from the
    # first contested commit on (where Lance's merge_insert stops detecting same-key inserts).
    warm_cfg = _config(base, server, raw, assets, "history")
    warm = subprocess.run([sys.executable, "-c", API_WRITER, str(warm_cfg), str(history.rec_dir)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert warm.returncode == 0 and f'"registered": ["{history.rec_id}"]' in warm.stdout, (
        f"round {rnd} (seed {seed}): warm-up ingest failed: {warm.stdout[-1500:]}\n{warm.stderr[-1500:]}")
    warm = subprocess.run([*cli, str(maint_cfg), "maintain", "--json"], capture_output=True, text=True,
                          timeout=180, env=env)
    assert warm.returncode == 0, f"round {rnd} (seed {seed}): warm-up maintain failed: {warm.stderr[-2500:]}"

    writers = []
    orders = [[root_a, shared], [root_b, shared], [shared, root_a], [shared, root_b]]
    for i in range(N_DRAINS):
        cfg = _config(base, server, raw, assets, f"drain{i}")
        writers.append(Writer(f"drain{i}", [*cli, str(cfg), "drain", "--json", *map(str, orders[i])],
                              [s.rec_id for s in [*singles, dual]], rng.uniform(0, 0.6)))
    api_events = {f"{history.rec_id}.stress"}
    for i in range(N_API):
        cfg = _config(base, server, raw, assets, f"api{i}")
        mine = [s for s in singles if rng.random() < 0.7] or singles[:1]
        if i % 2:
            mine.reverse()
        else:
            rng.shuffle(mine)
        api_events |= {f"{s.rec_id}.stress" for s in mine}
        writers.append(Writer(f"api{i}", [sys.executable, "-c", API_WRITER, str(cfg), *(str(s.rec_dir) for s in mine)],
                              [s.rec_id for s in mine], rng.uniform(0, 0.6)))

    # the kill plan: one or two writers, usually one maintainer, each at a random moment
    plan: list[tuple[float, str, int]] = [(rng.uniform(1.0, 9.0), "writer", rng.randrange(len(writers)))]
    if rng.random() < 0.5:
        plan.append((rng.uniform(1.0, 12.0), "writer", rng.randrange(len(writers))))
    if rng.random() < 0.8:
        plan.append((rng.uniform(1.0, 12.0), "maintainer", rng.randrange(2)))
    plan.sort()
    kills: list[str] = []

    began = time.monotonic()
    loops = [MaintainLoop(f"maintain{i}", maint_cfg, logs, env) for i in range(2)]
    try:
        _run_writers(writers, loops, plan, kills, logs, env, lambda pid: _expire_lease_of(server, assets, pid))
    except BaseException:  # a hang or a timeout: no process of this round outlives it
        for w in writers:
            if w.current is not None:
                w.current.kill()
        for loop in loops:
            loop.stop(kill=True)
        raise
    writers_s = time.monotonic() - began
    for loop in loops:  # the maintainers stop with the writers: what follows must see no repair
        loop.stop()

    failures: list[str] = []
    notes: list[str] = []
    for w in writers:
        for run in w.runs:
            if not run.killed:
                failures += _writer_report(w, run, dual.rec_id)
    for loop in loops:
        for run in loop.runs:
            if not run.killed and run.proc.returncode not in (0, 3):
                failures.append(f"[after the writers] {loop.name} exited {run.proc.returncode}; stderr tail:\n"
                                f"{run.tail()}")

    # the events the API writers registered (one killed mid-way may have left its last one out)
    must = {f"{history.rec_id}.stress"}
    for w in writers:
        for run in w.runs:
            doc = None if run.killed or not w.name.startswith("api") else run.doc()
            must |= {f"{rec_id}.stress" for rec_id in (doc or {}).get("registered", [])}
    events = (must, api_events)

    # phase 1: before anything that could repair: never a duplicate
    failures += check_rows("after the writers", raw_tables(server, assets), everything, complete=False,
                           events=events)

    # phase 2: one final drain of every root (fresh state) to completion
    final_cfg = _config(base, server, raw, assets, "final")
    final = subprocess.run([*cli, str(final_cfg), "drain", "--json", str(base / "history"), str(shared), str(root_a),
                            str(root_b)],
                           capture_output=True, text=True, timeout=180, env=env)
    try:
        doc = json.loads(final.stdout)
    except ValueError:
        doc = {}
    finished = set(doc.get("registered", [])) | set(doc.get("already_registered", []))
    if final.returncode != 0 or finished != {s.rec_id for s in everything} or doc.get("waiting"):
        failures.append(f"[final drain] exited {final.returncode}, finished {len(finished)} of {len(everything)}: "
                        f"{final.stdout[-2000:]}\n{final.stderr[-2500:]}")
    failures += check_rows("after the final drain", raw_tables(server, assets), everything, complete=True,
                           events=events)
    try:
        check_invariants(final_cfg, valid=[s.rec_dir for s in [history, *singles] if s.rec_dir is not None],
                         also=[dual.rec_id])
    except AssertionError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines()[1:]]
        # a second recordings row is a duplicate the raw counts above already name
        lines = [ln for ln in lines if not re.match(r"inv2: \S+ (has \d+ recordings rows|is a complete, valid "
                                                    r"session but has [2-9]\d* rows)", ln)]
        if kills:  # a killed writer's multipart upload cannot be told from a live one's: R2 expires it
            left_over = [ln for ln in lines if ln.startswith("inv5:")]
            lines = [ln for ln in lines if not ln.startswith("inv5:")]
            if left_over:
                notes.append(f"{len(left_over)} incomplete multipart uploads left by killed writers")
        failures += [f"[after the final drain] {ln}" for ln in lines]

    # phase 3: the final maintain, then the same counts
    m = subprocess.run([*cli, str(maint_cfg), "maintain", "--json"], capture_output=True, text=True,
                       timeout=300, env=env)
    if m.returncode != 0:
        failures.append(f"[final maintain] exited {m.returncode}: {m.stdout[-1000:]}\n{m.stderr[-2500:]}")
    failures += check_rows("after the final maintain", raw_tables(server, assets), everything, complete=True,
                           events=events)

    maint_counts: Counter[str] = Counter()
    for loop in loops:
        maint_counts.update(loop.counts())
    info = {
        "round": rnd, "seed": seed, "writers_s": round(writers_s, 1), "kills": kills,
        "writer_runs": {w.name: len(w.runs) for w in writers}, "maintain_runs": dict(maint_counts),
        "round_s": round(time.monotonic() - t0, 1),
    }
    if notes:
        info["notes"] = notes
    if failures:
        info["found"] = {
            "duplicates_before_final_maintain": sum("DUPLICATE" in f and "[after the writers]" in f for f in failures),
            "duplicates_after_final_maintain": sum("DUPLICATE" in f and "final maintain]" in f for f in failures),
            "peer_failed_a_good_session": sum("reports good session" in f for f in failures),
            "NoSuchUpload": sum("NoSuchUpload" in f for f in failures),
            "other": sum("DUPLICATE" not in f and "reports good session" not in f for f in failures),
        }
        info["failure"] = (f"round {rnd} (URSA_STRESS_SEED={seed}; {json.dumps(info)}; logs in {logs}): "
                           f"{len(failures)} violations of exactly-once:\n" + "\n".join(failures))
        return info
    _drop_buckets(server, raw, assets)  # a passing round's bytes go: 100 rounds must fit on the disk
    shutil.rmtree(base, ignore_errors=True)
    return info


def _drop_buckets(server: Any, *buckets: str) -> None:
    client = server.client()
    for bucket in buckets:
        with contextlib.suppress(Exception):
            for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                for i in range(0, len(keys), 1000):
                    client.delete_objects(Bucket=bucket, Delete={"Objects": keys[i:i + 1000], "Quiet": True})
            client.delete_bucket(Bucket=bucket)


def test_writers_maintainers_and_kills_never_duplicate_a_row(seaweed_server, seaweed_env, tmp_path: Path) -> None:
    """``URSA_STRESS_ROUNDS`` rounds (see the module docstring): exactly one row per key, bytes exact,
    no writer failing a good session because of a peer."""
    failed: list[dict[str, Any]] = []
    for rnd in range(ROUNDS):
        seed = BASE_SEED + rnd
        try:
            info = one_round(seaweed_server, tmp_path / f"round{rnd}", rnd, seed)
        except AssertionError as exc:
            pytest.fail(f"round {rnd} (URSA_STRESS_SEED={seed}): {exc}", pytrace=False)
        summary = {k: v for k, v in info.items() if k != "failure"}
        print(f"exactly-once round {rnd}: {'FAILED' if 'failure' in info else 'ok'} {json.dumps(summary)}", flush=True)
        if "failure" in info:
            if KEEP_GOING:
                print("  " + info["failure"][:6000].replace("\n", "\n  "), flush=True)
            failed.append(info)
            if not KEEP_GOING:
                break
    if failed:
        head = f"{len(failed)} of {rnd + 1} rounds failed (seeds {[f['seed'] for f in failed]})"
        pytest.fail(head + "; the first:\n" + failed[0]["failure"], pytrace=False)
