"""SQL filters for Lance: values are always quoted here, never interpolated raw.

Column names in the dict form of ``where`` are checked against the table's schema.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]

from ursa_daemon.catalog.rows import dump_json
from ursa_daemon.catalog.schema import TableSpec

#: Values per ``IN (...)`` list; longer lists are split into several queries.
IN_CHUNK = 1000
#: Above this many keys, filter in Arrow after a narrow scan instead of an ``IN`` list.
IN_PUSHDOWN_MAX = 2000


def sql_literal(value: Any) -> str:
    """A Lance SQL literal for ``value``; strings are single-quoted with ``'`` doubled."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, str):  # StrEnum included
        return "'" + str(value).replace("'", "''") + "'"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot filter on a non-finite float: {value!r}")
        return repr(value)
    raise TypeError(f"cannot use a {type(value).__name__} as a filter value")


def in_list(column: str, values: Iterable[Any]) -> str:
    items = list(values)
    if not items:
        return "FALSE"
    if len(items) == 1:
        return f"{column} = {sql_literal(items[0])}"
    return f"{column} IN ({', '.join(sql_literal(v) for v in items)})"


def has_any(column: str, values: Iterable[str]) -> str:
    items = list(values)
    if not items:
        return "FALSE"
    return f"array_has_any({column}, [{', '.join(sql_literal(v) for v in items)}])"


def sql_and(clauses: Iterable[str | None]) -> str | None:
    parts = [c for c in clauses if c]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    return " AND ".join(f"({c})" for c in parts)


def _is_many(value: Any) -> bool:
    return isinstance(value, list | tuple | set | frozenset)


def _column_clause(spec: TableSpec, column: str, value: Any) -> str:
    if column not in spec.schema.names:
        raise ValueError(f"{spec.name} has no column {column!r}; columns: {', '.join(spec.columns)}")
    if pa.types.is_list(spec.column_type(column)):
        if column != "participant_ids":
            raise ValueError(f"{spec.name}.{column} cannot be filtered with a dict")
        return has_any(column, [value] if isinstance(value, str) else sorted(value))
    values = list(value) if _is_many(value) else [value]
    if column in spec.json_columns:
        values = [dump_json(v) if isinstance(v, Mapping) else v for v in values]
    has_null = any(v is None for v in values)
    values = [v for v in values if v is not None]
    clause = in_list(column, values) if values else None
    if has_null:
        clause = f"{column} IS NULL" if clause is None else f"({clause}) OR {column} IS NULL"
    return clause or "FALSE"


def where_sql(spec: TableSpec, where: str | Mapping[str, Any] | None) -> str | None:
    """A Lance filter from ``where``: a raw SQL string, or ``{column: value | [values]}``.

    In the dict form every value is quoted and every column checked against the
    table's schema; a list means ``IN``; ``None`` means ``IS NULL``; on
    ``participant_ids`` a value (or list) means "contains any of".
    """
    if where is None:
        return None
    if isinstance(where, str):
        return where.strip() or None
    return sql_and(_column_clause(spec, col, val) for col, val in sorted(where.items()))


def chunks(items: Sequence[Any], size: int = IN_CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def metadata_matches(actual: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    """Equality on every key of ``wanted``; a missing key does not match."""
    return all(k in actual and actual[k] == v for k, v in wanted.items())
