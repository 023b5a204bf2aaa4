"""The fleet: each rig's status document in the store, ``ursa-daemon fleet`` reading them all,
the metrics a lab's Prometheus or node_exporter collects, and bugs made visible.

Real processes (``drain``, ``run``, ``fleet``) on the local profile and on SeaweedFS, where
``fleet`` runs with the read-only ``assets_ro`` identity alone, as on an engineer's laptop.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import MOTO_SECRET, _free_port, local_config_dict, seaweed_config_dict
from harness import DaemonProc, cli, parse_metrics, scrape_metrics, write_session
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ursa_daemon.cli.render import print_fleet
from ursa_daemon.config import config_from_dict
from ursa_daemon.daemon.fleet import FleetEntry, assess
from ursa_daemon.daemon.rigs import RIGS_PREFIX, RigReporter, iso, parse_iso, rig_key
from ursa_daemon.daemon.state import SessionState, StateDB
from ursa_daemon.store import get_store

GOOD = {"eeg/seg_000001.bin": os.urandom(50_000), "camera_0/seg_000001.mp4": os.urandom(80_000)}


def _config(tmp: Path, doc: dict[str, Any]) -> Path:
    doc.setdefault("watch", {"settle_seconds": 0.0, "rescan_seconds": 1.0, "retry_check_seconds": 0.5})
    doc.setdefault("activity", {"quiet_seconds": 0.0})
    (tmp / "recordings").mkdir(parents=True, exist_ok=True)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _sessions(root: Path) -> tuple[str, str]:
    good = "rec_20261201_100000_aaaa"
    bad = "rec_20261201_110000_bbbb"
    write_session(root, good, GOOD, participant="Aria Lin")
    write_session(root, bad, {"eeg/seg_000001.bin": b"x" * 100})
    (root / bad / "manifest.json").write_text("{ not json")
    return good, bad


def _fleet(config: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, Any, str]:
    proc = cli(config, "fleet", "--json", *args, env=env)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None, proc.stderr


def test_a_drain_writes_its_rig_document_and_fleet_reads_it_with_the_read_only_role(
    seaweed_server: Any, seaweed_buckets: tuple[str, str], seaweed_env: None, tmp_path: Path
) -> None:
    raw_b, assets_b = seaweed_buckets
    doc = seaweed_config_dict(seaweed_server, raw_b, assets_b, tmp_path)
    doc["rig_id"] = "rig-07"
    config = _config(tmp_path, doc)
    good, bad = _sessions(tmp_path / "recordings")
    creds = seaweed_server.credentials_env()
    done = cli(config, "drain", "--json", env=creds)
    assert done.returncode == 1, done.stderr  # one session rejected
    assert json.loads(done.stdout)["registered"] == [good]

    # a laptop: only the read-only identity's keys, no state, no recordings
    laptop = {k: v for k, v in creds.items() if k.startswith("URSA_ASSETS_RO_")}
    env = {**{k: "" for k in creds}, **laptop}
    rc, out, err = _fleet(config, env=env)
    assert rc == 0, err
    (rig,) = out["rigs"]
    assert rig["rig_id"] == "rig-07" and rig["host"] == socket.gethostname()
    assert rig["counts"] == {"registered": 1, "rejected": 1}
    assert rig["last_error"]["rec_id"] == bad and "manifest" in rig["last_error"]["error"]
    assert rig["last_registration_at"] and rig["written_at"] >= rig["started_at"]
    assert rig["running"] is False and rig["command"] == "drain"
    assert rig["stale"] is False  # a finished drain is not a rig gone silent
    assert rig["free_bytes"] > 0 and rig["pending_sessions"] == 0
    assert any("1 session(s) rejected" in r for r in rig["needs_attention"])
    for key in ("version", "pending_bytes", "oldest_pending", "recording", "paused", "upload_rate_bytes_per_s"):
        assert key in rig
    # the stored document carries no secret, and no fleet verdict
    stored = get_store(config_from_dict(doc, base_dir=tmp_path).active_profile, "assets_rw").get(rig_key("rig-07"))
    text = stored.decode()
    for secret in (v for k, v in creds.items() if k.endswith("_SECRET")):
        assert secret not in text
    assert "stale" not in json.loads(text) and "needs_attention" not in json.loads(text)

    rc, _, err = _fleet(config, "--check", env=env)
    assert rc == 1 and "rig-07: 1 session(s) rejected" in err

    # the read-only identity may read the fleet but not write a rig document
    ro = get_store(config_from_dict(doc, base_dir=tmp_path).active_profile, "assets_ro")
    from ursa_daemon.errors import StoreError

    with pytest.raises(StoreError):
        ro.put(rig_key("intruder"), b"{}")


def test_run_keeps_its_document_and_metrics_and_a_stop_says_so(tmp_path: Path) -> None:
    port = _free_port()
    doc = local_config_dict(tmp_path)
    doc["metrics"] = {"enabled": True, "port": port, "textfile": str(tmp_path / "tf" / "ursa.prom"),
                      "textfile_seconds": 1}
    config = _config(tmp_path, doc)
    good, bad = _sessions(tmp_path / "recordings")
    daemon = DaemonProc(config, "run")
    try:
        seen: set[str] = set()
        while seen != {"session.rejected", "session.done"}:  # in either order
            ev = daemon.wait_event(lambda e: e.get("event") in ("session.rejected", "session.done"), timeout=60)
            assert ev is not None, daemon.text()
            seen.add(ev["event"])
        started = next(e for e in daemon.events if e.get("event") == "daemon.started")
        rig_id = started["rig_id"]
        # the start wrote it; the fleet sees a running rig
        rc, out, err = _fleet(config)
        (rig,) = out["rigs"]
        assert rig["rig_id"] == rig_id and rig["running"] is True and rig["command"] == "run"
        assert rig["stale"] is False
        scraped = scrape_metrics(f"http://127.0.0.1:{port}/metrics")
        info = f'ursa_rig_info{{host="{socket.gethostname()}",rig_id="{rig_id}",version="{rig["version"]}"}}'
        assert scraped[info] == 1
        assert scraped["ursa_recordings_root_free_bytes"] > 0
        assert scraped["ursa_recordings_root_size_bytes"] >= scraped["ursa_recordings_root_free_bytes"]
        assert scraped["ursa_internal_errors_total"] == 0
        assert scraped["ursa_uploads_paused"] == 0
        assert "ursa_pending_bytes" in scraped
        # the textfile holds the same families, rewritten while the daemon lives
        prom = tmp_path / "tf" / "ursa.prom"
        deadline = time.monotonic() + 10
        while not prom.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        first = prom.stat().st_mtime_ns
        text_metrics = parse_metrics(prom.read_text())
        assert text_metrics.keys() >= {k for k in scraped if k.startswith(("ursa_sessions{", "ursa_rig_info"))}
        deadline = time.monotonic() + 10
        while prom.stat().st_mtime_ns == first and time.monotonic() < deadline:
            time.sleep(0.1)
        assert prom.stat().st_mtime_ns != first, "the textfile is rewritten every textfile_seconds"
        assert not [p for p in prom.parent.iterdir() if p.name != "ursa.prom"], "no temporary file left"
    finally:
        assert daemon.stop() == 0, daemon.text()
    rc, out, err = _fleet(config)
    (rig,) = out["rigs"]
    assert rig["running"] is False and rig["counts"] == {"registered": 1, "rejected": 1}
    # a stopped rig is stale once --stale-after has passed; --check names it
    rc, out, err = _fleet(config, "--check", "--stale-after", "0s")
    assert rc == 1 and out["rigs"][0]["stale"] is True
    assert f"{rig['rig_id']}: stopped for" in err


def test_a_status_document_that_cannot_be_written_never_stops_an_upload(tmp_path: Path) -> None:
    doc = local_config_dict(tmp_path)
    config = _config(tmp_path, doc)
    # the rigs "directory" of the local assets bucket is a file: every write of the document fails
    rigs = tmp_path / "store" / "assets" / RIGS_PREFIX.rstrip("/")
    rigs.parent.mkdir(parents=True)
    rigs.write_text("not a directory")
    good, _bad = _sessions(tmp_path / "recordings")
    daemon = DaemonProc(config, "drain", "--json")
    assert daemon.wait() == 1, daemon.text()
    assert any(e.get("event") == "rig.status_failed" and e.get("level") == "warning" for e in daemon.events)
    assert any(e.get("event") == "session.done" and e.get("rec_id") == good for e in daemon.events)


def _reporter(tmp: Path, store: Any, **kw: Any) -> tuple[RigReporter, StateDB]:
    state = StateDB(tmp / "state")
    return RigReporter(rig_id="rig-x", command="run", state=state, root=tmp, store=lambda: store, **kw), state


def test_writes_are_bounded_a_change_at_most_a_minute_a_heartbeat_every_five(tmp_path: Path) -> None:
    store = get_store(config_from_dict(local_config_dict(tmp_path), base_dir=tmp_path).active_profile, "assets_rw")
    rep, state = _reporter(tmp_path, store)
    t0 = time.time()
    assert rep.tick(now=t0) is True  # the first look always writes
    assert rep.tick(now=t0 + 30) is False  # nothing changed
    state.upsert_session("rec_20261201_000000_a", str(tmp_path), SessionState.DISCOVERED)
    assert rep.tick(now=t0 + 70) is False  # progress is not a change of state: the heartbeat carries it
    state.set_state("rec_20261201_000000_a", SessionState.FAILED, error="503 SlowDown")
    assert rep.tick(now=t0 + 30) is False  # a change, but within the minute
    assert rep.tick(now=t0 + 61) is True
    assert rep.tick(now=t0 + 200) is False
    assert rep.tick(now=t0 + 61 + 300) is True  # the heartbeat
    assert rep.writes == 3
    body = json.loads(store.get(rig_key("rig-x")))
    assert body["counts"] == {"failed": 1} and body["pending_sessions"] == 1
    assert body["last_error"]["error"] == "503 SlowDown" and body["status_writes"] == 3
    state.close()


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=10**308) | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=20,
)
_field_values = {
    "written_at": st.one_of(_json, st.just(iso(time.time())), st.just("2026-13-99")),
    "counts": st.one_of(_json, st.dictionaries(st.sampled_from(["failed", "rejected", "registered"]), _json)),
    "oldest_pending": st.one_of(_json, st.fixed_dictionaries({"rec_id": _json, "age_s": _json})),
    "last_error": _json,
    "pause_reason": st.one_of(_json, st.sampled_from(["[/]", "[bold", "[link=x]y[/link]"])),
    "pending_sessions": _json,
    "pending_bytes": _json,
    "paused": _json,
}


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(doc=st.fixed_dictionaries({}, optional={**_field_values, "running": _json, "command": _json}))
def test_assess_never_breaks_on_a_hostile_document(doc: dict[str, Any]) -> None:
    entry = assess(FleetEntry("rig-h", doc), now=time.time(), stale_after_s=900, max_age_s=86400)
    assert all(isinstance(r, str) and r for r in entry.needs_attention)
    written = parse_iso(doc.get("written_at"))
    if written is None:
        assert entry.stale, "a document that does not say when it was written is not fresh"
    elif time.time() - written < 600:
        assert not entry.stale
    json.dumps(entry.to_json())  # always a JSON document
    print_fleet([entry], time.time())  # and a table: a document's text is never rich markup
    if entry.stale:
        assert entry.needs_attention


def test_fleet_check_says_which_rig_needs_attention_and_why(tmp_path: Path) -> None:
    doc = local_config_dict(tmp_path)
    config = _config(tmp_path, doc)
    store = get_store(config_from_dict(doc, base_dir=tmp_path).active_profile, "assets_rw")
    now = time.time()
    healthy = {"written_at": iso(now - 30), "running": True, "command": "run", "counts": {"registered": 9},
               "oldest_pending": None}
    docs = {
        "rig-ok": healthy,
        "rig-silent": {**healthy, "written_at": iso(now - 3600)},
        "rig-failing": {**healthy, "counts": {"failed": 2},
                        "last_error": {"rec_id": "rec_x", "error": "503 SlowDown", "at": iso(now)}},
        "rig-behind": {**healthy, "oldest_pending": {"rec_id": "rec_old", "age_s": 2 * 86400}},
        "drain-nas": {**healthy, "command": "drain", "running": False, "written_at": iso(now - 9 * 86400)},
    }
    for rig_id, body in docs.items():
        store.put(rig_key(rig_id), json.dumps({"rig_id": rig_id, **body}).encode())
    store.put(rig_key("garbage"), b"\xff\xfe not json")
    store.put(RIGS_PREFIX + "notes.txt", b"ignored: not a document")

    rc, out, err = _fleet(config, "--check")
    assert rc == 1
    by_id = {r["rig_id"]: r for r in out["rigs"]}
    assert sorted(by_id) == ["drain-nas", "garbage", "rig-behind", "rig-failing", "rig-ok", "rig-silent"]
    assert by_id["rig-ok"]["needs_attention"] == [] and by_id["drain-nas"]["needs_attention"] == []
    assert by_id["rig-silent"]["stale"] is True
    assert "rig-silent: not seen for 60 min" in err
    assert "rig-failing: 2 session(s) failing; last: rec_x: 503 SlowDown" in err
    assert "rig-behind: session rec_old pending for 2.0 d" in err
    assert "garbage: status document unreadable" in err
    # the thresholds are the operator's
    rc, out, _ = _fleet(config, "--check", "--max-age", "3d", "--stale-after", "2h")
    assert {r["rig_id"] for r in out["rigs"] if r["needs_attention"]} == {"rig-failing", "garbage"}
    bad = cli(config, "fleet", "--stale-after", "soon")
    assert bad.returncode == 2 and "not a duration" in bad.stderr
    # human output: one line per rig
    human = cli(config, "fleet")
    assert human.returncode == 0
    for rig_id in docs:
        assert rig_id in human.stderr


def test_an_empty_fleet_is_not_a_healthy_one(tmp_path: Path) -> None:
    config = _config(tmp_path, local_config_dict(tmp_path))
    rc, out, err = _fleet(config, "--check")
    assert rc == 1 and out == {"rigs": []} and "no rig has written" in err


def test_a_bug_in_a_session_is_an_error_with_its_traceback_and_a_metric(tmp_path: Path) -> None:
    """A session whose processing raises what no code of ours raises on purpose: the daemon goes
    on, the line is ERROR with the traceback, and ``ursa_internal_errors_total`` counts it."""
    port = _free_port()
    doc = local_config_dict(tmp_path)
    doc["metrics"] = {"enabled": True, "port": port}
    config = _config(tmp_path, doc)
    _sessions(tmp_path / "recordings")
    # the bug: a sitecustomize on the daemon's path breaks one function of the real code
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import ursa_daemon.session as s\n"
        "def broken(*a, **k):\n"
        "    raise ZeroDivisionError('a bug in load_session')\n"
        "import ursa_daemon.daemon.worker as w\n"
        "w.load_session = broken\n"
    )
    env = {"PYTHONPATH": os.pathsep.join([str(hook), *sys.path])}
    daemon = DaemonProc(config, "run", env=env)
    try:
        ev = daemon.wait_event(lambda e: e.get("event") == "session.error" and e.get("level") == "error", 60)
        assert ev is not None, daemon.text()
        assert ev["internal"] is True and "ZeroDivisionError" in ev["exception"]
        assert "Traceback" in ev["exception"] and "a bug in load_session" in ev["error"]
        assert daemon.wait_event(lambda e: e.get("event") == "session.failed", 30)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            got = scrape_metrics(f"http://127.0.0.1:{port}/metrics")
            if got.get("ursa_internal_errors_total", 0) >= 1:
                break
            time.sleep(0.2)
        assert got["ursa_internal_errors_total"] >= 1
        assert daemon.proc.poll() is None, "a bug in one session never stops the daemon"
    finally:
        daemon.stop()


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_a_non_loopback_metrics_host_needs_the_operators_yes(tmp_path: Path, host: str) -> None:
    doc = local_config_dict(tmp_path)
    doc["metrics"] = {"enabled": True, "host": host}
    proc = cli(_config(tmp_path, doc), "check-config", "--json")
    assert proc.returncode == 2
    err = json.loads(proc.stdout)
    assert err["key"] == "metrics.host" and "allow_remote: true" in err["error"]
    doc["metrics"]["allow_remote"] = True
    assert config_from_dict(doc, base_dir=tmp_path).metrics.host == host


def test_an_allowed_remote_bind_is_scraped_on_the_lab_network(tmp_path: Path) -> None:
    lan = _non_loopback_address()
    if lan is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    port = _free_port()
    doc = local_config_dict(tmp_path)
    doc["metrics"] = {"enabled": True, "host": "0.0.0.0", "allow_remote": True, "port": port}
    daemon = DaemonProc(_config(tmp_path, doc), "run")
    try:
        assert daemon.wait_event(lambda e: e.get("event") == "metrics.serving", 30), daemon.text()
        assert "ursa_rig_info" in "".join(scrape_metrics(f"http://{lan}:{port}/metrics"))
    finally:
        daemon.stop()


@pytest.mark.parametrize("name", ["Rig 07!", "LAB-PC.local", "__x", "ü"])
def test_rig_ids_are_ids(tmp_path: Path, name: str) -> None:
    from ursa_daemon.config import normalise_rig_id
    from ursa_daemon.errors import ConfigError

    rid = normalise_rig_id(name)
    doc = local_config_dict(tmp_path)
    if rid:
        doc["rig_id"] = rid
        assert config_from_dict(doc, base_dir=tmp_path).rig == rid
    doc["rig_id"] = name
    with pytest.raises(ConfigError, match="rig_id: must be an id"):
        config_from_dict(doc, base_dir=tmp_path)


def test_the_secret_of_a_role_never_reaches_a_rig_document(tmp_path: Path) -> None:
    store = get_store(config_from_dict(local_config_dict(tmp_path), base_dir=tmp_path).active_profile, "assets_rw")
    from ursa_daemon.log import register_secret

    register_secret(MOTO_SECRET)  # as resolving a role's credentials does
    rep, state = _reporter(tmp_path, store)
    state.upsert_session("rec_20261201_000000_a", str(tmp_path), SessionState.DISCOVERED)
    state.set_state("rec_20261201_000000_a", SessionState.FAILED, error=f"403 for key {MOTO_SECRET}")
    assert rep.publish()
    assert MOTO_SECRET not in store.get(rig_key("rig-x")).decode()
    state.close()


# -- helpers -----------------------------------------------------------------


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # no packet is sent: only the route is looked up
            addr = str(s.getsockname()[0])
        except OSError:
            return None
    return None if addr.startswith("127.") else addr


def test_the_demo_shows_the_fleet_on_the_local_profile(tmp_path: Path) -> None:
    doc = local_config_dict(tmp_path)
    doc["rig_id"] = "demo-rig"
    proc = cli(_config(tmp_path, doc), "demo", timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "ursa-daemon fleet" in proc.stderr and "demo-rig" in proc.stderr
    stored = json.loads((tmp_path / "store" / "assets" / "ursa" / "rigs" / "demo-rig.json").read_text())
    assert stored["counts"] == {"registered": 1} and stored["command"] == "drain"
