"""How often a worker looks for work: short enough that timers fire on time."""

from __future__ import annotations

import logging

import dramatiq


class WorkerPolling(dramatiq.Middleware):
    """Middleware that sets each worker's polling interval when it boots.

    Dramatiq's default (1 s, or ``dramatiq_worker_timeout``) is how long an idle
    consumer waits before looking again, and also when a delayed message whose
    time came is released: timers would fire up to a second late. Set before the
    consumers start, so it applies to ``dramatiq outreach_actors`` without flags.

    Parameters:
      interval_ms(int): the polling interval in milliseconds.
    """

    def __init__(self, *, interval_ms: int) -> None:
        self.logger = logging.getLogger(type(self).__name__)
        self.interval_ms = interval_ms

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        worker.worker_timeout = self.interval_ms
