"""``run``'s start and rescans do not grow with the rig's history (issue 25; figures:
tests/bench/daemon_idle.py), and a done session that changes is still seen.

Behaviour, not time: the scan of a root full of registered sessions opens and stats nothing
inside them and lists nothing but the root; inotify watches the root, not every session; the
deep check (a few sessions per tick) still finds a changed file in any registered or rejected
session, and such a session is worked on again.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import local_config_dict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ursa_daemon.config import config_from_dict
from ursa_daemon.daemon import Daemon
from ursa_daemon.daemon.activity import Activity
from ursa_daemon.daemon.state_schema import SessionState
from ursa_daemon.daemon.watch import Runner
from ursa_daemon.session import tree_signature

_ids = itertools.count()


def _session(root: Path, n_files: int, *, manifest: bool = True) -> Path:
    rec = root / f"rec_20260101_000000_{next(_ids):06x}"
    for i in range(n_files):
        sub = rec / ("eeg" if i % 2 else "video") / f"d{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i}.bin").write_bytes(os.urandom(16 + i))
    rec.mkdir(parents=True, exist_ok=True)
    if manifest:
        (rec / "manifest.json").write_text(json.dumps({"recording_id": rec.name}))
    return rec


def _done(daemon: Daemon, rec: Path, state: SessionState = SessionState.REGISTERED) -> None:
    """As if ``rec`` had been worked on: its row, in ``state``, with its signature now."""
    daemon.state.upsert_session(rec.name, str(rec.parent), state, signature=tree_signature(rec)[1])


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    tmp = tmp_path_factory.mktemp("scale")
    doc: dict[str, Any] = {**local_config_dict(tmp), "watch": {"settle_seconds": 0.0, "rescan_seconds": 1.0}}
    (tmp / "recordings").mkdir()
    with Daemon(config_from_dict(doc, base_dir=tmp), activity=Activity(quiet_seconds=1.0), offline_ok=True) as d:
        yield d


def _clean(daemon: Daemon) -> Path:
    """An empty root and state: each example starts from nothing."""
    root = Path(daemon.config.recordings_root)
    for rec in root.iterdir():
        shutil.rmtree(rec)
    for r in daemon.state.sessions():
        daemon.state.forget(r.rec_id)
    return root


class _Spy:
    """Counts the syscalls that look at or into a path, by path."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, str]] = []
        for name in ("stat", "lstat", "scandir", "listdir", "open", "readlink"):
            real = getattr(os, name)
            monkeypatch.setattr(os, name, self._wrap(name, real))
        real_open = open
        monkeypatch.setattr("builtins.open", self._wrap("builtins.open", real_open))

    def _wrap(self, name: str, real: Any) -> Any:
        def spy(path: Any = ".", *args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, os.fsdecode(path) if isinstance(path, str | bytes | os.PathLike) else str(path)))
            return real(path, *args, **kwargs)

        return spy

    def inside(self, rec: Path) -> list[tuple[str, str]]:
        return [c for c in self.calls if c[1] == str(rec) or c[1].startswith(str(rec) + os.sep)]


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 40), files=st.integers(1, 6), rejected=st.integers(0, 3))
def test_the_scan_of_a_root_of_done_sessions_looks_inside_none(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch, n: int, files: int, rejected: int
) -> None:
    root = _clean(daemon)
    recs = [_session(root, files) for _ in range(n)]
    for i, rec in enumerate(recs):
        _done(daemon, rec, SessionState.REJECTED if i < rejected else SessionState.REGISTERED)
    runner = Runner(daemon)
    with monkeypatch.context() as m:
        spy = _Spy(m)
        runner._full_scan()
    for rec in recs:
        assert spy.inside(rec) == [], spy.inside(rec)
    assert [c for c in spy.calls if c[0] == "scandir"] == [("scandir", str(root))]
    assert runner.last_change == {}
    # the first deep cycle: rejected ones first, then the newest, each one once
    order = list(runner.deep.queue)
    assert order == sorted((r.name for r in recs[:rejected]), reverse=True) + sorted(
        (r.name for r in recs[rejected:]), reverse=True
    )


def _modify(rec: Path, how: str, pick: int) -> None:
    files = sorted(p for p in rec.rglob("*") if p.is_file() and p.name != "manifest.json")
    f = files[pick % len(files)]
    if how == "append":
        with f.open("ab") as fh:
            fh.write(b"x")
    elif how == "same_size":  # other bytes, same size: only its mtime says so (set in the past here)
        before = f.stat()
        f.write_bytes(bytes(b ^ 0xFF for b in f.read_bytes()))
        os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns - 7_000_000_000))
    elif how == "add":
        (f.parent / "new.bin").write_bytes(b"new")
    elif how == "remove":
        f.unlink()
    elif how == "rename":
        f.rename(f.with_name("renamed.bin"))
    elif how == "manifest":  # the operator fixes a rejected session's manifest
        m = rec / "manifest.json"
        m.write_text(m.read_text() + " ")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(1, 25),
    files=st.integers(1, 5),
    which=st.integers(0, 10**6),
    how=st.sampled_from(["append", "same_size", "add", "remove", "rename", "manifest"]),
    pick=st.integers(0, 100),
    state=st.sampled_from([SessionState.REGISTERED, SessionState.REJECTED]),
)
def test_a_changed_file_in_a_done_session_is_found_by_the_deep_check(
    daemon: Daemon, n: int, files: int, which: int, how: str, pick: int, state: SessionState
) -> None:
    root = _clean(daemon)
    recs = [_session(root, files) for _ in range(n)]
    for rec in recs:
        _done(daemon, rec, state)
    changed = recs[which % n]
    _modify(changed, how, pick)
    runner = Runner(daemon)
    runner._full_scan()
    assert runner.last_change == {}  # the scan itself looked inside none
    runner.deep.budget_s = 0.0  # one session per tick: the slowest machine's pace
    runner.deep.not_before = 0.0  # (it waits a rescan after a start)
    ticks = 0
    while runner.deep.queue:
        assert runner.deep.step(runner._deep_check) == 1
        ticks += 1
    assert ticks == n  # each one once per cycle
    assert set(runner.last_change) == {changed}
    assert runner.rescan_due.is_set()  # (a start's rescan is due; a rescan begins the next cycle)
    assert runner._next_session() == changed  # settled (settle 0): worked on again
    assert runner.deep.cycles == 2


def test_run_watches_the_root_not_the_history_and_a_new_session_inside(daemon: Daemon) -> None:
    root = _clean(daemon)
    for _ in range(30):
        _done(daemon, _session(root, 3))
    runner = Runner(daemon)
    seen: dict[str, object] = {}

    def rig() -> None:  # runs beside ``run`` (which must have the main thread: it installs signal handlers)
        try:
            deadline = time.monotonic() + 10
            while runner.live is None and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(0.3)
            seen["watched_at_start"] = len(runner.live or ())  # no session of the history is watched
            rec = root / "rec_20270101_000000_beef"  # the rig records a new one
            (rec / "eeg").mkdir(parents=True)
            while rec not in (runner.live or ()) and time.monotonic() < deadline:
                time.sleep(0.02)
            seen["new_watched"] = rec in (runner.live or ())
            seen["paused_by_new"] = daemon.should_pause()
            while daemon.should_pause() and time.monotonic() < deadline:
                time.sleep(0.05)  # quiet for quiet_seconds
            seen["quiet"] = not daemon.should_pause()
            (rec / "eeg" / "seg.bin").write_bytes(b"x" * 100)  # a write deep inside is seen
            while not daemon.should_pause() and time.monotonic() < deadline:
                time.sleep(0.02)
            seen["paused_by_write"] = daemon.should_pause()
        finally:
            daemon.stopping.set()

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    daemon.stopping.clear()
    helper = threading.Thread(target=rig, daemon=True)
    try:
        helper.start()
        runner.run()
    finally:
        daemon.stopping.set()
        helper.join(timeout=10)
        for sig, h in handlers.items():
            signal.signal(sig, h)
        daemon.stopping.clear()
    assert seen == {"watched_at_start": 0, "new_watched": True, "paused_by_new": True, "quiet": True,
                    "paused_by_write": True}, seen


class _FakeObserver:
    def __init__(self) -> None:
        self.watched: set[str] = set()

    def schedule(self, handler: object, path: str, *, recursive: bool) -> str:
        assert recursive
        self.watched.add(path)
        return path

    def unschedule(self, watch: str) -> None:
        self.watched.remove(watch)


@settings(max_examples=30, deadline=None)
@given(order=st.permutations(range(8)), limit=st.integers(1, 5))
def test_live_watches_keep_the_newest_sessions_within_the_limit(tmp_path_factory: pytest.TempPathFactory,
                                                                order: list[int], limit: int) -> None:
    from ursa_daemon.daemon.rescan import LiveWatches

    root = tmp_path_factory.mktemp("live")
    recs = [root / f"rec_20260101_00000{i}_abcd" for i in range(8)]
    observer = _FakeObserver()
    live = LiveWatches(observer, handler=None, limit=limit)  # type: ignore[arg-type]
    for i in order:
        live.add(recs[i])
        assert len(observer.watched) == len(live) <= limit
    newest = {str(r) for r in recs[-limit:]}
    for rec in reversed(recs):  # as a rescan adds them: newest first, nothing older evicts a newer one
        live.add(rec)
    assert observer.watched == newest
    for rec in recs:
        live.discard(rec)
    assert observer.watched == set() and len(live) == 0
