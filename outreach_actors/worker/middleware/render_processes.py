"""Start a worker process's render processes as it boots, not at its first email."""

from __future__ import annotations

import logging

import dramatiq

from outreach_actors.domain.rendering import RenderLimits, RenderProcessError, render_pool
from outreach_actors.settings import Settings


class RenderProcesses(dramatiq.Middleware):
    """Middleware that starts the render processes (see rendering.isolation) of each
    worker process as it boots: the first one starts the server they are forked from,
    which imports the package, seconds of CPU that the first email would wait out.

    Parameters:
      settings(Settings): the settings the workers run with (their render limits).
    """

    def __init__(self, settings: Settings) -> None:
        self.logger = logging.getLogger(type(self).__name__)
        self.limits = RenderLimits.from_settings(settings)

    def after_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        try:
            render_pool(self.limits).start()
        except RenderProcessError as exc:
            # Renders start them again, and fail as faults (retried) while they cannot.
            self.logger.error("%s", exc)
