"""A plan drawn as a graph: its nodes laid out left to right by grandalf (a kept
Sugiyama layout: layers, crossing reduction), its edges labelled, sized for SVG.

Edges are read from the plan's definition, not from a list of node types: any mapping
under a node with a ``to`` is an edge (a transition, a branch, a split's arm), labelled
with its other keys, and a node's ``default`` is one too. So a node type added to plans
is drawn without a change here.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from grandalf.graphs import Edge, Graph, Vertex
from grandalf.layouts import SugiyamaLayout

NODE_WIDTH = 190
HEADER_HEIGHT = 40
LINE_HEIGHT = 16
#: Space between layers (left to right) and between nodes of one layer.
LAYER_GAP = 150
NODE_GAP = 30
MARGIN = 20
#: The outline each node type is drawn with; a type not listed is drawn as a box.
NODE_SHAPES = {"exit": "pill", "wait": "box", "email": "box"}


@dataclass(frozen=True)
class DrawnNode:
    name: str
    type: str
    shape: str
    x: float  # top-left corner
    y: float
    width: float
    height: float
    lines: list[str]  # the counts, one per line


@dataclass(frozen=True)
class DrawnEdge:
    source: str
    target: str
    label: str
    count: int | None
    path: str  # SVG path data
    label_x: float
    label_y: float


@dataclass(frozen=True)
class DrawnPlan:
    width: float
    height: float
    nodes: list[DrawnNode]
    edges: list[DrawnEdge]


@dataclass(frozen=True)
class PlanEdge:
    """One way out of a node, as the plan writes it."""

    source: str
    target: str
    event: str | None
    label: str


def plan_edges(definition: Mapping[str, Any]) -> list[PlanEdge]:
    """Every edge of a plan, in the order its nodes and their ways out are written."""
    edges: list[PlanEdge] = []
    nodes = definition.get("nodes") or {}
    for name, node in nodes.items():
        for key, value in node.items():
            if key == "default" and isinstance(value, str):
                edges.append(PlanEdge(name, value, None, "default"))
            for way in value if isinstance(value, list) else []:
                if isinstance(way, Mapping) and isinstance(way.get("to"), str) and way["to"] in nodes:
                    edges.append(PlanEdge(name, way["to"], way.get("on"), _label(way)))
    return [edge for edge in edges if edge.target in nodes]


def _label(way: Mapping[str, Any]) -> str:
    parts = [str(way["on"])] if "on" in way else []
    parts += [f"after {value}" if key == "after" else f"{key} {value}"
              for key, value in way.items() if key not in {"on", "to"} and not isinstance(value, dict | list)]
    return " ".join(parts) or "next"


class _Route:
    """What grandalf sets on an edge: the points it passes through (the dummy vertices
    of the layers it crosses, so that it goes around the nodes in them)."""

    def __init__(self) -> None:
        self.points: list[tuple[float, float]] = []

    def setpath(self, points: list[tuple[float, float]]) -> None:
        self.points = points


class _Size:
    """What grandalf reads of a vertex: its size (width and height swapped, since its
    layers run top to bottom and ours left to right)."""

    def __init__(self, width: float, height: float) -> None:
        self.w, self.h = height, width
        self.xy = (0.0, 0.0)


def draw_plan(definition: Mapping[str, Any], node_counts: Mapping[str, Iterable[str]],
              edge_counts: Mapping[tuple[str, str, str | None], int] | None = None) -> DrawnPlan:
    """Lay out a plan: ``node_counts`` are each node's lines of counts, ``edge_counts``
    the moves per (source, event, target)."""
    nodes = definition.get("nodes") or {}
    lines = {name: list(node_counts.get(name, ())) for name in nodes}
    sizes = {name: _Size(NODE_WIDTH, HEADER_HEIGHT + LINE_HEIGHT * len(lines[name]) + 8)
             for name in nodes}
    vertices = {name: Vertex(name) for name in nodes}
    for name, vertex in vertices.items():
        vertex.view = sizes[name]
    edges = plan_edges(definition)
    pairs = {(edge.source, edge.target) for edge in edges if edge.source != edge.target}
    layout_edges = {(a, b): Edge(vertices[a], vertices[b]) for a, b in sorted(pairs)}
    for edge in layout_edges.values():
        edge.view = _Route()
    graph = Graph(list(vertices.values()), list(layout_edges.values()))
    via: dict[tuple[str, str], list[tuple[float, float]]] = {}
    offset = 0.0
    for component in graph.C:
        layout = SugiyamaLayout(component)
        layout.xspace, layout.yspace = NODE_GAP, LAYER_GAP
        start = [vertices[definition["start"]]] if definition.get("start") in vertices else None
        roots = [v for v in component.sV if start and v is start[0]] or None
        layout.init_all(roots=roots)
        layout.draw()
        # grandalf's y (layers) is our x; its x (order in a layer) our y.
        low = min(v.view.xy[0] - v.view.w / 2 for v in component.sV)
        for vertex in component.sV:
            gx, gy = vertex.view.xy
            vertex.view.xy = (gy, gx - low + offset)
        for pair, edge in layout_edges.items():
            if edge.v[0] in component.sV:
                via[pair] = [(gy, gx - low + offset) for gx, gy in edge.view.points[1:-1]]
        offset = max(v.view.xy[1] + v.view.w / 2 for v in component.sV) + NODE_GAP
    left = min((size.xy[0] - size.h / 2 for size in sizes.values()), default=0.0)
    drawn = {
        name: DrawnNode(name, str(nodes[name].get("type", "")),
                        NODE_SHAPES.get(str(nodes[name].get("type")), "box"),
                        size.xy[0] - size.h / 2 - left + MARGIN, size.xy[1] - size.w / 2 + MARGIN,
                        size.h, size.w, lines[name])
        for name, size in sizes.items()
    }
    return DrawnPlan(
        width=max((n.x + n.width for n in drawn.values()), default=0) + MARGIN,
        height=max((n.y + n.height for n in drawn.values()), default=0) + MARGIN,
        nodes=list(drawn.values()),
        edges=_route(edges, drawn, edge_counts,
                     {pair: [(x - left + MARGIN, y + MARGIN) for x, y in points]
                      for pair, points in via.items()}),
    )


def _route(edges: list[PlanEdge], drawn: Mapping[str, DrawnNode],
           counts: Mapping[tuple[str, str, str | None], int] | None,
           via: Mapping[tuple[str, str], list[tuple[float, float]]]) -> list[DrawnEdge]:
    """Each edge as a curve from its source's right side to its target's left side,
    through the points grandalf routed it by; the edges of one pair of nodes fan out so
    that their labels do not sit on each other."""
    by_pair: dict[tuple[str, str], list[PlanEdge]] = defaultdict(list)
    for edge in edges:
        by_pair[(edge.source, edge.target)].append(edge)
    routed = []
    for (source_name, target_name), group in by_pair.items():
        source, target = drawn[source_name], drawn[target_name]
        for index, edge in enumerate(group):
            spread = (index - (len(group) - 1) / 2) * 18
            x1, y1 = source.x + source.width, source.y + source.height / 2 + spread
            x2, y2 = target.x, target.y + target.height / 2 + spread
            if x2 > x1:  # forward: S-curves from layer to layer
                points = [(x1, y1), *((x, y + spread) for x, y in via.get((source_name, target_name), [])),
                          (x2, y2)]
                path = f"M{x1:.0f},{y1:.0f}" + "".join(
                    f" C{(a[0] + b[0]) / 2:.0f},{a[1]:.0f} {(a[0] + b[0]) / 2:.0f},{b[1]:.0f} {b[0]:.0f},{b[1]:.0f}"
                    for a, b in zip(points, points[1:], strict=False))
                first, second = points[0], points[1]
                label_x, label_y = (first[0] + second[0]) / 2, (first[1] + second[1]) / 2 - 4
            else:  # backward or to itself: a loop below both nodes
                bottom = max(source.y + source.height, target.y + target.height) + 30 + 18 * index
                path = (f"M{x1:.0f},{y1:.0f} C{x1 + 60:.0f},{bottom:.0f} {x2 - 60:.0f},{bottom:.0f}"
                        f" {x2:.0f},{y2:.0f}")
                label_x, label_y = (x1 + x2) / 2, bottom - 4
            count = None
            if counts is not None:
                count = sum(value for (a, event, b), value in counts.items()
                            if a == source_name and b == target_name
                            and (edge.event is None or event == edge.event))
            routed.append(DrawnEdge(source_name, target_name, edge.label, count, path,
                                    label_x, label_y))
    return routed
