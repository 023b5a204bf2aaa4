"""download / get / stream against both backends (a tmp dir, moto over HTTP), with real faults.

Transport faults come from a TCP proxy in front of moto (``faultproxy.py``);
the only fakes are fault-injecting store wrappers (a slow reader, a lying listing).
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import s3_config_dict
from faultproxy import FaultProxy

from ursa_daemon.api import DataInterface
from ursa_daemon.config import Role, config_from_dict, resolve_credentials
from ursa_daemon.errors import ObjectMismatch, StoreError
from ursa_daemon.store import ObjectMeta, S3Store, Store, storage_uri
from ursa_daemon.transfer.download import (
    LAYOUTS,
    STABLE_KEYS,
    DestinationExistsError,
    DownloadPlanError,
    DownloadProgress,
    RecordingNotFoundError,
    RetryPolicy,
    UnsafeKeyError,
    download,
)
from ursa_daemon.transfer.ingest import ingest
from ursa_daemon.transfer.reader import Chunk, MissingDependencyError, ProcessedModality, RawModality

START = "2026-05-20T19:56:28.120+00:00"
KiB = 1 << 10
FAST_RETRY = RetryPolicy(attempts=5, init_backoff=0.02, max_backoff=0.2)

FILES = {
    "camera_0/seg_000001.mp4": os.urandom(700 * KiB),
    "camera_1/seg_000001.mp4": os.urandom(1000),
    "eeg_4559/seg_000002.bin": os.urandom(200 * KiB),
    "eeg_4559/seg_000001.bin": os.urandom(300 * KiB),
    "mic/deep/nested.wav": os.urandom(5000),
    "notes_x/notes.jsonl": b"",
}
#: QueryResult.modalities keys in their order, and the worker directory each came from
MODALITIES = {"camera_0": "camera_0", "camera_1": "camera_1", "eeg": "eeg_4559", "mic": "mic", "notes": "notes_x"}


# -- helpers --------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    rec_id: str
    recording_hash: str
    files: dict[str, bytes]


def ingested_session(
    data: DataInterface,
    root: Path,
    files: dict[str, bytes] = FILES,
    *,
    rec_id: str = "rec_20260520_195628_b1dd",
) -> Session:
    """Write a rig session under ``root``, ingest it (upload + register)."""
    rec = root / "rigs" / rec_id
    for rel, body in files.items():
        p = rec / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(body)
    (rec / "participant.txt").write_text("Aria Lin")
    (rec / "manifest.json").write_text(json.dumps({"recording_id": rec_id, "start_time": START, "duration_s": 30}))
    res = ingest(data, rec)
    assert res.recording is not None
    return Session(rec_id, res.recording.recording_hash, dict(files))


def expected_files(dest: Path, s: Session, layout: str, files: dict[str, bytes] = FILES) -> list[tuple[Path, str]]:
    """``(path, rel_path in the session)`` in the documented order: modality, then key."""
    out = []
    for name, worker in MODALITIES.items():
        base = {
            "by_recording": dest / s.recording_hash / name,
            "by_modality": dest / name / s.recording_hash,
            "flat": dest / f"{s.recording_hash}__{name}",
        }[layout]
        out += [(base / rel.split("/", 1)[1], rel) for rel in sorted(files) if rel.split("/", 1)[0] == worker]
    return out


def expected_paths(dest: Path, s: Session, layout: str) -> list[Path]:
    return [p for p, _ in expected_files(dest, s, layout)]


def tree(root: Path) -> list[str]:
    """Every entry under ``root`` (files, dirs, links), relative, sorted; [] if it does not exist."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def parts_left(root: Path) -> list[Path]:
    return [p for p in root.rglob("*.part")] if root.exists() else []


@pytest.fixture
def data(backend_config) -> DataInterface:  # type: ignore[no-untyped-def]
    di = DataInterface(config=backend_config)
    di.enable_writes(roles=("assets_rw", "raw_rw"))
    return di


@pytest.fixture
def session(data: DataInterface, tmp_path: Path) -> Session:
    return ingested_session(data, tmp_path)


@pytest.fixture
def local_data(tmp_path: Path) -> DataInterface:
    di = DataInterface(profile="local", path=tmp_path / "store")
    di.enable_writes(roles=("assets_rw", "raw_rw"))
    return di


# -- layouts, targets, order ------------------------------------------------------------


def test_every_layout_byte_exact_in_documented_order(data: DataInterface, session: Session, tmp_path: Path) -> None:
    for layout in LAYOUTS:
        dest = tmp_path / f"out-{layout}"
        paths = data.download(session.rec_id, dest, layout=layout)  # type: ignore[arg-type]
        expected = expected_files(dest, session, layout)
        assert paths == [p for p, _ in expected]
        for path, rel in expected:
            assert path.read_bytes() == FILES[rel], rel
        assert len([p for p in dest.rglob("*") if p.is_file()]) == len(FILES)  # no manifest, participant, .part


def test_targets_hash_rec_id_and_several_results(local_data: DataInterface, tmp_path: Path) -> None:
    one = ingested_session(local_data, tmp_path, {"eeg/a.bin": b"a1", "eeg/b.bin": b"b1"})
    two = ingested_session(local_data, tmp_path, {"mic/x.wav": b"x2"}, rec_id="rec_20260521_000000_cafe")
    assert local_data.download(one.recording_hash, tmp_path / "h") == [
        tmp_path / "h" / one.recording_hash / "eeg" / "a.bin",
        tmp_path / "h" / one.recording_hash / "eeg" / "b.bin",
    ]
    results = local_data.query(rec_id=two.rec_id) + local_data.query(rec_id=one.rec_id)
    paths = local_data.download(results, tmp_path / "both", layout="flat")
    assert [p.relative_to(tmp_path / "both").as_posix() for p in paths] == [
        f"{two.recording_hash}__mic/x.wav",
        f"{one.recording_hash}__eeg/a.bin",
        f"{one.recording_hash}__eeg/b.bin",
    ]
    with pytest.raises(RecordingNotFoundError, match="rec_20990101_000000_dead"):
        local_data.download("rec_20990101_000000_dead", tmp_path / "none")
    with pytest.raises(ValueError, match="layout"):
        local_data.download(one.rec_id, tmp_path / "bad", layout="sideways")  # type: ignore[arg-type]


# -- the plan: collisions, duplicates, overwrite ------------------------------------------


def test_existing_files_all_reported_then_overwrite_replaces(
    data: DataInterface, session: Session, tmp_path: Path
) -> None:
    dest = tmp_path / "out"
    paths = expected_paths(dest, session, "by_recording")
    for p in (paths[0], paths[3]):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"old")
    before = tree(dest)
    with pytest.raises(DestinationExistsError) as info:
        data.download(session.rec_id, dest)
    assert set(info.value.paths) == {paths[0], paths[3]}
    assert str(paths[0]) in str(info.value) and str(paths[3]) in str(info.value)
    assert isinstance(info.value, FileExistsError)
    assert tree(dest) == before  # the plan refused before any byte moved
    assert data.download(session.rec_id, dest, overwrite=True) == paths
    assert paths[0].read_bytes() == FILES["camera_0/seg_000001.mp4"]


def test_duplicate_destinations_all_reported(local_data: DataInterface, tmp_path: Path) -> None:
    s = ingested_session(local_data, tmp_path, {"eeg/a.bin": b"a", "eeg/b.bin": b"b", "mic/c.wav": b"c"})
    [qr] = local_data.query(rec_id=s.rec_id)
    with pytest.raises(DownloadPlanError) as info:
        local_data.download([qr, qr], tmp_path / "dup", layout="by_modality")
    msg = str(info.value)
    assert "3 duplicate destination(s)" in msg
    for name in ("a.bin", "b.bin", "c.wav"):
        assert name in msg
    assert not (tmp_path / "dup").exists()


# -- processed rows ---------------------------------------------------------------------


def _put_processed(data: DataInterface, s: Session) -> dict[str, bytes]:
    """A Zarr directory for eeg and an MP4 with its .mp4.lance index for camera_0, as objects."""
    base = f"processed/{s.recording_hash}"
    objects = {
        f"{base}/eeg/eeg.zarr/zarr.json": b'{"zarr_format": 3, "node_type": "group"}',
        f"{base}/eeg/eeg.zarr/data/zarr.json": b'{"zarr_format": 3, "node_type": "array"}',
        f"{base}/eeg/eeg.zarr/data/c/0/0": os.urandom(4096),
        f"{base}/camera/camera.mp4": os.urandom(300 * KiB),
        f"{base}/camera/camera.mp4.lance/_versions/1.manifest": os.urandom(200),
        f"{base}/camera/camera.mp4.lance/data/0.lance": os.urandom(3000),
    }
    decoys = {f"{base}/camera/camera.mp4x": b"not me", f"{base}/eeg/eeg.zarr.bak": b"nor me"}
    assets = data.store(Role.ASSETS_RW)
    for key, body in {**objects, **decoys}.items():
        assets.put(key, body)
    return objects


def _register_processed(data: DataInterface, s: Session, name: str, family: str, worker: str, key: str, fmt: str,
                        status: str = "processed") -> None:
    data.register_modality(
        recording_hash=s.recording_hash,
        modality=family,
        worker_id=worker,
        raw_storage_uri=storage_uri(data.profile, "raw", f"recordings/{s.rec_id}/{name}/"),
        storage_uri=storage_uri(data.profile, "assets", key),
        ingestion_status=status,
        format=fmt,
        sampling_rate=500.0,
        domain_intervals=[(0.0, 30.0)],
        channel_spec={"names": ["c0", "c1"]},
        on_conflict="overwrite",
    )


def test_processed_zarr_and_mp4_round_trip(data: DataInterface, session: Session, tmp_path: Path) -> None:
    objects = _put_processed(data, session)
    rh = session.recording_hash
    _register_processed(data, session, "eeg_4559", "eeg", "4559", f"processed/{rh}/eeg/eeg.zarr/", "zarr")
    _register_processed(data, session, "camera_0", "camera", "0", f"processed/{rh}/camera/camera.mp4", "mp4")
    [qr] = data.query(rec_id=session.rec_id)
    assert qr.modalities["eeg"].ingestion_status == "processed"
    assert qr.modalities["eeg"].storage_uri.startswith(storage_uri(data.profile, "assets", ""))

    processed = qr.model_copy(update={"modalities": {k: qr.modalities[k] for k in ("camera_0", "eeg")}})
    dest = tmp_path / "proc"
    paths = data.download(processed, dest, source="processed")
    rel = [p.relative_to(dest / rh).as_posix() for p in paths]
    assert rel == [
        "camera_0/camera.mp4",
        "camera_0/camera.mp4.lance/_versions/1.manifest",
        "camera_0/camera.mp4.lance/data/0.lance",
        "eeg/eeg.zarr/data/c/0/0",
        "eeg/eeg.zarr/data/zarr.json",
        "eeg/eeg.zarr/zarr.json",
    ]
    by_tail = {k.split("/", 3)[3]: v for k, v in objects.items()}  # drop processed/<hash>/<family>/
    for path, r in zip(paths, rel, strict=True):
        assert path.read_bytes() == by_tail[r.split("/", 1)[1]]

    # auto: processed rows give their asset, raw rows their segments
    auto = data.download(qr, tmp_path / "auto")
    names = [p.relative_to(tmp_path / "auto" / rh).as_posix() for p in auto]
    assert "eeg/eeg.zarr/zarr.json" in names and "mic/deep/nested.wav" in names
    assert not any(n.startswith("eeg/seg_") for n in names)
    # raw: the raw segments of every row, processed or not
    raw = data.download(qr, tmp_path / "raw", source="raw")
    assert raw == expected_paths(tmp_path / "raw", session, "by_recording")
    # processed on a raw row is a ValueError, before any byte moves
    with pytest.raises(ValueError, match="mic"):
        data.download(qr, tmp_path / "refused", source="processed")
    assert not (tmp_path / "refused").exists()


@pytest.mark.parametrize("status", ["ingesting", "failed"])
def test_ingesting_and_failed_rows_are_refused(local_data: DataInterface, tmp_path: Path, status: str) -> None:
    s = ingested_session(local_data, tmp_path, {"eeg/a.bin": b"a"})
    _register_processed(local_data, s, "eeg", "eeg", "", f"processed/{s.recording_hash}/eeg/eeg.zarr/", "zarr",
                        status=status)
    for source in ("auto", "raw", "processed"):
        with pytest.raises(ValueError, match=status):
            local_data.download(s.rec_id, tmp_path / "x", source=source)  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()


# -- progress and the ursa.download logger -----------------------------------------------

_RECORD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


def test_progress_phases_monotonic_bytes_and_logger_extra(
    data: DataInterface, session: Session, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    events: list[DownloadProgress] = []
    threads: set[int] = set()

    def on_progress(ev: DownloadProgress) -> None:
        threads.add(threading.get_ident())
        events.append(ev)

    caplog.set_level(logging.DEBUG, logger="ursa.download")
    paths = data.download(session.rec_id, tmp_path / "out", progress=on_progress)
    total = sum(len(b) for b in FILES.values())

    phases = " ".join(e.phase for e in events)
    assert re.fullmatch(r"start plan_done( modality_start( file_done)+ modality_done){5} finish", phases), phases
    assert threads == {threading.get_ident()}  # on the calling thread
    done = [e.bytes_done for e in events]
    assert done == sorted(done) and done[-1] == total
    assert events[0].bytes_total is None and all(e.bytes_total == total for e in events[1:])
    for e in events:
        if e.phase in ("start", "plan_done", "finish"):
            assert (e.recording_hash, e.modality, e.worker_id, e.key) == (None, None, None, None)
        else:
            assert e.recording_hash == session.recording_hash and isinstance(e.worker_id, str)
    starts = [(e.modality, e.worker_id) for e in events if e.phase == "modality_start"]
    assert starts == [("camera", "0"), ("camera", "1"), ("eeg", "4559"), ("mic", ""), ("notes", "x")]
    keys = [e.key for e in events if e.phase == "file_done"]
    assert sorted(keys) == sorted(f"recordings/{session.rec_id}/{r}" for r in FILES)
    assert len(paths) == len(keys)

    records = [r for r in caplog.records if r.name == "ursa.download"]
    assert [r.phase for r in records] == [e.phase for e in events]  # type: ignore[attr-defined]
    for r, e in zip(records, events, strict=True):
        assert set(vars(r)) - _RECORD_ATTRS == set(STABLE_KEYS)
        assert {k: getattr(r, k) for k in STABLE_KEYS} == e.extra()
        assert r.levelno == (logging.DEBUG if e.phase == "file_done" else logging.INFO)


def test_callback_errors_are_logged_once_each(
    local_data: DataInterface, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = ingested_session(local_data, tmp_path, {"eeg/a.bin": b"a", "eeg/b.bin": b"b", "mic/c.wav": b"c"})

    def broken(ev: DownloadProgress) -> None:
        if ev.phase == "file_done":
            raise RuntimeError(f"bug on {ev.key}")

    caplog.set_level(logging.INFO, logger="ursa.download")
    paths = local_data.download(s.rec_id, tmp_path / "out", progress=broken)
    assert len(paths) == 3 and all(p.exists() for p in paths)
    warnings = [r for r in caplog.records if r.name == "ursa.download" and r.levelno == logging.WARNING]
    assert len(warnings) == 3
    rels = ("eeg/a.bin", "eeg/b.bin", "mic/c.wav")
    assert sorted(r.callback_error for r in warnings) == [  # type: ignore[attr-defined]
        f"file_done: RuntimeError('bug on recordings/{s.rec_id}/{rel}')" for rel in rels
    ]


# -- interrupted downloads keep the old file ----------------------------------------------


class SlowStore:
    """Fault injection: reads of keys containing ``slow`` sleep ``delay`` s per chunk."""

    def __init__(self, inner: Store, delay: float) -> None:
        self.inner = inner
        self.delay = delay

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def open(self, key: str, *, chunk_size: int = 1 << 20) -> Any:
        reader = self.inner.open(key, chunk_size=chunk_size)
        if "slow" not in key:
            return reader
        delay = self.delay

        class Slow:
            def read(self, size: int = -1) -> bytes:
                time.sleep(delay)
                return reader.read(size)

            def close(self) -> None:
                reader.close()

            def __enter__(self) -> Slow:
                return self

            def __exit__(self, *exc: object) -> None:
                self.close()

        return Slow()


def test_keyboard_interrupt_mid_stream_keeps_old_file(local_data: DataInterface, tmp_path: Path) -> None:
    s = ingested_session(local_data, tmp_path, {"camera/fast.mp4": b"f" * 10, "eeg/slow.bin": os.urandom(2 << 20)})
    dest = tmp_path / "out"
    first = local_data.download(s.rec_id, dest)
    old = first[1].read_bytes()
    first[1].write_bytes(b"OLD" * 1000)  # what the user has on disk
    raw = local_data.store(Role.RAW_RO)

    def interrupt(ev: DownloadProgress) -> None:
        if ev.phase == "file_done":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        download(
            local_data, s.rec_id, dest, overwrite=True, progress=interrupt, chunk_size=64 * KiB,
            store_for=lambda kind: SlowStore(raw, 0.02),  # type: ignore[return-value,arg-type]
        )
    assert first[1].read_bytes() == b"OLD" * 1000
    assert parts_left(dest) == []
    assert local_data.download(s.rec_id, dest, overwrite=True) == first
    assert first[1].read_bytes() == old


# -- unsafe keys ---------------------------------------------------------------------------


class LyingListing:
    """Fault injection: a store whose listing also returns ``extra`` (a key it never had)."""

    def __init__(self, inner: Store, extra: str) -> None:
        self.inner = inner
        self.extra = extra

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def list(self, prefix: str = "") -> Iterator[ObjectMeta]:
        yield from self.inner.list(prefix)
        yield ObjectMeta(key=self.extra, size=3)


@pytest.mark.parametrize(
    "tail", ["../../../escape.bin", "a/../../escape.bin", "/abs/escape.bin", "./escape.bin", "a\\..\\escape.bin"]
)
def test_unsafe_listed_key_is_refused_before_any_write(local_data: DataInterface, tmp_path: Path, tail: str) -> None:
    s = ingested_session(local_data, tmp_path, {"eeg/a.bin": b"a"})
    evil = f"recordings/{s.rec_id}/eeg/{tail}"
    raw = local_data.store(Role.RAW_RO)
    dest = tmp_path / "box" / "dest"
    with pytest.raises(UnsafeKeyError) as info:
        download(local_data, s.rec_id, dest, store_for=lambda kind: LyingListing(raw, evil))  # type: ignore[arg-type,return-value]
    assert repr(evil) in str(info.value) and isinstance(info.value, ValueError)  # the key, as Python quotes it
    assert tree(tmp_path / "box") == []
    assert not list(tmp_path.rglob("escape.bin"))


def test_symlink_in_dest_is_refused(local_data: DataInterface, tmp_path: Path) -> None:
    s = ingested_session(local_data, tmp_path, {"camera/a.mp4": b"a", "eeg/b.bin": b"b"})
    dest, outside = tmp_path / "dest", tmp_path / "outside"
    outside.mkdir()
    (dest / s.recording_hash).mkdir(parents=True)
    (dest / s.recording_hash / "eeg").symlink_to(outside)
    with pytest.raises(UnsafeKeyError, match=f"recordings/{s.rec_id}/eeg/b.bin"):
        local_data.download(s.rec_id, dest)
    assert tree(outside) == []
    assert tree(dest) == [s.recording_hash, f"{s.recording_hash}/eeg"]  # camera/ was not even created


def test_malicious_key_in_the_bucket_is_refused(moto_server, s3_buckets, s3_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = s3_data(moto_server.endpoint, s3_buckets, tmp_path)
    s = ingested_session(data, tmp_path, {"eeg/a.bin": b"a"})
    client = moto_server.client()
    for evil in (f"recordings/{s.rec_id}/eeg/../../../../escape.bin", f"recordings/{s.rec_id}/eeg//abs/escape.bin"):
        client.put_object(Bucket=s3_buckets[0], Key=evil, Body=b"pwn")
        dest = tmp_path / "box" / "dest"
        with pytest.raises(UnsafeKeyError) as info:
            data.download(s.rec_id, dest)
        assert "escape.bin" in str(info.value)
        assert tree(tmp_path / "box") == [] and not list(tmp_path.rglob("escape.bin"))
        client.delete_object(Bucket=s3_buckets[0], Key=evil)


# -- transport faults through the proxy ------------------------------------------------------


def s3_data(endpoint: str, buckets: tuple[str, str], root: Path) -> DataInterface:
    di = DataInterface(config=config_from_dict(s3_config_dict(endpoint, *buckets, root), base_dir=root))
    di.enable_writes(roles=("assets_rw", "raw_rw"))
    return di


@pytest.fixture
def proxied(moto_server, s3_buckets, s3_env, tmp_path: Path) -> Iterator[tuple[DataInterface, FaultProxy, Session]]:  # type: ignore[no-untyped-def]
    """A session ingested straight into moto, and a DataInterface that reaches moto through the proxy."""
    direct = s3_data(moto_server.endpoint, s3_buckets, tmp_path / "direct")
    files = {f"eeg/seg_{i}.bin": os.urandom(512 * KiB) for i in range(4)} | {"mic/m.wav": os.urandom(300 * KiB)}
    s = ingested_session(direct, tmp_path, files)
    with FaultProxy((moto_server.host, moto_server.port)) as proxy:
        yield s3_data(proxy.endpoint, s3_buckets, tmp_path / "proxied"), proxy, s


def _store_for(data: DataInterface, **knobs: Any) -> Any:
    def make(kind: str) -> Store:
        role = Role.RAW_RO if kind == "raw" else Role.ASSETS_RO
        creds = resolve_credentials(data.profile, role)  # type: ignore[arg-type]
        return S3Store.from_profile(data.profile, kind, creds, **knobs)  # type: ignore[arg-type]

    return make


def _check_files(paths: list[Path], s: Session) -> None:
    assert sorted(p.read_bytes() for p in paths) == sorted(s.files.values())


def test_resets_mid_body_are_retried_byte_exact(proxied, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data, proxy, s = proxied
    [qr] = data.query(rec_id=s.rec_id)  # the catalog read passes untouched
    proxy.reset_next(3, after_bytes=100 * KiB)
    paths = download(data, qr, tmp_path / "out", retry=FAST_RETRY)
    assert proxy.faults == 3
    _check_files(paths, s)
    assert parts_left(tmp_path / "out") == []


def test_reset_on_connect_is_retried(proxied, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data, proxy, s = proxied
    [qr] = data.query(rec_id=s.rec_id)
    proxy.reset_next(2, after_bytes=0)
    paths = download(data, qr, tmp_path / "out", retry=FAST_RETRY, store_for=_store_for(data, init_backoff=0.01))
    assert proxy.faults == 2
    _check_files(paths, s)


def test_stall_times_out_and_resumes(proxied, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data, proxy, s = proxied
    [qr] = data.query(rec_id=s.rec_id)
    proxy.stall_next(1, seconds=5, after_bytes=100 * KiB)
    t = time.monotonic()
    paths = download(data, qr, tmp_path / "out", retry=FAST_RETRY,
                     store_for=_store_for(data, read_timeout=0.5, max_retries=1))
    assert time.monotonic() - t < 4.5  # the stall was cut by the read timeout, not waited out
    assert proxy.faults == 1
    _check_files(paths, s)


def test_exhausted_retries_name_the_key_and_keep_old_files(proxied, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data, proxy, s = proxied
    [qr] = data.query(rec_id=s.rec_id)
    dest = tmp_path / "out"
    paths = download(data, qr, dest)
    for p in paths:
        p.write_bytes(b"OLD " + p.name.encode())
    proxy.reset_next(10_000, after_bytes=100 * KiB)
    with pytest.raises(StoreError) as info:
        download(data, qr, dest, overwrite=True, retry=RetryPolicy(attempts=2, init_backoff=0.01),
                 store_for=_store_for(data, max_retries=0))
    assert f"recordings/{s.rec_id}/" in str(info.value) and "gave up after 2 attempt(s)" in str(info.value)
    assert info.value.key is not None and info.value.key in str(info.value)
    for p in paths:
        assert p.read_bytes() == b"OLD " + p.name.encode()
    assert parts_left(dest) == []


def test_object_changed_since_listing_is_a_mismatch(local_data: DataInterface, tmp_path: Path) -> None:
    s = ingested_session(local_data, tmp_path, {"eeg/a.bin": b"a" * 100})
    raw = local_data.store(Role.RAW_RO)

    class Shrunk(LyingListing):
        def list(self, prefix: str = "") -> Iterator[ObjectMeta]:
            for m in self.inner.list(prefix):
                yield ObjectMeta(key=m.key, size=m.size + 50)

    with pytest.raises(ObjectMismatch, match="a.bin"):
        download(local_data, s.rec_id, tmp_path / "out", retry=RetryPolicy(attempts=2, init_backoff=0.01),
                 store_for=lambda kind: Shrunk(raw, ""))  # type: ignore[arg-type,return-value]
    assert parts_left(tmp_path / "out") == [] and not (tmp_path / "out" / s.recording_hash / "eeg" / "a.bin").exists()


# -- get and stream ------------------------------------------------------------------------


def test_get_and_stream_raw(data: DataInterface, session: Session) -> None:
    got = data.get(session.rec_id)
    assert list(got.modalities) == list(MODALITIES)
    eeg = got.modalities["eeg"]
    assert isinstance(eeg, RawModality)
    assert [k for k, _ in eeg.segments] == [
        f"recordings/{session.rec_id}/eeg_4559/seg_000001.bin",
        f"recordings/{session.rec_id}/eeg_4559/seg_000002.bin",
    ]
    assert [b for _, b in eeg.segments] == [FILES["eeg_4559/seg_000001.bin"], FILES["eeg_4559/seg_000002.bin"]]
    assert got.recording.recording_hash == session.recording_hash

    chunks: list[Chunk] = list(data.stream(session.recording_hash, chunk_size=64 * KiB))
    assert max(len(c.data) for c in chunks) == 64 * KiB
    joined: dict[str, bytes] = {}
    for c in chunks:
        assert c.offset == len(joined.get(c.key, b""))
        joined[c.key] = joined.get(c.key, b"") + c.data
    assert joined == {f"recordings/{session.rec_id}/{rel}": body for rel, body in FILES.items()}
    assert list(dict.fromkeys(c.modality for c in chunks)) == list(MODALITIES)


def test_stream_resumes_after_reset_without_repeating_bytes(proxied) -> None:  # type: ignore[no-untyped-def]
    data, proxy, s = proxied
    [qr] = data.query(rec_id=s.rec_id)
    proxy.reset_next(2, after_bytes=200 * KiB)
    joined: dict[str, bytes] = {}
    from ursa_daemon.transfer.reader import stream

    for c in stream(data, qr, chunk_size=64 * KiB, retry=FAST_RETRY):
        assert c.offset == len(joined.get(c.key, b""))
        joined[c.key] = joined.get(c.key, b"") + c.data
    assert proxy.faults == 2
    assert joined == {f"recordings/{s.rec_id}/{rel}": body for rel, body in s.files.items()}


def test_get_processed_parquet(local_data: DataInterface, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    s = ingested_session(local_data, tmp_path, {"events/e.jsonl": b"{}", "eeg/a.bin": b"a"})
    table = pa.table({"t": [0.5, 1.5], "kind": ["go", "stop"]})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    key = f"processed/{s.recording_hash}/events/events.parquet"
    local_data.store(Role.ASSETS_RW).put(key, buf.getvalue())
    _register_processed(local_data, s, "events", "events", "", key, "parquet")
    got = local_data.get(s.rec_id)
    events = got.modalities["events"]
    assert isinstance(events, ProcessedModality) and events.asset.equals(table)
    assert isinstance(got.modalities["eeg"], RawModality)


def test_processed_without_its_library_says_what_to_install(
    local_data: DataInterface, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = ingested_session(local_data, tmp_path, {"eeg/a.bin": b"a", "camera/v.mp4": b"v"})
    objects = _put_processed(local_data, s)
    assert objects
    rh = s.recording_hash
    _register_processed(local_data, s, "eeg", "eeg", "", f"processed/{rh}/eeg/eeg.zarr", "zarr")
    _register_processed(local_data, s, "camera", "camera", "", f"processed/{rh}/camera/camera.mp4", "mp4")
    monkeypatch.setitem(sys.modules, "zarr", None)  # import zarr -> ImportError
    monkeypatch.setitem(sys.modules, "lance", None)
    [qr] = local_data.query(rec_id=s.rec_id)
    only = {"eeg": qr.modalities["eeg"]}
    with pytest.raises(MissingDependencyError, match=r"pip install 'zarr>=3'"):
        local_data.get(qr.model_copy(update={"modalities": only}))
    with pytest.raises(MissingDependencyError, match="pip install 'pylance'"):
        local_data.get(qr.model_copy(update={"modalities": {"camera": qr.modalities["camera"]}}))
    assert isinstance(local_data.get(qr, source="raw").modalities["eeg"], RawModality)


def test_get_processed_zarr_and_lance_with_their_libraries(data: DataInterface, tmp_path: Path) -> None:
    zarr = pytest.importorskip("zarr", minversion="3")
    lance = pytest.importorskip("lance")
    import numpy as np
    import pyarrow as pa

    s = ingested_session(data, tmp_path, {"eeg/a.bin": b"a", "notes/n.jsonl": b"{}"})
    rh = s.recording_hash
    work = tmp_path / "work"
    group = zarr.open_group(str(work / "eeg.zarr"), mode="w")
    array = group.create_array("data", shape=(100, 2), chunks=(50, 2), dtype="f4")
    array[:] = np.arange(200, dtype="f4").reshape(100, 2)
    table = pa.table({"t": [1.0, 2.0], "note": ["a", "b"]})
    lance.write_dataset(table, str(work / "notes.lance"))
    assets = data.store(Role.ASSETS_RW)
    for path in work.rglob("*"):
        if path.is_file():
            rel = path.relative_to(work).as_posix()
            family = "eeg" if rel.startswith("eeg.zarr") else "notes"
            assets.put(f"processed/{rh}/{family}/{rel}", path.read_bytes())
    _register_processed(data, s, "eeg", "eeg", "", f"processed/{rh}/eeg/eeg.zarr", "zarr")
    _register_processed(data, s, "notes", "notes", "", f"processed/{rh}/notes/notes.lance", "lance")
    got = data.get(s.rec_id)
    assert got.modalities["eeg"].asset["data"][:].sum() == np.arange(200).sum()
    assert got.modalities["notes"].asset.to_table().equals(table)


# -- the command line ------------------------------------------------------------------------


def write_config(data: DataInterface, tmp_path: Path) -> Path:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(data.config.model_dump(mode="json", exclude={"source"})))
    return cfg


def run_cli(cfg: Path, *commands: list[str]) -> list[subprocess.CompletedProcess[str]]:
    """Run ``ursa-daemon --config cfg <command>`` for each command, all at once (imports are slow)."""
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "ursa_daemon.cli", "--config", str(cfg), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for args in commands
    ]
    out = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=120)
        out.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    return out


def test_cli_download_json_and_refusal(local_data: DataInterface, tmp_path: Path) -> None:
    s = ingested_session(local_data, tmp_path, {"eeg/a.bin": b"a" * 10, "mic/b.wav": b"b" * 5})
    dest, taken = tmp_path / "dl", tmp_path / "taken"
    for name in ("eeg/a.bin", "mic/b.wav"):
        (taken / s.recording_hash / name).parent.mkdir(parents=True, exist_ok=True)
        (taken / s.recording_hash / name).write_bytes(b"mine")
    ok, refused = run_cli(
        write_config(local_data, tmp_path),
        ["download", s.rec_id, str(dest), "--layout", "by_modality", "--json"],
        ["download", s.recording_hash, str(taken)],
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout) == {
        "files": [str(dest / "eeg" / s.recording_hash / "a.bin"), str(dest / "mic" / s.recording_hash / "b.wav")],
        "bytes": 15,
    }
    assert refused.returncode == 1, refused.stderr
    assert "a.bin" in refused.stderr and "b.wav" in refused.stderr and "overwrite" in refused.stderr
    assert (taken / s.recording_hash / "eeg" / "a.bin").read_bytes() == b"mine"
