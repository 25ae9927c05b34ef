"""`outreach stats --experiments`: each split's arms side by side, with p-values and
intervals checked against closed forms and published values."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from outreach_actors.cli.commands import main
from outreach_actors.domain.experiments import (
    EXPERIMENT_EVENTS,
    compare_proportions,
    experiment_results,
)
from outreach_actors.domain.splits import HOLDOUT
from outreach_actors.domain.store.models import (
    Contact,
    Enrollment,
    MessageEvent,
    NodeVisit,
    OutboundMessage,
    insert_rows,
)

from .factories import load_plan, make_tenant

PLANS = Path(__file__).resolve().parent / "samples" / "plans"
SPLIT_AT = datetime(2030, 1, 7, 9, 0)
# Per arm: entered, sent, delivered, opened, clicked (each a subset of the one before).
KNOWN = {"a": (100, 100, 90, 50, 10), "b": (100, 98, 92, 65, 20), HOLDOUT: (20, 0, 0, 0, 0)}


def test_the_p_value_is_the_two_proportion_z_tests_closed_form() -> None:
    # 65/100 against 50/100: pooled p = 0.575, z = 0.15 / sqrt(p (1 - p) (1/100 + 1/100)).
    z = 0.15 / math.sqrt(0.575 * 0.425 * (2 / 100))
    assert compare_proportions(65, 100, 50, 100).p_value == pytest.approx(math.erfc(z / math.sqrt(2)),
                                                                           rel=1e-9)


@pytest.mark.parametrize(("counts", "interval"), [
    # Newcombe (1998), "Interval estimation for the difference between independent
    # proportions", Table II, method 10: the published bounds.
    ((56, 70, 48, 80), (0.0524, 0.3339)),
    ((9, 10, 3, 10), (0.1705, 0.8090)),
])
def test_the_interval_is_newcombes_hybrid_score_interval(counts, interval) -> None:
    comparison = compare_proportions(*counts)
    assert (round(comparison.low, 4), round(comparison.high, 4)) == interval


def test_no_contacts_on_a_side_compares_nothing() -> None:
    assert compare_proportions(0, 0, 5, 10) is None
    assert compare_proportions(0, 10, 0, 20).p_value == 1.0


def seed_arms(plan_row) -> None:
    """Contacts split into arms with KNOWN counts, as the engine would have recorded them."""
    for route, (entered, sent, delivered, opened, clicked) in KNOWN.items():
        contacts = insert_rows(Contact, [
            {"tenant": "acme", "email": f"{route}-{n}@example.com"} for n in range(entered)],
            returning="id")
        enrollments = insert_rows(Enrollment, [
            {"tenant": "acme", "plan": plan_row.id, "contact": contact_id,
             "enrollment_key": f"k-{route}-{contact_id}", "current_node": "stop",
             "status": "completed", "version": 2} for contact_id in contacts], returning="id")
        insert_rows(NodeVisit, [
            {"enrollment": e, "node": "test", "route": route, "version": 0, "entered_at": SPLIT_AT}
            for e in enrollments])
        target = {"a": "short", "b": "long"}.get(route, "test")
        # An email from before the split (a plan may mail first) must not count.
        insert_rows(OutboundMessage, [
            {"id": f"old-{e}", "tenant": "acme", "enrollment": e, "node": "intro",
             "dedupe_key": f"old-{e}", "status": "sent", "to_email": "x@example.com",
             "from_email": "s@acme.test", "subject": "s", "html": "h", "text": "t",
             "created_at": SPLIT_AT - timedelta(days=1)} for e in enrollments])
        insert_rows(OutboundMessage, [
            {"id": f"m-{e}", "tenant": "acme", "enrollment": e, "node": target,
             "dedupe_key": f"m-{e}", "status": "sent", "to_email": "x@example.com",
             "from_email": "s@acme.test", "subject": "s", "html": "h", "text": "t",
             "created_at": SPLIT_AT + timedelta(minutes=1)} for e in enrollments[:sent]])
        events = []
        for event_type, count in (("delivered", delivered), ("opened", opened), ("clicked", clicked)):
            events += [{"message": f"m-{e}", "tenant": "acme", "type": event_type,
                        "event_key": f"{event_type}-{e}", "occurred_at": SPLIT_AT}
                       for e in enrollments[:count]]
        # Seen twice (a second open) and on the earlier email: still one contact each.
        events += [{"message": f"m-{e}", "tenant": "acme", "type": "opened",
                    "event_key": f"again-{e}", "occurred_at": SPLIT_AT} for e in enrollments[:opened]]
        events += [{"message": f"old-{e}", "tenant": "acme", "type": "clicked",
                    "event_key": f"old-click-{e}", "occurred_at": SPLIT_AT} for e in enrollments]
        insert_rows(MessageEvent, events)


@pytest.fixture
def seeded(db):
    make_tenant()
    seed_arms(load_plan((PLANS / "split.yaml").read_text()))


def test_each_arm_counts_contacts_once_from_the_split_on(seeded) -> None:
    (result,) = experiment_results(plan_name="subject-test")
    assert (result["plan"], result["node"]) == ("subject-test", "test")
    assert [row["arm"] for row in result["arms"]] == ["a", "b", HOLDOUT]
    for row in result["arms"]:
        entered, sent, delivered, opened, clicked = KNOWN[row["arm"]]
        assert row["entered"] == entered
        assert {k: row["counts"][k] for k in ["sent", "delivered", "opened", "clicked"]} == {
            "sent": sent, "delivered": delivered, "opened": opened, "clicked": clicked}
        assert row["rates"]["opened"] == opened / entered
    assert "versus_first" not in result["arms"][0]
    opened = result["arms"][1]["versus_first"]["opened"]
    assert opened["difference"] == pytest.approx(0.15)
    assert opened["p_value"] == pytest.approx(compare_proportions(65, 100, 50, 100).p_value)
    assert opened["p_value"] == pytest.approx(0.0319, abs=1e-4)
    # The holdout is mailed nothing: none of its email rates is compared (and the plan has
    # no goals, so no conversions either).
    assert "converted" not in result["columns"]
    assert result["arms"][2]["versus_first"] == {}


def test_the_columns_follow_the_event_vocabulary() -> None:
    assert EXPERIMENT_EVENTS[:3] == ["delivered", "opened", "clicked"]


def test_outreach_stats_experiments_prints_the_table_and_json(settings) -> None:
    make_tenant()
    seed_arms(load_plan((PLANS / "split.yaml").read_text()))
    runner = CliRunner()
    table = runner.invoke(main, ["stats", "--plan", "subject-test", "--experiments"])
    assert table.exit_code == 0, table.output
    assert "65 (65.0%)" in table.output and "vs a" in table.output and "p=0.0319" in table.output
    as_json = runner.invoke(main, ["stats", "--plan", "subject-test", "--experiments", "--json"])
    assert json.loads(as_json.output)[0]["arms"][1]["counts"]["opened"] == 65
    none = runner.invoke(main, ["stats", "--plan", "nothing-here", "--experiments"])
    assert "no split nodes in plan 'nothing-here'" in none.output


def test_conversions_count_per_arm_and_a_holdout_contact_converts_through_track(db) -> None:
    from outreach_actors.domain import engine
    from outreach_actors.domain.host_events import track

    make_tenant()
    load_plan((PLANS / "split_goal.yaml").read_text())
    load_plan((PLANS / "split.yaml").read_text())  # no goals: its holdout stays as it left
    by_route: dict[str, list[str]] = {}
    for n in range(60):
        email = f"c{n}@example.com"
        enrollment = engine.enroll("acme", email, "goal-test")
        route = NodeVisit.get(NodeVisit.enrollment == enrollment.id, NodeVisit.node == "test").route
        by_route.setdefault(route, []).append(email)
    assert all(len(by_route[route]) >= 4 for route in ("a", "b", HOLDOUT))
    buyers = {"a": 1, "b": 3, HOLDOUT: 2}
    for route, count in buyers.items():
        for email in by_route[route][:count]:
            # The holdout contact left the plan at enrollment; the goal still credits it.
            assert track("acme", email, "purchased", {"amount": 10}, event_id=f"o-{email}").moved == 1
            # The same order reported twice converts nobody twice.
            assert track("acme", email, "purchased", event_id=f"o-{email}").moved == 0
    held = Enrollment.select().join(Contact).where(Contact.email == by_route[HOLDOUT][0]).get()
    assert (held.status, held.exit_reason) == (Enrollment.CONVERTED, "goal:purchased")
    untouched = Enrollment.select().join(Contact).where(Contact.email == by_route[HOLDOUT][-1]).get()
    assert (untouched.status, untouched.exit_reason) == (Enrollment.EXITED, HOLDOUT)
    # A plan without goals: its holdout contact is not converted by any event.
    others = [engine.enroll("acme", f"other{n}@example.com", "subject-test") for n in range(20)]
    other = next(e for e in Enrollment.select().where(Enrollment.id.in_([e.id for e in others]))
                 if e.exit_reason == HOLDOUT)
    track("acme", other.contact.email, "purchased")
    assert Enrollment.get_by_id(other.id).status == Enrollment.EXITED

    (result,) = experiment_results(plan_name="goal-test")
    assert result["columns"][-1] == "converted"
    rows = {row["arm"]: row for row in result["arms"]}
    for route, count in buyers.items():
        assert rows[route]["counts"]["converted"] == count
        assert rows[route]["rates"]["converted"] == count / len(by_route[route])
    assert rows[HOLDOUT]["counts"]["sent"] == 0
    # The holdout is compared with the first arm on conversions only: the lift of the mail.
    assert set(rows[HOLDOUT]["versus_first"]) == {"converted"}
    converted = rows[HOLDOUT]["versus_first"]["converted"]
    assert converted["p_value"] == pytest.approx(compare_proportions(
        2, len(by_route[HOLDOUT]), 1, len(by_route["a"])).p_value)
    assert rows["b"]["versus_first"]["converted"]["difference"] == pytest.approx(
        3 / len(by_route["b"]) - 1 / len(by_route["a"]))
