"""``ursa.query``: the seeds' former module of the query types (see :mod:`ursa._query_types`)."""

from __future__ import annotations

from ursa._query_types import QueryResult, QueryResultList, QuerySpec

__all__ = ["QueryResult", "QueryResultList", "QuerySpec"]
