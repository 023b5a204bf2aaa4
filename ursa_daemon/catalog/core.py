"""The catalog handle's core: open a catalog, its tables, maintenance and the low-level reads.

:class:`~ursa_daemon.catalog.handle.Catalog` adds the public reads
(:mod:`~ursa_daemon.catalog.reads`) and writes (:mod:`~ursa_daemon.catalog.writes`)
on top of :class:`CatalogCore`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol, Self

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.compute as pc  # type: ignore[import-untyped]

from ursa_daemon.catalog._lance_import import import_lancedb
from ursa_daemon.catalog._loop import EventLoop, T, event_loop, process_commits
from ursa_daemon.catalog.lance import (
    CREATE_ATTEMPTS,
    LANCE_ERRORS,
    checkout_latest,
    ensure_indexes,
    is_commit_conflict,
    lance_errors,
    list_tables,
    open_table,
    redact,
)
from ursa_daemon.catalog.queries import IN_PUSHDOWN_MAX, chunks, in_list, sql_and, sql_literal
from ursa_daemon.catalog.rows import one_per_key
from ursa_daemon.catalog.schema import SPECS, TABLE_NAMES, TableSpec, from_arrow
from ursa_daemon.errors import CatalogError, WritesNotEnabled

if TYPE_CHECKING:
    from lancedb.db import AsyncConnection
    from lancedb.table import AsyncTable


#: How stale a read may be: tables re-check their latest version at most this often.
#: Writes always re-check before their conflict checks, whatever this is.
DEFAULT_READ_CONSISTENCY = timedelta(seconds=5)

#: Rows per Arrow batch handed back by a scan (see ``CatalogCore._ascan``).
_MAX_BATCH_ROWS = 1 << 20


class HeldLock(Protocol):
    """What a commit lock's holder can ask while it holds it."""

    def overran(self) -> bool:
        """Held past its time budget: another writer may have taken it over meanwhile."""
        ...


#: ``commit_lock()`` is a context manager holding the catalog's commit lock for its block
#: (see :mod:`ursa_daemon.catalog.writes`); it raises :class:`CatalogError` when it cannot.
CommitLock = Callable[[], contextlib.AbstractContextManager[HeldLock]]


class CatalogCore:
    """A LanceDB catalog at one URI: the connection, its tables and the low-level reads.

    LanceDB is driven through its async API on one background event loop
    (:mod:`ursa_daemon.catalog._loop`), which lets the two reads of a point lookup
    run concurrently.
    """

    def __init__(
        self,
        db: AsyncConnection,
        *,
        uri: str,
        existing: set[str],
        writable: bool,
        loop: EventLoop,
        commit_lock: CommitLock | None = None,
    ) -> None:
        self._db = db
        self._commit_lock = commit_lock
        self._uri = uri
        self._existing = existing
        self._writable = writable
        self._loop = loop
        self._tables: dict[str, AsyncTable] = {}
        self._seen_commits = process_commits(uri)
        self._open_lock = threading.Lock()
        self._write_lock = threading.RLock()
        self._held: HeldLock | None = None  # the commit lock, while this handle's writer holds it

    # -- opening ------------------------------------------------------------

    @classmethod
    def open(
        cls,
        uri: str,
        *,
        storage_options: dict[str, str] | None = None,
        writable: bool = True,
        read_consistency_interval: timedelta | None = DEFAULT_READ_CONSISTENCY,
        commit_lock: CommitLock | None = None,
    ) -> Self:
        """Open the catalog at ``uri`` (a local directory or ``s3://bucket/prefix``).

        Missing tables are created (with their indexes) when ``writable``; tables
        that exist are opened lazily, on first use. A read-only catalog treats a
        missing table as empty and refuses writes with :class:`WritesNotEnabled`.

        ``storage_options`` takes Lance's keys: ``aws_access_key_id``,
        ``aws_secret_access_key``, ``aws_session_token``, ``aws_endpoint``,
        ``aws_region``, ``allow_http``. On ``s3://`` Lance commits a version by
        writing its manifest with a conditional PUT (``If-None-Match: *``), so two
        writers never overwrite each other's commit: the loser re-reads and
        retries. AWS S3 and R2 both honour it; a store that ignores the header is
        safe for one writer only.

        ``read_consistency_interval``: how stale a read may be (None: never look
        for other processes' commits; call :meth:`refresh`).

        ``commit_lock``: the lock every writer of this catalog takes around its
        check-and-commit (:mod:`ursa_daemon.catalog.writes` says why); without one, only the
        writers of this process are serialised.
        """
        lancedb = import_lancedb()  # here, not at import: the upload path never pays for it

        loop = event_loop()
        with lance_errors(f"open catalog {redact(uri)}", role="assets_rw" if writable else "assets_ro"):
            db = loop.run(
                lancedb.connect_async(
                    uri, storage_options=storage_options, read_consistency_interval=read_consistency_interval
                )
            )
            existing = loop.run(list_tables(db))
        catalog = cls(db, uri=uri, existing=existing, writable=writable, loop=loop, commit_lock=commit_lock)
        if writable:
            for name in TABLE_NAMES:
                if name not in existing:
                    catalog._create_table(SPECS[name])
        return catalog

    @property
    def uri(self) -> str:
        return self._uri

    @property
    def writable(self) -> bool:
        return self._writable

    def _run(self, coro: Coroutine[Any, Any, T], action: str) -> T:
        if self._loop.pid != os.getpid():
            coro.close()
            raise CatalogError(f"{action}: this catalog was opened before a fork; open it again in this process")
        with lance_errors(action, role="assets_rw" if self._writable else "assets_ro"):
            return self._loop.run(coro)

    def _create_table(self, spec: TableSpec) -> None:
        async def create() -> AsyncTable:
            # two writers opening an empty catalog at once race to create the same tables and
            # indexes: the loser's commit conflicts; it opens the winner's table and checks again
            for attempt in range(CREATE_ATTEMPTS):
                try:
                    table = await self._db.create_table(spec.name, schema=spec.schema, exist_ok=True)
                    await ensure_indexes(table, spec)
                    return table
                except LANCE_ERRORS as exc:
                    if attempt + 1 == CREATE_ATTEMPTS or not is_commit_conflict(exc):
                        raise
                    await asyncio.sleep(0.05 * (attempt + 1))
            raise AssertionError("unreachable")

        self._tables[spec.name] = self._run(create(), f"create table {spec.name}")
        self._existing.add(spec.name)

    def _table(self, spec: TableSpec) -> AsyncTable | None:
        self._catch_up()
        table = self._tables.get(spec.name)
        if table is not None:
            return table
        with self._open_lock:
            if spec.name not in self._tables:
                if spec.name not in self._existing:
                    return None
                self._tables[spec.name] = self._run(open_table(self._db, spec), f"open table {spec.name}")
            return self._tables[spec.name]

    def _catch_up(self) -> None:
        """Read our own process's writes: refresh after a commit through another handle.

        (The read-only and read-write handles of one process are separate catalogs.)
        """
        latest = process_commits(self._uri)
        if latest != self._seen_commits:
            self._seen_commits = latest
            self._checkout_latest(list(self._tables.values()))

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[HeldLock | None]:
        """This handle's write lock, then the catalog's commit lock (when it has one)."""
        with self._write_lock:
            if self._commit_lock is None or self._held is not None:  # none, or already ours (nested)
                yield self._held
                return
            with self._commit_lock() as held:
                self._held = held
                try:
                    yield held
                finally:
                    self._held = None

    def _writable_table(self, spec: TableSpec) -> AsyncTable:
        if not self._writable:
            raise WritesNotEnabled(f"catalog {redact(self._uri)} was opened read-only; {spec.name} cannot be written")
        table = self._table(spec)
        if table is None:  # writable catalogs create every table on open
            raise CatalogError(f"table {spec.name} is missing from {redact(self._uri)}")
        return table

    # -- maintenance ----------------------------------------------------------

    def table_versions(self) -> dict[str, int]:
        """The current version of every table (0 for a table that does not exist)."""
        out: dict[str, int] = {}
        for name, spec in SPECS.items():
            table = self._table(spec)
            out[name] = self._run(table.version(), f"version of {name}") if table is not None else 0
        return out

    def refresh(self) -> None:
        """See every commit made so far, by any process."""
        self._checkout_latest(list(self._tables.values()))

    def optimize(self, *, keep_versions: timedelta | None = None) -> None:
        """Compact small fragments, bring every index up to date with new rows, and remove
        the table versions superseded more than ``keep_versions`` ago (None: Lance's 7 days).

        Queries are correct without it (unindexed rows are scanned); it keeps them fast.
        Run it from one place at a time (``ursa-daemon maintain`` holds a lease for that);
        a commit that loses to a concurrent writer's is retried against the new version.
        """

        async def optimize(table: AsyncTable, spec: TableSpec) -> None:
            for attempt in range(CREATE_ATTEMPTS):
                try:
                    await checkout_latest(table)
                    await table.optimize(cleanup_older_than=keep_versions)
                    await ensure_indexes(table, spec)
                    return
                except LANCE_ERRORS as exc:
                    if attempt + 1 == CREATE_ATTEMPTS or not is_commit_conflict(exc):
                        raise
                    await asyncio.sleep(0.05 * (attempt + 1))

        for spec in SPECS.values():
            table = self._writable_table(spec)
            with self._write_lock:
                self._run(optimize(table, spec), f"optimize {spec.name}")

    # -- low-level reads --------------------------------------------------------

    async def _ascan(
        self,
        spec: TableSpec,
        table: AsyncTable | None,
        where: str | None,
        *,
        columns: Sequence[str] | None = None,
        limit: int | None = None,
        order_by: Sequence[str] | None = None,
    ) -> pa.Table:
        cols = list(columns) if columns is not None else spec.columns
        if table is None:
            return spec.schema.empty_table().select(cols)  # a missing table reads as empty
        query = table.query().select(cols)
        if where:
            query = query.where(where)
        if order_by:
            from lancedb.query import ColumnOrdering

            query = query.order_by([ColumnOrdering(column_name=c) for c in order_by])
        if limit is not None:
            query = query.limit(limit)
        # Lance's default batches are ~1k rows, and each one costs a hop through the
        # event loop: a 100k-row scan took 29 ms that way and 2 ms in one batch.
        reader = await query.to_batches(max_batch_length=_MAX_BATCH_ROWS)
        return pa.Table.from_batches(await reader.read_all(), schema=reader.schema)

    def _scan(
        self,
        spec: TableSpec,
        where: str | None,
        *,
        columns: Sequence[str] | None = None,
        limit: int | None = None,
        order_by: Sequence[str] | None = None,
    ) -> pa.Table:
        """Rows of ``spec`` matching ``where`` as Arrow; filter, order and limit run in Lance."""
        coro = self._ascan(spec, self._table(spec), where, columns=columns, limit=limit, order_by=order_by)
        return self._run(coro, f"read {spec.name}")

    def _scan_many(self, spec: TableSpec, wheres: Sequence[str | None]) -> list[pa.Table]:
        """Several filtered reads of one table, run concurrently."""
        table = self._table(spec)

        async def scan_all() -> list[pa.Table]:
            return list(await asyncio.gather(*(self._ascan(spec, table, w) for w in wheres)))

        return self._run(scan_all(), f"read {spec.name}")

    def _rows(self, spec: TableSpec, where: str | None, *, limit: int | None = None) -> list[Any]:
        order = spec.pk if limit is not None else None
        result = self._scan(spec, where, limit=limit, order_by=order)
        if order is None and result.num_rows > 1:
            result = result.sort_by([(c, "ascending") for c in spec.pk])
        return one_per_key(from_arrow(spec, result))

    def _get(self, spec: TableSpec, **key: Any) -> Any:
        rows = self._rows(spec, sql_and(f"{c} = {sql_literal(key[c])}" for c in spec.pk))
        return rows[0] if rows else None

    def _scan_in(self, spec: TableSpec, column: str, values: Sequence[Any], also: str | None = None) -> list[pa.Table]:
        """Rows whose ``column`` is in ``values`` (and match ``also``).

        Short lists go to Lance as ``IN`` filters (index lookups); long ones as one
        scan filtered in Arrow, cheaper than tens of thousands of literals.
        """
        if not values:
            return []
        if len(values) > IN_PUSHDOWN_MAX:
            found = self._scan(spec, also)
            value_set = pa.array(list(values), type=spec.column_type(column))
            return [found.filter(pc.is_in(found.column(column), value_set=value_set))]
        return self._scan_many(spec, [sql_and([in_list(column, chunk), also]) for chunk in chunks(values)])

    def _fetch_by_keys(self, spec: TableSpec, keys: Sequence[tuple[Any, ...]]) -> dict[tuple[Any, ...], Any]:
        """Stored rows for ``keys`` (filtered on the first key column, exact-matched here)."""
        wanted = set(keys)
        firsts = sorted({k[0] for k in wanted})
        found: dict[tuple[Any, ...], Any] = {}
        for table in self._scan_in(spec, spec.pk[0], firsts):
            for row in one_per_key(from_arrow(spec, table)):
                key = row.primary_key()
                if key in wanted:
                    found[key] = row
        return found

    def _refresh(self, *specs: TableSpec) -> None:
        self._checkout_latest([self._writable_table(spec) for spec in specs])

    def _checkout_latest(self, tables: Sequence[AsyncTable]) -> None:
        async def refresh_all() -> None:
            await asyncio.gather(*(checkout_latest(t) for t in tables))

        self._run(refresh_all(), "refresh tables")
