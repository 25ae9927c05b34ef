"""Experiment results: each split's arms side by side, with honest statistics.

For every split node of a plan, each arm (and the holdout) gets the number of
contacts that entered it and, of those, how many were sent an email after the split,
had one delivered, opened, clicked (and replied, where the engine knows replies) and,
for a plan with goals, converted (the holdout's too), each as a rate. Every rate of an
arm is compared with the first arm's: a two-proportion test's p-value and a 95%
interval on the difference of the rates.
The unit is the contact (the enrollment), not the email: contacts are independent,
emails of one contact are not.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from peewee import chunked, fn

# scipy, not statsmodels: statsmodels has these tests ready-made but pulls in pandas
# and patsy; scipy alone gives the chi-square test of a 2x2 table (the two-proportion
# z-test, squared) and Wilson intervals, from which Newcombe's interval follows.
from scipy.stats import binomtest, chi2_contingency

from outreach_actors.domain.engagement import uncounted_events
from outreach_actors.domain.splits import HOLDOUT, arm_names
from outreach_actors.domain.store.models import (
    Enrollment,
    MessageEvent,
    NodeVisit,
    OutboundMessage,
    Plan,
)
from outreach_actors.domain.stored_plans import plan_for
from outreach_actors.domain.vocabulary import EventType

#: The provider events counted per arm, in this order: each one only if the event
#: vocabulary has it (``replied`` comes with inbound replies).
EXPERIMENT_EVENTS = [name for name in ("delivered", "opened", "clicked", "replied")
                     if name in vars(EventType).values()]
#: The confidence of the intervals on the differences.
CONFIDENCE = 0.95
# Ids per IN (...): SQLite takes at most 32,766 parameters a statement.
_CHUNK = 1000


def converted_enrollments(enrollment_ids: Collection[int]) -> set[int]:
    """Of these enrollments, those that reached one of the plan's goals (converted),
    the holdout's included: a goal converts a holdout enrollment too (goals.py)."""
    converted: set[int] = set()
    for chunk in chunked(sorted(enrollment_ids), _CHUNK):
        converted.update(enrollment_id for (enrollment_id,) in Enrollment.select(Enrollment.id)
                         .where(Enrollment.id.in_(chunk),
                                Enrollment.status == Enrollment.CONVERTED).tuples())
    return converted


@dataclass(frozen=True)
class Comparison:
    """One rate of an arm against the same rate of the first arm."""

    difference: float  # this arm's rate minus the first arm's
    low: float
    high: float
    p_value: float

    def as_dict(self) -> dict[str, float]:
        return {"difference": self.difference, "ci_low": self.low, "ci_high": self.high,
                "p_value": self.p_value}


def compare_proportions(successes: int, total: int, reference_successes: int,
                        reference_total: int) -> Comparison | None:
    """``successes/total`` against ``reference_successes/reference_total``: the p-value
    of the two-sided pooled two-proportion z-test and Newcombe's hybrid score interval
    (Newcombe 1998, method 10) on the difference; None when a side has no contacts."""
    if total == 0 or reference_total == 0:
        return None
    rate, reference = successes / total, reference_successes / reference_total
    both = successes + reference_successes
    if both in (0, total + reference_total):
        p_value = 1.0  # every contact alike on both sides: nothing to test
    else:
        # Without Yates's correction, the chi-square test of the 2x2 table is the z-test.
        table = [[successes, total - successes],
                 [reference_successes, reference_total - reference_successes]]
        p_value = float(chi2_contingency(table, correction=False).pvalue)
    low_a, high_a = _wilson(successes, total)
    low_r, high_r = _wilson(reference_successes, reference_total)
    difference = rate - reference
    return Comparison(
        difference=difference,
        low=difference - math.hypot(rate - low_a, high_r - reference),
        high=difference + math.hypot(high_a - rate, reference - low_r),
        p_value=p_value,
    )


def _wilson(successes: int, total: int) -> tuple[float, float]:
    interval = binomtest(successes, total).proportion_ci(CONFIDENCE, method="wilson")
    return interval.low, interval.high


def experiment_results(*, plan_name: str | None = None,
                       tenant_id: str | None = None) -> list[dict[str, Any]]:
    """One entry per (tenant, plan, split node): its arms in the plan's order, then the
    holdout; each with ``entered``, ``counts`` and ``rates`` by column, and
    ``versus_first`` (a Comparison per column) for every arm after the first."""
    plans = Plan.select()
    if plan_name:
        plans = plans.where(Plan.name == plan_name)
    if tenant_id:
        plans = plans.where(Plan.tenant == tenant_id)
    splits: dict[tuple[str, str, str], list[str]] = {}
    with_goals: set[tuple[str, str]] = set()  # (tenant, plan): a version has goals
    for row in plans.order_by(Plan.version):
        plan = plan_for(row)
        if plan.goals:
            with_goals.add((row.tenant_id, row.name))
        for node_name, node in plan.nodes.items():
            if node.type == "split":
                names = splits.setdefault((row.tenant_id, row.name, node_name), [])
                names += [name for name in arm_names(node) if name not in names]
    results = []
    for (tenant, name, node), arms in sorted(splits.items()):
        members = _arm_members(tenant, name, node)
        arms = [*arms, *sorted(set(members) - set(arms) - {HOLDOUT})]
        if HOLDOUT in members:
            arms.append(HOLDOUT)
        columns = experiment_columns(goals=(tenant, name) in with_goals)
        results.append({"tenant": tenant, "plan": name, "node": node,
                        "columns": columns, "arms": _arm_rows(arms, members, columns)})
    return results


def experiment_columns(*, goals: bool) -> list[str]:
    """The counted columns, in order: sent, the provider events, and converted for a
    plan with goals (without, nobody converts: a column of zeros)."""
    return ["sent", *EXPERIMENT_EVENTS, *(["converted"] if goals else [])]


def _arm_members(tenant: str, plan_name: str, node: str) -> dict[str, dict[int, Any]]:
    """Each route's enrollments at the split, with when each (first) entered it."""
    members: dict[str, dict[int, Any]] = defaultdict(dict)
    for route, enrollment_id, entered_at in (
        NodeVisit.select(NodeVisit.route, NodeVisit.enrollment, fn.MIN(NodeVisit.entered_at))
        .join(Enrollment).join(Plan)
        .where(Plan.tenant == tenant, Plan.name == plan_name, NodeVisit.node == node,
               NodeVisit.route.is_null(False))
        .group_by(NodeVisit.route, NodeVisit.enrollment).tuples()
    ):
        members[route][enrollment_id] = entered_at
    return members


def _arm_rows(arms: list[str], members: dict[str, dict[int, Any]],
              columns: list[str]) -> list[dict[str, Any]]:
    counts = {arm: _counts(members.get(arm, {}), columns) for arm in arms}
    rows = []
    reference = arms[0] if arms and arms[0] != HOLDOUT else None
    for arm in arms:
        entered = len(members.get(arm, {}))
        row = {"arm": arm, "entered": entered, "counts": counts[arm],
               "rates": {c: (counts[arm][c] / entered if entered else None) for c in columns}}
        if reference is not None and arm != reference:
            # The holdout is mailed nothing: only its conversions compare.
            compared = ["converted"] if arm == HOLDOUT else columns
            row["versus_first"] = {
                column: comparison.as_dict() for column in compared if column in columns
                and (comparison := compare_proportions(
                    counts[arm][column], entered, counts[reference][column],
                    len(members.get(reference, {})))) is not None}
        rows.append(row)
    return rows


def _counts(entered: dict[int, Any], columns: list[str]) -> dict[str, int]:
    """Of the enrollments (id -> when they entered the split), how many reached each
    column: an email sent after the split, an event of such an email, a conversion."""
    counts = dict.fromkeys(columns, 0)
    if not entered:
        return counts
    ids = sorted(entered)
    reached: dict[str, set[int]] = defaultdict(set)
    messages: dict[str, int] = {}
    for chunk in chunked(ids, _CHUNK):
        for message_id, enrollment_id, created_at in (
            OutboundMessage.select(OutboundMessage.id, OutboundMessage.enrollment,
                                   OutboundMessage.created_at)
            .where(OutboundMessage.enrollment.in_(chunk),
                   OutboundMessage.status == OutboundMessage.SENT)
            .tuples()
        ):
            if created_at >= entered[enrollment_id]:
                messages[message_id] = enrollment_id
                reached["sent"].add(enrollment_id)
    for chunk in chunked(sorted(messages), _CHUNK) if EXPERIMENT_EVENTS else ():
        for message_id, event_type in (
            MessageEvent.select(MessageEvent.message, MessageEvent.type)
            .where(MessageEvent.message.in_(chunk),
                   MessageEvent.type.in_(EXPERIMENT_EVENTS), ~uncounted_events())
            .distinct().tuples()
        ):
            reached[event_type].add(messages[message_id])
    if "converted" in columns:
        reached["converted"] = converted_enrollments(ids)
    return {column: len(reached[column]) for column in columns}
