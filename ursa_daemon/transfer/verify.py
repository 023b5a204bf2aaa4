"""Re-check that every cataloged object is in the store with its size and sha256.

The truth is the augmented manifest in the raw bucket
(``recordings/<rec_id>/manifest.json``, or the union of a dual-node session's
``_node_manifests/*.json``): it lists each data file's ``rel_path``, ``size``
and ``sha256``. For each, ``head()`` gives the size and, on S3, the ``sha256``
user metadata written at upload; where there is none (the local profile, an
object put without it) the object is streamed through sha256. ``deep=True``
always streams. Nothing is changed; the report names every object that is
missing or differs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ursa_daemon.config import Role
from ursa_daemon.errors import InputError, ObjectNotFound
from ursa_daemon.session import (
    MANIFEST_NAME,
    NODE_MANIFEST_DIR,
    check_rel_path,
    merge_node_manifests,
    recording_hash,
    rel_key,
)
from ursa_daemon.store import Store, parse_storage_uri
from ursa_daemon.transfer.download_plan import resolve_targets
from ursa_daemon.transfer.register import object_sha256
from ursa_daemon.transfer.resumable import DEFAULT_RETRY, RetryPolicy, call_with_retry

if TYPE_CHECKING:
    from ursa_daemon.transfer.context import Context
    from ursa_daemon.transfer.query import QueryResult

__all__ = ["DEFAULT_VERIFY_CONCURRENCY", "Problem", "VerifyReport", "verify"]

#: Objects checked at once.
DEFAULT_VERIFY_CONCURRENCY = 4
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Problem:
    """One object that is not as the manifest says."""

    key: str
    problem: Literal["missing", "size", "sha256", "manifest", "duplicate"]
    expected: str | int | None = None
    actual: str | int | None = None

    def __str__(self) -> str:
        if self.problem == "missing":
            return f"{self.key}: missing from the store"
        if self.problem == "manifest":
            return f"{self.key}: {self.expected}"
        if self.problem == "duplicate":
            return (
                f"{self.key}: {self.actual} row(s) share a primary key with another row of this recording "
                "(one per key is the rule); `ursa-daemon maintain` repairs them"
            )
        return f"{self.key}: {self.problem} is {self.actual}, the manifest says {self.expected}"

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "problem": self.problem, "expected": self.expected, "actual": self.actual}


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify`` found for one recording."""

    rec_id: str
    recording_hash: str
    files_checked: int
    bytes_checked: int
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        return {
            "rec_id": self.rec_id,
            "recording_hash": self.recording_hash,
            "ok": self.ok,
            "files_checked": self.files_checked,
            "bytes_checked": self.bytes_checked,
            "problems": [p.as_json() for p in self.problems],
            "duplicate_rows": sum(int(p.actual or 0) for p in self.problems if p.problem == "duplicate"),
        }


@dataclass(frozen=True)
class _Expected:
    key: str
    size: int
    sha256: str


def _load_json(store: Store, key: str, retry: RetryPolicy) -> dict[str, Any]:
    raw = call_with_retry(lambda: store.get(key), key=key, op="get", retry=retry)
    try:
        doc: Any = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than Python parses
        doc = None
    if not isinstance(doc, dict):
        raise InputError(f"{key} in the store is not a JSON object; run `ursa-daemon reconstruct-manifest`", file=key)
    return doc


def _manifest(store: Store, rec_id: str, retry: RetryPolicy) -> tuple[str, dict[str, Any]]:
    """``(where, manifest)``: ``manifest.json``, else the merged node manifests."""
    key = rel_key(rec_id, MANIFEST_NAME)
    try:
        return key, _load_json(store, key, retry)
    except ObjectNotFound:
        pass
    prefix = rel_key(rec_id, NODE_MANIFEST_DIR) + "/"
    keys = sorted(m.key for m in store.list(prefix) if m.key.endswith(".json"))
    if not keys:
        raise ObjectNotFound(f"{rec_id}: neither {key} nor {prefix}*.json is in the store", key=key)
    return prefix, merge_node_manifests([_load_json(store, k, retry) for k in keys], rec_id)


def _expected(rec_id: str, where: str, doc: dict[str, Any]) -> tuple[list[_Expected], list[Problem]]:
    """The files the manifest vouches for, and the entries it cannot vouch for."""
    files, problems = [], []
    for entry in doc.get("files") or []:
        if not isinstance(entry, dict):
            problems.append(Problem(where, "manifest", "a files[] entry is not an object"))
            continue
        rel = check_rel_path(entry.get("rel_path"), rec_id, where)
        key = rel_key(rec_id, rel)
        sha, size = entry.get("sha256"), entry.get("size")
        if not isinstance(sha, str) or not _HEX64.match(sha) or not isinstance(size, int):
            problems.append(Problem(key, "manifest", f"{where} gives no size and sha256 for it (not augmented)"))
            continue
        files.append(_Expected(key, size, sha))
    return files, problems


def _check(store: Store, exp: _Expected, deep: bool, retry: RetryPolicy) -> Problem | None:
    try:
        meta = call_with_retry(lambda: store.head(exp.key), key=exp.key, op="head", retry=retry)
    except ObjectNotFound:
        return Problem(exp.key, "missing", exp.size, None)
    if meta.size != exp.size:
        return Problem(exp.key, "size", exp.size, meta.size)
    sha = None if deep else meta.sha256
    if sha is None:
        sha = call_with_retry(lambda: object_sha256(store, exp.key), key=exp.key, op="hash", retry=retry)
    return None if sha == exp.sha256 else Problem(exp.key, "sha256", exp.sha256, sha)


def _uncovered(data: Context, qr: QueryResult, files: Sequence[_Expected]) -> list[Problem]:
    """Cataloged modalities the manifest lists no file for."""
    problems = []
    for name, row in qr.modalities.items():
        _, prefix = parse_storage_uri(row.raw_storage_uri, data.profile)
        if not any(f.key.startswith(prefix) for f in files):
            why = f"modality {name!r} is cataloged but the manifest lists no file below it"
            problems.append(Problem(prefix, "manifest", why))
    return problems


def _duplicates(data: Context, qr: QueryResult) -> list[Problem]:
    """Catalog rows of this recording that share a primary key (``maintain`` repairs them)."""
    extra = data.catalog.duplicates_of(qr.recording_hash)
    return [Problem(f"catalog {table}", "duplicate", 0, n) for table, n in extra.items() if n]


def _verify_one(
    data: Context, qr: QueryResult, store: Store, *, deep: bool, concurrency: int, retry: RetryPolicy
) -> VerifyReport:
    where, doc = _manifest(store, qr.rec_id, retry)
    files, problems = _expected(qr.rec_id, where, doc)
    problems += _uncovered(data, qr, files)
    problems += _duplicates(data, qr)
    if where.endswith(MANIFEST_NAME) and not problems:  # (a dual-node late half keeps the first hash)
        rh = recording_hash(f.sha256 for f in files)
        if rh != qr.recording_hash:
            why = (
                f"its files hash to recording_hash {rh}, but the catalog row is {qr.recording_hash}: the session "
                "was replaced in the store after it was registered; re-ingest it with --overwrite"
            )
            problems.append(Problem(where, "manifest", why))
    with ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="ursa-verify") as pool:
        found = list(pool.map(lambda e: _check(store, e, deep, retry), files))
    problems += [p for p in found if p is not None]
    return VerifyReport(
        rec_id=qr.rec_id,
        recording_hash=qr.recording_hash,
        files_checked=len(files),
        bytes_checked=sum(f.size for f in files),
        problems=tuple(problems),
    )


def verify(
    data: Context,
    target: Any,
    *,
    deep: bool = False,
    concurrency: int = DEFAULT_VERIFY_CONCURRENCY,
    retry: RetryPolicy = DEFAULT_RETRY,
    on_report: Callable[[VerifyReport], None] | None = None,
) -> list[VerifyReport]:
    """One report per recording of ``target`` (a rec_id, a recording_hash or query results)."""
    store = data.store(Role.RAW_RO)
    reports: list[VerifyReport] = []
    results: Sequence[QueryResult] = resolve_targets(data, target)
    for qr in results:
        report = _verify_one(data, qr, store, deep=deep, concurrency=concurrency, retry=retry)
        reports.append(report)
        if on_report is not None:
            on_report(report)
    return reports
