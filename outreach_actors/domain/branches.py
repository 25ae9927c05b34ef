"""Branch nodes: route each contact on its fields and the event that brought it, by
the first of an ordered list of conditions that holds, else to the default.

A branch sends every contact that enters it on at once. Its conditions are the plan
condition language (``conditions.py``), compiled when the plan is validated; each
reads ``contact`` (the contact's fields, with ``email``) and ``event``, the event that
brought the contact to the branch:

- a host event (``track``): its properties, as a transition's condition sees them;
- a SendGrid or synthetic event: ``event.type`` (``clicked``, ``no_open``...) and the
  fields the normalized event keeps (``url`` and ``user_agent`` of a click, ``reason``
  of a bounce, ``categories``...; see providers/sendgrid/events.DATA_FIELDS);
- none (a branch the contact enters on enrollment, or right after a split): ``{}``.

A condition that fails while running (a missing field compared with ``>``, text
compared with a number) sends the contact to the default, whatever the branches after
it say: the data the branch was written for is not there. It is logged with the
enrollment id; the engine never raises on a tenant's data.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from outreach_actors.domain.conditions import ConditionError, compile_condition, evaluate

if TYPE_CHECKING:
    from outreach_actors.domain.store.models import Enrollment

logger = logging.getLogger(__name__)

#: The route recorded on the visit of a contact no condition took.
DEFAULT = "default"
#: More branches than this is a lookup table, not a plan.
MAX_BRANCHES = 50


class _Branch(Protocol):
    if_: str
    to: str


class Node(Protocol):
    """What a branch needs of a plan's node (plans.Node; plans imports this module)."""

    branches: list[_Branch] | None
    default: str | None


class PlanSpec(Protocol):
    """What a branch needs of a parsed plan (plans.PlanSpec)."""

    def node(self, name: str) -> Node: ...


def event_view(event_type: str, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a branch condition sees as ``event`` for a SendGrid or synthetic event: the
    normalized event's data (``url`` of a click...) and its ``type``."""
    return {**(data or {}), "type": event_type}


def choose_branch(node: Node, node_name: str, *, event: Mapping[str, Any],
                  contact: Mapping[str, Any], enrollment_id: int) -> tuple[str, str]:
    """The (route, next node) of one contact at the branch ``node_name``: the first
    branch whose condition holds (route: its target), else the default; a condition
    that fails takes the default, logged with the enrollment id."""
    failures: list[str] = []
    for index, branch in enumerate(node.branches or []):
        condition = compile_condition(branch.if_, f"nodes.{node_name}.branches[{index}].if")
        if evaluate(condition, event=event, contact=contact, report=failures.append):
            return branch.to, branch.to
        if failures:
            logger.warning("Branch node=%s enrollment=%s takes the default: %s",
                           node_name, enrollment_id, failures[0])
            break
    return DEFAULT, node.default  # validation requires one


def branch_routes(plan: PlanSpec, node_name: str, enrollments: Sequence[Enrollment],
                  events: Mapping[int, Mapping[str, Any]]) -> dict[int, tuple[str, str | None]]:
    """Each enrollment's (route, next node) at the branch ``node_name``; ``events`` is
    what each one's conditions see as ``event``. One query reads the contacts' fields."""
    from outreach_actors.domain.store.models import Contact, Enrollment

    node = plan.node(node_name)
    rows = (Enrollment.select(Enrollment.id, Contact.email, Contact.fields).join(Contact)
            .where(Enrollment.id.in_([enrollment.id for enrollment in enrollments])).tuples())
    return {
        enrollment_id: choose_branch(node, node_name, event=events.get(enrollment_id, {}),
                                     contact={**(fields or {}), "email": email},
                                     enrollment_id=enrollment_id)
        for enrollment_id, email, fields in rows
    }


# --- validation on the raw plan mapping (see routing.ROUTING_TYPES) ---------------------

def _branches(node: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    branches = node.get("branches")
    return [b for b in branches if isinstance(b, Mapping)] if isinstance(branches, list) else []


def route_targets(node: Mapping[str, Any]) -> list[str]:
    """The nodes a branch node's branches and default name (raw mapping)."""
    targets = [branch["to"] for branch in _branches(node) if isinstance(branch.get("to"), str)]
    default = node.get("default")
    return [*targets, default] if isinstance(default, str) else targets


def ends_plan(node: Mapping[str, Any]) -> bool:
    """A branch never takes a contact out of the plan itself."""
    return False


def branch_errors(base: str, node: Mapping[str, Any], nodes: Mapping[str, Any]) -> list[str]:
    """What is wrong with one branch node's default and branches, conditions compiled,
    each with its path (``base`` is ``nodes.NAME``), beyond what routing.node_errors
    checks of every routing node; the schema reports wrong types."""
    errors = []
    default = node.get("default")
    if default is None:
        errors.append(f"{base}.default: a branch node needs a default: the node of a "
                      "contact no condition takes")
    elif isinstance(default, str) and default not in nodes:
        errors.append(f"{base}.default: node {default!r} does not exist")
    for index, branch in enumerate(_branches(node)):
        target = branch.get("to")
        if isinstance(target, str) and target not in nodes:
            errors.append(f"{base}.branches[{index}].to: node {target!r} does not exist")
        if isinstance(branch.get("if"), str):  # the schema reports a missing or wrong one
            try:
                compile_condition(branch["if"], f"{base}.branches[{index}].if")
            except ConditionError as exc:
                errors.append(str(exc))
    return errors
