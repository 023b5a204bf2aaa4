"""The download tutorial (seed 003), run as written.

Its examples are extracted from the document's text and run against a catalog built
by the real ``ursa-daemon drain`` on moto's S3 server, the config's ``r2`` profile
pointing at moto; then a stand-in for the processing pipeline (another system) puts
processed assets in the assets bucket and marks those rows ``processed``. Only the
recording hash and the destination directory are filled in. Streamlit is replaced
by a recorder of the widget calls (a third-party UI, not our code).
"""

from __future__ import annotations

import json
import logging
import random
import re
import sys
import tempfile
import threading
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import MotoServer
from seed_docs import block_with, check_shared_copy, drained_r2_site, replace, table_value, text

DOC = text("download_tutorial.txt")
DOC_HASH = "1ad200d69a2f8d36424e5ad00e1b4196f45c30fca791b623f6a060bddca446a3"

INGESTED = "rec_20260601_100000_a1a1"  # processed eeg (zarr), events (lance), camera (mp4 + index)
RAW_ONLY = "rec_20260601_110000_b2b2"  # not ingested yet
FAILED = "rec_20260601_120000_c3c3"  # its mic row failed processing
EMPTY = "rec_20260601_130000_d4d4"  # plus a registered row whose prefix holds nothing


@dataclass
class Site:
    dir: Path
    raw: str
    assets: str
    hashes: dict[str, str]
    files: dict[str, dict[str, bytes]]
    processed: dict[str, bytes]  # assets-bucket key -> body


def _processed_assets(h: str, rng: random.Random) -> dict[str, bytes]:
    base = f"processed/{h}"
    return {
        f"{base}/eeg/eeg.zarr/zarr.json": json.dumps({"zarr_format": 3, "node_type": "group"}).encode(),
        f"{base}/eeg/eeg.zarr/data/c/0/0": rng.randbytes(20_000),
        f"{base}/events/events.lance/_versions/1.manifest": rng.randbytes(300),
        f"{base}/events/events.lance/data/0.lance": rng.randbytes(3_000),
        f"{base}/camera/camera.mp4": rng.randbytes(50_000),
        f"{base}/camera/camera.mp4.lance/data/0.lance": rng.randbytes(2_000),
    }


@pytest.fixture(scope="module")
def site(moto_server: MotoServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("tutorial")
    rng = random.Random(3)
    files = {
        INGESTED: {f"{w}/seg_{i:06d}.bin": rng.randbytes(9_000)
                   for w in ("eeg_4559", "camera_0", "events") for i in (1, 2)},
        RAW_ONLY: {"mic/seg_000001.bin": rng.randbytes(7_000), "mic/seg_000002.bin": rng.randbytes(5_000)},
        FAILED: {"mic/seg_000001.bin": rng.randbytes(1_000)},
        EMPTY: {"mic/seg_000001.bin": rng.randbytes(1_000)},
    }
    sessions = {rec_id: (fs, "Aria Lin") for rec_id, fs in files.items()}
    with drained_r2_site(moto_server, root, "tu", sessions) as (_config, raw, assets, mp):
        client = moto_server.client()
        mp.chdir(root)
        from ursa import DataInterface

        data = DataInterface(profile="r2")
        data.enable_writes()
        hashes = {r.rec_id: r.recording_hash for r in data.query(status="raw")}
        h = hashes[INGESTED]
        processed = _processed_assets(h, rng)
        for key, body in processed.items():  # the processing pipeline's output
            client.put_object(Bucket=assets, Key=key, Body=body)
        raw_uri = f"s3://{raw}/recordings/{INGESTED}"
        for worker, asset, fmt in (("eeg_4559", "eeg/eeg.zarr", "zarr"), ("events", "events/events.lance", "lance"),
                                   ("camera_0", "camera/camera.mp4", "mp4")):
            data.register_modality(recording_hash=h, modality=worker, raw_storage_uri=f"{raw_uri}/{worker}/",
                                   storage_uri=f"s3://{assets}/processed/{h}/{asset}", format=fmt,
                                   ingestion_status="processed", on_conflict="overwrite")
        data.register_modality(recording_hash=hashes[FAILED], modality="mic", ingestion_status="failed",
                               raw_storage_uri=f"s3://{raw}/recordings/{FAILED}/mic/", on_conflict="overwrite")
        data.register_modality(recording_hash=hashes[EMPTY], modality="notes",
                               raw_storage_uri=f"s3://{raw}/recordings/{EMPTY}/notes/")
        yield Site(root, raw, assets, hashes, files, processed)


@pytest.fixture
def at_site(site: Site, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, s3_env: None) -> Site:
    monkeypatch.chdir(site.dir)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return site


@pytest.fixture
def download_logger() -> Iterator[logging.Logger]:
    """``ursa.download`` restored after a test that configures it; its records do not reach
    the root logger meanwhile (where other tests may have left handlers on closed streams)."""
    logger = logging.getLogger("ursa.download")
    level, handlers, propagate = logger.level, list(logger.handlers), logger.propagate
    logger.propagate = False
    yield logger
    logger.setLevel(level)
    logger.propagate = propagate
    for h in list(logger.handlers):
        if h not in handlers:
            logger.removeHandler(h)


def run(src: str, ns: dict[str, Any] | None = None) -> dict[str, Any]:
    ns = {} if ns is None else ns
    exec(compile(src, "<tutorial example>", "exec"), ns)
    return ns


def tree(dest: Path) -> dict[str, bytes]:
    return {p.relative_to(dest).as_posix(): p.read_bytes() for p in dest.rglob("*") if p.is_file()}


def test_vendored_tutorial_is_the_seed() -> None:
    check_shared_copy("download_tutorial.txt")


def test_minimal_call_downloads_the_processed_assets(at_site: Site, tmp_path: Path) -> None:
    h = at_site.hashes[INGESTED]
    ns = run(replace(block_with(DOC, "paths = data.download("), (DOC_HASH, h)))
    [dest] = tmp_path.glob("ursa_session_*")
    got = tree(dest)
    want = {key.replace(f"processed/{h}/", f"{h}/"): body for key, body in at_site.processed.items()}
    assert got == want  # processed assets only, basenames kept; no raw segment
    assert [p.relative_to(dest).as_posix() for p in ns["paths"]] == sorted(want, key=lambda k: (k.split("/")[1], k))
    # "Processed assets keep their basename on disk": the document's tree
    listed = [line.split()[0] for line in DOC.splitlines() if line.startswith("dest/<recording_hash>/")]
    assert len(listed) == 4
    for entry in listed:
        prefix = entry.replace("dest/", "").replace("<recording_hash>", h).rstrip("…")
        assert any(k == prefix or k.startswith(prefix) for k in got), entry


def test_raw_and_processed_sources(at_site: Site, tmp_path: Path) -> None:
    from ursa import DataInterface

    data = DataInterface(profile="r2")
    raw_h, h = at_site.hashes[RAW_ONLY], at_site.hashes[INGESTED]
    assert data.query(recording_hash=raw_h) == []  # status="ingested" by default
    [raw_only] = data.query(recording_hash=raw_h, status="raw")
    data.download(raw_only, dest=tmp_path / "raw_only")
    want = {f"{raw_h}/mic/{rel.split('/')[1]}": b for rel, b in at_site.files[RAW_ONLY].items()}
    assert tree(tmp_path / "raw_only") == want
    with pytest.raises(ValueError, match="no processed asset"):
        data.download(raw_only, dest=tmp_path / "x", source="processed")
    # the original raw segments of an already-ingested session: keep the default query, source="raw"
    ingested = data.query(recording_hash=h)
    data.download(ingested, dest=tmp_path / "raw_of_ingested", source="raw")
    keyed = {"eeg_4559": "eeg", "camera_0": "camera", "events": "events"}
    assert tree(tmp_path / "raw_of_ingested") == {
        f"{h}/{keyed[rel.split('/')[0]]}/{rel.split('/')[1]}": b for rel, b in at_site.files[INGESTED].items()
    }
    # ingesting / failed rows, only reachable via status="all", are refused under every source
    assert data.query(recording_hash=at_site.hashes[FAILED]) == []
    failed = data.query(recording_hash=at_site.hashes[FAILED], status="all")
    for source in ("auto", "raw", "processed"):
        with pytest.raises(ValueError, match="failed"):
            data.download(failed, dest=tmp_path / "f", source=source)
    assert not (tmp_path / "f").exists()


def test_streamlit_progress_callback(at_site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, Any]] = []

    threads: set[int] = set()

    class Status:
        def update(self, **kw: Any) -> None:
            threads.add(threading.get_ident())
            calls.append(("status.update", kw))

    class Bar:
        def progress(self, value: float) -> None:
            threads.add(threading.get_ident())
            calls.append(("bar.progress", value))

    st = types.ModuleType("streamlit")
    st.status = lambda label, expanded=False: (calls.append(("status", label)), Status())[1]  # type: ignore[attr-defined]
    st.progress = lambda value: (calls.append(("progress", value)), Bar())[1]  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "streamlit", st)
    h = at_site.hashes[INGESTED]
    dest = tmp_path / "session"
    run(replace(block_with(DOC, "progress=on_progress"), (DOC_HASH, h), ('"/tmp/session"', repr(str(dest)))))
    total = sum(len(b) for b in at_site.processed.values())
    labels = [kw["label"] for what, kw in calls if what == "status.update"]
    assert calls[0] == ("status", "Downloading session…") and calls[1] == ("progress", 0.0)
    assert labels[0] == "Preparing… (planning object list)"
    assert labels[1:-1] == ["Downloading camera / 0", "Downloading eeg / 4559", "Downloading events / default"]
    assert re.fullmatch(rf"Done — {total:,} bytes in \d+\.\ds", labels[-1])
    assert calls[-1][1]["state"] == "complete"
    bar = [v for what, v in calls if what == "bar.progress"]
    assert bar == sorted(bar) and bar[-1] == 1.0 and all(0.0 <= v <= 1.0 for v in bar)
    assert tree(dest) == {k.replace("processed/", ""): b for k, b in at_site.processed.items()}
    assert threads == {threading.get_ident()}  # "invoked synchronously on the thread that called download()"


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_download_logger(at_site: Site, tmp_path: Path, download_logger: logging.Logger,
                         capsys: pytest.CaptureFixture[str]) -> None:
    from ursa import DataInterface

    run(block_with(DOC, 'logging.getLogger("ursa.download").setLevel(logging.INFO)'))
    info, debug = table_value(DOC, "INFO phases"), table_value(DOC, "DEBUG phases")
    keys = table_value(DOC, "extra= keys")
    assert info == ["start", "plan_done", "modality_start", "modality_done", "finish"] and debug == ["file_done"]
    data = DataInterface(profile="r2")
    results = data.query(recording_hash=at_site.hashes[INGESTED])
    records = _Records()
    download_logger.addHandler(records)
    data.download(results, dest=tmp_path / "a")
    printed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("download.")]
    phases = [r.phase for r in records.records]  # type: ignore[attr-defined]
    assert set(phases) == set(info) and len(printed) == len(phases) == 2 + 3 * 2 + 1
    # per-file DEBUG records once the level is lowered
    records.records.clear()
    download_logger.setLevel(logging.DEBUG)
    data.download(results, dest=tmp_path / "b")
    phases = [r.phase for r in records.records]  # type: ignore[attr-defined]
    assert re.fullmatch(r"start plan_done (modality_start (file_done )+modality_done )+finish ", " ".join(phases) + " ")
    assert phases.count("file_done") == len(at_site.processed)
    done = [r.bytes_done for r in records.records]  # type: ignore[attr-defined]
    assert done == sorted(done) and done[-1] == sum(len(b) for b in at_site.processed.values())
    for r in records.records:
        assert all(hasattr(r, k) for k in keys), r.__dict__
        assert r.levelno == (logging.DEBUG if r.phase in debug else logging.INFO)  # type: ignore[attr-defined]
        if r.phase in ("start", "plan_done", "finish"):  # type: ignore[attr-defined]
            assert r.worker_id is None  # type: ignore[attr-defined]
        else:
            assert isinstance(r.worker_id, str)  # type: ignore[attr-defined]
    # a callback that raises: one WARNING per occurrence, the download goes on
    records.records.clear()

    def broken(event: Any) -> None:
        if event.phase == "file_done":
            raise RuntimeError("widget gone")

    paths = data.download(results, dest=tmp_path / "c", progress=broken)
    warnings = [r for r in records.records if r.levelno == logging.WARNING]
    assert len(warnings) == len(at_site.processed) == len(paths)
    assert all("widget gone" in r.callback_error for r in warnings)  # type: ignore[attr-defined]


def test_errors_propagate_as_exceptions(at_site: Site, tmp_path: Path) -> None:
    import ursa

    data = ursa.DataInterface(profile="r2")
    results = data.query(recording_hash=at_site.hashes[INGESTED])
    first = data.download(results, dest=tmp_path / "d")
    before = tree(tmp_path / "d")
    with pytest.raises(FileExistsError, match="overwrite"):
        data.download(results, dest=tmp_path / "d")
    assert tree(tmp_path / "d") == before
    assert data.download(results, dest=tmp_path / "d", overwrite=True) == first
    assert issubclass(ursa.ObjectStoreTransientError, ursa.ObjectStoreError)
    empty = data.query(recording_hash=at_site.hashes[EMPTY], status="raw")
    with pytest.raises(ursa.ObjectStoreError, match=f"recordings/{EMPTY}/notes/"):
        data.download(empty, dest=tmp_path / "e")
