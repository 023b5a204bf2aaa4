"""Hostile input, property-based: odd directory trees and manifests end registered (and read back
byte-exact) or rejected with a reason naming the session; never a crash, never a partial registration.

The first tests run the daemon in-process (``Daemon.process``, what ``run`` and ``drain`` call per
session) against moto, so an example costs a fraction of a second. The last two write whole batches
of hostile sessions and run the real ``drain`` and ``run`` processes over them, on both profiles.
Profiles: ``ci`` (the default: few examples, derandomized, so every CI run tries the same inputs) and
``thorough`` (``HYPOTHESIS_PROFILE=thorough``, with ``--timeout 3600``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from pathlib import Path
from typing import Any

import pytest
from harness import age, make_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from invariants import check_download_confined, check_invariants, tree_snapshot

from ursa_daemon.api import DataInterface
from ursa_daemon.config import load_config
from ursa_daemon.daemon import Daemon

settings.register_profile("ci", max_examples=15, deadline=None, derandomize=True, database=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

_ids = itertools.count(1)

# -- directory trees ------------------------------------------------------------------------

_hostile_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00")
_name = st.one_of(
    st.text(_hostile_chars, min_size=1, max_size=12),
    st.sampled_from(["a b", " lead", "trail ", "new\nline", "tab\tx", "back\\slash", "ünï çødé", "日本語",
                     "emoji😀", "e\u0301", ".hidden", "x.part", "x.tmp", "x~", "..x", "-", "CON", "x" * 200]),
).filter(lambda n: n not in (".", "..") and len(n.encode()) <= 240)
_worker = st.one_of(
    st.sampled_from(["eeg", "eeg_a", "camera_0", "mic_b2", "notes_x.y-z"]),
    st.sampled_from(["Camera", "eeg a", "1eeg", "é", "_x"]),  # not worker names: a rejection
)
_body = st.one_of(st.just(b""), st.binary(max_size=64), st.binary(min_size=1000, max_size=5000))


@st.composite
def trees(draw: Any) -> dict[str, bytes]:
    """rel_path -> bytes: 1-3 workers, files nested up to 6 deep, some paths near the OS limits."""
    files: dict[str, bytes] = {}
    for worker in draw(st.lists(_worker, min_size=1, max_size=3, unique=True)):
        for _ in range(draw(st.integers(1, 4))):
            depth = draw(st.integers(0, 6))
            parts = [worker, *draw(st.lists(_name, min_size=depth, max_size=depth)), draw(_name)]
            if draw(st.booleans()) and depth:  # a very long path: long components, deep
                parts = [worker, *(("d" * 200 + str(i)) for i in range(depth)), parts[-1]]
            rel = "/".join(parts)
            if any(rel.startswith(other + "/") or other.startswith(rel + "/") for other in files):
                continue  # a file and a directory cannot share a name
            files[rel] = draw(_body)
    return files


# -- manifests ------------------------------------------------------------------------------

_json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                         st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
_json = st.recursive(_json_scalar, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids,
                                                                                              max_size=3), max_leaves=8)
_times = st.one_of(st.just("2026-05-20T19:56:28.120+00:00"), st.just("2026-05-20T19:56:28"), st.just("yesterday"),
                   st.integers(-(2**64), 2**64), st.floats(allow_nan=True), st.booleans(), _json)


@st.composite
def manifests(draw: Any, rec_id: str, files: dict[str, bytes]) -> bytes:
    """A rig manifest with some fields replaced by hostile values, or hostile bytes altogether."""
    doc: dict[str, Any] = {"recording_id": rec_id, "start_time": "2026-05-20T19:56:28.120+00:00",
                           "end_time": "2026-05-20T20:41:02.900+00:00", "device_info": {"rig": "green-mantis"}}
    listed = [{"rel_path": r, "size": len(b)} for r, b in files.items()]
    mutations = {
        "recording_id": st.one_of(st.just("rec_20990101_000000_ffff"), _json),
        "start_time": _times,
        "end_time": _times,
        "duration_s": st.one_of(st.floats(allow_nan=True), st.integers(-5, 10**12), _json),
        "files": st.one_of(
            st.just(listed),
            st.just([{**f, "size": f["size"] + 1} for f in listed][:1] + listed[1:]),
            st.just([*listed, {"rel_path": "eeg/missing.bin", "size": 1}]),
            st.sampled_from(["../../etc/passwd", "/abs/x", "eeg//x", "eeg/./x", "eeg/../eeg/x"]).map(
                lambda p: [{"rel_path": p, "size": 0}]),
            _json,
        ),
        "workers": _json,
        "device_info": _json,
        "nodes": _json,
        "unknown_ключ": _json,
    }
    for key in draw(st.lists(st.sampled_from(sorted(mutations)), max_size=3, unique=True)):
        doc[key] = draw(mutations[key])
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from([b"", b"\xef\xbb\xbf{}", b"\xff\xfe{", b"[]", b"null", b"{" * 5000,
                                     json.dumps(doc).encode("utf-16")]))
    return json.dumps(doc, ensure_ascii=draw(st.booleans())).encode()


# -- the harness ----------------------------------------------------------------------------


@pytest.fixture
def hostile(moto_server, s3_buckets, s3_env, tmp_path: Path):  # type: ignore[no-untyped-def]
    config = make_config(tmp_path, moto_server.endpoint, *s3_buckets, upload={"max_concurrent_files": 8})
    with Daemon(load_config(config)) as daemon:
        yield config, daemon


def _write_tree(rec: Path, files: dict[str, bytes]) -> None:
    for rel, body in files.items():
        p = rec / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(body)


class Seen:
    """Every session an example made, for the full invariant check at the end."""

    def __init__(self) -> None:
        self.registered: list[Path] = []
        self.rejected: list[str] = []


def _ingest_and_judge(config: Path, daemon: Daemon, rec: Path, seen: Seen) -> str:
    age(rec)
    outcome = daemon.process(rec)
    assert outcome.status in ("registered", "rejected"), (outcome.status, outcome.error)
    data = DataInterface(config=load_config(config))
    rows = data.query(rec_id=rec.name)
    if outcome.status == "rejected":
        assert outcome.error and rec.name in outcome.error, outcome.error  # names the session
        assert not rows, "a rejected session has catalog rows"
        seen.rejected.append(rec.name)
        return outcome.error
    assert len(rows) == 1
    seen.registered.append(rec)
    _reads_back_byte_exact(data, rows[0], rec)
    return "registered"


def _reads_back_byte_exact(data: DataInterface, row: Any, rec: Path) -> None:
    """Download the session through the scientists' path; every file comes back, byte for byte."""
    parent = rec.parent.parent / "downloads"
    parent.mkdir(exist_ok=True)
    dest = parent / rec.name
    before = tree_snapshot(parent)
    paths = data.download(row, dest, source="raw")
    check_download_confined(before, tree_snapshot(parent), rec.name)
    got = sorted((hashlib.sha256(p.read_bytes()).hexdigest(), p.as_posix()) for p in paths)
    from invariants import local_files

    want = local_files(rec)
    assert sorted(sha for sha, _ in got) == sorted(sha for _, sha in want.values())
    for rel in want:
        tail = rel.split("/", 1)[1]
        assert any(p.endswith("/" + tail) for _, p in got), f"{rel} did not come back under {dest}"


def test_hostile_directory_trees_register_byte_exact_or_are_rejected(hostile, tmp_path: Path) -> None:
    config, daemon = hostile
    seen = Seen()
    verdicts: list[str] = []

    @given(files=trees(), symlink=st.booleans() if os.name == "posix" else st.just(False))
    def one(files: dict[str, bytes], symlink: bool) -> None:
        rec = tmp_path / "recordings" / f"rec_20260201_{next(_ids):06d}_abcd"
        try:
            _write_tree(rec, {**files, "stamp/id.bin": rec.name.encode()})  # no two sessions hash alike
        except OSError:  # a name this filesystem refuses (too long): not an input the rig could write
            return
        if symlink and files:
            first = next(iter(files)).split("/")[0]
            os.symlink("/etc/hostname", rec / first / "link.bin")
        (rec / "manifest.json").write_text(json.dumps({"recording_id": rec.name, "start_time": 1}))
        verdicts.append(_ingest_and_judge(config, daemon, rec, seen))

    one()
    assert "registered" in verdicts and any(v != "registered" for v in verdicts), verdicts
    check_invariants(config, valid=seen.registered, invalid=seen.rejected)


def test_hostile_manifests_register_or_are_rejected_with_a_reason(hostile, tmp_path: Path) -> None:
    config, daemon = hostile
    seen = Seen()
    verdicts: list[str] = []
    files = {"eeg/seg_000001.bin": os.urandom(3000), "mic_a/x.bin": b""}

    @given(data=st.data())
    def one(data: Any) -> None:
        rec = tmp_path / "recordings" / f"rec_20260202_{next(_ids):06d}_beef"
        _write_tree(rec, files)
        (rec / "manifest.json").write_bytes(data.draw(manifests(rec.name, files)))
        verdicts.append(_ingest_and_judge(config, daemon, rec, seen))

    one()
    assert "registered" in verdicts and any(v != "registered" for v in verdicts), verdicts
    check_invariants(config, valid=seen.registered, invalid=seen.rejected)


def test_a_thousand_tiny_and_empty_files(hostile, tmp_path: Path) -> None:
    config, daemon = hostile
    rec = tmp_path / "recordings" / "rec_20260203_000000_0001"
    files = {f"eeg_{w}/d{i % 7}/f {i:05d}.bin": (b"" if i % 3 == 0 else b"%d" % i) for w in "ab" for i in range(600)}
    _write_tree(rec, files)
    (rec / "manifest.json").write_text(json.dumps({"recording_id": rec.name, "start_time": 1}))
    seen = Seen()
    assert _ingest_and_judge(config, daemon, rec, seen) == "registered"
    check_invariants(config, valid=[rec])


# -- whole sessions through the real processes (issue 12) -----------------------------------
#
# Hypothesis writes a batch of whole sessions (trees, names, manifests, participants, links,
# copies) into a fresh root and runs the real `ursa-daemon drain --json` or `run` process over
# it, on the local profile and on moto. Each generated session knows the verdict it must get:
# a clean session is registered; one with a hostile feature is rejected. The process must never
# die, every session must end in exactly one of registered/rejected/failed with a reason (in the
# drain document and in `status --json`), and the five invariants must hold.

_GOOD_WORKERS = ["eeg", "eeg_a", "camera_0", "mic_b2", "notes_x.y-z"]
_GOOD_NAMES = ["seg_000001.bin", "a b.bin", "ünï çødé.bin", "日本語.dat", "emoji😀", "take#1.bin", "#x",
               "manifest.json", "participant.txt", "d/e/deep.bin", "x.part", ".hidden"]
#: (name as bytes, why it is refused)
_BAD_NAMES = [(b"bad\xff.bin", "not UTF-8"), (b"take#2", "#<digits>"), (b"tab\tx", "control"),
              (b"/".join([b"d" * 200] * 5) + b"/x.bin", "1024 bytes")]
_BAD_MANIFESTS: dict[str, Any] = {
    "duration_1e300": {"duration_s": 1e300},
    "start_10e30": {"start_time": 10**30},
    "end_year_9999": {"end_time": "9999-01-01T00:00:00+00:00"},
    "nan_device_info": {"device_info": {"x": float("nan")}},
    "huge_rate": {"workers": {w: {"sampling_rate": 10**400} for w in [*_GOOD_WORKERS, "zstamp"]}},
    "deep": "deep",
    "directory": "directory",
    "not_json": "not_json",
    "wrong_id": {"recording_id": "rec_20990101_000000_ffff"},
    "node_bad_nodes": {"nodes": "h1"},  # a node manifest whose nodes is not a list of hosts
    "node_bad_workers": {"nodes": ["h1"], "workers": [1]},
}


@st.composite
def session_specs(draw: Any) -> dict[str, Any]:
    """One whole session: what to write, and the verdict it must get."""
    workers = draw(st.lists(st.sampled_from(_GOOD_WORKERS), min_size=1, max_size=3, unique=True))
    files: dict[bytes, bytes] = {}
    for w in workers:
        for name in draw(st.lists(st.sampled_from(_GOOD_NAMES), min_size=1, max_size=3, unique=True)):
            files[f"{w}/{name}".encode()] = draw(st.binary(max_size=200))
    bad: list[str] = []
    if draw(st.integers(0, 4)) == 0:
        name, why = draw(st.sampled_from(_BAD_NAMES))
        files[workers[0].encode() + b"/" + name] = b"bad name"
        bad.append(why)
    if draw(st.integers(0, 6)) == 0:  # eeg and eeg_ are the same modality
        files[b"eeg/c1.bin"], files[b"eeg_/c2.bin"] = b"c1", b"c2"
        bad.append("same modality")
    manifest = draw(st.sampled_from(["ok", "ok", "ok", "listed", "node_ok", *sorted(_BAD_MANIFESTS)]))
    if manifest not in ("ok", "listed", "node_ok"):
        bad.append(manifest)
    participant = draw(st.sampled_from([None, None, "Aria Lin", "李小龍", "", b"\xff\xfe", "directory"]))
    if participant in (b"\xff\xfe", "directory"):
        bad.append("participant")
    extra = draw(st.sampled_from(["", "", "", "hardlink_out", "symlink_in", "rec_link", "copy"]))
    if extra in ("symlink_in", "rec_link"):
        bad.append(extra)
    return {"files": files, "manifest": manifest, "participant": participant, "extra": extra, "bad": bad}


def _write_spec(root: Path, outside: Path, n: int, spec: dict[str, Any], clean: list[Path]) -> tuple[Path, str]:
    """Write one session; returns its path and the verdict it must get (registered or rejected)."""
    rec = root / f"rec_20260401_{n:06d}_{next(_ids):06x}"
    bad = list(spec["bad"])
    extra = spec["extra"]
    if extra == "copy" and not clean:
        extra = ""
    target = rec
    if extra == "rec_link":  # the session's real directory is elsewhere; the root holds a link
        target = outside / rec.name
    target.mkdir(parents=True)
    if extra == "copy":  # byte-identical data to an earlier clean session: rejected, it says why
        src = clean[0]
        for p in sorted(src.rglob("*")):
            rel = p.relative_to(src)
            if p.is_file() and rel.parts[0] not in ("manifest.json", "participant.txt"):
                (target / rel).parent.mkdir(parents=True, exist_ok=True)
                (target / rel).write_bytes(p.read_bytes())
        bad = ["copy"]
    else:
        for rel, body in spec["files"].items():
            p = os.path.join(os.fsencode(target), rel)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "wb") as f:
                f.write(body)
        stamp = target / "zstamp" / "id.bin"  # no two sessions hash alike unless meant to
        stamp.parent.mkdir(exist_ok=True)
        stamp.write_bytes(rec.name.encode())
        first = sorted(p for p in target.iterdir() if p.is_dir())[0]
        if extra == "hardlink_out":  # a hard link is the file itself: data like any other
            out = outside / f"{rec.name}.bin"
            out.write_bytes(b"outside " + rec.name.encode())
            os.link(out, first / "hard.bin")
        elif extra == "symlink_in":
            os.symlink("/etc/hostname", first / "link.bin")
    p = spec["participant"]
    if p == "directory":
        (target / "participant.txt").mkdir()
    elif isinstance(p, bytes):
        (target / "participant.txt").write_bytes(p)
    elif p is not None:
        (target / "participant.txt").write_text(p + "\n", encoding="utf-8")
    doc: dict[str, Any] = {"recording_id": rec.name, "start_time": "2026-05-20T19:56:28.120+00:00",
                           "duration_s": 60.0}
    kind = spec["manifest"] if extra != "copy" else "ok"
    mpath = target / "manifest.json"
    if kind == "deep":
        mpath.write_bytes(b'{"recording_id": "%s", "start_time": 1, "x": ' % rec.name.encode() + b"[" * 5000
                          + b"]" * 5000 + b"}")
    elif kind == "directory":
        mpath.mkdir()
    elif kind == "not_json":
        mpath.write_bytes(b"{not json")
    else:
        if kind == "listed":
            doc["files"] = [{"rel_path": os.fsdecode(r), "size": len(b)} for r, b in spec["files"].items()
                            if os.fsdecode(r).rsplit("/", 1)[-1] not in (".hidden", "x.part")
                            and not os.fsdecode(r).rsplit("/", 1)[-1].startswith(".")]
            doc["files"].append({"rel_path": "zstamp/id.bin", "size": len(rec.name)})  # keeps it unique
        elif kind == "node_ok":  # a one-node session: its node manifest is the marker
            doc["nodes"] = ["h1"]
        if kind in _BAD_MANIFESTS:
            doc.update(_BAD_MANIFESTS[kind])
        if kind.startswith("node_"):
            mpath = target / "_node_manifests" / "h1.json"
            mpath.parent.mkdir()
        mpath.write_text(json.dumps(doc))
    if extra == "rec_link":
        os.symlink(target, rec, target_is_directory=True)
    age(target, 200.0 if extra != "copy" else 150.0)  # a copy is younger than its original
    verdict = "rejected" if bad else "registered"
    if verdict == "registered":
        clean.append(rec)
    return rec, verdict


#: whole batches through a real process cost seconds each: 2 (drain) and 2 (run) per profile by
#: default, 40 with HYPOTHESIS_PROFILE=thorough (run it with --timeout 3600)
_THOROUGH = os.environ.get("HYPOTHESIS_PROFILE") == "thorough"
_drain_examples = settings(max_examples=40 if _THOROUGH else 2)
_run_examples = settings(max_examples=40 if _THOROUGH else 2)


@pytest.fixture(params=["local", "s3"])
def profile_config(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """A config file for the local profile or for moto (settle 0, fast rescans)."""
    import yaml
    from conftest import local_config_dict

    if request.param == "s3":
        server = request.getfixturevalue("moto_server")
        request.getfixturevalue("s3_env")
        return make_config(tmp_path, server.endpoint, *request.getfixturevalue("s3_buckets"))
    doc = local_config_dict(tmp_path)
    doc["watch"] = {"settle_seconds": 0.0, "rescan_seconds": 1.0, "retry_check_seconds": 0.5}
    doc["activity"] = {"quiet_seconds": 0.0}
    (tmp_path / "recordings").mkdir(exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _example_config(base: Path, root: Path, state: Path) -> Path:
    """The base config with its own recordings root and state (the store and catalog are shared)."""
    import yaml

    doc = yaml.safe_load(base.read_text())
    doc["recordings_root"], doc["state_dir"] = str(root), str(state)
    path = root.parent / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _write_batch(base: Path, specs: list[dict[str, Any]]) -> tuple[Path, Path, dict[str, tuple[Path, str]]]:
    ex = base.parent / f"ex{next(_ids)}"
    root, outside = ex / "recordings", ex / "outside"
    root.mkdir(parents=True)
    outside.mkdir()
    clean: list[Path] = []
    written = [_write_spec(root, outside, i, spec, clean) for i, spec in enumerate(specs)]
    return _example_config(base, root, ex / "state"), root, {rec.name: (rec, v) for rec, v in written}


def _judge_status(config: Path, expected: dict[str, tuple[Path, str]], got: dict[str, str]) -> None:
    """``status --json`` has a row per session, in the verdict it got, a reason for every refusal."""
    from harness import cli

    proc = cli(config, "status", "--json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = {s["rec_id"]: s for s in json.loads(proc.stdout)["sessions"]}
    for rec_id in expected:
        row = rows.get(rec_id)
        assert row is not None, f"{rec_id} has no status row"
        assert row["state"] == got[rec_id], (rec_id, row)
        if row["state"] in ("rejected", "failed"):
            assert row["last_error"] and "\n" not in row["last_error"], row
        if row["state"] == "rejected":
            assert rec_id in row["last_error"], row


def _judge_and_record(expected: dict[str, tuple[Path, str]], got: dict[str, str], seen: Seen,
                      reasons: dict[str, str] | None = None) -> None:
    wrong = {r: (v, got.get(r), (reasons or {}).get(r)) for r, (_, v) in expected.items() if got.get(r) != v}
    assert not wrong, f"verdicts (expected, got): {wrong}"
    for rec_id, (rec, verdict) in expected.items():
        if verdict == "registered":
            seen.registered.append(rec)
        else:
            seen.rejected.append(rec_id)


def test_whole_hostile_sessions_through_the_real_drain(profile_config: Path) -> None:
    from harness import cli

    seen = Seen()

    @_drain_examples
    @given(specs=st.lists(session_specs(), min_size=2, max_size=6))
    def one(specs: list[dict[str, Any]]) -> None:
        config, root, expected = _write_batch(profile_config, specs)
        proc = cli(config, "drain", "--json")
        assert proc.returncode in (0, 1), (proc.returncode, proc.stderr[-3000:])
        doc = json.loads(proc.stdout)
        got: dict[str, str] = {}
        reasons: dict[str, str] = {}
        for key, items in doc.items():
            if not isinstance(items, list):
                continue
            for item in items:
                rec_id = item if isinstance(item, str) else item["rec_id"]
                assert rec_id not in got, f"{rec_id} in two lists of the drain document"
                got[rec_id] = key
                reasons[rec_id] = item.get("error", "") if isinstance(item, dict) else ""
                if key == "rejected":  # bad input: the reason names the session
                    assert item.get("error") and rec_id in item["error"], item
                elif isinstance(item, dict):
                    assert item.get("error") or item.get("hint"), item
        assert set(got) == set(expected), (sorted(got), sorted(expected))
        assert proc.returncode == (1 if any(v != "registered" for v in got.values()) else 0)
        _judge_and_record(expected, got, seen, reasons)
        _judge_status(config, expected, got)
        check_invariants(config, valid=seen.registered, invalid=seen.rejected)

    one()


def test_whole_hostile_sessions_leave_the_real_run_alive(profile_config: Path) -> None:
    from harness import DaemonProc

    seen = Seen()
    terminal = {"session.done": "registered", "session.rejected": "rejected", "session.failed": "failed"}

    @_run_examples
    @given(specs=st.lists(session_specs(), min_size=2, max_size=5))
    def one(specs: list[dict[str, Any]]) -> None:
        config, root, expected = _write_batch(profile_config, specs)
        proc = DaemonProc(config, "run", log=root.parent / "run.log")
        got: dict[str, str] = {}
        reasons: dict[str, str] = {}
        try:
            while set(got) != set(expected):
                ev = proc.wait_event(lambda e: e.get("event") in terminal and e.get("rec_id") in expected,
                                     timeout=120)
                assert ev is not None, f"run died or stalled (rc {proc.proc.poll()}):\n{proc.text()}"
                got.setdefault(ev["rec_id"], terminal[ev["event"]])
                reasons.setdefault(ev["rec_id"], ev.get("error", ""))
            assert proc.proc.poll() is None, "run exited"
        finally:
            rc = proc.stop(timeout=60)
        assert rc == 0, proc.text()
        _judge_and_record(expected, got, seen, reasons)
        _judge_status(config, expected, got)
        check_invariants(config, valid=seen.registered, invalid=seen.rejected)

    one()
