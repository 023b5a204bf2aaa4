"""The LanceDB catalog, for real: a local directory, and moto's S3 server over HTTP."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import MOTO_KEY_ID, MOTO_SECRET, MotoServer
from pydantic import ValidationError

from ursa_daemon.catalog import (
    TABLE_NAMES,
    BenchmarkResultRow,
    BenchmarkSuiteRow,
    Catalog,
    CheckpointRow,
    EmbeddingRow,
    EventRow,
    IngestionStatus,
    ModalityRow,
    ParticipantRow,
    RecordingRow,
    SessionRows,
    StorageFormat,
    VirgoAssetRow,
)
from ursa_daemon.errors import CatalogError, CatalogRowExists, WritesNotEnabled

SESSION_TABLES = ("participants", "modalities", "recordings")
HOSTILE = [
    "x' OR '1'='1",
    "x'; DROP TABLE recordings; --",
    "a\\' OR 1=1 --",
    "' OR participant_ids IS NOT NULL OR '",
    "\x00'",
]


def h(n: int) -> str:
    return hashlib.sha256(f"rec-{n}".encode()).hexdigest()


def recording(n: int, participants: list[str], **kw: Any) -> RecordingRow:
    fields: dict[str, Any] = {
        "recording_hash": h(n),
        "rec_id": f"rec_20260520_1956{n:02d}_b1dd",
        "participant_ids": participants,
        "start_time": 1_000 + n,
        "duration_ns": 60_000_000_000,
        "device_info": {"rig": "green-mantis"},
        "metadata": {"protocol": "rest"},
    }
    return RecordingRow(**{**fields, **kw})


def modality(n: int, family: str, worker: str = "", **kw: Any) -> ModalityRow:
    subdir = f"{family}_{worker}" if worker else family
    fields: dict[str, Any] = {
        "recording_hash": h(n),
        "modality": family,
        "worker_id": worker,
        "raw_storage_uri": f"s3://raw/recordings/rec_{n}/{subdir}/",
        "file_count": 2,
        "byte_count": 2048,
    }
    return ModalityRow(**{**fields, **kw})


def person(pid: str, **kw: Any) -> ParticipantRow:
    return ParticipantRow(participant_id=pid, display_name=pid.title(), **kw)


def register(catalog: Catalog, n: int, participants: list[str], families: list[str], **kw: Any) -> RecordingRow:
    return catalog.register_session(
        participants=[person(p) for p in participants],
        recording=recording(n, participants),
        modalities=[modality(n, f, w) for f, w in (fam.partition("_")[::2] for fam in families)],
        **kw,
    )


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {t: after[t] - before[t] for t in before if after[t] != before[t]}


# -- fixtures -------------------------------------------------------------------------


def s3_catalog_args(server: MotoServer, bucket: str) -> tuple[str, dict[str, str]]:
    return f"s3://{bucket}/ursa/catalog/main", {
        "aws_access_key_id": MOTO_KEY_ID,
        "aws_secret_access_key": MOTO_SECRET,
        "aws_endpoint": server.endpoint,
        "aws_region": "auto",
        "allow_http": "true",
    }


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return Catalog.open(str(tmp_path / "catalog"))


@pytest.fixture(params=["local", "s3"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, dict[str, str] | None]:
    """Where the essential cases run: a local directory, and moto's S3 over HTTP."""
    if request.param == "local":
        return str(tmp_path / "catalog"), None
    server = request.getfixturevalue("moto_server")
    _, assets = request.getfixturevalue("s3_buckets")
    return s3_catalog_args(server, assets)


@pytest.fixture
def any_catalog(target: tuple[str, dict[str, str] | None]) -> Catalog:
    return Catalog.open(target[0], storage_options=target[1])


@pytest.fixture
def populated(catalog: Catalog) -> Catalog:
    """Six sessions: participants a..d, families eeg/camera/mic (two eeg workers on #3)."""
    register(catalog, 1, ["alice"], ["eeg", "camera_0"])
    register(catalog, 2, ["bob"], ["eeg", "mic_a"])
    register(catalog, 3, ["alice", "carol"], ["eeg_a", "eeg_b", "camera_0"])
    register(catalog, 4, ["dave"], ["mic_a"])
    register(catalog, 5, [], ["camera_0"])
    register(catalog, 6, ["carol"], ["eeg", "mic_a", "camera_1"])
    return catalog


def hashes(results: list[tuple[RecordingRow, list[ModalityRow]]]) -> list[str]:
    return [r.recording_hash for r, _ in results]


# -- opening ----------------------------------------------------------------------------


def test_open_creates_every_table_once(target: tuple[str, dict[str, str] | None]) -> None:
    uri, options = target
    versions = Catalog.open(uri, storage_options=options).table_versions()
    assert set(versions) == set(TABLE_NAMES)
    assert all(v >= 1 for v in versions.values())
    assert Catalog.open(uri, storage_options=options).table_versions() == versions  # reopening creates nothing


def test_a_table_from_another_version_is_refused_with_a_fix(tmp_path: Path) -> None:
    import lancedb
    import pyarrow as pa

    old_schema = pa.schema([("recording_hash", pa.string())])
    lancedb.connect(str(tmp_path / "old")).create_table("modalities", schema=old_schema)
    catalog = Catalog.open(str(tmp_path / "old"))
    with pytest.raises(CatalogError, match="lacks columns .*modality_key.* new catalog"):
        catalog.query(modalities=["eeg"])


def test_read_only_catalog_refuses_writes_and_reads_missing_tables_as_empty(tmp_path: Path) -> None:
    ro = Catalog.open(str(tmp_path / "nothing-yet"), writable=False)
    assert ro.list_recordings() == []
    assert ro.get_recording(h(1)) is None
    assert ro.query() == []
    with pytest.raises(WritesNotEnabled):
        ro.register_participant(person("alice"))


# -- sessions: one commit per table, idempotency, atomic conflicts ------------------------


def test_session_is_one_commit_per_changed_table_and_reregister_is_free(any_catalog: Catalog) -> None:
    before = any_catalog.table_versions()
    stored = register(any_catalog, 1, ["alice", "bob"], ["eeg_4559", "camera_0", "mic"])
    after = any_catalog.table_versions()
    assert delta(before, after) == {t: 1 for t in SESSION_TABLES}

    again = any_catalog.register_session(
        participants=[person("alice"), person("bob")],
        recording=recording(1, ["bob", "alice"], registered_at=stored.registered_at + 10**9),
        modalities=[modality(1, "eeg", "4559"), modality(1, "camera", "0"), modality(1, "mic")],
    )
    assert any_catalog.table_versions() == after  # zero commits
    assert again == stored  # the stored row, registered_at of the first registration

    (rec, mods), *_ = any_catalog.query(recording_hash=h(1))
    assert rec.participant_ids == ["alice", "bob"]
    assert [m.worker_subdir for m in mods] == ["camera_0", "eeg_4559", "mic"]
    assert {p.participant_id for p in any_catalog.list_participants()} == {"alice", "bob"}


def test_a_second_session_of_a_known_participant_adds_only_its_own_rows(catalog: Catalog) -> None:
    register(catalog, 1, ["alice"], ["eeg"])
    before = catalog.table_versions()
    # enrolled_at differs (a later session): the first enrolment stands, nothing to write
    catalog.register_session(
        participants=[ParticipantRow(participant_id="alice", display_name="Alice", enrolled_at=5)],
        recording=recording(2, ["alice"]),
        modalities=[modality(2, "eeg")],
    )
    assert delta(before, catalog.table_versions()) == {"modalities": 1, "recordings": 1}


def test_conflict_in_one_modality_writes_nothing_at_all(any_catalog: Catalog) -> None:
    register(any_catalog, 1, ["alice"], ["eeg", "camera_0"])
    before = any_catalog.table_versions()
    with pytest.raises(CatalogRowExists) as err:
        any_catalog.register_session(
            participants=[person("alice"), person("zoe")],
            recording=recording(1, ["alice", "zoe"]),
            modalities=[modality(1, "eeg"), modality(1, "camera", "0", byte_count=9), modality(1, "mic")],
            on_conflict_recording="merge_participants",
        )
    assert err.value.table == "modalities"
    assert err.value.diff == {"byte_count": (2048, 9)}
    assert any_catalog.table_versions() == before
    assert any_catalog.get_participant("zoe") is None
    assert any_catalog.get_modality(h(1), "mic") is None
    assert any_catalog.get_recording(h(1)).participant_ids == ["alice"]  # type: ignore[union-attr]


def test_session_policies_apply_per_table(catalog: Catalog) -> None:
    register(catalog, 1, ["alice"], ["eeg", "camera_0"])
    before = catalog.table_versions()
    stored = catalog.register_session(
        participants=[person("alice"), person("zoe")],
        recording=recording(1, ["zoe", "alice"]),
        modalities=[modality(1, "eeg", sampling_rate=500.0), modality(1, "camera", "0"), modality(1, "mic")],
        on_conflict_recording="merge_participants",
        on_conflict_modality="overwrite",
    )
    assert stored.participant_ids == ["alice", "zoe"]
    assert delta(before, catalog.table_versions()) == {t: 1 for t in SESSION_TABLES}
    eeg = catalog.get_modality(h(1), "eeg")
    assert eeg is not None and eeg.sampling_rate == 500.0
    assert catalog.get_modality(h(1), "mic") is not None


def test_session_rows_must_agree(catalog: Catalog) -> None:
    with pytest.raises(ValueError, match="do not belong"):
        catalog.register_session(participants=[], recording=recording(1, []), modalities=[modality(2, "eeg")])
    with pytest.raises(ValueError, match="unregistered participants"):
        catalog.register_session(participants=[], recording=recording(1, ["ghost"]), modalities=[])
    with pytest.raises(ValueError, match="two different rows"):
        catalog.register_session(
            participants=[],
            recording=recording(1, []),
            modalities=[modality(1, "eeg"), modality(1, "eeg", byte_count=1)],
        )
    assert catalog.list_recordings() == []


def rows(n: int, participants: list[str], families: list[str], **kw: Any) -> SessionRows:
    return SessionRows(
        participants=[person(p) for p in participants],
        recording=recording(n, participants, **kw),
        modalities=[modality(n, f, w) for f, w in (fam.partition("_")[::2] for fam in families)],
    )


def test_a_batch_of_sessions_is_one_commit_per_table(any_catalog: Catalog) -> None:
    register(any_catalog, 9, ["alice"], ["eeg"])
    before = any_catalog.table_versions()
    batch = [
        rows(1, ["alice"], ["eeg", "camera_0"]),  # alice is already stored: kept, not rewritten
        rows(2, ["bob"], ["mic"]),
        rows(3, ["bob", "carol"], ["eeg"]),  # bob first comes earlier in the same batch
    ]
    results = any_catalog.register_sessions(batch, on_conflict_participant="keep")
    assert [r.recording_hash for r in results] == [h(1), h(2), h(3)]  # type: ignore[union-attr]
    assert delta(before, any_catalog.table_versions()) == {t: 1 for t in SESSION_TABLES}
    assert {p.participant_id for p in any_catalog.list_participants()} == {"alice", "bob", "carol"}
    assert sorted(m.worker_subdir for _, ms in any_catalog.query() for m in ms) == sorted(
        ["eeg", "eeg", "camera_0", "mic", "eeg"]
    )
    # the same batch again: nothing to write
    after = any_catalog.table_versions()
    again = any_catalog.register_sessions(batch, on_conflict_participant="keep")
    assert [r.recording_hash for r in again] == [h(1), h(2), h(3)]  # type: ignore[union-attr]
    assert any_catalog.table_versions() == after


def test_a_conflicting_session_in_a_batch_is_left_out_alone(catalog: Catalog) -> None:
    register(catalog, 1, ["alice"], ["eeg"])
    before = catalog.table_versions()
    batch = [
        rows(2, ["bob"], ["eeg"]),
        rows(1, ["alice"], ["eeg"], start_time=5),  # differs from the stored recording
        SessionRows([person("zoe")], recording(3, ["zoe"]), [modality(3, "eeg"), modality(3, "eeg", byte_count=1)]),
        rows(4, [], ["mic"]),
        rows(2, ["bob"], ["eeg"], start_time=7),  # differs from session 2 earlier in this batch
        SessionRows([], recording(5, ["nobody"]), [modality(5, "eeg")]),
    ]
    results = catalog.register_sessions(batch)
    ok, conflict, twice, ok4, conflict_in_batch, unknown = results
    assert isinstance(ok, RecordingRow) and ok.recording_hash == h(2)
    assert isinstance(conflict, CatalogRowExists) and conflict.diff == {"start_time": (1001, 5)}
    assert isinstance(twice, ValueError) and "two different rows" in str(twice)
    assert isinstance(ok4, RecordingRow)
    assert isinstance(conflict_in_batch, CatalogRowExists) and conflict_in_batch.diff == {"start_time": (1002, 7)}
    assert isinstance(unknown, ValueError) and "unregistered participants" in str(unknown)
    assert delta(before, catalog.table_versions()) == {t: 1 for t in SESSION_TABLES}
    assert catalog.get_recording(h(1)).start_time == 1001  # type: ignore[union-attr]
    assert catalog.get_recording(h(2)).start_time == 1002  # type: ignore[union-attr]
    assert catalog.get_participant("zoe") is None  # its session was left out: none of its rows
    assert catalog.get_recording(h(3)) is None and catalog.get_recording(h(5)) is None
    assert catalog.get_modality(h(4), "mic") is not None


# -- single-row registration and policies ------------------------------------------------


def test_recording_conflict_carries_an_exact_diff(catalog: Catalog) -> None:
    catalog.register_recording(recording(1, ["alice"]))
    with pytest.raises(CatalogRowExists) as err:
        catalog.register_recording(recording(1, ["alice"], duration_ns=5, metadata={"protocol": "task", "x": 1}))
    assert err.value.table == "recordings"
    assert err.value.primary_key == (("recording_hash", h(1)),)
    assert err.value.diff == {
        "duration_ns": (60_000_000_000, 5),
        "metadata": ({"protocol": "rest"}, {"protocol": "task", "x": 1}),
    }
    assert "on_conflict" in str(err.value)


def test_recording_overwrite_replaces_the_row(catalog: Catalog) -> None:
    catalog.register_recording(recording(1, ["alice"]))
    new = recording(1, ["bob"], duration_ns=7, device_info={})
    assert catalog.register_recording(new, on_conflict="overwrite") == new
    assert catalog.get_recording(h(1)) == new
    assert len(catalog.list_recordings()) == 1


def test_recording_extend_takes_the_longer_duration_only(catalog: Catalog) -> None:
    catalog.register_recording(recording(1, ["alice"], duration_ns=100))
    longer = catalog.register_recording(recording(1, ["alice"], duration_ns=300), on_conflict="extend")
    assert longer.duration_ns == 300
    before = catalog.table_versions()
    shorter = catalog.register_recording(recording(1, ["alice"], duration_ns=200), on_conflict="extend")
    assert shorter.duration_ns == 300
    assert catalog.table_versions() == before
    with pytest.raises(CatalogRowExists) as err:
        catalog.register_recording(recording(1, ["alice"], duration_ns=400, rec_id="other"), on_conflict="extend")
    assert set(err.value.diff) == {"duration_ns", "rec_id"}
    assert catalog.get_recording(h(1)).duration_ns == 300  # type: ignore[union-attr]


def test_recording_merge_participants_is_a_sorted_union(catalog: Catalog) -> None:
    catalog.register_recording(recording(1, ["carol", "alice"]))
    merged = catalog.register_recording(recording(1, ["bob", "alice"]), on_conflict="merge_participants")
    assert merged.participant_ids == ["alice", "bob", "carol"]
    assert catalog.get_recording(h(1)).participant_ids == ["alice", "bob", "carol"]  # type: ignore[union-attr]
    with pytest.raises(CatalogRowExists):
        catalog.register_recording(recording(1, ["dave"], start_time=1), on_conflict="merge_participants")


def test_participant_modality_and_event_policies(catalog: Catalog) -> None:
    catalog.register_participant(person("alice"))
    with pytest.raises(CatalogRowExists) as err:
        catalog.register_participant(ParticipantRow(participant_id="alice", display_name="ALICE"))
    assert err.value.diff == {"display_name": ("Alice", "ALICE")}
    renamed = catalog.register_participant(
        ParticipantRow(participant_id="alice", display_name="ALICE"), on_conflict="overwrite"
    )
    assert catalog.get_participant("alice") == renamed

    catalog.register_modality(modality(1, "eeg"))
    with pytest.raises(CatalogRowExists) as err:
        catalog.register_modality(modality(1, "eeg", ingestion_status=IngestionStatus.PROCESSED))
    assert err.value.primary_key == (("recording_hash", h(1)), ("modality", "eeg"), ("worker_id", ""))
    processed = modality(1, "eeg", ingestion_status="processed", format="zarr", storage_uri="s3://assets/p/")
    catalog.register_modality(processed, on_conflict="overwrite")
    got = catalog.get_modality(h(1), "eeg")
    assert got == processed
    assert got is not None and got.ingestion_status is IngestionStatus.PROCESSED
    assert got.format is StorageFormat.ZARR

    event = EventRow(event_id="ev-1", recording_hash=h(1), event_time=1.5, event_type="prompt", prompt="it's?")
    assert catalog.register_event(event) == event
    before = catalog.table_versions()
    assert catalog.register_event(event) == event
    assert catalog.table_versions() == before
    with pytest.raises(CatalogRowExists) as err:
        catalog.register_event(event.model_copy(update={"response": "yes"}))
    assert err.value.diff == {"response": (None, "yes")}
    with pytest.raises(ValueError, match="on_conflict"):
        catalog.register_recording(recording(1, []), on_conflict="replace")  # type: ignore[arg-type]


def test_add_is_a_strict_insert(catalog: Catalog) -> None:
    catalog.add_participant(person("alice"))
    with pytest.raises(CatalogRowExists) as err:
        catalog.add_participant(person("alice"))
    assert err.value.diff == {}
    before = catalog.table_versions()
    with pytest.raises(CatalogRowExists):
        catalog.add_rows([person("bob"), person("alice")])
    assert catalog.table_versions() == before  # checked before writing anything
    assert catalog.get_participant("bob") is None


def test_rows_round_trip_exactly(catalog: Catalog) -> None:
    row = modality(
        1,
        "eeg",
        "4559",
        sampling_rate=500.0,
        domain_intervals=[(0.0, 1.5), (2.0, 3.25)],
        channel_spec={"names": ["Fz", "Cz"], "unit": "uV"},
        metadata={"nested": {"b": [1, 2.5, None, True], "a": "é'\"\\"}},
        format=StorageFormat.RAW,
    )
    catalog.add_modality(row)
    assert catalog.get_modality(h(1), "eeg", "4559") == row
    assert catalog.get_modality(h(1), "eeg") is None  # worker_id is part of the key


def test_a_row_inserted_between_check_and_commit_is_caught(catalog: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    catalog.register_recording(recording(1, ["alice"]))
    real = Catalog._fetch_by_keys
    missed: list[bool] = []

    def first_check_misses(self: Catalog, spec: Any, keys: Any) -> Any:
        """As if another writer's row landed just after our check."""
        if not missed:
            missed.append(True)
            return {}
        return real(self, spec, keys)

    monkeypatch.setattr(Catalog, "_fetch_by_keys", first_check_misses)
    with pytest.raises(CatalogRowExists) as err:
        catalog.register_recording(recording(1, ["alice"], duration_ns=1))
    assert err.value.diff == {"duration_ns": (60_000_000_000, 1)}
    monkeypatch.undo()
    assert catalog.get_recording(h(1)).duration_ns == 60_000_000_000  # type: ignore[union-attr]
    assert len(catalog.list_recordings()) == 1


def test_concurrent_writers_on_s3_both_land(moto_server: MotoServer, s3_buckets: tuple[str, str]) -> None:
    uri, options = s3_catalog_args(moto_server, s3_buckets[1])
    first = Catalog.open(uri, storage_options=options)
    second = Catalog.open(uri, storage_options=options)
    errors: list[BaseException] = []

    def write(catalog: Catalog, numbers: range) -> None:
        try:
            for n in numbers:
                register(catalog, n, [f"p{n}"], ["eeg"])
        except BaseException as exc:  # reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(c, r)) for c, r in ((first, range(3)), (second, range(3, 6)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    first.refresh()
    assert sorted(hashes(first.query())) == sorted(h(n) for n in range(6))
    assert len(first.list_modalities()) == 6


# -- queries: pushed down, exact ---------------------------------------------------------


def test_query_filters_return_exactly_the_matching_rows(populated: Catalog) -> None:
    q = populated.query
    assert hashes(q()) == [h(n) for n in range(1, 7)]  # start_time order
    assert hashes(q(participants=["alice"])) == [h(1), h(3)]
    assert hashes(q(participants=["alice", "dave"])) == [h(1), h(3), h(4)]
    assert hashes(q(participants=["carol", "bob", "nobody"])) == [h(2), h(3), h(6)]
    assert hashes(q(participants=[])) == []
    assert hashes(q(rec_id=recording(4, []).rec_id)) == [h(4)]
    assert hashes(q(recording_hash=h(5))) == [h(5)]
    assert hashes(q(recording_hash=h(5), participants=["alice"])) == []
    assert hashes(q(metadata={"protocol": "rest"})) == [h(n) for n in range(1, 7)]
    assert hashes(q(metadata={"protocol": "task"})) == []
    assert hashes(q(limit=2)) == [h(1), h(2)]
    assert hashes(q(participants=["carol", "alice"], limit=2)) == [h(1), h(3)]


def test_query_by_modality_returns_only_matching_modality_rows(populated: Catalog) -> None:
    found = populated.query(modalities=["eeg"])
    assert hashes(found) == [h(1), h(2), h(3), h(6)]
    assert {r.recording_hash: [m.worker_subdir for m in ms] for r, ms in found}[h(3)] == ["eeg_a", "eeg_b"]
    assert all(m.modality == "eeg" for _, ms in found for m in ms)
    assert hashes(populated.query(modalities=["mic", "camera"], participants=["carol"])) == [h(3), h(6)]
    assert hashes(populated.query(modalities=["mic"], limit=1)) == [h(2)]
    assert hashes(populated.query(modalities=["eeg"], recording_hash=h(4))) == []
    assert populated.query(modalities=[]) == []
    # without a modality filter every modality row of the recording comes back
    (_, mods), *_ = populated.query(recording_hash=h(6))
    assert [m.worker_subdir for m in mods] == ["camera_1", "eeg", "mic_a"]


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_filter_values_match_nothing(populated: Catalog, value: str) -> None:
    assert populated.query(participants=[value]) == []
    assert populated.query(rec_id=value) == []
    assert populated.query(recording_hash=value) == []
    assert populated.query(modalities=[value]) == []
    assert populated.query(metadata={"protocol": value}) == []
    assert populated.list_recordings(where={"rec_id": value}) == []
    assert populated.list_recordings(where={"participant_ids": [value, "nobody"]}) == []
    assert populated.get_participant(value) is None
    assert len(populated.list_recordings()) == 6  # nothing was dropped or changed


def test_filters_are_pushed_down_to_lance(populated: Catalog, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, str | None]] = []
    real = Catalog._ascan

    async def spy(self: Catalog, spec: Any, table: Any, where: str | None, **kw: Any) -> Any:
        seen.append((spec.name, where))
        return await real(self, spec, table, where, **kw)

    monkeypatch.setattr(Catalog, "_ascan", spy)
    populated.get_recording(h(2))
    assert seen == [("recordings", f"recording_hash = '{h(2)}'")]
    seen.clear()
    populated.query(participants=["alice", "bob"])
    assert seen[0] == ("recordings", "array_has_any(participant_ids, ['alice', 'bob'])")
    assert seen[1][0] == "modalities" and seen[1][1] is not None and seen[1][1].startswith("recording_hash IN (")
    seen.clear()
    populated.query(modalities=["mic"], limit=5)
    assert seen[0] == ("modalities", "modality = 'mic'")
    assert seen[1][0] == "recordings" and "recording_hash IN (" in (seen[1][1] or "")
    assert all(where is not None for _, where in seen)


def test_rows_added_after_indexing_are_found_before_and_after_optimize(catalog: Catalog) -> None:
    register(catalog, 1, ["alice"], ["eeg"])
    catalog.optimize()
    register(catalog, 2, ["alice", "bob"], ["eeg", "mic"])  # lands in an unindexed fragment
    for _ in range(2):
        assert hashes(catalog.query(participants=["bob"])) == [h(2)]
        assert hashes(catalog.query(participants=["alice"])) == [h(1), h(2)]
        assert hashes(catalog.query(modalities=["mic"])) == [h(2)]
        assert catalog.get_recording(h(2)) is not None
        catalog.optimize()


def test_handles_in_one_process_read_each_others_writes(catalog: Catalog) -> None:
    reader = Catalog.open(catalog.uri, writable=False, read_consistency_interval=None)
    assert reader.query() == []
    register(catalog, 1, ["alice"], ["eeg"])
    assert hashes(reader.query()) == [h(1)]  # e.g. the assets_ro handle after an assets_rw write


def test_other_processes_commits_show_after_refresh_or_interval(catalog: Catalog) -> None:
    lazy = Catalog.open(catalog.uri, writable=False, read_consistency_interval=None)
    eager = Catalog.open(catalog.uri, writable=False, read_consistency_interval=timedelta(0))
    assert lazy.query() == eager.query() == []
    script = (
        "import sys; sys.path[:0] = [sys.argv[2], sys.argv[3]]; import test_catalog as t; "
        "from ursa_daemon.catalog import Catalog; t.register(Catalog.open(sys.argv[1]), 1, ['alice'], ['eeg'])"
    )
    tests_dir = Path(__file__).parent
    subprocess.run([sys.executable, "-c", script, catalog.uri, str(tests_dir.parent), str(tests_dir)], check=True)
    assert lazy.query() == []  # never looks for other writers' commits by itself
    assert hashes(eager.query()) == [h(1)]
    lazy.refresh()
    assert hashes(lazy.query()) == [h(1)]


# -- list_* -------------------------------------------------------------------------------


def test_list_where_dict_and_str(populated: Catalog) -> None:
    mods = populated.list_modalities(where={"modality": ["mic", "camera"], "worker_id": "a"})
    assert [(m.recording_hash, m.worker_subdir) for m in mods] == sorted(
        [(h(2), "mic_a"), (h(4), "mic_a"), (h(6), "mic_a")]
    )
    assert len(populated.list_modalities(where={"storage_uri": None})) == 12
    assert populated.list_modalities(where={"modality": []}) == []
    recs = populated.list_recordings(where={"participant_ids": "carol"})
    assert {r.recording_hash for r in recs} == {h(3), h(6)}
    assert len(populated.list_recordings(where={"device_info": {"rig": "green-mantis"}})) == 6
    assert len(populated.list_recordings(where="start_time >= 1004")) == 3
    assert len(populated.list_recordings(where="start_time >= 1004", limit=2)) == 2
    people = populated.list_participants(limit=2)
    assert [p.participant_id for p in people] == ["alice", "bob"]
    with pytest.raises(ValueError, match="no column 'secret'"):
        populated.list_recordings(where={"secret": 1})
    with pytest.raises(ValueError, match="no column"):
        populated.list_recordings(where={"rec_id = rec_id OR 1": 1})
    with pytest.raises(CatalogError):
        populated.list_recordings(where="rec_id = = 1")


def test_the_other_systems_tables_are_readable(catalog: Catalog) -> None:
    emb = EmbeddingRow(
        embedding_id="emb-1", recording_hash=h(1), modality="eeg", model_name="m1", dim=512, storage_uri="s3://a/e"
    )
    asset = VirgoAssetRow(asset_id="va-1", recording_hash=h(1), asset_type="zarr", storage_uri="s3://a/v")
    ckpt = CheckpointRow(checkpoint_id="ck-1", model_name="m1", storage_uri="s3://a/c", step=1000)
    suites = [BenchmarkSuiteRow(suite_name="sleep", suite_version=v, description=f"v{v}") for v in (1, 2)]
    result = BenchmarkResultRow(result_id="res-1", suite_name="sleep", suite_version=2, checkpoint_id="ck-1", score=0.9)
    catalog.add_embedding(emb)
    catalog.add_virgo_asset(asset)
    catalog.add_checkpoint(ckpt)
    catalog.add_rows(suites)
    catalog.add_benchmark_result(result)
    assert catalog.get_embedding("emb-1") == emb
    assert catalog.get_virgo_asset("va-1") == asset
    assert catalog.get_checkpoint("ck-1") == ckpt
    assert catalog.get_benchmark_suite("sleep", 2) == suites[1]
    assert catalog.get_benchmark_suite("sleep", 3) is None
    assert catalog.get_benchmark_result("res-1") == result
    assert catalog.list_embeddings(where={"recording_hash": h(1)}) == [emb]
    assert catalog.list_virgo_assets() == [asset]
    assert catalog.list_checkpoints(where={"step": 1000}) == [ckpt]
    assert catalog.list_benchmark_suites() == suites
    assert catalog.list_benchmark_results(where={"score": 0.9}) == [result]
    with pytest.raises(CatalogRowExists):
        catalog.add_benchmark_suite(suites[0])


# -- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: ParticipantRow(participant_id="Alice"),
        lambda: ParticipantRow(participant_id="-alice"),
        lambda: ParticipantRow(participant_id="a" * 129),
        lambda: ParticipantRow(participant_id="alice\n"),
        lambda: ParticipantRow(participant_id="alice", metadata={"x": float("nan")}),
        lambda: recording(1, ["Bad Name"]),
        lambda: recording(1, [], recording_hash=h(1).upper()),
        lambda: recording(1, [], recording_hash=h(1)[:63]),
        lambda: recording(1, [], rec_id="rec id"),
        lambda: recording(1, [], duration_ns=-1),
        lambda: recording(1, [], start_time="1000"),
        lambda: modality(1, "EEG"),
        lambda: modality(1, "eeg_1"),
        lambda: modality(1, "1eeg"),
        lambda: modality(1, "eeg", "A"),
        lambda: modality(1, "eeg", ingestion_status="done"),
        lambda: modality(1, "eeg", format="avi"),
        lambda: modality(1, "eeg", domain_intervals=[(2.0, 1.0)]),
        lambda: modality(1, "eeg", raw_storage_uri=""),
        lambda: EventRow(event_id="ev", recording_hash=h(1), event_time=float("inf"), event_type="x"),
        lambda: EventRow(event_id="ev", recording_hash=h(1), event_time=1.0, event_type=""),
    ],
)
def test_invalid_rows_are_rejected(make: Any) -> None:
    with pytest.raises(ValidationError):
        make()


def test_rows_are_frozen_and_normalised() -> None:
    rec = recording(1, ["bob", "alice", "bob"])
    assert rec.participant_ids == ["alice", "bob"]
    with pytest.raises(ValidationError):
        rec.rec_id = "other"  # type: ignore[misc]
    assert RecordingRow.__primary_key__ == ("recording_hash",)
    assert ModalityRow.__primary_key__ == ("recording_hash", "modality", "worker_id")
    assert BenchmarkSuiteRow.__primary_key__ == ("suite_name", "suite_version")
    assert ParticipantRow(participant_id="a", metadata={"t": (1, 2)}).metadata == {"t": [1, 2]}
