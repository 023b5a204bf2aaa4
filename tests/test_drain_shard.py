"""``drain --shard K/N``: N real drain processes (each its own state_dir, one store and
catalog) split one share by a stable hash of ``rec_id``, with no overlap and nothing left
out; an overlapping drain afterwards is idempotent."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import local_config_dict
from hypothesis import given
from hypothesis import strategies as st
from invariants import check_invariants

from ursa_daemon.api import DataInterface
from ursa_daemon.cli.demo import make_sample_session
from ursa_daemon.config import load_config
from ursa_daemon.session import in_shard, parse_shard


@given(rec_id=st.text(min_size=1, max_size=40), n=st.integers(min_value=1, max_value=64))
def test_every_rec_id_is_in_exactly_one_shard(rec_id: str, n: int) -> None:
    assert sum(in_shard(rec_id, (k, n)) for k in range(1, n + 1)) == 1


def test_shard_hash_is_stable() -> None:
    # the split must not depend on the machine or on Python's per-process hash seed
    rec_id = "rec_20260520_195628_b1dd"
    k = int.from_bytes(hashlib.sha256(rec_id.encode()).digest()[:8], "big") % 4 + 1
    assert in_shard(rec_id, (k, 4))
    probe = f"from ursa_daemon.session import in_shard; print(in_shard({rec_id!r}, ({k}, 4)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env={"PYTHONHASHSEED": "7"})
    assert out.stdout.strip() == "True", out.stderr


@pytest.mark.parametrize("bad", ["0/3", "4/3", "3", "a/b", "1/0", "-1/2", ""])
def test_bad_shard_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="K/N"):
        parse_shard(bad)


def _config(root: Path, store: Path, recordings: Path, name: str) -> Path:
    doc = {**local_config_dict(root), "watch": {"settle_seconds": 0}}
    doc["recordings_root"] = str(recordings)
    doc["state_dir"] = str(root / f"state-{name}")
    doc["profiles"] = {"local": {"kind": "local", "root": str(store)}}
    path = root / f"config-{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _drain(config: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ursa_daemon.cli", "--config", str(config), "drain", "--json", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_three_shards_drain_one_share_at_once_without_overlap(tmp_path: Path) -> None:
    share, store = tmp_path / "nas", tmp_path / "store"
    sessions = sorted(make_sample_session(share).name for _ in range(9))
    n = 3
    procs = [_drain(_config(tmp_path, store, share, f"m{k}"), "--shard", f"{k}/{n}") for k in range(1, n + 1)]
    docs = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        docs.append(json.loads(out))
    shards = [set(d["registered"]) for d in docs]
    for k, got in enumerate(shards, start=1):
        assert got == {s for s in sessions if in_shard(s, (k, n))}
        assert not got & set().union(*(o for o in shards if o is not got))  # no overlap
    assert set().union(*shards) == set(sessions)  # nothing left out
    # an overlapping drain (another machine, its own state, no shard) is safe: every byte is
    # already in the store (nothing is sent again) and each identical re-register is a no-op
    again = _drain(_config(tmp_path, store, share, "late"))
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-3000:]
    doc = json.loads(out)
    assert sorted(doc["registered"]) == sessions and not doc["failed"] and not doc["rejected"]
    assert doc["files_uploaded"] == 0 and doc["bytes_uploaded"] == 0 and doc["files_skipped"] > 0
    config = load_config(_config(tmp_path, store, share, "check"))
    check_invariants(config, valid=[share / s for s in sessions])
    assert len(DataInterface(config=config).query()) == len(sessions)
