"""Invariant 1: the database is the source of truth for time. A timer is a row; the
broker holds only what is due within the horizon, and a broker that lost it (flushed,
restarted, a killed worker) loses no timer: the dispatcher finds every due row again."""

from __future__ import annotations

from datetime import timedelta

from outreach_actors.domain import dispatch, engine, timers
from outreach_actors.domain.store.models import (
    Enrollment,
    MessageEvent,
    ScheduledAction,
    utcnow,
)
from outreach_actors.worker.actors.mail import fire_timeout, requeue_actions

from ..conftest import make_settings
from ..factories import load_plan, make_tenant


def test_due_actions_are_claimed_and_far_off_ones_stay(enrollments, data_dir) -> None:
    settings = make_settings(data_dir)
    now = utcnow()
    # Push half of the actions three days out.
    far = [e.id for e in enrollments[:10]]
    ScheduledAction.update(run_at=now + timedelta(days=3)).where(
        ScheduledAction.enrollment.in_(far)).execute()
    enqueued: list[tuple[int, int]] = []
    assert dispatch.dispatch_due_actions(lambda due: enqueued.extend((a.id, d) for a, d in due), now=now,
                                         settings=settings) == 10
    assert ScheduledAction.select().where(ScheduledAction.status == "pending").count() == 10
    # A second pass finds nothing new: the claim is taken.
    assert dispatch.dispatch_due_actions(lambda due: enqueued.extend((a.id, d) for a, d in due), now=now,
                                         settings=settings) == 0
    assert len(enqueued) == 10


def test_actions_due_within_the_horizon_are_enqueued_with_their_delay(enrollments, data_dir) -> None:
    settings = make_settings(data_dir)
    now = utcnow()
    ScheduledAction.update(run_at=now + timedelta(seconds=30)).execute()
    delays: list[int] = []
    dispatch.dispatch_due_actions(lambda due: delays.extend(d for _, d in due), now=now, settings=settings)
    assert len(delays) == 20 and all(29_000 <= d <= 30_000 for d in delays)


def test_an_action_whose_lease_expired_is_enqueued_again(enrollments, data_dir) -> None:
    # Given actions enqueued to a broker that then lost them (flushed, restarted)
    settings = make_settings(data_dir)
    now = utcnow()
    dispatch.dispatch_due_actions(lambda due: None, now=now, settings=settings)
    # When the lease passes with no worker finishing them
    later = now + settings.dispatch_horizon + settings.action_lease + timedelta(seconds=1)
    again: list[int] = []
    assert dispatch.reconcile_expired_leases(lambda due: again.extend(a.id for a, _ in due), now=later,
                                             settings=settings) == 20
    # Then each is enqueued again, once
    assert dispatch.reconcile_expired_leases(lambda due: again.extend(a.id for a, _ in due), now=later,
                                             settings=settings) == 0
    assert len(again) == 20


def test_a_timer_claimed_by_a_killed_worker_fires_once_its_lease_expires(settings, stub_broker,
                                                                        stub_worker) -> None:
    # The chaos run found this: a second delivery of a timer's message finds the
    # claim of the killed worker taken, returns ("replay"), and the idempotency
    # middleware marks the effect done; the reconciler's re-run was then skipped as
    # done, and the timer never fired.
    make_tenant()
    load_plan()
    enrollment = engine.enroll("acme", "ada@example.com", "onboarding")
    ScheduledAction.update(status="cancelled").execute()  # the intro email is not under test
    action = ScheduledAction.create(
        enrollment=enrollment, node="intro", kind="timeout", event="no_open", status="enqueued",
        run_at=utcnow() - timedelta(minutes=10), dedupe_key="timer", visit_version=0,
    )
    # Given a worker that claimed the timer ten minutes ago and was killed
    assert timers.claim_actions([action.id], utcnow() - timedelta(minutes=10))
    # and a second delivery of its message, which finds the claim taken
    fire_timeout.send(action.id)
    stub_broker.join(fire_timeout.queue_name)
    stub_worker.join()
    assert ScheduledAction.get_by_id(action.id).status == "running"
    # When the reconciler finds its lease expired
    assert dispatch.reconcile_expired_leases(requeue_actions, settings=settings) == 1
    stub_broker.join(fire_timeout.queue_name)
    stub_worker.join()
    # Then the timer fires, once
    assert ScheduledAction.get_by_id(action.id).status == "done"
    assert MessageEvent.select().where(MessageEvent.action == action.id).count() == 1
    assert Enrollment.get_by_id(enrollment.id).current_node == "bump"
