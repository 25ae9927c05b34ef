"""DatabaseConnections at worker start: the tables are there, or made, or asked for."""

from __future__ import annotations

import logging
from pathlib import Path

import dramatiq

from outreach_actors.domain.store import models
from outreach_actors.domain.store.db import database_from_url
from outreach_actors.domain.store.models import Enrollment
from outreach_actors.worker.middleware.database import DatabaseConnections

from .conftest import make_settings


def boot(database) -> None:
    models.bind(database)
    DatabaseConnections().before_worker_boot(dramatiq.get_broker(), None)


def has_tables(database) -> bool:
    with database.connection_context():
        return database.table_exists(Enrollment._meta.table_name)


def test_a_worker_on_a_new_sqlite_file_creates_the_tables(data_dir: Path, caplog) -> None:
    database = database_from_url(f"sqlite:///{data_dir / 'new.db'}", make_settings(data_dir))
    with caplog.at_level(logging.INFO):
        boot(database)
        boot(database)  # every worker process does it: the second finds them
    assert has_tables(database)
    upgrades = [r.message for r in caplog.records if r.message.startswith("Brought the outreach schema")]
    assert len(upgrades) == 1 and str(data_dir / "new.db") in upgrades[0]


def test_a_worker_on_an_older_sqlite_file_adds_the_new_columns(data_dir: Path, caplog) -> None:
    database = database_from_url(f"sqlite:///{data_dir / 'old.db'}", make_settings(data_dir))
    models.create_schema(database)
    with database.connection_context():
        # As a file written before WebhookDelivery.requeued_at existed.
        database.execute_sql("ALTER TABLE webhook_delivery DROP COLUMN requeued_at")
        assert models.missing_schema(database) == ["webhook_delivery.requeued_at"]
    with caplog.at_level(logging.INFO):
        boot(database)
    assert "(added webhook_delivery.requeued_at)" in caplog.text
    with database.connection_context():
        assert models.missing_schema(database) == []


def test_a_worker_on_an_older_postgresql_schema_names_what_is_missing(postgres_db, caplog) -> None:
    with postgres_db.connection_context():
        postgres_db.execute_sql("ALTER TABLE webhook_delivery DROP COLUMN requeued_at")
    with caplog.at_level(logging.ERROR):
        boot(postgres_db)
    assert "lacks outreach tables or columns (webhook_delivery.requeued_at): run `outreach db init`" in caplog.text
    with postgres_db.connection_context():
        assert models.missing_schema(postgres_db) == ["webhook_delivery.requeued_at"]  # left as it is
    models.create_schema(postgres_db)


def test_a_worker_on_postgresql_without_tables_says_to_run_db_init(postgres_db, caplog) -> None:
    with postgres_db.connection_context():
        postgres_db.drop_tables(models.ALL_MODELS, cascade=True)
    with caplog.at_level(logging.ERROR):
        boot(postgres_db)
    assert "run `outreach db init`" in caplog.text
    assert not has_tables(postgres_db)  # PostgreSQL schemas change only when asked


def test_a_database_down_at_start_is_logged_not_fatal(data_dir: Path, caplog) -> None:
    database = database_from_url("postgresql://postgres@127.0.0.1:1/none", make_settings(data_dir))
    with caplog.at_level(logging.ERROR):
        boot(database)
    assert "Could not check the database's schema at worker start" in caplog.text


def test_db_init_replaces_the_status_index_and_workers_say_so_until_then(any_db, caplog) -> None:
    # Given a schema of an earlier version: messages indexed by status alone
    with any_db.connection_context():
        any_db.execute_sql('DROP INDEX "outbound_message_status_id"')
        any_db.execute_sql('CREATE INDEX "outbound_message_status" ON "outbound_message" ("status")')
        assert models.missing_schema(any_db) == [
            "index outbound_message_status", "index outbound_message_status_id"]
    # When a worker starts
    with caplog.at_level(logging.WARNING):
        boot(any_db)
    if not isinstance(any_db, models.peewee.SqliteDatabase):
        # Then on PostgreSQL it says to run db init, and that nothing fails meanwhile
        assert ("outreach indexes are out of date (index outbound_message_status, index "
                "outbound_message_status_id): run `outreach db init`") in caplog.text
        models.create_schema(any_db)  # what db init runs
    # Then (on SQLite by the worker itself) the new index is there and the old one gone
    with any_db.connection_context():
        names = {index.name for index in any_db.get_indexes("outbound_message")}
        assert models.missing_schema(any_db) == []
    assert "outbound_message_status_id" in names and "outbound_message_status" not in names
