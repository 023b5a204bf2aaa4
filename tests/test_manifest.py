"""Manifests on disk: validation, hashing, augmenting. Each bad input names session, file, fix."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from ursa_daemon.errors import InputError
from ursa_daemon.session import (
    FileEntry,
    augment,
    hash_file,
    hash_files,
    load_session,
    participant_id,
    recording_hash,
    walk_session,
)

REC = "rec_20260520_195628_b1dd"


def make_session(root: Path, files: dict[str, bytes] | None = None, manifest: object = None, **extra: object) -> Path:
    rec = root / REC
    files = files if files is not None else {"eeg_4559/seg_000001.bin": b"\x01" * 1000, "camera_0/a.mp4": b"v" * 10}
    for rel, body in files.items():
        p = rec / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(body)
    rec.mkdir(parents=True, exist_ok=True)
    if manifest is None:
        manifest = {"recording_id": REC, "start_time": "2026-05-20T19:56:28.120+00:00", "duration_s": 60.5, **extra}
    text = manifest if isinstance(manifest, str | bytes) else json.dumps(manifest)
    (rec / "manifest.json").write_bytes(text.encode() if isinstance(text, str) else text)
    return rec


def test_load_session_reads_fields(tmp_path: Path) -> None:
    rec = make_session(tmp_path)
    (rec / "participant.txt").write_text("  Aria Lin \n")
    (rec / "eeg_4559" / ".hidden").write_bytes(b"x")
    (rec / "eeg_4559" / "seg_2.bin.part").write_bytes(b"x")
    (rec / "eeg_4559" / "seg_3.bin~").write_bytes(b"x")
    (rec / "stray.txt").write_bytes(b"not data")
    s = load_session(rec)
    assert [f.rel_path for f in s.files] == ["camera_0/a.mp4", "eeg_4559/seg_000001.bin"]
    assert s.participant == "Aria Lin"
    assert s.duration_ns == 60_500_000_000
    assert s.start_time_ns == 1779306988120000000


def test_epoch_ns_start_and_end_time(tmp_path: Path) -> None:
    rec = make_session(tmp_path, manifest={"recording_id": REC, "start_time": 1_000, "end_time": 5_000})
    s = load_session(rec)
    assert (s.start_time_ns, s.duration_ns) == (1_000, 4_000)


def test_recording_hash_definition() -> None:
    digests = [hashlib.sha256(b).hexdigest() for b in (b"b", b"a")]
    expected = hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest()
    assert recording_hash(digests) == expected


def test_hash_files_parallel_and_augment_idempotent(tmp_path: Path) -> None:
    rec = make_session(tmp_path, {f"eeg_a/s{i}.bin": os.urandom(3000 + i) for i in range(6)})
    s = load_session(rec)
    hashed = hash_files(rec, s.files, max_workers=3)
    for e in hashed:
        assert e.sha256 == hashlib.sha256((rec / e.rel_path).read_bytes()).hexdigest()
    doc = augment(s.manifest, hashed)
    assert [f["rel_path"] for f in doc["files"]] == sorted(f.rel_path for f in hashed)
    assert doc["recording_hash"] == recording_hash(e.sha256 for e in hashed if e.sha256)
    assert doc["manifest_version"] == 1 and doc["duration_s"] == 60.5
    assert augment(doc, hashed) == doc  # idempotent, augmented_at kept
    (rec / "eeg_a" / "s0.bin").write_bytes(b"changed")
    rehashed = hash_files(rec, walk_session(rec))
    assert augment(doc, rehashed)["recording_hash"] != doc["recording_hash"]


def test_hash_file_streams(tmp_path: Path) -> None:
    p = tmp_path / "big"
    p.write_bytes(os.urandom(3 << 20))
    assert hash_file(p, chunk_size=4096) == (hashlib.sha256(p.read_bytes()).hexdigest(), 3 << 20)


def test_participant_id() -> None:
    assert participant_id("  Aria  Lin!! ") == "aria_lin"
    assert participant_id("Zoë O'Neil") == "zo_o_neil"


def expect_error(rec: Path, *words: str) -> InputError:
    with pytest.raises(InputError) as info:
        load_session(rec)
    msg = str(info.value)
    assert REC in msg or rec.name in msg, msg
    for w in words:
        assert w in msg, msg
    return info.value


def test_malformed_json(tmp_path: Path) -> None:
    expect_error(make_session(tmp_path, manifest='{"recording_id": '), "manifest.json", "not valid JSON", "reconstruct")


@pytest.mark.parametrize("missing", ["recording_id", "start_time"])
def test_missing_required_key(tmp_path: Path, missing: str) -> None:
    doc = {"recording_id": REC, "start_time": 5}
    doc.pop(missing)
    expect_error(make_session(tmp_path, manifest=doc), "manifest.json", missing)


def test_recording_id_differs_from_directory(tmp_path: Path) -> None:
    rec = make_session(tmp_path, manifest={"recording_id": "rec_20260520_195628_ffff", "start_time": 5})
    expect_error(rec, "rec_20260520_195628_ffff", "rename")


def test_bad_start_time(tmp_path: Path) -> None:
    expect_error(make_session(tmp_path, manifest={"recording_id": REC, "start_time": "2026-05-20T19:56:28"}),
                 "start_time", "offset")


@pytest.mark.parametrize("rel", ["/etc/passwd", "../x/y", "eeg_4559/../../z", "eeg_4559//a", "./eeg/a", "top.bin"])
def test_unsafe_rel_path(tmp_path: Path, rel: str) -> None:
    doc = {"recording_id": REC, "start_time": 5, "files": [{"rel_path": rel, "size": 1}]}
    err = expect_error(make_session(tmp_path, manifest=doc), "rel_path")
    assert err.file == rel


def test_listed_file_missing_or_size_differs(tmp_path: Path) -> None:
    doc = {
        "recording_id": REC,
        "start_time": 5,
        "files": [
            {"rel_path": "eeg_4559/seg_000001.bin", "size": 999},
            {"rel_path": "eeg_4559/absent.bin", "size": 1},
        ],
    }
    expect_error(make_session(tmp_path, manifest=doc), "eeg_4559/absent.bin", "size differs", "eeg_4559/seg_000001.bin")


def test_listed_files_are_the_truth(tmp_path: Path) -> None:
    doc = {"recording_id": REC, "start_time": 5, "files": [{"rel_path": "camera_0/a.mp4", "size": 10}]}
    s = load_session(make_session(tmp_path, manifest=doc))
    assert [f.rel_path for f in s.files] == ["camera_0/a.mp4"]


@pytest.mark.parametrize("where", ["eeg_4559/link.bin", "linkdir"])
def test_symlink_anywhere(tmp_path: Path, where: str) -> None:
    rec = make_session(tmp_path)
    os.symlink("/etc/hostname", rec / where)
    err = expect_error(rec, "symbolic link", where)
    assert err.file == where


def test_no_data_files(tmp_path: Path) -> None:
    expect_error(make_session(tmp_path, files={}), "no data files")


@pytest.mark.parametrize("bad", ["Camera_0", "9eeg", "eeg_BAD", "eeg a"])
def test_bad_worker_directory(tmp_path: Path, bad: str) -> None:
    err = expect_error(make_session(tmp_path, files={f"{bad}/x.bin": b"1"}), bad, "worker name")
    assert err.file == bad


@pytest.mark.parametrize(
    ("body", "words"),
    [(b"x" * 5000, "larger than"), (b"\xff\xfe\x00bad", "not UTF-8")],
)
def test_bad_participant_file(tmp_path: Path, body: bytes, words: str) -> None:
    rec = make_session(tmp_path)
    (rec / "participant.txt").write_bytes(body)
    err = expect_error(rec, "participant.txt", words)
    assert err.file == "participant.txt"


def test_node_manifests_merge(tmp_path: Path) -> None:
    rec = make_session(tmp_path)
    (rec / "manifest.json").unlink()
    nodes = rec / "_node_manifests"
    nodes.mkdir()
    for host, worker in (("a", "eeg_4559"), ("b", "camera_0")):
        (nodes / f"{host}.json").write_text(
            json.dumps({"recording_id": REC, "start_time": 5, "nodes": ["a", "b"], "workers": {worker: {}}})
        )
    s = load_session(rec)
    assert s.manifest["nodes"] == ["a", "b"]
    assert set(s.manifest["workers"]) == {"eeg_4559", "camera_0"}


def test_file_entry_worker() -> None:
    assert FileEntry("eeg_4559/deep/x.bin", 1).worker == "eeg_4559"


def test_augment_keeps_the_rigs_keys_of_each_file_entry(tmp_path: Path) -> None:
    rec = make_session(
        tmp_path,
        manifest={
            "recording_id": REC,
            "start_time": 0,
            "files": [{"rel_path": "eeg/a.bin", "size": 3, "channel": "Cz"}],
        },
        files={"eeg/a.bin": b"abc"},
    )
    s = load_session(rec)
    doc = augment(s.manifest, hash_files(rec, s.files))
    sha = hashlib.sha256(b"abc").hexdigest()
    assert doc["files"] == [{"rel_path": "eeg/a.bin", "size": 3, "sha256": sha, "channel": "Cz"}]
    assert augment(doc, hash_files(rec, s.files)) == doc  # still idempotent


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ({"start_time": 10, "end_time": 5}, "end_time is before start_time"),
        ({"start_time": 0, "duration_s": float("inf")}, "duration_s"),
    ],
)
def test_impossible_time_spans(tmp_path: Path, extra: dict, words: str) -> None:  # type: ignore[type-arg]
    expect_error(make_session(tmp_path, manifest={"recording_id": REC, **extra}), words)


# -- issue 12: bounded numbers, deep JSON, names the stores cannot carry, colliding workers ----


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        ({"duration_s": 1e300}, "duration_s"),
        ({"duration_s": 10**400}, "duration_s"),
        ({"duration_s": 1e11}, "duration_s"),  # 1e20 ns
        ({"start_time": 10**30}, "start_time"),
        ({"start_time": -(10**30)}, "start_time"),
        ({"start_time": "9999-12-31T23:59:59+00:00"}, "start_time"),  # past 2262
        ({"start_time": -(2**63), "end_time": 2**63 - 1}, "end_time"),  # each fits, the span does not
    ],
)
def test_times_and_durations_must_fit_int64_ns(tmp_path: Path, fields: dict[str, object], key: str) -> None:
    doc = {"recording_id": REC, "start_time": "2026-05-20T19:56:28.120+00:00", **fields}
    if "end_time" not in fields and "duration_s" not in fields:
        doc["duration_s"] = 1.0
    err = expect_error(make_session(tmp_path, manifest=doc), key, "int64")
    assert err.file == "manifest.json"


def test_int64_edges_are_accepted(tmp_path: Path) -> None:
    rec = make_session(tmp_path, manifest={"recording_id": REC, "start_time": 2**63 - 1, "duration_s": 0})
    assert load_session(rec).start_time_ns == 2**63 - 1


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
                                  b'{"x": ' + b"[" * 200 + b"]" * 200 + b"}"])
def test_deeply_nested_json_is_refused_not_a_recursion_error(tmp_path: Path, body: bytes) -> None:
    expect_error(make_session(tmp_path, manifest=body), "manifest.json", "deeper than")


def test_deep_node_manifest_is_refused(tmp_path: Path) -> None:
    rec = make_session(tmp_path)
    (rec / "manifest.json").unlink()
    (rec / "_node_manifests").mkdir()
    (rec / "_node_manifests" / "a.json").write_bytes(b"[" * 100_000)
    err = expect_error(rec, "deeper than")
    assert err.file == "_node_manifests/a.json"


def test_manifest_that_is_a_directory_is_an_input_error(tmp_path: Path) -> None:
    rec = make_session(tmp_path)
    (rec / "manifest.json").unlink()
    (rec / "manifest.json").mkdir()
    expect_error(rec, "manifest.json", "not a regular file")


@pytest.mark.parametrize(
    ("name", "words"),
    [(b"a\xff.bin", "not UTF-8"), (b"take#1", "#<digits>"), (b"#42", "#<digits>"), (b"x" * 250, "1024 bytes")],
)
def test_file_names_no_store_can_carry(tmp_path: Path, name: bytes, words: str) -> None:
    rec = make_session(tmp_path)
    deep = b"/".join([b"d" * 200] * 4) if words == "1024 bytes" else b""
    path = os.path.join(os.fsencode(rec), b"eeg_4559", deep, name) if deep else os.path.join(
        os.fsencode(rec), b"eeg_4559", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(b"1")
    err = expect_error(rec, words)
    assert err.file is not None and err.file.startswith("eeg_4559/")
    err.file.encode("utf-8")  # the name is reported printable, never as a lone surrogate


def test_names_with_hash_not_at_the_end_are_data(tmp_path: Path) -> None:
    rec = make_session(tmp_path, files={"eeg/take#1.bin": b"1", "eeg/d#2/x": b"2", "eeg/#x": b"3"})
    assert [f.rel_path for f in load_session(rec).files] == ["eeg/#x", "eeg/d#2/x", "eeg/take#1.bin"]


def test_colliding_worker_directories_are_rejected_when_read(tmp_path: Path) -> None:
    err = expect_error(make_session(tmp_path, files={"eeg/a": b"1", "eeg_/b": b"2"}), "'eeg'", "'eeg_'", "rename")
    assert err.file == "eeg_"


def test_blank_participant_file_means_no_participant(tmp_path: Path) -> None:
    rec = make_session(tmp_path)
    (rec / "participant.txt").write_bytes(b"  \n")
    assert load_session(rec).participant is None


def test_participant_file_that_is_a_directory(tmp_path: Path) -> None:
    rec = make_session(tmp_path)
    (rec / "participant.txt").mkdir()
    expect_error(rec, "participant.txt")


def test_non_latin_participant_keeps_its_name_and_gets_an_id(tmp_path: Path) -> None:
    rec = make_session(tmp_path)
    (rec / "participant.txt").write_text("李小龍\n", encoding="utf-8")
    assert load_session(rec).participant == "李小龍"
    pid = participant_id("李小龍")
    assert re.fullmatch(r"p_[0-9a-f]{12}", pid)
    assert participant_id(" 李小龍 ") == pid and participant_id("李小虎") != pid
    assert participant_id("ΩΜΈΓΑ") == participant_id("ωμέγα")  # case-folded
    assert participant_id("Aria Lin") == "aria_lin" and participant_id("   ") == ""


@pytest.mark.parametrize("fields", [{"nodes": "h1"}, {"nodes": 5}, {"nodes": [None]}, {"nodes": ["../x"]},
                                    {"nodes": ["h1"], "workers": [1, 2]}])
def test_node_manifest_fields_are_checked(tmp_path: Path, fields: dict[str, object]) -> None:
    rec = make_session(tmp_path)
    (rec / "manifest.json").unlink()
    (rec / "_node_manifests").mkdir()
    (rec / "_node_manifests" / "h1.json").write_text(json.dumps({"recording_id": REC, "start_time": 1, **fields}))
    expect_error(rec, "_node_manifests", "fix the node manifest")
