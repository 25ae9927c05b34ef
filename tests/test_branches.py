"""Branch nodes: validation with paths, a route on each field type and on the event
that brought the contact, the route on the visit, and a failing condition that takes
the default (logged with the enrollment id), on both databases."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from outreach_actors.domain import engine
from outreach_actors.domain.branches import DEFAULT
from outreach_actors.domain.host_events import track
from outreach_actors.domain.plans import PlanError, validate_plan
from outreach_actors.domain.store.models import Enrollment, NodeVisit

from .factories import load_plan, make_tenant

PLANS = Path(__file__).resolve().parent / "samples" / "plans"
BRANCH_PLAN = (PLANS / "branch.yaml").read_text()
EVENT_PLAN = (PLANS / "branch_on_event.yaml").read_text()


def test_every_branch_fault_is_reported_at_once_with_its_path() -> None:
    with pytest.raises(PlanError) as raised:
        validate_plan((PLANS / "bad_branch.yaml").read_text())
    errors = raised.value.errors
    for expected in [
        "nodes.route.branches[0].if: unexpected 'end of template'",
        "nodes.route.branches[1].if: unknown name 'secrets'",
        "nodes.route.branches[2].to: node 'nowhere' does not exist",
        "nodes.route.branches[3].if: Field required",
        "nodes.route.default: node 'missing' does not exist",
        "nodes.route.transitions: a branch node has no transitions",
        "nodes.no_default.default: a branch node needs a default",
        "nodes.empty.branches: a branch node needs at least one branch",
        "nodes.done: only branch nodes take branches or default",
        "nodes.loop_a.branches: leads back to 'loop_a' through routing nodes only",
    ]:
        assert any(error.startswith(expected) for error in errors), (expected, errors)


def test_a_branch_is_stored_and_read_back_as_it_was_written() -> None:
    plan = validate_plan(BRANCH_PLAN)
    again = validate_plan(plan.to_definition(), stored=True)
    assert again.node("route") == plan.node("route")
    assert plan.to_definition()["nodes"]["route"]["branches"][0] == {
        "if": "contact.tier == 'enterprise'", "to": "enterprise"}
    assert "branches" not in plan.to_definition()["nodes"]["large"]  # other nodes store no trace


@pytest.fixture
def plans(db):
    make_tenant()
    load_plan(BRANCH_PLAN)
    load_plan(EVENT_PLAN)
    return "acme"


def _visits(enrollment_id: int) -> list[tuple[str, str | None]]:
    return list(NodeVisit.select(NodeVisit.node, NodeVisit.route)
                .where(NodeVisit.enrollment == enrollment_id).order_by(NodeVisit.version).tuples())


@pytest.mark.parametrize(("fields", "route"), [
    ({"tier": "enterprise"}, "enterprise"),                         # text
    ({"tier": "pro", "seats": 12}, "large"),                        # number
    ({"seats": 2, "beta": True}, "beta"),                           # boolean
    ({"seats": 2, "beta": False, "regions": ["amer", "emea"]}, "emea"),  # list
    ({"seats": 2, "regions": []}, DEFAULT),                         # none holds
], ids=["text", "number", "boolean", "list", "none-holds"])
def test_a_contact_takes_the_first_branch_its_fields_meet(plans, fields, route) -> None:
    enrollment = engine.enroll("acme", "ada@example.com", "routing", fields=fields)
    target = "standard" if route == DEFAULT else route
    assert _visits(enrollment.id) == [("route", route), (target, None)]
    enrollment = Enrollment.get_by_id(enrollment.id)
    assert (enrollment.status, enrollment.current_node) == (Enrollment.COMPLETED, target)


@pytest.mark.parametrize(("fields", "problem"), [
    ({"tier": "pro"}, "'contact.seats >= 10' failed: UndefinedError"),       # missing field
    ({"seats": "many", "beta": True}, "'contact.seats >= 10' failed: TypeError"),  # wrong type
], ids=["missing-field", "type-error"])
def test_a_condition_that_fails_takes_the_default_and_is_logged(plans, caplog, fields,
                                                                problem) -> None:
    with caplog.at_level(logging.WARNING, logger="outreach_actors.domain.branches"):
        enrollment = engine.enroll("acme", "grace@example.com", "routing", fields=fields)
    # The default, though a later branch (beta) would hold: the data was not what the
    # branch was written for.
    assert _visits(enrollment.id) == [("route", DEFAULT), ("standard", None)]
    [record] = [r for r in caplog.records if r.name == "outreach_actors.domain.branches"]
    assert f"enrollment={enrollment.id}" in record.getMessage()
    assert "nodes.route.branches[1].if" in record.getMessage() and problem in record.getMessage()


@pytest.mark.parametrize(("properties", "route"), [
    ({"plan": "team", "seats": 25}, "big_team"),
    ({"plan": "team", "seats": 3}, "team"),
    ({"plan": "solo"}, DEFAULT),
    ({"plan": "team"}, DEFAULT),  # seats missing: the failing condition takes the default
], ids=["big-team", "team", "solo", "missing-property"])
def test_a_branch_reads_the_host_events_properties(plans, properties, route) -> None:
    enrollment = engine.enroll("acme", "ada@example.com", "upgrades")
    assert track("acme", "ada@example.com", "upgraded", properties).moved == 1
    target = "done" if route == DEFAULT else route
    assert _visits(enrollment.id) == [("intro", None), ("route", route), (target, None)]


def test_a_branch_reads_a_clicks_type_and_url(plans) -> None:
    pricing = engine.enroll("acme", "ada@example.com", "upgrades")
    blog = engine.enroll("acme", "alan@example.com", "upgrades")
    bare = engine.enroll("acme", "grace@example.com", "upgrades")
    engine.process_event(pricing.id, "clicked", node="intro",
                         event_data={"type": "clicked", "url": "https://example.com/pricing"})
    engine.process_event(blog.id, "clicked", node="intro",
                         event_data={"type": "clicked", "url": "https://example.com/blog"})
    # A caller with no data (as for a synthetic event): the event is its type alone, and
    # the url the second branch reads is missing: the default.
    engine.process_event(bare.id, "clicked", node="intro")
    assert _visits(pricing.id)[1:] == [("clicked", "pricing"), ("pricing", None)]
    assert _visits(blog.id)[1:] == [("clicked", "other_link"), ("other_link", None)]
    assert _visits(bare.id)[1:] == [("clicked", DEFAULT), ("done", None)]


def test_an_event_delivered_twice_routes_the_contact_once(plans) -> None:
    enrollment = engine.enroll("acme", "ada@example.com", "upgrades")
    click = {"type": "clicked", "url": "https://example.com/pricing"}
    assert engine.process_event(enrollment.id, "clicked", node="intro", event_data=click) is True
    # Dramatiq delivers at least once: the same click again finds the contact gone on.
    assert engine.process_event(enrollment.id, "clicked", node="intro", event_data=click) is False
    assert _visits(enrollment.id) == [("intro", None), ("clicked", "pricing"), ("pricing", None)]
