"""The funnel: how many enrollments reached each node, what their emails met, and
what needs an operator's eye (contacts still there, failures, unresolved sends)."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime

import peewee

from outreach_actors.domain.store.counters import (
    ANY_OPEN,
    ENROLLMENT_STATUS,
    ENTERED,
    MESSAGE_STATUS,
    edge_of,
    period_counts,
)
from outreach_actors.domain.store.counters import counts as stored_counts
from outreach_actors.domain.store.models import (
    Contact,
    Enrollment,
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
    plan version only; ``since``/``until`` (naive UTC): visits, sends and events of
    [since, until) only, an email's event type counted in the period of its earliest
    copy (active, exited and failed count contacts where they are now)."""
    plans = Plan.select()
    if plan_name:
        plans = plans.where(Plan.name == plan_name)
    if tenant_id:
        plans = plans.where(Plan.tenant == tenant_id)
    if version is not None:
        plans = plans.where(Plan.version == version)
    if not plans.exists():
        return []
    counts = _counted(plans, since, until)
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


def _counted(plans: peewee.ModelSelect, since: datetime | None,
             until: datetime | None) -> dict[Key, dict[str, int]]:
    """The funnel's columns per (tenant, plan, node) of these plans, from the counts the
    database keeps in the transaction of each change (store/counters.py): no scan of
    visits, messages or events, whatever their number. With a period, its visits, sends
    and events (each email's event type on the day of its earliest copy) by day, and
    where contacts are now."""
    counts: dict[Key, dict[str, int]] = defaultdict(lambda: dict.fromkeys(FUNNEL_COLUMNS, 0))
    plan_keys = {plan.id: (plan.tenant_id, plan.name) for plan in plans}
    opened = ANY_OPEN if get_settings().machine_opens_are_engagement else EventType.OPENED
    columns = {ENTERED: "entered", f"{MESSAGE_STATUS}{OutboundMessage.SENT}": "sent",
               f"{MESSAGE_STATUS}{OutboundMessage.AMBIGUOUS}": "ambiguous", opened: "opened",
               **{event: event for event in EVENT_COLUMNS if event != EventType.OPENED}}
    statuses = {Enrollment.ACTIVE: "active", Enrollment.FAILED: "failed",
                Enrollment.PAUSED: "paused", Enrollment.CONVERTED: "converted"}
    for (plan_id, node, name), count in _stored(list(plan_keys), since, until).items():
        if not count:  # a status every contact has left: no row of its own, as before
            continue
        if name.startswith(ENROLLMENT_STATUS):
            column = statuses.get(name[len(ENROLLMENT_STATUS):], "exited")
        else:
            column = columns.get(name)
        if column is not None:
            counts[(*plan_keys[plan_id], node)][column] += count
    return counts


def _stored(plan_ids: list[int], since: datetime | None,
            until: datetime | None) -> dict[tuple[int, str, str], int]:
    """The stored counts of these plan versions: all time, or the period's with the
    enrollments' statuses of now."""
    database = database_proxy.obj
    everything = stored_counts(database, plan_ids)
    if since is None and until is None:
        return everything
    return {**period_counts(database, plan_ids, since, until),
            **{key: count for key, count in everything.items()
               if key[2].startswith(ENROLLMENT_STATUS)}}


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
    ``conversion_rate``, and per node how many converted after last being there. From
    the counts of enrollments by node and status the database keeps (store/counters.py):
    no scan of the enrollments, whatever their number."""
    versions = Plan.select(Plan.id, Plan.tenant, Plan.name)
    if plan_name:
        versions = versions.where(Plan.name == plan_name)
    if tenant_id:
        versions = versions.where(Plan.tenant == tenant_id)
    plan_keys = {plan.id: (plan.tenant_id, plan.name) for plan in versions}
    plans: dict[tuple[str, str], dict] = {}
    for (plan_id, node, counted), count in sorted(
            stored_counts(database_proxy.obj, list(plan_keys)).items()):
        if count <= 0 or not counted.startswith(ENROLLMENT_STATUS):
            continue
        (tenant, name), status = plan_keys[plan_id], counted[len(ENROLLMENT_STATUS):]
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
    to node), in the period (by the day and time of each move), from the edge counts
    the database keeps (store/counters.py). A routing node's moves straight after the
    enrollment have no event (None)."""
    moves = {}
    for (_, target, name), count in _stored([plan_id], since, until).items():
        if count and (edge := edge_of(name)) is not None:
            moves[(edge[0], edge[1], target)] = count
    return moves


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
