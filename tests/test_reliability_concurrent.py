"""Concurrent writers: two daemons into one catalog, two processes on one state_dir, one session twice.

moto checks ``If-None-Match`` and then writes, not atomically, so these tests show
that Lance's conditional-commit retries work and no row is lost under contention on
this server; they cannot prove the store's atomicity (R2 and S3 provide it; see
the README's Guarantees section).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any

from harness import DaemonProc, cli, make_config, random_session, write_session
from invariants import check_invariants


def test_two_daemons_on_two_roots_register_into_one_catalog_without_losing_a_row(
    moto_server, s3_buckets, s3_env, tmp_path: Path
) -> None:
    rng = random.Random(21)
    cfgs = [make_config(tmp_path, moto_server.endpoint, *s3_buckets, name=f"rig{i}.yaml", state=f"state{i}",
                        root=f"rig{i}") for i in range(2)]
    sessions = [[random_session(rng, tmp_path / f"rig{i}", 10 * i + n, big=False) for n in range(5)]
                for i in range(2)]
    procs = [DaemonProc(cfg, "run", log=tmp_path / f"rig{i}.log") for i, cfg in enumerate(cfgs)]
    try:
        for proc, mine in zip(procs, sessions, strict=True):
            want = {s.name for s in mine}
            got: set[str] = set()
            while got < want:
                ev = proc.wait_event(lambda e: e.get("event") in ("session.registered", "session.failed",
                                                                   "session.rejected"), timeout=120)
                assert ev is not None and ev["event"] == "session.registered", proc.text()
                got.add(ev["rec_id"])
    finally:
        codes = [p.stop() for p in procs]
    assert codes == [0, 0], [p.text() for p in procs]
    everything = [s for mine in sessions for s in mine]
    rep = check_invariants(cfgs[0], valid=everything)
    assert len(rep.registered) == 10


def test_drain_and_run_on_one_state_dir_the_second_exits_3(moto_server, s3_buckets, s3_env, tmp_path: Path) -> None:
    cfg = make_config(tmp_path, moto_server.endpoint, *s3_buckets, upload={"bandwidth_bytes_per_s": 2_000_000})
    rec = write_session(tmp_path / "recordings", "rec_20260106_000000_aaaa", {"eeg/a.bin": os.urandom(3 << 20)})
    drain = DaemonProc(cfg, "drain")
    try:
        assert drain.wait_event(lambda e: e.get("event") == "session.hashing"), drain.text()
        second = cli(cfg, "run", timeout=60)
        assert second.returncode == 3, second.stderr[-2000:]
        assert "state lock" in second.stderr
        assert drain.wait() == 0, drain.text()
    finally:
        if drain.proc.poll() is None:
            drain.kill()
    check_invariants(cfg, valid=[rec])


def test_same_session_ingested_twice_at_once_registers_once(moto_server, s3_env, tmp_path: Path) -> None:
    """The rig's daemon and an operator's ``ingest`` (own state) take the same session at the same moment,
    on a fresh store each round: they also race to create the catalog's tables and indexes."""
    _ingest_twice_at_once(moto_server.client(), moto_server.endpoint, tmp_path, rounds=2, seed=5)


def test_same_session_ingested_twice_at_once_registers_once_on_seaweed(
    seaweed_server, seaweed_env, tmp_path: Path
) -> None:
    """The same race on SeaweedFS, whose ``If-None-Match: *`` PUTs are atomic: here exactly-once
    registration is proven, not only exercised (``URSA_RACE_ROUNDS`` runs more rounds)."""
    rounds = int(os.environ.get("URSA_RACE_ROUNDS", "2"))
    _ingest_twice_at_once(seaweed_server.client(), seaweed_server.endpoint, tmp_path, rounds=rounds, seed=9)


def _ingest_twice_at_once(client: Any, endpoint: str, tmp_path: Path, *, rounds: int, seed: int) -> None:
    rng = random.Random(seed)
    for n in range(rounds):
        raw, assets = f"raw-twice-{os.getpid()}-{n}", f"assets-twice-{os.getpid()}-{n}"
        client.create_bucket(Bucket=raw)
        client.create_bucket(Bucket=assets)
        base = tmp_path / f"round{n}"
        base.mkdir()
        cfg = make_config(base, endpoint, raw, assets)
        other = make_config(base, endpoint, raw, assets, name="laptop.yaml", state="laptop-state")
        rec = write_session(base / "recordings", f"rec_20260107_00000{n % 10}_aaaa",
                            {f"eeg/{i}.bin": rng.randbytes(100_000) for i in range(6)}, participant="Aria Lin")
        a = DaemonProc(cfg, "drain", "--json")
        b = DaemonProc(other, "ingest", str(rec), "--json")
        assert (a.wait(), b.wait()) == (0, 0), (a.text()[-3000:], b.text()[-3000:])
        check_invariants(cfg, valid=[rec])
        again = json.loads(cli(cfg, "drain", "--json").stdout)
        assert again["already_registered"] == [rec.name] and again["bytes_uploaded"] == 0


def test_processes_opening_a_new_state_database_at_once_all_get_it(tmp_path: Path) -> None:
    """``status`` polling while ``drain`` starts: both create and migrate the same new database.
    Each opener reads the schema version inside its own write transaction, so one migrates and
    the others find it done (before, the second ran ``CREATE TABLE`` again and failed)."""
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; from ursa_daemon.daemon.state import StateDB; "
        "db = StateDB(Path(sys.argv[1])); db.counts(); db.close()"
    )
    for round_ in range(3):
        state = tmp_path / f"state{round_}"
        procs = [subprocess.Popen([sys.executable, "-c", code, str(state)], stderr=subprocess.PIPE, text=True)
                 for _ in range(6)]
        errors = [p.communicate(timeout=60)[1] for p in procs]
        assert [p.returncode for p in procs] == [0] * 6, errors
        from ursa_daemon.daemon.state import StateDB
        from ursa_daemon.daemon.state_schema import MIGRATIONS

        db = StateDB(state)
        assert db._conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        db.close()
