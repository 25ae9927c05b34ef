"""The plan simulation harness: plans run on the real engine with a virtual clock, the
demo plan and one plan of each node type, as a team would test its own in CI."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from outreach_actors.cli.commands import main
from outreach_actors.domain.plans import validate_plan
from outreach_actors.domain.splits import HOLDOUT, assignment_point, choose_route
from outreach_actors.domain.store import models
from outreach_actors.domain.store.models import Suppression
from outreach_actors.testing import PlanSimulator, SimulationError, simulate

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "templates"
DEMO_PLAN = TEMPLATES / "onboarding.yaml"
PLANS = Path(__file__).resolve().parent / "samples" / "plans"
START = datetime(2030, 1, 7, 9, 0)  # the harness's default: a Monday, 09:00 UTC


@pytest.fixture(scope="module")
def demo():
    with PlanSimulator(DEMO_PLAN, templates_dir=TEMPLATES) as simulator:
        yield simulator


def test_the_demo_plan_thanks_a_clicker(demo) -> None:
    result = demo.run({"email": "ada@example.com", "first_name": "Ada"},
                      ["at +1h opened", "at +2h clicked", "at +2d nothing"])
    assert result.path == ["intro", "thanks", "done"]
    assert result.status == "completed"
    intro, thanks = result.emails
    assert intro.subject == "Welcome, Ada" and "Hi Ada," in intro.text
    assert intro.sent_at == START and thanks.sent_at == START + timedelta(hours=2)
    assert thanks.subject == "Thanks for taking a look"
    # The request is the one the SendGrid client would post, with our custom args.
    assert intro.request["custom_args"]["outreach_tenant"] == "simulation"


def test_the_demo_plan_bumps_a_contact_who_never_opens_then_stops(demo) -> None:
    result = demo.run({"email": "grace@example.com", "first_name": "Grace"}, ["at +10d nothing"])
    assert result.path == ["intro", "bump", "stop"]
    assert [(email.node, email.sent_at - START) for email in result.emails] == [
        ("intro", timedelta(0)), ("bump", timedelta(hours=72))]
    assert result.email("bump").subject == "Did you see this, Grace?"


def test_the_demo_plan_stops_at_a_bounce_and_suppresses_the_address(demo) -> None:
    result = demo.run("bouncer@example.com", ["bounce"])
    assert result.path == ["intro", "stop"]
    assert result.email("intro").subject == "Welcome, there"
    # The webhook went through ingest: a hard bounce suppresses (checked in the
    # simulator's own database, bound while it runs).
    with demo._bound():
        assert Suppression.select().where(Suppression.value == "bouncer@example.com").exists()


def test_the_send_window_holds_a_weekend_enrollment_until_monday() -> None:
    saturday = datetime(2030, 1, 5, 12, 0)
    result = simulate(DEMO_PLAN, "alan@example.com", ["at +3d nothing"],
                      templates_dir=TEMPLATES, start=saturday)
    assert result.emails[0].sent_at == datetime(2030, 1, 7, 9, 0)


def test_an_email_plan_moves_on_click_bounce_or_no_click() -> None:
    with PlanSimulator(PLANS / "email.yaml") as simulator:
        assert simulator.run("a@example.com", ["at +5m clicked"]).path == ["hello", "clicked"]
        assert simulator.run("b@example.com", ["bounced"]).path == ["hello", "bounced"]
        quiet = simulator.run("c@example.com", ["at +1d opened", "at +3d nothing"])
        assert quiet.path == ["hello", "quiet"] and quiet.ended_at == START + timedelta(days=3)
        # A step before the timer: the contact is still waiting at the node.
        waiting = simulator.run("d@example.com", ["at +1d nothing"])
        assert (waiting.path, waiting.status) == (["hello"], "active")


def test_a_plan_with_its_own_sender_mails_from_it() -> None:
    plan = {**validate_plan((PLANS / "email.yaml").read_text()).to_definition(),
            "sender": "sales@acme.test"}
    result = simulate(plan, "s@example.com", ["clicked"])
    assert result.path == ["hello", "clicked"] and result.emails[0].from_email == "sales@acme.test"


def test_a_wait_plan_waits_in_virtual_time() -> None:
    result = simulate(PLANS / "wait.yaml", {"email": "w@example.com", "first_name": "Wes"},
                      until=timedelta(days=4))
    assert result.path == ["pause", "nudge", "done"]
    assert result.email("nudge").sent_at == START + timedelta(days=3)
    assert result.email("nudge").subject == "Still there, Wes?"


def test_an_exit_plan_completes_at_once_without_mail() -> None:
    result = simulate(PLANS / "exit.yaml", "x@example.com")
    assert (result.path, result.status, result.emails) == (["done"], "completed", [])


def test_a_split_plan_takes_the_arm_production_would() -> None:
    plan = validate_plan((PLANS / "split.yaml").read_text())
    with PlanSimulator(plan) as simulator:
        for email in ["ada@example.com", "fay@example.com", "contact-13@example.com"]:
            result = simulator.run({"email": email, "first_name": "X"}, ["at +3d nothing"])
            arm = choose_route(assignment_point(simulator.tenant, email, plan.name, 1, "test"),
                               plan.node("test"))
            assert result.routes == {"test": arm}
            if arm == HOLDOUT:
                assert (result.path, result.exit_reason, result.emails) == (["test"], HOLDOUT, [])
            else:
                target = {"a": "short", "b": "long"}[arm]
                assert result.path == ["test", target, "stop"]
                assert [email.node for email in result.emails] == [target]


@pytest.mark.parametrize(("events", "message"), [
    (["at +1h teleported"], "unknown event 'teleported'"),
    (["at +2h nothing", "at +1h opened"], "earlier than the step before it"),
    (["at soon opened"], "expected '[at +DURATION] EVENT'"),
    (["at +1fortnight opened"], "is no duration"),
    (['purchased {"amount": }'], "the properties are not JSON"),
    (["purchased [1]"], "expected '[at +DURATION] EVENT'"),
    (['clicked {"url": "x"}'], "only a host event"),
    (["Purchased"], "unknown event 'Purchased'"),  # host event names keep their case
])
def test_a_bad_script_is_a_clear_error(events, message) -> None:
    with pytest.raises(SimulationError, match=message.replace("[", r"\[").replace("+", r"\+")):
        simulate(PLANS / "checkout.yaml", "e@example.com", events)


def test_an_event_before_any_email_is_a_clear_error() -> None:
    with pytest.raises(SimulationError, match="no email has been sent yet"):
        simulate(PLANS / "exit.yaml", "e@example.com", ["at +1h opened"])


def test_the_harness_leaves_the_bound_database_and_the_clock_as_they_were(db) -> None:
    bound = models.database_proxy.obj
    simulate(PLANS / "email.yaml", "e@example.com", ["at +3d nothing"])
    assert models.database_proxy.obj is bound
    assert abs(models.utcnow() - datetime.utcnow()) < timedelta(minutes=1)


def test_outreach_plan_test_prints_each_path_and_fails_on_an_unmet_expectation(tmp_path) -> None:
    runner = CliRunner()
    passed = runner.invoke(main, ["plan", "test", str(PLANS / "split.yaml"),
                                  str(PLANS / "split_script.yaml")])
    assert passed.exit_code == 0, passed.output
    assert "ada@example.com: test -> long -> thanks (completed)  [test: b]" in passed.output
    assert "contact-13@example.com: test (exited)  [test: holdout]" in passed.output
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text((PLANS / "split_script.yaml").read_text().replace(
        "path: [test, long, thanks]", "path: [test, short, thanks]"))
    failed = runner.invoke(main, ["plan", "test", str(PLANS / "split.yaml"), str(wrong)])
    assert failed.exit_code == 1
    assert "expected path ['test', 'short', 'thanks'], got ['test', 'long', 'thanks']" in failed.output


def test_given_productions_tenant_and_version_the_simulation_shows_productions_arm(db) -> None:
    from outreach_actors.domain import engine
    from outreach_actors.domain.store.models import NodeVisit

    from .factories import load_plan, make_tenant

    make_tenant()
    text = (PLANS / "split.yaml").read_text()
    load_plan(text)
    load_plan(text)  # production runs version 2
    emails = [f"p{n}@example.com" for n in range(12)]
    production = {}
    for email in emails:
        enrollment = engine.enroll("acme", email, "subject-test", fields={"first_name": "P"})
        production[email] = NodeVisit.get(NodeVisit.enrollment == enrollment.id,
                                          NodeVisit.node == "test").route
    with PlanSimulator(text, tenant="acme", plan_version=2) as simulator:
        simulated = {email: simulator.run({"email": email, "first_name": "P"}).routes["test"]
                     for email in emails}
    assert simulated == production and len(set(production.values())) > 1


@pytest.mark.parametrize(("script", "message"), [
    ("contacts: []", "a script is a mapping with `contacts`"),
    ("contacts: [{email: 5}]", "a contact is an address or a mapping with `email`"),
    ("contacts: [{email: not-an-address}]", "contact 'not-an-address': "),
    ("contacts: [{email: a@example.com, fields: [1]}]", "contacts[0].fields: expected a mapping"),
    ("contacts: [{email: a@example.com, events: opened}]", "contacts[0].events: expected a list"),
    ("contacts: [{email: a@example.com, expect: 3}]", "contacts[0].expect: expected a mapping"),
    ("contacts: [{email: a@example.com, until: soon}]", "'soon' is no duration"),
    ("contacts: [{email: a@example.com, expect: {colour: red}}]", "expect.colour: unknown"),
    ("contacts: [[", "not valid YAML"),
])
def test_outreach_plan_test_explains_a_bad_script(tmp_path, script, message) -> None:
    path = tmp_path / "script.yaml"
    path.write_text(script)
    result = CliRunner().invoke(main, ["plan", "test", str(PLANS / "email.yaml"), str(path)])
    assert result.exit_code == 1 and message in result.output, result.output
    assert "Traceback" not in result.output


def test_a_branch_plan_routes_on_a_host_events_properties_and_a_clicks_url() -> None:
    with PlanSimulator(PLANS / "branch_on_event.yaml") as simulator:
        big = simulator.run("a@example.com", ['at +1d upgraded {"plan": "team", "seats": 12}'])
        assert (big.path, big.routes) == (["intro", "route", "big_team"], {"route": "big_team"})
        team = simulator.run("b@example.com", ['at +1d upgraded {"plan": "team", "seats": 2}'])
        assert team.routes == {"route": "team"}
        # A click reported through the Event Webhook and ingest: its url reaches the branch.
        clicked = simulator.run("c@example.com", ["at +1h clicked"])
        assert (clicked.path, clicked.routes) == (["intro", "clicked", "other_link"],
                                                  {"clicked": "other_link"})
        quiet = simulator.run("d@example.com", ["at +4d nothing"])
        assert (quiet.path, quiet.status) == (["intro", "done"], "completed")


def test_a_branch_plan_routes_on_the_contacts_fields() -> None:
    with PlanSimulator(PLANS / "branch.yaml") as simulator:
        assert simulator.run({"email": "a@example.com", "tier": "enterprise"}).path == [
            "route", "enterprise"]
        assert simulator.run({"email": "b@example.com", "seats": 3, "regions": ["emea"]}).routes == {
            "route": "emea"}
        assert simulator.run({"email": "c@example.com"}).routes == {"route": "default"}


def test_a_goal_plan_converts_on_the_goal_and_not_below_its_condition() -> None:
    with PlanSimulator(PLANS / "checkout.yaml") as simulator:
        buyer = simulator.run({"email": "a@example.com", "first_name": "Ada"},
                              ['at +1s purchased {"amount": 150}'])
        assert (buyer.converted, buyer.goal, buyer.status) == (True, "purchased", "converted")
        assert (buyer.path, buyer.emails) == (["waiting"], [])
        small = simulator.run({"email": "b@example.com", "first_name": "Bob"},
                              ['at +1s purchased {"amount": 20}', "at +1m nothing"])
        assert (small.converted, small.goal) == (False, None)
        assert small.path == ["waiting", "thanks", "done"]
        assert small.email("thanks").subject == "Thanks for your order, Bob"


def test_a_holdout_contact_is_credited_with_the_goal_it_reaches_unmailed() -> None:
    plan = validate_plan((PLANS / "split_goal.yaml").read_text())
    with PlanSimulator(plan) as simulator:
        email = next(f"c{n}@example.com" for n in range(100) if choose_route(assignment_point(
            simulator.tenant, f"c{n}@example.com", plan.name, 1, "test"), plan.node("test")) == HOLDOUT)
        result = simulator.run(email, ["at +2d purchased"])
        assert (result.routes, result.emails, result.converted) == ({"test": HOLDOUT}, [], True)


def test_outreach_plan_test_runs_host_events_and_expects_a_goal() -> None:
    result = CliRunner().invoke(main, ["plan", "test", str(PLANS / "checkout.yaml"),
                                       str(PLANS / "checkout_script.yaml")])
    assert result.exit_code == 0, result.output
    assert "ada@example.com: waiting (converted)" in result.output
