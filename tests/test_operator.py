"""What the operator is told is true (issue 13), through the real ``ursa-daemon`` process.

A drain stopped by a signal exits 130/143 and accounts for every session it was
given; a session still being recorded is ``incomplete``, not an error; ``status``
shows the bytes of a capped upload moving (local profile and moto's S3) and the
truth while paused; a paused local copy continues where it stopped.
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import local_config_dict, s3_config_dict
from harness import age, write_session

RATE = 2 << 20  # the bandwidth cap of the slow uploads: 2 MiB/s


def write_config(root: Path, doc: dict[str, Any], **upload: Any) -> Path:
    doc = {**doc, "watch": {"settle_seconds": 0}, "upload": {"max_concurrent_files": 1, **upload}}
    (root / "recordings").mkdir(parents=True, exist_ok=True)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ursa_daemon.cli", "--config", str(config), *args],
        capture_output=True, text=True, timeout=180,
    )


class Proc:
    """``ursa-daemon ... --json``: the document on stdout, JSON log lines on stderr, followed."""

    def __init__(self, config: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ursa_daemon.cli", "--config", str(config), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "URSA_LOG_LEVEL": "DEBUG"},
        )
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.log: list[dict[str, Any]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                ev = json.loads(line)
            except ValueError:
                ev = {"event": "_text", "text": line}
            if isinstance(ev, dict):
                self.log.append(ev)
                self.events.put(ev)
        self.events.put(None)

    def wait_for(self, event: str, rec_id: str | None = None, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            ev = self.events.get(timeout=max(0.1, deadline - time.monotonic()))
            assert ev is not None, f"process ended before {event}: {self.log[-20:]}"
            if ev.get("event") == event and (rec_id is None or ev.get("rec_id") == rec_id):
                return ev

    def finish(self) -> tuple[int, dict[str, Any]]:
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()  # stderr is the reader thread's
        self.proc.wait(timeout=180)
        self._reader.join(timeout=30)
        return self.proc.returncode, json.loads(out)


def sessions(root: Path, n: int, size: int, sizes: dict[int, int] | None = None) -> list[Path]:
    """``n`` sessions of a 100-byte file and one of ``size`` (``sizes``: by index, another size)."""
    sizes = sizes or {}
    return [
        write_session(root, f"rec_20260301_00000{i}_abcd",
                      {"eeg/0.bin": b"x" * 100, "eeg/a.bin": os.urandom(sizes.get(i - 1, size))})
        for i in range(1, n + 1)
    ]


def lists(doc: dict[str, Any]) -> dict[str, str]:
    """rec_id → the one list of the drain document it is in (fails on a rec_id in two)."""
    where: dict[str, str] = {}
    for name in ("registered", "already_registered", "failed", "rejected", "incomplete", "interrupted",
                 "not_started", "paused", "waiting"):
        for item in doc[name]:
            rec_id = item if isinstance(item, str) else item["rec_id"]
            assert rec_id not in where, f"{rec_id} in {where.get(rec_id)} and {name}"
            where[rec_id] = name
    return where


def status(config: Path) -> dict[str, dict[str, Any]]:
    proc = cli(config, "status", "--json")
    assert proc.returncode == 0, proc.stderr
    return {s["rec_id"]: s for s in json.loads(proc.stdout)["sessions"]}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signalled_drain_exits_128_plus_signal_and_lists_every_session(tmp_path: Path, sig: signal.Signals) -> None:
    config = write_config(tmp_path, local_config_dict(tmp_path), bandwidth_bytes_per_s=RATE)
    root = tmp_path / "recordings"
    recording = root / "rec_20260301_000000_0000"  # no manifest: the rig still records it
    (recording / "eeg").mkdir(parents=True)
    (recording / "eeg" / "seg.bin").write_bytes(b"1" * 10)
    age(recording)
    recs = sessions(root, 3, 1 << 20, {1: 6 << 20})  # ~3 s at the cap: the signal lands mid-file
    drain = Proc(config, "drain", "--json")
    drain.wait_for("upload.file_done", recs[1].name)  # the small file: the large one goes next
    while drain.proc.poll() is None and status(config)[recs[1].name]["bytes_done"] <= 100:  # ... is mid-way
        pass
    drain.proc.send_signal(sig)
    rc, doc = drain.finish()
    assert rc == 128 + sig, doc
    assert doc["stopped_by"] == sig.name
    where = lists(doc)
    assert set(where) == {recording.name, *(r.name for r in recs)}  # every session, exactly once
    assert where[recording.name] == "incomplete"
    assert "reconstruct-manifest" in doc["incomplete"][0]["hint"]
    assert where[recs[0].name] == "registered"
    assert where[recs[1].name] == "interrupted"
    assert where[recs[2].name] == "not_started"
    st = status(config)
    assert st[recording.name]["state"] == "discovered"  # never rejected
    moved = st[recs[1].name]
    assert moved["state"] == "paused"
    assert moved["recording_hash"] is not None and moved["files_total"] == 2
    # the truth while paused: what the local copy kept (the small file and part of the large one)
    kept = sum(p.stat().st_size for p in (tmp_path / "store" / "raw" / ".ursa-partial").rglob("*-*"))
    assert 0 < kept < 6 << 20
    assert moved["bytes_done"] == 100 + kept and moved["bytes_total"] == (6 << 20) + 100
    if sig == signal.SIGTERM:
        return

    # the next drain continues the file where the copy stopped, and the rest
    again = Proc(config, "drain", "--json")
    rc, doc = again.finish()
    assert rc == 0, doc
    assert lists(doc) == {recording.name: "incomplete", recs[0].name: "already_registered",
                          recs[1].name: "registered", recs[2].name: "registered"}
    resumed = [e for e in again.log if e["event"] == "upload.local_resumed"]
    assert [e["bytes_kept"] for e in resumed] == [kept]
    for rec in recs:
        assert (tmp_path / "store" / "raw" / "recordings" / rec.name / "eeg" / "a.bin").read_bytes() == \
            (rec / "eeg" / "a.bin").read_bytes()
    assert not list((tmp_path / "store" / "raw" / ".ursa-partial").rglob("*-*"))


def test_second_sigint_stops_at_once_and_still_accounts_for_every_session(tmp_path: Path) -> None:
    config = write_config(tmp_path, local_config_dict(tmp_path), bandwidth_bytes_per_s=RATE)
    recs = sessions(tmp_path / "recordings", 3, 3 << 20)
    drain = Proc(config, "drain", "--json")
    drain.wait_for("upload.file_done", recs[0].name)
    drain.proc.send_signal(signal.SIGINT)
    drain.wait_for("daemon.stopping")
    drain.proc.send_signal(signal.SIGINT)
    rc, doc = drain.finish()
    assert rc == 130
    assert set(lists(doc)) == {r.name for r in recs}
    assert lists(doc)[recs[2].name] == "not_started"


@pytest.fixture(params=["local", "s3"])
def slow_config(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    if request.param == "local":
        doc = local_config_dict(tmp_path)
    else:
        server = request.getfixturevalue("moto_server")
        request.getfixturevalue("s3_env")
        raw, assets = request.getfixturevalue("s3_buckets")
        doc = s3_config_dict(server.endpoint, raw, assets, tmp_path)
    return write_config(tmp_path, doc, bandwidth_bytes_per_s=RATE, part_size_bytes=5 << 20)


def test_status_shows_the_bytes_of_a_capped_upload_moving(slow_config: Path, tmp_path: Path) -> None:
    size = 8 << 20  # two parts on S3; ~4 s at the cap
    rec = write_session(tmp_path / "recordings", "rec_20260301_000001_abcd", {"eeg/a.bin": os.urandom(size)})
    drain = Proc(slow_config, "drain", "--json")
    seen: list[int] = []
    confirmed: list[int] = []
    hashes = set()
    while drain.proc.poll() is None:
        s = status(slow_config).get(rec.name)
        if s is not None and s["state"] == "uploading":
            assert s["bytes_total"] == size and s["files_total"] == 1
            assert 0 <= s["bytes_done"] <= s["bytes_done"] + s["bytes_sending"] <= size
            hashes.add(s["recording_hash"])
            confirmed.append(s["bytes_done"])
            moved = s["bytes_done"] + s["bytes_sending"]  # confirmed in the store, and on its way
            if not seen or moved != seen[-1]:
                seen.append(moved)
    rc, doc = drain.finish()
    assert rc == 0 and doc["registered"] == [rec.name], doc
    moving = [b for b in seen if 0 < b < size]
    assert len(moving) >= 2 and moving == sorted(moving), seen  # the bytes moved, forwards
    assert confirmed == sorted(confirmed), confirmed  # what the store holds never goes back
    final = status(slow_config)[rec.name]
    assert final["state"] == "registered" and final["bytes_done"] == size and final["files_done"] == 1
    assert hashes == {final["recording_hash"]}


def run_in_pty(config: Path, *args: str, columns: int = 80) -> tuple[int, str]:
    """``ursa-daemon`` with a pseudo-terminal as stdin, stdout and stderr: (exit code, what it drew)."""
    import pty
    import re

    pid, fd = pty.fork()
    if pid == 0:  # the child: the real CLI on the terminal
        os.environ.update({"COLUMNS": str(columns), "LINES": "40", "TERM": "xterm-256color"})
        os.execv(sys.executable, [sys.executable, "-m", "ursa_daemon.cli", "--config", str(config), *args])
    import select

    out = bytearray()
    deadline = time.monotonic() + 180
    while True:
        if time.monotonic() > deadline:  # a hung child must not hang the suite
            os.kill(pid, signal.SIGKILL)
        if not select.select([fd], [], [], 1.0)[0]:
            continue
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    _, st = os.waitpid(pid, 0)
    os.close(fd)
    text = out.decode("utf-8", "replace")
    text = re.sub(r"\x1b\[[0-9;]*m|\x1b\][^\x07]*\x07", "", text)  # colours: gone
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "\n", text)  # cursor moves, erasing: a new line
    return os.waitstatus_to_exitcode(st), text


def test_drain_on_a_terminal_bars_below_the_log_lines_and_human_units(tmp_path: Path) -> None:
    config = write_config(tmp_path, local_config_dict(tmp_path), bandwidth_bytes_per_s=RATE)
    recs = sessions(tmp_path / "recordings", 2, 3 << 20)
    rc, screen = run_in_pty(config, "drain")
    assert rc == 0, screen
    lines = [line for part in screen.split("\n") for line in part.split("\r") if line.strip()]
    bars = [line for line in lines if " sessions" in line and "/2 sessions" in line]
    assert bars, screen  # the progress bars were drawn
    assert any("MiB" in line and rec.name in line for line in lines for rec in recs), screen  # bytes in MiB
    logs = [line for line in lines if "session.queued" in line or "upload.file_done" in line]
    assert len(logs) >= 4, screen
    for line in logs:  # a log line is never torn by a bar: it is whole, alone on its line
        assert "sessions" not in line and "━" not in line, line
    summary = [line for line in lines if line.startswith("drain: ")]
    assert summary and "2 registered" in summary[-1] and "6 MiB uploaded in " in summary[-1], summary
    assert all(len(line) <= 80 for line in lines if "━" in line), screen  # bars fit the terminal

    # without a terminal: no bars, the same summary
    again = cli(config, "drain")
    assert again.returncode == 0
    assert "━" not in again.stderr and "sessions" not in again.stderr.replace("drain:", "")


def test_status_table_fits_80_columns_and_never_cuts_a_rec_id_or_an_error(tmp_path: Path) -> None:
    config = write_config(tmp_path, local_config_dict(tmp_path))
    long_id = "rec_20260301_000009_" + "abcdef0123456789" * 2  # the longest rec_id there is
    bad = write_session(tmp_path / "recordings", long_id, {"eeg/a.bin": b"1"})
    (bad / "manifest.json").write_text("{not json")
    age(bad)
    assert cli(config, "drain").returncode == 1
    rc, screen = run_in_pty(config, "status")
    assert rc == 0
    lines = screen.replace("\r", "").split("\n")
    assert all(len(line) <= 80 for line in lines), screen
    assert any(long_id in line for line in lines), screen  # whole, on one line
    flat = " ".join(line.strip() for line in lines)
    error = status(config)[long_id]["last_error"]
    assert error.split()[-1] in flat and "reconstruct-manifest" in flat  # the advice, to its end


DENIED = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
          b"<Message>Access Denied</Message></Error>")


class ReadOnlyProxy:
    """A reverse proxy on 127.0.0.1 that answers 403 AccessDenied to writes under ``bucket``:
    the store as a read-only key sees it (fault injection in front of moto)."""

    def __init__(self, host: str, port: int, bucket: str) -> None:
        target = (host, port)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):  # quiet
                pass

            def _do(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.command in ("PUT", "POST", "DELETE") and self.path.lstrip("/").startswith(outer.bucket):
                    outer.denied += 1
                    self.send_response(403)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(DENIED)))
                    self.end_headers()
                    self.wfile.write(DENIED)
                    return
                conn = http.client.HTTPConnection(*target, timeout=60)
                headers = {k: v for k, v in self.headers.items()}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(k, v)
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _do

        self.bucket = bucket
        self.denied = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


def test_a_catalog_write_refused_by_the_store_is_a_permission_error_naming_role_and_fix(
    moto_server: Any, s3_buckets: tuple[str, str], s3_env: None, tmp_path: Path
) -> None:
    raw, assets = s3_buckets
    proxy = ReadOnlyProxy(moto_server.host, moto_server.port, "-")  # lets everything through, first
    try:
        config = write_config(tmp_path, s3_config_dict(proxy.endpoint, raw, assets, tmp_path))
        root = tmp_path / "recordings"
        first = write_session(root, "rec_20260301_000001_abcd", {"eeg/a.bin": b"one"})
        assert cli(config, "ingest", str(first)).returncode == 0  # the catalog exists
        proxy.bucket = assets  # from now on the assets key is read-only
        second = write_session(root, "rec_20260301_000002_abcd", {"eeg/a.bin": b"two"})
        proc = cli(config, "ingest", "--json", str(second))
        assert proc.returncode == 1 and proxy.denied > 0
        error = json.loads(proc.stdout)["error"]
        assert "'assets_rw'" in error and "credentials.assets_rw" in error and "check-config" in error, error
        for raw_text in ("LanceError", "lance error", ".rs:", "<?xml", "object_writer"):
            assert raw_text not in error and raw_text not in proc.stderr, proc.stderr
    finally:
        proxy.close()


def _emitted_events() -> dict[str, set[str]]:
    """Every dotted event name ``ursa_daemon`` logs, with the keys it passes (read from the source)."""
    import ast

    import ursa_daemon

    levels = {"debug", "info", "warning", "error", "exception", "critical"}

    def is_log(func: ast.expr) -> bool:
        if isinstance(func, ast.IfExp):
            return is_log(func.body) and is_log(func.orelse)
        return isinstance(func, ast.Attribute) and func.attr in levels

    def names(arg: ast.expr) -> list[str]:
        if isinstance(arg, ast.IfExp):
            return names(arg.body) + names(arg.orelse)
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return [arg.value]
        return []

    out: dict[str, set[str]] = {}
    for path in Path(ursa_daemon.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and is_log(node.func) and node.args:
                keys = {k.arg for k in node.keywords if k.arg and k.arg not in ("exc_info", "extra", "stack_info")}
                for name in names(node.args[0]):
                    if "." in name and " " not in name:
                        out.setdefault(name, set()).update(keys)
    return out


def test_every_event_is_in_the_readme_with_its_keys_and_session_events_carry_rec_id() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    rows = {}
    for line in readme.splitlines():
        if line.startswith("| `"):
            cells = line.split("|")
            for name in cells[1].replace("`", "").split(","):
                rows[name.strip()] = cells[2]
    events = _emitted_events()
    assert len(events) > 40
    for name, keys in sorted(events.items()):
        assert name in rows, f"{name} is not in the README's event table"
        missing = [k for k in keys if f"`{k}`" not in rows[name]]
        assert not missing, f"{name}: keys {missing} not in the README"
        if name.startswith(("session.", "upload.")) and name not in ("upload.swept", "upload.sweep_failed"):
            assert "rec_id" in keys, f"{name} does not carry rec_id"


def test_ingest_of_a_missing_path_exits_2_saying_it_does_not_exist(tmp_path: Path) -> None:
    config = write_config(tmp_path, local_config_dict(tmp_path))
    missing = tmp_path / "recordings" / "rec_20260301_000001_abcd"
    proc = cli(config, "ingest", str(missing))
    assert proc.returncode == 2 and f"{missing} does not exist" in proc.stderr, proc.stderr
    proc = cli(config, "ingest", "--json", str(missing))
    assert proc.returncode == 2 and "does not exist" in json.loads(proc.stdout)["error"]


def test_ingest_of_a_session_directory_that_is_a_link_refuses_it_by_name_and_uploads_nothing(
    tmp_path: Path,
) -> None:
    """SPEC: links are never followed, so ``ingest`` of a linked ``rec_*`` is an input error."""
    config = write_config(tmp_path, local_config_dict(tmp_path))
    real = write_session(tmp_path / "elsewhere", "rec_20260301_000002_abcd", {"eeg_a/x.bin": b"x" * 100})
    link = tmp_path / "recordings" / real.name
    link.symlink_to(real, target_is_directory=True)
    proc = cli(config, "ingest", "--json", str(link))
    doc = json.loads(proc.stdout)
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert real.name in doc["error"] and "symbolic link" in doc["error"] and str(real) in doc["error"], doc
    assert not list((tmp_path / "store").rglob("x.bin")), "a linked session's bytes were uploaded"
    assert cli(config, "query", "--json", "--rec-id", real.name).stdout.count(real.name) == 0


def test_a_partial_copy_another_process_holds_is_left_alone(tmp_path: Path) -> None:
    """Two processes on one session (a `run` and an `ingest`): the second copies privately, and the
    first one's partial copy, locked, is neither written nor moved."""
    import fcntl
    import hashlib

    from ursa_daemon.session import FileEntry
    from ursa_daemon.store.local import LocalStore
    from ursa_daemon.transfer.limits import RateLimiter, UploadLimits
    from ursa_daemon.transfer.local_copy import _partial
    from ursa_daemon.transfer.upload import upload_files

    body = os.urandom(3 << 20)
    rec = tmp_path / "rec_20260301_000001_abcd"
    (rec / "eeg").mkdir(parents=True)
    (rec / "eeg" / "a.bin").write_bytes(body)
    entry = FileEntry("eeg/a.bin", len(body), hashlib.sha256(body).hexdigest())
    store = LocalStore(tmp_path / "raw", bucket_kind="raw")
    part = _partial(store, rec.name, entry)
    part.parent.mkdir(parents=True)
    part.write_bytes(b"theirs")
    held = os.open(part, os.O_RDWR)
    fcntl.flock(held, fcntl.LOCK_EX)  # another process is copying this file
    try:
        done = upload_files(store, rec, rec.name, [entry], should_stop=lambda: False, limits=UploadLimits(),
                            limiter=RateLimiter(None), on_done=lambda _u: None)
    finally:
        os.close(held)
    assert done
    assert (tmp_path / "raw" / "recordings" / rec.name / "eeg" / "a.bin").read_bytes() == body
    assert part.read_bytes() == b"theirs" and [p.name for p in part.parent.iterdir()] == [part.name]
