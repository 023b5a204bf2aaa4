"""The :class:`Catalog` handle: the core (opening, tables, scans) plus the public reads and writes."""

from __future__ import annotations

from ursa_daemon.catalog.reads import CatalogReads
from ursa_daemon.catalog.writes import CatalogWrites


class Catalog(CatalogWrites, CatalogReads):
    """A LanceDB catalog at one URI. Open with :meth:`open`; thread-safe.

    Reads are in :class:`~ursa_daemon.catalog.reads.CatalogReads`, writes in
    :class:`~ursa_daemon.catalog.writes.CatalogWrites`, both over
    :class:`~ursa_daemon.catalog.core.CatalogCore`.
    """
