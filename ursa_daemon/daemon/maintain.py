"""Catalog maintenance as one job: duplicate repair, compaction, index refresh, cleanup
of old versions.

Daemons only append (one small commit per table per session or batch); they never
compact or re-index, so N rigs never fight over it. ``ursa-daemon maintain`` does it,
from one machine's timer (``systemd/ursa-daemon-maintain.timer``), and only while it
holds the lease ``ursa/maintenance.lease`` in the assets bucket: taken by an atomic
create (``If-None-Match: *`` on S3/R2, an exclusive create on a local store), so two
``maintain`` runs (a second machine's timer, an operator by hand) never work at once;
the loser exits 3 naming the holder. A lease outlives a holder that died by its
``expires_at`` (the job's time budget), or at once when it ran on this host and its
process is gone (:mod:`ursa_daemon.store.lease`); then the next run takes it over, and only one
may: it first creates, also atomically, a takeover marker named after that expired
lease's bytes (``ursa/maintenance.takeover/<sha256>``), and only the run that created
it deletes the expired lease and takes its own. Two runs that find the same expired
lease at once race for the marker; the loser exits 3. Markers stay (one per crashed
holder, a few bytes): a late run that read the old lease must still find it taken.

Old versions: Lance keeps every table version (a manifest plus the files only it
references) so readers can still read the version they started on. A version is
removed only once it has been superseded for longer than ``keep_versions`` (default
24 h, at least 1 h). Readers move to the latest version at least every few seconds
(``Catalog.open``'s read-consistency interval) and a query lasts seconds, so no
reader can still need a version superseded that long ago.

Duplicates: first, every table's key column is scanned for keys held by more than one
row (a writer of an older release, a writer that overran the commit lock, a catalog from
before it); each is repaired to one row under the commit lock
(:mod:`ursa_daemon.catalog.repair`: the earliest registered stands, identical or merged by
the table's policy; a true conflict stands as the earliest too, and the removed rows are
logged whole at ERROR and returned in the report). Compaction and index updates run
without the commit lock: they never add rows, and Lance re-runs a writer's commit that
overlaps them (:mod:`ursa_daemon.catalog.writes`), so a rig never waits for maintenance.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from ursa_daemon.errors import UrsaError
from ursa_daemon.log import get_logger
from ursa_daemon.store.lease import Lease

if TYPE_CHECKING:
    from ursa_daemon.catalog.repair import DuplicateRepair
    from ursa_daemon.store import Store
    from ursa_daemon.transfer.context import Context

__all__ = [
    "DEFAULT_KEEP_VERSIONS",
    "DEFAULT_LEASE",
    "LEASE_KEY",
    "TAKEOVER_PREFIX",
    "MIN_KEEP_VERSIONS",
    "LeaseHeld",
    "MaintainReport",
    "maintain",
]

log = get_logger("ursa.maintain")

LEASE_KEY = "ursa/maintenance.lease"
#: one marker per expired lease taken over: ``<TAKEOVER_PREFIX><sha256 of its bytes>``
TAKEOVER_PREFIX = "ursa/maintenance.takeover/"
#: how long a lease holds without its holder (a maintenance run takes seconds to minutes)
DEFAULT_LEASE = timedelta(hours=1)
DEFAULT_KEEP_VERSIONS = timedelta(hours=24)
MIN_KEEP_VERSIONS = timedelta(hours=1)


class LeaseHeld(UrsaError):
    """Another maintenance run holds the lease (exit 3, like a held state lock)."""


@dataclass
class MaintainReport:
    holder: str
    keep_versions_s: float
    elapsed_s: float = 0.0
    versions_before: dict[str, int] = field(default_factory=dict)
    versions_after: dict[str, int] = field(default_factory=dict)
    #: per table, rows beyond one that shared a primary key before the repair
    duplicates_found: dict[str, int] = field(default_factory=dict)
    #: per table, those left after it (0 unless the repair failed)
    duplicates_left: dict[str, int] = field(default_factory=dict)
    repairs: list[DuplicateRepair] = field(default_factory=list)

    @property
    def duplicates_removed(self) -> int:
        return sum(len(r.removed) for r in self.repairs)

    @property
    def conflicts(self) -> list[DuplicateRepair]:
        return [r for r in self.repairs if r.how == "conflict"]

    def as_json(self) -> dict[str, Any]:
        return {
            "holder": self.holder,
            "keep_versions_s": self.keep_versions_s,
            "elapsed_s": round(self.elapsed_s, 3),
            "versions_before": self.versions_before,
            "versions_after": self.versions_after,
            "duplicates_found": self.duplicates_found,
            "duplicates_removed": self.duplicates_removed,
            "duplicates_left": self.duplicates_left,
            "conflicts": len(self.conflicts),
            "repairs": [r.as_json() for r in self.repairs],
        }


def _log_repair(repair: DuplicateRepair) -> None:
    from ursa_daemon.catalog.repair import log_repair

    log_repair(repair, after="maintain")


def maintain(
    data: Context,
    *,
    keep_versions: timedelta = DEFAULT_KEEP_VERSIONS,
    lease: timedelta = DEFAULT_LEASE,
) -> MaintainReport:
    """Take the lease, compact every table, bring its indexes up to date, remove versions
    superseded more than ``keep_versions`` ago, give the lease back.

    Raises :class:`LeaseHeld` when another run holds the lease, ``ValueError`` for a
    ``keep_versions`` under :data:`MIN_KEEP_VERSIONS`.
    """
    if keep_versions < MIN_KEEP_VERSIONS:
        raise ValueError(f"keep_versions must be at least {MIN_KEEP_VERSIONS}, not {keep_versions}")
    data.enable_writes(roles=("assets_rw",))
    store = data.store("assets_rw")
    holder = f"{socket.gethostname()}:{os.getpid()}:{time.time_ns()}"
    _take_lease(store, holder, lease)
    report = MaintainReport(holder=holder, keep_versions_s=keep_versions.total_seconds())
    started = time.monotonic()
    try:
        catalog = data.write_catalog()
        catalog.refresh()
        report.versions_before = catalog.table_versions()
        log.info("catalog.maintenance_started", holder=holder)
        report.duplicates_found = catalog.count_duplicates()
        if any(report.duplicates_found.values()):
            report.repairs = catalog.repair_duplicates([t for t, n in report.duplicates_found.items() if n])
            for repair in report.repairs:
                _log_repair(repair)
        catalog.optimize(keep_versions=keep_versions)
        report.duplicates_left = catalog.count_duplicates() if report.repairs else dict(report.duplicates_found)
        report.versions_after = catalog.table_versions()
    finally:
        _give_back(store, holder)
    report.elapsed_s = time.monotonic() - started
    log.info("catalog.maintained", holder=holder, elapsed_s=round(report.elapsed_s, 3))
    return report


def _lease(store: Store, holder: str, lease: timedelta) -> Lease:
    return Lease(store, LEASE_KEY, TAKEOVER_PREFIX, lease.total_seconds(), holder=holder)


def _take_lease(store: Store, holder: str, lease: timedelta) -> None:
    """Take the maintenance lease now, or raise :class:`LeaseHeld` naming its holder."""
    taker = _lease(store, holder, lease)
    current = taker.try_take()
    if taker.took_over is not None:
        log.warning("catalog.lease_expired", holder=taker.took_over.holder)
    if current is None:
        log.info("catalog.lease_taken", holder=holder)
        return
    if current.expired(time.time()):
        raise LeaseHeld(
            f"catalog maintenance lease {store.uri(LEASE_KEY)} of {current.holder} expired and another run "
            "is taking it over; nothing done"
        )
    raise LeaseHeld(
        f"catalog maintenance is already running ({current.holder}, lease {store.uri(LEASE_KEY)} until "
        f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(current.expires_at))}); nothing done"
    )


def _give_back(store: Store, holder: str) -> None:
    _lease(store, holder, DEFAULT_LEASE).give_back()
