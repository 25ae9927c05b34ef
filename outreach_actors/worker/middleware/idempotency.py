"""Middleware that lets one delivery of a message perform its effect, and skips the duplicates."""

from __future__ import annotations

import hashlib
import json
import threading
import uuid
from collections.abc import Callable

import dramatiq
from dramatiq.logging import get_logger
from dramatiq.middleware import Middleware, MiddlewareError

from outreach_actors.domain.metrics import count
from outreach_actors.worker.leases import Leases, LeaseState
from outreach_actors.worker.middleware.skips import quiet_skip


class IdempotencyError(MiddlewareError):
    """The lease of a message could not be taken (store down, bad key function).

    A MiddlewareError, so that Dramatiq fails the message (and Retries retries it)
    instead of logging the error and running the actor unguarded.
    """


def default_effect_key(message: dramatiq.Message) -> str:
    """A digest of the arguments: they identify the effect, whatever the message id."""
    arguments = json.dumps([message.args, message.kwargs], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(arguments.encode()).hexdigest()


def effect_key(actor: dramatiq.Actor, message: dramatiq.Message) -> str | None:
    """The key naming the effect of ``message``, or None when it is not guarded.

    Looked up in Dramatiq's order: the message's ``idempotency_key`` option (a
    string, or False for a deliberate re-run), then the actor's (a callable, or
    False), then a digest of the arguments.
    """
    if "idempotency_key" in message.options:
        return message.options["idempotency_key"] or None
    key_for = actor.options.get("idempotency_key")
    if key_for is None:
        # periodiq sends the same argument-less message at every tick, and each is wanted.
        return None if actor.options.get("periodic") else default_effect_key(message)
    return key_for(message) if key_for else None


class Idempotency(Middleware):
    """Middleware that runs each effect once however often its message is delivered.

    The effect of a message is named by :func:`effect_key`: the message option
    ``idempotency_key`` (a string, or False), else the actor option (a callable
    from the message to a string, or False to opt out), else a digest of the
    arguments; periodic actors are left out, every tick being the same message.
    Keys are scoped by actor name.

    Before processing, a lease on the key is taken (set-if-absent with a time to
    live). A duplicate that finds the lease held is put back after
    ``duplicate_delay``; one that finds the effect done is skipped. When the
    actor succeeds the key is marked done for ``done_ttl``; when it fails, or the
    message is skipped by a later middleware (a rate-limit deferral), the lease
    is released so the next attempt runs. A deliberate re-run of a done effect
    (a replay) is sent with ``idempotency_key=False``.

    This is a second line behind the actors' own claims in the database: a lease
    that expires while its actor still runs lets a duplicate start.

    Parameters:
      leases_for(Callable[[Broker], Leases]): Builds the lease store for the
        broker when a worker boots (shared Redis, or in-process for the stub).
      lease_ttl(int): Milliseconds a lease lasts if its worker dies without
        releasing it. Defaults to 5 minutes.
      done_ttl(int): Milliseconds a completed effect is remembered. Defaults
        to 24 hours.
      duplicate_delay(int): Milliseconds a duplicate that finds the lease held
        waits before it looks again. Defaults to 1 second.
    """

    def __init__(
        self,
        *,
        leases_for: Callable[[dramatiq.Broker], Leases],
        lease_ttl: int = 300_000,
        done_ttl: int = 86_400_000,
        duplicate_delay: int = 1_000,
    ) -> None:
        for name, value in [("lease_ttl", lease_ttl), ("done_ttl", done_ttl),
                            ("duplicate_delay", duplicate_delay)]:
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value} ms")
        self.logger = get_logger(__name__, type(self))
        self.leases_for = leases_for
        self.lease_ttl = lease_ttl
        self.done_ttl = done_ttl
        self.duplicate_delay = duplicate_delay
        self.leases: Leases | None = None
        # A worker thread runs the before and after hooks of one message in turn.
        self.held = threading.local()

    @property
    def actor_options(self) -> set[str]:
        return {"idempotency_key"}

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        # Several workers may share one broker (and an in-process store) in tests.
        if self.leases is None:
            self.leases = self.leases_for(broker)

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        self.held.lease = None
        # Dramatiq logs and ignores any error a hook raises that is not a
        # MiddlewareError, which would let the actor run unguarded.
        try:
            effect = effect_key(broker.get_actor(message.actor_name), message)
            if effect is None:
                return
            key = f"{message.actor_name}:{effect}"
            token = f"{message.message_id}/{uuid.uuid4().hex}"
            outcome = self.leases.acquire(key, token, self.lease_ttl)
            if outcome.state is LeaseState.HELD:
                broker.enqueue(message, delay=self.duplicate_delay)
        except Exception as exc:
            raise IdempotencyError(
                f"could not take the idempotency lease of message {message.message_id}: {exc}"
            ) from exc
        if outcome.state is LeaseState.ACQUIRED:
            self.held.lease = (key, token)
            return
        count("outreach_idempotency_duplicates_total", outcome=outcome.state.value)
        if outcome.state is LeaseState.DONE:
            self.logger.info(
                "Skipped message %r: effect %r was already done by %s.",
                message.message_id, key, outcome.holder,
            )
            raise quiet_skip(message.message_id, "effect already done")
        self.logger.info(
            "Put back message %r for %d ms: effect %r is in progress in %s.",
            message.message_id, self.duplicate_delay, key, outcome.holder,
        )
        raise quiet_skip(message.message_id, "effect in progress")

    def after_process_message(
        self, broker: dramatiq.Broker, message: dramatiq.Message, *, result=None, exception=None
    ) -> None:
        lease = self._take_lease()
        if lease is None:
            return
        key, token = lease
        if exception is not None or message.failed:
            self.leases.release(key, token)
        elif not self.leases.complete(key, token, self.done_ttl):
            self.logger.warning(
                "The lease on effect %r expired before message %r finished; "
                "a duplicate may have run. Raise OUTREACH_IDEMPOTENCY_LEASE if this repeats.",
                key, message.message_id,
            )

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.Message) -> None:
        lease = self._take_lease()
        if lease is not None:
            self.leases.release(*lease)

    def _take_lease(self) -> tuple[str, str] | None:
        lease = getattr(self.held, "lease", None)
        self.held.lease = None
        return lease
