"""The download module (seed 001): ``DataInterface.download`` keeps its documented contract.

Layouts (read from the seed's text), the flat list in deterministic order, the
refusal of existing destinations before any byte moves, and a registered row whose
prefix lists nothing. Runs on the local profile, in-process.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from harness import write_session
from seed_docs import check_shared_copy, text

from ursa import DataInterface, QueryResult

DOC = text("download_module.txt")
R1, R2 = "rec_20260520_195628_b1dd", "rec_20260521_101500_0a1b"
FILES = {
    R1: {"eeg_4559/seg_000002.bin": b"e2" * 50, "eeg_4559/seg_000001.bin": b"e1" * 40,
         "camera_0/a/seg_1.mp4": b"c" * 70},
    R2: {"mic/seg_000001.bin": b"m" * 30},
}


def layouts() -> dict[str, str]:
    found = dict(re.findall(r'``"(\w+)"``(?: \(default\))? →\n``(dest/[^`]+)``', DOC))
    assert sorted(found) == ["by_modality", "by_recording", "flat"]
    return found


@pytest.fixture
def data(tmp_path: Path) -> DataInterface:
    di = DataInterface(profile="local", path=tmp_path / "store")
    di.enable_writes(roles=("assets_rw", "raw_rw"))
    for rec_id, files in FILES.items():
        rec = write_session(tmp_path / "nas", rec_id, files)
        di.ingest(rec / "manifest.json", source_dir=rec)
    return di


def results(data: DataInterface) -> dict[str, QueryResult]:
    return {r.rec_id: r for r in data.query(status="raw")}


def test_vendored_module_is_the_seed() -> None:
    check_shared_copy("download_module.txt")


@pytest.mark.parametrize("layout", sorted(layouts()))
def test_layouts_follow_the_seed(data: DataInterface, tmp_path: Path, layout: str) -> None:
    template = layouts()[layout]
    by = results(data)
    dest = tmp_path / layout
    paths = data.download([by[R1], by[R2]], dest, layout=layout)  # type: ignore[arg-type]
    want = []
    for rec_id in (R1, R2):  # input order, then modality key order, then object key order
        qr = by[rec_id]
        for name, row in qr.modalities.items():
            worker = row.worker_subdir
            for rel in sorted(r for r in FILES[rec_id] if r.split("/")[0] == worker):
                key = rel.split("/", 1)[1]
                want.append(Path(template.replace("dest", str(dest), 1).format(
                    recording_hash=qr.recording_hash, modality=name, relative_segment_key=key)))
    assert paths == want
    for p in paths:
        rec_id = R1 if by[R1].recording_hash in str(p) else R2
        assert p.read_bytes() in FILES[rec_id].values()


def test_single_result_still_gives_a_flat_list(data: DataInterface, tmp_path: Path) -> None:
    qr = results(data)[R2]
    one = data.download(qr, tmp_path / "a")
    many = data.download([qr], tmp_path / "b")
    assert one == [tmp_path / "a" / qr.recording_hash / "mic" / "seg_000001.bin"]
    assert many == [tmp_path / "b" / qr.recording_hash / "mic" / "seg_000001.bin"]
    with pytest.raises(ValueError, match="layout"):
        data.download(qr, tmp_path / "c", layout="nested")  # type: ignore[arg-type]
    assert not (tmp_path / "c").exists()


def test_existing_destinations_are_refused_before_any_io(data: DataInterface, tmp_path: Path) -> None:
    qr = results(data)[R1]
    dest = tmp_path / "d"
    existing = dest / qr.recording_hash / "eeg" / "seg_000002.bin"
    existing.parent.mkdir(parents=True)
    existing.write_bytes(b"old")
    with pytest.raises(FileExistsError, match=r"refusing to overwrite|exist") as exc:
        data.download(qr, dest)
    assert str(existing) in str(exc.value)
    assert sorted(p for p in dest.rglob("*") if p.is_file()) == [existing] and existing.read_bytes() == b"old"
    paths = data.download(qr, dest, overwrite=True)
    assert existing.read_bytes() == FILES[R1]["eeg_4559/seg_000002.bin"] and len(paths) == 3
    assert not list(dest.rglob("*.part"))


def test_stream_gives_the_same_bytes_chunk_by_chunk(data: DataInterface) -> None:
    qr = results(data)[R1]
    got: dict[str, bytes] = {}
    for chunk in data.stream(qr, chunk_size=16):
        assert len(chunk.data) <= 16
        got[chunk.key] = got.get(chunk.key, b"") + chunk.data
    assert {k.split(f"{R1}/", 1)[1]: v for k, v in got.items()} == FILES[R1]


def test_a_registered_row_without_objects_is_an_error(data: DataInterface, tmp_path: Path) -> None:
    qr = results(data)[R2]
    uri = qr.modalities["mic"].raw_storage_uri.replace("/mic/", "/notes/")
    data.register_modality(recording_hash=qr.recording_hash, modality="notes", raw_storage_uri=uri)
    [qr] = data.query(recording_hash=qr.recording_hash, status="raw")
    with pytest.raises(FileNotFoundError, match="notes"):
        data.download(qr, tmp_path / "e")
