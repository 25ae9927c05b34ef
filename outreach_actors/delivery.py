"""Render and send one email: the domain behind the render and send actors.

Both steps are safe to run twice. Rendering stores the OutboundMessage under the
send action's dedupe key (a replay finds the row); sending claims the message
``rendered -> sending`` before calling SendGrid (a replay finds the claim taken).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path

import peewee

from . import engine
from .metrics import count
from .models import (
    Enrollment,
    OutboundMessage,
    ScheduledAction,
    SenderIdentity,
    database_proxy,
    new_message_id,
    utcnow,
)
from .observability import tag
from .providers.sendgrid import OutgoingEmail, SendOutcome
from .rendering import RenderError, TemplateRenderer
from .settings import Settings, get_settings
from .suppressions import is_suppressed
from .unsubscribe import unsubscribe_url

logger = logging.getLogger(__name__)


class RetryableSendError(Exception):
    """SendGrid refused for now (429, 5xx, network): Dramatiq retries with backoff."""

    def __init__(self, message_id: str, outcome: SendOutcome) -> None:
        self.outcome = outcome
        super().__init__(
            f"send of message {message_id} will be retried: {outcome.status_code} {outcome.error}"
        )


@lru_cache(maxsize=8)
def renderer_for(templates_dir: Path) -> TemplateRenderer:
    return TemplateRenderer(templates_dir)


def _sender_for(enrollment: Enrollment, plan_sender: str | None) -> SenderIdentity | None:
    query = SenderIdentity.select().where(SenderIdentity.tenant == enrollment.tenant_id)
    if plan_sender:
        query = query.where(SenderIdentity.email == plan_sender.lower())
    return query.order_by(SenderIdentity.verified.desc(), SenderIdentity.id).first()


def render_action(action_id: int, *, settings: Settings | None = None,
                  now: datetime | None = None) -> str | None:
    """Render the email of a send action and store it; returns the message id to send.

    Returns None when there is nothing to send: the action was cancelled, or the
    enrollment left the node before the action ran.
    """
    settings = settings or get_settings()
    now = now or utcnow()
    action = ScheduledAction.get_or_none(ScheduledAction.id == action_id)
    if action is None or action.kind != ScheduledAction.SEND:
        logger.warning("Render of action=%s skipped: no such send action", action_id)
        return None
    message_key = f"message:{action.dedupe_key}"
    existing = OutboundMessage.get_or_none(OutboundMessage.dedupe_key == message_key)
    if existing is not None:
        logger.info("Render of action=%s is a replay; message=%s exists", action_id, existing.id)
        return existing.id
    if action.status in (ScheduledAction.CANCELLED, ScheduledAction.SKIPPED, ScheduledAction.DONE,
                         ScheduledAction.FAILED):
        logger.info("Render of action=%s skipped: action is %s", action_id, action.status)
        return None
    enrollment = action.enrollment
    if (enrollment.status != Enrollment.ACTIVE or enrollment.current_node != action.node
            or enrollment.version != action.visit_version):
        ScheduledAction.finish(action_id, ScheduledAction.SKIPPED, "enrollment moved on", now=now)
        return None

    plan = engine.plan_for_id(enrollment.plan_id)
    tag(action=action_id, enrollment=enrollment.id, tenant=enrollment.tenant_id, plan=plan.name,
        node=action.node)
    node = plan.node(action.node)
    contact = enrollment.contact
    tenant = enrollment.tenant
    sender = _sender_for(enrollment, plan.sender)
    if sender is None:
        problem = (
            f"tenant {tenant.id!r} has no sender identity"
            + (f" {plan.sender!r}" if plan.sender else "")
            + "; add one with `outreach sender add EMAIL --tenant TENANT --verified`"
        )
        _fail_render(action, enrollment, problem, now)
        return None

    message_id = new_message_id()
    unsubscribe = unsubscribe_url(settings, tenant.id, contact.email, message_id)
    context = {
        "contact": {**(contact.fields or {}), "email": contact.email, "timezone": contact.timezone},
        "tenant": {"id": tenant.id, "name": tenant.name or tenant.id},
        "plan": {"name": plan.name, "version": enrollment.plan.version},
        "node": {"name": action.node},
        "unsubscribe_url": unsubscribe,
    }
    try:
        rendered = renderer_for(Path(settings.templates_dir)).render_email(
            subject=node.subject or "", template=node.template, body=node.body, context=context,
        )
    except RenderError as exc:
        _fail_render(action, enrollment, str(exc), now)
        return None
    if problem := _unstorable(rendered.subject, rendered.html, rendered.text):
        _fail_render(action, enrollment, f"node {action.node!r}: {problem}", now)
        return None

    try:
        with database_proxy.atomic():
            OutboundMessage.create(
                id=message_id, tenant=tenant, enrollment=enrollment, action=action,
                node=action.node, dedupe_key=message_key, status=OutboundMessage.RENDERED,
                to_email=contact.email, from_email=sender.email, from_name=sender.name or "",
                subject=rendered.subject, html=rendered.html, text=rendered.text,
                categories=[*plan.categories, *node.categories],
                headers={
                    "List-Unsubscribe": f"<{unsubscribe}>",
                    "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
                },
                created_at=now,
            )
            ScheduledAction.finish(action_id, ScheduledAction.DONE, "rendered", message_id=message_id,
                           now=now)
    except peewee.IntegrityError:
        # Two renders of one action raced: the other one stored the message first.
        existing = OutboundMessage.get(OutboundMessage.dedupe_key == message_key)
        return existing.id
    logger.info("Rendered message=%s action=%s node=%s", message_id, action_id, action.node)
    return message_id


def _unstorable(*texts: str) -> str | None:
    """Why rendered text cannot be stored or sent, if it cannot: a contact field may
    carry a NUL (PostgreSQL refuses it) or a lone surrogate (not encodable as UTF-8)."""
    for text in texts:
        if "\x00" in text:
            return "the rendered email contains a NUL character (from a contact field?)"
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "the rendered email contains text that is not valid Unicode (from a contact field?)"
    return None


def _fail_render(action: ScheduledAction, enrollment: Enrollment, problem: str,
                 now: datetime) -> None:
    logger.error("Render of action=%s failed: %s", action.id, problem)
    ScheduledAction.finish(action.id, ScheduledAction.FAILED, problem, now=now)
    engine.exit_enrollment(enrollment.id, "send_failed", now=now)


@dataclass(frozen=True)
class SendResult:
    """What happened to one send attempt, for logs, metrics and tests."""

    message_id: str
    status: str  # the message's status afterwards, or "replay"
    detail: str = ""


def claim_for_sending(message_id: str, now: datetime) -> bool:
    return bool(
        OutboundMessage.update(
            status=OutboundMessage.SENDING, send_started_at=now,
            attempts=OutboundMessage.attempts + 1,
        )
        .where(OutboundMessage.id == message_id, OutboundMessage.status == OutboundMessage.RENDERED)
        .execute()
    )


def _set_status(message_id: str, status: str, **values) -> None:
    OutboundMessage.update(status=status, **values).where(OutboundMessage.id == message_id).execute()


def send_message(message_id: str, client, *, now: datetime | None = None,
                 final_attempt: bool = False) -> SendResult:
    """Send one message and count its outcome (see _send_message)."""
    try:
        result = _send_message(message_id, client, now=now, final_attempt=final_attempt)
    except RetryableSendError:
        count("outreach_emails_total", outcome="retry")
        raise
    if result.status != "replay":
        count("outreach_emails_total", outcome=result.status)
    return result


def _send_message(message_id: str, client, *, now: datetime | None = None,
                  final_attempt: bool = False) -> SendResult:
    """Send one rendered message through ``client`` (a SendGridClient) exactly once.

    Raises RetryableSendError for 429/5xx/network failures (the message goes back to
    ``rendered`` so the retry can claim it), unless ``final_attempt``, when it is
    recorded as failed instead.
    """
    now = now or utcnow()
    if not claim_for_sending(message_id, now):
        current = OutboundMessage.get_or_none(OutboundMessage.id == message_id)
        state = current.status if current else "missing"
        logger.info("Send of message=%s skipped: already %s", message_id, state)
        return SendResult(message_id, "replay", state)
    message = OutboundMessage.get_by_id(message_id)
    tag(message=message_id, tenant=message.tenant_id, node=message.node,
        enrollment=message.enrollment_id)
    enrollment = message.enrollment
    if enrollment is not None and (
        enrollment.status != Enrollment.ACTIVE or enrollment.current_node != message.node
    ):
        _set_status(message_id, OutboundMessage.CANCELLED, error="enrollment moved on before sending")
        return SendResult(message_id, OutboundMessage.CANCELLED, "enrollment moved on")
    # Suppressions win: checked again right before the provider call.
    if is_suppressed(message.tenant_id, message.to_email):
        _set_status(message_id, OutboundMessage.SUPPRESSED, error="address is suppressed")
        if enrollment is not None:
            engine.exit_enrollment(enrollment.id, "suppressed", now=now)
        logger.info("Send of message=%s skipped: recipient suppressed", message_id)
        return SendResult(message_id, OutboundMessage.SUPPRESSED)
    sender = SenderIdentity.get_or_none(
        SenderIdentity.tenant == message.tenant_id, SenderIdentity.email == message.from_email
    )
    if sender is None or not sender.verified:
        return _fail(message, f"sender {message.from_email} is not a verified sender identity", now)

    outcome = client.send(
        OutgoingEmail(
            message_id=message.id, tenant=message.tenant_id, to_email=message.to_email,
            from_email=message.from_email, from_name=message.from_name, subject=message.subject,
            html=message.html, text=message.text, categories=list(message.categories or []),
            headers=dict(message.headers or {}),
            custom_args={"outreach_message_id": message.id, "outreach_tenant": message.tenant_id},
        )
    )
    if outcome.kind == "sent":
        with database_proxy.atomic():
            _set_status(message_id, OutboundMessage.SENT, sent_at=now, error=None,
                        provider_message_id=outcome.provider_message_id)
            engine.after_send(OutboundMessage.get_by_id(message_id), now=now)
        logger.info("Sent message=%s provider_id=%s", message_id, outcome.provider_message_id)
        return SendResult(message_id, OutboundMessage.SENT)
    if outcome.kind == "ambiguous":
        _set_status(message_id, OutboundMessage.AMBIGUOUS, error=outcome.error)
        logger.warning("Send of message=%s is ambiguous: %s", message_id, outcome.error)
        return SendResult(message_id, OutboundMessage.AMBIGUOUS, outcome.error or "")
    if outcome.kind == "retry" and not final_attempt:
        _set_status(message_id, OutboundMessage.RENDERED, error=outcome.error)
        raise RetryableSendError(message_id, outcome)
    return _fail(message, f"{outcome.status_code or ''} {outcome.error or ''}".strip(), now)


def _fail(message: OutboundMessage, problem: str, now: datetime) -> SendResult:
    _set_status(message.id, OutboundMessage.FAILED, error=problem)
    if message.enrollment_id is not None:
        engine.exit_enrollment(message.enrollment_id, "send_failed", now=now)
    logger.error("Send of message=%s failed permanently: %s", message.id, problem)
    return SendResult(message.id, OutboundMessage.FAILED, problem)
