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
from collections.abc import Mapping, Sequence
from contextlib import nullcontext
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from peewee import JOIN

from outreach_actors.domain import branches, goals, notifications
from outreach_actors.domain.addresses import address_key, normalized_address
from outreach_actors.domain.blackouts import tenant_blackouts
from outreach_actors.domain.plan_events import has_goal
from outreach_actors.domain.plans import (
    PlanSpec,
    iana_zone,
)
from outreach_actors.domain.routing import ROUTING_TYPES
from outreach_actors.domain.scheduled_soon import note_scheduled
from outreach_actors.domain.store.by_id import row_by_id, rows_by_id, update_by_id
from outreach_actors.domain.store.keys import action_key, enrollment_key
from outreach_actors.domain.store.models import (
    Contact,
    Enrollment,
    NodeVisit,
    OutboundMessage,
    Plan,
    ScheduledAction,
    Tenant,
    database_proxy,
    insert_rows,
    utcnow,
)
from outreach_actors.domain.store.statements import ids_condition, statement
from outreach_actors.domain.stored_plans import plan_for_id
from outreach_actors.domain.windows import next_send_time
from outreach_actors.settings import get_settings

logger = logging.getLogger(__name__)

MAX_MOVE_ATTEMPTS = 5
#: What a branch's conditions see as the event that moved each enrollment, by its id.
EventData = Mapping[int, Mapping[str, Any]]
#: What enroll does when the contact is in the plan already: raise AlreadyEnrolled,
#: or return the existing enrollment.
IF_ENROLLED = ("raise", "skip")


class EnrollmentError(ValueError):
    """An enrollment was refused; the message says why."""


class AlreadyEnrolled(EnrollmentError):
    """The contact is already in this plan and the plan does not allow re-entry."""

    @classmethod
    def of(cls, email: str, plan_name: str) -> AlreadyEnrolled:
        return cls(f"{email} is already enrolled in plan {plan_name!r} "
                   "(set allow_reentry: true in the plan to allow it)")


def latest_plan(tenant_id: str, plan_name: str) -> Plan:
    """The row of the tenant's latest version of the plan; EnrollmentError if none."""
    return Plan.get_by_id(latest_plan_id(tenant_id, plan_name))


# The id of a tenant's latest version of a plan (fixed SQL: every enrollment reads it).
_LATEST_PLAN_ID = "SELECT id FROM plan WHERE tenant_id = {p} AND name = {p} ORDER BY version DESC LIMIT 1"


def latest_plan_id(tenant_id: str, plan_name: str) -> int:
    """The id of the tenant's latest version of the plan; EnrollmentError, naming an
    unknown tenant as such, if there is none."""
    row = database_proxy.execute_sql(statement(_LATEST_PLAN_ID), (tenant_id, plan_name)).fetchone()
    if row is not None:
        return row[0]
    if row_by_id(Tenant, tenant_id, Tenant.id) is None:
        raise EnrollmentError(f"unknown tenant {tenant_id!r}")
    raise EnrollmentError(
        f"tenant {tenant_id!r} has no plan named {plan_name!r}; "
        "load it with `outreach plan load FILE --tenant TENANT`"
    )


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


def checked_contact(email: str, fields: object, timezone: str | None
                    ) -> tuple[str, dict[str, Any], str | None]:
    """A contact's address, fields and time zone as stored; EnrollmentError, saying why,
    for any of them that cannot be."""
    address = normalize_email(email)
    fields = _contact_fields(fields)
    timezone = None if timezone == "" else timezone  # an empty CSV cell or form field
    if timezone is not None and not _known_zone(timezone):
        # Refused, not stored: the send window would silently use its own zone instead.
        raise EnrollmentError(f"{timezone!r:.80} is not an IANA time zone such as Europe/Paris")
    return address, fields, timezone


def upsert_contact(
    tenant_id: str, email: str, fields: dict[str, Any] | None, timezone: str | None
) -> Contact:
    address, fields, timezone = checked_contact(email, fields, timezone)
    row = {"tenant": tenant_id, "email": address, "fields": fields, "timezone": timezone,
           "created_at": utcnow()}
    # One statement for a new contact (no read first, no savepoint); an existing one (or
    # one another enroll inserted meanwhile) is read and given the new fields over its own.
    created = insert_rows(Contact, [row], ignore_conflicts=True, returning="id")
    if created:
        contact = Contact(id=created[0], **row)
        contact._dirty.clear()
        return contact
    contact = Contact.get(Contact.tenant == tenant_id, Contact.email == address)
    if fields or timezone:
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
    if_enrolled: str = "raise",
) -> Enrollment:
    """Enroll a contact into the tenant's latest version of a plan.

    Safe to call from a web request: it only writes rows (the first send is a
    ScheduledAction that the dispatcher picks up). Raises AlreadyEnrolled when the
    contact is in the plan already and the plan does not allow re-entry; with
    ``if_enrolled="skip"``, returns that existing enrollment instead.
    """
    if if_enrolled not in IF_ENROLLED:
        raise ValueError(f"if_enrolled must be one of {', '.join(IF_ENROLLED)}, not {if_enrolled!r}")
    now = now or utcnow()
    plan_id = latest_plan_id(tenant_id, plan_name)
    plan = plan_for_id(plan_id)
    with database_proxy.atomic():
        contact = upsert_contact(tenant_id, email, fields, timezone)
        key = enrollment_key(tenant_id, plan_name, contact.id,
                             reentry=uuid.uuid4().hex if plan.allow_reentry else None)
        # The contact itself, not its id: _enter reads its time zone from it.
        row = {"tenant": tenant_id, "plan": plan_id, "contact": contact, "enrollment_key": key,
               "current_node": plan.start, "status": Enrollment.ACTIVE, "version": 0,
               "node_entered_at": now, "created_at": now, "updated_at": now}
        # The key taken already: the contact is in the plan (no savepoint needed to find out).
        created = insert_rows(Enrollment, [row], ignore_conflicts=True,
                              conflict_target="enrollment_key", returning="id")
        if not created:
            if if_enrolled == "skip":
                return Enrollment.get(Enrollment.enrollment_key == key)
            raise AlreadyEnrolled.of(contact.email, plan_name)
        enrollment = Enrollment(id=created[0], **row)
        enrollment._dirty.clear()
        enter_start([enrollment], plan, now=now)
    logger.info("Enrolled enrollment=%s tenant=%s plan=%s", enrollment.id, tenant_id, plan_name)
    return enrollment


def enter_start(enrollments: Sequence[Enrollment], plan: PlanSpec, *, now: datetime) -> None:
    """New enrollments (at version 0, in the plan's start node) enter it."""
    _enter(enrollments, plan, plan.start, via_event=None, now=now)


def _enter(
    enrollments: Sequence[Enrollment], plan: PlanSpec, node_name: str, *,
    via_event: str | None, now: datetime, event_data: EventData | None = None,
    from_node: str | None = None,
) -> None:
    """Record the visits and create what the node needs (send, timers, completion).

    ``enrollments`` have just entered ``node_name`` of ``plan`` at their current
    version: one, or a batch that moved together (the same statements either way).
    ``event_data``: what a branch's conditions see as the event that brought each one
    (by enrollment id; ``{"type": via_event}`` for one not given).
    """
    if not enrollments:
        return
    node = plan.node(node_name)
    # A routing node (split, branch) sends each contact on at once: its route goes on the visit.
    router = ROUTING_TYPES.get(node.type)
    routes = router.routes(plan, node_name, enrollments,
                           _event_views(enrollments, via_event, event_data)) if router else {}
    insert_rows(NodeVisit, [
        {"enrollment": enrollment.id, "node": node_name, "via_event": via_event,
         "entered_at": now, "version": enrollment.version,
         "route": routes[enrollment.id][0] if routes else None, "from_node": from_node}
        for enrollment in enrollments
    ])
    if node.type == "email":
        window = plan.window_of(node_name)
        tenant_id = enrollments[0].tenant_id or Enrollment.select(Enrollment.tenant).where(
            Enrollment.id == enrollments[0].id).scalar()  # a row read without its tenant
        blackouts = tenant_blackouts(tenant_id)
        # The contact's zone matters only inside a send window or around blackout dates.
        zones = _contact_zones(enrollments) if window or blackouts else {}
        _schedule([
            (enrollment, node_name, ScheduledAction.SEND, None,
             next_send_time(now, window, zones.get(enrollment.contact_id), blackouts))
            for enrollment in enrollments
        ])
    elif node.type == "wait":
        _schedule([
            (enrollment, node_name, ScheduledAction.TIMEOUT, transition.on,
             now + timeout_duration(transition.on, transition.after))
            for transition in plan.timeout_transitions(node_name)
            for enrollment in enrollments
        ])
    elif router:
        _follow_routes(enrollments, plan, routes, via_event=via_event, now=now,
                       event_data=event_data, from_node=node_name)
    else:
        ids = [enrollment.id for enrollment in enrollments]
        update_by_id(Enrollment, ids, status=Enrollment.COMPLETED, updated_at=now)
        notifications.record(notifications.EXITED, ids, reason="completed", now=now)
        logger.info("Completed enrollment=%s at node=%s", ",".join(map(str, ids)), node_name)


def _event_views(enrollments: Sequence[Enrollment], via_event: str | None,
                 event_data: EventData | None) -> dict[int, Mapping[str, Any]]:
    default = branches.event_view(via_event) if via_event else {}
    return {enrollment.id: (event_data or {}).get(enrollment.id, default)
            for enrollment in enrollments}


class _Routed(NamedTuple):
    """An enrollment a routing node sent on, as _enter reads it."""

    id: int
    contact_id: int
    version: int
    tenant_id: str | None


def _follow_routes(enrollments: Sequence[Enrollment], plan: PlanSpec,
                   routes: dict[int, tuple[str, str | None]], *, via_event: str | None,
                   now: datetime, event_data: EventData | None,
                   from_node: str | None = None) -> None:
    """Move enrollments that just entered a routing node on, each along its route (see
    routing.ROUTING_TYPES), in the same transaction: a move per next node, and the exits in one."""
    by_target: dict[str | None, list[Enrollment]] = defaultdict(list)
    for enrollment in enrollments:
        by_target[routes[enrollment.id][1]].append(enrollment)
    for target, group in sorted(by_target.items(), key=lambda item: item[0] or ""):
        ids = [enrollment.id for enrollment in group]
        if target is None:
            # Contacts leaving the plan here: each route is its contacts' exit reason.
            for route in sorted({routes[enrollment_id][0] for enrollment_id in ids}):
                Enrollment.update(status=Enrollment.EXITED, exit_reason=route,
                                  version=Enrollment.version + 1, updated_at=now).where(
                    Enrollment.id.in_([i for i in ids if routes[i][0] == route])).execute()
            for enrollment in group:
                if isinstance(enrollment, Enrollment):
                    enrollment.status, enrollment.exit_reason = Enrollment.EXITED, routes[enrollment.id][0]
                    enrollment.version += 1
            logger.info("Exited enrollment=%s at a routing node", ",".join(map(str, ids)))
            continue
        Enrollment.update(current_node=target, version=Enrollment.version + 1,
                          node_entered_at=now, updated_at=now).where(Enrollment.id.in_(ids)).execute()
        moved = []
        for enrollment in group:
            if isinstance(enrollment, Enrollment):  # callers read the row they passed
                enrollment.current_node, enrollment.version = target, enrollment.version + 1
                enrollment.node_entered_at = enrollment.updated_at = now
                moved.append(enrollment)
            else:
                moved.append(_Routed(enrollment.id, enrollment.contact_id, enrollment.version + 1,
                                     getattr(enrollment, "tenant_id", None)))
        _enter(moved, plan, target, via_event=via_event, now=now, event_data=event_data,
               from_node=from_node)


def _contact_zones(enrollments: Sequence[Enrollment]) -> dict[int, str | None]:
    """Each enrollment's contact time zone, by contact id; loaded contacts cost nothing."""
    zones = {e.contact_id: e.contact.timezone for e in enrollments
             if "contact" in getattr(e, "__rel__", ())}
    missing = [e.contact_id for e in enrollments if e.contact_id not in zones]
    if missing:
        zones.update((contact.id, contact.timezone)
                     for contact in rows_by_id(Contact, missing, Contact.id, Contact.timezone))
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
    rows = [
        {"enrollment": enrollment.id, "node": node, "kind": kind, "event": event,
         "run_at": run_at, "visit_version": enrollment.version,
         "dedupe_key": action_key(kind, enrollment.id, node, event, enrollment.version)}
        for enrollment, node, kind, event, run_at in actions
    ]
    insert_rows(ScheduledAction, rows, ignore_conflicts=True)
    note_scheduled(rows)


def timeout_duration(event: str, after: timedelta | None) -> timedelta:
    """How long a timeout transition waits: its ``after``, or the setting for its event."""
    if after is not None:
        return after
    settings = get_settings()
    return {"no_open": settings.no_open_timeout, "no_click": settings.no_click_timeout,
            "no_reply": settings.no_reply_timeout}[event]


class EventFor(NamedTuple):
    """One event for one enrollment, as process_events takes it (see process_event)."""

    enrollment_id: int
    event: str
    node: str | None = None
    visit_version: int | None = None
    event_data: Mapping[str, Any] | None = None
    #: The email the event is of, if any: its visit is read again when it looks stale.
    message_id: str | None = None


def process_event(
    enrollment_id: int,
    event: str,
    *,
    node: str | None = None,
    visit_version: int | None = None,
    now: datetime | None = None,
    enrollment: Enrollment | None = None,
    event_data: Mapping[str, Any] | None = None,
) -> bool:
    """Take the current node's first transition on ``event``; True if the enrollment moved.

    ``node``/``visit_version`` name the visit the event belongs to (the node whose
    email or timer produced it): an event from a node the enrollment has left is
    stale and moves nothing. ``enrollment`` may pass the row just read, to save a
    query; if it is stale, the version check catches it and the row is read again.
    ``event_data``: what a branch entered on it sees as ``event`` (branches.event_view).
    """
    return enrollment_id in process_events(
        [EventFor(enrollment_id, event, node, visit_version, event_data)], now=now,
        enrollments=None if enrollment is None else {enrollment_id: enrollment})


def process_events(events: Sequence[EventFor], *, now: datetime | None = None,
                   enrollments: Mapping[int, Enrollment] | None = None) -> set[int]:
    """process_event for many enrollments at once, one event each; the ids of those
    that moved.

    A batch costs the statements of one event: one read of the enrollments, then
    move_on_event per event type. An enrollment another writer moved between the read
    and the move is read again and decided anew, as process_event does. ``enrollments``
    may pass rows just read, by id.
    """
    by_id = {item.enrollment_id: item for item in events}
    if len(by_id) != len(events):
        raise ValueError("process_events takes one event per enrollment; "
                         "give an enrollment's next event once its first has moved it")
    now = now or utcnow()
    known = dict(enrollments or {})
    pending = sorted(by_id)
    moved: set[int] = set()
    for _ in range(MAX_MOVE_ATTEMPTS):
        unread = [enrollment_id for enrollment_id in pending if enrollment_id not in known]
        known.update((row.id, row) for row in rows_by_id(Enrollment, unread))
        moves: dict[str, list[Enrollment]] = defaultdict(list)
        stale: list[Enrollment] = []
        for enrollment_id in pending:
            enrollment, item = known.get(enrollment_id), by_id[enrollment_id]
            if enrollment is not None and _takes(enrollment, item):
                moves[item.event].append(enrollment)
            elif (enrollment is not None and enrollment.status == Enrollment.ACTIVE
                    and item.message_id is not None):
                stale.append(enrollment)
        # A migration that committed since the event's email was read moved that email's
        # visit with the enrollment (migrate._rehome): read where the email is now.
        visits = email_visits([by_id[enrollment.id].message_id for enrollment in stale])
        for enrollment in stale:
            item = by_id[enrollment.id]
            visit = visits.get(item.message_id)
            if visit is not None and (visit.node, visit.visit_version) != (item.node,
                                                                          item.visit_version):
                by_id[enrollment.id] = item = item._replace(node=visit.node,
                                                            visit_version=visit.visit_version)
                if _takes(enrollment, item):
                    moves[item.event].append(enrollment)
        pending = []
        for event, group in sorted(moves.items()):
            from_nodes = {enrollment.id: enrollment.current_node for enrollment in group}
            won = {enrollment.id for enrollment in move_on_event(
                group, event, now=now, event_data={
                    enrollment.id: by_id[enrollment.id].event_data for enrollment in group
                    if by_id[enrollment.id].event_data is not None})}
            for enrollment in group:
                if enrollment.id in won:
                    logger.info("Moved enrollment=%s from=%s to=%s on=%s", enrollment.id,
                                from_nodes[enrollment.id], enrollment.current_node, event)
                else:  # another event moved it first: read it again and decide again
                    known.pop(enrollment.id)
                    pending.append(enrollment.id)
            moved |= won
        if not pending:
            return moved
    raise RuntimeError(f"enrollment {pending[0]} kept changing under "
                       f"{by_id[pending[0]].event!r}; giving up")


class EmailVisit(NamedTuple):
    """Where an email is now: the visit its send belongs to (a migration moves it), and
    what starting its timers again needs."""

    enrollment_id: int | None
    action_id: int | None
    sent_at: datetime | None
    node: str
    visit_version: int | None


def email_visits(message_ids: Sequence[str]) -> dict[str, EmailVisit]:
    """Each email's visit as it is now, by message id; one query."""
    if not message_ids:
        return {}
    query = (OutboundMessage.select(OutboundMessage.id, OutboundMessage.enrollment,
                                    OutboundMessage.action, OutboundMessage.sent_at,
                                    OutboundMessage.node, ScheduledAction.visit_version)
             .join(ScheduledAction, JOIN.LEFT_OUTER, on=(OutboundMessage.action == ScheduledAction.id))
             .where(OutboundMessage.id.in_(sorted(set(message_ids)))).tuples())
    return {message_id: EmailVisit(*rest) for message_id, *rest in query}


def _takes(enrollment: Enrollment, item: EventFor) -> bool:
    """Whether the enrollment, as read, moves on the event: it is active, the event is of
    its current visit (or a goal, reached from any node) and its node has a transition."""
    if enrollment.status != Enrollment.ACTIVE:
        return False
    plan = plan_for_id(enrollment.plan_id)
    if has_goal(plan.goals, item.event):
        return True
    stale = ((item.node is not None and enrollment.current_node != item.node)
             or (item.visit_version is not None and enrollment.version != item.visit_version))
    return not stale and plan.transition_for(enrollment.current_node, item.event) is not None


def move_on_event(enrollments: Sequence[Enrollment], event: str, *,
                  now: datetime | None = None,
                  event_data: EventData | None = None) -> list[Enrollment]:
    """Move each enrollment on ``event`` from the node it is at, as read; returns the
    ones that moved, updated in place.

    A batch costs the statements of one enrollment: an ``UPDATE ... WHERE (id,
    version) IN`` per (plan, node), then the left node's cancellations and the new
    node's actions in bulk. An enrollment another writer moved since it was read
    fails its version check and stays (the caller decides whether to read it again).
    Each enrollment must appear once. ``event_data``: what a branch entered on the move
    sees as ``event``, by enrollment id (see _enter).
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
            if has_goal(plan.goals, event):  # goals on provider events take no condition
                moved.extend(goals.convert(group, event, now=now))
                continue
            transition = plan.transition_for(from_node, event)
            if transition is None:
                continue
            moved.extend(_move_group(plan, from_node, group, transition.to, event, now,
                                     event_data))
    return moved


def move_to(moves: Sequence[tuple[Enrollment, str]], event: str, *,
            now: datetime | None = None,
            event_data: EventData | None = None) -> list[Enrollment]:
    """Move each enrollment to the node paired with it (a transition chosen by the
    caller, e.g. on a condition), from the node it is at as read; returns the ones
    that moved, updated in place. Version-guarded as move_on_event; each enrollment
    must appear once. ``event_data`` as for move_on_event (a host event's properties)."""
    now = now or utcnow()
    groups: dict[tuple[int, str, str], list[Enrollment]] = defaultdict(list)
    for enrollment, target in moves:
        if enrollment.status == Enrollment.ACTIVE:
            groups[(enrollment.plan_id, enrollment.current_node, target)].append(enrollment)
    moved: list[Enrollment] = []
    with _transaction():
        for (plan_id, from_node, target), group in sorted(groups.items()):
            moved.extend(_move_group(plan_for_id(plan_id), from_node, group, target, event, now,
                                     event_data))
    return moved


def _move_group(plan: PlanSpec, from_node: str, group: list[Enrollment], target: str,
                event: str, now: datetime, event_data: EventData | None) -> list[Enrollment]:
    """Move enrollments that were read at ``from_node`` to ``target``; the winners."""
    group.sort(key=lambda enrollment: enrollment.id)
    # One enrollment (every event's move, most timers'): a plain test, which SQLite runs
    # several times faster than a row-value IN of one pair.
    seen = ("id = {p} AND version = {p}" if len(group) == 1
            else "(id, version) IN (" + ", ".join(["({p}, {p})"] * len(group)) + ")")
    won = {enrollment_id for (enrollment_id,) in database_proxy.execute_sql(
        statement(_MOVE.replace("{seen}", seen), prepared=len(group) == 1),
        [target, now, now, *(value for enrollment in group
                             for value in (enrollment.id, enrollment.version)),
         Enrollment.ACTIVE]).fetchall()}
    winners = [enrollment for enrollment in group if enrollment.id in won]
    if not winners:
        return []
    _cancel_open_actions([enrollment.id for enrollment in winners], from_node, now)
    for enrollment in winners:
        enrollment.current_node, enrollment.version = target, enrollment.version + 1
        enrollment.node_entered_at = enrollment.updated_at = now
    _enter(winners, plan, target, via_event=event, now=now, event_data=event_data,
           from_node=from_node)
    return winners


# The move of enrollments read at their versions (``{seen}``: the test of each one's id
# and version) to a node, version-guarded; the ids that moved. A paused or ended
# enrollment does not move, whatever version it has. Fixed SQL: every event and timer
# that moves someone runs it.
_MOVE = """
UPDATE enrollment SET current_node = {p}, version = version + 1, node_entered_at = {p},
    updated_at = {p}
WHERE {seen} AND status = {p}
RETURNING id
"""

# The open actions (pending, enqueued, or held: a paused enrollment's, cancelled when it
# exits) of the enrollments ``{ids}`` (statements.ids_condition) at a node, cancelled.
_CANCEL_OPEN_ACTIONS = """
UPDATE scheduled_action SET status = {p}, finished_at = {p}
WHERE enrollment_id {ids} AND node = {p} AND status IN ({p}, {p}, {p})
"""


def _cancel_open_actions(enrollment_ids: Sequence[int], node: str, now: datetime) -> int:
    """Cancel the timers and sends of the node being left.

    Only pending and enqueued ones: a running action (often the very timeout that
    caused this move) finishes on its own and re-checks the enrollment.
    """
    condition, ids = ids_condition(list(enrollment_ids))
    return database_proxy.execute_sql(
        statement(_CANCEL_OPEN_ACTIONS.replace("{ids}", condition)),
        [ScheduledAction.CANCELLED, now, *ids, node, ScheduledAction.PENDING,
         ScheduledAction.ENQUEUED, ScheduledAction.HELD]).rowcount


def exit_enrollment(enrollment_id: int, reason: str, *, now: datetime | None = None) -> bool:
    """End an active or paused enrollment where it stands (suppressed, failed send,
    unsubscribed)."""
    now = now or utcnow()
    with database_proxy.atomic():
        enrollment = Enrollment.get_or_none(Enrollment.id == enrollment_id)
        if enrollment is None or enrollment.status not in Enrollment.LIVE:
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
            notifications.record(notifications.exit_type(reason), [enrollment_id], reason=reason,
                                 now=now)
    if moved:
        logger.info("Exited enrollment=%s reason=%s", enrollment_id, reason)
    return bool(moved)


def exit_contact_enrollments(tenant_id: str, email: str, reason: str) -> int:
    """End every active or paused enrollment of one contact in one tenant (unsubscribe,
    complaint)."""
    ids = [
        row.id
        for row in Enrollment.select(Enrollment.id)
        .join(Contact)
        .where(
            Enrollment.tenant == tenant_id,
            Contact.email == address_key(email),
            Enrollment.status.in_(Enrollment.LIVE),
        )
    ]
    return sum(exit_enrollment(enrollment_id, reason) for enrollment_id in ids)


def after_send(message: OutboundMessage, *, now: datetime | None = None) -> None:
    """Create the node's timers from ``sent_at``; safe to call again (dedupe keys).

    ``message`` needs its id, enrollment, action and sent_at. (The send itself writes
    them in the statement that marks the message sent: see timers_after_send.)
    """
    timers = timers_after_send(
        message.id, message.enrollment_id, message.action_id, message.sent_at or now or utcnow(),
    )
    insert_rows(ScheduledAction, timers, ignore_conflicts=True)
    note_scheduled(timers)


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
         "dedupe_key": action_key(ScheduledAction.TIMEOUT, enrollment_id, node, transition.on,
                                 visit_version),
         "run_at": sent_at + timeout_duration(transition.on, transition.after)}
        for transition in plan_for_id(plan_id).timeout_transitions(node)
    ]


__all__ = [
    "AlreadyEnrolled",
    "EmailVisit",
    "EventFor",
    "EnrollmentError",
    "after_send",
    "email_visits",
    "enroll",
    "exit_contact_enrollments",
    "exit_enrollment",
    "move_on_event",
    "move_to",
    "process_event",
    "process_events",
    "timers_after_send",
]
