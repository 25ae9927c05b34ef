"""Ambiguous sends, the one policy for them: a send whose request went out and whose
answer was lost may or may not have reached SendGrid. It is marked ``ambiguous``, never
resent silently, resolved as sent by any provider event that proves it, and settled by
``OUTREACH_AMBIGUOUS_SEND_POLICY`` (``fail`` or ``resend``) when the window passes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from outreach_actors.domain import engine
from outreach_actors.domain.store.models import (
    MessageEvent,
    OutboundMessage,
    database_proxy,
    utcnow,
)
from outreach_actors.domain.vocabulary import PROOF_OF_SEND
from outreach_actors.settings import Settings, get_settings

logger = logging.getLogger(__name__)

# The error of a send the `fail` policy ended (settle_ambiguous_sends).
UNCONFIRMED_AMBIGUOUS_SEND = "ambiguous send not confirmed by any provider event"


def record_late_proof(message: OutboundMessage, occurred_at: datetime,
                       provider_message_id: str | None) -> None:
    """SendGrid confirmed a send after the ambiguous window, when the `fail` policy had
    already ended it (its events are retried for 24 hours). The message was sent: say
    so, loudly; its enrollment stays failed, since reviving it now would surprise more."""
    updated = (
        OutboundMessage.update(
            status=OutboundMessage.SENT,
            sent_at=message.send_started_at or occurred_at,
            provider_message_id=message.provider_message_id or provider_message_id,
            error=f"{UNCONFIRMED_AMBIGUOUS_SEND}; confirmed late by a provider event "
                  "(the email was sent; its enrollment had already failed)",
        )
        .where(OutboundMessage.id == message.id, OutboundMessage.status == OutboundMessage.FAILED)
        .execute()
    )
    if updated:
        logger.warning("Send message=%s failed by the ambiguous-send policy was confirmed late by "
                       "SendGrid: it was sent; its enrollment stays failed", message.id)


def resolve_ambiguous_send(
    message: OutboundMessage, occurred_at: datetime, provider_message_id: str | None
) -> bool:
    """An ambiguous send was accepted after all: record it as sent and start its timers."""
    with database_proxy.atomic():
        updated = (
            OutboundMessage.update(
                status=OutboundMessage.SENT,
                sent_at=message.send_started_at or occurred_at,
                provider_message_id=message.provider_message_id or provider_message_id,
                error=(message.error or "") + " | resolved by provider event",
            )
            .where(OutboundMessage.id == message.id,
                   OutboundMessage.status == OutboundMessage.AMBIGUOUS)
            .execute()
        )
        if updated:
            engine.after_send(OutboundMessage.get_by_id(message.id))
    if updated:
        logger.info("Resolved ambiguous send message=%s as sent", message.id)
    return bool(updated)


def confirm_by_event(message: OutboundMessage, event_type: str, occurred_at: datetime,
                     provider_message_id: str | None) -> None:
    """A provider event of ``message`` arrived: if its send was ambiguous (or failed by the
    policy for that), any event but ``unknown`` and ``subscribed`` proves SendGrid took it."""
    if event_type not in PROOF_OF_SEND:
        return
    if message.status == OutboundMessage.AMBIGUOUS:
        resolve_ambiguous_send(message, occurred_at, provider_message_id)
    elif (message.status == OutboundMessage.FAILED
          and (message.error or "").startswith(UNCONFIRMED_AMBIGUOUS_SEND)):
        record_late_proof(message, occurred_at, provider_message_id)


def mark_interrupted_sends(cutoff: datetime, *, limit: int) -> int:
    """Mark sends left ``sending`` since before ``cutoff`` (a worker died mid-call)
    ambiguous; resolve at once those a stored provider event already proves."""
    interrupted = list(
        OutboundMessage.select(*AMBIGUOUS_COLUMNS)
        .where(OutboundMessage.status == OutboundMessage.SENDING,
               OutboundMessage.send_started_at < cutoff)
        .limit(limit)
    )
    ambiguous = (
        OutboundMessage.update(
            status=OutboundMessage.AMBIGUOUS,
            error="worker stopped while sending; waiting for a provider event to confirm",
        )
        .where(OutboundMessage.id.in_([message.id for message in interrupted]),
               OutboundMessage.status == OutboundMessage.SENDING)
        .execute()
    ) if interrupted else 0
    if ambiguous:
        logger.warning("Marked %d interrupted sends ambiguous", ambiguous)
    for message in interrupted:
        # SendGrid's events often arrive before the lease runs out: while the row still
        # said `sending`, they confirmed nothing. Resolve now rather than at the window.
        resolve_if_proven(message)
    return ambiguous


# What resolving an ambiguous send reads of its message.
AMBIGUOUS_COLUMNS = (
    OutboundMessage.id, OutboundMessage.enrollment, OutboundMessage.send_started_at,
    OutboundMessage.provider_message_id, OutboundMessage.error,
)


def resolve_if_proven(message: OutboundMessage) -> bool:
    """Resolve an ambiguous send as sent if a provider event for it is already stored."""
    proof = (
        MessageEvent.select(MessageEvent.occurred_at)
        .where(MessageEvent.message == message.id,
               MessageEvent.synthetic == False,  # noqa: E712 (peewee expression)
               MessageEvent.type.in_(sorted(PROOF_OF_SEND)))
        .order_by(MessageEvent.occurred_at)
        .first()
    )
    return proof is not None and resolve_ambiguous_send(message, proof.occurred_at, None)


def settle_ambiguous_sends(
    enqueue_send: Callable[[str], None], *, now: datetime | None = None, settings: Settings | None = None,
) -> int:
    """Apply the ambiguous-send policy to sends no provider event confirmed in time.

    ``fail``: the message is failed and its enrollment ends (status failed), so a
    contact never gets the same email twice. ``resend``: the message goes back to
    ``rendered`` and is sent again, with a warning; the choice is the operator's.
    """
    settings = settings or get_settings()
    now = now or utcnow()
    expired = list(
        OutboundMessage.select(*AMBIGUOUS_COLUMNS)
        .where(OutboundMessage.status == OutboundMessage.AMBIGUOUS,
               OutboundMessage.send_started_at < now - settings.ambiguous_send_window)
        .limit(settings.dispatch_batch_size)
    )
    settled = 0
    for message in expired:
        # An event stored while the send still looked in flight (a worker killed
        # between SendGrid's 202 and its commit) confirmed it without resolving it.
        if resolve_if_proven(message):
            continue
        if settings.ambiguous_send_policy == "resend":
            target, note = OutboundMessage.RENDERED, "ambiguous send not confirmed; sending again"
        else:
            target, note = OutboundMessage.FAILED, UNCONFIRMED_AMBIGUOUS_SEND
        updated = (
            OutboundMessage.update(status=target, error=note)
            .where(OutboundMessage.id == message.id,
                   OutboundMessage.status == OutboundMessage.AMBIGUOUS)
            .execute()
        )
        if not updated:
            continue  # an event confirmed it meanwhile
        settled += 1
        logger.warning("Ambiguous send message=%s settled by policy=%s",
                       message.id, settings.ambiguous_send_policy)
        if target == OutboundMessage.RENDERED:
            enqueue_send(message.id)
        elif message.enrollment_id is not None:
            engine.exit_enrollment(message.enrollment_id, "ambiguous_send", now=now)
    return settled
