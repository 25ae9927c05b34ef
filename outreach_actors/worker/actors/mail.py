"""The campaign actors: render, send, fire timeouts; and how due actions become messages.

Each one loads ids and calls the domain; duplicates are absorbed by the domain's
row claims and by the idempotency middleware, rate limits by the rate-limit one.
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import Any

import dramatiq
from dramatiq.middleware import CurrentMessage

from outreach_actors.domain import dispatch, timers
from outreach_actors.domain.mail import (
    RetryableSendError,
    SendScope,
    order_message_id,
    render_for_send,
    render_for_send_many,
    send_message,
    send_scope,
)
from outreach_actors.domain.mail.holds import send_hold
from outreach_actors.domain.mail.send import HELD
from outreach_actors.domain.store.models import ScheduledAction, utcnow
from outreach_actors.providers.sendgrid.client import sendgrid_client_from_settings
from outreach_actors.settings import get_settings
from outreach_actors.worker.broker import enqueue_many
from outreach_actors.worker.limiters import Limit, default_limits
from outreach_actors.worker.middleware.polling import RENDER_QUEUE, SEND_QUEUE, TIMER_QUEUE
from outreach_actors.worker.middleware.skips import quiet_skip

logger = logging.getLogger(__name__)

SEND_MAX_RETRIES = get_settings().send_max_retries


@dramatiq.actor(queue_name=RENDER_QUEUE, max_retries=5)
def render(action_id: int) -> dict | str | None:
    """Render a send action's email; its result (a send order) is piped to `send`."""
    return render_for_send(action_id)


# How long one render_batch message starts renders for: each render is bounded
# (OUTREACH_RENDER_CPU_LIMIT, OUTREACH_RENDER_TIMEOUT), but a batch of a tenant's slow
# templates would hold its thread for the sum, past Dramatiq's time limit (10 minutes),
# which would fail the batch and the others' emails in it again at every retry.
RENDER_BATCH_BUDGET_S = 60.0


@dramatiq.actor(queue_name=RENDER_QUEUE, max_retries=5)
def render_batch(action_ids: list[int]) -> None:
    """Render the emails of send actions that came due together, and enqueue a send for
    each: what `render` and its pipe do, with one message, one read and one write for
    the batch. An action whose render fails (a fault, not a template error) goes to
    `render` alone, with retries of its own, and holds back none of the others; those
    left when the batch's time is up (RENDER_BATCH_BUDGET_S) go to a batch of their own."""
    batch = render_for_send_many(action_ids, budget_seconds=RENDER_BATCH_BUDGET_S)
    if batch.deferred:
        logger.warning("Render batch out of time after %d of its %d actions; the other %d go to "
                       "a batch of their own", len(action_ids) - len(batch.deferred),
                       len(action_ids), len(batch.deferred))
        render_batch.send(batch.deferred)
    for action_id, error in batch.raised.items():
        logger.warning("Render of action=%s failed in a batch (%s: %s); it is rendered alone",
                       action_id, type(error).__name__, error)
        dramatiq.pipeline([render.message(action_id), send.message()]).run()
    enqueue_many(send.broker, [send.message(order) for order in batch.orders.values()
                               if order is not None])


def _send_order(message: dramatiq.Message) -> dict | str | None:
    """What a send message carries: the render's send order, or a message id."""
    return message.args[0] if message.args else None


_last_scope = threading.local()


def _scope_of(message: dramatiq.Message) -> SendScope | None:
    """The send's scope (see send_scope), read once for its hold and its limits."""
    # Each delivery of a message differs in its deferrals or retries: only the hold and
    # the limits of one delivery share a read.
    delivery = (message.message_id, message.options.get("deferrals"),
                message.options.get("retries"))
    last = getattr(_last_scope, "value", None)
    if last is not None and last[0] == delivery:
        return last[1]
    scope = send_scope(_send_order(message))
    _last_scope.value = (delivery, scope)
    return scope


def send_rate_limits(message: dramatiq.Message) -> list[Limit]:
    """Every scope one send takes: its sender, tenant, recipient domain and the global one.

    Read from the send order the render gave, or from the message when the order is
    not fresh (see send_scope).
    """
    scope = _scope_of(message)
    if scope is None:
        return []  # nothing will be sent: do not take a slot
    return default_limits(
        get_settings(), tenant=scope.tenant, sender=scope.sender,
        recipient_domain=scope.recipient_domain,
        tenant_overrides=scope.tenant_overrides, sender_overrides=scope.sender_overrides,
        recipient=scope.recipient, frequency_capped=scope.frequency_capped,
        first_sent=scope.first_sent,
    )


# Longer than any max_deferral: a pause holds a send until it is lifted, looking again
# every max_deferral.
_UNTIL_RESUMED_MS = 2**62


def send_hold_for(message: dramatiq.Message) -> tuple[str, int] | None:
    """What holds a send before its rate limits (see mail.holds): (why, ms) or None."""
    scope = _scope_of(message)
    if scope is None:
        return None
    now = utcnow()
    hold = send_hold(scope, now, waited=bool(message.options.get("deferrals")))
    if hold is None:
        return None
    if hold.until is None:
        return hold.reason, _UNTIL_RESUMED_MS
    return hold.reason, max(1, int((hold.until - now).total_seconds() * 1000))


def send_effect(message: dramatiq.Message) -> str | None:
    """The idempotency key of a send: its message, however the send was ordered (a
    send order from a render, or a bare id from the reconciler)."""
    return order_message_id(_send_order(message))


def send_deferred(message: dramatiq.Message, delay_ms: int) -> None:
    """A send held back by its rate limits waits in the broker, not lost: say until when."""
    message_id = send_effect(message)
    if message_id is not None:
        dispatch.note_send_waiting(message_id, utcnow() + timedelta(milliseconds=delay_ms))


@dramatiq.actor(queue_name=SEND_QUEUE, max_retries=SEND_MAX_RETRIES, min_backoff=5_000,
                max_backoff=600_000, rate_limits=send_rate_limits, on_deferral=send_deferred,
                idempotency_key=send_effect, hold_for=send_hold_for)
def send(order: dict | str | None) -> None:
    """Send one rendered message through SendGrid (``order``: what the render gave,
    or a message id)."""
    message_id = order_message_id(order)
    if message_id is None:
        return  # the render found nothing to send
    message = CurrentMessage.get_current_message()
    retries = message.options.get("retries", 0) if message else 0
    try:
        # Timers due soon after the send (a short no_open) are enqueued once it commits.
        with dispatch.dispatch_after_commit(enqueue_actions):
            result = send_message(message_id, sendgrid_client_from_settings(get_settings()),
                                  final_attempt=retries >= SEND_MAX_RETRIES)
    except RetryableSendError as exc:
        # Expected (429, 5xx, the network): Dramatiq's Retry is retried like any error but
        # logged without a traceback and not reported to Sentry as one; SendGrid's
        # Retry-After, when it gives one, sets the delay instead of the backoff.
        after_s = exc.outcome.retry_after_s
        logger.warning("Send of message=%s will be retried (attempt %d of %d): %s",
                       message_id, retries + 1, SEND_MAX_RETRIES + 1, exc)
        raise dramatiq.Retry(str(exc), delay=int(after_s * 1000) if after_s else None) from exc
    if result.status == HELD and message is not None:
        # The claim found the plan or sender paused (a pause this process had not read
        # yet): the send is not done. Skipped, its idempotency lease is released rather
        # than marked done, so the reconciler's later message sends it once resumed.
        raise quiet_skip(message.message_id, f"send of {message_id} held: {result.detail}")


# Of the messages a worker process holds, timers run first (lower runs first; Dramatiq's
# default is 0): firing one is a short transaction that decides what is sent next, and
# behind a burst of renders and sends it fired late and held back its own follow-up.
TIMER_PRIORITY = -10


# The dispatcher sends batches (fire_timeouts); this single-timer actor stays so that
# messages enqueued by an earlier version, still in a broker, are still processed.
@dramatiq.actor(queue_name=TIMER_QUEUE, max_retries=10, priority=TIMER_PRIORITY)
def fire_timeout(action_id: int) -> None:
    """Fire a due timeout: a synthetic no_open/no_click/elapsed event, exactly once."""
    with dispatch.dispatch_after_commit(enqueue_actions):
        timers.fire_timeout(action_id)


@dramatiq.actor(queue_name=TIMER_QUEUE, max_retries=10, priority=TIMER_PRIORITY)
def fire_timeouts(action_ids: list[int]) -> None:
    """Fire a batch of timeouts that came due together (see timers.fire_timeouts); the
    sends and timers their moves schedule due soon are enqueued once they commit."""
    with dispatch.dispatch_after_commit(enqueue_actions):
        timers.fire_timeouts(action_ids)


def enqueue_actions(due: list[tuple[ScheduledAction, int]], **options: Any) -> None:
    """Turn claimed ScheduledActions, each with its delay in ms, into broker messages:
    a message per batch of sends (rendered, then each sent by a message of its own)
    and per batch of timers (``options``: message options)."""
    settings = get_settings()
    sends = [(action, delay_ms) for action, delay_ms in due if action.kind == ScheduledAction.SEND]
    timeouts = [(action, delay_ms) for action, delay_ms in due
                if action.kind != ScheduledAction.SEND]
    # Actions due within one polling interval of the timer queue share a message: it
    # runs them no later. (Sends wait for no deadline that tight; the same window
    # keeps one rule.)
    window_ms = int(settings.worker_poll_interval.total_seconds() * 1000)
    for actor, actions, max_size in ((render_batch, sends, settings.render_batch_size),
                                     (fire_timeouts, timeouts, settings.timeout_batch_size)):
        for ids, delay_ms in dispatch.due_batches(actions, max_size=max_size, window_ms=window_ms):
            actor.send_with_options(args=(ids,), delay=delay_ms or None, **options)


def enqueue_send(message_id: str, **options: Any) -> None:
    send.send_with_options(args=(message_id,), **options)


# Deliberate re-runs, where the database says the work is not done: they skip the
# idempotency lease. A delivery that found the claim of a killed worker taken ran
# to its end ("replay") and left the effect marked done; that mark must not skip
# the re-run, or the timer (or the resend) is lost until the mark expires. (The
# sends a re-run render enqueues are of new messages, or of messages the database
# says it stored: their own leases decide.)
def requeue_actions(due: list[tuple[ScheduledAction, int]]) -> None:
    """Enqueue again actions whose lease expired."""
    enqueue_actions(due, idempotency_key=False)


def requeue_send(message_id: str) -> None:
    """Enqueue an ambiguous send again under the ``resend`` policy."""
    enqueue_send(message_id, idempotency_key=False)
