"""One row per primary key (SPEC section 4, issue 22): the commit lock, repair and report.

Duplicates are planted the way they reached real catalogs: rows added straight through
lancedb, outside our write protocol (a writer of an older release, Lance's indexed
``merge_insert`` that records no inserted keys). Then ``maintain`` must leave one row per
key (the earliest registered; identical, merged by the table's policy, or a true conflict
reported whole), ``query`` must never show a recording twice meanwhile, and ``verify``
must count them. The commit lock every writer takes is exercised with a live holder, a
holder that died on this host and one that expired elsewhere.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import lancedb
import pytest
import yaml
from conftest import local_config_dict
from harness import write_session
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ursa_daemon.api import DataInterface
from ursa_daemon.catalog import ModalityRow, RecordingRow
from ursa_daemon.catalog.schema import SPECS, to_arrow
from ursa_daemon.config import config_from_dict, load_config
from ursa_daemon.daemon.maintain import maintain
from ursa_daemon.store import get_store
from ursa_daemon.transfer.context import ACTIVE_POINTER_KEY

PREFIX = "ursa/catalog/main"


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ursa_daemon.cli", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _lance_dir(root: Path) -> Path:
    return root / "store" / "assets" / PREFIX


def plant(root: Path, table: str, rows: list[Any]) -> None:
    """Add ``rows`` straight through lancedb: no check, no lock (what an old writer did)."""
    db = lancedb.connect(str(_lance_dir(root)))
    db.open_table(table).add(to_arrow(SPECS[table], rows))


def raw_keys(root: Path, table: str) -> Counter[tuple[Any, ...]]:
    """Every stored row's primary key, counted (no de-duplication on the way)."""
    spec = SPECS[table]
    t = lancedb.connect(str(_lance_dir(root))).open_table(table).to_arrow().select(list(spec.pk))
    return Counter(zip(*(t.column(c).to_pylist() for c in spec.pk), strict=True))


def _data(root: Path) -> DataInterface:
    data = DataInterface(config=config_from_dict(local_config_dict(root), base_dir=root))
    data.enable_writes(roles=("assets_rw", "raw_rw"))
    return data


def _recording(n: int, **kw: Any) -> RecordingRow:
    base: dict[str, Any] = {
        "recording_hash": f"{n:064x}",
        "rec_id": f"rec_20260101_000000_{n:04x}",
        "participant_ids": [],
        "start_time": 1_000 + n,
        "duration_ns": 10_000,
        "device_info": {"rig": "r1"},
        "metadata": {},
        "registered_at": 1_000_000 + n,
    }
    return RecordingRow(**{**base, **kw})


def _modality(n: int, family: str, **kw: Any) -> ModalityRow:
    uri = f"file:///x/{n}/{family}/"
    base: dict[str, Any] = {
        "recording_hash": f"{n:064x}",
        "modality": family,
        "worker_id": "",
        "ingestion_status": "raw",
        "raw_storage_uri": uri,
        "storage_uri": uri,
        "file_count": 1,
        "byte_count": 10,
        "metadata": {},
    }
    return ModalityRow(**{**base, **kw})


# -- repair, for any set of planted copies ------------------------------------------------

#: how a planted copy differs from the first row of its key
VARIANTS = ("identical", "participants", "duration", "device_info")
copies = st.lists(
    st.tuples(st.sampled_from(VARIANTS), st.integers(min_value=-50, max_value=50)), min_size=0, max_size=3
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=st.lists(copies, min_size=1, max_size=4))
def test_maintain_leaves_one_row_per_key_the_earliest_merged_or_reported(tmp_path_factory, plan) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("dups")
    data = _data(root)
    for pid in ("ann", "bob", "cy"):
        data.write_catalog().register_participant(
            __import__("ursa_daemon.catalog", fromlist=["ParticipantRow"]).ParticipantRow(participant_id=pid)
        )
    extra_recs: list[RecordingRow] = []
    expected: dict[str, dict[str, Any]] = {}
    for n, variants in enumerate(plan):
        first = _recording(n, participant_ids=["ann"])
        data.write_catalog().register_session(participants=[], recording=first, modalities=[_modality(n, "eeg")])
        rows = [first]
        for i, (variant, shift) in enumerate(variants):
            change: dict[str, Any] = {"registered_at": first.registered_at + shift * 1_000 + i + 1}
            if variant == "participants":
                change["participant_ids"] = sorted({"ann", ["bob", "cy"][i % 2]})
            elif variant == "duration":
                change["duration_ns"] = 10_000 + 1_000 * (i + 1)
            elif variant == "device_info":
                change["device_info"] = {"rig": f"other-{i}"}
            rows.append(first.model_copy(update=change))
        extra_recs += rows[1:]
        earliest = min(rows, key=lambda r: r.registered_at)
        conflict = any(earliest.diff(r) and not set(earliest.diff(r)) <= {"participant_ids", "duration_ns"}
                       for r in rows)
        expected[first.recording_hash] = {
            "conflict": conflict,
            "kept_device": earliest.device_info,
            "registered_at": earliest.registered_at,
            "participants": sorted({p for r in rows for p in r.participant_ids}),
            "duration": max(r.duration_ns for r in rows),
        }
    if extra_recs:
        plant(root, "recordings", extra_recs)
        plant(root, "modalities", [_modality(int(r.recording_hash, 16), "eeg") for r in extra_recs])

    # before the repair a query already shows every recording once
    shown = data.write_catalog().query()
    assert sorted(r.recording_hash for r, _ in shown) == sorted(expected)
    assert all(len(mods) == 1 for _, mods in shown)

    report = maintain(data)
    assert report.duplicates_found["recordings"] == len(extra_recs)
    assert report.duplicates_found["modalities"] == len(extra_recs)
    assert report.duplicates_removed == 2 * len(extra_recs)
    assert not any(report.duplicates_left.values())
    assert set(raw_keys(root, "recordings").values()) == {1} and len(raw_keys(root, "recordings")) == len(plan)
    assert set(raw_keys(root, "modalities").values()) == {1}
    conflicts = {r.key["recording_hash"] for r in report.conflicts}
    catalog = data.write_catalog()
    for rh, want in expected.items():
        stored = catalog.get_recording(rh)
        assert stored is not None
        assert (rh in conflicts) == want["conflict"], (rh, want)
        assert stored.registered_at == want["registered_at"]  # the earliest registered stands
        if want["conflict"]:
            assert stored.device_info == want["kept_device"]
            (repair,) = [r for r in report.conflicts if r.key["recording_hash"] == rh]
            assert repair.removed and all(r.recording_hash == rh for r in repair.removed)  # reported whole
        else:
            assert stored.participant_ids == want["participants"]
            assert stored.duration_ns == want["duration"]


# -- the operator's view: query, verify, maintain --json, logs ------------------------------


@pytest.fixture
def drained(tmp_path: Path) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({**local_config_dict(tmp_path), "watch": {"settle_seconds": 0}}))
    for i in range(3):
        write_session(tmp_path / "recordings", f"rec_20260101_00000{i}_aaaa", {"eeg/x.bin": bytes([i]) * 1000},
                      participant="Aria Lin")
    out = _cli(config, "drain", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    return config


def test_an_existing_catalog_with_duplicates_is_counted_then_repaired_by_one_maintain(drained: Path) -> None:
    root = drained.parent
    data = DataInterface(config=load_config(drained))
    (a, b, c) = sorted(data.query(), key=lambda r: r.rec_id)
    cat = data.catalog
    rec_a, rec_b = cat.get_recording(a.recording_hash), cat.get_recording(b.recording_hash)
    assert rec_a is not None and rec_b is not None
    mods_a = cat.list_modalities({"recording_hash": a.recording_hash})
    # a is registered twice over (identical but for registered_at), b once more with another device
    plant(root, "recordings", [rec_a.model_copy(update={"registered_at": rec_a.registered_at + k}) for k in (1, 2)])
    plant(root, "modalities", mods_a * 2)
    plant(root, "recordings", [rec_b.model_copy(update={"registered_at": rec_b.registered_at + 5,
                                                        "device_info": {"rig": "impostor"}})])
    plant(root, "participants", [data.catalog.get_participant("aria_lin")])
    assert raw_keys(root, "recordings")[(a.recording_hash,)] == 3

    listed = json.loads(_cli(drained, "query", "--json").stdout)
    assert sorted(r["recording_hash"] for r in listed) == sorted(r.recording_hash for r in (a, b, c))
    assert len(listed[0]["modalities"]) == 1

    ver = _cli(drained, "verify", a.rec_id, "--json")
    assert ver.returncode == 1, ver.stderr[-2000:]
    (doc,) = json.loads(ver.stdout)["recordings"]
    assert doc["duplicate_rows"] == 2 * 1 + 2 * len(mods_a) and not doc["ok"]
    assert "maintain" in ver.stderr

    first = _cli(drained, "maintain", "--json")
    assert first.returncode == 1, first.stderr[-3000:]  # a true conflict was found: the operator must look
    rep = json.loads(first.stdout)
    assert rep["duplicates_found"]["recordings"] == 3 and rep["duplicates_found"]["participants"] == 1
    assert rep["duplicates_found"]["modalities"] == 2 * len(mods_a)
    assert rep["duplicates_removed"] == 3 + 1 + 2 * len(mods_a) and rep["conflicts"] == 1
    (conflict,) = [r for r in rep["repairs"] if r["how"] == "conflict"]
    assert conflict["removed_rows"][0]["device_info"] == {"rig": "impostor"}  # reported, not silently dropped
    assert conflict["kept_row"]["device_info"] == rec_b.device_info
    logged = [json.loads(line) for line in first.stderr.splitlines() if line.startswith("{")]
    errors = [e for e in logged if e.get("event") == "catalog.duplicate_repaired" and e["level"] == "error"]
    assert errors and errors[0]["removed_rows"][0]["device_info"] == {"rig": "impostor"}
    assert "impostor" not in json.dumps(cat.get_recording(b.recording_hash).model_dump(mode="json"))

    for table in ("participants", "recordings", "modalities"):
        assert set(raw_keys(root, table).values()) == {1}, table
    assert _cli(drained, "verify", a.rec_id).returncode == 0
    again = _cli(drained, "maintain", "--json")
    assert again.returncode == 0, again.stderr[-2000:]
    assert not any(json.loads(again.stdout)["duplicates_found"].values())


# -- the commit lock -------------------------------------------------------------------------


def _lock_key() -> str:
    return f"{PREFIX}.commit.lock"


def _lease(holder: str, *, expires_in: float, pid: int | None = None, host: str | None = None,
           started: float | None = None) -> bytes:
    doc: dict[str, Any] = {"holder": holder, "expires_at": time.time() + expires_in}
    if pid is not None:
        doc.update(host=host or socket.gethostname(), pid=pid, started=started)
    return json.dumps(doc).encode()


def _register_in_thread(data: DataInterface, n: int) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(data.write_catalog().register_session(
                participants=[], recording=_recording(n), modalities=[_modality(n, "eeg")]))
        except Exception as exc:  # reported to the test
            out.append(exc)

    t = threading.Thread(target=run)
    t.start()
    return t, out


def test_a_writer_waits_for_a_live_holder_and_commits_once_it_gives_the_lock_back(tmp_path: Path) -> None:
    data = _data(tmp_path)
    data.write_catalog()
    store = get_store(data.profile, "assets_rw")
    assert json.loads(store.get(ACTIVE_POINTER_KEY))["catalog_prefix"] == PREFIX
    # held by a live process of this host (this one): not expired, not dead
    store.put(_lock_key(), _lease("rig-9:live", expires_in=600, pid=os.getpid(),
                                  started=__import__("psutil").Process().create_time()), create_only=True)
    thread, out = _register_in_thread(data, 7)
    thread.join(timeout=1.5)
    assert thread.is_alive() and not out  # still waiting: nothing checked or written under a held lock
    assert data.catalog.get_recording(f"{7:064x}") is None
    store.delete(_lock_key())
    thread.join(timeout=60)
    assert out and isinstance(out[0], RecordingRow), out
    assert raw_keys(tmp_path, "recordings")[(f"{7:064x}",)] == 1
    with pytest.raises(Exception):  # noqa: B017 - given back: the lock object is gone
        store.get(_lock_key())


def test_a_lock_whose_holder_died_on_this_host_is_taken_over_at_once(tmp_path: Path) -> None:
    data = _data(tmp_path)
    data.write_catalog()
    store = get_store(data.profile, "assets_rw")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store.put(_lock_key(), _lease("rig-1:dead", expires_in=3600, pid=dead.pid, started=time.time() - 5),
              create_only=True)
    began = time.monotonic()
    thread, out = _register_in_thread(data, 8)
    thread.join(timeout=60)
    assert out and isinstance(out[0], RecordingRow), out
    assert time.monotonic() - began < 30  # not the hour its lease claimed, nor the lock's 60 s budget
    markers = list((tmp_path / "store" / "assets" / f"{PREFIX}.commit.takeover").iterdir())
    assert len(markers) == 1 and json.loads(markers[0].read_text())["took_over"] == "rig-1:dead"


def test_a_lock_of_another_host_is_kept_until_it_expires_then_taken_over(tmp_path: Path) -> None:
    data = _data(tmp_path)
    data.write_catalog()
    store = get_store(data.profile, "assets_rw")
    # another host's holder: its pid means nothing here, only expiry frees it
    store.put(_lock_key(), _lease("rig-2:far", expires_in=3, pid=1, host="another-host", started=0.0),
              create_only=True)
    thread, out = _register_in_thread(data, 9)
    thread.join(timeout=1.0)
    assert thread.is_alive() and not out
    thread.join(timeout=60)
    assert out and isinstance(out[0], RecordingRow), out


def test_a_dual_node_half_that_finds_its_rec_id_taken_under_the_lock_is_told_which_hash(tmp_path: Path) -> None:
    """Both halves' writers passed their pre-checks before either committed: the second one's
    check under the commit lock finds the rec_id taken and names the registered hash."""
    from ursa_daemon.errors import RecordingIdTaken

    data = _data(tmp_path)
    cat = data.write_catalog()
    first = _recording(1)
    cat.register_session(participants=[], recording=first, modalities=[_modality(1, "eeg")], one_per_rec_id=True)
    other_half = _recording(2, rec_id=first.rec_id)  # same session, another hash
    with pytest.raises(RecordingIdTaken) as taken:
        cat.register_session(participants=[], recording=other_half, modalities=[_modality(2, "camera")],
                             one_per_rec_id=True)
    assert taken.value.recording_hash == first.recording_hash and taken.value.rec_id == first.rec_id
    assert [r.recording_hash for r in cat.list_recordings()] == [first.recording_hash]  # nothing written
    assert cat.get_modality(other_half.recording_hash, "camera") is None
    # the same hash again is not "taken": an identical re-register is a no-op
    assert cat.register_session(participants=[], recording=first, modalities=[_modality(1, "eeg")],
                                one_per_rec_id=True) == first
