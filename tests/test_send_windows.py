"""Per-node send windows over the plan's, and tenant blackout dates in each contact's time
zone: when a send is scheduled, and where a held send waits; the CLI that sets them."""

from __future__ import annotations

from datetime import date, datetime

import pytest
from click.testing import CliRunner

from outreach_actors.cli import main
from outreach_actors.domain import engine
from outreach_actors.domain import mail as delivery
from outreach_actors.domain.blackouts import add_blackout, list_blackouts, remove_blackout
from outreach_actors.domain.mail.holds import send_hold
from outreach_actors.domain.mail.send_order import send_scope
from outreach_actors.domain.plans import PlanError, validate_plan
from outreach_actors.domain.store.models import ScheduledAction, SenderIdentity, Tenant
from outreach_actors.domain.windows import next_send_time

from .factories import load_plan, make_tenant

WINDOWED_PLAN = (__import__("pathlib").Path(__file__).parent / "samples" /
                 "windowed_plan.yaml").read_text()


@pytest.fixture
def acme(db) -> None:
    make_tenant()
    load_plan(WINDOWED_PLAN)


def scheduled(email: str, now: datetime, timezone: str | None = None) -> datetime:
    enrollment = engine.enroll("acme", email, "breakup", timezone=timezone, now=now)
    return ScheduledAction.get(ScheduledAction.enrollment == enrollment).run_at


def test_a_node_window_beats_the_plans() -> None:
    plan = validate_plan(WINDOWED_PLAN)
    assert plan.window_of("intro") is plan.send_window
    assert plan.window_of("breakup").days == ["tue"]
    # A Wednesday at 10:00 in New York: the plan's window is open, the node's is next Tuesday.
    wednesday = datetime(2026, 12, 2, 15, 0)
    assert next_send_time(wednesday, plan.window_of("intro"), "America/New_York") == wednesday
    assert next_send_time(wednesday, plan.window_of("breakup"), "America/New_York") == \
        datetime(2026, 12, 8, 14, 0)  # 09:00 in New York


def test_blackout_dates_hold_sends_in_the_contacts_zone(acme) -> None:
    add_blackout("acme", date(2026, 12, 24), date(2026, 12, 26))
    # 23 December 20:00 UTC: already the 24th in Tokyo (held past the 26th and the
    # weekend, to Monday 28th, 09:00 there), still the 23rd in New York (in its window:
    # at once).
    now = datetime(2026, 12, 23, 20, 0)
    assert scheduled("tokyo@example.jp", now, "Asia/Tokyo") == datetime(2026, 12, 28, 0, 0)
    assert scheduled("ny@example.com", now, "America/New_York") == now
    # Lifted: at the window's opening that morning, 09:00 in Tokyo.
    assert remove_blackout("acme", date(2026, 12, 24), date(2026, 12, 26))
    assert scheduled("osaka@example.jp", now, "Asia/Tokyo") == datetime(2026, 12, 24, 0, 0)


def test_a_send_held_past_its_window_waits_for_the_next_opening(acme) -> None:
    wednesday = datetime(2026, 12, 2, 15, 0)
    enrollment = engine.enroll("acme", "ada@example.com", "breakup", timezone="Europe/Paris",
                               now=wednesday)
    action = ScheduledAction.get(ScheduledAction.enrollment == enrollment)
    order = delivery.render_for_send(action.id)
    scope = send_scope(order)
    # A send that never waited goes (it was scheduled in its window) ...
    assert send_hold(scope, wednesday, waited=False) is None
    # ... one deferred past 17:00 (a daily cap, a frequency cap) waits for 09:00 next day ...
    evening = datetime(2026, 12, 2, 17, 30)
    hold = send_hold(scope, evening, waited=True)
    assert (hold.reason, hold.until) == ("window", datetime(2026, 12, 3, 8, 0))
    # ... and one caught by a blackout waits past it.
    add_blackout("acme", date(2026, 12, 3), date(2026, 12, 4))
    hold = send_hold(scope, evening, waited=False)
    assert (hold.reason, hold.until) == ("blackout", datetime(2026, 12, 7, 8, 0))


def test_bad_node_policy_is_refused_with_its_path() -> None:
    bad = WINDOWED_PLAN.replace("asm_group: 4242", "asm_group: -1")
    with pytest.raises(PlanError, match="asm_group"):
        validate_plan(bad)
    bad = WINDOWED_PLAN.replace("frequency_cap: false", "frequency_cap: sometimes")
    with pytest.raises(PlanError, match="frequency_cap"):
        validate_plan(bad)
    bad = WINDOWED_PLAN.replace("stop: {type: exit}", "stop: {type: exit, asm_group: 5}")
    with pytest.raises(PlanError, match="nodes.stop: only email nodes take send_window"):
        validate_plan(bad)


def test_blackouts_are_checked(acme) -> None:
    with pytest.raises(ValueError, match="ends on or after its first day"):
        add_blackout("acme", date(2026, 12, 26), date(2026, 12, 24))
    with pytest.raises(ValueError, match="at most 366 days"):
        add_blackout("acme", date(2026, 1, 1), date(2027, 6, 1))
    with pytest.raises(LookupError, match="no tenant 'globex'"):
        add_blackout("globex", date(2026, 12, 24), date(2026, 12, 24))


# --- the CLI ------------------------------------------------------------------------

def test_cli_sets_blackouts_frequency_caps_daily_caps_and_warmups(settings) -> None:
    make_tenant()
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(main, list(args))
        assert result.exit_code == 0, result.output
        return result.output

    assert "blackout: 2026-12-24 .. 2026-12-26" in run("tenant", "blackout", "acme",
                                                       "2026-12-24", "2026-12-26")
    assert "already a blackout" in run("tenant", "blackout", "acme", "2026-12-24", "2026-12-26")
    run("tenant", "blackout", "acme", "2026-12-31")
    assert list_blackouts("acme") == ((date(2026, 12, 24), date(2026, 12, 26)),
                                      (date(2026, 12, 31), date(2026, 12, 31)))
    assert "2026-12-31" in run("tenant", "blackout", "acme", "--list")
    run("tenant", "blackout", "acme", "2026-12-31", "--remove")
    assert len(list_blackouts("acme")) == 1

    run("tenant", "set", "acme", "--frequency-cap", "1/P2D", "--frequency-cap", "3/P7D",
        "--sender-per-day", "200")
    assert Tenant.get_by_id("acme").rate_limits == {
        "frequency_caps": [[1, "P2D"], [3, "P7D"]], "sender_per_day": 200}
    run("tenant", "set", "acme", "--no-frequency-cap")
    assert Tenant.get_by_id("acme").rate_limits == {"sender_per_day": 200}

    run("sender", "set", "sales@acme.test", "--tenant", "acme", "--per-day", "100",
        "--warmup-start", "20", "--warmup-growth", "15%", "--timezone", "Europe/Paris")
    assert SenderIdentity.get().rate_limits == {
        "sender_per_day": 100, "warmup_start": 20, "warmup_growth": 0.15,
        "timezone": "Europe/Paris"}
    # Its cap shows in `outreach stats`: day 1 of the warm-up, 20.
    output = run("stats")
    assert "sales@acme.test" in output and " 20 " in output


@pytest.mark.parametrize(("args", "message"), [
    (["tenant", "set", "acme", "--frequency-cap", "often"], "not COUNT/DURATION"),
    (["tenant", "set", "acme", "--frequency-cap", "1/P1M"], "years or months"),
    (["tenant", "set", "globex", "--sender-per-day", "5"], "no tenant 'globex'"),
    (["sender", "set", "sales@acme.test", "--tenant", "acme", "--warmup-growth", "fast"],
     "not a percentage"),
    (["sender", "set", "sales@acme.test", "--tenant", "acme", "--timezone", "Mars/Base"],
     "not an IANA time zone"),
    (["sender", "set", "who@acme.test", "--tenant", "acme", "--per-day", "5"],
     "no sender identity"),
    (["tenant", "blackout", "acme", "2026-12-26", "2026-12-24"], "ends on or after"),
    (["plan", "pause", "nope", "--tenant", "acme"], "has no plan 'nope'"),
])
def test_cli_refuses_bad_policy_in_one_line(settings, args: list[str], message: str) -> None:
    make_tenant()
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
