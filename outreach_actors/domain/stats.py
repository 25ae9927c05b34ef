"""The funnel: how many enrollments reached each node, what their emails met, and
what needs an operator's eye (contacts still there, failures, unresolved sends)."""

from __future__ import annotations

from collections import defaultdict

import peewee

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
# node that no provider event has confirmed yet (see README, "Guarantees").
FUNNEL_COLUMNS = ["entered", "active", "sent", "delivered", "opened", "clicked", "bounced",
                  "no_open", "no_click", "exited", "failed", "ambiguous"]
EVENT_COLUMNS = ["delivered", "opened", "clicked", "bounced", "no_open", "no_click"]

Key = tuple[str, str, str]  # tenant, plan, node


def funnel(*, plan_name: str | None = None, tenant_id: str | None = None) -> list[dict]:
    """One row per (tenant, plan, node) in plan order; event columns count distinct
    messages. Plans of the same name in two tenants are two funnels."""
    plans = Plan.select()
    if plan_name:
        plans = plans.where(Plan.name == plan_name)
    if tenant_id:
        plans = plans.where(Plan.tenant == tenant_id)
    if not plans.exists():
        return []
    counts = _counted(plans)
    order = _node_order(plans)
    rows = [{"tenant": tenant, "plan": name, "node": node, **values}
            for (tenant, name, node), values in counts.items()]
    return sorted(rows, key=lambda row: (
        row["tenant"], row["plan"], order.get((row["tenant"], row["plan"], row["node"]), 999)))


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
    statuses = {Enrollment.ACTIVE: "active", Enrollment.FAILED: "failed"}
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
             limit: int = 50, offset: int = 0) -> list[dict]:
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
