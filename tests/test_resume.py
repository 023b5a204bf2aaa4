"""Part-level resume of multipart uploads, against moto's S3 server through a byte-counting proxy.

Files are a few 5 MiB parts (S3's minimum part size, which moto enforces for
every part but the last); a bandwidth cap makes the first attempt slow enough
to be stopped mid-file. "Sent" is what the proxy forwarded to the server.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import s3_config_dict
from faultproxy import FaultProxy
from structlog.testing import capture_logs

from ursa_daemon.config import Config, config_from_dict
from ursa_daemon.daemon import Daemon
from ursa_daemon.daemon.activity import Activity
from ursa_daemon.daemon.state import MultipartRecord, SessionState
from ursa_daemon.log import human_bytes

PART = 5 << 20
NPARTS = 5
SIZE = NPARTS * PART - 12345  # the last part is short
REL = "camera_0/seg_000001.mp4"
#: what else goes through the proxy besides the parts: requests, manifest, participant, catalog commits
SLACK = 1 << 20


@pytest.fixture
def proxy(moto_server) -> Iterator[FaultProxy]:  # type: ignore[no-untyped-def]
    with FaultProxy((moto_server.host, moto_server.port)) as p:
        yield p


def config_doc(proxy: FaultProxy, buckets: tuple[str, str], tmp_path: Path, **upload: Any) -> dict[str, Any]:
    doc = s3_config_dict(proxy.endpoint, *buckets, tmp_path)
    doc["upload"] = {"part_size_bytes": PART, "max_concurrent_files": 1, **upload}
    doc["watch"] = {"settle_seconds": 0}
    return doc


def make_session(root: Path, body: bytes, rec_id: str = "rec_20260520_195628_c0de") -> Path:
    rec = root / "recordings" / rec_id
    (rec / REL).parent.mkdir(parents=True, exist_ok=True)
    (rec / REL).write_bytes(body)
    (rec / "manifest.json").write_text(json.dumps({"recording_id": rec_id, "start_time": 1_000_000}))
    return rec


def open_uploads(client: Any, bucket: str) -> list[dict[str, Any]]:
    return list(client.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def server_parts(client: Any, bucket: str, key: str, upload_id: str) -> dict[int, int]:
    resp = client.list_parts(Bucket=bucket, Key=key, UploadId=upload_id)
    return {p["PartNumber"]: p["Size"] for p in resp.get("Parts", [])}


def journal_parts(state_dir: Path) -> tuple[str | None, int]:
    """(upload id, parts recorded) from the state database, read-only (another process may write it)."""
    db = state_dir / "state.sqlite3"
    if not db.exists():
        return None, 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        row = conn.execute("SELECT upload_id FROM uploads").fetchone()
        if row is None:
            return None, 0
        n = conn.execute("SELECT count(*) FROM parts WHERE upload_id = ?", (row[0],)).fetchone()[0]
        return row[0], int(n)
    except sqlite3.OperationalError:  # schema not created yet
        return None, 0
    finally:
        conn.close()


def key_of(rec: Path) -> str:
    return f"recordings/{rec.name}/{REL}"


def stored_body(client: Any, bucket: str, key: str) -> bytes:
    return bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())


def pause_after_parts(daemon: Daemon, flag: Path, parts: int) -> threading.Thread:
    """Create the activity flag file once ``parts`` parts are in the journal."""

    def run() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if sum(p.parts_done for ps in daemon.state.part_progress().values() for p in ps) >= parts:
                flag.touch()
                return
            time.sleep(0.02)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.fixture
def paused(  # type: ignore[no-untyped-def]
    moto_server, s3_buckets, s3_env, proxy: FaultProxy, tmp_path: Path
) -> Iterator[tuple[Config, Path, bytes, str]]:
    """A session whose one file was paused (by the activity flag) after 2 of 5 parts: (config, rec, body, upload id)."""
    doc = config_doc(proxy, s3_buckets, tmp_path, bandwidth_bytes_per_s=8_000_000)
    config = config_from_dict(doc, base_dir=tmp_path)
    body = os.urandom(SIZE)
    rec = make_session(tmp_path, body)
    flag = tmp_path / "recording.flag"
    with Daemon(config, activity=Activity(quiet_seconds=0, flag_file=flag)) as daemon:
        watcher = pause_after_parts(daemon, flag, 2)
        outcome = daemon.process(rec)
        watcher.join()
        assert outcome.status == "paused", outcome
        assert daemon.state.session(rec.name).state is SessionState.PAUSED  # type: ignore[union-attr]
        [up] = daemon.state.multipart_uploads(rec.name)
        recorded = daemon.state.parts(up.upload_id)
    flag.unlink()
    client = moto_server.client()
    # the wire was cut: the server holds exactly the parts the journal confirmed, none in flight
    assert server_parts(client, s3_buckets[0], key_of(rec), up.upload_id) == {n: p.size for n, p in recorded.items()}
    assert 2 <= len(recorded) < NPARTS
    yield config, rec, body, up.upload_id


def test_pause_then_resume_sends_only_the_missing_parts(  # type: ignore[no-untyped-def]
    paused, moto_server, s3_buckets, proxy: FaultProxy, tmp_path: Path
) -> None:
    config, rec, body, upload_id = paused
    client = moto_server.client()
    done_parts = len(server_parts(client, s3_buckets[0], key_of(rec), upload_id))
    # status shows the part progress of the paused session, in JSON and in text
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude={"source"})))
    out = subprocess.run(
        [sys.executable, "-m", "ursa_daemon.cli", "--config", str(cfg_path), "status", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    [session] = json.loads(out.stdout)["sessions"]
    assert session["state"] == "paused"
    # the session's own numbers stay true while paused: what the server confirmed, not what was in flight
    assert (session["bytes_done"], session["bytes_total"]) == (done_parts * PART, SIZE)
    assert (session["files_done"], session["files_total"]) == (0, 1) and session["recording_hash"]
    assert session["parts"] == [
        {
            "rel_path": REL,
            "parts_done": done_parts,
            "parts_total": NPARTS,
            "bytes_done": done_parts * PART,
            "bytes_total": SIZE,
        }
    ]
    text = subprocess.run(
        [sys.executable, "-m", "ursa_daemon.cli", "--config", str(cfg_path), "status"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert text.returncode == 0, text.stderr
    moved = f"{human_bytes(done_parts * PART)} / {human_bytes(SIZE)}"
    assert f"{done_parts}/{NPARTS}" in text.stderr and moved in text.stderr

    before = proxy.bytes_up
    with Daemon(config) as daemon, capture_logs() as logs:
        outcome = daemon.process(rec)
        assert outcome.status == "registered", outcome
        assert daemon.state.multipart_uploads() == []
    sent = proxy.bytes_up - before
    missing = SIZE - done_parts * PART
    assert missing <= sent <= missing + SLACK, (sent, missing)
    [resumed] = [e for e in logs if e["event"] == "upload.multipart_resumed"]
    assert resumed["upload_id"] == upload_id and resumed["parts_confirmed"] == done_parts
    assert stored_body(client, s3_buckets[0], key_of(rec)) == body
    assert open_uploads(client, s3_buckets[0]) == []


def test_upload_the_server_forgot_restarts_from_zero(  # type: ignore[no-untyped-def]
    paused, moto_server, s3_buckets, proxy: FaultProxy
) -> None:
    config, rec, body, upload_id = paused
    client = moto_server.client()
    client.abort_multipart_upload(Bucket=s3_buckets[0], Key=key_of(rec), UploadId=upload_id)  # behind its back
    before = proxy.bytes_up
    with Daemon(config) as daemon, capture_logs() as logs:
        outcome = daemon.process(rec)
        assert outcome.status == "registered", outcome
        assert daemon.state.multipart_uploads() == []
    sent = proxy.bytes_up - before
    assert SIZE <= sent <= SIZE + SLACK
    assert [e["upload_id"] for e in logs if e["event"] == "upload.multipart_gone"] == [upload_id]
    assert stored_body(client, s3_buckets[0], key_of(rec)) == body
    head = client.head_object(Bucket=s3_buckets[0], Key=key_of(rec))
    assert head["ContentLength"] == SIZE and len(head["Metadata"]["sha256"]) == 64
    assert open_uploads(client, s3_buckets[0]) == []


def test_sigkill_mid_file_then_restart_resumes_the_same_upload(  # type: ignore[no-untyped-def]
    moto_server, s3_buckets, s3_env, proxy: FaultProxy, tmp_path: Path
) -> None:
    doc = config_doc(proxy, s3_buckets, tmp_path, bandwidth_bytes_per_s=6_000_000)
    slow, fast = tmp_path / "slow.yaml", tmp_path / "fast.yaml"
    slow.write_text(yaml.safe_dump(doc))
    doc["upload"].pop("bandwidth_bytes_per_s")
    fast.write_text(yaml.safe_dump(doc))
    body = os.urandom(SIZE)
    rec = make_session(tmp_path, body)
    state_dir = tmp_path / "state"

    def drain(config: Path) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "ursa_daemon.cli", "--config", str(config), "drain", "--json"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    first = drain(slow)
    deadline = time.monotonic() + 60
    while journal_parts(state_dir)[1] < 2 and time.monotonic() < deadline and first.poll() is None:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=30)
    upload_id, recorded = journal_parts(state_dir)
    assert upload_id is not None and 2 <= recorded < NPARTS
    client = moto_server.client()
    on_server = server_parts(client, s3_buckets[0], key_of(rec), upload_id)
    assert len(on_server) >= recorded  # a part confirmed just before the kill may not be recorded

    before = proxy.bytes_up
    second = drain(fast)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert json.loads(out)["registered"] == [rec.name]
    sent = proxy.bytes_up - before
    missing = SIZE - sum(on_server.values())
    assert missing <= sent <= missing + SLACK, (sent, missing)
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    [resumed] = [e for e in events if e.get("event") == "upload.multipart_resumed"]
    assert resumed["upload_id"] == upload_id
    assert stored_body(client, s3_buckets[0], key_of(rec)) == body
    assert open_uploads(client, s3_buckets[0]) == []
    assert journal_parts(state_dir) == (None, 0)


def test_sweep_aborts_uploads_that_will_not_be_continued(  # type: ignore[no-untyped-def]
    moto_server, s3_buckets, s3_env, tmp_path: Path
) -> None:
    from ursa_daemon.daemon.watch import Runner

    doc = s3_config_dict(moto_server.endpoint, *s3_buckets, tmp_path)
    config = config_from_dict(doc, base_dir=tmp_path)
    client = moto_server.client()
    raw = s3_buckets[0]
    with Daemon(config, activity=Activity(quiet_seconds=0)) as daemon:
        store = daemon.data.store("raw_rw")
        ids = {}
        for rec_id, state in (
            ("rec_20260101_000000_aaaa", SessionState.REGISTERED),  # left over after registering
            ("rec_20260101_000000_bbbb", SessionState.REJECTED),
            ("rec_20260101_000000_cccc", None),  # a session the state forgot
            ("rec_20260101_000000_dddd", SessionState.PAUSED),  # will be resumed: kept
        ):
            if state is not None:
                daemon.state.upsert_session(rec_id, str(tmp_path), state)
            key = f"recordings/{rec_id}/{REL}"
            ids[rec_id] = store.create_multipart(key, sha256="0" * 64)  # type: ignore[attr-defined]
            daemon.state.start_multipart(
                MultipartRecord(ids[rec_id], rec_id, REL, raw, key, SIZE, "0" * 64, PART)
            )
        runner = Runner(daemon)
        assert runner.sweep_uploads() == 3
        left = {u["UploadId"] for u in open_uploads(client, raw)}
        assert left == {ids["rec_20260101_000000_dddd"]}
        assert [u.rec_id for u in daemon.state.multipart_uploads()] == ["rec_20260101_000000_dddd"]
        # no confirmed part for longer than the stale age: given up too
        assert runner.sweep_uploads(stale_after_s=-1) == 1
        assert open_uploads(client, raw) == [] and daemon.state.multipart_uploads() == []


def test_file_changed_mid_upload_is_rejected_and_its_upload_aborted(  # type: ignore[no-untyped-def]
    moto_server, s3_buckets, s3_env, proxy: FaultProxy, tmp_path: Path
) -> None:
    doc = config_doc(proxy, s3_buckets, tmp_path, bandwidth_bytes_per_s=8_000_000)
    config = config_from_dict(doc, base_dir=tmp_path)
    rec = make_session(tmp_path, os.urandom(SIZE))

    with Daemon(config) as daemon:

        def overwrite_tail() -> None:  # same size, other bytes, after the first part is confirmed
            while not any(p.parts_done for ps in daemon.state.part_progress().values() for p in ps):
                time.sleep(0.02)
            with open(rec / REL, "r+b") as f:
                f.seek(SIZE - 100)
                f.write(b"\0" * 100)

        changer = threading.Thread(target=overwrite_tail, daemon=True)
        changer.start()
        outcome = daemon.process(rec)
        changer.join(timeout=30)
        assert outcome.status == "rejected", outcome
        assert rec.name in (outcome.error or "") and REL in (outcome.error or "") and "changed" in (outcome.error or "")
        assert daemon.state.multipart_uploads() == []
    client = moto_server.client()
    assert open_uploads(client, s3_buckets[0]) == []
    assert client.list_objects_v2(Bucket=s3_buckets[0]).get("KeyCount") == 0


def test_a_cut_resets_a_send_blocked_on_a_server_that_does_not_read() -> None:
    """The pause's last resort: a request stuck in ``sendall`` is woken and its queued bytes dropped."""
    import socket

    from ursa_daemon.transfer.wire import _Wire

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname())
    peer, _ = server.accept()
    errors: list[BaseException] = []

    def send_forever() -> None:
        try:
            while True:
                client.sendall(b"x" * (1 << 20))  # blocks once the buffers are full: nobody reads
        except OSError as exc:
            errors.append(exc)

    sender = threading.Thread(target=send_forever, daemon=True)
    sender.start()
    wire = _Wire()
    wire.add(client)
    time.sleep(0.3)  # it fills the buffers and blocks (if not yet, the cut resets it all the same)
    wire.cut()
    sender.join(timeout=10)
    assert not sender.is_alive() and errors, "the blocked send was not woken"
    with pytest.raises(ConnectionResetError):  # a reset, not an orderly end after the queued bytes
        while peer.recv(1 << 20):
            pass
    peer.close()
    client.close()
    server.close()


def test_connection_resets_are_retried_and_the_object_lands_byte_exact(  # type: ignore[no-untyped-def]
    moto_server, s3_buckets, s3_env, proxy: FaultProxy, tmp_path: Path
) -> None:
    doc = config_doc(proxy, s3_buckets, tmp_path, bandwidth_bytes_per_s=8_000_000)
    config = config_from_dict(doc, base_dir=tmp_path)
    body = os.urandom(SIZE)
    rec = make_session(tmp_path, body)
    with Daemon(config) as daemon, capture_logs() as logs:

        def arm() -> None:  # once a part is in: the next 2 responses are cut (parts' answers among them)
            while not any(p.parts_done for ps in daemon.state.part_progress().values() for p in ps):
                time.sleep(0.02)
            proxy.reset_next(2, after_bytes=1)

        armer = threading.Thread(target=arm, daemon=True)
        armer.start()
        outcome = daemon.process(rec)
        armer.join(timeout=30)
        assert outcome.status == "registered", outcome
    assert proxy.faults == 2
    assert [e for e in logs if e["event"] == "upload.retry"], "a part was not retried"
    client = moto_server.client()
    assert stored_body(client, s3_buckets[0], key_of(rec)) == body
    assert open_uploads(client, s3_buckets[0]) == []
