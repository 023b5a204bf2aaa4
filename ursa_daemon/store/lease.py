"""Leases in the store: one holder at a time, across processes and machines, by atomic create.

A lease is one small JSON object (``{"holder", "expires_at", "host", "pid", "started"}``)
created with ``If-None-Match: *`` on S3/R2 (an exclusive create on a local store), so two
takers never both succeed. Its holder deletes it when done. A holder that died leaves it
behind; it is then taken over:

* at once, when the holder ran on this host and its process is gone (``host``, ``pid`` and
  the process's ``started`` time no longer match a live process): a rig's daemon that was
  killed mid-commit does not make its successor wait;
* otherwise once ``expires_at`` has passed (the holder's time budget).

Only one taker may take over a given dead lease: it first creates, also atomically, a
takeover marker named after that lease's bytes (``<takeover_prefix><sha256>``) and only the
run that created it deletes the old lease and takes its own; the others lose. Markers stay
(a few bytes per dead holder): a late taker that read the old lease must still find it taken.

Used for catalog maintenance (``ursa/maintenance.lease``, one run at a time) and for the
catalog's commit lock (one writer's check-and-commit at a time, see
:mod:`ursa_daemon.catalog.writes`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import socket
import time
from dataclasses import dataclass

import psutil

from ursa_daemon.errors import ObjectExists, ObjectNotFound
from ursa_daemon.store.base import Store

__all__ = ["Lease", "LeaseState"]


@dataclass(frozen=True)
class LeaseState:
    """Who holds a lease, as its object says."""

    holder: str
    expires_at: float
    host: str | None = None
    pid: int | None = None
    started: float | None = None

    @classmethod
    def parse(cls, raw: bytes) -> LeaseState:
        """The lease's document; an unreadable one reads as expired (it will be replaced)."""
        try:
            doc = json.loads(raw)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            return cls(holder="?", expires_at=0.0)
        expires = doc.get("expires_at")
        pid, started = doc.get("pid"), doc.get("started")
        return cls(
            holder=str(doc.get("holder", "?")),
            expires_at=float(expires) if isinstance(expires, int | float) and not isinstance(expires, bool) else 0.0,
            host=doc["host"] if isinstance(doc.get("host"), str) else None,
            pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
            started=float(started) if isinstance(started, int | float) and not isinstance(started, bool) else None,
        )

    def dead_here(self) -> bool:
        """The holder ran on this host and its process is gone (or the pid now belongs to another)."""
        if self.host != socket.gethostname() or self.pid is None or self.started is None:
            return False
        try:
            proc = psutil.Process(self.pid)
            started: float = proc.create_time()
            return abs(started - self.started) > 1.0 or bool(proc.status() == psutil.STATUS_ZOMBIE)
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return True
        except psutil.Error:  # access denied and the like: not provably dead
            return False

    def expired(self, now: float) -> bool:
        return self.expires_at <= now or self.dead_here()


def _own_start() -> float:
    try:
        started: float = psutil.Process(os.getpid()).create_time()
        return started
    except psutil.Error:
        return 0.0


class Lease:
    """One lease object ``key`` in ``store``; ``ttl_s`` is how long it holds without its holder."""

    def __init__(self, store: Store, key: str, takeover_prefix: str, ttl_s: float, *, holder: str | None = None):
        self.store = store
        self.key = key
        self.takeover_prefix = takeover_prefix
        self.ttl_s = ttl_s
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
        self.taken_at: float | None = None
        #: set when taking over a lease whose holder expired (or died here): for the caller's log
        self.took_over: LeaseState | None = None

    def _body(self) -> bytes:
        return json.dumps(
            {
                "holder": self.holder,
                "expires_at": time.time() + self.ttl_s,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "started": _own_start(),
            }
        ).encode()

    def read(self) -> tuple[bytes, LeaseState] | None:
        """The lease's bytes and state; ``None`` when nobody holds it."""
        try:
            raw = self.store.get(self.key)
        except ObjectNotFound:
            return None
        return raw, LeaseState.parse(raw)

    def try_take(self) -> LeaseState | None:
        """Take the lease now: ``None`` when taken, else the state of the live holder (or of the
        dead one another taker is taking over)."""
        for _ in range(2):
            try:
                self.store.put(self.key, self._body(), content_type="application/json", create_only=True)
                self.taken_at = time.monotonic()
                return None
            except ObjectExists:
                found = self.read()
                if found is None:
                    continue  # given back meanwhile: try again
                raw, current = found
                if not current.expired(time.time()):
                    return current
                if not self._claim_takeover(raw, current):
                    return current
                with contextlib.suppress(ObjectNotFound):
                    self.store.delete(self.key)
        found = self.read()
        return found[1] if found is not None else LeaseState(holder="?", expires_at=time.time())

    def _claim_takeover(self, raw: bytes, current: LeaseState) -> bool:
        """Win the right to replace this dead lease (its bytes name it); False when another taker has."""
        marker = self.takeover_prefix + hashlib.sha256(raw).hexdigest()
        body = json.dumps({"holder": self.holder, "took_over": current.holder, "at": time.time()}).encode()
        try:
            self.store.put(marker, body, content_type="application/json", create_only=True)
        except ObjectExists:
            return False
        self.took_over = current
        return True

    def take(self, *, wait_s: float, min_sleep_s: float = 0.02, max_sleep_s: float = 0.5) -> LeaseState | None:
        """Take the lease, waiting up to ``wait_s`` for its holder to give it back (or to die);
        ``None`` when taken, else the state of the holder that kept it."""
        deadline = time.monotonic() + wait_s
        sleep = min_sleep_s
        while True:
            current = self.try_take()
            if current is None:
                return None
            if time.monotonic() >= deadline:
                return current
            time.sleep(min(sleep * random.uniform(0.5, 1.5), max(0.0, deadline - time.monotonic())))
            sleep = min(max_sleep_s, sleep * 1.6)

    def held_for(self) -> float:
        """Seconds since this lease was taken (0 when not held)."""
        return 0.0 if self.taken_at is None else time.monotonic() - self.taken_at

    def overran(self) -> bool:
        """Held past its time budget: another taker may have taken it over meanwhile."""
        return self.taken_at is not None and self.held_for() >= self.ttl_s

    def give_back(self) -> None:
        """Delete the lease if it is still ours (best effort: an expired one may be another's now)."""
        self.taken_at = None
        found = self.read()
        if found is not None and found[1].holder == self.holder:
            with contextlib.suppress(ObjectNotFound):
                self.store.delete(self.key)
