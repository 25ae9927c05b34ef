"""outreach plan migrate: enrollments in flight move to another version, timers recomputed."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from outreach_actors.cli.commands import main
from outreach_actors.domain import engine, timers
from outreach_actors.domain.host_events import track
from outreach_actors.domain.migrate import MigrationError, migrate
from outreach_actors.domain.store.models import (
    Enrollment,
    OutboundMessage,
    ScheduledAction,
    insert_rows,
    utcnow,
)

from .factories import load_plan, make_tenant

PLANS = Path(__file__).parent / "samples" / "plans"


@pytest.fixture
def two_versions(db):
    make_tenant()
    load_plan((PLANS / "trial.yaml").read_text())
    return "acme"


def _sent(enrollment: Enrollment, at) -> OutboundMessage:
    """The intro email of ``enrollment``, as the send would record it at ``at``."""
    [send] = ScheduledAction.select().where(ScheduledAction.enrollment == enrollment.id)
    ScheduledAction.update(status="done").where(ScheduledAction.id == send.id).execute()
    message = OutboundMessage.create(
        tenant="acme", enrollment=enrollment.id, action=send.id, node=send.node,
        dedupe_key=f"m{enrollment.id}", status="sent", to_email="x@example.com",
        from_email="s@acme.test", subject="s", html="h", text="t", sent_at=at)
    engine.after_send(message)
    return message


def test_a_dry_run_counts_and_apply_moves_with_timers_from_their_origin(two_versions) -> None:
    sent_at = utcnow() - timedelta(days=1)
    ada = engine.enroll("acme", "ada@example.com", "trial")
    message = _sent(ada, sent_at)
    engine.enroll("acme", "bob@example.com", "trial")
    track("acme", "bob@example.com", "booked_meeting")  # bob waits at `waiting`
    load_plan((PLANS / "trial_v2.yaml").read_text())

    with pytest.raises(MigrationError, match="node 'intro' .* map it with --map intro=NODE"):
        migrate("acme", "trial", 2)
    with pytest.raises(MigrationError, match="version 2 has no node 'nowhere'"):
        migrate("acme", "trial", 2, mapping={"intro": "nowhere"})

    dry = migrate("acme", "trial", 2, mapping={"intro": "welcome"})
    assert dict(dry.moves) == {(1, "intro", "welcome"): 1, (1, "waiting", "waiting"): 1}
    assert Enrollment.get_by_id(ada.id).current_node == "intro"  # a dry run moves nothing

    done = migrate("acme", "trial", 2, mapping={"intro": "welcome"}, apply=True)
    assert done.moved == 2
    assert migrate("acme", "trial", 2, apply=True).total == 0  # again: nothing left to move
    ada = Enrollment.get_by_id(ada.id)
    assert (ada.current_node, ada.plan.version) == ("welcome", 2)
    # Ada's no_open timer counts from her original send: P5D in version 2.
    [timer] = ScheduledAction.select().where(ScheduledAction.enrollment == ada.id,
                                             ScheduledAction.status == "pending")
    assert (timer.node, timer.event, timer.run_at) == ("welcome", "no_open", sent_at + timedelta(days=5))
    # The timer it replaces stays cancelled in the visit it belonged to, so no audit
    # mistakes it for a timer cancelled within her current visit.
    [replaced] = ScheduledAction.select().where(ScheduledAction.enrollment == ada.id,
                                                ScheduledAction.status == "cancelled")
    assert (replaced.node, replaced.visit_version) == ("intro", ada.version - 1)
    # The email she was sent belongs to her visit of the new node: engagement still counts.
    assert OutboundMessage.get_by_id(message.id).node == "welcome"
    send = ScheduledAction.get_by_id(OutboundMessage.get_by_id(message.id).action_id)
    assert (send.node, send.visit_version) == ("welcome", ada.version)
    # Bob's wait counts from when he entered it: P1D in version 2, not P3D.
    bob = Enrollment.get(Enrollment.id != ada.id)
    [wait] = ScheduledAction.select().where(ScheduledAction.enrollment == bob.id,
                                            ScheduledAction.status == "pending")
    assert wait.run_at == bob.node_entered_at + timedelta(days=1)
    assert timers.fire_timeout(wait.id, now=wait.run_at) == "fired"
    assert Enrollment.get_by_id(bob.id).current_node == "stop"
    # The new version's goal applies.
    assert track("acme", "ada@example.com", "purchased", {"amount": 1}).moved == 1


def test_the_cli_dry_run_then_apply(settings) -> None:
    # The command reads the database from the settings: SQLite here.
    make_tenant()
    load_plan((PLANS / "trial.yaml").read_text())
    engine.enroll("acme", "ada@example.com", "trial")
    load_plan((PLANS / "trial_v2.yaml").read_text())
    runner = CliRunner()
    refused = runner.invoke(main, ["plan", "migrate", "--plan", "trial", "--tenant", "acme",
                                   "--to-version", "2"])
    assert refused.exit_code == 1 and "--map intro=NODE" in refused.output
    args = ["plan", "migrate", "--plan", "trial", "--tenant", "acme", "--to-version", "2",
            "--map", "intro=welcome"]
    dry = runner.invoke(main, args)
    assert dry.exit_code == 0 and "would move" in dry.output
    assert Enrollment.get().plan.version == 1
    applied = runner.invoke(main, [*args, "--apply"])
    assert applied.exit_code == 0 and "migrated 1 of 1" in applied.output
    assert Enrollment.get().plan.version == 2


def test_an_event_read_before_a_migration_moves_the_enrollment_after_it(two_versions) -> None:
    # Given Ada's intro, sent, and an event of it read before a migration committed
    ada = engine.enroll("acme", "ada@example.com", "trial")
    message = _sent(ada, utcnow())
    read_before = engine.EventFor(ada.id, "booked_meeting", node="intro",
                                  visit_version=Enrollment.get_by_id(ada.id).version,
                                  message_id=message.id)
    load_plan((PLANS / "trial_v2.yaml").read_text())
    migrate("acme", "trial", 2, mapping={"intro": "welcome"}, apply=True)
    # Then the event is of the email's visit, which the migration moved: it still counts
    # (without its email, the same event is stale and moves no one)
    assert engine.process_events([read_before._replace(message_id=None)]) == set()
    assert engine.process_events([read_before]) == {ada.id}
    assert Enrollment.get_by_id(ada.id).current_node == "waiting"
    # and once Ada has left that visit, an event of its email is stale again
    assert engine.process_events([read_before]) == set()
    assert Enrollment.get_by_id(ada.id).current_node == "waiting"


def test_timers_a_send_in_flight_started_for_the_old_visit_start_again_in_the_new(
        two_versions) -> None:
    # Given Ada's intro claimed for sending (in flight, no timers yet) when a migration
    # carries her visit, and her email, to version 2
    ada = engine.enroll("acme", "ada@example.com", "trial")
    [send] = ScheduledAction.select().where(ScheduledAction.enrollment == ada.id)
    message = OutboundMessage.create(
        tenant="acme", enrollment=ada.id, action=send.id, node=send.node, dedupe_key="m-ada",
        status="sending", to_email="ada@example.com", from_email="s@acme.test", subject="s",
        html="h", text="t")
    old_visit, old_plan = send.visit_version, ada.plan_id
    load_plan((PLANS / "trial_v2.yaml").read_text())
    migrate("acme", "trial", 2, mapping={"intro": "welcome"}, apply=True)
    # when the send completes with the visit it had read (as send.py marks it sent)
    sent_at = utcnow() - timedelta(days=6)
    OutboundMessage.update(status="sent", sent_at=sent_at).where(
        OutboundMessage.id == message.id).execute()
    insert_rows(ScheduledAction, engine.timers_after_send(
        message.id, ada.id, send.id, sent_at, node="intro", visit_version=old_visit,
        plan_id=old_plan), ignore_conflicts=True)
    [stale] = ScheduledAction.select().where(ScheduledAction.kind == "timeout")
    # Then firing that timer starts the email's timer again in the visit it moved to
    assert timers.fire_timeout(stale.id, now=utcnow()) == "moved-on"
    [again] = ScheduledAction.select().where(ScheduledAction.kind == "timeout",
                                             ScheduledAction.status == "pending")
    ada = Enrollment.get_by_id(ada.id)
    assert (again.node, again.visit_version) == ("welcome", ada.version)
    assert again.run_at == sent_at + timedelta(days=5)  # version 2's no_open: P5D
    assert timers.fire_timeout(again.id, now=utcnow()) == "fired"
    assert Enrollment.get_by_id(ada.id).current_node == "waiting"
