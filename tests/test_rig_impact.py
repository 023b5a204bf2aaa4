"""A daemon the rig never notices: the idle ``run`` process holds no catalog stack
(lancedb, pyarrow), and sheds it by re-executing itself once idle after a session brought
it in, keeping its pid, its state lock and its watch (figures: tests/bench/daemon_idle.py)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from conftest import local_config_dict
from harness import DaemonProc, cli

from ursa_daemon.cli.demo import make_sample_session


def catalog_stack_mapped(pid: int) -> list[str]:
    """Shared objects of lancedb or pyarrow mapped into ``pid``."""
    maps = Path(f"/proc/{pid}/maps").read_text()
    return sorted({line.split()[-1] for line in maps.splitlines() if "lancedb" in line or "pyarrow" in line})


def test_idle_run_holds_no_catalog_stack_and_sheds_it_after_work(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                **local_config_dict(tmp_path),
                "watch": {"settle_seconds": 0.2, "shed_after_idle_seconds": 1},
                "activity": {"quiet_seconds": 0},
            }
        )
    )
    (tmp_path / "recordings").mkdir()
    proc = DaemonProc(config, "run", log=tmp_path / "run.log")
    try:
        assert proc.wait_event(lambda e: e.get("event") == "daemon.started"), proc.text()
        pid = proc.proc.pid
        assert catalog_stack_mapped(pid) == []
        first = make_sample_session(tmp_path / "recordings")
        assert proc.wait_event(lambda e: e.get("event") == "session.registered"), proc.text()
        # nothing to do for a second: the process image is replaced (the stack was in: it was worked on)
        assert proc.wait_event(lambda e: e.get("event") == "daemon.shed"), proc.text()
        assert proc.wait_event(lambda e: e.get("event") == "daemon.shed_done"), proc.text()  # not daemon.started
        assert proc.proc.poll() is None and proc.proc.pid == pid
        assert catalog_stack_mapped(pid) == []
        # the new image kept the state lock: no second daemon on this state_dir
        assert cli(config, "drain", "--json").returncode == 3
        # ... knows what is done, and still watches
        second = make_sample_session(tmp_path / "recordings")
        ev = proc.wait_event(lambda e: e.get("event") == "session.registered")
        assert ev is not None and ev["rec_id"] == second.name, proc.text()
    finally:
        rc = proc.stop()
    assert rc == 0, proc.text()
    registered = [e["rec_id"] for e in proc.events if e.get("event") == "session.registered"]
    assert registered == [first.name, second.name]
    status = json.loads(cli(config, "status", "--json").stdout)
    states = {s["rec_id"]: s["state"] for s in status["sessions"]}
    assert states == {first.name: "registered", second.name: "registered"}
