"""A message that cannot reach the database (or Redis) is logged in one WARNING line,
without a traceback; a statement's own error keeps Dramatiq's ERROR and its traceback."""

from __future__ import annotations

import logging
from pathlib import Path

import dramatiq
import peewee
import pytest
import redis

from outreach_actors.domain.store import models
from outreach_actors.domain.store.db import database_from_url
from outreach_actors.worker.middleware.outages import unreachable_service

from .conftest import make_settings

# Nothing listens on port 1: connecting is refused at once.
UNREACHABLE = "postgresql://postgres@127.0.0.1:1/outreach_nowhere"


def run_once(broker: dramatiq.Broker, sql: str) -> None:
    """Run one message that executes ``sql`` on a real worker of ``broker``."""

    @dramatiq.actor(broker=broker, queue_name="outage_probe", max_retries=0)
    def probe() -> None:
        models.database_proxy.execute_sql(sql)

    probe.send()
    worker = dramatiq.Worker(broker, worker_timeout=50)
    worker.start()
    try:
        broker.join("outage_probe", fail_fast=False)
        worker.join()
    finally:
        worker.stop()


def test_an_unreachable_database_is_one_warning_line(stub_broker, data_dir: Path, caplog) -> None:
    models.bind(database_from_url(UNREACHABLE, make_settings(data_dir)))
    with caplog.at_level(logging.INFO):
        run_once(stub_broker, "SELECT 1")
    [record] = [r for r in caplog.records if r.name == "dramatiq.worker.WorkerThread"
                and r.levelno >= logging.WARNING]
    assert record.levelno == logging.WARNING
    assert "could not reach the database: connection to server" in record.getMessage()
    assert "probe" in record.getMessage()  # the message, as Dramatiq names it
    assert record.exc_info is None and "Traceback" not in caplog.text


def test_a_statement_error_keeps_its_traceback(stub_broker, postgres_db, caplog) -> None:
    models.bind(postgres_db)
    with caplog.at_level(logging.INFO):
        run_once(stub_broker, "SELECT * FROM no_such_table")
    [record] = [r for r in caplog.records if r.name == "dramatiq.worker.WorkerThread"
                and r.levelno >= logging.WARNING]
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert "no_such_table" in caplog.text


def _raised_from(cause: BaseException) -> BaseException:
    """An error of ours raised from ``cause``, as RateLimitError is from the database's."""
    try:
        raise RuntimeError("could not apply the rate limits") from cause
    except RuntimeError as exc:
        return exc


@pytest.mark.parametrize("make_error, service", [
    (lambda: peewee.InterfaceError("connection already closed"), "the database"),
    (lambda: peewee.OperationalError(RuntimeError("database is locked")), None),
    (lambda: ValueError("not a database error"), None),
    (lambda: _raised_from(peewee.InterfaceError("connection already closed")), "the database"),
    (lambda: _raised_from(redis.ConnectionError("Connection refused.")), "Redis"),
    (lambda: _raised_from(ValueError("not a database error")), None),
])
def test_which_errors_count_as_unreachable(make_error, service) -> None:
    assert unreachable_service(make_error()) == service
