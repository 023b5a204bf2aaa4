"""SQLite resume state under ``state_dir``: the only SQL in the package (with ``state_schema``).

What is stored is described in :mod:`ursa_daemon.daemon.state_schema`. WAL mode
with ``synchronous=FULL``: a committed transaction survives SIGKILL and power loss.
The lock that makes one process the writer is :class:`~ursa_daemon.daemon.lock.StateLock`.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from ursa_daemon.daemon.state_schema import (
    MIGRATIONS,
    FileParts,
    FileState,
    SessionRecord,
    SessionState,
    session_record,
    upload_record,
)
from ursa_daemon.errors import StateError
from ursa_daemon.log import get_logger
from ursa_daemon.store.base import MultipartRecord, PartRecord

__all__ = [
    "FileParts",
    "FileState",
    "MultipartRecord",
    "PartRecord",
    "SessionRecord",
    "SessionState",
    "StateDB",
]

log = get_logger("ursa.state")

DB_NAME = "state.sqlite3"


class StateDB:
    """The resume state. Thread-safe: one connection, serialised by a lock."""

    def __init__(self, state_dir: Path, *, rebuild: bool = False) -> None:
        """``rebuild`` (only for the holder of the :class:`StateLock`): a corrupt database is
        moved aside and replaced by an empty one instead of raising :class:`StateError`."""
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / DB_NAME
        try:
            self._conn = self._open(check=rebuild)
        except sqlite3.DatabaseError as exc:
            if not rebuild:
                raise StateError(
                    f"state database {self.path} is unreadable ({exc}); move it aside and restart: "
                    "the daemon rebuilds what it needs from the store and the catalog"
                ) from None
            if isinstance(exc, sqlite3.OperationalError) and not _corrupt(exc):
                raise StateError(f"state database {self.path} cannot be opened ({exc}); "
                                 f"check that {state_dir} is writable and not full") from None
            # unreadable: keep it for a post-mortem, start empty; the store and the catalog
            # say what is already uploaded and registered, so nothing is uploaded or registered twice
            aside = self._move_aside()
            log.warning("state.rebuilt", error=f"state database {self.path} was unreadable ({exc}); "
                        f"moved to {aside.name}, starting with an empty state")
            try:
                self._conn = self._open(check=False)
            except sqlite3.DatabaseError as again:
                raise StateError(f"state database {self.path} cannot be created ({again}); "
                                 f"check that {state_dir} is writable and not full") from None
        self._lock = threading.Lock()

    def _open(self, *, check: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            verdict = conn.execute("PRAGMA quick_check").fetchone()[0] if check else "ok"
            if verdict != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {verdict}")
            self._conn = conn
            self._migrate()
        except BaseException:
            conn.close()
            raise
        return conn

    def _move_aside(self) -> Path:
        aside = self.path.with_name(f"{DB_NAME}.corrupt-{int(time.time())}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                src.replace(Path(str(aside) + suffix))
        return aside

    def _error(self, exc: sqlite3.Error) -> StateError:
        return StateError(f"state database {self.path}: {exc}; check that {self.path.parent} is writable "
                          "and not full, then restart (nothing is registered before its bytes are stored)")

    def close(self) -> None:
        self._conn.close()

    def _migrate(self) -> None:
        """Bring the schema to this release's, in one ``BEGIN IMMEDIATE`` transaction that also reads
        the version: two processes opening a new database at once (``status`` polling while ``drain``
        starts) migrate it one after the other, the second finding it done. SQLite's DDL and
        ``PRAGMA user_version`` are transactional, so a migration is all there or not at all."""
        conn = self._conn
        if conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS):
            return  # the usual open: no write lock taken
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise StateError(
                    f"state database {self.path} has schema {version}, newer than this ursa-daemon "
                    f"({len(MIGRATIONS)}); upgrade ursa-daemon"
                )
            for n, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in (s.strip() for s in script.split(";")):
                    if statement:
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version={n}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    yield self._conn
                except BaseException:
                    self._conn.execute("ROLLBACK")
                    raise
                self._conn.execute("COMMIT")
            except sqlite3.Error as exc:  # disk full, I/O error, corruption: a clear StateError
                if self._conn.in_transaction:
                    with suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                raise self._error(exc) from None

    def _query(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._conn.execute(sql, tuple(args)).fetchall()
            except sqlite3.Error as exc:
                raise self._error(exc) from None

    # -- sessions ---------------------------------------------------------

    def session(self, rec_id: str) -> SessionRecord | None:
        rows = self._query("SELECT * FROM sessions WHERE rec_id = ?", (rec_id,))
        return session_record(rows[0]) if rows else None

    def sessions(self, state: SessionState | None = None) -> list[SessionRecord]:
        if state is None:
            rows = self._query("SELECT * FROM sessions ORDER BY rec_id")
        else:
            rows = self._query("SELECT * FROM sessions WHERE state = ? ORDER BY rec_id", (str(state),))
        return [session_record(r) for r in rows]

    def counts(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self._query("SELECT state, count(*) FROM sessions GROUP BY state")}

    def sessions_in(self, states: Iterable[SessionState]) -> list[SessionRecord]:
        """The sessions in any of ``states`` (by the state index: a rig's history is not read)."""
        wanted = [str(st) for st in states]
        marks = ",".join("?" * len(wanted))
        rows = self._query(f"SELECT * FROM sessions WHERE state IN ({marks}) ORDER BY rec_id", wanted)
        return [session_record(r) for r in rows]

    def states_of(self, states: Iterable[SessionState]) -> dict[str, SessionState]:
        """rec_id → state of the sessions in any of ``states``, in one query (what ``run``'s scan
        of the root starts from: ~10 ms at 10,000 sessions, no query per session)."""
        wanted = [str(st) for st in states]
        marks = ",".join("?" * len(wanted))
        rows = self._query(f"SELECT rec_id, state FROM sessions WHERE state IN ({marks})", wanted)
        return {r[0]: SessionState(r[1]) for r in rows}

    def last_change(self, state: SessionState) -> float | None:
        """When a session last entered or moved in ``state`` (``registered``: the last registration)."""
        rows = self._query("SELECT max(updated_at) FROM sessions WHERE state = ?", (str(state),))
        return rows[0][0] if rows and rows[0][0] is not None else None

    def last_error(self) -> SessionRecord | None:
        """The failed or rejected session whose error is the most recent."""
        rows = self._query(
            "SELECT * FROM sessions WHERE state IN (?, ?) AND last_error IS NOT NULL "
            "ORDER BY updated_at DESC LIMIT 1",
            (str(SessionState.FAILED), str(SessionState.REJECTED)),
        )
        return session_record(rows[0]) if rows else None

    def upsert_session(self, rec_id: str, root: str, state: SessionState, *, signature: str | None = None) -> None:
        """Create the row, or move an existing one to ``state`` (and a new signature)."""
        with self._tx() as c:
            c.execute(
                """INSERT INTO sessions (rec_id, root, state, signature, updated_at) VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT(rec_id) DO UPDATE SET root = excluded.root, state = excluded.state,
                   signature = coalesce(excluded.signature, signature), updated_at = excluded.updated_at""",
                (rec_id, root, str(state), signature, time.time()),
            )

    def set_state(
        self,
        rec_id: str,
        state: SessionState,
        *,
        error: str | None = None,
        next_attempt_at: float | None = None,
        recording_hash: str | None = None,
        count_attempt: bool = False,
        pause_reason: str | None = None,
    ) -> None:
        """Move ``rec_id`` to ``state``; ``pause_reason`` (``paused``: why) is cleared by any other move."""
        with self._tx() as c:
            c.execute(
                """UPDATE sessions SET state = ?, last_error = ?, next_attempt_at = ?,
                   recording_hash = coalesce(?, recording_hash), attempts = attempts + ?,
                   pause_reason = ?, updated_at = ? WHERE rec_id = ?""",
                (str(state), error, next_attempt_at, recording_hash, int(count_attempt), pause_reason,
                 time.time(), rec_id),
            )

    def reset_attempts(self, rec_id: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE sessions SET attempts = 0 WHERE rec_id = ?", (rec_id,))

    def set_progress(
        self, rec_id: str, *, files_done: int | None, files_total: int, bytes_done: int | None, bytes_total: int,
        bytes_sending: int = 0, bytes_moved: int | None = None,
    ) -> None:
        """``bytes_done``: confirmed in the store; ``bytes_sending``: sent, not confirmed yet;
        ``bytes_moved``: moved by the current phase itself (the rate's numerator). None: unchanged."""
        with self._tx() as c:
            c.execute(
                """UPDATE sessions SET files_done = coalesce(?, files_done), files_total = ?,
                   bytes_done = coalesce(?, bytes_done), bytes_total = ?, bytes_sending = ?,
                   bytes_moved = coalesce(?, bytes_moved), updated_at = ? WHERE rec_id = ?""",
                (files_done, files_total, bytes_done, bytes_total, bytes_sending, bytes_moved, time.time(), rec_id),
            )

    def start_moving(self, rec_id: str, *, bytes_from: int) -> None:
        """A hashing or uploading phase begins now, at ``bytes_from`` (rate and ETA count from here)."""
        with self._tx() as c:
            c.execute("UPDATE sessions SET moving_since = ?, moving_from = ?, bytes_moved = 0 WHERE rec_id = ?",
                      (time.time(), bytes_from, rec_id))

    def forget(self, rec_id: str) -> None:
        with self._tx() as c:
            c.execute("DELETE FROM sessions WHERE rec_id = ?", (rec_id,))

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as c:
            c.execute("INSERT INTO meta VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                      (key, value))

    def meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    # -- files ------------------------------------------------------------

    def files(self, rec_id: str) -> dict[str, FileState]:
        rows = self._query("SELECT * FROM files WHERE rec_id = ?", (rec_id,))
        return {
            r["rel_path"]: FileState(r["rel_path"], r["size"], r["mtime_ns"], r["sha256"], bool(r["confirmed"]))
            for r in rows
        }

    def record_hashes(self, rec_id: str, entries: Iterable[tuple[str, int, int, str]]) -> None:
        """(rel_path, size, mtime_ns, sha256) per file; a changed file loses its confirmation."""
        with self._tx() as c:
            c.executemany(
                """INSERT INTO files (rec_id, rel_path, size, mtime_ns, sha256) VALUES (?, ?, ?, ?, ?)
                   ON CONFLICT(rec_id, rel_path) DO UPDATE SET
                   confirmed = CASE WHEN files.sha256 = excluded.sha256 AND files.size = excluded.size
                                    THEN files.confirmed ELSE 0 END,
                   size = excluded.size, mtime_ns = excluded.mtime_ns, sha256 = excluded.sha256""",
                [(rec_id, *e) for e in entries],
            )

    def confirm_file(self, rec_id: str, rel_path: str) -> None:
        with self._tx() as c:
            c.execute("UPDATE files SET confirmed = 1 WHERE rec_id = ? AND rel_path = ?", (rec_id, rel_path))


    # -- multipart uploads (part-level resume) -----------------------------

    def multipart_upload(self, rec_id: str, rel_path: str) -> MultipartRecord | None:
        rows = self._query("SELECT * FROM uploads WHERE rec_id = ? AND rel_path = ?", (rec_id, rel_path))
        return upload_record(rows[0]) if rows else None

    def multipart_uploads(self, rec_id: str | None = None) -> list[MultipartRecord]:
        if rec_id is None:
            rows = self._query("SELECT * FROM uploads ORDER BY created_at")
        else:
            rows = self._query("SELECT * FROM uploads WHERE rec_id = ? ORDER BY rel_path", (rec_id,))
        return [upload_record(r) for r in rows]

    def start_multipart(self, rec: MultipartRecord) -> None:
        """Record a new upload for a file, replacing (with its parts) any older one of that file."""
        now = time.time()
        with self._tx() as c:
            c.execute("DELETE FROM uploads WHERE rec_id = ? AND rel_path = ?", (rec.rec_id, rec.rel_path))
            c.execute(
                """INSERT INTO uploads (upload_id, rec_id, rel_path, bucket, key, size, sha256, part_size,
                   created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (rec.upload_id, rec.rec_id, rec.rel_path, rec.bucket, rec.key, rec.size, rec.sha256,
                 rec.part_size, now, now),
            )

    def record_part(self, upload_id: str, part: PartRecord) -> None:
        """A part the server confirmed; kept until the upload completes or is aborted."""
        with self._tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO parts (upload_id, number, size, etag, sha256) VALUES (?, ?, ?, ?, ?)",
                (upload_id, part.number, part.size, part.etag, part.checksum),
            )
            c.execute("UPDATE uploads SET updated_at = ? WHERE upload_id = ?", (time.time(), upload_id))

    def parts(self, upload_id: str) -> dict[int, PartRecord]:
        rows = self._query("SELECT * FROM parts WHERE upload_id = ?", (upload_id,))
        return {r["number"]: PartRecord(r["number"], r["size"], r["etag"], r["sha256"]) for r in rows}

    def forget_multipart(self, upload_id: str) -> None:
        """The upload completed or was aborted: drop it and its parts."""
        with self._tx() as c:
            c.execute("DELETE FROM uploads WHERE upload_id = ?", (upload_id,))

    def stale_multipart_uploads(self, *, older_than: float) -> list[MultipartRecord]:
        """Uploads that will not be continued: their session is registered, rejected or
        unknown, or no part was confirmed since ``older_than`` (epoch seconds)."""
        rows = self._query(
            """SELECT u.* FROM uploads u LEFT JOIN sessions s ON s.rec_id = u.rec_id
               WHERE s.rec_id IS NULL OR s.state IN (?, ?) OR u.updated_at < ? ORDER BY u.created_at""",
            (str(SessionState.REGISTERED), str(SessionState.REJECTED), older_than),
        )
        return [upload_record(r) for r in rows]

    def part_progress(self) -> dict[str, list[FileParts]]:
        """Per session, the part progress of every open multipart upload."""
        rows = self._query(
            """SELECT u.rec_id, u.rel_path, u.size, u.part_size, count(p.number) AS n,
                      coalesce(sum(p.size), 0) AS done
               FROM uploads u LEFT JOIN parts p ON p.upload_id = u.upload_id
               GROUP BY u.upload_id ORDER BY u.rec_id, u.rel_path"""
        )
        out: dict[str, list[FileParts]] = {}
        for r in rows:
            total = max(1, -(-r["size"] // r["part_size"]))
            out.setdefault(r["rec_id"], []).append(
                FileParts(r["rec_id"], r["rel_path"], r["n"], total, r["done"], r["size"])
            )
        return out


def _corrupt(exc: sqlite3.DatabaseError) -> bool:
    """An error that says the file is not (or no longer) a sound SQLite database."""
    text = str(exc).lower()
    return any(s in text for s in ("not a database", "malformed", "quick_check", "encrypted"))
