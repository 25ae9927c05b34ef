"""The funnel: how many enrollments reached each node, what their emails met, and
what needs an operator's eye (contacts still there, failures, unresolved sends)."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

import peewee
from peewee import fn

from outreach_actors.domain.engagement import uncounted_events
from outreach_actors.domain.store.counters import (
    ANY_OPEN,
    ENROLLMENT_STATUS,
    ENTERED,
    MESSAGE_STATUS,
)
from outreach_actors.domain.store.counters import counts as stored_counts
from outreach_actors.domain.store.models import (
    Contact,
    Enrollment,
    MessageEvent,
    NodeVisit,
    OutboundMessage,
    Plan,
    ScheduledAction,
    database_proxy,
)
from outreach_actors.domain.vocabulary import EventType
from outreach_actors.settings import get_settings

# entered: visits of the node; active: contacts there now; exited: contacts whose
# enrollment ended there (completed or exited); failed: ended there by a failure (a
# send that failed for good, an unconfirmed ambiguous send); ambiguous: sends of the
# node that no provider event has confirmed yet (see README, "Guarantees"); replied,
# auto_replied: emails of the node that a person, or an auto-reply, answered.
FUNNEL_COLUMNS = ["entered", "active", "sent", "delivered", "opened", "clicked", "bounced",
                  "no_open", "no_click", "exited", "failed", "ambiguous", "paused", "converted",
                  "replied", "auto_replied", "no_reply"]
# paused: contacts an operator paused there; converted: contacts that reached a plan goal
# after last being there (goals.py). Each row also carries its plan's totals: see goals().
PLAN_GOAL_COLUMNS = ["plan_enrolled", "plan_converted", "conversion_rate"]
EVENT_COLUMNS = ["delivered", "opened", "clicked", "bounced", "no_open", "no_click",
                 "replied", "auto_replied", "no_reply"]

Key = tuple[str, str, str]  # tenant, plan, node


def funnel(*, plan_name: str | None = None, tenant_id: str | None = None,
           version: int | None = None, since: datetime | None = None,
           until: datetime | None = None) -> list[dict]:
    """One row per (tenant, plan, node) in plan order; event columns count distinct
    messages. Plans of the same name in two tenants are two funnels. ``version``: of that
    plan version only; ``since``/``until``: visits, sends and events of that period only
    (active, exited and failed count contacts where they are now)."""
    plans = Plan.select()
    if plan_name:
        plans = plans.where(Plan.name == plan_name)
    if tenant_id:
        plans = plans.where(Plan.tenant == tenant_id)
    if version is not None:
        plans = plans.where(Plan.version == version)
    if not plans.exists():
        return []
    # All time: the counts the database keeps; a period needs the rows' dates.
    counts = (_counted(plans) if since is None and until is None
              else _scanned([plan.id for plan in plans], since, until))
    order = _node_order(plans)
    totals = {(row["tenant"], row["plan"]): row
              for row in goals(plan_name=plan_name, tenant_id=tenant_id)}
    rows = [{"tenant": tenant, "plan": name, "node": node, **values,
             **_plan_totals(totals.get((tenant, name)))}
            for (tenant, name, node), values in counts.items()]
    return sorted(rows, key=lambda row: (
        row["tenant"], row["plan"], order.get((row["tenant"], row["plan"], row["node"]), 999)))


def _plan_totals(plan: dict | None) -> dict:
    plan = plan or {"enrolled": 0, "converted": 0, "conversion_rate": 0.0}
    return {"plan_enrolled": plan["enrolled"], "plan_converted": plan["converted"],
            "conversion_rate": plan["conversion_rate"]}


def _period(column, since: datetime | None, until: datetime | None) -> list:
    """Conditions keeping ``column`` within [since, until) (none for an open end)."""
    return ([column >= since] if since else []) + ([column < until] if until else [])


def _scanned(plan_ids: list[int], since: datetime | None,
             until: datetime | None) -> dict[Key, dict[str, int]]:
    """The funnel's columns per (tenant, plan, node) of these plans, counted from the
    rows of the period: visits, sends and events within [since, until)."""
    counts: dict[Key, dict[str, int]] = defaultdict(lambda: dict.fromkeys(FUNNEL_COLUMNS, 0))
    group = (Plan.tenant, Plan.name)

    entered = (
        NodeVisit.select(*group, NodeVisit.node, fn.COUNT(NodeVisit.id))
        .join(Enrollment).join(Plan)
        .where(Plan.id.in_(plan_ids), *_period(NodeVisit.entered_at, since, until))
        .group_by(*group, NodeVisit.node)
    )
    for tenant, name, node, count in entered.tuples():
        counts[(tenant, name, node)]["entered"] = count

    messages = (
        OutboundMessage.select(*group, OutboundMessage.node, OutboundMessage.status,
                               fn.COUNT(OutboundMessage.id))
        .join(Enrollment).join(Plan)
        .where(Plan.id.in_(plan_ids),
               OutboundMessage.status.in_([OutboundMessage.SENT, OutboundMessage.AMBIGUOUS]),
               *_period(fn.COALESCE(OutboundMessage.sent_at, OutboundMessage.created_at),
                        since, until))
        .group_by(*group, OutboundMessage.node, OutboundMessage.status)
    )
    for tenant, name, node, status, count in messages.tuples():
        column = "sent" if status == OutboundMessage.SENT else "ambiguous"
        counts[(tenant, name, node)][column] = count

    events = (
        MessageEvent.select(*group, OutboundMessage.node, MessageEvent.type,
                            fn.COUNT(fn.DISTINCT(MessageEvent.message)))
        .join(OutboundMessage).join(Enrollment).join(Plan)
        # Opens and clicks as plans count them: no machine opens (unless the settings
        # say so), no clicks on our own unsubscribe link.
        .where(Plan.id.in_(plan_ids), MessageEvent.type.in_(EVENT_COLUMNS),
               ~uncounted_events(), *_period(MessageEvent.occurred_at, since, until))
        .group_by(*group, OutboundMessage.node, MessageEvent.type)
    )
    for tenant, name, node, event_type, count in events.tuples():
        counts[(tenant, name, node)][event_type] = count

    where_they_are = (
        Enrollment.select(*group, Enrollment.current_node, Enrollment.status,
                          fn.COUNT(Enrollment.id))
        .join(Plan)
        .where(Plan.id.in_(plan_ids))
        .group_by(*group, Enrollment.current_node, Enrollment.status)
    )
    for tenant, name, node, status, count in where_they_are.tuples():
        column = {Enrollment.ACTIVE: "active", Enrollment.FAILED: "failed",
                  Enrollment.PAUSED: "paused", Enrollment.CONVERTED: "converted"}.get(status, "exited")
        counts[(tenant, name, node)][column] += count
    return counts


def _counted(plans: peewee.ModelSelect) -> dict[Key, dict[str, int]]:
    """The funnel's columns per (tenant, plan, node) of these plans, from the counts the
    database keeps in the transaction of each change (store/counters.py): no scan of
    visits, messages or events, whatever their number. All time: a count has no date."""
    counts: dict[Key, dict[str, int]] = defaultdict(lambda: dict.fromkeys(FUNNEL_COLUMNS, 0))
    plan_keys = {plan.id: (plan.tenant_id, plan.name) for plan in plans}
    opened = ANY_OPEN if get_settings().machine_opens_are_engagement else EventType.OPENED
    columns = {ENTERED: "entered", f"{MESSAGE_STATUS}{OutboundMessage.SENT}": "sent",
               f"{MESSAGE_STATUS}{OutboundMessage.AMBIGUOUS}": "ambiguous", opened: "opened",
               **{event: event for event in EVENT_COLUMNS if event != EventType.OPENED}}
    statuses = {Enrollment.ACTIVE: "active", Enrollment.FAILED: "failed",
                Enrollment.PAUSED: "paused", Enrollment.CONVERTED: "converted"}
    for (plan_id, node, name), count in stored_counts(database_proxy.obj, list(plan_keys)).items():
        if not count:  # a status every contact has left: no row of its own, as before
            continue
        if name.startswith(ENROLLMENT_STATUS):
            column = statuses.get(name[len(ENROLLMENT_STATUS):], "exited")
        else:
            column = columns.get(name)
        if column is not None:
            counts[(*plan_keys[plan_id], node)][column] += count
    return counts


def _node_order(plans) -> dict[Key, int]:
    order: dict[Key, int] = {}
    for plan in plans:
        for index, node in enumerate(plan.definition.get("nodes", {})):
            order.setdefault((plan.tenant_id, plan.name, node), index)
    return order


def failures(*, plan_name: str | None = None, tenant_id: str | None = None,
             limit: int = 50, offset: int = 0,
             tenant_ids: list[str] | None = None) -> list[dict]:
    """The enrollments that ended in failure, newest first, each with why: the error of
    its failed send (SendGrid's answer, a sender that is not verified, an unconfirmed
    ambiguous send), or why its email could not be rendered. ``offset`` skips the
    newest ones (the next page)."""
    query = (
        _failed(Enrollment.select(Enrollment.id, Enrollment.updated_at, Enrollment.tenant,
                                  Plan.name, Enrollment.current_node, Contact.email)
                .join(Plan).switch(Enrollment).join(Contact), plan_name, tenant_id)
        .order_by(Enrollment.updated_at.desc(), Enrollment.id.desc())
        .limit(limit).offset(offset)
    )
    if tenant_ids is not None:
        query = query.where(Enrollment.tenant.in_(tenant_ids))
    rows = list(query.tuples())
    ids = [row[0] for row in rows]
    reasons: dict[int, str] = {}
    # An enrollment fails once: by its send, or by its render (the action's result).
    for enrollment_id, error in (
        OutboundMessage.select(OutboundMessage.enrollment, OutboundMessage.error)
        .where(OutboundMessage.enrollment.in_(ids), OutboundMessage.status == OutboundMessage.FAILED)
        .tuples()
    ):
        reasons[enrollment_id] = error or ""
    for enrollment_id, result in (
        ScheduledAction.select(ScheduledAction.enrollment, ScheduledAction.result)
        .where(ScheduledAction.enrollment.in_(ids), ScheduledAction.status == ScheduledAction.FAILED)
        .tuples()
    ):
        reasons.setdefault(enrollment_id, result or "")
    return [
        {"at": at.isoformat(sep=" ", timespec="seconds"), "tenant": tenant, "plan": plan,
         "node": node, "contact": email, "reason": reasons.get(enrollment_id, "")}
        for enrollment_id, at, tenant, plan, node, email in rows
    ]


def goals(*, plan_name: str | None = None, tenant_id: str | None = None) -> list[dict]:
    """Per plan (all its versions): ``enrolled``, ``converted`` (reached a goal),
    ``conversion_rate``, and per node how many converted after last being there."""
    query = (
        Enrollment.select(Plan.tenant, Plan.name, Enrollment.status, Enrollment.current_node,
                          fn.COUNT(Enrollment.id))
        .join(Plan)
        .group_by(Plan.tenant, Plan.name, Enrollment.status, Enrollment.current_node)
    )
    if plan_name:
        query = query.where(Plan.name == plan_name)
    if tenant_id:
        query = query.where(Plan.tenant == tenant_id)
    plans: dict[tuple[str, str], dict] = {}
    for tenant, name, status, node, count in query.tuples():
        row = plans.setdefault((tenant, name), {"tenant": tenant, "plan": name, "enrolled": 0,
                                                "converted": 0, "nodes": {}})
        row["enrolled"] += count
        if status == Enrollment.CONVERTED:
            row["converted"] += count
            row["nodes"].setdefault(node, {"converted": 0})["converted"] += count
    for row in plans.values():
        row["conversion_rate"] = round(row["converted"] / row["enrolled"], 4) if row["enrolled"] else 0.0
    return [plans[key] for key in sorted(plans)]


def transition_counts(plan_id: int, *, since: datetime | None = None,
                      until: datetime | None = None) -> dict[tuple[str, str, str], int]:
    """How many moves each transition of one plan version made, by (from node, event,
    to node), in the period: each visit joined to the visit before it (a move raises
    the enrollment's version by one). A routing node's moves straight after the
    enrollment have no event (None)."""
    previous = NodeVisit.alias()
    moves = (
        NodeVisit.select(previous.node, NodeVisit.via_event, NodeVisit.node, fn.COUNT(NodeVisit.id))
        .join(Enrollment, on=NodeVisit.enrollment == Enrollment.id)
        .join(previous, on=(previous.enrollment == NodeVisit.enrollment)
              & (previous.version == NodeVisit.version - 1))
        .where(Enrollment.plan == plan_id, *_period(NodeVisit.entered_at, since, until))
        .group_by(previous.node, NodeVisit.via_event, NodeVisit.node)
    )
    return {(source, event, target): count for source, event, target, count in moves.tuples()}


def count_failures(*, plan_name: str | None = None, tenant_id: str | None = None) -> int:
    """How many enrollments ``failures`` would list with no limit."""
    return _failed(Enrollment.select().join(Plan), plan_name, tenant_id).count()


def _failed(query: peewee.ModelSelect, plan_name: str | None,
            tenant_id: str | None) -> peewee.ModelSelect:
    """``query`` (of enrollments joined to their plan) narrowed to failed ones."""
    query = query.where(Enrollment.status == Enrollment.FAILED)
    if plan_name:
        query = query.where(Plan.name == plan_name)
    if tenant_id:
        query = query.where(Enrollment.tenant == tenant_id)
    return query
