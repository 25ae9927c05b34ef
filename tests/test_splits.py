"""Split nodes: validation with paths, a stable arm per contact, shares that match the
weights, the holdout, and the arm recorded on the visit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from scipy.stats import chisquare

from outreach_actors.domain import engine
from outreach_actors.domain.plans import PlanError, validate_plan
from outreach_actors.domain.splits import HOLDOUT, assignment_point, choose_route
from outreach_actors.domain.store import models
from outreach_actors.domain.store.models import Enrollment, NodeVisit, ScheduledAction

from .factories import load_plan, make_tenant

PLANS = Path(__file__).resolve().parent / "samples" / "plans"
SPLIT_PLAN = (PLANS / "split.yaml").read_text()
LATER_PLAN = (PLANS / "split_later.yaml").read_text()


def test_every_split_fault_is_reported_at_once_with_its_path() -> None:
    with pytest.raises(PlanError) as raised:
        validate_plan((PLANS / "bad_split.yaml").read_text())
    errors = raised.value.errors
    for expected in [
        "nodes.first.arms[0].weight: Input should be greater than 0",
        "nodes.first.holdout: Input should be less than or equal to 50",
        "nodes.first.transitions: a split node has no transitions; its arms say where contacts go",
        "nodes.first.arms[1].to: node 'nowhere' does not exist",
        "nodes.first.arms[2]: a second arm named 'done'",
        "nodes.loop_b.arms[0]: 'holdout' names the holdout",
        "nodes.loop_a.arms: leads back to 'loop_a' through routing nodes only",
        "nodes.empty.arms: a split node needs at least one arm",
        "nodes.done: only split nodes take arms or holdout",
        "nodes.heavy.holdout: expected a number, got True",
        "nodes.heavy.arms[0].weight: Input should be less than or equal to 1000000",
        "nodes.heavy.arms[1].weight: Input should be a valid number",
    ]:
        assert any(error.startswith(expected) for error in errors), (expected, errors)


def test_a_split_is_stored_and_read_back_as_it_was_written() -> None:
    plan = validate_plan(SPLIT_PLAN)
    again = validate_plan(plan.to_definition(), stored=True)
    assert again.node("test") == plan.node("test")
    assert "arms" not in plan.to_definition()["nodes"]["short"]  # other nodes store no trace


def _routes(emails: list[str]) -> list[str]:
    node = validate_plan(SPLIT_PLAN).node("test")
    return [choose_route(assignment_point("acme", email, "subject-test", 1, "test"), node)
            for email in emails]


def test_another_process_assigns_every_contact_the_same_arm() -> None:
    emails = [f"contact-{n}@example.com" for n in range(300)]
    program = (
        "import json, sys\n"
        "from tests.test_splits import _routes\n"
        "print(json.dumps(_routes(json.loads(sys.argv[1]))))\n"
    )
    # Another interpreter with another string-hash seed: nothing may depend on either.
    other = subprocess.run(
        [sys.executable, "-c", program, json.dumps(emails)], capture_output=True, text=True,
        check=True, cwd=Path(__file__).resolve().parent.parent,
        env={**__import__("os").environ, "PYTHONHASHSEED": "12345"},
    )
    assert json.loads(other.stdout) == _routes(emails)
    assert set(_routes(emails)) == {"a", "b", HOLDOUT}


@pytest.mark.parametrize(("weights", "holdout"), [((50, 50), 10), ((70, 20, 10), 0), ((1, 3), 25)])
def test_arm_shares_over_10000_contacts_match_the_weights(weights, holdout) -> None:
    plan = validate_plan({"name": "shares", "start": "test", "nodes": {
        "test": {"type": "split", "holdout": holdout,
                 "arms": [{"weight": w, "to": "done", "name": f"arm{i}"} for i, w in enumerate(weights)]},
        "done": {"type": "exit"}}})
    node = plan.node("test")
    contacts = 10_000
    routes = [choose_route(assignment_point("acme", f"c{n}@example.com", "shares", 1, "test"), node)
              for n in range(contacts)]
    names = [f"arm{i}" for i in range(len(weights))] + ([HOLDOUT] if holdout else [])
    shares = [(1 - holdout / 100) * w / sum(weights) for w in weights] + ([holdout / 100] if holdout else [])
    observed = [routes.count(name) for name in names]
    assert sum(observed) == contacts
    # A correct assignment fails this one time in 10,000; a biased one (a share off by a
    # point) fails it nearly always at this size.
    assert chisquare(observed, [share * contacts for share in shares]).pvalue > 1e-4


def test_the_plan_version_and_the_node_reshuffle_the_arms() -> None:
    node = validate_plan(SPLIT_PLAN).node("test")
    emails = [f"c{n}@example.com" for n in range(200)]
    v1 = [choose_route(assignment_point("acme", e, "subject-test", 1, "test"), node) for e in emails]
    v2 = [choose_route(assignment_point("acme", e, "subject-test", 2, "test"), node) for e in emails]
    assert v1 != v2  # a new version is a new experiment


@pytest.fixture
def split_plans(db):
    make_tenant()
    load_plan(SPLIT_PLAN)
    load_plan(LATER_PLAN)
    return "acme"


def test_entering_a_split_records_the_arm_and_moves_on_or_holds_out(split_plans) -> None:
    emails = [f"contact-{n}@example.com" for n in range(40)]
    enrollments = [engine.enroll("acme", email, "subject-test") for email in emails]
    expected = _routes(emails)
    assert HOLDOUT in expected and "a" in expected and "b" in expected
    for enrollment, route in zip(enrollments, expected, strict=True):
        enrollment = Enrollment.get_by_id(enrollment.id)
        visits = list(NodeVisit.select().where(NodeVisit.enrollment == enrollment.id)
                      .order_by(NodeVisit.version))
        assert visits[0].node == "test" and visits[0].route == route
        actions = list(ScheduledAction.select().where(ScheduledAction.enrollment == enrollment.id))
        if route == HOLDOUT:
            # The control group: out of the plan at once, mailed nothing.
            assert (enrollment.status, enrollment.exit_reason) == (Enrollment.EXITED, HOLDOUT)
            assert len(visits) == 1 and actions == []
        else:
            target = {"a": "short", "b": "long"}[route]
            assert [v.node for v in visits] == ["test", target] and visits[1].route is None
            assert (enrollment.current_node, enrollment.version) == (target, 1)
            assert [(a.kind, a.node) for a in actions] == [(ScheduledAction.SEND, target)]


def test_a_contact_keeps_its_arm_whatever_the_order_and_the_retries(split_plans) -> None:
    emails = [f"person-{n}@example.com" for n in range(12)]
    node = validate_plan(LATER_PLAN).node("test")
    expected = {email: choose_route(assignment_point("acme", email, "later-test", 1, "test"), node)
                for email in emails}
    assert set(expected.values()) == {"a", "b"}
    # Each contact enters twice (the plan allows re-entry), in opposite orders, and
    # every click is delivered twice, as Dramatiq may.
    for order in (emails, list(reversed(emails))):
        for email in order:
            enrollment = engine.enroll("acme", email, "later-test")
            assert engine.process_event(enrollment.id, "clicked", node="intro") is True
            assert engine.process_event(enrollment.id, "clicked", node="intro") is False
    visits = (NodeVisit.select(NodeVisit.route, models.Contact.email)
              .join(Enrollment).join(models.Contact).where(NodeVisit.node == "test"))
    seen: dict[str, list[str]] = {}
    for visit in visits:
        seen.setdefault(visit.enrollment.contact.email, []).append(visit.route)
    assert seen == {email: [route, route] for email, route in expected.items()}
    done = {e.contact.email: e.current_node for e in Enrollment.select().join(models.Contact)}
    assert all(done[email] == f"done_{route}" for email, route in expected.items())


def test_db_init_adds_the_route_column_to_an_older_database(settings) -> None:
    database = models.database_proxy.obj
    database.execute_sql('ALTER TABLE "node_visit" DROP COLUMN "route"')
    assert "node_visit.route" in models.missing_schema(database)
    models.create_schema(database)
    assert models.missing_schema(database) == []


def test_a_bulk_enrollment_into_a_split_gives_each_contact_its_own_arm(split_plans) -> None:
    from outreach_actors.domain.enroll_many import ContactRow, enroll_many

    emails = [f"contact-{n}@example.com" for n in range(40)]
    result = enroll_many("acme", "subject-test",
                         [ContactRow(n, email, {}, None) for n, email in enumerate(emails)],
                         batch_size=16)
    assert result.enrolled == 40
    routes = dict(NodeVisit.select(models.Contact.email, NodeVisit.route)
                  .join(Enrollment).join(models.Contact).where(NodeVisit.node == "test").tuples())
    assert routes == dict(zip(emails, _routes(emails), strict=True))
    held_out = Enrollment.select().where(Enrollment.exit_reason == HOLDOUT).count()
    assert held_out == _routes(emails).count(HOLDOUT) > 0
    assert ScheduledAction.select().count() == 40 - held_out
