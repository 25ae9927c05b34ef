"""Plan migration: move enrollments in flight to another version of their plan.

Each live enrollment goes to the node of the same name in the target version, or to
the one ``mapping`` names; a node with contacts that exists in neither is refused
before anything moves. A migrated enrollment keeps its visit (the actions and
messages of the node it is at move with it, so a click on the email it was sent
still counts) and its timers are computed again from the new node's transitions,
from their original origin: the send time of the node's email, or the moment it
entered a wait node. A send not made yet stays as it is. Each move is version-guarded,
so a migration racing an event or a timer moves the enrollment once, from where the
winner left it.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

import peewee

from outreach_actors.domain import engine, notifications
from outreach_actors.domain.plans import PlanSpec
from outreach_actors.domain.store.keys import action_key
from outreach_actors.domain.store.models import (
    Enrollment,
    OutboundMessage,
    Plan,
    ScheduledAction,
    database_proxy,
    insert_rows,
    utcnow,
)
from outreach_actors.domain.stored_plans import plan_for, plan_for_id
from outreach_actors.domain.windows import next_send_time

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 5


class MigrationError(ValueError):
    """A migration that cannot be made as asked; ``problems`` lists every reason. Nothing moved."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("cannot migrate:\n" + "\n".join(f"  {problem}" for problem in problems))


@dataclass
class Migration:
    """What a migration moves: enrollments by (from version, from node, to node)."""

    plan: str
    to_version: int
    moves: Counter = field(default_factory=Counter)
    moved: int = 0  # applied: how many moved (the rest had ended or moved meanwhile)

    @property
    def total(self) -> int:
        return sum(self.moves.values())


def migrate(tenant_id: str, plan_name: str, to_version: int, *,
            mapping: Mapping[str, str] | None = None, apply: bool = False,
            now: datetime | None = None) -> Migration:
    """Count (a dry run) or make the migration; MigrationError listing every problem."""
    mapping = dict(mapping or {})
    target_row = Plan.get_or_none(Plan.tenant == tenant_id, Plan.name == plan_name,
                                  Plan.version == to_version)
    if target_row is None:
        versions = [v for (v,) in Plan.select(Plan.version).where(
            Plan.tenant == tenant_id, Plan.name == plan_name).order_by(Plan.version).tuples()]
        raise MigrationError([f"tenant {tenant_id!r} has no version {to_version} of plan "
                              f"{plan_name!r} (versions: {versions or 'none'})"])
    target = plan_for(target_row)
    problems = [f"--map {old}={new}: version {to_version} has no node {new!r}"
                for old, new in mapping.items() if new not in target.nodes]
    enrollments = _in_flight(tenant_id, plan_name, target_row.id)
    sources = {row.plan_id for row in enrollments}
    old_nodes = {name for plan_id in sources for name in plan_for_id(plan_id).nodes}
    problems += [f"--map {old}={new}: no earlier version in flight has a node {old!r}"
                 for old, new in mapping.items() if old not in old_nodes]
    result = Migration(plan_name, to_version)
    versions = dict(Plan.select(Plan.id, Plan.version).where(Plan.id.in_(sorted(sources))).tuples()) \
        if sources else {}
    for enrollment in enrollments:
        to_node = mapping.get(enrollment.current_node, enrollment.current_node)
        result.moves[(versions[enrollment.plan_id], enrollment.current_node, to_node)] += 1
    problems += sorted({
        f"node {from_node!r} (version {version}, {count} contact(s)) does not exist in version "
        f"{to_version}; map it with --map {from_node}=NODE"
        for (version, from_node, to_node), count in result.moves.items()
        if to_node not in target.nodes and from_node not in mapping})
    if problems:
        raise MigrationError(problems)
    if apply:
        now = now or utcnow()
        for enrollment in enrollments:
            result.moved += _migrate_one(enrollment, target_row.id, target, mapping, now)
        logger.info("Migrated %d enrollment(s) of plan=%s tenant=%s to version=%d",
                    result.moved, plan_name, tenant_id, to_version)
    return result


def _in_flight(tenant_id: str, plan_name: str, target_id: int) -> list[Enrollment]:
    return list(Enrollment.select(Enrollment.id, Enrollment.plan, Enrollment.version,
                                  Enrollment.status, Enrollment.current_node,
                                  Enrollment.node_entered_at, Enrollment.contact)
                .join(Plan).where(Enrollment.tenant == tenant_id, Plan.name == plan_name,
                                  Enrollment.plan != target_id, Enrollment.status.in_(Enrollment.LIVE))
                .order_by(Enrollment.id))


def _migrate_one(enrollment: Enrollment, target_id: int, target: PlanSpec,
                 mapping: Mapping[str, str], now: datetime) -> int:
    """Move one enrollment, re-read until its version holds; 1 if it moved."""
    for _ in range(MAX_ATTEMPTS):
        to_node = mapping.get(enrollment.current_node, enrollment.current_node)
        if to_node not in target.nodes:
            return 0  # it moved meanwhile to a node the migration was not asked about
        with database_proxy.atomic():
            won = Enrollment.update(plan=target_id, current_node=to_node,
                                    version=Enrollment.version + 1, updated_at=now).where(
                peewee.Tuple(Enrollment.id, Enrollment.version) == (enrollment.id, enrollment.version),
                Enrollment.status.in_(Enrollment.LIVE)).execute()
            if won:
                _rehome(enrollment, to_node, target, now)
                return 1
        enrollment = Enrollment.get_or_none(Enrollment.id == enrollment.id,
                                            Enrollment.status.in_(Enrollment.LIVE))
        if enrollment is None or enrollment.plan_id == target_id:
            return 0
    return 0


def _rehome(enrollment: Enrollment, to_node: str, target: PlanSpec, now: datetime) -> None:
    """The visit's actions and messages follow the enrollment to ``to_node`` at its new
    version; its timers are computed again from their original origin."""
    old_node, old_version, version = enrollment.current_node, enrollment.version, enrollment.version + 1
    visit = (ScheduledAction.enrollment == enrollment.id) & (ScheduledAction.node == old_node) & (
        ScheduledAction.visit_version == old_version)
    open_statuses = [ScheduledAction.PENDING, ScheduledAction.ENQUEUED, ScheduledAction.HELD]
    ScheduledAction.update(status=ScheduledAction.CANCELLED, finished_at=now).where(
        visit, ScheduledAction.kind == ScheduledAction.TIMEOUT,
        ScheduledAction.status.in_(open_statuses)).execute()
    sends = [send_id for (send_id,) in ScheduledAction.select(ScheduledAction.id)
             .where(visit, ScheduledAction.kind == ScheduledAction.SEND).tuples()]
    # Only the sends follow: the timers just cancelled stay in the visit they belonged to.
    ScheduledAction.update(node=to_node, visit_version=version).where(
        ScheduledAction.id.in_(sends)).execute()
    OutboundMessage.update(node=to_node).where(OutboundMessage.action.in_(sends)).execute()
    node = target.node(to_node)
    status = ScheduledAction.HELD if enrollment.status == Enrollment.PAUSED else ScheduledAction.PENDING
    rows = []
    if node.type == "email":
        sent = (OutboundMessage.select(OutboundMessage.id, OutboundMessage.sent_at)
                .where(OutboundMessage.action.in_(sends),
                       OutboundMessage.status == OutboundMessage.SENT).first())
        if sent is not None:
            rows = [{"kind": ScheduledAction.TIMEOUT, "event": t.on, "message": sent.id,
                     "run_at": sent.sent_at + engine.timeout_duration(t.on, t.after)}
                    for t in target.timeout_transitions(to_node)]
        elif not sends:  # it comes from a wait node: its email is still to send
            rows = [{"kind": ScheduledAction.SEND, "event": None,
                     "run_at": next_send_time(now, target.send_window, None)}]
    elif node.type == "wait":
        rows = [{"kind": ScheduledAction.TIMEOUT, "event": t.on,
                 "run_at": enrollment.node_entered_at + engine.timeout_duration(t.on, t.after)}
                for t in target.timeout_transitions(to_node)]
    else:
        Enrollment.update(status=Enrollment.COMPLETED).where(Enrollment.id == enrollment.id).execute()
        notifications.record(notifications.EXITED, [enrollment.id], reason="completed", now=now)
    insert_rows(ScheduledAction, [
        {**row, "enrollment": enrollment.id, "node": to_node, "visit_version": version,
         "status": status, "dedupe_key": action_key(row["kind"], enrollment.id, to_node,
                                                   row["event"], version)}
        for row in rows], ignore_conflicts=True)
