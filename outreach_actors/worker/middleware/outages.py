"""A database or Redis that cannot be reached is an outage to report, not a bug: Dramatiq
logs each message that meets one with a traceback; this says it in one line."""

from __future__ import annotations

import logging

import peewee
import redis

# What dramatiq.worker.WorkerThread logs, with exc_info, for an exception (Dramatiq 2.x).
DRAMATIQ_FAILURE_LOG = "Failed to process message %s with unhandled exception."
DRAMATIQ_WORKER_LOGGER = "dramatiq.worker.WorkerThread"


def unreachable_service(exc: BaseException | None) -> str | None:
    """The service an error says could not be reached ("the database" for a refused,
    dropped or closed connection, "Redis" likewise), also through one of ours raised from
    it (as RateLimitError is); None for any other error, a statement's (it has an SQL
    state) included."""
    for _ in range(10):
        if isinstance(exc, peewee.InterfaceError):
            return "the database"
        if isinstance(exc, peewee.OperationalError):
            return "the database" if _no_sql_state(exc) else None
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
            return "Redis"
        if exc is None:
            return None
        exc = exc.__cause__
    return None


def database_unreachable(exc: BaseException | None) -> bool:
    """True for an error saying the database could not be reached."""
    return unreachable_service(exc) == "the database"


def _no_sql_state(exc: BaseException) -> bool:
    # Peewee raises its own error from the driver's (passed as its first argument, or
    # only as the context, through as many of its own as it re-raised); psycopg2 gives a
    # server's errors an SQL state (pgcode) and a lost or refused connection none.
    seen: list[BaseException] = [exc]
    while seen and len(seen) < 10:
        error = seen.pop()
        if hasattr(error, "pgcode"):
            return error.pgcode is None
        seen += [each for each in (error.args[0] if error.args else None, error.__cause__,
                                   error.__context__) if isinstance(each, BaseException)]
    return False


class ServiceOutages(logging.Filter):
    """Turns Dramatiq's ERROR with a traceback for a message that could not reach the
    database or Redis into one WARNING line; every other failure keeps its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != DRAMATIQ_FAILURE_LOG or not record.exc_info:
            return True
        exc = record.exc_info[1]
        service = unreachable_service(exc)
        if service is not None:
            text = str(exc).strip()
            # Retries logs its own line when it retries the message.
            record.msg = "Message %s could not reach %s: %s"
            record.args = (record.args[0] if record.args else "?", service,
                           text.splitlines()[0] if text else type(exc).__name__)
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info, record.exc_text = None, None
        return True


def install_service_outages() -> None:
    """Add the filter to Dramatiq's worker logger, once."""
    logger = logging.getLogger(DRAMATIQ_WORKER_LOGGER)
    if not any(isinstance(existing, ServiceOutages) for existing in logger.filters):
        logger.addFilter(ServiceOutages())
