"""The state machine: enroll contacts, enter nodes, move enrollments on events.

No Dramatiq here: the engine writes rows (enrollments, visits, scheduled actions)
and the dispatcher turns due actions into messages. Every move is an optimistic
``UPDATE ... WHERE version = seen``, so two events racing on one enrollment move
it once; the loser re-reads and finds the node changed.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from contextlib import nullcontext
from datetime import datetime, timedelta
from typing import Any

import peewee

from .addresses import normalized_address
from .models import (
    Contact,
    Enrollment,
    MessageEvent,
    NodeVisit,
    OutboundMessage,
    Plan,
    ScheduledAction,
    Tenant,
    database_proxy,
    insert_rows,
    on_bind,
    utcnow,
)
from .plans import ENGAGEMENT_TIMEOUTS, TIMEOUT_EVENTS, iana_zone, plan_from_definition
from .plans import Plan as PlanModel
from .scheduling import next_send_time
from .settings import get_settings

logger = logging.getLogger(__name__)

# Provider events that prove an ambiguous send reached SendGrid.
PROOF_OF_SEND = {"queued", "deferred", "delivered", "opened", "clicked", "bounced", "rejected",
                 "complained", "unsubscribed"}
MAX_MOVE_ATTEMPTS = 5


class EnrollmentError(ValueError):
    """An enrollment was refused; the message says why."""


class AlreadyEnrolled(EnrollmentError):
    """The contact is already in this plan and the plan does not allow re-entry."""


def plan_for(plan: Plan) -> PlanModel:
    """The parsed plan of a stored row (cached: a stored plan version never changes)."""
    cached = _plan_cache.get(plan.id)
    if cached is None:
        cached = _plan_cache[plan.id] = plan_from_definition(plan.definition)
    return cached


def plan_for_id(plan_id: int) -> PlanModel:
    """Like plan_for, without loading the row when the plan is cached."""
    cached = _plan_cache.get(plan_id)
    return cached if cached is not None else plan_for(Plan.get_by_id(plan_id))


# Plan id -> parsed plan. Emptied whenever another database is bound (see models.bind).
_plan_cache: dict[int, PlanModel] = {}
on_bind(_plan_cache.clear)


def latest_plan(tenant_id: str, plan_name: str) -> Plan:
    row = (
        Plan.select()
        .where(Plan.tenant == tenant_id, Plan.name == plan_name)
        .order_by(Plan.version.desc())
        .first()
    )
    if row is None:
        raise EnrollmentError(
            f"tenant {tenant_id!r} has no plan named {plan_name!r}; "
            "load it with `outreach plan load FILE --tenant TENANT`"
        )
    return row


def normalize_email(email: str) -> str:
    """The address as stored (see addresses.normalized_address); EnrollmentError if none."""
    try:
        return normalized_address(email)
    except ValueError as exc:
        raise EnrollmentError(str(exc)) from None


def _known_zone(name: object) -> bool:
    # Printable and at most 64 characters: also what no column can store.
    return (isinstance(name, str) and name.isprintable() and len(name) <= 64
            and iana_zone(name) is not None)


def _contact_fields(fields: object) -> dict[str, Any]:
    """A contact's fields as stored (JSON) and rendered (by name); else EnrollmentError."""
    if fields is None:
        return {}
    if not isinstance(fields, Mapping) or not all(isinstance(name, str) for name in fields):
        raise EnrollmentError(f"fields must map names (text) to values, not {_kind(fields)}")
    try:
        json.dumps(fields, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise EnrollmentError(f"fields must hold JSON values (text, numbers, lists...): {exc}") from None
    return dict(fields)


def _kind(value: object) -> str:
    return type(value).__name__ if not isinstance(value, Mapping) else "a mapping with other keys"


def upsert_contact(
    tenant_id: str, email: str, fields: dict[str, Any] | None, timezone: str | None
) -> Contact:
    address = normalize_email(email)
    fields = _contact_fields(fields)
    timezone = None if timezone == "" else timezone  # an empty CSV cell or form field
    if timezone is not None and not _known_zone(timezone):
        # Refused, not stored: the send window would silently use its own zone instead.
        raise EnrollmentError(f"{timezone!r:.80} is not an IANA time zone such as Europe/Paris")
    contact, created = Contact.get_or_create(
        tenant=tenant_id, email=address,
        defaults={"fields": fields, "timezone": timezone},
    )
    if not created and (fields or timezone):
        contact.fields = {**(contact.fields or {}), **(fields or {})}
        contact.timezone = timezone or contact.timezone
        contact.save()
    return contact


def enroll(
    tenant_id: str,
    email: str,
    plan_name: str,
    *,
    fields: dict[str, Any] | None = None,
    timezone: str | None = None,
    now: datetime | None = None,
) -> Enrollment:
    """Enroll a contact into the tenant's latest version of a plan.

    Safe to call from a web request: it only writes rows (the first send is a
    ScheduledAction that the dispatcher picks up). Raises AlreadyEnrolled when the
    contact is in the plan already and the plan does not allow re-entry.
    """
    now = now or utcnow()
    if not Tenant.select().where(Tenant.id == tenant_id).exists():
        raise EnrollmentError(f"unknown tenant {tenant_id!r}")
    plan_row = latest_plan(tenant_id, plan_name)
    plan = plan_for(plan_row)
    with database_proxy.atomic():
        contact = upsert_contact(tenant_id, email, fields, timezone)
        key = (
            f"reentry:{uuid.uuid4().hex}"
            if plan.allow_reentry
            else f"{tenant_id}:{plan_name}:{contact.id}"
        )
        try:
            with database_proxy.atomic():
                enrollment = Enrollment.create(
                    tenant=tenant_id, plan=plan_row, contact=contact, enrollment_key=key,
                    current_node=plan.start, version=0, node_entered_at=now,
                    created_at=now, updated_at=now,
                )
        except peewee.IntegrityError:
            raise AlreadyEnrolled(
                f"{contact.email} is already enrolled in plan {plan_name!r} "
                "(set allow_reentry: true in the plan to allow it)"
            ) from None
        _enter([enrollment], plan, plan.start, via_event=None, now=now)
    logger.info("Enrolled enrollment=%s tenant=%s plan=%s", enrollment.id, tenant_id, plan_name)
    return enrollment


def _enter(
    enrollments: Sequence[Enrollment], plan: PlanModel, node_name: str, *,
    via_event: str | None, now: datetime,
) -> None:
    """Record the visits and create what the node needs (send, timers, completion).

    ``enrollments`` have just entered ``node_name`` of ``plan`` at their current
    version: one, or a batch that moved together (the same statements either way).
    """
    if not enrollments:
        return
    node = plan.node(node_name)
    insert_rows(NodeVisit, [
        {"enrollment": enrollment.id, "node": node_name, "via_event": via_event,
         "entered_at": now, "version": enrollment.version}
        for enrollment in enrollments
    ])
    if node.type == "email":
        # The contact's zone matters only inside a send window: skip the query otherwise.
        zones = _contact_zones(enrollments) if plan.send_window else {}
        _schedule([
            (enrollment, node_name, ScheduledAction.SEND, None,
             next_send_time(now, plan.send_window, zones.get(enrollment.contact_id)))
            for enrollment in enrollments
        ])
    elif node.type == "wait":
        _schedule([
            (enrollment, node_name, ScheduledAction.TIMEOUT, transition.on,
             now + _timeout_duration(transition.on, transition.after))
            for transition in plan.timeout_transitions(node_name)
            for enrollment in enrollments
        ])
    else:
        ids = [enrollment.id for enrollment in enrollments]
        Enrollment.update(status=Enrollment.COMPLETED, updated_at=now).where(
            Enrollment.id.in_(ids)
        ).execute()
        logger.info("Completed enrollment=%s at node=%s", ",".join(map(str, ids)), node_name)


def _contact_zones(enrollments: Sequence[Enrollment]) -> dict[int, str | None]:
    """Each enrollment's contact time zone, by contact id; loaded contacts cost nothing."""
    zones = {e.contact_id: e.contact.timezone for e in enrollments if "contact" in e.__rel__}
    missing = [e.contact_id for e in enrollments if e.contact_id not in zones]
    if missing:
        zones.update(Contact.select(Contact.id, Contact.timezone)
                     .where(Contact.id.in_(missing)).tuples())
    return zones


def _transaction():
    """A transaction, or nothing when one is open already (no savepoint round trips)."""
    if database_proxy.in_transaction():
        return nullcontext()
    return database_proxy.atomic()


def _schedule(actions: Sequence[tuple[Enrollment, str, str, str | None, datetime]]) -> None:
    """Insert (enrollment, node, kind, event, run_at) actions of the enrollments'
    current visits; one already there (same dedupe key) is left as it is."""
    if not actions:
        return
    insert_rows(ScheduledAction, [
        {"enrollment": enrollment.id, "node": node, "kind": kind, "event": event,
         "run_at": run_at, "visit_version": enrollment.version,
         "dedupe_key": f"{kind}:{enrollment.id}:{node}:{event or '-'}:{enrollment.version}"}
        for enrollment, node, kind, event, run_at in actions
    ], ignore_conflicts=True)


def _timeout_duration(event: str, after: timedelta | None) -> timedelta:
    if after is not None:
        return after
    settings = get_settings()
    return {"no_open": settings.no_open_timeout, "no_click": settings.no_click_timeout}[event]


def process_event(
    enrollment_id: int,
    event: str,
    *,
    node: str | None = None,
    visit_version: int | None = None,
    now: datetime | None = None,
    enrollment: Enrollment | None = None,
) -> bool:
    """Take the current node's first transition on ``event``; True if the enrollment moved.

    ``node``/``visit_version`` name the visit the event belongs to (the node whose
    email or timer produced it): an event from a node the enrollment has left is
    stale and moves nothing. ``enrollment`` may pass the row just read, to save a
    query; if it is stale, the version check catches it and the row is read again.
    """
    now = now or utcnow()
    for _ in range(MAX_MOVE_ATTEMPTS):
        if enrollment is None:
            enrollment = Enrollment.get_or_none(Enrollment.id == enrollment_id)
        if enrollment is None or enrollment.status != Enrollment.ACTIVE:
            return False
        if node is not None and enrollment.current_node != node:
            return False
        if visit_version is not None and enrollment.version != visit_version:
            return False
        from_node = enrollment.current_node
        if plan_for_id(enrollment.plan_id).transition_for(from_node, event) is None:
            return False
        if move_on_event([enrollment], event, now=now):
            logger.info("Moved enrollment=%s from=%s to=%s on=%s",
                        enrollment.id, from_node, enrollment.current_node, event)
            return True
        enrollment = None  # another event moved it first: re-read and decide again
    raise RuntimeError(f"enrollment {enrollment_id} kept changing under {event!r}; giving up")


def move_on_event(enrollments: Sequence[Enrollment], event: str, *,
                  now: datetime | None = None) -> list[Enrollment]:
    """Move each enrollment on ``event`` from the node it is at, as read; returns the
    ones that moved, updated in place.

    A batch costs the statements of one enrollment: an ``UPDATE ... WHERE (id,
    version) IN`` per (plan, node), then the left node's cancellations and the new
    node's actions in bulk. An enrollment another writer moved since it was read
    fails its version check and stays (the caller decides whether to read it again).
    Each enrollment must appear once.
    """
    now = now or utcnow()
    groups: dict[tuple[int, str], list[Enrollment]] = defaultdict(list)
    for enrollment in enrollments:
        if enrollment.status == Enrollment.ACTIVE:
            groups[(enrollment.plan_id, enrollment.current_node)].append(enrollment)
    moved: list[Enrollment] = []
    with _transaction():
        # One order for every writer, so that two batches cannot deadlock on rows.
        for (plan_id, from_node), group in sorted(groups.items()):
            plan = plan_for_id(plan_id)
            transition = plan.transition_for(from_node, event)
            if transition is None:
                continue
            group.sort(key=lambda enrollment: enrollment.id)
            won = {
                enrollment_id for (enrollment_id,) in
                Enrollment.update(current_node=transition.to, version=Enrollment.version + 1,
                                  node_entered_at=now, updated_at=now)
                .where(peewee.Tuple(Enrollment.id, Enrollment.version)
                       .in_([(enrollment.id, enrollment.version) for enrollment in group]))
                .returning(Enrollment.id).tuples().execute()
            }
            winners = [enrollment for enrollment in group if enrollment.id in won]
            if not winners:
                continue
            _cancel_open_actions([enrollment.id for enrollment in winners], from_node, now)
            for enrollment in winners:
                enrollment.current_node, enrollment.version = transition.to, enrollment.version + 1
                enrollment.node_entered_at = enrollment.updated_at = now
            _enter(winners, plan, transition.to, via_event=event, now=now)
            moved.extend(winners)
    return moved


def _cancel_open_actions(enrollment_ids: Sequence[int], node: str, now: datetime) -> int:
    """Cancel the timers and sends of the node being left.

    Only pending and enqueued ones: a running action (often the very timeout that
    caused this move) finishes on its own and re-checks the enrollment.
    """
    return (
        ScheduledAction.update(status=ScheduledAction.CANCELLED, finished_at=now)
        .where(
            ScheduledAction.enrollment.in_(list(enrollment_ids)),
            ScheduledAction.node == node,
            ScheduledAction.status.in_([ScheduledAction.PENDING, ScheduledAction.ENQUEUED]),
        )
        .execute()
    )


def exit_enrollment(enrollment_id: int, reason: str, *, now: datetime | None = None) -> bool:
    """End an active enrollment where it stands (suppressed, failed send, unsubscribed)."""
    now = now or utcnow()
    with database_proxy.atomic():
        enrollment = Enrollment.get_or_none(Enrollment.id == enrollment_id)
        if enrollment is None or enrollment.status != Enrollment.ACTIVE:
            return False
        status = Enrollment.FAILED if reason in {"send_failed", "ambiguous_send"} else Enrollment.EXITED
        moved = (
            Enrollment.update(status=status, exit_reason=reason, version=Enrollment.version + 1,
                              updated_at=now)
            .where(Enrollment.id == enrollment_id, Enrollment.version == enrollment.version)
            .execute()
        )
        if moved:
            _cancel_open_actions([enrollment_id], enrollment.current_node, now)
    if moved:
        logger.info("Exited enrollment=%s reason=%s", enrollment_id, reason)
    return bool(moved)


def exit_contact_enrollments(tenant_id: str, email: str, reason: str) -> int:
    """End every active enrollment of one contact in one tenant (unsubscribe, complaint)."""
    ids = [
        row.id
        for row in Enrollment.select(Enrollment.id)
        .join(Contact)
        .where(
            Enrollment.tenant == tenant_id,
            Contact.email == email.strip().lower(),
            Enrollment.status == Enrollment.ACTIVE,
        )
    ]
    return sum(exit_enrollment(enrollment_id, reason) for enrollment_id in ids)


def after_send(message: OutboundMessage, *, now: datetime | None = None) -> None:
    """Create the node's timers from ``sent_at``; safe to call again (dedupe keys).

    ``message`` needs its id, enrollment, action and sent_at. (The send itself writes
    them in the statement that marks the message sent: see timers_after_send.)
    """
    insert_rows(ScheduledAction, timers_after_send(
        message.id, message.enrollment_id, message.action_id, message.sent_at or now or utcnow(),
    ), ignore_conflicts=True)


def timers_after_send(
    message_id: str, enrollment_id: int | None, action_id: int | None, sent_at: datetime, *,
    node: str | None = None, visit_version: int | None = None, plan_id: int | None = None,
) -> list[dict[str, Any]]:
    """The ScheduledAction rows of the timers a message sent at ``sent_at`` starts (its
    node's timeout transitions), for ``insert_rows(..., ignore_conflicts=True)``; none
    for a message without enrollment or action. ``node``, ``visit_version`` and
    ``plan_id`` as for after_send (read here when one is missing)."""
    if enrollment_id is None or action_id is None:
        return []
    if node is None or visit_version is None or plan_id is None:
        action = ScheduledAction.get_by_id(action_id)
        node, visit_version = action.node, action.visit_version
        plan_id = Enrollment.get_by_id(enrollment_id).plan_id
    return [
        {"enrollment": enrollment_id, "node": node, "kind": ScheduledAction.TIMEOUT,
         "event": transition.on, "message": message_id, "visit_version": visit_version,
         "dedupe_key": f"timeout:{enrollment_id}:{node}:{transition.on}:{visit_version}",
         "run_at": sent_at + _timeout_duration(transition.on, transition.after)}
        for transition in plan_for_id(plan_id).timeout_transitions(node)
    ]


# The real events each engagement timeout waits for. A click counts as an open
# (image blocking hides the opens of people who click).
AWAITED_ENGAGEMENT = {"no_open": frozenset({"opened", "clicked"}), "no_click": frozenset({"clicked"})}


def engagement_seen(message_id: str, timeout_event: str) -> bool:
    """Whether the real event a ``no_open``/``no_click`` timer waits for has arrived."""
    return bool(engaged_timers([(message_id, timeout_event)]))


# The flag ingest sets on a click on our own unsubscribe link (see ingest).
UNSUBSCRIBE_LINK = "unsubscribe_link"


def counts_for_plans(event_type: str, data: dict[str, Any] | None) -> bool:
    """Whether a real event may move a contact or stop a ``no_open``/``no_click`` timer:
    every one but a machine open (unless the settings count those) and a click on our
    own unsubscribe link."""
    data = data or {}
    if event_type == "opened" and data.get("machine_open"):
        return get_settings().machine_opens_are_engagement
    return not (event_type == "clicked" and data.get(UNSUBSCRIBE_LINK))


def uncounted_events() -> peewee.Expression:
    """The MessageEvent rows counts_for_plans leaves out, as a condition for queries
    that count (stats). The flags are matched in the JSON text ingest stores."""
    uncounted = (MessageEvent.type == "clicked") & MessageEvent.data.contains(
        f'"{UNSUBSCRIBE_LINK}": true')
    if not get_settings().machine_opens_are_engagement:
        uncounted |= (MessageEvent.type == "opened") & MessageEvent.data.contains(
            '"machine_open": true')
    return uncounted


def engaged_timers(timers: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """Of (message id, ``no_open``/``no_click``) pairs, those whose awaited real event
    has arrived; one query for any number. Only engagement counts (counts_for_plans)."""
    timers = set(timers)
    if not timers:
        return set()
    seen: dict[str, set[str]] = defaultdict(set)
    for message_id, event_type, data in MessageEvent.select(
        MessageEvent.message, MessageEvent.type, MessageEvent.data,
    ).where(
        MessageEvent.message.in_(sorted({message_id for message_id, _ in timers})),
        MessageEvent.type.in_(sorted(AWAITED_ENGAGEMENT["no_open"])),
        MessageEvent.synthetic == False,  # noqa: E712 (peewee expression)
    ).tuples():
        if counts_for_plans(event_type, data):
            seen[message_id].add(event_type)
    return {(message_id, event) for message_id, event in timers
            if seen[message_id] & AWAITED_ENGAGEMENT[event]}


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
    # Only the columns needed here: the row also holds the rendered html and text.
    message = (
        OutboundMessage.select(
            OutboundMessage.id, OutboundMessage.status, OutboundMessage.enrollment,
            OutboundMessage.action, OutboundMessage.node, OutboundMessage.send_started_at,
            OutboundMessage.provider_message_id, OutboundMessage.error,
        )
        .where(OutboundMessage.id == message_id)
        .first()
    )
    if message is None:
        return False
    if message.status == OutboundMessage.AMBIGUOUS and event_type in PROOF_OF_SEND:
        resolve_ambiguous_send(message, occurred_at, provider_message_id)
    elif (message.status == OutboundMessage.FAILED and event_type in PROOF_OF_SEND
          and (message.error or "").startswith(UNCONFIRMED_AMBIGUOUS_SEND)):
        _record_late_proof(message, occurred_at, provider_message_id)
    if not counts_for_plans(event_type, data):
        return False
    if message.enrollment_id is None or event_type in TIMEOUT_EVENTS:
        return False
    visit_version = None
    if message.action_id is not None:
        action = ScheduledAction.get_or_none(ScheduledAction.id == message.action_id)
        visit_version = action.visit_version if action else None
    return process_event(
        message.enrollment_id, event_type, node=message.node, visit_version=visit_version,
    )


# The error of a send the `fail` policy ended (dispatch.settle_ambiguous_sends).
UNCONFIRMED_AMBIGUOUS_SEND = "ambiguous send not confirmed by any provider event"


def _record_late_proof(message: OutboundMessage, occurred_at: datetime,
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
            after_send(OutboundMessage.get_by_id(message.id))
    if updated:
        logger.info("Resolved ambiguous send message=%s as sent", message.id)
    return bool(updated)


__all__ = [
    "ENGAGEMENT_TIMEOUTS",
    "UNCONFIRMED_AMBIGUOUS_SEND",
    "AlreadyEnrolled",
    "EnrollmentError",
    "after_send",
    "engaged_timers",
    "engagement_seen",
    "enroll",
    "exit_contact_enrollments",
    "exit_enrollment",
    "handle_message_event",
    "move_on_event",
    "process_event",
    "resolve_ambiguous_send",
    "timers_after_send",
]
