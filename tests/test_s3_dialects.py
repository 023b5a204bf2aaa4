"""R2's S3 dialect (the proxy in front of moto, ``tests/r2proxy.py``) and SeaweedFS (``tests/seaweed.py``).

What production (Cloudflare R2) refuses, the proxy refuses; what our multipart path
sends, both servers take; a part whose bytes do not match its CRC32C is refused by
the server itself; a file that grows while it is uploaded is caught on the
multipart path and registered with its final bytes once it settles.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from conftest import MOTO_KEY_ID, MOTO_SECRET, s3_config_dict, seaweed_config_dict
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from ursa_daemon.config import config_from_dict
from ursa_daemon.daemon import Daemon
from ursa_daemon.errors import ChecksumMismatch
from ursa_daemon.session import FileEntry, hash_files
from ursa_daemon.store import get_store
from ursa_daemon.store.base import MultipartStore
from ursa_daemon.transfer.limits import RateLimiter, UploadLimits
from ursa_daemon.transfer.upload import upload_files

MiB = 1 << 20
PART = 5 * MiB
REL = "camera_0/seg_000001.mp4"


def r2_client(moto_server: Any, region: str = "auto") -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=moto_server.endpoint,
        region_name=region,
        aws_access_key_id=MOTO_KEY_ID,
        aws_secret_access_key=MOTO_SECRET,
        config=Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            retries={"max_attempts": 1},
        ),
    )


def code_of(info: pytest.ExceptionInfo[ClientError]) -> tuple[int, str]:
    resp = info.value.response
    return int(resp["ResponseMetadata"]["HTTPStatusCode"]), str(resp["Error"]["Code"])


def b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def test_r2_proxy_refuses_what_r2_refuses(moto_server, s3_buckets) -> None:  # type: ignore[no-untyped-def]
    if moto_server.r2 is None:
        pytest.skip("URSA_TEST_R2=0: moto without the R2 dialect")
    raw, _ = s3_buckets
    c = r2_client(moto_server)
    body = os.urandom(PART)
    up = c.create_multipart_upload(Bucket=raw, Key="k")["UploadId"]
    sha = b64(hashlib.sha256(body).digest())
    with pytest.raises(ClientError) as info:  # the right sha256: still 501
        c.upload_part(Bucket=raw, Key="k", UploadId=up, PartNumber=1, Body=body, ChecksumSHA256=sha)
    assert code_of(info) == (501, "NotImplemented")
    with pytest.raises(ClientError) as info:
        c.upload_part(Bucket=raw, Key="k", UploadId=up, PartNumber=1, Body=body, ChecksumCRC32C="AAAAAA==")
    assert code_of(info) == (400, "BadDigest")
    with pytest.raises(ClientError) as info:
        c.upload_part(Bucket=raw, Key="k", UploadId=up, PartNumber=10_001, Body=b"x")
    assert code_of(info) == (400, "InvalidArgument")
    # unequal parts: refused at completion
    e1 = c.upload_part(Bucket=raw, Key="k", UploadId=up, PartNumber=1, Body=body)["ETag"]
    e2 = c.upload_part(Bucket=raw, Key="k", UploadId=up, PartNumber=2, Body=body + b"more")["ETag"]
    e3 = c.upload_part(Bucket=raw, Key="k", UploadId=up, PartNumber=3, Body=b"tail")["ETag"]
    parts = [{"PartNumber": n, "ETag": e} for n, e in ((1, e1), (2, e2), (3, e3))]
    with pytest.raises(ClientError) as info:
        c.complete_multipart_upload(Bucket=raw, Key="k", UploadId=up, MultipartUpload={"Parts": parts})
    assert code_of(info) == (400, "InvalidPart")
    # parts under 5 MiB but the last: refused
    up2 = c.create_multipart_upload(Bucket=raw, Key="small")["UploadId"]
    s1 = c.upload_part(Bucket=raw, Key="small", UploadId=up2, PartNumber=1, Body=b"a" * 1000)["ETag"]
    s2 = c.upload_part(Bucket=raw, Key="small", UploadId=up2, PartNumber=2, Body=b"b" * 10)["ETag"]
    with pytest.raises(ClientError) as info:
        c.complete_multipart_upload(
            Bucket=raw, Key="small", UploadId=up2,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": s1}, {"PartNumber": 2, "ETag": s2}]},
        )
    assert code_of(info)[1] == "EntityTooSmall"
    # a single PUT: a wrong sha256 is refused, the right one taken
    with pytest.raises(ClientError) as info:
        c.put_object(Bucket=raw, Key="p", Body=b"abc", ChecksumSHA256=sha)
    assert code_of(info) == (400, "BadDigest")
    c.put_object(Bucket=raw, Key="p", Body=b"abc", ChecksumSHA256=b64(hashlib.sha256(b"abc").digest()))
    # the region is auto
    with pytest.raises(ClientError) as info:
        r2_client(moto_server, "us-east-1").head_object(Bucket=raw, Key="p")
    assert code_of(info)[0] == 400
    with pytest.raises(ClientError) as info:
        r2_client(moto_server, "eu-west-1").list_objects_v2(Bucket=raw)
    assert code_of(info) == (400, "AuthorizationHeaderMalformed")
    assert moto_server.client().list_objects_v2(Bucket=raw)["KeyCount"] == 1  # only "p" went in


@pytest.fixture(params=["r2", "seaweed"])
def s3_profile_config(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A config on moto behind the R2 dialect, or on SeaweedFS; plus an admin client of that server."""
    if request.param == "r2":
        server = request.getfixturevalue("moto_server")
        request.getfixturevalue("s3_env")
        doc = s3_config_dict(server.endpoint, *request.getfixturevalue("s3_buckets"), tmp_path)
    else:
        server = request.getfixturevalue("seaweed_server")
        request.getfixturevalue("seaweed_env")
        doc = seaweed_config_dict(server, *request.getfixturevalue("seaweed_buckets"), tmp_path)
    doc["upload"] = {"part_size_bytes": PART, "max_concurrent_files": 1}
    doc["watch"] = {"settle_seconds": 0}
    return config_from_dict(doc, base_dir=tmp_path), server, doc


def test_multipart_upload_lands_byte_exact_with_crc32c_parts(s3_profile_config, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    config, server, _ = s3_profile_config
    store = get_store(config.active_profile, "raw_rw")
    assert isinstance(store, MultipartStore)
    rec = tmp_path / "rec_20260520_195628_c0de"
    body = os.urandom(3 * PART - 777)
    (rec / REL).parent.mkdir(parents=True)
    (rec / REL).write_bytes(body)
    [entry] = hash_files(rec, [FileEntry(REL, len(body))], part_size=PART)
    assert len(entry.part_crc32c) == 3 and entry.sha256 == hashlib.sha256(body).hexdigest()
    done = upload_files(
        store, rec, rec.name, [entry],
        should_stop=lambda: False, limits=UploadLimits(part_size=PART), limiter=RateLimiter(None),
        on_done=lambda _: None,
    )
    assert done
    key = f"recordings/{rec.name}/{REL}"
    client = server.client()
    got = client.get_object(Bucket=store.bucket, Key=key)
    assert got["Body"].read() == body
    assert got["Metadata"] == {"sha256": entry.sha256}
    assert got["ETag"].strip('"').endswith("-3")
    if getattr(server, "r2", None) is not None:
        assert not server.r2.refused
    # a part whose bytes do not match its CRC32C: the server refuses it
    up = store.create_multipart("x/bad", sha256=entry.sha256)
    import io

    with pytest.raises(ChecksumMismatch):
        store.upload_part("x/bad", up, 1, io.BytesIO(body[:PART]), size=PART, crc32c=entry.part_crc32c[1])
    store.abort_multipart("x/bad", up)


def _session(root: Path, body: bytes, rec_id: str = "rec_20260520_195628_9a0e") -> Path:
    rec = root / "recordings" / rec_id
    (rec / REL).parent.mkdir(parents=True, exist_ok=True)
    (rec / REL).write_bytes(body)
    (rec / "manifest.json").write_text(json.dumps({"recording_id": rec_id, "start_time": 1_000_000}))
    return rec


def test_a_file_growing_during_multipart_upload_waits_and_registers_its_final_bytes(  # type: ignore[no-untyped-def]
    moto_server, s3_buckets, s3_env, tmp_path: Path
) -> None:
    """Issue 12: the part-level path re-checks the file after its last part; a file still
    growing is not registered as a stale snapshot, and once it settles it goes in whole."""
    doc = s3_config_dict(moto_server.endpoint, *s3_buckets, tmp_path)
    doc["upload"] = {"part_size_bytes": PART, "max_concurrent_files": 1, "bandwidth_bytes_per_s": 16_000_000}
    doc["watch"] = {"settle_seconds": 0}
    config = config_from_dict(doc, base_dir=tmp_path)
    first = os.urandom(3 * PART)
    rec = _session(tmp_path, first)
    more = os.urandom(PART + 4321)
    with Daemon(config) as daemon:

        def grow() -> None:  # the rig appends once the first part is confirmed
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if any(p.parts_done for ps in daemon.state.part_progress().values() for p in ps):
                    break
                time.sleep(0.02)
            with open(rec / REL, "ab") as f:
                f.write(more)

        grower = threading.Thread(target=grow, daemon=True)
        grower.start()
        outcome = daemon.process(rec)
        grower.join(timeout=60)
        assert outcome.status == "rejected", outcome
        assert REL in (outcome.error or "") and "grew" in (outcome.error or "")
        assert daemon.state.multipart_uploads() == []
        client = moto_server.client()
        assert client.list_objects_v2(Bucket=s3_buckets[0]).get("KeyCount") == 0
        assert not client.list_multipart_uploads(Bucket=s3_buckets[0]).get("Uploads")
        # settled: the tree changed, so the session is taken again, with its final bytes
        again = daemon.process(rec)
        assert again.status == "registered", again
    key = f"recordings/{rec.name}/{REL}"
    stored = moto_server.client().get_object(Bucket=s3_buckets[0], Key=key)["Body"].read()
    assert stored == first + more
    assert not moto_server.r2 or not moto_server.r2.refused


def test_seaweed_daemon_pause_and_resume_registers_byte_exact(  # type: ignore[no-untyped-def]
    seaweed_server, seaweed_buckets, seaweed_env, tmp_path: Path
) -> None:
    """The daemon's whole S3 path on a second real server: a paused multipart upload continues
    part by part and the session registers once, the bytes exact."""
    from ursa_daemon.daemon.activity import Activity

    doc = seaweed_config_dict(seaweed_server, *seaweed_buckets, tmp_path)
    doc["upload"] = {"part_size_bytes": PART, "max_concurrent_files": 1, "bandwidth_bytes_per_s": 8_000_000}
    doc["watch"] = {"settle_seconds": 0}
    config = config_from_dict(doc, base_dir=tmp_path)
    body = os.urandom(4 * PART - 99)
    rec = _session(tmp_path, body)
    flag = tmp_path / "recording.flag"
    with Daemon(config, activity=Activity(quiet_seconds=0, flag_file=flag)) as daemon:

        def pause_after_one() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if any(p.parts_done for ps in daemon.state.part_progress().values() for p in ps):
                    flag.touch()
                    return
                time.sleep(0.02)

        t = threading.Thread(target=pause_after_one, daemon=True)
        t.start()
        assert daemon.process(rec).status == "paused"
        t.join()
        [up] = daemon.state.multipart_uploads(rec.name)
        confirmed = daemon.state.parts(up.upload_id)
        assert 1 <= len(confirmed) < 4
        flag.unlink()
        with capture_logs() as logs:
            outcome = daemon.process(rec)
        assert outcome.status == "registered", outcome
        [resumed] = [e for e in logs if e["event"] == "upload.multipart_resumed"]
        assert resumed["upload_id"] == up.upload_id and resumed["parts_confirmed"] == len(confirmed)
    client = seaweed_server.client()
    key = f"recordings/{rec.name}/{REL}"
    got = client.get_object(Bucket=seaweed_buckets[0], Key=key)
    assert got["Body"].read() == body and got["Metadata"]["sha256"] == hashlib.sha256(body).hexdigest()
    assert not client.list_multipart_uploads(Bucket=seaweed_buckets[0]).get("Uploads")


def test_resume_proves_parts_the_journal_missed_from_list_parts(  # type: ignore[no-untyped-def]
    moto_server, s3_buckets, s3_env, tmp_path: Path
) -> None:
    """Killed between the server's answer and the journal write: the next attempt finds those
    parts in ListParts, proves them by their ETag (the MD5 of their bytes) and sends only the
    rest; a listed part whose bytes are not the file's is sent again."""
    import io

    from ursa_daemon.daemon.state import MultipartRecord, StateDB
    from ursa_daemon.store.multipart import b64_crc32c  # noqa: F401 - the header the parts carry

    doc = s3_config_dict(moto_server.endpoint, *s3_buckets, tmp_path)
    config = config_from_dict(doc, base_dir=tmp_path)
    store = get_store(config.active_profile, "raw_rw")
    assert isinstance(store, MultipartStore)
    rec = tmp_path / "rec_20260520_195628_d00d"
    body = os.urandom(4 * PART - 5)
    (rec / REL).parent.mkdir(parents=True)
    (rec / REL).write_bytes(body)
    [entry] = hash_files(rec, [FileEntry(REL, len(body))], part_size=PART)
    key = f"recordings/{rec.name}/{REL}"
    state = StateDB(tmp_path / "state")
    up = store.create_multipart(key, sha256=entry.sha256)
    state.start_multipart(MultipartRecord(up, rec.name, REL, store.bucket, key, len(body), entry.sha256 or "", PART))
    # parts 1 and 2 reached the server, the journal never heard of them; part 3 holds other bytes
    for n in (1, 2):
        chunk = body[(n - 1) * PART : n * PART]
        store.upload_part(key, up, n, io.BytesIO(chunk), size=PART, crc32c=entry.part_crc32c[n - 1])
    other = os.urandom(PART)
    from ursa_daemon.transfer.body import _crc32c_extend

    store.upload_part(key, up, 3, io.BytesIO(other), size=PART, crc32c=_crc32c_extend(0, other))
    sent_before = moto_server.r2.parts_sent if moto_server.r2 else 0
    with capture_logs() as logs:
        done = upload_files(
            store, rec, rec.name, [entry],
            should_stop=lambda: False, limits=UploadLimits(part_size=PART), limiter=RateLimiter(None),
            on_done=lambda _: None, journal=state,
        )
    assert done
    [resumed] = [e for e in logs if e["event"] == "upload.multipart_resumed"]
    assert resumed["upload_id"] == up
    assert moto_server.client().get_object(Bucket=store.bucket, Key=key)["Body"].read() == body
    if moto_server.r2 is not None:
        assert moto_server.r2.parts_sent - sent_before == 2  # parts 3 (its bytes were not the file's) and 4
    assert state.multipart_uploads() == []


def test_one_big_file_gets_the_sessions_part_budget(  # type: ignore[no-untyped-def]
    moto_server, s3_buckets, s3_env, tmp_path: Path
) -> None:
    """A session of one multipart file takes a larger share of the session's part budget
    (``max_concurrent_files`` x ``max_concurrency_per_file`` = 8) than the per-file 2, but never
    more than the 3 parts in flight R2 is known to take per upload (it answered 500s at 5); the
    server is slowed so that parts overlap whenever the client lets them."""
    if moto_server.r2 is None:
        pytest.skip("counts parts in flight in the R2-dialect proxy (URSA_TEST_R2=0 bypasses it)")
    doc = s3_config_dict(moto_server.endpoint, *s3_buckets, tmp_path)
    store = get_store(config_from_dict(doc, base_dir=tmp_path).active_profile, "raw_rw")
    rec = tmp_path / "rec_20260520_195628_b1f0"
    body = os.urandom(8 * PART)
    (rec / REL).parent.mkdir(parents=True)
    (rec / REL).write_bytes(body)
    [entry] = hash_files(rec, [FileEntry(REL, len(body))], part_size=PART)
    proxy = moto_server.r2
    proxy.parts_in_flight_max = 0
    proxy.part_hold_s = 0.3
    try:
        done = upload_files(
            store, rec, rec.name, [entry],
            should_stop=lambda: False, limits=UploadLimits(part_size=PART), limiter=RateLimiter(None),
            on_done=lambda _: None,
        )
    finally:
        proxy.part_hold_s = 0.0
    assert done
    assert proxy.parts_in_flight_max == 3
    key = f"recordings/{rec.name}/{REL}"
    assert moto_server.client().get_object(Bucket=store.bucket, Key=key)["Body"].read() == body


@settings(max_examples=200, deadline=None)
@given(
    files=st.integers(1, 64),
    per_file=st.integers(1, 16),
    sizes=st.lists(st.integers(0, 64 * MiB), max_size=40),
)
def test_part_lanes_share_the_session_budget(files: int, per_file: int, sizes: list[int]) -> None:
    """The shared budget never takes a file below its configured lanes, never above R2's safe 3
    unless configured so, and the multipart files of a session never hold more parts in flight
    than the budget allows."""
    from ursa_daemon.transfer.upload import share_part_lanes

    limits = UploadLimits(part_size=PART, max_concurrent_files=files, max_concurrency_per_file=per_file)
    entries = [FileEntry(f"f/{i}.bin", size) for i, size in enumerate(sizes)]
    got = share_part_lanes(limits, entries).max_concurrency_per_file
    big = sum(1 for s in sizes if s > PART)
    assert per_file <= got <= max(per_file, 3)
    assert min(big, files) * got <= max(files * per_file, min(big, files) * per_file)
    if big == 1 and per_file < 3 and files > 1:
        assert got == min(3, files * per_file)
