"""``ursa-daemon fleet``: every rig's status document read back, and what needs attention.

:func:`read_fleet` lists ``ursa/rigs/*.json`` (written by each rig's
:class:`~ursa_daemon.daemon.rigs.RigReporter`) and reads each; a document that is not a
rig's is reported, never an error. :func:`assess` marks a rig stale (no status for
``stale_after_s``; a finished ``drain`` is never stale) and lists why it needs attention:
stale, failing or rejected sessions, a session pending longer than ``max_age_s``.
Documents are hostile input: every field is checked for its type before use.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ursa_daemon.daemon.rigs import RIGS_PREFIX, parse_iso

if TYPE_CHECKING:
    from ursa_daemon.store import Store

__all__ = ["MAX_DOC_BYTES", "FleetEntry", "assess", "finite", "read_fleet"]

#: a document larger than this is not a rig's (read no further)
MAX_DOC_BYTES = 256 << 10


@dataclass
class FleetEntry:
    """One rig document as read, with what ``fleet`` concludes of it."""

    rig_id: str
    doc: dict[str, Any]
    stale: bool = False
    needs_attention: list[str] = field(default_factory=list)
    #: why the document could not be read (then ``doc`` is empty)
    unreadable: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {key: self.doc.get(key) for key in _DOC_KEYS}
        out.update({k: v for k, v in self.doc.items() if k not in out})
        out["rig_id"] = self.rig_id
        out["stale"] = self.stale
        out["needs_attention"] = list(self.needs_attention)
        if self.unreadable:
            out["unreadable"] = self.unreadable
        return out


_DOC_KEYS = (
    "rig_id", "host", "version", "started_at", "written_at", "counts", "pending_sessions", "pending_bytes",
    "oldest_pending", "last_registration_at", "last_error", "recording", "paused", "free_bytes",
    "upload_rate_bytes_per_s",
)


def read_fleet(store: Store) -> Iterator[FleetEntry]:
    """Every ``ursa/rigs/*.json`` of the assets bucket, in rig id order; a document that is not a
    rig's (too big, not JSON, not an object) is an entry with ``unreadable`` set, never an error."""
    from ursa_daemon.errors import ObjectNotFound

    metas = sorted((m for m in store.list(RIGS_PREFIX) if m.key.endswith(".json")), key=lambda m: m.key)
    for meta in metas:
        name = meta.key[len(RIGS_PREFIX):-len(".json")]
        if "/" in name or not name:
            continue
        if meta.size > MAX_DOC_BYTES:
            yield FleetEntry(name, {}, unreadable=f"{meta.size} bytes: larger than a rig document")
            continue
        try:
            raw = store.get(meta.key)
        except ObjectNotFound:
            continue  # removed between the listing and the read
        try:
            doc = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            yield FleetEntry(name, {}, unreadable=f"not JSON ({exc.__class__.__name__})")
            continue
        if not isinstance(doc, dict):
            yield FleetEntry(name, {}, unreadable="not a JSON object")
            continue
        yield FleetEntry(name, doc)


def _obj(v: object) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}


def finite(v: object) -> float | None:
    """A finite number, else None (a document may hold ``Infinity``, ``NaN``, strings...)."""
    if not isinstance(v, int | float) or isinstance(v, bool):
        return None
    try:
        f = float(v)  # an int too large for a float raises
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def assess(entry: FleetEntry, *, now: float, stale_after_s: float, max_age_s: float) -> FleetEntry:
    """Fill ``stale`` and ``needs_attention`` (each reason a sentence naming the rig's problem)."""
    reasons: list[str] = []
    doc = entry.doc
    if entry.unreadable:
        entry.stale = True
        entry.needs_attention = [f"status document unreadable: {entry.unreadable}"]
        return entry
    written = parse_iso(doc.get("written_at"))
    finished_drain = doc.get("command") == "drain" and doc.get("running") is False
    if written is None:
        entry.stale = True
        reasons.append("status document has no valid written_at")
    elif not finished_drain and now - written > stale_after_s:
        entry.stale = True
        what = "stopped" if doc.get("running") is False else "not seen"
        reasons.append(f"{what} for {_ago(now - written)} (last status {doc.get('written_at')})")
    counts = _obj(doc.get("counts"))
    failed = finite(counts.get("failed")) or 0
    rejected = finite(counts.get("rejected")) or 0
    last_error = _obj(doc.get("last_error"))
    if failed:
        reasons.append(f"{int(failed)} session(s) failing" + _error_hint(last_error))
    if rejected:
        reasons.append(f"{int(rejected)} session(s) rejected (see `ursa-daemon status` on the rig)")
    oldest = _obj(doc.get("oldest_pending"))
    age = finite(oldest.get("age_s"))
    if age is not None and written is not None:
        age += max(0.0, now - written)  # the document's age adds to the session's
    if age is not None and age > max_age_s:
        reasons.append(f"session {oldest.get('rec_id')} pending for {_ago(age)} (more than {_ago(max_age_s)})")
    entry.needs_attention = reasons
    return entry


def _error_hint(last_error: dict[str, Any]) -> str:
    if not last_error.get("rec_id"):
        return ""
    text = str(last_error.get("error") or "")
    return f"; last: {last_error.get('rec_id')}: {text[:160]}"


def _ago(seconds: float) -> str:
    s = max(0, int(seconds))
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} d"
