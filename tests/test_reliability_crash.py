"""Crash injection: SIGKILL the real daemon at seeded moments, restart it, and check the invariants.

``URSA_RELIAB_KILLS`` (default 30) and ``URSA_RELIAB_SEED`` (default 7) change the run; a
failure prints the seed and every kill (phase, delay, command) so it can be replayed.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from harness import DaemonProc, cli, make_config, random_session, write_session
from invariants import check_invariants

from ursa_daemon.api import DataInterface
from ursa_daemon.config import load_config

KILLS = int(os.environ.get("URSA_RELIAB_KILLS", "30"))
SEED = int(os.environ.get("URSA_RELIAB_SEED", "7"))

#: phase -> (seconds after the trigger event: low, high)
PHASES = {
    "hashing": (0.0, 0.004),  # right after session.queued: the daemon is hashing
    "uploading": (0.9, 1.1),  # after a big session's session.hashing: its multipart upload is open
    # (the first 5 MiB part is read by 0.87 s at 6 MB/s; a 6-9 MiB file takes 1.05-1.6 s)
    "manifest": (0.0, 0.01),  # after the session's last file: participant + manifest PUTs
    "catalog": (0.0, 0.25),  # after upload.session_done: the catalog commits (a quiet drain is done by ~0.3 s)
}


class _Tracker:
    """Per session, how far the followed process got: the phase a kill lands in."""

    def __init__(self, totals: dict[str, int]) -> None:
        self.totals = totals
        self.files: dict[str, int] = {}
        self.phase: dict[str, str] = {}
        self.current: str | None = None
        #: the session whose event started the aimed phase: a kill is judged by where *it* was
        #: (``run`` may already be hashing the next session while this one's rows commit)
        self.aimed: str | None = None
        self.registered: set[str] = set()
        #: sessions with a multipart-sized file: an "uploading" kill aims inside its multipart upload
        self.big: set[str] = set()

    def feed(self, ev: dict) -> None:
        rec_id, event = ev.get("rec_id"), ev.get("event")
        if not rec_id:
            return
        if event == "session.queued":
            self.current, self.files[rec_id], self.phase[rec_id] = rec_id, 0, "hashing"
        elif event == "session.hashing":
            self.phase[rec_id] = "uploading"
        elif event in ("upload.file_done", "upload.file_skipped"):
            self.files[rec_id] = self.files.get(rec_id, 0) + 1
            if self.files[rec_id] >= self.totals[rec_id]:
                self.phase[rec_id] = "manifest"
        elif event == "upload.session_done":
            self.phase[rec_id] = "catalog"
        elif event == "session.registered":
            self.phase[rec_id] = "after"
            self.registered.add(rec_id)

    def trigger(self, want: str, ev: dict, batch_last: str | None) -> bool:
        """Feed ``ev``; True when it starts the phase ``want``.

        ``drain`` registers in one batch after its last session's upload: there, the
        catalog phase starts with ``batch_last``'s ``upload.session_done``.
        """
        rec_id = ev.get("rec_id", "")
        before = self.phase.get(rec_id)
        self.feed(ev)
        after = self.phase.get(rec_id)
        if want == "uploading" and ev.get("event") == "session.hashing":
            started = rec_id in self.big
        elif want == "catalog" and batch_last is not None and rec_id != batch_last:
            started = False
        else:
            started = after == want and before != want
        if started:
            self.aimed = rec_id
        return started

    def now(self) -> str:
        """The phase the aimed session is in (else the session being worked on)."""
        return self.phase.get(self.aimed or self.current or "", "idle")


def test_sigkill_at_random_moments_loses_nothing_and_registers_once(moto_server, s3_buckets, s3_env,
                                                                    tmp_path: Path) -> None:
    rng = random.Random(SEED)
    config = make_config(tmp_path, moto_server.endpoint, *s3_buckets,
                         upload={"bandwidth_bytes_per_s": 6_000_000, "max_concurrent_files": 2})
    root = tmp_path / "recordings"
    sessions: list[Path] = []
    totals: dict[str, int] = {}

    def add_batch() -> None:
        for _ in range(3):
            rec = random_session(rng, root, len(sessions), big=rng.random() < 0.6)
            sessions.append(rec)
            totals[rec.name] = sum(1 for p in rec.rglob("*") if p.is_file() and p.parent != rec)
            if any(rec.glob("*/big.bin")):
                tracker.big.add(rec.name)

    tracker = _Tracker(totals)
    add_batch()
    kills: list[tuple[str, str, float, str]] = []  # (aimed phase, phase hit, delay, command)
    runs = 0
    while len(kills) < KILLS:
        if tracker.registered >= {s.name for s in sessions}:
            add_batch()
        runs += 1
        command = "run" if runs % 3 == 0 else "drain"
        aim = rng.choice(list(PHASES))
        delay = rng.uniform(*PHASES[aim])
        proc = DaemonProc(config, command, log=tmp_path / "daemon.log")
        pending = {s.name for s in sessions} - tracker.registered
        batch_last = max(pending) if command == "drain" else None

        def hit(ev: dict, aim: str = aim, pending: set[str] = pending, last: str | None = batch_last,
                command: str = command) -> bool:
            if tracker.trigger(aim, ev, last):
                return True
            return command == "run" and tracker.registered >= pending  # run never exits by itself

        ev = proc.wait_event(hit, timeout=120)
        if ev is None or ev.get("event") == "session.registered" and tracker.registered >= pending:
            assert (proc.stop() if command == "run" else proc.wait()) in (0, 1), proc.text()
            continue
        if delay:
            # keep following the log while the delay runs, so the phase we record is the real one
            proc.wait_event(lambda e: bool(tracker.feed(e)), timeout=delay)
        proc.kill()
        proc.wait_event(lambda e: bool(tracker.feed(e)), timeout=10)  # what it logged before it died
        kills.append((aim, tracker.now(), round(delay, 3), command))

    # left to finish: one clean drain registers everything that is left
    final = cli(config, "drain", "--json")
    assert final.returncode == 0, final.stderr[-3000:]
    summary = json.loads(final.stdout)
    assert not summary["failed"] and not summary["rejected"], summary
    hit_phases = {p for _, p, _, _ in kills}
    report = f"seed {SEED}, {len(kills)} kills over {runs} runs: {kills}"
    print(report)  # shown with -s or on failure
    assert {"hashing", "uploading", "manifest", "catalog"} <= hit_phases, report
    try:
        rep = check_invariants(config, valid=sessions)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{report}") from None
    assert set(rep.registered) == {s.name for s in sessions}, report
    status = json.loads(cli(config, "status", "--json").stdout)
    assert status["counts"] == {"registered": len(sessions)}, status


def test_crash_between_catalog_tables_recovers_to_one_registration(moto_server, s3_buckets, s3_env,
                                                                    tmp_path: Path) -> None:
    """The test-only hook SIGKILLs the daemon right after one table's commit: after participants,
    then (on the restart) after modalities, then after recordings. A last restart finishes the job."""
    config = make_config(tmp_path, moto_server.endpoint, *s3_buckets)
    root = tmp_path / "recordings"
    rec = write_session(root, "rec_20260102_000000_c0ffee", {"eeg_a/x.bin": b"x" * 1000, "eeg_b/y.bin": b"y" * 10,
                                                             "mic/z.bin": b""}, participant="Zoë Ünal")
    for table, rows in (("participants", (1, 0, 0)), ("modalities", (1, 3, 0)), ("recordings", (1, 3, 1))):
        run = DaemonProc(config, "drain", env={"URSA_TEST_CRASH_AFTER_TABLE": table})
        assert run.wait() == -9, run.text()
        assert not any(e.get("event") == "session.registered" for e in run.events)
        data = DataInterface(config=load_config(config))
        got = (len(data.list_participants()), len(data.list_modalities()), len(data.list_recordings()))
        assert got == rows, (table, got)
        # a query shows nothing until the recording row, the last commit, is there
        assert bool(data.query(rec_id=rec.name)) == (table == "recordings")

    again = cli(config, "drain", "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(again.stdout)["registered"] == [rec.name]
    check_invariants(config, valid=[rec])
    # exactly once: a third pass commits nothing
    versions = DataInterface(config=load_config(config)).catalog.table_versions()
    third = json.loads(cli(config, "drain", "--json").stdout)
    assert third["already_registered"] == [rec.name]
    assert DataInterface(config=load_config(config)).catalog.table_versions() == versions
