"""What a plan does with host events: the checks of ``events:``, ``goals:`` and
conditional transitions, and the choice of the transition or goal an event takes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar

from outreach_actors.domain.conditions import ConditionError, compile_condition, evaluate
from outreach_actors.domain.vocabulary import TIMEOUT_EVENTS, host_event_name_problem


class Guarded(Protocol):
    """A plan's transition or goal: taken on an event, if its condition holds."""

    on: str
    if_: str | None


G = TypeVar("G", bound=Guarded)


def host_event_errors(events: Sequence[str], transitions: Mapping[str, Sequence[Guarded]],
                      goals: Sequence[Guarded]) -> list[str]:
    """Every fault of a plan's host ``events``, its nodes' ``transitions`` (by node
    name) and ``goals`` and their conditions, with its path."""
    errors: list[str] = []
    seen: set[str] = set()
    for index, name in enumerate(events):
        if (problem := host_event_name_problem(name)) is not None:
            errors.append(f"events[{index}]: {problem}")
        elif name in seen:
            errors.append(f"events[{index}]: {name!r} is declared twice")
        seen.add(name)
    for node_name, node_transitions in transitions.items():
        unconditional: dict[str, int] = {}
        for index, transition in enumerate(node_transitions):
            path = f"nodes.{node_name}.transitions[{index}]"
            errors += _condition_errors(events, transition.on, transition.if_, f"{path}.if")
            if transition.on in unconditional and transition.if_ is not None:
                errors.append(f"{path}: never taken: transitions[{unconditional[transition.on]}] "
                              f"on {transition.on!r} has no condition and comes first")
            elif transition.if_ is None:
                unconditional[transition.on] = index
    for index, goal in enumerate(goals):
        path = f"goals[{index}]"
        if goal.on in TIMEOUT_EVENTS:
            errors.append(f"{path}.on: {goal.on!r} is a timer, not something a contact does; "
                          "a goal is an event such as purchased or clicked")
        errors += _condition_errors(events, goal.on, goal.if_, f"{path}.if")
    return errors


def _condition_errors(events: Sequence[str], event: str, source: str | None,
                      path: str) -> list[str]:
    if source is None:
        return []
    if event not in events:
        return [f"{path}: a condition reads a host event's properties; {event!r} is not one "
                "of the plan's `events:`"]
    try:
        compile_condition(source, path)
    except ConditionError as exc:
        return [str(exc)]
    return []


def transition_taken(transitions: Sequence[G], node_name: str, event: str,
                     properties: Mapping[str, Any], contact: Mapping[str, Any]) -> G | None:
    """The first of node ``node_name``'s ``transitions`` on ``event`` whose condition
    holds, if any."""
    for index, transition in enumerate(transitions):
        if transition.on == event and _holds(
                transition.if_, f"nodes.{node_name}.transitions[{index}].if", properties, contact):
            return transition
    return None


def goal_reached(goals: Sequence[G], event: str, properties: Mapping[str, Any],
                 contact: Mapping[str, Any]) -> G | None:
    """The first of a plan's ``goals`` that ``event`` reaches, if any."""
    for index, goal in enumerate(goals):
        if goal.on == event and _holds(goal.if_, f"goals[{index}].if", properties, contact):
            return goal
    return None


def has_goal(goals: Sequence[Guarded], event: str) -> bool:
    """Whether one of a plan's ``goals`` is reached on ``event`` (conditions aside)."""
    return any(goal.on == event for goal in goals)


def _holds(source: str | None, path: str, properties: Mapping[str, Any],
           contact: Mapping[str, Any]) -> bool:
    if source is None:
        return True
    return evaluate(compile_condition(source, path), event=properties, contact=contact)
