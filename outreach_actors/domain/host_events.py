"""Host events (``track``): the host app's own events, stored once, then moving contacts.

An event is checked, stored (a unique ``event_key``, so a retry stores nothing twice)
and committed before it moves anyone; then, in one transaction per round, it is
claimed (``received -> processed``) and each of its contact's live enrollments
reaches a goal or takes the transition whose condition holds. A crash between the
two leaves the row ``received``: ``process_pending_host_events`` finishes it.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from outreach_actors.domain import engine, goals
from outreach_actors.domain.addresses import normalized_address
from outreach_actors.domain.plan_events import goal_reached, transition_taken
from outreach_actors.domain.store.keys import host_event_key
from outreach_actors.domain.store.models import (
    Contact,
    Enrollment,
    HostEvent,
    Tenant,
    insert_rows,
    utcnow,
    write_transaction,
)
from outreach_actors.domain.stored_plans import plan_for_id
from outreach_actors.domain.vocabulary import host_event_name_problem

logger = logging.getLogger(__name__)

#: The largest properties of one event, as JSON: a fact about a purchase, not a document.
MAX_PROPERTIES_BYTES = 16 * 1024
#: The longest event id a host may give (its own id: a UUID, an order number).
MAX_EVENT_ID_CHARS = 128
#: How many events one call (or one ``POST /events``) may carry.
MAX_BATCH = 1000
#: How often an event retries an enrollment another writer moved while it was deciding.
MAX_MOVE_ATTEMPTS = 3
#: How long a stored event may stay unprocessed before the periodic job processes it.
PENDING_GRACE = timedelta(minutes=1)


class TrackError(ValueError):
    """A host event was refused (unknown tenant, no address, bad name or properties);
    the message says why. Nothing of it was stored."""


@dataclass(frozen=True)
class TrackResult:
    """What became of one tracked event: ``stored`` False for a repeat of an event id
    already stored (it moved, or will move, who it moves once); ``moved`` how many
    enrollments it moved or converted now."""

    event_key: str
    stored: bool
    moved: int


def checked_event(tenant_id: object, email: object, event: object, properties: object = None, *,
                  event_id: object = None, occurred_at: object = None,
                  now: datetime | None = None) -> dict[str, Any]:
    """The HostEvent row of one event, checked; TrackError, saying why, if it cannot be.
    (The tenant's existence is checked by track_many, for a whole batch at once.)"""
    now = now or utcnow()
    if not isinstance(tenant_id, str) or not tenant_id:
        raise TrackError("tenant must be a tenant id (text)")
    try:
        address = normalized_address(email)
    except ValueError as exc:
        raise TrackError(str(exc)) from None
    if (problem := host_event_name_problem(event)) is not None:
        raise TrackError(problem)
    if event_id is None:
        key = "random:" + uuid.uuid4().hex  # the host gave no id: nothing to dedupe on
    elif (isinstance(event_id, str) and 0 < len(event_id) <= MAX_EVENT_ID_CHARS
          and event_id.isprintable()):
        key = host_event_key(tenant_id, event_id)
    else:
        raise TrackError(f"event_id must be 1 to {MAX_EVENT_ID_CHARS} printable characters")
    return {"tenant": tenant_id, "email": address, "name": event,
            "properties": _checked_properties(properties), "event_key": key,
            "occurred_at": _checked_time(occurred_at, now), "received_at": now}


def _checked_properties(properties: object) -> dict[str, Any]:
    if properties is None:
        return {}
    if not isinstance(properties, Mapping) or not all(isinstance(k, str) for k in properties):
        raise TrackError("properties must map names (text) to JSON values")
    try:
        size = len(json.dumps(properties, allow_nan=False, ensure_ascii=False).encode("utf-8"))
    except (TypeError, ValueError) as exc:
        raise TrackError(f"properties must hold JSON values (text, numbers, lists...): {exc}") from None
    except RecursionError:
        raise TrackError("properties are nested too deeply") from None
    if size > MAX_PROPERTIES_BYTES:
        raise TrackError(f"properties are {size:,} bytes as JSON; the limit is {MAX_PROPERTIES_BYTES:,}")
    return dict(properties)


def _checked_time(value: object, now: datetime) -> datetime:
    """Naive UTC, as every DateTimeField holds; an ISO-8601 text or a datetime."""
    if value is None:
        return now
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise TrackError(f"occurred_at {value[:40]!r} is not an ISO-8601 time such as "
                             "2026-01-31T12:00:00Z") from None
    if not isinstance(value, datetime):
        raise TrackError("occurred_at must be a datetime or an ISO-8601 time")
    try:
        return value if value.tzinfo is None else value.astimezone(UTC).replace(tzinfo=None)
    except OverflowError:  # 9999-12-31T23:00-05:00 is past the last datetime in UTC
        raise TrackError(f"occurred_at {value.isoformat()!r} is out of range") from None


def track(tenant_id: str, email: str, event: str, properties: Mapping[str, Any] | None = None, *,
          event_id: str | None = None, occurred_at: datetime | str | None = None,
          now: datetime | None = None) -> TrackResult:
    """Store one host event and move the contact's enrollments on it (see track_many)."""
    [result] = track_many([checked_event(tenant_id, email, event, properties, event_id=event_id,
                                         occurred_at=occurred_at, now=now)], now=now)
    return result


def track_many(rows: Sequence[dict[str, Any]], *, now: datetime | None = None) -> list[TrackResult]:
    """Store checked events (``checked_event``) in one statement, commit, then move on
    the new ones; results in the order given. TrackError for an unknown tenant, or a
    batch over MAX_BATCH, storing nothing."""
    now = now or utcnow()
    if len(rows) > MAX_BATCH:
        raise TrackError(f"{len(rows):,} events in one batch; the limit is {MAX_BATCH:,}")
    tenants = sorted({row["tenant"] for row in rows})
    known = set(Tenant.select(Tenant.id).where(Tenant.id.in_(tenants)).tuples()) if tenants else set()
    unknown = [tenant for tenant in tenants if (tenant,) not in known]
    if unknown:
        raise TrackError(f"unknown tenant {unknown[0]!r:.80}")
    unique = list({row["event_key"]: row for row in reversed(rows)}.values())[::-1]
    with write_transaction():
        stored = dict(insert_rows(HostEvent, unique, ignore_conflicts=True,
                                  conflict_target="event_key", returning=("event_key", "id")))
    # Processed as stored (they were just written): no need to read them back.
    moved = _process_events([HostEvent(id=stored[row["event_key"]], status=HostEvent.RECEIVED, **row)
                             for row in unique if row["event_key"] in stored], now)
    results = []
    for row in rows:  # a key repeated in the batch is stored by its first row only
        event_id = stored.pop(row["event_key"], None)
        results.append(TrackResult(row["event_key"], event_id is not None, moved.get(event_id, 0)))
    return results


def process_host_events(event_ids: Sequence[int], *, now: datetime | None = None) -> dict[int, int]:
    """Move on stored events not yet processed; returns how many enrollments each one
    moved. Safe to run twice and concurrently: each event is claimed in the
    transaction of its moves."""
    return _process_events(list(HostEvent.select().where(
        HostEvent.id.in_(sorted(set(event_ids))), HostEvent.status == HostEvent.RECEIVED,
    )), now or utcnow())


def _process_events(events: list[HostEvent], now: datetime) -> dict[int, int]:
    events.sort(key=lambda event: (event.occurred_at, event.id))
    moved: dict[int, int] = {}
    for batch in _one_per_contact(events):
        moved.update(_process(batch, now))
    return moved


def process_pending_host_events(*, now: datetime | None = None, limit: int = MAX_BATCH) -> int:
    """Process events a crash left stored but unprocessed (the periodic job); the count."""
    now = now or utcnow()
    ids = [event_id for (event_id,) in HostEvent.select(HostEvent.id).where(
        HostEvent.status == HostEvent.RECEIVED, HostEvent.received_at <= now - PENDING_GRACE,
    ).order_by(HostEvent.received_at).limit(limit).tuples()]
    return len(process_host_events(ids, now=now)) if ids else 0


def _one_per_contact(events: list[HostEvent]) -> list[list[HostEvent]]:
    """Rounds in which each contact appears once, in the order the events occurred: a
    contact's second event sees where its first one moved it."""
    rounds: list[list[HostEvent]] = []
    depth: dict[tuple[str, str], int] = defaultdict(int)
    for event in events:
        contact = (event.tenant_id, event.email)
        if depth[contact] == len(rounds):
            rounds.append([])
        rounds[depth[contact]].append(event)
        depth[contact] += 1
    return rounds


def _process(events: list[HostEvent], now: datetime) -> dict[int, int]:
    """Claim and apply events of distinct contacts, in one transaction."""
    with write_transaction():
        claimed = {event_id for (event_id,) in HostEvent.update(
            status=HostEvent.PROCESSED, processed_at=now,
        ).where(HostEvent.id.in_([event.id for event in events]),
                HostEvent.status == HostEvent.RECEIVED).returning(HostEvent.id).tuples().execute()}
        events = [event for event in events if event.id in claimed]
        if not events:
            return {}
        by_contact = {(event.tenant_id, event.email): event for event in events}
        emails_by_tenant: dict[str, list[str]] = defaultdict(list)
        for tenant_id, email in by_contact:
            emails_by_tenant[tenant_id].append(email)
        # Per tenant, by the (tenant, email) index: a row-value IN list is not planned on it.
        contacts = {
            contact.id: contact for tenant_id, emails in emails_by_tenant.items()
            for contact in Contact.select(Contact.id, Contact.tenant, Contact.email, Contact.fields)
            .where(Contact.tenant == tenant_id, Contact.email.in_(emails))
        }
        moved: dict[int, int] = defaultdict(int)
        pending = _live_enrollments(list(contacts))
        for _ in range(MAX_MOVE_ATTEMPTS):
            if not pending:
                break
            lost = _apply(pending, contacts, by_contact, moved, now)
            pending = _live_enrollments(list(contacts), only=lost) if lost else []
        by_count: dict[int, list[int]] = defaultdict(list)
        for event_id, count in moved.items():
            by_count[count].append(event_id)
        for count, event_ids in by_count.items():  # one statement per count: usually one
            HostEvent.update(moved=count).where(HostEvent.id.in_(event_ids)).execute()
    for event in events:
        logger.info("Host event=%s name=%s tenant=%s moved=%d", event.id, event.name,
                    event.tenant_id, moved.get(event.id, 0))
    return {event.id: moved.get(event.id, 0) for event in events}


def _live_enrollments(contact_ids: list[int], *, only: set[int] | None = None) -> list[Enrollment]:
    # Live ones, and a split's holdout, which a goal may still convert (goals.py).
    query = Enrollment.select(
        Enrollment.id, Enrollment.plan, Enrollment.contact, Enrollment.status,
        Enrollment.current_node, Enrollment.version, Enrollment.exit_reason,
    ).where(Enrollment.contact.in_(contact_ids), goals.convertible())
    if only is not None:
        query = query.where(Enrollment.id.in_(sorted(only)))
    return list(query)


def _apply(enrollments: list[Enrollment], contacts: dict[int, Contact],
           by_contact: dict[tuple[str, str], HostEvent], moved: dict[int, int],
           now: datetime) -> set[int]:
    """Convert or move each enrollment on its contact's event; the ids another writer
    changed first (to read again and decide anew)."""
    converts: dict[str, list[Enrollment]] = defaultdict(list)
    moves: dict[str, list[tuple[Enrollment, str]]] = defaultdict(list)
    event_of: dict[int, HostEvent] = {}
    for enrollment in enrollments:
        contact = contacts[enrollment.contact_id]
        event = by_contact[(contact.tenant_id, contact.email)]
        plan = plan_for_id(enrollment.plan_id)
        fields = {**(contact.fields or {}), "email": contact.email}
        properties = event.properties or {}
        event_of[enrollment.id] = event
        if goal_reached(plan.goals, event.name, properties, fields) is not None:
            converts[event.name].append(enrollment)
        elif enrollment.status == Enrollment.ACTIVE and (transition := transition_taken(
                plan.nodes[enrollment.current_node].transitions, enrollment.current_node, event.name, properties, fields)) is not None:
            moves[event.name].append((enrollment, transition.to))
    tried = {e.id for group in converts.values() for e in group}
    tried |= {e.id for group in moves.values() for e, _ in group}
    won: set[int] = set()
    for name, group in sorted(converts.items()):
        won |= {e.id for e in goals.convert(group, name, now=now)}
    for name, pairs in sorted(moves.items()):
        # A branch the move leads to reads the event's properties as ``event``.
        won |= {e.id for e in engine.move_to(pairs, name, now=now, event_data={
            e.id: event_of[e.id].properties or {} for e, _ in pairs})}
    for enrollment_id in won:
        moved[event_of[enrollment_id].id] += 1
    return tried - won
