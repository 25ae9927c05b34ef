"""Give each message a database connection and hand it back when the message is done."""

from __future__ import annotations

import logging

import dramatiq
import peewee

from ..models import Enrollment, create_schema, database_proxy


class DatabaseConnections(dramatiq.Middleware):
    """Middleware that opens the thread's connection before a message and closes it after.

    Peewee keeps one connection per thread. Closing after each message returns a
    PostgreSQL connection to the pool (so a restarted server costs one failed
    message, not a dead connection held by every worker thread forever) and keeps
    no SQLite file handle open between messages.
    """

    def __init__(self) -> None:
        self.logger = logging.getLogger(type(self).__name__)

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        """Check the tables once per worker process: on SQLite, the zero-configuration
        default, create them; elsewhere say, once and plainly, what to run. Without
        this, every message fails with a traceback until someone runs `db init`."""
        database = database_proxy.obj
        if database is None:
            return
        try:
            with database.connection_context():
                if database.table_exists(Enrollment._meta.table_name):
                    return
                if isinstance(database, peewee.SqliteDatabase):
                    create_schema(database)
                    self.logger.info("Created the outreach tables in %s", database.database)
                    return
        except peewee.DatabaseError as exc:
            # Not fatal: a database that is down at start may be up for the first message.
            self.logger.error("Could not check the database's tables at worker start: %s", exc)
            return
        self.logger.error(
            "The database has no outreach tables: run `outreach db init`. Messages fail "
            "(and are retried) until then."
        )

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        database_proxy.connect(reuse_if_open=True)

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        self._close()

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        self._close()

    def _close(self) -> None:
        database = database_proxy.obj
        if database is not None and not database.is_closed():
            database.close()
