"""The state database's schema and records: what ``state.StateDB`` stores and returns.

One row per session (state, attempts, last error, next attempt, recording hash,
progress), one row per file (size, mtime, sha256, confirmed), and one row per open
multipart upload (bucket, key, upload id, the file's size and sha256, part size) with
one row per confirmed part (number, size, ETag, checksum), written as each part is
confirmed. The schema is versioned with ``PRAGMA user_version`` and upgraded by the
ordered ``MIGRATIONS``.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ursa_daemon.store.base import MultipartRecord

__all__ = [
    "MIGRATIONS",
    "FileParts",
    "FileState",
    "SessionRecord",
    "SessionState",
    "session_record",
    "upload_record",
]


class SessionState(StrEnum):
    """SPEC section 5: discovered → hashing → uploading ⇄ paused → registering → registered."""

    DISCOVERED = "discovered"
    HASHING = "hashing"
    UPLOADING = "uploading"
    PAUSED = "paused"
    REGISTERING = "registering"
    REGISTERED = "registered"
    FAILED = "failed"
    REJECTED = "rejected"


MIGRATIONS: tuple[str, ...] = (
    # 1: sessions and files
    """
    CREATE TABLE sessions (
        rec_id          TEXT PRIMARY KEY,
        root            TEXT NOT NULL,
        state           TEXT NOT NULL,
        recording_hash  TEXT,
        attempts        INTEGER NOT NULL DEFAULT 0,
        last_error      TEXT,
        next_attempt_at REAL,
        signature       TEXT,
        files_total     INTEGER NOT NULL DEFAULT 0,
        files_done      INTEGER NOT NULL DEFAULT 0,
        bytes_total     INTEGER NOT NULL DEFAULT 0,
        bytes_done      INTEGER NOT NULL DEFAULT 0,
        updated_at      REAL NOT NULL
    );
    CREATE INDEX sessions_state ON sessions(state);
    CREATE TABLE files (
        rec_id     TEXT NOT NULL REFERENCES sessions(rec_id) ON DELETE CASCADE,
        rel_path   TEXT NOT NULL,
        size       INTEGER NOT NULL,
        mtime_ns   INTEGER NOT NULL,
        sha256     TEXT,
        confirmed  INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (rec_id, rel_path)
    ) WITHOUT ROWID;
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # 2: multipart uploads in progress and their confirmed parts (part-level resume)
    """
    CREATE TABLE uploads (
        upload_id   TEXT PRIMARY KEY,
        rec_id      TEXT NOT NULL,
        rel_path    TEXT NOT NULL,
        bucket      TEXT NOT NULL,
        key         TEXT NOT NULL,
        size        INTEGER NOT NULL,
        sha256      TEXT NOT NULL,
        part_size   INTEGER NOT NULL,
        created_at  REAL NOT NULL,
        updated_at  REAL NOT NULL
    );
    CREATE UNIQUE INDEX uploads_file ON uploads(rec_id, rel_path);
    CREATE TABLE parts (
        upload_id   TEXT NOT NULL REFERENCES uploads(upload_id) ON DELETE CASCADE,
        number      INTEGER NOT NULL,
        size        INTEGER NOT NULL,
        etag        TEXT NOT NULL,
        sha256      TEXT NOT NULL,
        PRIMARY KEY (upload_id, number)
    ) WITHOUT ROWID;
    """,
    # 3: where the current phase (hashing, uploading) started, for the rate and ETA in status
    """
    ALTER TABLE sessions ADD COLUMN moving_since REAL;
    ALTER TABLE sessions ADD COLUMN moving_from INTEGER NOT NULL DEFAULT 0;
    """,
    # 4: why a session is paused; bytes sent but not yet confirmed, and bytes moved by the current
    # phase (hashed, or sent by this attempt: the rate's numerator, kept bytes not counted)
    """
    ALTER TABLE sessions ADD COLUMN pause_reason TEXT;
    ALTER TABLE sessions ADD COLUMN bytes_sending INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE sessions ADD COLUMN bytes_moved INTEGER NOT NULL DEFAULT 0;
    """,
)


@dataclass(frozen=True)
class SessionRecord:
    rec_id: str
    root: str
    state: SessionState
    recording_hash: str | None
    attempts: int
    last_error: str | None
    next_attempt_at: float | None
    signature: str | None
    files_total: int
    files_done: int
    bytes_total: int
    #: bytes of the session confirmed in the store: files uploaded or already there, and what an
    #: unfinished file's confirmed parts (or partial copy) hold; never counts bytes still in flight
    bytes_done: int
    updated_at: float
    #: when the current hashing or uploading phase began (None: not moving), and bytes_done then
    moving_since: float | None = None
    moving_from: int = 0
    #: why the session is paused (``flag_file``, ``recorder_process``, ``session_writes``,
    #: ``upload_window``, ``stopping``); None unless ``paused``
    pause_reason: str | None = None
    #: uploading: bytes sent of parts and files not confirmed yet (a pause loses them)
    bytes_sending: int = 0
    #: bytes the current phase moved itself: hashed, or sent by this attempt (what earlier attempts
    #: kept and files already in the store are not counted: they did not move now)
    bytes_moved: int = 0

    @property
    def rate(self) -> float | None:
        """Bytes per second the current phase moves, from its start to the last progress write."""
        if self.moving_since is None or self.state not in (SessionState.HASHING, SessionState.UPLOADING):
            return None
        elapsed = self.updated_at - self.moving_since
        moved = self.bytes_moved
        return moved / elapsed if elapsed > 0.5 and moved > 0 else None

    @property
    def bytes_hashed(self) -> int | None:
        """While ``hashing``: the bytes hashed so far (else None)."""
        return self.bytes_moved if self.state is SessionState.HASHING else None

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the current rate."""
        rate = self.rate
        if rate is None:
            return None
        if self.state is SessionState.HASHING:
            return max(0, self.bytes_total - self.bytes_moved) / rate
        return max(0, self.bytes_total - self.bytes_done - self.bytes_sending) / rate

    def as_json(self) -> dict[str, Any]:
        return {
            "rec_id": self.rec_id,
            "state": str(self.state),
            "recording_hash": self.recording_hash,
            "files_done": self.files_done,
            "files_total": self.files_total,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "next_attempt_at": self.next_attempt_at,
            "rate_bytes_per_s": None if self.rate is None else round(self.rate),
            "eta_s": None if self.eta_s is None else round(self.eta_s, 1),
            "pause_reason": self.pause_reason if self.state is SessionState.PAUSED else None,
            "bytes_sending": self.bytes_sending if self.state is SessionState.UPLOADING else 0,
            "bytes_hashed": self.bytes_hashed,
        }


@dataclass(frozen=True)
class FileState:
    rel_path: str
    size: int
    mtime_ns: int
    sha256: str | None
    confirmed: bool


@dataclass(frozen=True)
class FileParts:
    """Part progress of one file's open multipart upload, for ``status``."""

    rec_id: str
    rel_path: str
    parts_done: int
    parts_total: int
    bytes_done: int
    bytes_total: int

    def as_json(self) -> dict[str, Any]:
        return {
            "rel_path": self.rel_path,
            "parts_done": self.parts_done,
            "parts_total": self.parts_total,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
        }


def upload_record(r: sqlite3.Row) -> MultipartRecord:
    return MultipartRecord(
        upload_id=r["upload_id"],
        rec_id=r["rec_id"],
        rel_path=r["rel_path"],
        bucket=r["bucket"],
        key=r["key"],
        size=r["size"],
        sha256=r["sha256"],
        part_size=r["part_size"],
        created_at=r["created_at"],
        updated_at=r["updated_at"],
    )


def session_record(r: sqlite3.Row) -> SessionRecord:
    return SessionRecord(
        rec_id=r["rec_id"],
        root=r["root"],
        state=SessionState(r["state"]),
        recording_hash=r["recording_hash"],
        attempts=r["attempts"],
        last_error=r["last_error"],
        next_attempt_at=r["next_attempt_at"],
        signature=r["signature"],
        files_total=r["files_total"],
        files_done=r["files_done"],
        bytes_total=r["bytes_total"],
        bytes_done=r["bytes_done"],
        updated_at=r["updated_at"],
        moving_since=r["moving_since"],
        moving_from=r["moving_from"],
        pause_reason=r["pause_reason"],
        bytes_sending=r["bytes_sending"],
        bytes_moved=r["bytes_moved"],
    )
