"""The fixed SQL of the hot paths (each email's render, send and rate-limit read), built
once per placeholder style and prepared where the database prepares (see db.py).

Plain SQL that SQLite and PostgreSQL both accept, ``{p}`` standing for the database's
placeholder, rather than Peewee queries: building a query cost more CPU than the
database takes to run it, and the email path is CPU-bound. The tests run every
statement on both databases (tests/test_delivery_statements.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from outreach_actors.domain.store.db import is_postgresql, prepare
from outreach_actors.domain.store.models import database_proxy

_STATEMENTS: dict[tuple[str, str], str] = {}


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
    placeholder per id."""
    if is_postgresql(database_proxy.obj):
        return "= ANY({p})", [list(ids)]
    return "IN (" + ", ".join(["{p}"] * len(ids)) + ")", list(ids)
