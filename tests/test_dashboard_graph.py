"""Plans drawn for the dashboard: every plan shipped and tested is laid out without
overlapping nodes, with each of its ways out drawn; a node type the drawing has never
heard of is drawn from the plan's own structure; hostile names are escaped."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from outreach_actors.domain import engine, stats
from outreach_actors.domain.plans import PlanError, load_plan_text, validate_plan
from outreach_actors.domain.store.models import utcnow
from outreach_actors.settings import get_settings
from outreach_actors.web.dashboard import Dashboard, DashboardRequest
from outreach_actors.web.dashboard.graph import draw_plan, plan_edges

from .factories import THREE_NODE_PLAN, load_plan, make_tenant

ROOT = Path(__file__).resolve().parent.parent
PLAN_FILES = sorted([*ROOT.glob("templates/*.yaml"), *ROOT.glob("tests/samples/*plan*.yaml")])


def _valid_definitions() -> list[tuple[str, dict]]:
    definitions = [("THREE_NODE_PLAN", validate_plan(THREE_NODE_PLAN).to_definition())]
    for path in PLAN_FILES:
        try:
            definitions.append((path.name, validate_plan(path.read_text()).to_definition()))
        except PlanError:
            continue  # a sample of a plan refused on purpose
    return definitions


def _overlap(a, b) -> bool:
    return a.x < b.x + b.width and b.x < a.x + a.width and a.y < b.y + b.height and b.y < a.y + a.height


@pytest.mark.parametrize(("name", "definition"), _valid_definitions(), ids=lambda value: str(value)[:30])
def test_every_plan_is_drawn_without_overlapping_nodes(name: str, definition: dict) -> None:
    lines = {node: [f"entered {index}", "sent 1"] for index, node in enumerate(definition["nodes"])}
    drawn = draw_plan(definition, lines, {})
    assert {node.name for node in drawn.nodes} == set(definition["nodes"])
    assert not [(a.name, b.name) for i, a in enumerate(drawn.nodes) for b in drawn.nodes[i + 1:]
                if _overlap(a, b)]
    assert all(node.x + node.width <= drawn.width and node.y + node.height <= drawn.height
               for node in drawn.nodes)
    transitions = sum(len(node.get("transitions", [])) for node in definition["nodes"].values())
    assert len(drawn.edges) == transitions


def test_a_node_type_the_drawing_does_not_know_is_drawn_from_its_ways_out() -> None:
    # As the branch and split nodes of the coming plans are written (DESIGN.md).
    definition = load_plan_text("""
name: trial
start: route
nodes:
  route:
    type: branch
    branches: [{if: "contact.tier == 'enterprise'", to: ent}]
    default: test
  test:
    type: split
    arms: [{weight: 50, to: ent}, {weight: 50, to: done}]
  ent: {type: email, subject: s, body: b, transitions: [{on: click, to: done}, {on: no_open, after: P2D, to: route}]}
  done: {type: exit}
""")
    edges = {(edge.source, edge.target, edge.label) for edge in plan_edges(definition)}
    assert edges == {("route", "ent", "if contact.tier == 'enterprise'"), ("route", "test", "default"),
                     ("test", "ent", "weight 50"), ("test", "done", "weight 50"),
                     ("ent", "done", "click"), ("ent", "route", "no_open after P2D")}
    drawn = draw_plan(definition, {}, {("test", "split:0", "ent"): 3})
    assert {node.shape for node in drawn.nodes if node.type in {"branch", "split"}} == {"box"}
    assert {edge.label: edge.count for edge in drawn.edges}["default"] == 0
    assert not [(a.name, b.name) for i, a in enumerate(drawn.nodes) for b in drawn.nodes[i + 1:]
                if _overlap(a, b)]


def test_hostile_plan_and_node_names_are_escaped(db) -> None:
    make_tenant()
    hostile = THREE_NODE_PLAN.replace("name: onboarding", "name: '<script>x()</script>'").replace(
        "bump", "'<img src=x onerror=y()>'")
    plan = load_plan(hostile)
    reply = Dashboard(get_settings(), enqueue_delivery=lambda delivery_id: None).handle(
        DashboardRequest("GET", f"/plans/{plan.id}"))
    assert reply.status == 200
    assert "<script>x()" not in reply.body and "&lt;script&gt;x()&lt;/script&gt;" in reply.body
    assert "<img src=x" not in reply.body and "&lt;img src=x onerror=y()&gt;" in reply.body


def test_a_node_is_previewed_for_a_chosen_contact(db) -> None:
    make_tenant()
    plan = load_plan()
    contact_id = engine.enroll("acme", "eve@example.com", "onboarding",
                               fields={"first_name": "<i>Eve</i>"}).contact_id
    dashboard = Dashboard(get_settings(), enqueue_delivery=lambda delivery_id: None)
    reply = dashboard.handle(DashboardRequest(
        "GET", f"/plans/{plan.id}", query={"node": "intro", "contact": str(contact_id)}))
    assert reply.status == 200
    assert '<dd class="subject">Welcome, &lt;i&gt;Eve&lt;/i&gt;</dd>' in reply.body
    not_email = dashboard.handle(DashboardRequest(
        "GET", f"/plans/{plan.id}", query={"node": "thanks", "contact": str(contact_id)}))
    assert not_email.status == 200 and "&#39;thanks&#39; is not an email node" in not_email.body
    unknown = dashboard.handle(DashboardRequest(
        "GET", f"/plans/{plan.id}", query={"node": "intro", "contact": "x1"}))
    assert unknown.status == 400


def test_a_period_counts_its_moves_and_where_contacts_are_now(db) -> None:
    make_tenant()
    load_plan()
    engine.enroll("acme", "eve@example.com", "onboarding")
    tomorrow = utcnow() + timedelta(days=1)
    everything = {row["node"]: row for row in stats.funnel(plan_name="onboarding")}
    later = {row["node"]: row for row in stats.funnel(plan_name="onboarding", since=tomorrow)}
    before = {row["node"]: row for row in stats.funnel(plan_name="onboarding", until=tomorrow)}
    assert everything["intro"]["entered"] == before["intro"]["entered"] == 1
    assert later["intro"]["entered"] == 0 and later["intro"]["active"] == 1


def test_a_branch_node_is_drawn_with_each_condition_and_its_default() -> None:
    definition = validate_plan((ROOT / "tests/samples/plans/branch.yaml").read_text()).to_definition()
    drawn = draw_plan(definition, {"route": ["entered 3"]}, {})
    assert {node.name: node.type for node in drawn.nodes}["route"] == "branch"
    assert not [(a.name, b.name) for i, a in enumerate(drawn.nodes) for b in drawn.nodes[i + 1:]
                if _overlap(a, b)]
    assert {(edge.target, edge.label) for edge in drawn.edges if edge.source == "route"} == {
        ("enterprise", "if contact.tier == 'enterprise'"), ("large", "if contact.seats >= 10"),
        ("beta", "if contact.beta"), ("emea", "if 'emea' in contact.regions"),
        ("standard", "default")}


def test_the_plan_page_shows_a_splits_arms_side_by_side(db) -> None:
    from outreach_actors.domain.experiments import experiment_results
    from outreach_actors.domain.host_events import track

    make_tenant()
    plan = load_plan((ROOT / "tests/samples/plans/split_goal.yaml").read_text())
    for n in range(30):
        engine.enroll("acme", f"c{n}@example.com", "goal-test")
    for n in range(5):
        track("acme", f"c{n}@example.com", "purchased")
    reply = Dashboard(get_settings(), enqueue_delivery=lambda delivery_id: None).handle(
        DashboardRequest("GET", f"/plans/{plan.id}"))
    assert reply.status == 200
    (result,) = experiment_results(plan_name="goal-test")
    assert '<table class="counts experiment" data-node="test">' in reply.body
    for row in result["arms"]:
        converted = row["counts"]["converted"]
        assert (f'<tr data-arm="{row["arm"]}"><td>{row["arm"]}</td>'
                f'<td data-column="entered">{row["entered"]}</td>') in reply.body
        assert (f'<td data-column="converted">{converted} '
                f'({converted / row["entered"] * 100:.1f}%)') in reply.body
    assert reply.body.count('class="versus"') == len(result["columns"]) + 1  # b; the holdout's conversions
