"""Send one rendered email through the provider exactly once: the domain behind the send
actor. It claims the message ``rendered -> sending`` before the call (a replay finds the
claim taken) and re-checks the suppression list right before it (DESIGN invariant 4)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from outreach_actors.domain import engine
from outreach_actors.domain.addresses import address_key
from outreach_actors.domain.mail.outgoing import REPLY_TO_HEADER, OutgoingEmail, SendOutcome
from outreach_actors.domain.metrics import count
from outreach_actors.domain.observability import tag
from outreach_actors.domain.pauses import in_force
from outreach_actors.domain.scheduled_soon import note_scheduled
from outreach_actors.domain.store.db import prepare
from outreach_actors.domain.store.models import (
    Enrollment,
    OutboundMessage,
    Plan,
    ScheduledAction,
    SenderIdentity,
    SendingPause,
    database_proxy,
    insert_statements,
    utcnow,
    write_transaction,
)
from outreach_actors.domain.store.statements import one_statement_writes, statement
from outreach_actors.domain.stored_plans import plan_for_id
from outreach_actors.domain.suppressions import is_suppressed, suppressed_sql

logger = logging.getLogger(__name__)


class RetryableSendError(Exception):
    """SendGrid refused for now (429, 5xx, network): Dramatiq retries with backoff."""

    def __init__(self, message_id: str, outcome: SendOutcome) -> None:
        self.outcome = outcome
        super().__init__(
            f"send of message {message_id} will be retried: {outcome.status_code} {outcome.error}"
        )


# The message marked sent; on PostgreSQL the node's timers are inserted by the same
# statement (``WITH sent AS (this) INSERT ...``), for the reasons above.
_MARK_SENT = """
UPDATE outbound_message SET status = {p}, sent_at = {p}, error = NULL, provider_message_id = {p}
WHERE id = {p}
"""


@dataclass(frozen=True)
class SendResult:
    """What happened to one send attempt, for logs, metrics and tests."""

    message_id: str
    status: str  # the message's status afterwards, or "replay"
    detail: str = ""


#: The outcome of a send whose plan or sender is paused: still rendered, it waits.
HELD = "held"


def _held_by(message_id: str) -> str | None:
    """Which pause holds a rendered message (``plan 'x'``, ``sender 'y'``), if one does."""
    message = (OutboundMessage.select(OutboundMessage.tenant, OutboundMessage.from_email,
                                      OutboundMessage.enrollment)
               .where(OutboundMessage.id == message_id).first())
    if message is None:
        return None
    plan_name = None
    if message.enrollment_id is not None:
        plan_name = (Plan.select(Plan.name).join(Enrollment, on=(Enrollment.plan == Plan.id))
                     .where(Enrollment.id == message.enrollment_id).scalar())
    for kind, name in ((SendingPause.SENDER, message.from_email), (SendingPause.PLAN, plan_name)):
        if name is not None and in_force(message.tenant_id, kind, name):
            return f"{kind} {name!r}"
    return None


def note_first_send(tenant_id: str, sender: str, now: datetime) -> None:
    """Record the sender identity's first send, the first day of its warm-up (once)."""
    SenderIdentity.update(first_sent_at=now).where(
        SenderIdentity.tenant == tenant_id, SenderIdentity.email == sender,
        SenderIdentity.first_sent_at.is_null()).execute()


def claim_for_sending(message_id: str, now: datetime) -> bool:
    """``rendered -> sending``; True if this call took the claim."""
    return _claim(message_id, now) is not None


class _Claimed(NamedTuple):
    """A message just claimed for sending, and what decides whether it may go out."""

    tenant_id: str
    enrollment_id: int | None
    action_id: int | None
    node: str | None
    to_email: str
    from_email: str
    from_name: str
    subject: str
    html: str
    text: str
    categories: list | None
    headers: dict | None
    enrollment_status: str | None  # None: the message has no enrollment
    current_node: str | None
    plan_id: int | None
    action_node: str | None
    visit_version: int | None
    suppressed: bool  # whether an email-channel suppression of to_email exists
    sender_verified: bool | None  # None: from_email is no sender identity of the tenant
    sender_first_sent_at: object  # None: the identity's first send (it starts its warm-up)


# The claim ``rendered -> sending``, returning the message and, read in the same
# statement, whatever decides if it may go out: the enrollment's state, the
# suppression list, the sender identity (see _Claimed; fixed SQL as above).
# Whether the message's sender or plan is paused (see domain/pauses.py): read by the
# claim itself, so that a pause and a send racing have one outcome.
_PAUSED = """EXISTS (SELECT 1 FROM sending_pause AS p
    WHERE p.tenant_id = outbound_message.tenant_id AND p.resumed_at IS NULL AND (
        (p.kind = '""" + SendingPause.SENDER + """' AND p.name = outbound_message.from_email)
        OR (p.kind = '""" + SendingPause.PLAN + """' AND p.name = (SELECT pl.name FROM enrollment AS e
            JOIN plan AS pl ON pl.id = e.plan_id WHERE e.id = outbound_message.enrollment_id))))"""
_SUPPRESSED, _SUPPRESSED_PARAMS = suppressed_sql(
    "outbound_message.tenant_id", "outbound_message.to_email", "{p}")
_CLAIM = """
UPDATE outbound_message SET status = {p}, send_started_at = {p}, attempts = attempts + 1, error = NULL
WHERE id = {p} AND status = {p} AND NOT """ + _PAUSED + """
RETURNING tenant_id, enrollment_id, action_id, node, to_email, from_email, from_name,
    subject, html, text, categories, headers,
    (SELECT e.status FROM enrollment AS e WHERE e.id = outbound_message.enrollment_id),
    (SELECT e.current_node FROM enrollment AS e WHERE e.id = outbound_message.enrollment_id),
    (SELECT e.plan_id FROM enrollment AS e WHERE e.id = outbound_message.enrollment_id),
    (SELECT a.node FROM scheduled_action AS a WHERE a.id = outbound_message.action_id),
    (SELECT a.visit_version FROM scheduled_action AS a WHERE a.id = outbound_message.action_id),
    """ + _SUPPRESSED + """,
    (SELECT s.verified FROM sender_identity AS s
     WHERE s.tenant_id = outbound_message.tenant_id AND s.email = outbound_message.from_email),
    (SELECT s.first_sent_at FROM sender_identity AS s
     WHERE s.tenant_id = outbound_message.tenant_id AND s.email = outbound_message.from_email)
"""


def _claim(message_id: str, now: datetime) -> _Claimed | None:
    """``rendered -> sending`` in one statement that also returns the message and the
    checks made before the provider call: the enrollment's state, the suppression
    list and the sender identity, each read as the claim is taken."""
    row = database_proxy.execute_sql(
        statement(_CLAIM),
        (OutboundMessage.SENDING, now, message_id, OutboundMessage.RENDERED, *_SUPPRESSED_PARAMS),
    ).fetchone()
    if row is None:
        return None
    claimed = _Claimed(*row)
    return claimed._replace(
        categories=OutboundMessage.categories.python_value(claimed.categories),
        headers=OutboundMessage.headers.python_value(claimed.headers),
        suppressed=bool(claimed.suppressed),
        sender_verified=None if claimed.sender_verified is None else bool(claimed.sender_verified),
    )


def _mark_sent(message_id: str, provider_message_id: str | None, timers: list[dict],
               now: datetime) -> None:
    """The message marked sent and its node's ``timers`` inserted (existing ones left
    alone), atomically: one statement on PostgreSQL, a transaction on SQLite."""
    mark = (statement(_MARK_SENT), [OutboundMessage.SENT, now, provider_message_id, message_id])
    inserts = list(insert_statements(ScheduledAction, timers, ignore_conflicts=True))
    if not inserts:
        database_proxy.execute_sql(*mark)
    elif one_statement_writes() and len(inserts) == 1:
        (insert, params), = inserts
        # As many texts as a node has distinct timer counts: few, so prepared too.
        sent_and_timers = prepare(database_proxy.obj, f"WITH sent AS ({mark[0]}) {insert}")
        database_proxy.execute_sql(sent_and_timers, [*mark[1], *params])
    else:
        with database_proxy.atomic():
            database_proxy.execute_sql(*mark)
            for insert, params in inserts:
                database_proxy.execute_sql(insert, params)
    note_scheduled(timers)


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

    In the usual case the claim, which also returns the row and the checks, before
    the provider call; after a 202, the message marked sent and the node's timers:
    one statement on PostgreSQL, a transaction of two on SQLite (see _mark_sent).
    """
    now = now or utcnow()
    claimed = _claim(message_id, now)
    if claimed is None:
        state = (
            OutboundMessage.select(OutboundMessage.status)
            .where(OutboundMessage.id == message_id)
            .scalar()
        ) or "missing"
        logger.info("Send of message=%s skipped: already %s", message_id, state)
        if state == OutboundMessage.RENDERED and (held := _held_by(message_id)):
            # Left rendered: the reconciler enqueues it again, and once resumed it goes.
            logger.info("Send of message=%s held: %s is paused", message_id, held)
            return SendResult(message_id, HELD, f"{held} is paused")
        return SendResult(message_id, "replay", state)
    tag(message=message_id, tenant=claimed.tenant_id, node=claimed.node,
        enrollment=claimed.enrollment_id, action=claimed.action_id,
        plan=(lambda: plan_for_id(claimed.plan_id).name) if claimed.plan_id else None)
    # A pause after the render lets this email go (it is in flight); only what follows is held.
    if claimed.enrollment_status is not None and (
        claimed.enrollment_status not in (Enrollment.ACTIVE, Enrollment.PAUSED)
        or claimed.current_node != claimed.node
    ):
        _set_status(message_id, OutboundMessage.CANCELLED, error="enrollment moved on before sending")
        return SendResult(message_id, OutboundMessage.CANCELLED, "enrollment moved on")
    # Suppressions win: checked again right before the provider call, by the claim
    # itself (an address stored other than normalized is looked up on its own).
    asm_group = (plan_for_id(claimed.plan_id).asm_group_of(claimed.node)
                 if claimed.plan_id is not None and claimed.node else None)
    suppressed = (
        claimed.suppressed if claimed.to_email == address_key(claimed.to_email)
        else is_suppressed(claimed.tenant_id, claimed.to_email)
    ) or (asm_group is not None  # and the group's own unsubscribes, ingested from SendGrid
          and is_suppressed(claimed.tenant_id, claimed.to_email, asm_group_id=asm_group))
    if suppressed:
        with write_transaction():  # together, as in _fail
            _set_status(message_id, OutboundMessage.SUPPRESSED, error="address is suppressed")
            if claimed.enrollment_id is not None:
                engine.exit_enrollment(claimed.enrollment_id, "suppressed", now=now)
        logger.info("Send of message=%s skipped: recipient suppressed", message_id)
        return SendResult(message_id, OutboundMessage.SUPPRESSED)
    if not claimed.sender_verified:
        return _fail(message_id, claimed.enrollment_id,
                     f"sender {claimed.from_email} is not a verified sender identity", now)

    outcome = client.send(
        OutgoingEmail(
            message_id=message_id, tenant=claimed.tenant_id, to_email=claimed.to_email,
            from_email=claimed.from_email, from_name=claimed.from_name, subject=claimed.subject,
            html=claimed.html, text=claimed.text, categories=list(claimed.categories or []),
            headers={name: value for name, value in (claimed.headers or {}).items()
                     if name != REPLY_TO_HEADER},
            custom_args={"outreach_message_id": message_id, "outreach_tenant": claimed.tenant_id},
            asm_group=asm_group,
            reply_to=(claimed.headers or {}).get(REPLY_TO_HEADER),
        )
    )
    if outcome.kind == "sent":
        # The timers engine.after_send would insert; the action's node and visit and
        # the enrollment's plan were returned by the claim.
        timers = engine.timers_after_send(
            message_id, claimed.enrollment_id, claimed.action_id, now, node=claimed.action_node,
            visit_version=claimed.visit_version, plan_id=claimed.plan_id)
        _mark_sent(message_id, outcome.provider_message_id, timers, now)
        if claimed.sender_first_sent_at is None and claimed.sender_verified is not None:
            note_first_send(claimed.tenant_id, claimed.from_email, now)
        logger.info("Sent message=%s provider_id=%s", message_id, outcome.provider_message_id)
        return SendResult(message_id, OutboundMessage.SENT)
    if outcome.kind == "ambiguous":
        _set_status(message_id, OutboundMessage.AMBIGUOUS, error=outcome.error)
        logger.warning("Send of message=%s is ambiguous: %s", message_id, outcome.error)
        return SendResult(message_id, OutboundMessage.AMBIGUOUS, outcome.error or "")
    if outcome.kind == "retry" and not final_attempt:
        _set_status(message_id, OutboundMessage.RENDERED, error=outcome.error)
        raise RetryableSendError(message_id, outcome)
    return _fail(message_id, claimed.enrollment_id,
                 f"{outcome.status_code or ''} {outcome.error or ''}".strip(), now)


def _fail(message_id: str, enrollment_id: int | None, problem: str, now: datetime) -> SendResult:
    # Together or not at all (see _fail_render): a retry finds the claim taken.
    with write_transaction():
        _set_status(message_id, OutboundMessage.FAILED, error=problem)
        if enrollment_id is not None:
            engine.exit_enrollment(enrollment_id, "send_failed", now=now)
    logger.error("Send of message=%s failed permanently: %s", message_id, problem)
    return SendResult(message_id, OutboundMessage.FAILED, problem)
