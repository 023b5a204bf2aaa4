"""The per-session error boundary (issue 12): whatever one session raises, that session alone ends
``failed`` or ``rejected`` with a one-line reason in the state, and the others go on.

The daemon runs in-process on the local profile with real SQLite and LanceDB; the only fakes
are the injected faults (a bug in the ingest path, a catalog batch that breaks).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import local_config_dict
from structlog.testing import capture_logs

import ursa_daemon.transfer.ingest as ingest_mod
from ursa_daemon.api import DataInterface
from ursa_daemon.catalog import Catalog
from ursa_daemon.config import config_from_dict
from ursa_daemon.daemon import Daemon
from ursa_daemon.daemon.metrics import METRICS
from ursa_daemon.daemon.state import SessionState


def _session(root: Path, n: int, body: bytes, **manifest: Any) -> Path:
    rec = root / f"rec_20260301_{n:06d}_abcd"
    (rec / "eeg").mkdir(parents=True)
    (rec / "eeg" / "a.bin").write_bytes(body)
    (rec / "manifest.json").write_text(json.dumps({"recording_id": rec.name, "start_time": 1, **manifest}))
    return rec


@pytest.fixture
def local_daemon(tmp_path: Path):  # type: ignore[no-untyped-def]
    raw = local_config_dict(tmp_path)
    raw["watch"] = {"settle_seconds": 0}
    (tmp_path / "recordings").mkdir()
    with Daemon(config_from_dict(raw, base_dir=tmp_path)) as d:
        yield d, tmp_path / "recordings"


def test_a_bug_in_one_session_fails_only_that_session(local_daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    daemon, root = local_daemon
    recs = [_session(root, i, b"s%d" % i) for i in range(3)]
    real = ingest_mod.ingest  # the daemon imports it when it works on a session

    def buggy(data: Any, rec_dir: Path, **kw: Any) -> Any:
        if Path(rec_dir).name == recs[1].name:
            raise KeyError("boom\nsecond line")  # not an UrsaError, not an OSError: a bug
        return real(data, rec_dir, **kw)

    monkeypatch.setattr(ingest_mod, "ingest", buggy)
    bugs = (METRICS.sample("ursa_internal_errors_total") or 0)
    with capture_logs() as logs:
        summary = daemon.drain([root])
    assert (METRICS.sample("ursa_internal_errors_total") or 0) == bugs + 1
    assert sorted(summary.registered) == [recs[0].name, recs[2].name]
    assert [f["rec_id"] for f in summary.failed] == [recs[1].name]
    rec = daemon.state.session(recs[1].name)
    assert rec is not None and rec.state is SessionState.FAILED and rec.next_attempt_at
    assert rec.last_error == "KeyError: 'boom\\nsecond line'" and "\n" not in rec.last_error
    traced = [e for e in logs if e["event"] == "session.error" and e.get("rec_id") == recs[1].name]
    # a bug is loud: ERROR, with its traceback, and counted
    assert traced and traced[0]["log_level"] == "error" and traced[0].get("exc_info") and traced[0]["internal"]


def test_a_batch_that_breaks_registers_the_others_and_rejects_only_the_bad_one(
    local_daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon, root = local_daemon
    recs = [_session(root, i, b"b%d" % i) for i in range(4)]
    bad = recs[2].name

    def batch(self: Catalog, sessions: Any, **kw: Any) -> Any:
        raise RuntimeError("arrow could not convert one row")

    real_one = Catalog.register_session

    def one(self: Catalog, *, recording: Any, **kw: Any) -> Any:
        if recording.rec_id == bad:
            raise ValueError("cannot convert this session's row")
        return real_one(self, recording=recording, **kw)

    monkeypatch.setattr(Catalog, "register_sessions", batch)
    monkeypatch.setattr(Catalog, "register_session", one)
    summary = daemon.drain([root])
    assert sorted(summary.registered) == sorted(r.name for r in recs if r.name != bad)
    assert [r["rec_id"] for r in summary.rejected] == [bad]
    assert "cannot convert" in summary.rejected[0]["error"]
    assert daemon.state.session(bad).state is SessionState.REJECTED  # type: ignore[union-attr]


def test_refused_before_any_state_row_still_has_one(local_daemon) -> None:
    daemon, root = local_daemon
    rec = _session(root, 1, b"x")
    (rec / "manifest.json").unlink()
    (rec / "manifest.json").mkdir()
    assert daemon.state.session(rec.name) is None
    summary = daemon.drain([root])
    assert [r["rec_id"] for r in summary.rejected] == [rec.name]
    row = daemon.state.session(rec.name)
    assert row is not None and row.state is SessionState.REJECTED and "not a regular file" in (row.last_error or "")


def test_two_sessions_with_identical_bytes(local_daemon) -> None:
    """The copy is refused with a reason that says what happened, and none of its bytes stay behind."""
    daemon, root = local_daemon
    first = _session(root, 1, b"same bytes")
    assert daemon.drain([root]).registered == [first.name]
    copy = _session(root, 2, b"same bytes")
    summary = daemon.drain([root])
    assert [r["rec_id"] for r in summary.rejected] == [copy.name]
    assert f"byte-identical to those of {first.name}" in summary.rejected[0]["error"]
    raw = daemon.data.store("raw_rw")
    assert not list(raw.list(f"recordings/{copy.name}/"))
    # both in one drain batch: the same reason, and the copy's uploaded bytes are removed
    twin_a, twin_b = _session(root, 3, b"twins"), _session(root, 4, b"twins")
    summary = daemon.drain([root])
    assert summary.registered == [twin_a.name]
    assert [r["rec_id"] for r in summary.rejected] == [copy.name, twin_b.name]
    assert f"byte-identical to those of {twin_a.name}" in summary.rejected[1]["error"]
    assert not list(raw.list(f"recordings/{twin_b.name}/"))


def test_rec_entry_that_is_a_symlink_is_reported(local_daemon, tmp_path: Path) -> None:
    daemon, root = local_daemon
    elsewhere = _session(tmp_path / "elsewhere", 9, b"linked")
    link = root / "rec_20260301_000099_abcd"
    link.symlink_to(elsewhere, target_is_directory=True)
    dangling = root / "rec_20260301_000098_abcd"
    dangling.symlink_to(tmp_path / "gone", target_is_directory=True)
    summary = daemon.drain([root])
    assert [r["rec_id"] for r in summary.rejected] == [dangling.name, link.name]
    assert all("symbolic link" in r["error"] for r in summary.rejected)
    assert not list(daemon.data.store("raw_rw").list(""))


def test_non_latin_and_blank_participants_register(local_daemon) -> None:
    daemon, root = local_daemon
    named, blank = _session(root, 1, b"p1"), _session(root, 2, b"p2")
    (named / "participant.txt").write_text("李小龍\n", encoding="utf-8")
    (blank / "participant.txt").write_bytes(b"")
    assert sorted(daemon.drain([root]).registered) == [named.name, blank.name]
    found = DataInterface(config=daemon.config).query(participants=["李小龍"])
    assert [r.rec_id for r in found] == [named.name] and found[0].participant_ids[0].startswith("p_")
    pid = found[0].participant_ids[0]
    participant = daemon.data._write_catalog().get_participant(pid)
    assert participant is not None and participant.display_name == "李小龍"
    assert DataInterface(config=daemon.config).query(rec_id=blank.name)[0].participant_ids == []


def test_ingest_json_on_an_unexpected_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """A bug in the ingest path still ends in the one JSON document with error and exit_code."""
    import yaml

    import ursa_daemon.transfer.ingest as ingest_mod
    from ursa_daemon.cli import main

    raw = local_config_dict(tmp_path)
    (tmp_path / "recordings").mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(raw))
    rec = _session(tmp_path / "recordings", 1, b"x")

    def buggy(*a: Any, **kw: Any) -> Any:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(ingest_mod, "ingest", buggy)
    import ursa_daemon.log as log_mod

    # in-process: the CLI must not point the process's logging at this test's captured streams
    monkeypatch.setattr(log_mod, "setup_logging", lambda **kw: None)
    with pytest.raises(SystemExit) as info:
        main(["--config", str(config), "ingest", str(rec), "--json"])
    assert info.value.code == 1
    out = capsys.readouterr()
    doc = json.loads(out.out)
    assert doc == {"error": "ZeroDivisionError: a bug", "exit_code": 1}
    assert "Traceback" in out.err
