"""Normalize a stored webhook delivery: parse, match messages, dedupe, store, suppress, react.

A delivery is processed in one transaction: its new events are inserted in bulk
(``ON CONFLICT DO NOTHING ... RETURNING`` tells which keys are new), and only
those drive suppressions and the engine, so running a delivery twice, or
receiving the same event in two deliveries, has every effect once.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import peewee
from peewee import chunked

from outreach_actors.domain import engine
from outreach_actors.domain.addresses import address_key, normalized_address
from outreach_actors.domain.branches import event_view
from outreach_actors.domain.engagement import counts_for_plans
from outreach_actors.domain.mail import ambiguous
from outreach_actors.domain.metrics import count
from outreach_actors.domain.plan_events import has_goal
from outreach_actors.domain.plans import PlanSpec
from outreach_actors.domain.store.by_id import row_by_id, rows_by_id, update_by_id
from outreach_actors.domain.store.db import is_postgresql
from outreach_actors.domain.store.models import (
    Enrollment,
    InboundPost,
    MessageEvent,
    OutboundMessage,
    Tenant,
    WebhookDelivery,
    database_proxy,
    insert_rows,
    utcnow,
    write_transaction,
)
from outreach_actors.domain.store.statements import ids_condition, model_rows, statement
from outreach_actors.domain.stored_plans import plans_for_ids
from outreach_actors.domain.suppressions import (
    group_channel,
    lift,
    soft_bounce_should_suppress,
    suppress,
)
from outreach_actors.domain.unsubscribe import unsubscribe_link_prefix
from outreach_actors.domain.vocabulary import (
    ENGINE_EVENTS,
    EXITING_EVENTS,
    INVALID_TENANT,
    RECIPIENT_MISMATCH,
    SUPPRESSING_BOUNCES,
    SUPPRESSING_DROPS,
    SUPPRESSING_EVENTS,
    TENANT_ARG,
    TIMEOUT_EVENTS,
    UNSUBSCRIBE_LINK,
    MalformedBatch,
    NormalizedEvent,
)
from outreach_actors.settings import Settings, get_settings

logger = logging.getLogger(__name__)

LOOKUP_CHUNK = 1000
MAX_ERRORS_KEPT = 20
# Column widths (Peewee's CharField default) that provider-supplied text must fit.
MAX_TEXT = 255


class MessagesNotYetStored(RuntimeError):
    """Events name messages that are not committed yet: the delivery is retried later."""


@dataclass
class IngestResult:
    """What one run over a delivery did."""

    delivery_id: int
    status: str
    stored: int = 0
    duplicates: int = 0
    waiting: int = 0
    refused: int = 0
    errors: list[str] = field(default_factory=list)


class _Message(NamedTuple):
    id: str
    tenant: str
    provider_message_id: str | None
    to_email: str
    status: str
    enrollment: int | None
    node: str | None


class _EngineInterest:
    """Which new events can move a contact or resolve a send; only those go to the engine.

    A cheap over-approximation of ``handle_message_event``, read in bulk per
    batch: an event can matter if its message's send is ambiguous, or if the
    message's enrollment is active at the message's node and the plan has a
    transition on the event there. The engine still decides; this only spares it
    the calls that could only answer "nothing to do" (most events of a batch).
    """

    def __init__(self, messages: list[_Message]) -> None:
        self.enrollments: dict[int, tuple[str, str, int]] = {}
        self.plans: dict[int, PlanSpec] = {}
        self.stale: set[int] = set()
        self._load({m.enrollment for m in messages if m.enrollment is not None})

    def wants(self, message: _Message, event_type: str) -> bool:
        if message.status in {OutboundMessage.AMBIGUOUS, OutboundMessage.FAILED}:
            return True  # a proof of send resolves it, or records that it was sent late
        state = self._state(message.enrollment) if message.enrollment else None
        if state is None or state[0] != Enrollment.ACTIVE:
            return False
        node = message.node or state[1]
        plan = self.plans[state[2]]
        if has_goal(plan.goals, event_type):
            return True  # a goal is reached from any node (see goals.py)
        return (
            node == state[1] and node in plan.nodes
            and plan.transition_for(node, event_type) is not None
        )

    def moved(self, enrollment_id: int) -> None:
        """An enrollment moved: read it again if another event of the batch concerns it."""
        self.enrollments.pop(enrollment_id, None)
        self.stale.add(enrollment_id)

    def _state(self, enrollment_id: int) -> tuple[str, str, int] | None:
        if enrollment_id in self.stale:
            self.stale.discard(enrollment_id)
            self._load({enrollment_id})
        return self.enrollments.get(enrollment_id)

    def _load(self, ids: set[int]) -> None:
        columns = (Enrollment.id, Enrollment.status, Enrollment.current_node, Enrollment.plan)
        for row in rows_by_id(Enrollment, sorted(ids), *columns):
            self.enrollments[row.id] = (row.status, row.current_node, row.plan_id)
        plan_ids = {state[2] for state in self.enrollments.values()} - self.plans.keys()
        self.plans.update(plans_for_ids(plan_ids))


class _Moves:
    """The engine step of a batch's events, applied together: one read of their messages
    and one process_events call for as many enrollments as possible.

    Events wait here, one per enrollment (or per message without one), until the batch
    ends or something must see their effect first: a second event of the same
    enrollment (it is applied after the first one's move, as if one by one) or an
    exit of a contact (flush() first).
    """

    def __init__(self, interest: _EngineInterest) -> None:
        self.interest = interest
        self.pending: dict[int | str, tuple[NormalizedEvent, _Message, datetime]] = {}

    def add(self, event: NormalizedEvent, message: _Message, occurred_at: datetime) -> None:
        key = message.enrollment if message.enrollment is not None else message.id
        if key in self.pending:
            self.flush()  # the enrollment's earlier event first: this one sees its move
        if self.interest.wants(message, event.type):
            self.pending[key] = (event, message, occurred_at)

    def flush(self) -> None:
        if not self.pending:
            return
        pending, self.pending = list(self.pending.values()), {}
        messages = _messages_for_engine([message.id for _, message, _ in pending])
        items = []
        for event, stub, occurred_at in pending:
            if (message := messages.get(stub.id)) is None:
                continue  # purged meanwhile
            # Only an ambiguous (or failed) send is touched: the others' enrollments
            # differ from its own, so the order between them does not matter.
            ambiguous.confirm_by_event(message, event.type, occurred_at,
                                       event.provider_message_id)
            if (item := _engine_event(message, event.type, event.data)) is not None:
                items.append(item)
        for enrollment_id in engine.process_events(items):
            self.interest.moved(enrollment_id)


@dataclass
class _Batch:
    """The events of a batch sorted by what happens to them."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    keyed: dict[str, tuple[NormalizedEvent, _Message | None, datetime]] = field(
        default_factory=dict
    )
    duplicates: int = 0
    waiting: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # kept without their message
    refused: list[str] = field(default_factory=list)


# A provider's parser: a raw webhook body -> (normalized events, errors of single events);
# MalformedBatch when the body is no batch at all.
ParseBatch = Callable[[bytes], tuple[list[NormalizedEvent], list[str]]]
# Hands a committed delivery to the worker that normalizes it.
EnqueueDelivery = Callable[[int], None]


# A delivery taken for a run: its attempt counted, and what the run reads of it returned,
# in one statement (fixed SQL: see store/statements.py); none once it is processed.
_TAKE_DELIVERY = """
UPDATE webhook_delivery SET attempts = attempts + 1 WHERE id = {p} AND status <> {p}
RETURNING id, body, received_at
"""


def store_delivery(body: bytes, headers: dict[str, str], *,
                   received_at: datetime | None = None) -> int:
    """Store a SendGrid Event Webhook body as received, before anything reads it
    (invariant 3); its delivery id, for normalize_delivery."""
    return insert_rows(WebhookDelivery, [{
        "provider": "sendgrid", "body": body, "headers": headers,
        "received_at": received_at or utcnow()}], returning="id")[0]


def normalize_delivery(delivery_id: int, *, parse_batch: ParseBatch,
                       settings: Settings | None = None,
                       last_attempt: bool = False) -> IngestResult:
    """Process one stored delivery; safe to run again (it finds its events already stored).

    Raises MessagesNotYetStored, after storing everything else, when events name
    messages that do not exist yet; the caller retries. On its ``last_attempt`` such
    events are stored without a message, as events of mail that is not ours are: a
    message row exists from its render on, before SendGrid hears of it, so one still
    missing was purged, or was sent by another environment on the same SendGrid
    account. They are counted in the delivery's note, which is then processed.
    """
    settings = settings or get_settings()
    taken = model_rows(WebhookDelivery, statement(_TAKE_DELIVERY),
                       (delivery_id, WebhookDelivery.PROCESSED))
    delivery = taken[0] if taken else None
    if delivery is None:
        if row_by_id(WebhookDelivery, delivery_id, WebhookDelivery.id) is None:
            logger.error("Webhook delivery=%s does not exist (purged?); nothing to do", delivery_id)
            return IngestResult(delivery_id, status="missing")
        return IngestResult(delivery_id, status=WebhookDelivery.PROCESSED)

    try:
        events, errors = parse_batch(bytes(delivery.body))
    except MalformedBatch as exc:
        logger.warning("Webhook delivery=%s is malformed: %s", delivery_id, exc)
        # Replaying cannot help a body that is not a batch: say where to read it.
        _finish(delivery_id, WebhookDelivery.FAILED,
                f"{exc}; kept as received (`outreach webhooks show {delivery_id} --body`)")
        return IngestResult(delivery_id, status=WebhookDelivery.FAILED, errors=[str(exc)])

    own_links = unsubscribe_link_prefix(settings)
    batch = _sort_batch([_flag_unsubscribe_click(event, own_links) for event in events], delivery,
                        _find_messages(events), keep_unknown=last_attempt)
    try:
        with database_proxy.atomic():
            new_keys = _insert(batch.rows)
            new = sorted(
                (batch.keyed[key] for key in new_keys),
                key=lambda item: (item[2], item[0].event_key),
            )
            moves = _Moves(_EngineInterest([message for _, message, _ in new
                                            if message is not None]))
            tenants = _known_tenants({event.tenant for event, message, _ in new if message is None})
            for event, message, occurred_at in new:
                if message is not None:
                    _react(event, message, occurred_at, settings, moves)
                elif event.tenant in tenants:
                    _react_without_message(event, occurred_at, settings, moves)
            moves.flush()
    except (peewee.DataError, ValueError) as exc:
        # A value the database refuses (an address longer than any column, a NUL in a
        # group id) would fail every retry the same way: keep the delivery as failed,
        # with the reason, for `outreach webhooks replay` once the cause is fixed.
        logger.error("Webhook delivery=%s cannot be stored: %s", delivery_id, exc)
        _finish(delivery_id, WebhookDelivery.FAILED, f"cannot be stored: {exc}; fix and replay it")
        return IngestResult(delivery_id, status=WebhookDelivery.FAILED, errors=[str(exc)])
    for event_type, events_of_type in Counter(event.type for event, _, _ in new).items():
        count("outreach_events_total", events_of_type, type=event_type, synthetic="false")

    result = IngestResult(
        delivery_id,
        status=WebhookDelivery.FAILED if batch.waiting else WebhookDelivery.PROCESSED,
        stored=len(new_keys),
        duplicates=batch.duplicates + len(batch.rows) - len(new_keys),
        waiting=len(batch.waiting),
        refused=len(batch.refused),
        errors=errors + batch.refused + batch.waiting + batch.unknown,
    )
    summary = _summary(result.errors)
    if batch.waiting:
        summary = f"{len(batch.waiting)} event(s) wait for their message and are retried: {summary}"
    if batch.unknown:
        logger.warning(
            "Webhook delivery=%s: %d event(s) name messages this database does not have "
            "(purged, or sent by another environment on the same SendGrid account); "
            "stored without a message", delivery_id, len(batch.unknown))
    _finish(delivery_id, result.status, summary)
    logger.info(
        "Normalized delivery=%s stored=%d duplicates=%d waiting=%d refused=%d errors=%d",
        delivery_id, result.stored, result.duplicates, result.waiting, result.refused,
        len(errors),
    )
    if batch.waiting:
        raise MessagesNotYetStored(
            f"delivery {delivery_id}: {len(batch.waiting)} event(s) wait for messages "
            "that are not stored yet; retrying"
        )
    return result


def replay_delivery(delivery_id: int, enqueue: EnqueueDelivery) -> None:
    """Reset a delivery to ``received`` and enqueue it again (``outreach webhooks replay``)."""
    reset = (
        WebhookDelivery.update(status=WebhookDelivery.RECEIVED, error=None, processed_at=None,
                               requeued_at=None)
        .where(WebhookDelivery.id == delivery_id)
        .execute()
    )
    if not reset:
        raise LookupError(f"there is no webhook delivery {delivery_id}")
    enqueue(delivery_id)


def requeue_stale_deliveries(enqueue: EnqueueDelivery, older_than: timedelta, *,
                             now: datetime | None = None, limit: int = 1000,
                             model: type[WebhookDelivery] | type[InboundPost] = WebhookDelivery,
                             ) -> int:
    """Enqueue again deliveries (or, with ``model``, Inbound Parse posts) still
    ``received`` after ``older_than`` (a lost enqueue), each at most once per
    ``older_than``: it may only be waiting behind a backlog.

    A delivery enqueued twice is harmless: the second run finds it processed.
    """
    now = now or utcnow()
    cutoff = now - older_than
    with write_transaction():
        query = model.select(model.id).where(
            model.status == model.RECEIVED,
            model.received_at < cutoff,
            model.requeued_at.is_null() | (model.requeued_at < cutoff),
        ).order_by(model.id).limit(limit)
        if is_postgresql(database_proxy.obj):
            query = query.for_update("FOR UPDATE SKIP LOCKED")
        ids = [row.id for row in query]
        if ids:
            model.update(requeued_at=now).where(model.id.in_(ids)).execute()
    for delivery_id in ids:
        enqueue(delivery_id)
    return len(ids)


def handle_message_event(
    message_id: str,
    event_type: str,
    occurred_at: datetime,
    *,
    data: dict[str, Any] | None = None,
    provider_message_id: str | None = None,
) -> bool:
    """React to one new provider event of one of our messages; True if it moved a contact.

    It resolves an ambiguous send (any event proves SendGrid accepted the mail),
    then hands the event to the enrollment's current visit.
    """
    message = _messages_for_engine([message_id]).get(message_id)
    if message is None:
        return False
    ambiguous.confirm_by_event(message, event_type, occurred_at, provider_message_id)
    item = _engine_event(message, event_type, data)
    return item is not None and bool(engine.process_events([item]))


def _messages_for_engine(message_ids: list[str]) -> dict[str, OutboundMessage]:
    """The messages as the engine step reads them (_EVENT_MESSAGES), by id; one
    statement per LOOKUP_CHUNK ids."""
    messages = {}
    for chunk in chunked(sorted(set(message_ids)), LOOKUP_CHUNK):
        condition, params = ids_condition(chunk)
        sql = statement(_EVENT_MESSAGES.replace("{ids}", condition))
        messages.update((message.id, message) for message in model_rows(OutboundMessage, sql, params))
    return messages


def _engine_event(message: OutboundMessage, event_type: str,
                  data: dict[str, Any] | None) -> engine.EventFor | None:
    """What the engine hears of a provider event of ``message``: its enrollment's event
    at the message's visit, or None if the event moves no one."""
    if not counts_for_plans(event_type, data):
        return None
    if message.enrollment_id is None or event_type in TIMEOUT_EVENTS:
        return None
    return engine.EventFor(message.enrollment_id, event_type, node=message.node,
                           visit_version=message.visit_version,
                           event_data=event_view(event_type, data), message_id=message.id)


# Our messages as an event of each needs them, in one statement (fixed SQL): the state
# of its send (see mail/ambiguous.py) and the visit the send belonged to (its action's
# visit_version; null without one). Only these columns: the row also holds the
# rendered html and text.
_EVENT_MESSAGES = """
SELECT m.id, m.status, m.enrollment_id, m.action_id, m.node, m.send_started_at,
       m.provider_message_id, m.error,
       (SELECT a.visit_version FROM scheduled_action AS a WHERE a.id = m.action_id) AS visit_version
FROM outbound_message AS m WHERE m.id {ids}
"""


def _find_messages(events: list[NormalizedEvent]) -> dict[str, dict[str, _Message]]:
    """Our messages named by the batch, by our id and by SendGrid's X-Message-Id."""
    columns = (
        OutboundMessage.id, OutboundMessage.tenant, OutboundMessage.provider_message_id,
        OutboundMessage.to_email, OutboundMessage.status, OutboundMessage.enrollment,
        OutboundMessage.node,
    )
    by_id: dict[str, _Message] = {}
    by_provider: dict[str, _Message] = {}
    ids = {event.message_id for event in events if event.message_id}
    for row in rows_by_id(OutboundMessage, sorted(ids), *columns):
        by_id[row.id] = _Message(row.id, row.tenant_id, row.provider_message_id, row.to_email,
                                 row.status, row.enrollment_id, row.node)
    # SendGrid's id finds the messages of the events that do not carry ours (or name
    # one we do not have): the only ones _sort_batch looks up by it.
    provider_ids = {event.provider_message_id for event in events
                    if event.provider_message_id and event.message_id not in by_id}
    for chunk in chunked(sorted(provider_ids), LOOKUP_CHUNK):
        query = OutboundMessage.select(*columns).where(
            OutboundMessage.provider_message_id.in_(chunk)
        )
        for row in query.tuples():
            by_provider[row[2]] = _Message(*row)
    return {"id": by_id, "provider": by_provider}


def _flag_unsubscribe_click(event: NormalizedEvent, own_links: str) -> NormalizedEvent:
    """The event, flagged ``unsubscribe_link`` if it is a click on our unsubscribe link
    (a URL that starts with ``own_links``).

    SendGrid's click tracking rewrites every link of the HTML, ours included. Opening
    the unsubscribe page is no engagement: the engine neither moves the contact on
    ``click`` nor counts it against a ``no_click`` timer (engagement.counts_for_plans).
    """
    url = event.data.get("url") if event.type == "clicked" else None
    if isinstance(url, str) and url.startswith(own_links):
        return replace(event, data={**event.data, UNSUBSCRIBE_LINK: True})
    return event


def _sort_batch(
    events: list[NormalizedEvent],
    delivery: WebhookDelivery,
    messages: dict[str, dict[str, _Message]],
    *,
    keep_unknown: bool = False,
) -> _Batch:
    batch = _Batch()
    for event in events:
        if INVALID_TENANT in event.data:
            # Read as "no tenant", it would skip the tenant check: refused like a mismatch,
            # whether or not its message is here (yet).
            logger.warning(
                "Refused event key=%s delivery=%s: its tenant is %s, not a tenant id",
                event.event_key, delivery.id, event.data[INVALID_TENANT],
            )
            batch.refused.append(
                f"event {event.event_key}: refused, its {TENANT_ARG} is "
                f"{event.data[INVALID_TENANT]}, not a tenant id"
            )
            continue
        message = messages["id"].get(event.message_id or "") or messages["provider"].get(
            event.provider_message_id or ""
        )
        if message is None and event.message_id:
            if not keep_unknown:
                batch.waiting.append(f"event {event.event_key}: message {event.message_id} not found")
                continue
            batch.unknown.append(f"event {event.event_key}: message {event.message_id} is not in "
                                 "this database; stored without it")
        if message is not None and event.tenant and event.tenant != message.tenant:
            logger.warning(
                "Refused event key=%s delivery=%s: tenant %r does not own message=%s",
                event.event_key, delivery.id, event.tenant, message.id,
            )
            batch.refused.append(
                f"event {event.event_key}: refused, tenant {event.tenant!r} "
                f"does not own message {message.id}"
            )
            continue
        if event.event_key in batch.keyed:
            batch.duplicates += 1
            continue
        if message is not None:
            event = _flag_other_recipient(event, message)
        occurred_at = event.occurred_at or delivery.received_at
        batch.keyed[event.event_key] = (event, message, occurred_at)
        batch.rows.append({
            "message": message.id if message else None,
            "tenant": message.tenant if message else _clip(event.tenant),
            "type": event.type,
            "provider_event": _clip(event.provider_event),
            "synthetic": False,
            "event_key": event.event_key,
            "email": _clip(address_key(message.to_email) if message else event.email),
            "occurred_at": occurred_at,
            "received_at": delivery.received_at,
            "delivery": delivery.id,
            "data": event.data,
        })
    return batch


def _insert(rows: list[dict[str, Any]]) -> list[str]:
    """Insert the events, ignoring known keys; the keys that were new."""
    return insert_rows(MessageEvent, rows, ignore_conflicts=True, conflict_target="event_key",
                       returning="event_key")


def _react(
    event: NormalizedEvent, message: _Message, occurred_at: datetime, settings: Settings,
    moves: _Moves,
) -> None:
    """Apply one new event of one of our messages, to its recipient: suppressions, then
    the engine (with the batch's other events: ``moves``), then exits."""
    email = address_key(message.to_email)
    if event.data.get(RECIPIENT_MISMATCH):
        logger.warning(
            "Event key=%s of message=%s names another address than the message's recipient; "
            "kept flagged %s and applied to the recipient only",
            event.event_key, message.id, RECIPIENT_MISMATCH,
        )
    _suppress_for(event, message.tenant, email, occurred_at, settings)
    if event.type in ENGINE_EVENTS:
        moves.add(event, message, occurred_at)
    _exit_for(event, message.tenant, email, moves)


def apply_message_event(event: NormalizedEvent, occurred_at: datetime, settings: Settings) -> None:
    """Apply one new event of one of our messages that its caller stored (a reply's
    bounce or request to be removed, domain/replies) as a webhook's: suppressions, the
    engine, exits."""
    message = _find_messages([event])["id"].get(event.message_id or "")
    if message is not None:
        moves = _Moves(_EngineInterest([message]))
        _react(event, message, occurred_at, settings, moves)
        moves.flush()


def _react_without_message(event: NormalizedEvent, occurred_at: datetime, settings: Settings,
                           moves: _Moves) -> None:
    """Apply what an event says of an address when its message is not here (purged, or
    mailed by another environment on the same SendGrid account) but it names one of
    our tenants: a hard bounce, a complaint or an unsubscribe is about the address,
    whichever email it came from. Suppressions win."""
    try:
        email = normalized_address(event.email)
    except ValueError:
        return  # no address to suppress
    _suppress_for(event, event.tenant, email, occurred_at, settings)
    _exit_for(event, event.tenant, email, moves)


def _suppress_for(event: NormalizedEvent, tenant_id: str, email: str, occurred_at: datetime,
                  settings: Settings) -> None:
    group = event.data.get("asm_group_id")
    if event.type in {"unsubscribed", "subscribed"} and group is not None:
        _apply_group_event(event, tenant_id, email, group, occurred_at)
    elif reason := _suppression_reason(event, tenant_id, email, occurred_at, settings):
        suppress(tenant_id, email, reason, event.event_key)


def _exit_for(event: NormalizedEvent, tenant_id: str, email: str, moves: _Moves) -> None:
    if (exit_reason := EXITING_EVENTS.get(event.type)) and event.data.get("asm_group_id") is None:
        moves.flush()  # the moves of the events before it come first
        engine.exit_contact_enrollments(tenant_id, email, exit_reason)


def _known_tenants(tenant_ids: set[str | None]) -> set[str]:
    """Of the tenants events claim, those that exist here."""
    wanted = sorted(tenant for tenant in tenant_ids if tenant)
    if not wanted:
        return set()
    return {row.id for row in Tenant.select(Tenant.id).where(Tenant.id.in_(wanted))}


def _suppression_reason(
    event: NormalizedEvent, tenant_id: str, email: str, occurred_at: datetime,
    settings: Settings,
) -> str | None:
    if event.type == "bounced":
        if event.data.get("bounce_type") == "soft":
            limit_reached = soft_bounce_should_suppress(
                tenant_id, email, occurred_at, settings=settings
            )
            return "soft_bounce_limit" if limit_reached else None
        return SUPPRESSING_BOUNCES.get(event.data.get("bounce_type", ""))
    if event.type == "rejected":
        return SUPPRESSING_DROPS.get(event.data.get("reject_reason", ""))
    return SUPPRESSING_EVENTS.get(event.type)


def _apply_group_event(
    event: NormalizedEvent, tenant_id: str, email: str, group: Any, occurred_at: datetime
) -> None:
    """Suppress or lift one ASM group, unless a later (un)subscribe of it is already stored.

    SendGrid does not promise order: an unsubscribe that arrives after the
    resubscribe that followed it must not win.
    """
    columns = (MessageEvent.data, MessageEvent.occurred_at, MessageEvent.event_key)
    later = MessageEvent.select(*columns).where(
        MessageEvent.tenant == tenant_id,
        MessageEvent.email == email,
        MessageEvent.type.in_(["unsubscribed", "subscribed"]),
        MessageEvent.occurred_at >= occurred_at,
        MessageEvent.event_key != event.event_key,
    )
    for row in later:
        same_group = str((row.data or {}).get("asm_group_id")) == str(group)
        if same_group and (row.occurred_at, row.event_key) > (occurred_at, event.event_key):
            logger.info(
                "Skipped stale group event key=%s: a later one (%s) is stored",
                event.event_key, row.event_key,
            )
            return
    if event.type == "subscribed":
        lift(tenant_id, email, group_channel(group))
    else:
        suppress(tenant_id, email, "group_unsubscribed", event.event_key, group_channel(group))


def _finish(delivery_id: int, status: str, error: str | None) -> None:
    update_by_id(WebhookDelivery, [delivery_id], status=status, error=error,
                 processed_at=utcnow() if status == WebhookDelivery.PROCESSED else None)


def _summary(errors: list[str]) -> str | None:
    if not errors:
        return None
    kept = errors[:MAX_ERRORS_KEPT]
    more = len(errors) - len(kept)
    return "; ".join(kept) + (f"; and {more} more" if more else "")


def _clip(value: str | None) -> str | None:
    return value[:MAX_TEXT] if value else value


def _flag_other_recipient(event: NormalizedEvent, message: _Message) -> NormalizedEvent:
    """The event, flagged ``RECIPIENT_MISMATCH`` if it names an address other than its
    message's recipient.

    A message has one recipient, whom its events are about: an event that says it is
    about someone else is suspect, and must not suppress or remove that someone.
    """
    if event.email and address_key(event.email) != address_key(message.to_email):
        return replace(event, data={**event.data, RECIPIENT_MISMATCH: True})
    return event
