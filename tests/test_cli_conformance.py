"""SPEC sections 5-7 through the real ``ursa-daemon`` process on the local profile:
human output on stderr and only JSON on stdout, a JSON document for a failure under
``--json``, a waiting dual-node half, drain roots, config defaults, typed participant names."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import local_config_dict
from test_dual_node import HALF_A, write_half

from ursa_daemon.api import DataInterface
from ursa_daemon.cli.demo import make_sample_session
from ursa_daemon.config import load_config
from ursa_daemon.daemon.lock import StateLock
from ursa_daemon.errors import ConfigError


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ursa_daemon.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def write_config(root: Path, **extra: Any) -> Path:
    doc = {**local_config_dict(root), "watch": {"settle_seconds": 0}, **extra}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def json_doc(proc: subprocess.CompletedProcess[str]) -> Any:
    """stdout under --json: exactly one JSON document, nothing else."""
    return json.loads(proc.stdout)


def only_log_lines(stdout: str) -> None:
    """stdout without --json carries JSON log lines (SPEC 6) and nothing else."""
    for line in stdout.splitlines():
        assert "event" in json.loads(line), line


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One drained session of "Aria Lin"."""
    root = tmp_path_factory.mktemp("conf")
    config = write_config(root)
    first = make_sample_session(root / "recordings")
    drained = cli(config, "drain", "--json")
    assert drained.returncode == 0 and json_doc(drained)["registered"] == [first.name], drained.stderr
    return {"root": root, "config": config, "first": first}


def test_drain_of_a_rec_dir_is_that_one_session(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    one, sibling = (tmp_path / "recordings" / f"rec_20260101_00000{i}_abcd" for i in (1, 2))
    for rec in (one, sibling):
        (rec / "eeg").mkdir(parents=True)
        (rec / "eeg" / "seg.bin").write_bytes(rec.name.encode())
        (rec / "manifest.json").write_text(json.dumps({"recording_id": rec.name, "start_time": 1_000_000}))
    proc = cli(config, "drain", str(one), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json_doc(proc)
    assert summary["registered"] == [one.name]  # not nothing, and not its sibling
    assert summary["failed"] == [] and summary["rejected"] == []


@pytest.mark.parametrize(
    ("args", "in_stderr"),
    [
        (["query"], "1 recording(s)"),
        (["status"], "registered 1"),
        (["verify", "{rec}"], ": ok"),
        (["download", "{rec}", "{root}/dl"], "file(s)"),
        (["check-config"], "ok"),
    ],
)
def test_human_output_goes_to_stderr(env: dict[str, Any], args: list[str], in_stderr: str) -> None:
    args = [a.format(rec=env["first"].name, root=env["root"]) for a in args]
    proc = cli(env["config"], *args)
    assert proc.returncode == 0, proc.stderr
    only_log_lines(proc.stdout)
    assert in_stderr in proc.stderr


def test_reconstruct_manifest_human_output_goes_to_stderr(env: dict[str, Any], tmp_path: Path) -> None:
    rec = tmp_path / env["first"].name
    shutil.copytree(env["first"], rec)
    (rec / "manifest.json").unlink()
    proc = cli(env["config"], "reconstruct-manifest", str(rec))
    assert proc.returncode == 0, proc.stderr
    only_log_lines(proc.stdout)
    assert "recording_hash" in proc.stderr and (rec / "manifest.json").is_file()


def test_query_by_typed_participant_name(env: dict[str, Any]) -> None:
    rec_id = env["first"].name
    proc = cli(env["config"], "query", "--participant", "Aria Lin", "--json")
    assert proc.returncode == 0, proc.stderr
    assert [(r["rec_id"], r["participant_ids"]) for r in json_doc(proc)] == [(rec_id, ["aria_lin"])]
    data = DataInterface(config=load_config(env["config"]))  # the Python API the same way
    for who in ("Aria Lin", "aria_lin", "  ARIA-lin "):
        assert [r.rec_id for r in data.query(participants=[who])] == [rec_id], who
    assert data.query(participants=["Bo Chen"]) == []


def test_json_failure_is_one_document_with_the_exit_code(env: dict[str, Any], tmp_path: Path) -> None:
    # bad input: exit 1, the session and the file named
    bad = tmp_path / "rec_20260101_000000_abcd"
    (bad / "Bad Worker").mkdir(parents=True)
    (bad / "Bad Worker" / "x.bin").write_bytes(b"x")
    (bad / "manifest.json").write_text(json.dumps({"recording_id": bad.name, "start_time": 1}))
    proc = cli(env["config"], "ingest", str(bad), "--json")
    assert proc.returncode == 1
    doc = json_doc(proc)
    assert doc["exit_code"] == 1 and doc["rec_id"] == bad.name and doc["file"] == "Bad Worker"
    assert "rename" in doc["error"] and "rename" in proc.stderr

    # config error: exit 2
    proc = cli(tmp_path / "nope.yaml", "status", "--json")
    assert proc.returncode == 2
    doc = json_doc(proc)
    assert doc["exit_code"] == 2 and "nope.yaml" in doc["error"]

    # the state lock held by another process: exit 3
    with StateLock(load_config(env["config"]).state_dir):
        proc = cli(env["config"], "drain", "--json")
    assert proc.returncode == 3
    doc = json_doc(proc)
    assert doc["exit_code"] == 3 and "state lock" in doc["error"]


def test_drain_root_that_is_missing_or_a_file_exits_2(env: dict[str, Any], tmp_path: Path) -> None:
    missing = tmp_path / "no-such-root"
    proc = cli(env["config"], "drain", str(missing))
    assert proc.returncode == 2 and str(missing) in proc.stderr and "does not exist" in proc.stderr
    a_file = tmp_path / "file"
    a_file.write_text("x")
    proc = cli(env["config"], "drain", str(a_file), "--json")
    assert proc.returncode == 2
    doc = json_doc(proc)
    assert doc["exit_code"] == 2 and str(a_file) in doc["error"] and "not a directory" in doc["error"]
    # the configured root: named with its key
    other = tmp_path / "other"
    other.mkdir()
    proc = cli(write_config(other), "drain")
    assert proc.returncode == 2
    assert "recordings_root" in proc.stderr and str(other / "recordings") in proc.stderr


def test_ingest_of_a_half_waits_and_exits_0(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    half = write_half(tmp_path / "rig-a", "node-a", HALF_A)
    proc = cli(config, "ingest", str(half), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json_doc(proc)
    assert doc["waiting"] is True and doc["missing"] == ["node-b"] and doc["recording_hash"] is None
    assert (doc["files_uploaded"], doc["bytes_uploaded"]) == (len(HALF_A), sum(map(len, HALF_A.values())))
    proc = cli(config, "ingest", str(half))  # again, human: nothing moves, still waiting
    assert proc.returncode == 0, proc.stderr
    assert "waiting for node(s) node-b" in proc.stderr and "0 uploaded" in proc.stderr
    only_log_lines(proc.stdout)


def test_config_path_defaults_and_no_catalog_name(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"profile": "local", "profiles": {"local": {"kind": "local", "root": "s"}}}))
    cfg = load_config(path)
    assert cfg.recordings_root == tmp_path / "recordings"
    assert cfg.state_dir == tmp_path / ".ursa" / "state"
    s3 = {"kind": "s3", "endpoint": "https://x.example", "raw_bucket": "r", "assets_bucket": "a"}
    path.write_text(yaml.safe_dump({"profile": "r2", "profiles": {"r2": {**s3, "catalog_name": "other"}}}))
    with pytest.raises(ConfigError, match="unknown key 'profiles.r2.catalog_name'"):
        load_config(path)
