"""The reliability suite's process harness: configs, rig sessions, and a real daemon whose log we follow.

``DaemonProc`` runs ``ursa-daemon run`` or ``drain`` as a subprocess with DEBUG
JSON logs on stdout, follows its events in a thread, and can be SIGKILLed the
moment an event matches (``wait_event``). Nothing here imports the daemon's
internals: tests drive the process and look at the store and the catalog.
"""

from __future__ import annotations

import json
import os
import queue
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from conftest import s3_config_dict

__all__ = [
    "DaemonProc",
    "age",
    "cli",
    "make_config",
    "parse_metrics",
    "random_session",
    "scrape_metrics",
    "write_files",
    "write_session",
]

Event = dict[str, Any]


def make_config(tmp: Path, endpoint: str, raw: str, assets: str, *, name: str = "config.yaml",
                state: str = "state", root: str = "recordings", **sections: Any) -> Path:
    """A config file for the s3 profile at ``endpoint``: short settle and rescans, 5 MiB parts.

    ``sections`` are merged over the defaults per top-level key (``upload={...}``).
    """
    doc = s3_config_dict(endpoint, raw, assets, tmp)
    doc["recordings_root"] = str(tmp / root)
    doc["state_dir"] = str(tmp / state)
    doc["watch"] = {"settle_seconds": 0.0, "rescan_seconds": 1.0, "retry_check_seconds": 0.5}
    doc["upload"] = {"part_size_bytes": 5 << 20, "max_concurrent_files": 2}
    doc["activity"] = {"quiet_seconds": 0.0}
    for key, value in sections.items():
        doc[key] = {**doc.get(key, {}), **value} if isinstance(value, dict) else value
    (tmp / root).mkdir(parents=True, exist_ok=True)
    path = tmp / name
    path.write_text(yaml.safe_dump(doc))
    return path


def write_files(rec: Path, files: dict[str, bytes], participant: str | None = None) -> None:
    """A session's data files (and ``participant.txt``), without its manifest."""
    rec.mkdir(parents=True, exist_ok=True)
    for rel, body in files.items():
        p = rec / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(body)
    if participant is not None:
        (rec / "participant.txt").write_text(participant + "\n")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition → ``{'name{labels}': value}`` (comments skipped)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def scrape_metrics(url: str, timeout: float = 10.0) -> dict[str, float]:
    """GET ``url`` (a ``/metrics`` endpoint) and parse it; connection errors raise."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return parse_metrics(resp.read().decode())


def write_session(root: Path, rec_id: str, files: dict[str, bytes], *, participant: str | None = None,
                  manifest: dict[str, Any] | None = None) -> Path:
    """A finished rig session: data files, then ``manifest.json`` (written last, as the rig does)."""
    rec = root / rec_id
    write_files(rec, files, participant)
    doc = manifest if manifest is not None else {"recording_id": rec_id, "start_time": 1_700_000_000_000_000_000,
                                                 "duration_s": 60.0}
    (rec / "manifest.json").write_text(json.dumps(doc))
    age(rec)
    return rec


def age(rec: Path, seconds: float = 120.0) -> None:
    """Backdate every mtime under ``rec``: the session is settled at once."""
    old = time.time() - seconds
    for p in [*rec.rglob("*"), rec]:
        os.utime(p, (old, old), follow_symlinks=False)


def random_session(rng: random.Random, root: Path, n: int, *, big: bool) -> Path:
    """Session number ``n``: a few small files over 1-3 workers, plus one multipart-sized file if ``big``."""
    rec_id = f"rec_20260101_{n:06d}_{rng.getrandbits(32):08x}"
    files: dict[str, bytes] = {}
    workers = rng.sample(["eeg", "camera_0", "mic_a", "notes"], rng.randint(1, 3))
    for w in workers:
        for i in range(rng.randint(1, 4)):
            files[f"{w}/seg_{i:06d}.bin"] = rng.randbytes(rng.choice([0, 100, 40_000, 300_000]))
    if big:
        files[f"{workers[0]}/big.bin"] = rng.randbytes(rng.randint(6 << 20, 9 << 20))
    participant = rng.choice([None, "Aria Lin", "Bo Chen"])
    return write_session(root, rec_id, files, participant=participant)


def cli(config: Path, *args: str, env: dict[str, str] | None = None,
        timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ursa_daemon.cli", "--config", str(config), *args],
        capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
    )


class DaemonProc:
    """``ursa-daemon <command>`` with DEBUG JSON logs followed line by line."""

    def __init__(self, config: Path, *args: str, env: dict[str, str] | None = None, log: Path | None = None) -> None:
        self.events: list[Event] = []
        self._q: queue.Queue[Event | None] = queue.Queue()
        self._log = open(log, "a") if log is not None else None  # noqa: SIM115 - closed by the reader
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ursa_daemon.cli", "--config", str(config), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "URSA_LOG_LEVEL": "DEBUG", **(env or {})},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if self._log is not None:
                self._log.write(line)
            try:
                ev = json.loads(line)
            except ValueError:
                ev = {"event": "_text", "text": line.rstrip()}
            if not isinstance(ev, dict):
                ev = {"event": "_text", "text": line.rstrip()}
            self.events.append(ev)
            self._q.put(ev)
        if self._log is not None:
            self._log.close()
        self._q.put(None)

    def wait_event(self, match: Callable[[Event], bool], timeout: float = 60.0) -> Event | None:
        """The first new event that matches, or None when the process ended (or the time ran out)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                ev = self._q.get(timeout=left)
            except queue.Empty:
                return None
            if ev is None:
                self._q.put(None)  # keep the end marker for later waits
                return None
            if match(ev):
                return ev

    def kill(self) -> int:
        self.proc.kill()
        return self.wait()

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.wait(timeout)

    def wait(self, timeout: float = 180.0) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return rc

    def text(self) -> str:
        return "\n".join(json.dumps(e) for e in self.events[-60:])
