"""Writers sending the same session at once never fail each other (SPEC section 4).

Two writers (overlapping drains, a rig and a NAS drain) may upload the same session
at the same time. The clean-up of leftover multipart uploads must leave a live peer's
upload alone, and an upload another writer aborted anyway (or completed) is no
failure: the file is done if the object is in the store, else it starts again.
On SeaweedFS: its ListMultipartUploads tells when an upload was initiated (moto says
2010 for every one) and it answers a part of an aborted upload NoSuchUpload (moto 500).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import s3_config_dict, seaweed_config_dict
from structlog.testing import capture_logs

from ursa_daemon.config import config_from_dict
from ursa_daemon.daemon.state import StateDB
from ursa_daemon.session import FileEntry, hash_files
from ursa_daemon.store import get_store
from ursa_daemon.store.base import MultipartStore
from ursa_daemon.transfer.abort import ORPHAN_MIN_AGE_S, abort_orphan_uploads, upload_age_s
from ursa_daemon.transfer.limits import RateLimiter, UploadLimits
from ursa_daemon.transfer.upload import FileUpload, upload_files

MiB = 1 << 20
PART = 5 * MiB
NPARTS = 5
SIZE = NPARTS * PART - 4321
REL = "camera_0/seg_000001.mp4"
REC = "rec_20260520_195628_feed"
KEY = f"recordings/{REC}/{REL}"


@pytest.fixture
def s3_store(seaweed_server, seaweed_buckets, seaweed_env, tmp_path: Path) -> tuple[Any, Any]:  # type: ignore[no-untyped-def]
    """(raw store, admin boto3 client) on SeaweedFS: it answers a part of an aborted upload
    NoSuchUpload as S3 and R2 do (moto answers 500, a KeyError of its own)."""
    doc = seaweed_config_dict(seaweed_server, *seaweed_buckets, tmp_path)
    store = get_store(config_from_dict(doc, base_dir=tmp_path).active_profile, "raw_rw")
    assert isinstance(store, MultipartStore)
    return store, seaweed_server.client()


def open_uploads(client: Any, bucket: str) -> set[str]:
    return {u["UploadId"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}


def test_a_live_peers_upload_is_left_alone_an_old_one_is_aborted(  # type: ignore[no-untyped-def]
    seaweed_server, seaweed_buckets, seaweed_env, tmp_path: Path
) -> None:
    doc = seaweed_config_dict(seaweed_server, *seaweed_buckets, tmp_path)
    store = get_store(config_from_dict(doc, base_dir=tmp_path).active_profile, "raw_rw")
    raw = seaweed_buckets[0]
    peer = seaweed_server.client()  # another writer, with a journal of its own
    old = peer.create_multipart_upload(Bucket=raw, Key=f"recordings/{REC}/a.bin")["UploadId"]
    time.sleep(2.5)  # Initiated and the server's Date have whole seconds
    live = peer.create_multipart_upload(Bucket=raw, Key=KEY)["UploadId"]
    other = peer.create_multipart_upload(Bucket=raw, Key="recordings/rec_20260520_195628_0the/x.bin")["UploadId"]
    listed = {u.upload_id: u for u in store.list_multipart(f"recordings/{REC}/")}  # type: ignore[attr-defined]
    assert set(listed) == {old, live}
    assert all(u.initiated is not None and u.listed_at is not None for u in listed.values())
    age_old, age_live = upload_age_s(listed[old]), upload_age_s(listed[live])
    assert age_old is not None and age_live is not None and age_old >= 2 and 0 <= age_live <= 1

    # the session's own clean-up at the default threshold: both are younger, both may be a live peer's
    assert abort_orphan_uploads(store, REC, None) == 0
    assert open_uploads(peer, raw) == {old, live, other}
    # with a threshold between their ages: the old one is abandoned, the live one is not
    assert abort_orphan_uploads(store, REC, None, min_age_s=1.5) == 1
    assert open_uploads(peer, raw) == {live, other}
    # the peer goes on and completes its upload
    part = peer.upload_part(Bucket=raw, Key=KEY, UploadId=live, PartNumber=1, Body=b"x" * 100)
    peer.complete_multipart_upload(
        Bucket=raw, Key=KEY, UploadId=live, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]}
    )
    assert peer.head_object(Bucket=raw, Key=KEY)["ContentLength"] == 100
    peer.abort_multipart_upload(Bucket=raw, Key="recordings/rec_20260520_195628_0the/x.bin", UploadId=other)


class _Lister(BaseHTTPRequestHandler):
    """An S3 endpoint that lists three uploads (Initiated garbled, missing, and in 2010) and
    records the aborts it is asked for."""

    aborted: list[str] = []
    LISTING = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        "<Bucket>raw</Bucket><MaxUploads>1000</MaxUploads><IsTruncated>false</IsTruncated>"
        f"<Upload><Key>recordings/{REC}/a</Key><UploadId>garbled</UploadId><Initiated>not a time</Initiated></Upload>"
        f"<Upload><Key>recordings/{REC}/b</Key><UploadId>unsaid</UploadId></Upload>"
        f"<Upload><Key>recordings/{REC}/c</Key><UploadId>old</UploadId>"
        "<Initiated>2010-11-10T20:48:33.000Z</Initiated></Upload>"
        "</ListMultipartUploadsResult>"
    ).encode()

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(len(self.LISTING)))
        self.end_headers()
        self.wfile.write(self.LISTING)

    def do_DELETE(self) -> None:  # noqa: N802
        self.aborted.append(parse_qs(urlsplit(self.path).query)["uploadId"][0])
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_an_upload_whose_age_the_server_does_not_say_counts_as_live(s3_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Lister)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        doc = s3_config_dict(f"http://127.0.0.1:{server.server_address[1]}", "raw", "assets", tmp_path)
        store = get_store(config_from_dict(doc, base_dir=tmp_path).active_profile, "raw_rw")
        listed = {u.upload_id: u for u in store.list_multipart(f"recordings/{REC}/")}  # type: ignore[attr-defined]
        assert listed["garbled"].initiated is None and listed["unsaid"].initiated is None
        assert listed["old"].initiated is not None and listed["old"].listed_at is not None
        assert [upload_age_s(listed[u]) for u in ("garbled", "unsaid")] == [None, None]
        with capture_logs() as logs:
            assert abort_orphan_uploads(store, REC, None) == 1
        assert _Lister.aborted == ["old"]
        kept = [e["upload_id"] for e in logs if e["event"] == "upload.orphan_kept"]
        assert sorted(kept) == ["garbled", "unsaid"] and ORPHAN_MIN_AGE_S >= 24 * 3600
    finally:
        server.shutdown()
        server.server_close()


def _session(tmp_path: Path) -> tuple[Path, FileEntry, bytes]:
    rec = tmp_path / "recordings" / REC
    body = os.urandom(SIZE)
    (rec / REL).parent.mkdir(parents=True)
    (rec / REL).write_bytes(body)
    [entry] = hash_files(rec, [FileEntry(REL, SIZE)], part_size=PART)
    return rec, entry, body


def _upload_with_a_peer(
    store: Any, rec: Path, entry: FileEntry, journal: StateDB, peer: Any, act: Any
) -> tuple[bool, list[FileUpload], int, list[dict[str, Any]]]:
    """Upload the session's file (throttled); once 6 MiB of it are sent, ``act(upload_id)`` runs
    from the sending thread: the peer's move. (done, files done, bytes sent, log events)."""
    sent = 0
    acted = threading.Event()
    lock = threading.Lock()

    def on_file_bytes(rel: str, n: int) -> None:
        nonlocal sent
        with lock:
            sent += n
            fire = sent >= 6 * MiB and not acted.is_set()
            if fire:
                acted.set()
        if fire:
            [up] = journal.multipart_uploads(REC)
            act(up.upload_id)

    finished: list[FileUpload] = []
    with capture_logs() as logs:
        done = upload_files(
            store, rec, REC, [entry],
            should_stop=lambda: False,
            limits=UploadLimits(part_size=PART, max_concurrent_files=1),
            limiter=RateLimiter(12 * MiB),
            on_done=finished.append,
            journal=journal,
            on_file_bytes=on_file_bytes,
        )
    assert acted.is_set()
    return done, finished, sent, logs


def test_an_upload_another_writer_aborts_midway_starts_again_and_lands(  # type: ignore[no-untyped-def]
    s3_store, tmp_path: Path
) -> None:
    store, peer = s3_store
    rec, entry, body = _session(tmp_path)
    journal = StateDB(tmp_path / "state")
    aborted: list[str] = []

    def abort(upload_id: str) -> None:  # another writer's clean-up aborts our live upload
        peer.abort_multipart_upload(Bucket=store.bucket, Key=KEY, UploadId=upload_id)
        aborted.append(upload_id)

    done, finished, sent, logs = _upload_with_a_peer(store, rec, entry, journal, peer, abort)
    assert done and [f.entry.rel_path for f in finished] == [REL] and finished[0].uploaded
    assert [e["upload_id"] for e in logs if e["event"] == "upload.multipart_gone"] == aborted
    assert sent >= SIZE + 6 * MiB  # the file went up again from its first byte
    got = peer.get_object(Bucket=store.bucket, Key=KEY)
    assert got["Body"].read() == body and got["Metadata"]["sha256"] == entry.sha256
    assert open_uploads(peer, store.bucket) == set() and journal.multipart_uploads() == []


def test_an_upload_aborted_by_a_peer_that_completed_the_object_counts_done(  # type: ignore[no-untyped-def]
    s3_store, tmp_path: Path
) -> None:
    store, peer = s3_store
    rec, entry, body = _session(tmp_path)
    journal = StateDB(tmp_path / "state")
    assert entry.sha256 == hashlib.sha256(body).hexdigest()

    def complete_then_abort(upload_id: str) -> None:  # the peer's copy lands first, then it cleans up
        peer.put_object(Bucket=store.bucket, Key=KEY, Body=body, Metadata={"sha256": entry.sha256})
        peer.abort_multipart_upload(Bucket=store.bucket, Key=KEY, UploadId=upload_id)

    done, finished, sent, logs = _upload_with_a_peer(store, rec, entry, journal, peer, complete_then_abort)
    assert done and [f.entry.rel_path for f in finished] == [REL]
    assert len([e for e in logs if e["event"] == "upload.multipart_gone"]) == 1
    assert sent < SIZE  # not sent again: the peer's object is the file
    got = peer.get_object(Bucket=store.bucket, Key=KEY)
    assert got["Body"].read() == body
    assert open_uploads(peer, store.bucket) == set() and journal.multipart_uploads() == []
