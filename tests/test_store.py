"""The Store contract over both backends (a tmp dir, moto over HTTP), plus the S3 specifics."""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import time
import tracemalloc
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import MOTO_KEY_ID, MOTO_SECRET, S3_REGION
from obstore import exceptions as obx

from ursa_daemon.config import (
    Credentials,
    CredentialSource,
    LocalProfile,
    Role,
    S3Profile,
)
from ursa_daemon.errors import (
    ObjectExists,
    ObjectNotFound,
    StoreError,
    StorePermissionError,
    TransientStoreError,
)
from ursa_daemon.store import (
    LocalStore,
    S3Store,
    Store,
    StreamReader,
    get_store,
    lance_storage_options,
    parse_storage_uri,
    storage_uri,
)
from ursa_daemon.store._errors import redact, translate_error

MiB = 1 << 20


class Cancelled(Exception):
    """An uploader's own cancellation signal."""


@pytest.fixture
def profile(contract_config):  # type: ignore[no-untyped-def]
    """The contract holds on the local store, moto behind the R2 dialect, and SeaweedFS."""
    return contract_config.active_profile


@pytest.fixture
def store(profile) -> Store:  # type: ignore[no-untyped-def]
    return get_store(profile, "raw_rw")


def is_s3(store: Store) -> bool:
    return isinstance(store, S3Store)


def server_client(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """An admin boto3 client of the S3 server the test's store is on."""
    if request.node.callspec.params.get("contract_config") == "seaweed":
        return request.getfixturevalue("seaweed_server").client()
    return request.getfixturevalue("moto_server").client()


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def read_all(store: Store, key: str, step: int = MiB) -> bytes:
    out = []
    with store.open(key, chunk_size=step) as reader:
        while block := reader.read(step):
            out.append(block)
    return b"".join(out)


# --- the contract, both backends ---------------------------------------------------


def test_is_a_store_and_uri(store: Store, profile) -> None:  # type: ignore[no-untyped-def]
    assert isinstance(store, Store)
    assert store.bucket_kind == "raw"
    assert store.uri("recordings/r1/a.bin") == storage_uri(
        profile, "raw", "recordings/r1/a.bin"
    )
    assert parse_storage_uri(store.uri("recordings/r1/a.bin"), profile) == (
        "raw",
        "recordings/r1/a.bin",
    )


def test_put_get_head_delete(store: Store) -> None:
    digest = hashlib.sha256(b"hello").hexdigest()
    store.put("k/hello.txt", b"hello", sha256=digest, content_type="text/plain")
    assert store.get("k/hello.txt") == b"hello"
    meta = store.head("k/hello.txt")
    assert (meta.key, meta.size) == ("k/hello.txt", 5)
    assert meta.etag and meta.last_modified is not None
    assert meta.sha256 == (digest if is_s3(store) else None)
    store.put("k/hello.txt", bytearray(b"again"))  # overwrite; bytearray body
    assert store.get("k/hello.txt") == b"again"
    store.delete("k/hello.txt")
    with pytest.raises(ObjectNotFound):
        store.head("k/hello.txt")
    store.delete("k/hello.txt")  # missing: not an error


def test_list_by_prefix(store: Store) -> None:
    for key in ("a/b/1", "a/b/2", "a/bc", "c"):
        store.put(key, key.encode())
    assert {m.key for m in store.list("a/b/")} == {"a/b/1", "a/b/2"}
    assert {m.key for m in store.list("a/b")} == {"a/b/1", "a/b/2", "a/bc"}
    listed = {m.key: m for m in store.list()}
    assert set(listed) == {"a/b/1", "a/b/2", "a/bc", "c"}
    assert listed["a/bc"].size == 4 and listed["a/bc"].etag
    assert list(store.list("nothing/")) == []


def test_open_streams_in_bounded_reads(store: Store) -> None:
    data = os.urandom(20 * MiB)
    expected = hashlib.sha256(data).digest()
    store.put("big/20m", data, part_size=8 * MiB)
    del data  # keep only the digest: nothing in this process holds the whole object
    tracemalloc.start()  # moto runs in this process too, so the peak is checked on local only
    try:
        digest = hashlib.sha256()
        total = 0
        with store.open("big/20m", chunk_size=MiB) as reader:
            while block := reader.read(MiB):
                assert len(block) <= MiB
                assert isinstance(reader, StreamReader)
                assert len(reader._buf) <= 2 * MiB  # at most one network chunk is held
                digest.update(block)
                total += len(block)
            assert reader.read(10) == b""
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == 20 * MiB
    assert digest.digest() == expected
    if not is_s3(store):
        assert peak < 8 * MiB, f"open() held {peak} bytes of Python memory"


def test_open_read_sizes(store: Store) -> None:
    store.put("r/x", bytes(range(256)) * 10)
    with store.open("r/x", chunk_size=100) as reader:
        assert reader.read(3) == bytes([0, 1, 2])
        assert len(reader.read(1000)) == 1000
        rest = reader.read()
    assert len(rest) == 2560 - 1003


def test_multipart_streamed_body(store: Store, request: pytest.FixtureRequest) -> None:
    data = os.urandom(12 * MiB + 12345)
    digest = hashlib.sha256(data).hexdigest()

    def body() -> Iterator[bytes]:  # odd chunk sizes: parts must still be exact
        yield from chunks(data, 999_983)

    store.put("mp/obj", body(), sha256=digest, part_size=5 * MiB, max_concurrency=2)
    assert hashlib.sha256(read_all(store, "mp/obj")).hexdigest() == digest
    meta = store.head("mp/obj")
    assert meta.size == len(data)
    if is_s3(store):
        assert meta.sha256 == digest
        assert meta.etag is not None and meta.etag.strip('"').endswith("-3")  # 3 parts
        head = server_client(request).head_object(Bucket=store.bucket, Key="mp/obj")
        assert head["Metadata"] == {"sha256": digest}
        r2 = request.getfixturevalue("moto_server").r2
        if r2 is not None:  # R2's dialect: no sha256 on a part, equal parts
            assert not r2.refused


def test_small_stream_and_file_bodies(store: Store) -> None:
    store.put("s/gen", iter([b"ab", b"", b"cd"]), part_size=5 * MiB)
    assert store.get("s/gen") == b"abcd"
    store.put("s/empty", iter([]))
    assert store.get("s/empty") == b""
    store.put("s/file", io.BytesIO(b"x" * (3 * MiB)))
    assert store.get("s/file") == b"x" * (3 * MiB)
    store.put("s/bigfile", io.BytesIO(b"y" * (6 * MiB)), part_size=5 * MiB)
    assert store.head("s/bigfile").size == 6 * MiB
    if is_s3(store):
        assert "-" not in (store.head("s/gen").etag or "")  # one PUT, not multipart


def test_create_only(store: Store) -> None:
    store.put("m/manifest.json", b"first", create_only=True)
    with pytest.raises(ObjectExists) as info:
        store.put("m/manifest.json", b"second", create_only=True)
    assert isinstance(info.value, FileExistsError)
    assert info.value.key == "m/manifest.json"
    assert "m/manifest.json" in str(info.value)
    assert store.get("m/manifest.json") == b"first"
    store.put("m/streamed", iter([b"a", b"b"]), create_only=True)
    with pytest.raises(ObjectExists):
        store.put("m/streamed", iter([b"c"]), create_only=True)


def test_missing_object(store: Store) -> None:
    for call in (store.head, store.get, store.open):
        with pytest.raises(ObjectNotFound) as info:
            call("no/such/key")
        assert isinstance(info.value, FileNotFoundError)
        assert info.value.key == "no/such/key"
        assert "no/such/key" in str(info.value)
        assert isinstance(info.value.__cause__, (FileNotFoundError, obx.BaseError))


@pytest.mark.parametrize("where", ["iterator", "file"])
def test_body_exception_is_reraised_unchanged(
    store: Store, where: str, request: pytest.FixtureRequest
) -> None:
    def body() -> Iterator[bytes]:
        yield os.urandom(6 * MiB)  # past part_size: the multipart upload has started
        yield os.urandom(MiB)
        raise Cancelled("stop")

    class Failing(io.RawIOBase):
        def __init__(self) -> None:
            self.n = 0

        def readable(self) -> bool:
            return True

        def read(self, size: int = -1) -> bytes:
            self.n += 1
            if self.n > 7:
                raise Cancelled("stop")
            return b"z" * MiB

    source = body() if where == "iterator" else Failing()
    with pytest.raises(Cancelled):
        store.put("cancel/x", source, part_size=5 * MiB)
    with pytest.raises(ObjectNotFound):
        store.head("cancel/x")
    if is_s3(store):  # obstore aborted the multipart upload
        client = server_client(request)
        assert not client.list_multipart_uploads(Bucket=store.bucket).get("Uploads")


@pytest.mark.parametrize(
    "key", ["", "/abs", "a//b", "../x", "a/../b", "a/./b", "dir/", "a\nb"]
)
def test_bad_keys_rejected(store: Store, key: str) -> None:
    with pytest.raises(ValueError):
        store.put(key, b"x")
    with pytest.raises(ValueError):
        store.head(key)


# --- S3 specifics -------------------------------------------------------------------


def _moto_raw(moto_server, raw: str) -> S3Store:  # type: ignore[no-untyped-def]
    """An S3Store on ``raw`` at the moto server, with the raw_rw test credentials."""
    return S3Store(
        bucket=raw,
        bucket_kind="raw",
        endpoint=moto_server.endpoint,
        region=S3_REGION,
        allow_http=True,
        credentials=Credentials("raw_rw", MOTO_KEY_ID, MOTO_SECRET),
    )


def test_sha256_metadata_round_trip_boto3(
    moto_server, s3_buckets, s3_env, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    raw, _ = s3_buckets
    store = _moto_raw(moto_server, raw)
    digest = hashlib.sha256(b"payload").hexdigest()
    store.put("x/y.bin", b"payload", sha256=digest)
    head = moto_server.client().head_object(Bucket=raw, Key="x/y.bin")
    assert head["Metadata"] == {"sha256": digest}
    assert store.head("x/y.bin").sha256 == digest
    # metadata written by another client reads back the same way
    moto_server.client().put_object(
        Bucket=raw, Key="x/z", Body=b"z", Metadata={"sha256": "abc"}
    )
    assert store.head("x/z").sha256 == "abc"
    assert store.head("x/z").size == 1


class _CountingBody(io.BytesIO):
    """A request body that records how many bytes the HTTP layer asks for per read."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.asked: list[int] = []

    def read(self, size: int | None = -1, /) -> bytes:
        self.asked.append(-1 if size is None else size)
        return super().read(size)


def test_request_bodies_are_read_in_large_blocks(moto_server, s3_buckets, s3_env) -> None:  # type: ignore[no-untyped-def]
    # http.client reads a request body in its connection's blocksize; each read is a limiter
    # grant, a checksum update and a sendall: the data client asks for SEND_BLOCK at a time.
    from ursa_daemon.store.multipart import SEND_BLOCK

    raw, _ = s3_buckets
    store = _moto_raw(moto_server, raw)
    data = os.urandom(3 * SEND_BLOCK + 17)
    body = _CountingBody(data)
    store.put_stream("x/blocks.bin", body, size=len(data), sha256=hashlib.sha256(data).hexdigest())
    assert moto_server.client().get_object(Bucket=raw, Key="x/blocks.bin")["Body"].read() == data
    assert max(body.asked) == SEND_BLOCK and SEND_BLOCK > 128 << 10  # more than botocore's own default


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_closed_port_is_transient_and_fast() -> None:
    store = S3Store(
        bucket="raw-x",
        bucket_kind="raw",
        endpoint=f"http://127.0.0.1:{_closed_port()}",
        allow_http=True,
        credentials=Credentials("raw_rw", MOTO_KEY_ID, MOTO_SECRET),
        max_retries=1,
        init_backoff=0.01,
        max_backoff=0.05,
        connect_timeout=1.0,
    )
    started = time.monotonic()
    errors = []
    for call in (
        lambda: store.head("k"),
        lambda: store.get("k"),
        lambda: store.open("k"),
        lambda: list(store.list("p/")),
        lambda: store.put("k", b"x"),
        lambda: store.put("k", iter([b"x" * (6 * MiB)]), part_size=5 * MiB),
        lambda: store.delete("k"),
    ):
        with pytest.raises(TransientStoreError) as info:
            call()
        errors.append(info.value)
    assert time.monotonic() - started < 10
    for err in errors:
        _assert_no_secret(err)
        assert "connection refused" in str(err).lower()


def test_missing_bucket_is_a_store_error(moto_server, s3_env) -> None:  # type: ignore[no-untyped-def]
    store = S3Store(
        bucket="no-such-bucket",
        bucket_kind="raw",
        endpoint=moto_server.endpoint,
        allow_http=True,
        credentials=Credentials("raw_rw", MOTO_KEY_ID, MOTO_SECRET),
    )
    for call in (
        lambda: store.get("k"),
        lambda: store.put("k", b"x"),
        lambda: list(store.list()),
    ):
        with pytest.raises(StoreError) as info:
            call()
        assert not isinstance(info.value, (ObjectNotFound, TransientStoreError))
        assert "bucket does not exist" in str(info.value)
        _assert_no_secret(info.value)


def _moto_auth(endpoint: str, count: str) -> None:
    req = urllib.request.Request(
        f"{endpoint}/moto-api/reset-auth",
        data=count.encode(),
        method="POST",
        headers={
            "Content-Type": "text/plain"
        },  # a form content type would hide the body from moto
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()


def test_wrong_secret_is_permission_error(moto_server, s3_buckets) -> None:  # type: ignore[no-untyped-def]
    """moto checks SigV4 signatures once auth is on (POST /moto-api/reset-auth 0)."""
    import boto3

    raw, _ = s3_buckets
    iam = boto3.client(
        "iam",
        endpoint_url=moto_server.endpoint,
        region_name="us-east-1",
        aws_access_key_id=MOTO_KEY_ID,
        aws_secret_access_key=MOTO_SECRET,
    )
    user = f"ursa-{raw}"
    iam.create_user(UserName=user)
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}],
    }
    iam.put_user_policy(
        UserName=user, PolicyName="s3", PolicyDocument=json.dumps(policy)
    )
    key = iam.create_access_key(UserName=user)["AccessKey"]

    def make(secret: str) -> S3Store:
        return S3Store(
            bucket=raw,
            bucket_kind="raw",
            endpoint=moto_server.endpoint,
            region=S3_REGION,
            allow_http=True,
            credentials=Credentials("raw_rw", key["AccessKeyId"], secret),
            max_retries=0,
        )

    good, bad = make(key["SecretAccessKey"]), make(MOTO_SECRET)
    _moto_auth(moto_server.endpoint, "0")
    try:
        good.put("auth/ok", b"ok")
        assert good.get("auth/ok") == b"ok"
        for call in (
            lambda: bad.get("auth/ok"),
            lambda: bad.head("auth/ok"),
            lambda: bad.open("auth/ok"),
            lambda: bad.put("auth/new", b"x"),
            lambda: list(bad.list("auth/")),
        ):
            with pytest.raises(StorePermissionError) as info:
                call()
            assert isinstance(info.value, PermissionError)
            _assert_no_secret(info.value)
    finally:
        _moto_auth(moto_server.endpoint, "inf")
    assert MOTO_SECRET not in repr(bad) and MOTO_SECRET not in str(bad)
    assert MOTO_SECRET not in repr(bad._store) and MOTO_SECRET not in str(
        bad._store.config
    )


def _assert_no_secret(err: BaseException) -> None:
    seen: set[int] = set()
    node: BaseException | None = err
    while node is not None and id(node) not in seen:
        seen.add(id(node))
        for text in (str(node), repr(node)):
            assert MOTO_SECRET not in text
            assert "X-Amz-Signature" not in text
        node = node.__cause__ or node.__context__


def test_store_repr_hides_secret(moto_server, s3_buckets, s3_env, tmp_path) -> None:  # type: ignore[no-untyped-def]
    profile = S3Profile(
        kind="s3",
        endpoint=moto_server.endpoint,
        region=S3_REGION,
        raw_bucket=s3_buckets[0],
        assets_bucket=s3_buckets[1],
        allow_http=True,
        credentials={
            Role.RAW_RW: CredentialSource(
                access_key_id_env="URSA_RAW_RW_KEY_ID",
                secret_access_key_env="URSA_RAW_RW_SECRET",
            )
        },
    )
    store = get_store(profile, "raw_rw")
    assert isinstance(store, S3Store)
    for text in (repr(store), str(store), repr(vars(store)), str(store._store.config)):
        assert MOTO_SECRET not in text


def test_http_endpoint_needs_allow_http() -> None:
    with pytest.raises(ValueError, match="allow_http"):
        S3Store(
            bucket="b",
            bucket_kind="raw",
            endpoint="http://127.0.0.1:9",
            credentials=Credentials("raw_rw", MOTO_KEY_ID, MOTO_SECRET),
        )


# --- error translation --------------------------------------------------------------


SIGNED = (
    "Generic S3 error: Error performing GET https://acct.r2.cloudflarestorage.com/raw/k"
    "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIA%2F20250101&X-Amz-Signature=deadbeef "
    f"in 3ms - Server returned non-2xx status code: 503 Service Unavailable: secret={MOTO_SECRET}"
)


@pytest.mark.parametrize(
    ("exc", "cls"),
    [
        (obx.GenericError(SIGNED), TransientStoreError),
        (
            obx.GenericError(
                "Server returned non-2xx status code: 429 Too Many Requests"
            ),
            TransientStoreError,
        ),
        (
            obx.GenericError(
                "Server returned non-2xx status code: 400 Bad Request: <Code>X</Code>"
            ),
            StoreError,
        ),
        (obx.GenericError("list: status code: 403 Forbidden"), StorePermissionError),
        (obx.PermissionDeniedError("403"), StorePermissionError),
        (obx.UnauthenticatedError("401"), StorePermissionError),
        (obx.AlreadyExistsError("exists"), ObjectExists),
        (obx.NotFoundError("gone"), ObjectNotFound),
        (FileNotFoundError("gone"), ObjectNotFound),
        (TimeoutError("slow"), TransientStoreError),
        (ConnectionResetError("reset"), TransientStoreError),
        (
            obx.GenericError("HTTP error: error sending request, retry_timeout: 2s"),
            TransientStoreError,
        ),
        (obx.GenericError("bad config, retry_timeout: 180s"), StoreError),
    ],
)
def test_translate_error_classes(exc: BaseException, cls: type[StoreError]) -> None:
    err = translate_error(
        exc, op="get", where="s3://raw/k", key="k", secrets=[MOTO_SECRET]
    )
    assert type(err) is cls
    assert err.key == "k" and "s3://raw/k" in str(err)
    assert MOTO_SECRET not in str(err)
    assert "deadbeef" not in str(err) and "X-Amz-Credential" not in str(err)


def test_precondition_on_create_is_object_exists() -> None:
    err = translate_error(
        obx.PreconditionError("412"), op="put", where="w", key="k", create=True
    )
    assert isinstance(err, ObjectExists)


def test_redact() -> None:
    text = redact(
        f"GET http://h/b/k?uploadId=1&X-Amz-Signature=abc then Signature=xyz {MOTO_SECRET}",
        [MOTO_SECRET],
    )
    assert "abc" not in text and "xyz" not in text and MOTO_SECRET not in text
    assert "http://h/b/k" in text


# --- URIs and get_store ---------------------------------------------------------------


@pytest.fixture
def s3_profile() -> S3Profile:
    return S3Profile(
        kind="s3",
        endpoint="https://acct.r2.cloudflarestorage.com",
        raw_bucket="raw-b",
        assets_bucket="assets-b",
    )


@pytest.fixture
def local_profile(tmp_path: Path) -> LocalProfile:
    return LocalProfile(kind="local", root=tmp_path / "my store")


@pytest.mark.parametrize("kind", ["raw", "assets"])
@pytest.mark.parametrize(
    "key", ["recordings/r1/a b.bin", "recordings/r1/worker/", "ursa/ACTIVE.json", ""]
)
def test_uri_round_trip(s3_profile, local_profile, kind, key) -> None:  # type: ignore[no-untyped-def]
    for profile in (s3_profile, local_profile):
        uri = storage_uri(profile, kind, key)
        assert parse_storage_uri(uri, profile) == (kind, key)
    assert storage_uri(s3_profile, kind, key) == f"s3://{kind}-b/{key}"
    assert storage_uri(local_profile, kind, key).startswith("file:///")


def test_parse_storage_uri_rejections(s3_profile, local_profile) -> None:  # type: ignore[no-untyped-def]
    root = os.path.abspath(local_profile.root)
    bad_s3 = [
        "s3://other-bucket/k",
        "s3://raw-b/a/../b",
        "s3://raw-b/../assets-b/k",
        "s3://raw-b//k",
        f"file://{root}/raw/k",
        "https://raw-b/k",
    ]
    bad_local = [
        "s3://raw-b/k",
        f"file://{root}/raw/../assets/k",
        f"file://{root}/other/k",
        "file:///elsewhere/raw/k",
        f"file://{root}/raw/a/%2E%2E/b",
    ]
    for uri, profile in [(u, s3_profile) for u in bad_s3] + [
        (u, local_profile) for u in bad_local
    ]:
        with pytest.raises(ValueError) as info:
            parse_storage_uri(uri, profile)
        assert uri in str(info.value)


def test_get_store_roles(local_profile: LocalProfile) -> None:
    raw, assets = (
        get_store(local_profile, "raw_rw"),
        get_store(local_profile, "assets_ro"),
    )
    assert isinstance(raw, LocalStore) and isinstance(assets, LocalStore)
    assert (raw.bucket_kind, assets.bucket_kind) == ("raw", "assets")
    assert raw.bucket.endswith("/raw") and assets.bucket.endswith("/assets")
    raw.put("recordings/r/a", b"1")
    assert (
        Path(local_profile.root) / "raw" / "recordings" / "r" / "a"
    ).read_bytes() == b"1"
    assert parse_storage_uri(raw.uri("recordings/r/a"), local_profile) == (
        "raw",
        "recordings/r/a",
    )


def test_lance_storage_options(moto_server, s3_buckets, s3_env) -> None:  # type: ignore[no-untyped-def]
    import lancedb
    import pyarrow as pa

    profile = S3Profile(
        kind="s3",
        endpoint=moto_server.endpoint,
        region=S3_REGION,
        raw_bucket=s3_buckets[0],
        assets_bucket=s3_buckets[1],
        allow_http=True,
    )
    creds = Credentials("assets_rw", MOTO_KEY_ID, MOTO_SECRET)
    options = lance_storage_options(profile, creds)
    assert options["aws_endpoint"] == moto_server.endpoint
    assert options["allow_http"] == "true" and options["aws_conditional_put"] == "etag"
    assert "aws_session_token" not in options
    db = lancedb.connect(
        f"s3://{s3_buckets[1]}/ursa/catalog/test", storage_options=options
    )
    db.create_table("t", data=pa.table({"a": [1, 2, 3]}))
    assert db.open_table("t").count_rows() == 3
    keys = [
        m.key
        for m in S3Store.from_profile(profile, "assets", creds).list("ursa/catalog/")
    ]
    assert any(k.startswith("ursa/catalog/test/t.lance/_versions/") for k in keys)


def test_seaweed_fixture_signs_and_scopes_identities(seaweed_server, seaweed_buckets) -> None:  # type: ignore[no-untyped-def]
    """The SeaweedFS fixture checks signatures; its reader only reads the assets bucket."""
    from botocore.exceptions import ClientError
    from seaweed import ADMIN, READER, Identity

    raw, assets = seaweed_buckets
    admin = seaweed_server.client()
    admin.put_object(Bucket=assets, Key="a/x", Body=b"asset")
    admin.put_object(Bucket=raw, Key="r/x", Body=b"raw")
    reader = seaweed_server.client(READER)
    assert reader.get_object(Bucket=assets, Key="a/x")["Body"].read() == b"asset"
    assert [o["Key"] for o in reader.list_objects_v2(Bucket=assets)["Contents"]] == ["a/x"]
    for call in (
        lambda: reader.put_object(Bucket=assets, Key="a/y", Body=b"no"),
        lambda: reader.delete_object(Bucket=assets, Key="a/x"),
        lambda: reader.get_object(Bucket=raw, Key="r/x"),
    ):
        with pytest.raises(ClientError) as info:
            call()
        assert info.value.response["Error"]["Code"] == "AccessDenied"
    forged = seaweed_server.client(Identity("admin", ADMIN.key_id, "not-the-secret"))
    with pytest.raises(ClientError) as info:
        forged.get_object(Bucket=assets, Key="a/x")
    assert info.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert admin.get_object(Bucket=assets, Key="a/x")["Body"].read() == b"asset"
