"""The funnel: how many enrollments reached each node and what their emails met."""

from __future__ import annotations

from collections import defaultdict

from peewee import fn

from .models import Enrollment, MessageEvent, NodeVisit, OutboundMessage, Plan

FUNNEL_COLUMNS = ["entered", "sent", "delivered", "opened", "clicked", "bounced", "no_open",
                  "no_click", "exited"]
EVENT_COLUMNS = ["delivered", "opened", "clicked", "bounced", "no_open", "no_click"]


def funnel(*, plan_name: str | None = None, tenant_id: str | None = None) -> list[dict]:
    """One row per (plan, node) in plan order; event columns count distinct messages."""
    plans = Plan.select()
    if plan_name:
        plans = plans.where(Plan.name == plan_name)
    if tenant_id:
        plans = plans.where(Plan.tenant == tenant_id)
    plan_ids = [p.id for p in plans]
    if not plan_ids:
        return []
    counts: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(FUNNEL_COLUMNS, 0))

    entered = (
        NodeVisit.select(Plan.name, NodeVisit.node, fn.COUNT(NodeVisit.id))
        .join(Enrollment).join(Plan)
        .where(Plan.id.in_(plan_ids)).group_by(Plan.name, NodeVisit.node)
    )
    for name, node, count in entered.tuples():
        counts[(name, node)]["entered"] = count

    sent = (
        OutboundMessage.select(Plan.name, OutboundMessage.node, fn.COUNT(OutboundMessage.id))
        .join(Enrollment).join(Plan)
        .where(Plan.id.in_(plan_ids), OutboundMessage.status == OutboundMessage.SENT)
        .group_by(Plan.name, OutboundMessage.node)
    )
    for name, node, count in sent.tuples():
        counts[(name, node)]["sent"] = count

    events = (
        MessageEvent.select(Plan.name, OutboundMessage.node, MessageEvent.type,
                            fn.COUNT(fn.DISTINCT(MessageEvent.message)))
        .join(OutboundMessage).join(Enrollment).join(Plan)
        .where(Plan.id.in_(plan_ids), MessageEvent.type.in_(EVENT_COLUMNS))
        .group_by(Plan.name, OutboundMessage.node, MessageEvent.type)
    )
    for name, node, event_type, count in events.tuples():
        counts[(name, node)][event_type] = count

    exited = (
        Enrollment.select(Plan.name, Enrollment.current_node, fn.COUNT(Enrollment.id))
        .join(Plan)
        .where(Plan.id.in_(plan_ids), Enrollment.status != Enrollment.ACTIVE)
        .group_by(Plan.name, Enrollment.current_node)
    )
    for name, node, count in exited.tuples():
        counts[(name, node)]["exited"] = count

    order = _node_order(plans)
    rows = [{"plan": name, "node": node, **values} for (name, node), values in counts.items()]
    return sorted(rows, key=lambda row: (row["plan"], order.get((row["plan"], row["node"]), 999)))


def _node_order(plans) -> dict[tuple[str, str], int]:
    order: dict[tuple[str, str], int] = {}
    for plan in plans:
        for index, node in enumerate(plan.definition.get("nodes", {})):
            order.setdefault((plan.name, node), index)
    return order
