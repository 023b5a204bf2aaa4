"""``ursa._query_types``: the query's types where the seeds' modules import them from."""

from __future__ import annotations

from ursa._query import QueryResultList, QuerySpec
from ursa_daemon.api import QueryResult

__all__ = ["QueryResult", "QueryResultList", "QuerySpec"]
