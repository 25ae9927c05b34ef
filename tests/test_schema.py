"""Schema creation on SQLite and PostgreSQL: idempotent, with the hot-query indexes."""

from __future__ import annotations

import peewee
import pytest

from outreach_actors.domain.store import models
from outreach_actors.domain.store.db import database_from_url
from outreach_actors.settings import Settings


def test_schema_is_created_and_recreated_idempotently(any_db: peewee.Database) -> None:
    models.create_schema(any_db)
    models.create_schema(any_db)  # a second `outreach db init` changes nothing
    with any_db.connection_context():
        tables = set(any_db.get_tables())
        assert {m._meta.table_name for m in models.ALL_MODELS} <= tables
        index_columns = {
            (table, tuple(index.columns))
            for table in ("scheduled_action", "message_event", "suppression")
            for index in any_db.get_indexes(table)
        }
    assert ("scheduled_action", ("status", "run_at")) in index_columns
    assert ("message_event", ("message_id", "type")) in index_columns
    assert ("suppression", ("tenant_id", "channel", "value")) in index_columns


def test_unique_constraints_hold(any_db: peewee.Database) -> None:
    with any_db.connection_context():
        tenant = models.Tenant.create(id="acme")
        models.Suppression.create(tenant=tenant, value="a@example.com", reason="bounce")
        with pytest.raises(peewee.IntegrityError), any_db.atomic():
            models.Suppression.create(tenant=tenant, value="a@example.com", reason="again")


def test_sqlite_uses_wal_and_a_busy_timeout(tmp_path) -> None:
    database = database_from_url(f"sqlite:///{tmp_path / 'x.db'}", Settings(data_dir=tmp_path))
    with database.connection_context():
        assert database.execute_sql("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert database.execute_sql("PRAGMA busy_timeout").fetchone()[0] >= 5000


def test_default_database_lives_in_the_data_dir(tmp_path) -> None:
    database = database_from_url(None, Settings(data_dir=tmp_path / "var"))
    assert database.database == str(tmp_path / "var" / "outreach.db")


def test_db_init_adds_columns_a_newer_version_introduced(any_db: peewee.Database) -> None:
    # Given a database created by an older version, without Enrollment.exit_reason
    # and ScheduledAction.visit_version, holding a row
    with any_db.connection_context():
        models.Tenant.create(id="acme")
        any_db.execute_sql('ALTER TABLE enrollment DROP COLUMN exit_reason')
        any_db.execute_sql('ALTER TABLE scheduled_action DROP COLUMN visit_version')
    # When `outreach db init` runs
    models.create_schema(any_db)
    # Then the columns are back, existing rows keep their data, and the defaults apply
    with any_db.connection_context():
        assert "exit_reason" in {c.name for c in any_db.get_columns("enrollment")}
        assert "visit_version" in {c.name for c in any_db.get_columns("scheduled_action")}
        assert models.Tenant.get_by_id("acme")


def test_db_init_drops_the_indexes_that_repeat_a_unique_one(any_db: peewee.Database) -> None:
    # Given a database of an earlier version: four foreign keys indexed on their own,
    # though each is the first column of another index on its table
    redundant = {"contact": ("contact_tenant_id", "tenant_id"),
                 "node_visit": ("node_visit_enrollment_id", "enrollment_id"),
                 "scheduled_action": ("scheduled_action_enrollment_id", "enrollment_id"),
                 "message_event": ("message_event_message_id", "message_id")}
    with any_db.connection_context():
        for table, (index, column) in redundant.items():
            any_db.execute_sql(f'CREATE INDEX "{index}" ON "{table}" ("{column}")')
        assert models.missing_schema(any_db) == sorted(
            f"index {index}" for index, _ in redundant.values())
    # When `outreach db init` runs
    models.create_schema(any_db)
    # Then they are gone and nothing else is missing
    with any_db.connection_context():
        for table, (index, _) in redundant.items():
            assert index not in {found.name for found in any_db.get_indexes(table)}
        assert models.missing_schema(any_db) == []


def test_raw_inbound_posts_are_not_compressed_with_pglz(postgres_db: peewee.Database) -> None:
    # pglz spends more CPU failing at base64 attachments than the insert takes.
    with postgres_db.connection_context():
        lz4 = postgres_db.execute_sql(
            "SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' "
            "AND 'lz4' = ANY(enumvals)").fetchone() is not None
        setting, wanted = ("attcompression", "l") if lz4 else ("attstorage", "e")
        postgres_db.execute_sql("ALTER TABLE inbound_post ALTER COLUMN body SET STORAGE EXTENDED"
                                + (", ALTER COLUMN body SET COMPRESSION pglz" if lz4 else ""))
    models.create_schema(postgres_db)  # what `outreach db init` does to an older database
    models.create_schema(postgres_db)
    with postgres_db.connection_context():
        (stored,) = postgres_db.execute_sql(
            f"SELECT {setting} FROM pg_attribute "
            "WHERE attrelid = 'inbound_post'::regclass AND attname = 'body'").fetchone()
    assert stored == wanted
