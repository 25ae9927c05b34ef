"""Skips that are flow control, not trouble: Dramatiq logs each at WARNING; ours log
their own reason at INFO, so Dramatiq's line for them is left out."""

from __future__ import annotations

import logging
import threading

from dramatiq.middleware import SkipMessage

# What dramatiq.worker.WorkerThread logs for every SkipMessage (Dramatiq 2.x).
DRAMATIQ_SKIP_LOG = "Message %s was skipped."
DRAMATIQ_WORKER_LOGGER = "dramatiq.worker.WorkerThread"

# A worker thread raises a skip and then logs it, with nothing in between.
_skipping = threading.local()


def quiet_skip(message_id: str, reason: str) -> SkipMessage:
    """The SkipMessage to raise for ``message_id``, without Dramatiq's WARNING for it."""
    _skipping.message_id = message_id
    return SkipMessage(reason)


class QuietSkips(logging.Filter):
    """Drops Dramatiq's skip warning for the message a quiet_skip was raised for."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != DRAMATIQ_SKIP_LOG or not record.args:
            return True
        skipped, _skipping.message_id = getattr(_skipping, "message_id", None), None
        message = record.args[0] if isinstance(record.args, tuple) else None
        return skipped is None or getattr(message, "message_id", None) != skipped


def install_quiet_skips() -> None:
    """Add the filter to Dramatiq's worker logger, once."""
    logger = logging.getLogger(DRAMATIQ_WORKER_LOGGER)
    if not any(isinstance(existing, QuietSkips) for existing in logger.filters):
        logger.addFilter(QuietSkips())
