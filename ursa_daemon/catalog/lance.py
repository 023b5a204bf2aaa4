"""The LanceDB boundary: table helpers over the async API, and error translation.

LanceDB's exceptions become :class:`CatalogError` here (``lance_errors``); a
refusal by the store becomes :class:`CatalogPermissionError` without the storage
engine's text.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ursa_daemon.catalog._lance_import import import_lancedb
from ursa_daemon.catalog.schema import IndexKind, TableSpec
from ursa_daemon.errors import CatalogError, CatalogPermissionError

if TYPE_CHECKING:
    from lancedb.db import AsyncConnection
    from lancedb.index import Bitmap, BTree, LabelList
    from lancedb.table import AsyncTable


LANCE_ERRORS = (ValueError, RuntimeError, OSError)


def index_config(kind: IndexKind) -> BTree | Bitmap | LabelList:
    import_lancedb()
    from lancedb.index import Bitmap, BTree, LabelList

    if kind == "BTREE":
        return BTree()
    return Bitmap() if kind == "BITMAP" else LabelList()


async def list_tables(db: AsyncConnection) -> set[str]:
    names: set[str] = set()
    token: str | None = None
    while True:
        page = await db.list_tables(page_token=token)
        names.update(page.tables)
        token = page.page_token
        if not token:
            return names


async def open_table(db: AsyncConnection, spec: TableSpec) -> AsyncTable:
    """Open ``spec``'s table and check it has every column we read and write."""
    table = await db.open_table(spec.name)
    present = set((await table.schema()).names)
    missing = [c for c in spec.schema.names if c not in present]
    if missing:
        raise CatalogError(
            f"table {spec.name} lacks columns {missing}: it was made by another version of "
            "ursa-daemon; migrate it or point ACTIVE.json at a new catalog"
        )
    return table


async def checkout_latest(table: AsyncTable) -> None:
    """Move ``table`` to its newest version (LanceDB leaves this method untyped)."""
    await table.checkout_latest()  # type: ignore[no-untyped-call]


async def ensure_indexes(table: AsyncTable, spec: TableSpec) -> None:
    """Create the scalar indexes of ``spec`` that ``table`` lacks (an empty table can be indexed)."""
    indexed = {tuple(ix.columns) for ix in await table.list_indices()}
    for column, kind in spec.indexes:
        if (column,) not in indexed:
            await table.create_index(column, config=index_config(kind), replace=False)


CREATE_ATTEMPTS = 5


def is_commit_conflict(exc: BaseException) -> bool:
    """Lance's "another writer committed first" (it says retryable), not a real failure."""
    text = str(exc).lower()
    return "commit conflict" in text or "concurrent transaction" in text


def redact(uri: str) -> str:
    """The URI without any query string (which could hold a signature)."""
    return uri.split("?", 1)[0]


#: what Lance's object store says when the server answered 401/403
_DENIED_MARKERS = ("lacked the necessary privileges", "403 Forbidden", "AccessDenied", "401 Unauthorized")


@contextmanager
def lance_errors(action: str, *, role: str = "assets_rw") -> Iterator[None]:
    """Translate LanceDB's exceptions into :class:`CatalogError` at the boundary.

    A refusal by the store becomes :class:`CatalogPermissionError` naming ``role``
    and the fix, without the storage engine's text.
    """
    try:
        yield
    except CatalogError:
        raise
    except LANCE_ERRORS as exc:
        if any(m in str(exc) for m in _DENIED_MARKERS):
            raise CatalogPermissionError(action, role) from None
        if "Resources exhausted" in str(exc):
            raise CatalogError(f"{action}: {_pool_too_small()}; Lance said: {exc}") from exc
        raise CatalogError(f"{action}: {exc}") from exc


def _pool_too_small() -> str:
    pool = os.environ.get("LANCE_MEM_POOL_SIZE", "?")
    return (
        f"Lance's memory pool (LANCE_MEM_POOL_SIZE={pool} bytes) is too small for this table; "
        "set LANCE_MEM_POOL_SIZE to a larger byte count (e.g. 4294967296) in the environment of "
        "`ursa-daemon maintain` (its systemd unit) and run it again"
    )
