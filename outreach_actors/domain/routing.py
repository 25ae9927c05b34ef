"""Routing nodes: the node types that send a contact on the moment it enters (a split's
arms, a branch's conditions), described once for validation and for the engine.

Adding a routing type is one entry in ROUTING_TYPES (and its fields on plans.Node):
plans.py asks this table for its checks, the nodes it leads to, whether it can end the
plan and loops among routing nodes; engine.py asks it for each contact's route.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from outreach_actors.domain import branches, splits

#: A router: (plan, node name, enrollments entering it, what each one's conditions see
#: as ``event`` by enrollment id) -> {enrollment id: (route, next node, or None to leave
#: the plan with the route as exit reason)}.
Router = Callable[[Any, str, Sequence[Any], Mapping[int, Mapping[str, Any]]],
                  dict[int, tuple[str, str | None]]]


@dataclass(frozen=True)
class RoutingType:
    """What plans and the engine need of one routing node type."""

    #: The plan field that lists its routes (error paths name it).
    field: str
    #: One of those routes, in errors ("arm"); at most how many a node may have; an example.
    route: str
    max_routes: int
    example: str
    #: What says where its contacts go, in errors ("its arms").
    ways_out: str
    #: Every plan field that only this type takes.
    own_fields: tuple[str, ...]
    #: The remaining faults of one node of this type, on the raw mapping: (``nodes.NAME``,
    #: node, nodes); the ones every routing type shares are node_errors'.
    errors: Callable[[str, Mapping[str, Any], Mapping[str, Any]], list[str]]
    #: The nodes its routes name (raw mapping).
    targets: Callable[[Mapping[str, Any]], list[str]]
    #: Whether it takes some contacts out of the plan itself.
    ends_plan: Callable[[Mapping[str, Any]], bool]
    #: Each entering enrollment's route.
    routes: Router


ROUTING_TYPES: dict[str, RoutingType] = {
    "split": RoutingType(field="arms", route="arm", max_routes=splits.MAX_ARMS,
                         example="arms: [{weight: 50, to: a}, {weight: 50, to: b}]",
                         ways_out="its arms", own_fields=("arms", "holdout"),
                         errors=splits.split_errors, targets=splits.route_targets,
                         ends_plan=splits.ends_plan,
                         # A split's arm is the contact's alone: the event plays no part.
                         routes=lambda plan, node, enrollments, _events:
                         splits.split_routes(plan, node, enrollments)),
    "branch": RoutingType(field="branches", route="branch", max_routes=branches.MAX_BRANCHES,
                          example="branches: [{if: \"contact.tier == 'pro'\", to: pro}]",
                          ways_out="its branches and default", own_fields=("branches", "default"),
                          errors=branches.branch_errors,
                          targets=branches.route_targets, ends_plan=branches.ends_plan,
                          routes=branches.branch_routes),
}


def _type_of(node: Any) -> RoutingType | None:
    node_type = node.get("type") if isinstance(node, Mapping) else None
    return ROUTING_TYPES.get(node_type) if isinstance(node_type, str) else None


def node_errors(base: str, node: Mapping[str, Any], nodes: Mapping[str, Any]) -> list[str]:
    """Every routing type's faults of one node: its fields on a node of another type, and
    on its own nodes transitions, too few or too many routes, and the type's own checks."""
    errors = []
    for name, routing in ROUTING_TYPES.items():
        if node.get("type") != name:
            if any(node.get(field) is not None for field in routing.own_fields):
                errors.append(f"{base}: only {name} nodes take {' or '.join(routing.own_fields)}")
            continue
        if node.get("transitions"):
            errors.append(f"{base}.transitions: a {name} node has no transitions; "
                          f"{routing.ways_out} say where contacts go")
        routes = node.get(routing.field)
        if not isinstance(routes, list) or not routes:
            errors.append(f"{base}.{routing.field}: a {name} node needs at least one "
                          f"{routing.route}, e.g. {routing.example}")
        elif len(routes) > routing.max_routes:
            errors.append(f"{base}.{routing.field}: {len(routes)} {routing.field}; a {name} "
                          f"node may have at most {routing.max_routes}")
        errors += routing.errors(base, node, nodes)
    return errors


def targets(node: Mapping[str, Any]) -> list[str]:
    """The nodes a routing node's routes name; none for other nodes."""
    routing = _type_of(node)
    return routing.targets(node) if routing else []


def ends_plan(node: Mapping[str, Any]) -> bool:
    routing = _type_of(node)
    return bool(routing and routing.ends_plan(node))


def routes_field(node: Mapping[str, Any]) -> str | None:
    """The field that lists a routing node's routes, if it is one."""
    routing = _type_of(node)
    return routing.field if routing else None


def loops(nodes: Mapping[str, Any]) -> list[str]:
    """Routing nodes that lead back to themselves through routing nodes only: a contact
    would be routed for ever without ever waiting or being mailed."""
    routing_nodes = {name for name, node in nodes.items() if _type_of(node)}
    edges = {name: {target for target in targets(nodes[name]) if target in routing_nodes}
             for name in routing_nodes}
    errors = []
    for name in sorted(routing_nodes):
        reached, frontier = set(), list(edges[name])
        while frontier:
            current = frontier.pop()
            if current not in reached:
                reached.add(current)
                frontier.extend(edges[current])
        if name in reached:
            errors.append(f"nodes.{name}.{routes_field(nodes[name])}: leads back to {name!r} "
                          "through routing nodes only; a contact would be routed for ever")
    return errors
