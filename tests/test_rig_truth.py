"""What one rig says is true and complete (issue 23), through the real ``ursa-daemon run`` process.

- ``status --json`` and the ``session.paused`` line say why a session is paused (flag file,
  writes in a session without a manifest, outside the upload window), and every
  ``daemon.paused`` is paired by a ``daemon.resumed``;
- ``bytes_done`` means one thing (bytes of the session confirmed in the store) in every event
  and in ``status``, and only grows across a pause and a resume; the rate after a resume counts
  only the bytes that move (under the bandwidth cap, never the kept ones);
- ``ursa_rig_recording`` follows the flag file within a second, not on the 5 s heartbeat;
- the idle re-exec that sheds memory is invisible to monitoring: ``/metrics`` answers
  throughout, its counters carry on, and no ``daemon.stopped``/``metrics.stopped`` is logged.
"""

from __future__ import annotations

import json
import os
import random
import struct
import tempfile
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import _free_port, local_config_dict, s3_config_dict
from harness import DaemonProc, age, cli, scrape_metrics, write_session
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ursa_daemon.cli.demo import make_sample_session

MiB = 1 << 20
CAP = 2_000_000  # bytes per second: upload.bandwidth_bytes_per_s of the slow sessions
HEARTBEAT_S = 5.0  # watch.HEARTBEAT_S: how often the state's "active" was written before


def write_config(tmp: Path, doc: dict[str, Any], **sections: Any) -> Path:
    """``doc`` with short settle and rescans, and ``sections`` merged over per top-level key."""
    doc = {**doc, "watch": {"settle_seconds": 0.2, "rescan_seconds": 1.0, "retry_check_seconds": 0.5}}
    doc["activity"] = {"quiet_seconds": 0.0, "flag_file": str(tmp / "recording.flag")}
    for key, value in sections.items():
        doc[key] = {**doc.get(key, {}), **value}
    (tmp / "recordings").mkdir(parents=True, exist_ok=True)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def status(config: Path) -> dict[str, Any]:
    proc = cli(config, "status", "--json", timeout=60)
    assert proc.returncode == 0, proc.stderr
    doc: dict[str, Any] = json.loads(proc.stdout)
    return doc


def session_status(config: Path, rec_id: str) -> dict[str, Any] | None:
    return next((s for s in status(config)["sessions"] if s["rec_id"] == rec_id), None)


def named(event: str, rec_id: str | None = None) -> Any:
    return lambda e: e.get("event") == event and (rec_id is None or e.get("rec_id") == rec_id)


def slow_session(root: Path, rec_id: str, n: int = 6, size: int = MiB) -> Path:
    """``n`` files of ``size`` random bytes: ~n*size/CAP seconds under the cap."""
    rng = random.Random(rec_id)
    return write_session(root, rec_id, {f"eeg/{i:03d}.bin": rng.randbytes(size) for i in range(n)})


def pause_pairs(events: list[dict[str, Any]]) -> list[str]:
    """The ``daemon.paused``/``daemon.resumed`` events in order, checked to alternate from a pause."""
    seq = [e["event"] for e in events if e.get("event") in ("daemon.paused", "daemon.resumed")]
    for i, name in enumerate(seq):
        assert name == ("daemon.paused" if i % 2 == 0 else "daemon.resumed"), seq
    return seq


# -- why a session is paused -------------------------------------------------------------------


def _pause_by_flag(tmp: Path, config: Path, rec: Path) -> None:
    (tmp / "recording.flag").touch()


def _pause_by_writes(tmp: Path, config: Path, rec: Path) -> None:
    busy = tmp / "recordings" / "rec_20260601_120000_beef" / "eeg"  # the rig records a new session
    busy.mkdir(parents=True, exist_ok=True)
    (busy / "seg_000001.bin").write_bytes(b"x" * 1000)


@pytest.mark.parametrize(("reason", "cause", "quiet"), [("flag_file", _pause_by_flag, 0.0),
                                                       ("session_writes", _pause_by_writes, 2.0)])
def test_a_paused_session_says_why_and_each_daemon_pause_is_paired(
    tmp_path: Path, reason: str, cause: Any, quiet: float
) -> None:
    config = write_config(tmp_path, local_config_dict(tmp_path), activity={"quiet_seconds": quiet},
                          upload={"bandwidth_bytes_per_s": CAP, "max_concurrent_files": 1})
    rec = slow_session(tmp_path / "recordings", "rec_20260601_110000_aaaa")
    proc = DaemonProc(config, "run", log=tmp_path / "run.log")
    try:
        assert proc.wait_event(named("upload.file_done", rec.name)), proc.text()
        cause(tmp_path, config, rec)
        paused = proc.wait_event(named("session.paused", rec.name), timeout=30)
        assert paused is not None, proc.text()
        assert paused["reason"] == reason
        daemon_paused = next(e for e in proc.events if e.get("event") == "daemon.paused")
        assert daemon_paused["reason"] == reason
        doc = status(config)
        [s] = [s for s in doc["sessions"] if s["rec_id"] == rec.name]
        assert s["state"] == "paused" and s["pause_reason"] == reason, s
        assert s["bytes_done"] == paused["bytes_done"] and s["bytes_total"] == paused["bytes_total"] == 6 * MiB
        if reason == "flag_file":  # it stays paused while the flag is there
            assert doc["pause_reason"] == reason and doc["active"] is True, doc
            assert doc["bandwidth_cap_bytes_per_s"] == CAP  # the cap is told, as a cap
            text = cli(config, "status", timeout=60).stderr
            assert f"paused ({reason})" in text and "throttled" in text, text
            (tmp_path / "recording.flag").unlink()
        assert proc.wait_event(named("session.done", rec.name), timeout=60), proc.text()
        after = status(config)
        assert after["pause_reason"] is None and after["active"] is False, after
        [s] = [s for s in after["sessions"] if s["rec_id"] == rec.name]
        assert s["state"] == "registered" and s["pause_reason"] is None
    finally:
        rc = proc.stop()
    assert rc == 0, proc.text()
    seq = pause_pairs(proc.events)
    assert seq and len(seq) % 2 == 0, seq  # every pause ended with a resume
    resumed = [e for e in proc.events if e.get("event") == "daemon.resumed"]
    assert resumed[0]["reason"] == reason and resumed[0]["paused_s"] >= 0
    assert [e["event"] for e in proc.events].count("daemon.stopped") == 1


def tz_file(path: Path, offset_s: int) -> Path:
    """A time zone (TZif, as in /usr/share/zoneinfo) ``offset_s`` seconds east of UTC: the libc and
    Python's zoneinfo read it from ``TZ=<path>``, so a daemon's local time can be set to the second."""
    abbr = b"LAB\x00"
    block = b"TZif2" + b"\x00" * 15 + struct.pack(">6l", 0, 0, 0, 0, 1, len(abbr)) + struct.pack(">lBB", offset_s, 0, 0)
    footer = f"\n<LAB>-00:{offset_s // 60:02d}:{offset_s % 60:02d}\n".encode()
    path.write_bytes(block + abbr + block + abbr + footer)
    return path


def test_outside_the_upload_window_the_pause_says_upload_window(tmp_path: Path) -> None:
    # the daemon's local time is ~12 s before the end of a minute when it starts: the window is
    # that minute, so it closes in the middle of the upload
    offset = (48 - int(time.time()) % 60) % 60
    local = datetime.now(UTC) + timedelta(seconds=offset)
    start = local.replace(second=0, microsecond=0)
    window = f"{start:%H:%M}-{start + timedelta(minutes=1):%H:%M}"
    config = write_config(tmp_path, local_config_dict(tmp_path),
                          upload={"bandwidth_bytes_per_s": CAP, "max_concurrent_files": 1, "windows": [window]})
    rec = slow_session(tmp_path / "recordings", "rec_20260601_130000_bbbb", n=40)  # ~20 s at the cap
    tz = tz_file(tmp_path / "lab-tz", offset)
    proc = DaemonProc(config, "run", env={"TZ": str(tz)}, log=tmp_path / "run.log")
    try:
        paused = proc.wait_event(named("session.paused", rec.name), timeout=40)
        assert paused is not None, proc.text()
        assert paused["reason"] == "upload_window"
        assert 0 < paused["bytes_done"] < paused["bytes_total"] == 40 * MiB
        assert proc.wait_event(named("daemon.paused"), timeout=5) or any(
            e.get("event") == "daemon.paused" for e in proc.events)
        [daemon_paused] = [e for e in proc.events if e.get("event") == "daemon.paused"]
        assert daemon_paused["reason"] == "upload_window"
        doc = status(config)
        [s] = [s for s in doc["sessions"] if s["rec_id"] == rec.name]
        assert (s["state"], s["pause_reason"], s["bytes_done"]) == ("paused", "upload_window", paused["bytes_done"])
        assert doc["pause_reason"] == "upload_window" and doc["active"] is False, doc
    finally:
        rc = proc.stop()
    assert rc == 0, proc.text()
    assert pause_pairs(proc.events) == ["daemon.paused"]  # still outside the window at the stop


# -- bytes_done: one meaning, only growing -----------------------------------------------------

SIZES = st.lists(st.sampled_from([0, 700, 300_000, 1 * MiB + 17, 3 * MiB]), min_size=1, max_size=3)


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest) -> Any:
    """A function making a config mapping for a directory: the local profile, or moto's S3."""
    if request.param == "local":
        return local_config_dict
    server = request.getfixturevalue("moto_server")
    request.getfixturevalue("s3_env")
    raw, assets = request.getfixturevalue("s3_buckets")
    return lambda root: s3_config_dict(server.endpoint, raw, assets, root)


@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(small=SIZES, big=st.integers(16 * MiB, 19 * MiB), seed=st.integers(0, 2**32 - 1))
def test_bytes_done_is_one_figure_that_only_grows_across_a_pause(
    backend: Any, small: list[int], big: int, seed: int
) -> None:
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as d:
        _bytes_done_across_a_pause(Path(d), backend, small, big, seed)


def _bytes_done_across_a_pause(tmp: Path, backend: Any, small: list[int], big: int, seed: int) -> None:
    # one file at a time, two parts at once: the big file's first parts are confirmed (S3) or
    # copied (local) seconds before its last ones
    config = write_config(tmp, backend(tmp), upload={"bandwidth_bytes_per_s": CAP, "max_concurrent_files": 1,
                                                     "part_size_bytes": 5 * MiB})
    rng = random.Random(seed)
    files = {f"eeg/s{i}.bin": rng.randbytes(n) for i, n in enumerate(small)}
    files["camera_0/big.bin"] = rng.randbytes(big)  # 4 parts on S3, a kept partial copy locally
    rec_id = f"rec_20260601_140000_{seed:08x}"
    write_session(tmp / "recordings", rec_id, files)
    total = sum(len(b) for b in files.values())
    seen: list[dict[str, Any]] = []
    stop = threading.Event()

    def watch() -> None:  # what status says, as often as it can be asked
        while not stop.is_set():
            s = session_status(config, rec_id)
            if s is not None:
                seen.append(s)

    proc = DaemonProc(config, "run", log=tmp / "run.log")
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(s["bytes_done"] >= 5 * MiB for s in seen[-3:]):
            time.sleep(0.05)  # a part (or a slice of the copy) is in the store: pause now
        (tmp / "recording.flag").touch()
        paused = proc.wait_event(named("session.paused", rec_id), timeout=30)
        assert paused is not None, proc.text()
        time.sleep(0.3)
        now = session_status(config, rec_id)
        assert now is not None and now["state"] == "paused"
        assert now["bytes_done"] == paused["bytes_done"] > 0, (now, paused)  # the same figure, the truth
        resumed_at = len(seen)
        (tmp / "recording.flag").unlink()
        done = proc.wait_event(named("session.done", rec_id), timeout=90)
        assert done is not None, proc.text()
    finally:
        stop.set()
        watcher.join(timeout=30)
        rc = proc.stop()
    assert rc == 0, proc.text()
    mine = [e for e in proc.events if e.get("rec_id") == rec_id and "bytes_done" in e
            and e["event"] in ("upload.file_done", "session.paused", "upload.session_done", "session.done")]
    figures = [e["bytes_done"] for e in mine]
    assert figures == sorted(figures), [(e["event"], e["bytes_done"]) for e in mine]  # never back
    assert all(e["bytes_total"] == total for e in mine)
    last_file = [e for e in mine if e["event"] == "upload.file_done"][-1]
    session_done = next(e for e in mine if e["event"] == "upload.session_done")
    assert last_file["bytes_done"] == session_done["bytes_done"] == done["bytes_done"] == total
    confirmed = [s["bytes_done"] for s in seen]
    assert confirmed == sorted(confirmed), confirmed  # status never goes back either
    final = session_status(config, rec_id)
    assert final is not None and (final["state"], final["bytes_done"], final["bytes_total"]) == (
        "registered", total, total)
    # after the resume the rate counts the bytes that move, under the cap: not the kept ones
    rates = [s["rate_bytes_per_s"] for s in seen[resumed_at:] if s["state"] == "uploading" and s["rate_bytes_per_s"]]
    assert all(r <= 2 * CAP for r in rates), rates
    for s in seen[resumed_at:]:
        if s["state"] == "uploading" and s["eta_s"] is not None:
            left = s["bytes_total"] - s["bytes_done"] - s["bytes_sending"]
            assert s["eta_s"] >= left / (2 * CAP) - 0.5, s


# -- the metrics: ursa_rig_recording, and the idle re-exec ---------------------------------------


def scrape(url: str, timeout: float = 10.0) -> dict[str, float]:
    return scrape_metrics(url, timeout)


def at(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def test_rig_recording_follows_the_flag_file_within_a_second(tmp_path: Path) -> None:
    port = _free_port()
    config = write_config(tmp_path, local_config_dict(tmp_path), metrics={"enabled": True, "port": port})
    url = f"http://127.0.0.1:{port}/metrics"
    proc = DaemonProc(config, "run", log=tmp_path / "run.log")
    try:
        started = proc.wait_event(named("daemon.started"))
        assert started is not None, proc.text()
        assert scrape(url)["ursa_rig_recording"] == 0.0
        for _ in range(2):
            # just after a heartbeat (every 5 s from the start): the next one is ~4.5 s away
            beat = at(started) + HEARTBEAT_S * (int((time.time() - at(started)) / HEARTBEAT_S) + 1)
            time.sleep(max(0.0, beat + 0.5 - time.time()))
            flagged = time.time()
            (tmp_path / "recording.flag").touch()
            seen_at = None
            while time.time() - flagged < 3.0:
                if scrape(url)["ursa_rig_recording"] == 1.0:
                    seen_at = time.time()
                    break
                time.sleep(0.05)
            assert seen_at is not None, proc.text()
            assert seen_at < beat + HEARTBEAT_S, (seen_at - flagged)  # before the heartbeat would have
            assert status(config)["active"] is True
            (tmp_path / "recording.flag").unlink()
            unflagged = time.time()
            while scrape(url)["ursa_rig_recording"] != 0.0:
                assert time.time() - unflagged < 3.0, proc.text()
                time.sleep(0.05)
    finally:
        rc = proc.stop()
    assert rc == 0, proc.text()
    assert pause_pairs(proc.events) == ["daemon.paused", "daemon.resumed"] * 2
    assert all(e["reason"] == "flag_file" for e in proc.events if e.get("event") == "daemon.paused")


def test_the_idle_reexec_is_invisible_to_monitoring(tmp_path: Path) -> None:
    port = _free_port()
    config = write_config(tmp_path, local_config_dict(tmp_path), metrics={"enabled": True, "port": port},
                          watch={"shed_after_idle_seconds": 1})
    url = f"http://127.0.0.1:{port}/metrics"
    proc = DaemonProc(config, "run", log=tmp_path / "run.log")
    scrapes: list[tuple[float, float, float | None, str | None]] = []  # (start, end, uploaded, error)
    stop = threading.Event()

    def scraper() -> None:
        while not stop.is_set():
            t0 = time.time()
            try:
                value: float | None = scrape(url).get("ursa_uploaded_bytes_total")
                error = None
            except (OSError, urllib.error.URLError) as exc:
                value, error = None, repr(exc)
            scrapes.append((t0, time.time(), value, error))
            time.sleep(0.05)

    thread = threading.Thread(target=scraper, daemon=True)
    try:
        assert proc.wait_event(named("daemon.started")), proc.text()
        pid = proc.proc.pid
        rec = make_sample_session(tmp_path / "recordings")
        age(rec)
        assert proc.wait_event(named("session.done", rec.name), timeout=60), proc.text()
        before = scrape(url)
        uploaded = before["ursa_uploaded_bytes_total"]
        assert uploaded > 0 and before["ursa_sessions_registered_total"] == 1.0
        thread.start()
        shed = proc.wait_event(named("daemon.shed"), timeout=30)
        shed_done = proc.wait_event(named("daemon.shed_done"), timeout=30)
        assert shed is not None and shed_done is not None, proc.text()
        time.sleep(1.0)  # and a while after
        stop.set()
        thread.join(timeout=30)
        assert proc.proc.poll() is None and proc.proc.pid == pid
        after = scrape(url)
    finally:
        stop.set()
        rc = proc.stop()
    assert rc == 0, proc.text()
    errors = [s for s in scrapes if s[3] is not None]
    assert not errors, errors  # never refused, never cut
    across = [s for s in scrapes if s[0] <= at(shed_done) and s[1] >= at(shed)]
    assert across, (scrapes, at(shed), at(shed_done))  # scrapes were asked while the image was replaced
    assert {s[2] for s in scrapes} == {uploaded}  # the counter carried on: no reset
    assert after["ursa_uploaded_bytes_total"] == uploaded and after["ursa_sessions_registered_total"] == 1.0
    names = [e.get("event") for e in proc.events]
    took_over = names.index("daemon.shed_done")
    assert names.index("daemon.shed") < took_over
    for name in ("daemon.stopped", "metrics.stopped"):  # the real stop only, once, after it all
        assert names.count(name) == 1 and names.index(name) > took_over, names
    assert names.count("daemon.started") == 1 and names.count("metrics.serving") == 1, names
