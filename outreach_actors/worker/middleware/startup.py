"""Check at worker start that the configuration cannot make the mail it sends wrong."""

from __future__ import annotations

import logging

import dramatiq

from outreach_actors.settings import Settings, SettingsError


class ConfigurationChecks(dramatiq.Middleware):
    """Middleware that, once per worker process, refuses to start a worker whose mail
    would carry unsubscribe links anyone can forge (see unsubscribe.require_unforgeable_links),
    and logs a WARNING for each setting that would make its mail wrong though every send
    succeeds: unsubscribe links recipients cannot reach (see unsubscribe.link_problems).

    Parameters:
      settings(Settings): the settings the workers run with.
    """

    def __init__(self, settings: Settings) -> None:
        self.logger = logging.getLogger(type(self).__name__)
        self.settings = settings

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # Imported here: unsubscribe reaches the engine and the webhook receiver, which
        # the broker's middleware must not need to be built.
        from outreach_actors.domain.unsubscribe import link_problems, require_unforgeable_links

        try:
            require_unforgeable_links(self.settings)
        except SettingsError as exc:
            # Not an Exception: Dramatiq logs those of a middleware hook and starts anyway.
            # SystemExit ends the process before any thread consumes, its message on stderr.
            raise SystemExit(f"outreach_actors: {exc}") from None
        for problem in link_problems(self.settings):
            self.logger.warning("%s", problem)
