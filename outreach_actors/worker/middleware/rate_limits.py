"""Middleware that holds back a message until its actor's rate limits have room, using no retry."""

from __future__ import annotations

from collections.abc import Callable

import dramatiq
from dramatiq.logging import get_logger
from dramatiq.middleware import Middleware, MiddlewareError

from outreach_actors.domain.metrics import count
from outreach_actors.worker.limiters import RateLimiter
from outreach_actors.worker.middleware.skips import quiet_skip


class RateLimitError(MiddlewareError):
    """The rate limits of a message could not be applied (limiter down, bad limits).

    A MiddlewareError, so that Dramatiq fails the message (and Retries retries it)
    instead of logging the error and running the actor unlimited.
    """


class RateLimits(Middleware):
    """Middleware that defers messages whose rate limits are full.

    An actor opts in with ``rate_limits``: a callable from the message to the
    :class:`~outreach_actors.worker.limiters.Limit` s it takes. Before the message is
    processed, all of them are taken at once. When any is full, a copy of the
    message is enqueued with the exact delay until every one has room, and the
    original is skipped: it is acknowledged, uses no retry, and does not reach
    Sentry. Each deferral is counted in ``outreach_ratelimit_deferrals_total``
    and in the message option ``deferrals``. An actor may also name
    ``on_deferral``: a callable given the message and the delay in milliseconds
    once the copy is enqueued (the send uses it to tell the reconciler that its
    message is waiting, not lost). Its errors are logged, not raised: the
    deferral has happened.

    An actor may also name ``hold_for``: a callable from the message to None (go on
    to the limits) or (reason, milliseconds): the message is held that long (at most
    ``max_deferral``) the same way, before any limit is taken.

    Parameters:
      limiter_for(Callable[[Broker], RateLimiter]): Builds the limiter for the
        broker when a worker boots (shared Redis, or in-process for the stub).
      max_deferral(int): The longest delay in milliseconds; a longer wait is
        split, the message looking again each time. Defaults to 10 minutes.
    """

    def __init__(
        self,
        *,
        limiter_for: Callable[[dramatiq.Broker], RateLimiter],
        max_deferral: int = 600_000,
    ) -> None:
        if max_deferral <= 0:
            raise ValueError(f"max_deferral must be positive, got {max_deferral} ms")
        self.logger = get_logger(__name__, type(self))
        self.limiter_for = limiter_for
        self.max_deferral = max_deferral
        self.limiter: RateLimiter | None = None

    @property
    def actor_options(self) -> set[str]:
        return {"rate_limits", "on_deferral", "hold_for"}

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # Several workers may share one broker (and an in-process limiter) in tests.
        if self.limiter is None:
            self.limiter = self.limiter_for(broker)

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        options = broker.get_actor(message.actor_name).options
        limits_for, hold_for = options.get("rate_limits"), options.get("hold_for")
        if limits_for is None and hold_for is None:
            return
        # Dramatiq logs and ignores any error a hook raises that is not a
        # MiddlewareError, which would let the send run unlimited.
        try:
            # A hold (a pause, a blackout) is asked first: a held message takes no slot.
            held = hold_for(message) if hold_for is not None else None
            if held is not None:
                scope, wait_ms = held
                why = f"held by a {scope}"
            else:
                decision = self.limiter.decide(limits_for(message) if limits_for else [])
                if decision.wait_ms == 0:
                    return
                scope, wait_ms = decision.refused_by.scope, decision.wait_ms
                why = f"its {scope} rate limit is full"
            delay = max(1, min(wait_ms, self.max_deferral))
            message.options["deferrals"] = message.options.get("deferrals", 0) + 1
            broker.enqueue(message, delay=delay)
        except Exception as exc:
            raise RateLimitError(
                f"could not apply the rate limits of message {message.message_id}: {exc}"
            ) from exc
        count("outreach_ratelimit_deferrals_total", scope=scope)
        on_deferral = broker.get_actor(message.actor_name).options.get("on_deferral")
        if on_deferral is not None:
            try:
                on_deferral(message, delay)
            except Exception:
                self.logger.warning("on_deferral of message %r failed", message.message_id,
                                    exc_info=True)
        # Named as the actor's idempotency_key names its effect (the send: our message
        # id, which every other log line of that email uses), beside Dramatiq's id.
        effect = broker.get_actor(message.actor_name).options.get("idempotency_key")
        named = effect(message) if callable(effect) else None
        self.logger.info(
            "Deferred message %s by %d ms: %s.",
            f"{named} ({message.message_id})" if named else repr(message.message_id),
            delay, why,
        )
        raise quiet_skip(message.message_id, f"deferred for {delay} ms: {why}")
