"""Hostile manifest input made safe: bounded JSON documents and times as int64 epoch nanoseconds.

Anything else is an :class:`InputError` naming the session, the file and the fix, never a
``RecursionError`` or an overflow.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ursa_daemon.errors import InputError
from ursa_daemon.session.keys import symlink_error

__all__ = [
    "INT64_MAX",
    "INT64_MIN",
    "MAX_JSON_DEPTH",
    "MAX_MANIFEST_BYTES",
    "load_json",
    "parse_duration_ns",
    "parse_json_document",
    "parse_time_ns",
]

#: a manifest larger than this is not a rig manifest
MAX_MANIFEST_BYTES = 64 << 20
#: JSON nested deeper than this is not a rig manifest (and would exhaust Python's recursion)
MAX_JSON_DEPTH = 64
#: the catalog keeps times and durations as int64 epoch nanoseconds
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)


def parse_time_ns(value: Any, *, rec_id: str, key: str, file: str) -> int:
    """An ISO-8601 time with an offset, or integer epoch nanoseconds, as epoch ns."""
    if isinstance(value, int) and not isinstance(value, bool):
        return _int64(value, rec_id=rec_id, key=key, file=file)
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            dt = None
        if dt is not None and dt.tzinfo is not None:
            try:
                delta = dt - datetime(1970, 1, 1, tzinfo=UTC)
            except OverflowError:  # an offset that pushes the time past year 1 or 9999
                delta = None
            if delta is not None:
                ns = (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
                return _int64(ns, rec_id=rec_id, key=key, file=file)
    raise InputError(
        f"{rec_id}: {file}: {key} must be ISO-8601 with an offset "
        "(2026-05-20T19:56:28.120+00:00) or integer epoch nanoseconds; got "
        f"{type(value).__name__}; fix the manifest",
        rec_id=rec_id,
        file=file,
    )


def _int64(ns: int, *, rec_id: str, key: str, file: str) -> int:
    """``ns`` if it fits the catalog's int64 nanoseconds, else an InputError naming ``key``."""
    if INT64_MIN <= ns <= INT64_MAX:
        return ns
    raise InputError(
        f"{rec_id}: {file}: {key} is out of range: the catalog keeps times as int64 epoch nanoseconds "
        "(years 1677 to 2262); fix the manifest",
        rec_id=rec_id,
        file=file,
    )


def _json_depth_ok(doc: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when ``doc`` nests no deeper than ``limit`` (iterative: no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(doc, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            node = list(node.values())
        if isinstance(node, list):
            if depth > limit:
                return False
            stack.extend((child, depth + 1) for child in node if isinstance(child, dict | list))
    return True


_TOO_DEEP = object()


def parse_json_document(body: bytes, rec_id: str, rel: str) -> dict[str, Any]:
    """A manifest-like JSON object from ``body``: UTF-8, at most ``MAX_MANIFEST_BYTES``, nested at
    most ``MAX_JSON_DEPTH`` deep. Anything else is an InputError naming ``rel``, never a
    ``RecursionError``."""
    if len(body) > MAX_MANIFEST_BYTES:
        raise InputError(
            f"{rec_id}: {rel} is {len(body)} bytes, larger than any rig manifest; fix or remove it",
            rec_id=rec_id,
            file=rel,
        )
    try:
        doc = json.loads(body)
    except UnicodeDecodeError as exc:
        raise InputError(f"{rec_id}: {rel} is not UTF-8 ({exc.reason}); rewrite it as UTF-8 JSON",
                         rec_id=rec_id, file=rel) from None
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{rec_id}: {rel} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "fix the file, or delete it and run `ursa-daemon reconstruct-manifest`",
            rec_id=rec_id,
            file=rel,
        ) from None
    except RecursionError:  # nested deeper than Python parses
        doc = _TOO_DEEP
    except ValueError as exc:  # an integer literal of thousands of digits
        raise InputError(f"{rec_id}: {rel} is not a usable JSON document ({exc}); fix the file",
                         rec_id=rec_id, file=rel) from None
    if doc is _TOO_DEEP or not _json_depth_ok(doc):
        raise InputError(
            f"{rec_id}: {rel} nests JSON deeper than {MAX_JSON_DEPTH} levels; no rig manifest does: fix the file",
            rec_id=rec_id,
            file=rel,
        )
    if not isinstance(doc, dict):
        raise InputError(f"{rec_id}: {rel} must hold a JSON object; fix the file", rec_id=rec_id, file=rel)
    return doc


def load_json(path: Path, rec_id: str, rel: str) -> dict[str, Any]:
    if path.is_symlink():
        symlink_error(rec_id, rel)
    if not path.is_file():
        raise InputError(
            f"{rec_id}: {rel} is not a regular file (a directory?); the rig writes it as a JSON file: "
            "remove it and write the file, or run `ursa-daemon reconstruct-manifest`",
            rec_id=rec_id,
            file=rel,
        )
    size = path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise InputError(
            f"{rec_id}: {rel} is {size} bytes, larger than any rig manifest; fix or remove it",
            rec_id=rec_id,
            file=rel,
        )
    return parse_json_document(path.read_bytes(), rec_id, rel)


def parse_duration_ns(doc: dict[str, Any], start_ns: int, rec_id: str, src: str) -> int:
    if doc.get("end_time") is not None:
        end_ns = parse_time_ns(doc["end_time"], rec_id=rec_id, key="end_time", file=src)
        if end_ns < start_ns:
            raise InputError(
                f"{rec_id}: {src}: end_time is before start_time; fix the manifest (or give duration_s instead)",
                rec_id=rec_id,
                file=src,
            )
        return _int64(end_ns - start_ns, rec_id=rec_id, key="end_time", file=src)
    dur = doc.get("duration_s")
    if dur is None:
        return 0
    finite = isinstance(dur, int) or (isinstance(dur, float) and math.isfinite(dur))  # 10**400 is an int
    if isinstance(dur, bool) or not finite or dur < 0:
        raise InputError(f"{rec_id}: {src}: duration_s must be a non-negative number", rec_id=rec_id, file=src)
    try:
        ns = round(dur * 1_000_000_000)
    except OverflowError:  # 1e300 * 1e9 is infinite
        ns = INT64_MAX + 1
    if ns < 0:
        raise InputError(f"{rec_id}: {src}: duration_s must be a non-negative number", rec_id=rec_id, file=src)
    return _int64(ns, rec_id=rec_id, key="duration_s", file=src)

