"""Give each message a database connection and hand it back when the message is done."""

from __future__ import annotations

import logging

import dramatiq

from ..models import database_proxy


class DatabaseConnections(dramatiq.Middleware):
    """Middleware that opens the thread's connection before a message and closes it after.

    Peewee keeps one connection per thread. Closing after each message returns a
    PostgreSQL connection to the pool (so a restarted server costs one failed
    message, not a dead connection held by every worker thread forever) and keeps
    no SQLite file handle open between messages.
    """

    def __init__(self) -> None:
        self.logger = logging.getLogger(type(self).__name__)

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
