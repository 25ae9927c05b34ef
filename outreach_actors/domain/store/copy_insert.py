"""Large inserts on PostgreSQL through COPY: rows streamed into a staging table, then
moved into their table by one ``INSERT ... SELECT`` with its ``ON CONFLICT`` and
``RETURNING``, so the rows behave as a multi-row ``INSERT`` would."""

from __future__ import annotations

import csv
import io
import secrets
import zlib
from collections.abc import Sequence
from typing import Any

import peewee

#: Fewer rows than this go through a multi-row INSERT: creating the staging table
#: costs more than COPY saves on a small batch.
COPY_MIN_ROWS = 500


def copy_insert(database: peewee.Database, table: str, columns: Sequence[str],
                rows: Sequence[Sequence[Any]], tail: str) -> list[tuple]:
    """Insert ``rows`` (database values in ``columns`` order) into ``table``; ``tail`` is
    the ``ON CONFLICT ...``/``RETURNING ...`` of the INSERT. Returns the returned rows.

    Why a staging table rather than COPY into the table itself: COPY has no ``ON
    CONFLICT`` and returns nothing. The staging table is made once per connection and
    emptied at each commit (``ON COMMIT DELETE ROWS``); behind a transaction pooler,
    a transaction on a connection without it makes it there. The insert takes its
    rows out of it with ``DELETE ... RETURNING``, so a second call in the same
    transaction starts from an empty one.

    Why not a table per transaction (``ON COMMIT DROP``): each one writes and deletes
    dozens of rows of the system catalogs, and a busy worker's batches left them
    bloated wherever autovacuum lagged (or is off), slowing every later statement.
    """
    quoted = ", ".join(f'"{column}"' for column in columns)
    staging = f"_outreach_copy_{table}_{zlib.crc32(quoted.encode()):08x}"
    # CSV through the csv module (C) rather than escaping each value in Python. Every
    # value is quoted, and NULL is a marker no row can hold (a fresh random one), so an
    # empty string stays an empty string.
    null = "null-" + secrets.token_hex(16)
    buffer = io.StringIO()
    csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\n").writerows(
        [null if value is None else value for value in row] for row in rows)
    buffer.seek(0)
    # Peewee's wrapper: a violated constraint raises peewee.IntegrityError, as it would
    # from any other insert.
    with database.atomic(), peewee.__exception_wrapper__:
        cursor = database.cursor()
        # CREATE ... AS keeps the columns' types and drops their constraints: a staged
        # row is checked when it reaches the table.
        cursor.execute(f'CREATE TEMP TABLE IF NOT EXISTS "{staging}" ON COMMIT DELETE ROWS AS '
                       f'SELECT {quoted} FROM "{table}" WITH NO DATA')
        cursor.copy_expert(f'COPY "{staging}" ({quoted}) FROM STDIN WITH (FORMAT csv, '
                           f"NULL '{null}', FORCE_NULL ({quoted}))", buffer)
        cursor.execute(f'WITH staged AS (DELETE FROM "{staging}" RETURNING {quoted}) '
                       f'INSERT INTO "{table}" ({quoted}) SELECT {quoted} FROM staged{tail}')
        return cursor.fetchall() if " RETURNING " in tail else []
