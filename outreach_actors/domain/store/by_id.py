"""Rows read and updated by primary key as fixed SQL (see statements.py): the hot paths'
commonest statements, their text built once per model and columns instead of by Peewee's
query compiler at every call.

Each behaves as the Peewee query named in its docstring: values go through their
fields' ``db_value``, rows come back as model instances through ``python_value``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, TypeVar

import peewee

from outreach_actors.domain.store.db import database_proxy
from outreach_actors.domain.store.statements import ids_condition, model_rows, statement

Model = TypeVar("Model", bound=peewee.Model)

#: Ids per statement: a longer list is read (or updated) in several.
IDS_PER_STATEMENT = 1000

# (model, columns) -> the SELECT of those columns, ``{ids}`` standing for the test of
# the primary key; (model, fields set) -> the UPDATE, likewise, and the fields set.
_SELECTS: dict[tuple[type[peewee.Model], tuple[str, ...]], str] = {}
_UPDATES: dict[tuple[type[peewee.Model], tuple[str, ...]], tuple[str, list[peewee.Field]]] = {}


def rows_by_id(model: type[Model], ids: Collection[Any], *fields: peewee.Field) -> list[Model]:
    """``model.select(*fields).where(model.id.in_(ids))`` (every field when none is
    named), in no particular order; IDS_PER_STATEMENT ids per statement."""
    if not ids:
        return []
    key = (model, tuple(field.column_name for field in fields))
    template = _SELECTS.get(key)
    if template is None:
        columns = key[1] or tuple(field.column_name for field in model._meta.sorted_fields)
        template = _SELECTS[key] = (
            "SELECT " + ", ".join(f'"{column}"' for column in columns)
            + f' FROM "{model._meta.table_name}" WHERE "{model._meta.primary_key.column_name}" {{ids}}')
    ids = list(ids)
    rows: list[Model] = []
    for start in range(0, len(ids), IDS_PER_STATEMENT):
        condition, params = ids_condition(ids[start:start + IDS_PER_STATEMENT])
        rows += model_rows(model, statement(template.replace("{ids}", condition)), params)
    return rows


def row_by_id(model: type[Model], row_id: Any, *fields: peewee.Field) -> Model | None:
    """``model.get_or_none(model.id == row_id)``, with ``fields`` only when named."""
    rows = rows_by_id(model, [row_id], *fields)
    return rows[0] if rows else None


def update_by_id(model: type[peewee.Model], ids: Sequence[Any], **values: Any) -> int:
    """``model.update(**values).where(model.id.in_(ids)).execute()``: the rows changed.
    Values are plain values (no expressions), by field name; IDS_PER_STATEMENT ids per
    statement."""
    if not ids or not values:
        return 0
    names = tuple(sorted(values))
    key = (model, names)
    found = _UPDATES.get(key)
    if found is None:
        fields = [model._meta.fields[name] for name in names]
        found = _UPDATES[key] = (
            f'UPDATE "{model._meta.table_name}" SET '
            + ", ".join(f'"{field.column_name}" = {{p}}' for field in fields)
            + f' WHERE "{model._meta.primary_key.column_name}" {{ids}}', fields)
    template, fields = found
    converted = [field.db_value(values[field.name]) for field in fields]
    changed = 0
    for start in range(0, len(ids), IDS_PER_STATEMENT):
        condition, params = ids_condition(ids[start:start + IDS_PER_STATEMENT])
        changed += database_proxy.execute_sql(
            statement(template.replace("{ids}", condition)), converted + params).rowcount
    return changed
