"""Shared pieces of the ingest benchmarks (run by hand; pytest does not collect tests/bench).

* :class:`MotoProcess`: moto's S3 server in its own process (``python -m moto.server``
  semantics, request logging off), so its CPU is not in the measured process's GIL
  or RSS; ``reset()`` drops every bucket and object between trials.
* :func:`load_seaweed`: ``tests/seaweed.py`` (a real SeaweedFS S3 server) by path.
* :class:`ProxyProcess`: a byte-counting TCP proxy, also in its own process, that
  publishes (bytes forwarded, timestamp of the last forwarded byte) through a small
  shared-memory file; timestamps are ``time.monotonic()`` (CLOCK_MONOTONIC is
  system-wide on Linux, so they compare with the parent's).
* :func:`ensure_session`: a rig session of N random files, created once under
  /tmp and cached.
* :class:`RssSampler`: peak RSS of a pid, sampled every 20 ms in a thread.
* :func:`print_table`, :func:`emit_json`: the readable table and the one JSON line.

Every script takes ``--part-mib`` / ``--per-file`` / ``--files-at-once`` to run
ours with another UploadConfig, and ``conftest`` is loaded by path (the repo is
not put on ``sys.path``), so ``PYTHONPATH=/tmp/scratch-copy .venv/bin/python
tests/bench/X.py`` measures a modified copy of ``ursa_daemon`` against the
same peers without touching the tree.

``python tests/bench/_common.py proxy ...`` is the proxy's entry point (internal).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import mmap
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import types
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def load_seaweed() -> Any:
    """tests/seaweed.py by path (its :class:`SeaweedServer`), as conftest is loaded."""
    if "_ursa_bench_seaweed" in sys.modules:
        return sys.modules["_ursa_bench_seaweed"]
    spec = importlib.util.spec_from_file_location("_ursa_bench_seaweed", REPO / "tests" / "seaweed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _load_conftest() -> Any:
    """tests/conftest.py by path: its moto credentials and ``s3_config_dict``.

    Loaded by file, not by putting the repo on ``sys.path``, so ``ursa_daemon``
    still comes from wherever the interpreter finds it (the editable install, or
    a scratch copy put first on ``PYTHONPATH`` to measure a change).
    """
    spec = importlib.util.spec_from_file_location("_ursa_bench_conftest", REPO / "tests" / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    # conftest needs nothing of pytest at import but ``pytest.fixture``; a stand-in
    # keeps pytest (16 MiB of RSS) out of the processes the memory benchmark measures.
    stub = None
    if "pytest" not in sys.modules:
        stub = types.ModuleType("pytest")

        def fixture(*args: Any, **kwargs: Any) -> Any:
            return args[0] if args and callable(args[0]) and not kwargs else (lambda f: f)

        stub.fixture = fixture  # type: ignore[attr-defined]
        sys.modules["pytest"] = stub
    try:
        spec.loader.exec_module(module)
    finally:
        if stub is not None and sys.modules.get("pytest") is stub:
            del sys.modules["pytest"]
    return module


_conftest = _load_conftest()
MOTO_KEY_ID: str = _conftest.MOTO_KEY_ID
MOTO_SECRET: str = _conftest.MOTO_SECRET
s3_config_dict = _conftest.s3_config_dict

MiB = 1 << 20
GiB = 1 << 30
DATA_ROOT = Path(os.environ.get("URSA_BENCH_DATA", "/tmp/ursa-bench-data"))
START = "2026-05-20T19:56:28.120+00:00"


# -- small helpers --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


def percentile(xs: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100): with 20 samples p99 is the maximum."""
    s = sorted(xs)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, -(-q * len(s) // 100) - 1))
    return s[int(k)]


def mb_per_s(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str | None = None) -> None:
    rows = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    if title:
        print(f"\n{title}")
    line = "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths, strict=True)))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))
    sys.stdout.flush()


def emit_json(figures: dict[str, Any]) -> None:
    """The last line of every benchmark: all its figures as one JSON document."""
    print(json.dumps(figures, sort_keys=True, default=str), flush=True)


def check_disk(path: Path, need_bytes: int) -> None:
    path.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path).free
    if free < need_bytes:
        raise SystemExit(f"{path}: {free / GiB:.1f} GiB free, this benchmark needs {need_bytes / GiB:.1f} GiB")


def quiet_logs() -> None:
    """The library's log lines at WARNING and above, on stderr (the table owns stdout)."""
    from ursa_daemon.log import setup_logging

    setup_logging(json=True, level="WARNING", stream=sys.stderr)
    # boto3 with more threads than its pool: a harmless warning per request
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


def add_upload_args(parser: argparse.ArgumentParser) -> None:
    """``--part-mib`` / ``--per-file`` / ``--files-at-once``: override ours' UploadConfig (default: none)."""
    g = parser.add_argument_group("our upload config (default: the library's UploadConfig defaults)")
    g.add_argument("--part-mib", type=int, default=None, help="upload.part_size_bytes in MiB")
    g.add_argument("--per-file", type=int, default=None, help="upload.max_concurrency_per_file")
    g.add_argument("--files-at-once", type=int, default=None, help="upload.max_concurrent_files")


def upload_overrides(args: argparse.Namespace) -> dict[str, int]:
    out: dict[str, int] = {}
    if getattr(args, "part_mib", None):
        out["part_size_bytes"] = args.part_mib * MiB
    if getattr(args, "per_file", None):
        out["max_concurrency_per_file"] = args.per_file
    if getattr(args, "files_at_once", None):
        out["max_concurrent_files"] = args.files_at_once
    return out


def upload_config_used(overrides: dict[str, int]) -> dict[str, Any]:
    """The UploadConfig ours runs with (defaults plus ``overrides``), for the JSON line."""
    from ursa_daemon.config import UploadConfig

    return UploadConfig.model_validate(overrides).model_dump()


# -- credentials and configs ----------------------------------------------------------


def set_credentials_env() -> None:
    """Every role's keys in the environment, as conftest's ``s3_env`` does (plus AWS_* for peers)."""
    for role in ("ASSETS_RO", "ASSETS_RW", "RAW_RW"):
        os.environ[f"URSA_{role}_KEY_ID"] = MOTO_KEY_ID
        os.environ[f"URSA_{role}_SECRET"] = MOTO_SECRET
    os.environ["AWS_ACCESS_KEY_ID"] = MOTO_KEY_ID
    os.environ["AWS_SECRET_ACCESS_KEY"] = MOTO_SECRET
    os.environ["AWS_DEFAULT_REGION"] = "us-east-1"


def s3_data(endpoint: str, raw: str, assets: str, root: Path, upload: dict[str, int] | None = None) -> Any:
    """A writable DataInterface on an ``s3`` profile at ``endpoint`` (``upload``: UploadConfig overrides)."""
    from ursa_daemon.api import DataInterface
    from ursa_daemon.config import config_from_dict

    set_credentials_env()
    root.mkdir(parents=True, exist_ok=True)
    raw_cfg = s3_config_dict(endpoint, raw, assets, root)
    if upload:
        raw_cfg["upload"] = dict(upload)
    data = DataInterface(config=config_from_dict(raw_cfg, base_dir=root))
    data.enable_writes(roles=("assets_rw", "raw_rw"))
    return data


def boto3_client(endpoint: str) -> Any:
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=MOTO_KEY_ID,
        aws_secret_access_key=MOTO_SECRET,
    )


# -- moto's server in its own process -------------------------------------------------

_MOTO_LAUNCH = (
    "import logging, sys; logging.getLogger('werkzeug').setLevel(logging.ERROR); "
    "from moto.server import main; main(sys.argv[1:])"
)


class MotoProcess:
    """``moto.server`` on 127.0.0.1 in a child process (request log off: it would cost moto CPU)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self._n = 0

    def start(self) -> MotoProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _MOTO_LAUNCH, "-H", "127.0.0.1", "-p", str(self.port)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, proc=self.proc)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def cpu_seconds(self) -> float:
        import psutil

        t = psutil.Process(self.pid).cpu_times()
        return float(t.user + t.system)

    def rss(self) -> int:
        import psutil

        return int(psutil.Process(self.pid).memory_info().rss)

    def reset(self) -> None:
        """Drop every bucket and object (moto disposes their temporary files)."""
        req = urllib.request.Request(self.endpoint + "/moto-api/reset", method="POST", data=b"")
        with urllib.request.urlopen(req, timeout=120) as resp:
            resp.read()

    def fresh_buckets(self, tag: str = "b") -> tuple[str, str]:
        """A new (raw, assets) bucket pair."""
        self._n += 1
        raw, assets = f"raw-{tag}-{self._n}", f"assets-{tag}-{self._n}"
        client = boto3_client(self.endpoint)
        client.create_bucket(Bucket=raw)
        client.create_bucket(Bucket=assets)
        return raw, assets

    def object_sizes(self, bucket: str) -> dict[str, int]:
        client = boto3_client(self.endpoint)
        out: dict[str, int] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = int(obj["Size"])
        return out

    def open_multipart_uploads(self, bucket: str) -> int:
        return len(boto3_client(self.endpoint).list_multipart_uploads(Bucket=bucket).get("Uploads", []))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> MotoProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- a byte-counting TCP proxy in its own process -------------------------------------

#: shared stats layout: c2s bytes forwarded, s2c bytes, connections, c2s bytes received (q);
#: last c2s byte forwarded, last s2c byte, last c2s byte received (d)
_STATS = struct.Struct("<qqqqddd")


class ProxyStats:
    """``c2s_*``: client to server. "received" = read from the client, "forwarded" = written to the server."""

    __slots__ = ("c2s_bytes", "c2s_recv_bytes", "connections", "last_c2s", "last_c2s_recv", "last_s2c", "s2c_bytes")

    def __init__(self, raw: bytes) -> None:
        (
            self.c2s_bytes,
            self.s2c_bytes,
            self.connections,
            self.c2s_recv_bytes,
            self.last_c2s,
            self.last_s2c,
            self.last_c2s_recv,
        ) = _STATS.unpack(raw)


class ProxyProcess:
    """127.0.0.1:``port`` → 127.0.0.1:``target_port``, counting every forwarded byte.

    ``c2s_bytes`` and ``last_c2s`` are the bytes written to the server and the
    ``time.monotonic()`` just after the last ``sendall`` to it returned;
    ``c2s_recv_bytes`` and ``last_c2s_recv`` the same for bytes read from the
    client (what the client had put on the wire, whether or not the server had
    read it yet). Buffers are the default socket buffers, autotuned by Linux.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._path = Path(f"/dev/shm/ursa-bench-proxy-{os.getpid()}-{self.port}")
        self.proc: subprocess.Popen[bytes] | None = None
        self._mm: mmap.mmap | None = None

    def start(self) -> ProxyProcess:
        self._path.write_bytes(b"\0" * _STATS.size)
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "proxy", str(self.port), str(self.target_port), str(self._path)],
            stdin=subprocess.DEVNULL,
        )
        wait_port(self.port, proc=self.proc)
        with open(self._path, "r+b") as f:
            self._mm = mmap.mmap(f.fileno(), _STATS.size)
        return self

    def stats(self) -> ProxyStats:
        assert self._mm is not None
        return ProxyStats(self._mm[: _STATS.size])

    def wait_quiet(self, quiet_s: float = 1.0, timeout: float = 120.0) -> ProxyStats:
        """Block until no byte went to the server for ``quiet_s``; the stats then."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.stats()
            now = time.monotonic()
            if now - max(st.last_c2s, st.last_s2c) >= quiet_s:
                return st
            if now > deadline:
                raise TimeoutError(f"bytes still flowing through the proxy after {timeout} s")
            time.sleep(0.02)

    def stop(self) -> None:
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None
        self._path.unlink(missing_ok=True)

    def __enter__(self) -> ProxyProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _proxy_main(port: int, target_port: int, stats_path: str) -> None:
    import signal

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    f = open(stats_path, "r+b")  # noqa: SIM115 - lives as long as the process
    mm = mmap.mmap(f.fileno(), _STATS.size)
    lock = threading.Lock()
    counters: list[Any] = [0, 0, 0, 0, 0.0, 0.0, 0.0]

    def publish() -> None:
        mm[: _STATS.size] = _STATS.pack(*counters)

    def pump(src: socket.socket, dst: socket.socket, to_server: bool) -> None:
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        try:
            while True:
                n = src.recv_into(buf)
                if not n:
                    break
                if to_server:
                    received = time.monotonic()
                    with lock:
                        counters[3] += n
                        counters[6] = received
                        publish()
                dst.sendall(view[:n])
                now = time.monotonic()
                with lock:
                    if to_server:
                        counters[0] += n
                        counters[4] = now
                    else:
                        counters[1] += n
                        counters[5] = now
                    publish()
        except OSError:
            pass
        finally:
            for s, how in ((dst, socket.SHUT_WR), (src, socket.SHUT_RD)):
                with contextlib.suppress(OSError):
                    s.shutdown(how)

    def handle(client: socket.socket) -> None:
        try:
            server = socket.create_connection(("127.0.0.1", target_port))
        except OSError:
            client.close()
            return
        for s in (client, server):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with lock:
            counters[2] += 1
            publish()
        up = threading.Thread(target=pump, args=(client, server, True), daemon=True)
        down = threading.Thread(target=pump, args=(server, client, False), daemon=True)
        up.start()
        down.start()
        up.join()
        down.join()
        client.close()
        server.close()

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(128)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


# -- sessions on disk -----------------------------------------------------------------


def ensure_session(n_files: int, size_bytes: int, *, root: Path = DATA_ROOT) -> Path:
    """A session of ``n_files`` random files of ``size_bytes`` each, made once and cached.

    Layout: ``<root>/<n>x<size>/rec_.../camera_<i>/seg_000001.bin`` plus manifest.json
    and participant.txt; the ``.complete`` marker beside the session says it is whole.
    """
    base = root / f"{n_files}x{size_bytes}"
    rec = base / f"rec_20260520_195628_{n_files:04x}{size_bytes:012x}"
    marker = base / ".complete"
    if marker.exists() and json.loads(marker.read_text()) == {"files": n_files, "size": size_bytes}:
        return rec
    shutil.rmtree(base, ignore_errors=True)
    check_disk(root, n_files * size_bytes + GiB)
    print(f"creating {n_files} x {size_bytes / MiB:.0f} MiB of random bytes in {rec} ...", file=sys.stderr, flush=True)
    block = 16 * MiB
    for i in range(n_files):
        path = rec / f"camera_{i}" / "seg_000001.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            left = size_bytes
            while left:
                n = min(block, left)
                f.write(os.urandom(n))
                left -= n
    (rec / "participant.txt").write_text("Bench Person\n")
    (rec / "manifest.json").write_text(
        json.dumps(
            {
                "recording_id": rec.name,
                "start_time": START,
                "duration_s": 30,
                "device_info": {"rig": "bench"},
                "workers": {},
            }
        )
    )
    marker.write_text(json.dumps({"files": n_files, "size": size_bytes}))
    return rec


def session_files(rec: Path) -> list[Path]:
    """Every file of the session (data files, manifest.json, participant.txt), sorted."""
    return sorted(p for p in rec.rglob("*") if p.is_file())


def data_bytes(rec: Path) -> int:
    return sum(p.stat().st_size for p in rec.rglob("*") if p.is_file() and p.parent != rec)


def warm(paths: Iterable[Path]) -> float:
    """Read every file once (into the page cache); seconds taken."""
    t = time.perf_counter()
    buf = bytearray(8 * MiB)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass
    return time.perf_counter() - t


def known_hashes(rec: Path) -> dict[str, str]:
    """rel_path → sha256 of every data file, via the library's own hashing."""
    from ursa_daemon.session import hash_files, walk_session

    return {e.rel_path: e.sha256 for e in hash_files(rec, walk_session(rec)) if e.sha256}


# -- memory ---------------------------------------------------------------------------


class RssSampler:
    """Peak RSS of ``pid`` (default: this process), sampled every ``interval`` s in a thread."""

    def __init__(self, pid: int | None = None, interval: float = 0.02) -> None:
        import psutil

        self._proc = psutil.Process(pid or os.getpid())
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rss = self._proc.memory_info().rss
            except Exception:  # the process ended
                return
            self.peak = max(self.peak, rss)
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# -- entry point for the helper processes ----------------------------------------------

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["proxy"])
    ap.add_argument("args", nargs="*")
    ns = ap.parse_args()
    _proxy_main(int(ns.args[0]), int(ns.args[1]), ns.args[2])
