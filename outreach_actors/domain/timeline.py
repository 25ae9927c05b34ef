"""A contact's timeline: every visit, scheduled action, message, event and suppression of
one contact, in time order, each with one line saying why it happened."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime

from outreach_actors.domain.addresses import address_key
from outreach_actors.domain.replies.ingest import PROVIDER_EVENT
from outreach_actors.domain.store.models import (
    Contact,
    Enrollment,
    MessageEvent,
    NodeVisit,
    OutboundMessage,
    Plan,
    ScheduledAction,
    Suppression,
    Tenant,
)
from outreach_actors.domain.vocabulary import AWAITED_ENGAGEMENT

#: Contacts one search lists at most (an id or an exact address finds one per tenant).
MAX_MATCHES = 50


@dataclass(frozen=True)
class Entry:
    """One thing that happened: when, what kind, what, why, and the rows behind it."""

    at: datetime
    kind: str  # visit, action, message, event, exit, suppression
    what: str
    why: str
    message_id: str | None = None
    delivery_id: int | None = None
    inbound_post_id: int | None = None  # the Inbound Parse post that carried a reply
    synthetic: bool = False


@dataclass
class EnrollmentTimeline:
    enrollment: Enrollment
    plan: Plan
    entries: list[Entry] = field(default_factory=list)


@dataclass
class Timeline:
    contact: Contact
    enrollments: list[EnrollmentTimeline]
    suppressions: list[Entry]


def find_contacts(query: str, *, tenant_ids: Collection[str] | None = None) -> list[Contact]:
    """Contacts whose id is ``query`` or whose address is ``query`` normalized (exact:
    an index lookup, whatever the number of contacts), of ``tenant_ids`` (default: any)."""
    query = query.strip()
    if not query:
        return []
    # Contacts are indexed by (tenant, email): naming the tenants lets the index find the
    # address in each, where the address alone would read every contact.
    tenants = (list(tenant_ids) if tenant_ids is not None
               else [row_id for (row_id,) in Tenant.select(Tenant.id).tuples()])
    condition = (Contact.tenant.in_(tenants)) & (Contact.email == address_key(query))
    if query.isdigit() and len(query) < 10:  # an id (PostgreSQL's integer holds 9 digits and more)
        condition = condition | (Contact.id == int(query))
    contacts = Contact.select().where(condition)
    if tenant_ids is not None:
        contacts = contacts.where(Contact.tenant.in_(tenants))
    return list(contacts.order_by(Contact.tenant, Contact.id).limit(MAX_MATCHES))


def contact_timeline(contact_id: int) -> Timeline | None:
    """The timeline of one contact, or None when there is no such contact."""
    contact = Contact.get_or_none(Contact.id == contact_id)
    if contact is None:
        return None
    enrollments = list(
        Enrollment.select(Enrollment, Plan).join(Plan)
        .where(Enrollment.contact == contact_id).order_by(Enrollment.created_at, Enrollment.id)
    )
    timelines = [EnrollmentTimeline(enrollment, enrollment.plan, _entries(enrollment))
                 for enrollment in enrollments]
    suppressions = [
        Entry(row.created_at, "suppression", f"suppressed on {row.channel}",
              f"reason {row.reason}" + (f", from {row.source}" if row.source else ""))
        for row in Suppression.select().where(Suppression.tenant == contact.tenant_id,
                                              Suppression.value == contact.email)
    ]
    return Timeline(contact, timelines, suppressions)


def _entries(enrollment: Enrollment) -> list[Entry]:
    plan = enrollment.plan
    entries: list[Entry] = []
    visits = list(NodeVisit.select().where(NodeVisit.enrollment == enrollment.id)
                  .order_by(NodeVisit.version))
    node_at_version = {visit.version: visit.node for visit in visits}
    for visit in visits:
        if visit.via_event is None:
            why = f"enrolled: {visit.node} is the start of {plan.name} v{plan.version}"
        else:
            source = node_at_version.get(visit.version - 1, "?")
            why = f"{source} moves on {visit.via_event} to {visit.node}"
        entries.append(Entry(visit.entered_at, "visit", f"entered {visit.node}", why))

    for action in ScheduledAction.select().where(ScheduledAction.enrollment == enrollment.id):
        entries.append(Entry(action.created_at, "action", _action_what(action), _action_why(action),
                             message_id=action.message_id))

    messages = list(OutboundMessage.select().where(OutboundMessage.enrollment == enrollment.id))
    for message in messages:
        what = f"message {message.status}: “{message.subject}”"
        why = f"sent by {message.node}" + (f", provider id {message.provider_message_id}"
                                           if message.provider_message_id else "")
        if message.error:
            why += f"; error: {message.error}"
        entries.append(Entry(message.sent_at or message.created_at, "message", what, why,
                             message_id=message.id))

    if messages:
        events = MessageEvent.select().where(MessageEvent.message.in_([m.id for m in messages]))
        for event in events:
            entries.append(Entry(event.occurred_at, "event", f"{event.type}", _event_why(event),
                                 message_id=event.message_id, delivery_id=event.delivery_id,
                                 inbound_post_id=_inbound_post_id(event),
                                 synthetic=event.synthetic))

    if enrollment.status != Enrollment.ACTIVE:
        why = enrollment.exit_reason or f"reached {enrollment.current_node}, an exit"
        entries.append(Entry(enrollment.updated_at, "exit",
                             f"{enrollment.status} at {enrollment.current_node}", why))
    # Kinds in cause order when two rows share a time: a visit schedules, a send makes a message.
    order = {"visit": 0, "action": 1, "message": 2, "event": 3, "exit": 4}
    return sorted(entries, key=lambda entry: (entry.at, order.get(entry.kind, 5)))


def _action_what(action: ScheduledAction) -> str:
    what = "send" if action.kind == ScheduledAction.SEND else f"timer {action.event}"
    return f"{what} of {action.node} due {action.run_at:%Y-%m-%d %H:%M:%S}: {action.status}"


def _action_why(action: ScheduledAction) -> str:
    steps = [f"{label} {at:%Y-%m-%d %H:%M:%S}" for label, at in
             [("enqueued", action.enqueued_at), ("fired", action.fired_at),
              ("finished", action.finished_at)] if at is not None]
    if action.status == ScheduledAction.CANCELLED:
        steps.append(f"cancelled: the contact left {action.node} before it was due")
    elif action.result:
        steps.append(action.result)
    if action.kind == ScheduledAction.SEND:
        because = f"{action.node} is an email node"
    else:
        awaited = sorted(AWAITED_ENGAGEMENT.get(action.event or "", ()))
        because = (f"fires {action.event} unless {' or '.join(awaited)} comes first" if awaited
                   else f"fires {action.event} when due")
    return "; ".join([because, *steps])


def _event_why(event: MessageEvent) -> str:
    if event.synthetic:
        awaited = " or ".join(sorted(AWAITED_ENGAGEMENT.get(event.type, ()))) or "nothing"
        due = f" due {event.scheduled_for:%Y-%m-%d %H:%M:%S}" if event.scheduled_for else ""
        return f"synthetic: the timer{due} found no {awaited}"
    provider = f" ({event.provider_event})" if event.provider_event else ""
    return f"reported by the provider{provider}"


def _inbound_post_id(event: MessageEvent) -> int | None:
    """The Inbound Parse post that carried a reply event (domain/replies keeps its id in
    the event's data), or None."""
    post_id = (event.data or {}).get("inbound_post") if event.provider_event == PROVIDER_EVENT \
        else None
    return post_id if isinstance(post_id, int) else None
