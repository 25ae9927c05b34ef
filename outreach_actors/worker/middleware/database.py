"""Give each message a database connection and hand it back when the message is done."""

from __future__ import annotations

import logging

import dramatiq
import peewee

from outreach_actors.domain.store.models import create_schema, database_proxy, missing_schema
from outreach_actors.worker.middleware.outages import database_unreachable


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
        """Check the schema once per worker process: on SQLite, the zero-configuration
        default, create the tables or add the columns of a newer version; elsewhere
        say, once and plainly, what to run. Without this, every message fails with a
        traceback until someone runs `db init`."""
        database = database_proxy.obj
        if database is None:
            return
        try:
            with database.connection_context():
                missing = missing_schema(database)
                if missing and isinstance(database, peewee.SqliteDatabase):
                    create_schema(database)
                    self.logger.info("Brought the outreach schema in %s up to date (added %s)",
                                     database.database, _listed(missing))
                    return
        except peewee.DatabaseError as exc:
            # Not fatal: a database that is down at start may be up for the first message;
            # and of two workers upgrading one SQLite file at once, one finds it done.
            self.logger.error("Could not check the database's schema at worker start: %s", exc)
            return
        if missing and all(entry.startswith("index ") for entry in missing):
            self.logger.warning(
                "The database's outreach indexes are out of date (%s): run `outreach db init`. "
                "Until then some statements are slower.", _listed(missing),
            )
        elif missing:
            self.logger.error(
                "The database lacks outreach tables or columns (%s): run `outreach db init`. "
                "Messages fail (and are retried) until then.", _listed(missing),
            )

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        try:
            database_proxy.connect(reuse_if_open=True)
        except peewee.DatabaseError as exc:
            if not database_unreachable(exc):
                raise
            # The message's first statement meets the outage again and fails as one line
            # (ServiceOutages); raised here, Dramatiq would log a CRITICAL traceback.

    def after_process_message(self, broker, message, *, result=None, exception=None) -> None:
        self._close()

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        self._close()

    def _close(self) -> None:
        database = database_proxy.obj
        if database is not None and not database.is_closed():
            database.close()


def _listed(missing: list[str], shown: int = 5) -> str:
    more = len(missing) - shown
    return ", ".join(missing[:shown]) + (f" and {more} more" if more > 0 else "")
