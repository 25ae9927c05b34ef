"""Say at worker start what in the configuration would make the mail it sends wrong."""

from __future__ import annotations

import logging

import dramatiq

from outreach_actors.settings import Settings


class ConfigurationWarnings(dramatiq.Middleware):
    """Middleware that logs, once per worker process, a WARNING for each setting that
    would make the mail it sends wrong though every send succeeds: unsubscribe links
    recipients cannot reach or anyone can forge (see unsubscribe.link_problems).

    Parameters:
      settings(Settings): the settings the workers run with.
    """

    def __init__(self, settings: Settings) -> None:
        self.logger = logging.getLogger(type(self).__name__)
        self.settings = settings

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # Imported here: unsubscribe reaches the engine and the webhook receiver, which
        # the broker's middleware must not need to be built.
        from outreach_actors.domain.unsubscribe import link_problems

        for problem in link_problems(self.settings):
            self.logger.warning("%s", problem)
