"""The ingest orchestrator (seed 002): ``ingest`` / ``ingest_from_r2`` as its documentation says.

``IngestResult``/``UploadProgress`` fields and the module functions' signatures are read
from the seed's text. Runs on the local profile, in-process.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import inspect
import json
import random
import re
from pathlib import Path
from typing import Any

import pytest
from harness import write_session
from seed_docs import check_shared_copy, text

import ursa
from ursa import DataInterface, IngestResult, UploadProgress
from ursa.catalog import WritesNotEnabled
from ursa.register import orchestrator

DOC = text("ingest_orchestrator.txt")
REC = "rec_20260520_195628_b1dd"


def _fields(cls_marker: str, end_marker: str) -> list[tuple[str, str]]:
    region = DOC[DOC.index(cls_marker) : DOC.index(end_marker)]
    return re.findall(r"- (\w+): ([^¶\n]+?)¶", region)


def _function_args(name: str) -> ast.arguments:
    found = re.search(rf"- ursa\.register\.orchestrator\.{name}\((.*?)\) ursa\.register", DOC, re.S)
    assert found is not None, name
    fn = ast.parse(f"def f({found.group(1)}): pass").body[0]
    assert isinstance(fn, ast.FunctionDef)
    return fn.args


def test_vendored_doc_is_the_seed() -> None:
    check_shared_copy("ingest_orchestrator.txt")


def test_result_and_progress_fields_are_the_seeds() -> None:
    result = _fields("class ursa.register.orchestrator.IngestResult", "exception ursa.register.orchestrator")
    progress = _fields("class ursa.register.orchestrator.UploadProgress", "- ursa.register.orchestrator.ingest(")
    assert [n for n, _ in result] == ["paused", "recording", "files_uploaded", "files_skipped", "bytes_uploaded"]
    ours = [f.name for f in dataclasses.fields(IngestResult)]
    assert sorted(ours[: len(result)]) == sorted(n for n, _ in result)
    assert [f.name for f in dataclasses.fields(UploadProgress)] == [n for n, _ in progress]
    assert orchestrator.IngestResult is ursa.IngestResult and orchestrator.UploadProgress is ursa.UploadProgress


def test_the_seeds_exceptions_exist_with_their_bases() -> None:
    pattern = r"- exception ursa\.register\.orchestrator\.(\w+)\[source\]¶\s*Bases:\s*([A-Z]\w*?(?:Error|Exception))"
    documented = re.findall(pattern, DOC)
    assert documented, "the seed documents no exception"
    for name, base in documented:
        cls = getattr(orchestrator, name)
        assert name in orchestrator.__all__ and issubclass(cls, getattr(builtins, base)), (name, base)
    from ursa_daemon.transfer.body import UploadInterrupted

    assert orchestrator.UploadInterrupted is UploadInterrupted  # the one our reads raise, not a look-alike


@pytest.mark.parametrize("name", ["ingest", "ingest_from_r2"])
def test_module_functions_have_the_seeds_signature(name: str) -> None:
    args = _function_args(name)
    ours = inspect.signature(getattr(orchestrator, name)).parameters
    assert [a.arg for a in args.args] == [p.name for p in ours.values() if p.kind is p.POSITIONAL_OR_KEYWORD]
    for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True):
        p = ours[a.arg]
        assert p.kind is p.KEYWORD_ONLY
        assert (p.default is p.empty) == (d is None), a.arg
        if d is not None:
            assert p.default == ast.literal_eval(d), a.arg


@pytest.fixture
def data(tmp_path: Path) -> DataInterface:
    di = DataInterface(profile="local", path=tmp_path / "store")
    di.enable_writes(roles=("assets_rw", "raw_rw"))
    return di


def _session(root: Path, rec_id: str = REC, **kw: Any) -> Path:
    rng = random.Random(rec_id)
    files = {f"{w}/seg_{i:06d}.bin": rng.randbytes(5_000 + i) for w in ("eeg_4559", "camera_0") for i in (1, 2)}
    return write_session(root, rec_id, files, **kw)


def test_rows_only_after_every_byte_pause_and_resume(data: DataInterface, tmp_path: Path) -> None:
    rec = _session(tmp_path / "nas")
    events: list[UploadProgress] = []
    active = False

    def on_progress(p: UploadProgress) -> None:
        nonlocal active
        events.append(p)
        active = True  # the rig starts recording after the first file

    paused = orchestrator.ingest(data, rec / "manifest.json", source_dir=rec, participant_id=None,
                                 is_active=lambda: active, progress=on_progress, max_concurrent_files=1)
    assert paused.paused and paused.recording is None
    assert 1 <= paused.files_uploaded < 4
    assert data.query(status="all") == []  # no catalog row while any byte is missing
    events.clear()
    done = data.ingest(rec / "manifest.json", source_dir=rec, progress=on_progress)
    assert not done.paused and done.recording is not None
    assert done.files_skipped == paused.files_uploaded and done.files_uploaded == 4 - paused.files_uploaded
    # bytes_processed climbs through the skips, bytes_uploaded counts PUT bytes only
    assert events[-1].bytes_processed == events[-1].bytes_total > events[-1].bytes_uploaded == done.bytes_uploaded
    assert [e.files_done for e in events] == [1, 2, 3, 4] and all(e.files_total == 4 for e in events)
    again = data.ingest(rec / "manifest.json", source_dir=rec)  # idempotent end to end
    assert (again.files_uploaded, again.files_skipped, again.recording) == (0, 4, done.recording)


def test_progress_callback_errors_do_not_break_the_upload(data: DataInterface, tmp_path: Path) -> None:
    rec = _session(tmp_path / "nas", participant="Aria Lin")

    def broken(p: UploadProgress) -> None:
        raise RuntimeError("bar gone")

    res = data.ingest(rec / "manifest.json", source_dir=rec, progress=broken)
    assert res.recording is not None and res.files_uploaded == 4
    assert res.recording.participant_ids == ["aria_lin"]


def test_refusals_name_the_fix(tmp_path: Path, data: DataInterface) -> None:
    rec = _session(tmp_path / "nas")
    (rec / "manifest.json").unlink()
    with pytest.raises(FileNotFoundError, match="reconstruct"):
        data.ingest(rec / "manifest.json", source_dir=rec)
    other = _session(tmp_path / "other", "rec_20260520_200000_b1de")
    with pytest.raises(ValueError, match="manifest_path"):
        data.ingest(other / "manifest.json", source_dir=rec)
    assets_only = DataInterface(profile="local", path=tmp_path / "store")
    assets_only.enable_writes()
    with pytest.raises(WritesNotEnabled, match="raw_rw"):
        assets_only.ingest(other / "manifest.json", source_dir=other)
    with pytest.raises(ValueError, match="collapse_modalities"):
        orchestrator.ingest(data, other / "manifest.json", source_dir=other, participant_id=None,
                            collapse_modalities=False)
    assert data.query(status="all") == []


def test_dual_node_half_is_ingested_normally_and_the_peer_later(data: DataInterface, tmp_path: Path) -> None:
    """The runbook's dual-node caveat: ingest the half that is on the NAS; the peer half,
    ingested later, adds its modality rows to the same recording_hash."""
    def half(root: Path, host: str, files: dict[str, bytes]) -> Path:
        rec = root / REC
        for rel, body in files.items():
            (rec / rel).parent.mkdir(parents=True, exist_ok=True)
            (rec / rel).write_bytes(body)
        (rec / "_node_manifests").mkdir(parents=True, exist_ok=True)
        doc = {"recording_id": REC, "start_time": "2026-05-20T19:56:28+00:00", "duration_s": 60,
               "nodes": ["green-mantis", "green-motor"]}
        (rec / "_node_manifests" / f"{host}.json").write_text(json.dumps(doc))
        return rec

    host = half(tmp_path / "nas", "green-mantis", {"camera_0/seg_000001.mp4": b"v" * 3000})
    first = data.ingest(host / "_node_manifests" / "green-mantis.json", source_dir=host)
    assert first.recording is not None and first.files_uploaded == 1
    [qr] = data.query(rec_id=REC, status="raw")
    assert sorted(qr.modalities) == ["camera"]
    peer = half(tmp_path / "peer", "green-motor", {"eeg_4559/seg_000001.bin": b"e" * 2000})
    second = data.ingest(peer / "_node_manifests" / "green-motor.json", source_dir=peer)
    assert second.recording is not None and second.recording.recording_hash == first.recording.recording_hash
    [qr] = data.query(rec_id=REC, status="raw")
    assert sorted(qr.modalities) == ["camera", "eeg"]


def test_a_blank_participant_is_no_participant(data: DataInterface, tmp_path: Path) -> None:
    """The runbook reads ``participant.txt`` with ``.strip()``: an empty file gives ``""``."""
    rec = _session(tmp_path / "nas", participant="   ")
    participant = (rec / "participant.txt").read_text().strip()
    res = data.ingest(manifest_path=rec / "manifest.json", source_dir=rec, participant=participant)
    assert res.recording is not None and res.recording.participant_ids == []
    assert data.list_participants() == []
