"""What the daemon reports: one session's :class:`Outcome`, a drain's :class:`DrainSummary`.

These are the result types the loops (``worker``, ``drain``, ``watch``) and ``metrics``
share; they import nothing of the daemon, so every module of the folder can use them.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ursa_daemon.errors import UrsaError

if TYPE_CHECKING:
    from ursa_daemon.catalog import SessionRows

__all__ = ["INCOMPLETE_HINT", "DrainSummary", "Outcome", "one_line"]


@dataclass
class Outcome:
    """What one ``process`` call did to a session."""

    rec_id: str
    status: str  # registered, already_registered, paused, failed, rejected, registering, waiting, incomplete
    error: str | None = None
    files_uploaded: int = 0
    files_skipped: int = 0
    bytes_uploaded: int = 0
    #: with ``process(defer_register=True)``: every byte is in, these rows wait for a batch
    pending: SessionRows | None = field(default=None, repr=False)
    started: float = field(default=0.0, repr=False)


#: the hint of a session ``drain`` found without a manifest (SPEC section 5: ``incomplete``)
INCOMPLETE_HINT = (
    "no manifest.json yet: still being recorded (drain it again once the rig has finished), or the rig "
    "died; if it will never write one, run `ursa-daemon reconstruct-manifest {path}` and drain again"
)


@dataclass
class DrainSummary:
    """What ``drain`` did: every session it was given is in exactly one list (SPEC section 5)."""

    registered: list[str] = field(default_factory=list)
    already_registered: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    rejected: list[dict[str, str]] = field(default_factory=list)
    #: no manifest yet: being recorded, or a rig that died (not an error)
    incomplete: list[dict[str, str]] = field(default_factory=list)
    #: started, not finished when a signal stopped the drain (its progress is kept)
    interrupted: list[str] = field(default_factory=list)
    #: never reached before a signal stopped the drain
    not_started: list[str] = field(default_factory=list)
    #: stopped by an upload window that closed (not a signal): continued by the next run
    paused: list[str] = field(default_factory=list)
    #: dual-node halves uploaded and waiting for another node's half (not a failure)
    waiting: list[dict[str, str]] = field(default_factory=list)
    files_uploaded: int = 0
    files_skipped: int = 0
    bytes_uploaded: int = 0
    elapsed_s: float = 0.0
    #: the signal that stopped the drain (``SIGINT``/``SIGTERM``), if one did
    stopped_by: str | None = None
    #: every session the drain was given, in order, and those it began
    given: list[str] = field(default_factory=list, repr=False)
    started: set[str] = field(default_factory=set, repr=False)

    def add(self, o: Outcome) -> None:
        if o.status in ("registered", "already_registered"):
            getattr(self, o.status).append(o.rec_id)
        elif o.status in ("failed", "rejected", "waiting"):
            getattr(self, o.status).append({"rec_id": o.rec_id, "error": o.error or ""})
        elif o.status == "incomplete":
            self.incomplete.append({"rec_id": o.rec_id, "hint": o.error or ""})
        elif o.status == "paused":
            (self.interrupted if self.stopped_by else self.paused).append(o.rec_id)
        self.files_uploaded += o.files_uploaded
        self.files_skipped += o.files_skipped
        self.bytes_uploaded += o.bytes_uploaded

    def accounted(self) -> set[str]:
        """Every rec_id already in one of the lists."""
        out = set(self.registered) | set(self.already_registered) | set(self.interrupted)
        out |= set(self.not_started) | set(self.paused)
        for items in (self.failed, self.rejected, self.incomplete, self.waiting):
            out |= {i["rec_id"] for i in items}
        return out

    def account_unfinished(self) -> None:
        """Put every given session not in a list yet under ``interrupted`` (begun) or ``not_started``."""
        done = self.accounted()
        for rec_id in self.given:
            if rec_id not in done:
                (self.interrupted if rec_id in self.started else self.not_started).append(rec_id)
                done.add(rec_id)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.rejected

    @property
    def exit_code(self) -> int:
        """130/143 when a signal stopped it before every session was finished, else 1 on any
        failed or rejected session, else 0 (SPEC section 5)."""
        if self.stopped_by is not None and (self.interrupted or self.not_started):
            return 128 + int(signal.Signals[self.stopped_by])
        return 0 if self.ok else 1

    def as_json(self) -> dict[str, Any]:
        return {
            "registered": self.registered,
            "already_registered": self.already_registered,
            "failed": self.failed,
            "rejected": self.rejected,
            "incomplete": self.incomplete,
            "interrupted": self.interrupted,
            "not_started": self.not_started,
            "paused": self.paused,
            "waiting": self.waiting,
            "files_uploaded": self.files_uploaded,
            "files_skipped": self.files_skipped,
            "bytes_uploaded": self.bytes_uploaded,
            "elapsed_s": round(self.elapsed_s, 3),
            "stopped_by": self.stopped_by,
        }


def one_line(reason: BaseException | str) -> str:
    """One printable line for ``status`` and the logs: an exception as ``Type: message`` (an
    ``UrsaError`` as its message alone), line breaks folded, bytes that are not UTF-8 escaped."""
    if isinstance(reason, BaseException):
        text = str(reason) if isinstance(reason, UrsaError) else f"{type(reason).__name__}: {reason}"
    else:
        text = reason
    text = " ".join(text.split()) or "unknown error"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")[:2000]
