"""The fixed SQL of the hot paths (each email's render, send and rate-limit read, each
enrollment, event, move and timer, the dispatcher's poll), built once per placeholder
style and prepared where the database prepares (see db.py).

Plain SQL that SQLite and PostgreSQL both accept, ``{p}`` standing for the database's
placeholder, rather than Peewee queries: building a query cost more CPU than the
database takes to run it, and these paths are CPU-bound. The tests run the statements
on both databases (tests/test_delivery_statements.py, tests/test_rows_by_id.py, and
the tests of each path).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import peewee

from outreach_actors.domain.store.db import database_proxy, is_postgresql, prepare

_STATEMENTS: dict[tuple[str, str], str] = {}

Model = TypeVar("Model", bound=peewee.Model)
# (model, statement) -> each column's field name (or the column's own, for an alias)
# and its field's python_value (None for an alias).
_READERS: dict[tuple[type[peewee.Model], str], tuple[list[str], list[Callable | None]]] = {}


def statement(template: str, *, prepared: bool = True) -> str:
    """``template`` for the bound database (its placeholder style), built once, and
    run as a prepared statement where the database prepares (see db.py), unless not
    ``prepared``."""
    database = database_proxy.obj
    key = (template, database.param)
    found = _STATEMENTS.get(key)
    if found is None:
        found = _STATEMENTS[key] = template.strip().replace("{p}", database.param)
    return prepare(database, found) if prepared else found


def one_statement_writes() -> bool:
    """Whether the bound database runs data-modifying CTEs (PostgreSQL; SQLite does not)."""
    return is_postgresql(database_proxy.obj)


def ids_condition(ids: Sequence[Any]) -> tuple[str, list]:
    """A statement's test that a column is one of ``ids`` (``IN (...)`` or ``= ANY(...)``,
    to follow the column), and its parameters: on PostgreSQL one array parameter, so
    that one prepared statement serves every count; on SQLite, which has no arrays, a
    placeholder per id, the list padded to a power of two with its last id (IN ignores
    a repeat): a statement has a handful of texts, not one per count, to build and keep
    (here, and prepared in the driver's cache)."""
    if is_postgresql(database_proxy.obj):
        return "= ANY({p})", [list(ids)]
    padded = list(ids)
    if padded:
        padded += padded[-1:] * ((1 << (len(padded) - 1).bit_length()) - len(padded))
    return "IN (" + ", ".join(["{p}"] * len(padded)) + ")", padded


def model_rows(model: type[Model], sql: str, params: Sequence[Any]) -> list[Model]:
    """Run ``sql`` (a statement() text) and return its rows as ``model`` instances, as
    ``model.raw(sql, *params)`` builds them without resolving the columns anew at each
    run: a column named as one of the model's (``enrollment_id`` for a foreign key) goes
    through its field's python_value; any other (an alias) is set as it comes."""
    cursor = database_proxy.execute_sql(sql, params)
    found = cursor.fetchall()
    if not found:
        return []
    reader = _READERS.get((model, sql))
    if reader is None:
        names: list[str] = []
        converters: list[Callable | None] = []
        for column, *_ in cursor.description:
            field = model._meta.columns.get(column)
            names.append(field.name if field is not None else column)
            converters.append(field.python_value if field is not None else None)
        reader = _READERS[(model, sql)] = (names, converters)
    names, converters = reader
    rows = []
    for values in found:
        row = model(__no_default__=1, **{
            name: value if convert is None else convert(value)
            for name, convert, value in zip(names, converters, values, strict=True)})
        row._dirty.clear()
        rows.append(row)
    return rows
