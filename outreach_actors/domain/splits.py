"""Split nodes: weighted arms and a holdout, each contact's arm chosen by a stable hash.

A split sends every contact that enters it on at once, to one of its arms (or out of
the plan, for the holdout share). The arm is a function of the contact (tenant and
address), the plan's name and version and the node, never of random state: the same
contact in the same plan version gets the same arm in every process, on every retry
and in the simulation harness (dev.plan_simulation), whatever the order of arrival.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from outreach_actors.domain.store.models import Enrollment


class _Arm(Protocol):
    to: str
    weight: float
    name: str | None


class Node(Protocol):
    """What a split needs of a plan's node (plans.Node; plans imports this module)."""

    arms: list[_Arm] | None
    holdout: float | None


class PlanSpec(Protocol):
    """What a split needs of a parsed plan (plans.PlanSpec)."""

    name: str

    def node(self, name: str) -> Node: ...

#: The route recorded on the visit of a contact the holdout took out of the plan.
HOLDOUT = "holdout"
#: The exit reason of a holdout enrollment.
HOLDOUT_EXIT_REASON = "holdout"
#: The largest holdout, in percent: past half, the test is the holdout's.
MAX_HOLDOUT = 50
#: More arms than this is no experiment anyone reads.
MAX_ARMS = 20
#: The largest weight of an arm (weights are relative: 1 and 3 split as 25 and 75).
MAX_WEIGHT = 1_000_000

# The hash's 64 bits as a number in [0, 1): far finer than any weight a plan gives.
_SCALE = float(2 ** 64)


def arm_names(node: Node) -> list[str]:
    """The route names of a split's arms in order: each arm's ``name``, else its target."""
    return [arm.name or arm.to for arm in node.arms or []]


def assignment_point(tenant_id: str, email: str, plan_name: str, plan_version: int,
                     node_name: str) -> float:
    """Where a contact falls in [0, 1) at one split of one plan version: stable across
    processes (SHA-256 of the names, not Python's salted ``hash``)."""
    key = "\x1f".join([tenant_id, email, plan_name, str(plan_version), node_name])
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def choose_route(point: float, node: Node) -> str:
    """The route of a contact at ``point`` (see assignment_point): HOLDOUT for the first
    ``holdout`` percent, else the arm whose share of the rest holds the point."""
    holdout = (node.holdout or 0) / 100
    if point < holdout:
        return HOLDOUT
    arms = node.arms or []
    scaled = (point - holdout) / (1 - holdout) * sum(arm.weight for arm in arms)
    names = arm_names(node)
    for name, arm in zip(names, arms, strict=True):
        scaled -= arm.weight
        if scaled < 0:
            return name
    return names[-1]  # a rounding error at the very top


def split_routes(plan: PlanSpec, node_name: str,
                 enrollments: Sequence[Enrollment]) -> dict[int, tuple[str, str | None]]:
    """Each enrollment's (route, next node) at the split ``node_name``; the next node is
    None for the holdout. One query reads the contacts' addresses and the plan version."""
    from outreach_actors.domain.store.models import Contact, Enrollment, Plan

    node = plan.node(node_name)
    targets = dict(zip(arm_names(node), [arm.to for arm in node.arms or []], strict=True))
    rows = (Enrollment.select(Enrollment.id, Enrollment.tenant, Contact.email, Plan.version)
            .join(Contact).switch(Enrollment).join(Plan)
            .where(Enrollment.id.in_([enrollment.id for enrollment in enrollments])).tuples())
    routes: dict[int, tuple[str, str | None]] = {}
    for enrollment_id, tenant_id, email, version in rows:
        route = choose_route(assignment_point(tenant_id, email, plan.name, version, node_name), node)
        routes[enrollment_id] = (route, targets.get(route))
    return routes


# --- validation on the raw plan mapping (see plans._graph_errors) -----------------------

def _arms(node: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    arms = node.get("arms")
    return [arm for arm in arms if isinstance(arm, Mapping)] if isinstance(arms, list) else []


def route_targets(node: Mapping[str, Any]) -> list[str]:
    """The nodes a split's arms name (raw mapping; none for other nodes)."""
    return [arm["to"] for arm in _arms(node) if isinstance(arm.get("to"), str)]


def ends_plan(node: Mapping[str, Any]) -> bool:
    """Whether a split takes some contacts out of the plan itself (a holdout)."""
    holdout = node.get("holdout")
    return isinstance(holdout, int | float) and not isinstance(holdout, bool) and holdout > 0


def split_errors(base: str, node: Mapping[str, Any], nodes: Mapping[str, Any]) -> list[str]:
    """What is wrong with one split node's arms, each with its path (``base`` is
    ``nodes.NAME``), beyond what routing.node_errors checks of every routing node; the
    schema reports wrong types and ranges."""
    errors = []
    names = [arm.get("name") or arm.get("to") for arm in _arms(node)]
    for index, arm in enumerate(_arms(node)):
        target = arm.get("to")
        if isinstance(target, str) and target not in nodes:
            errors.append(f"{base}.arms[{index}].to: node {target!r} does not exist")
        name = names[index]
        if isinstance(name, str) and names.index(name) < index:
            errors.append(f"{base}.arms[{index}]: a second arm named {name!r}; give each arm "
                          "its own `name` (arms are told apart by name, else by target)")
        if name == HOLDOUT:
            errors.append(f"{base}.arms[{index}]: {HOLDOUT!r} names the holdout; "
                          "name the arm otherwise")
    return errors
