"""Reactions without a poll: what a unit of work schedules due soon is enqueued as soon
as it commits, and the dispatcher, still running, never makes it act twice."""

from __future__ import annotations

import time

from outreach_actors.contrib import enroll
from outreach_actors.domain import dispatch
from outreach_actors.domain.store.models import Enrollment, OutboundMessage, ScheduledAction
from outreach_actors.settings import configure
from outreach_actors.worker.actors.mail import enqueue_actions

from .conftest import make_settings, wait_until
from .factories import load_plan, make_tenant


def sent_at(email: str) -> list:
    return [message.sent_at for message in OutboundMessage.select()
            .where(OutboundMessage.to_email == email).order_by(OutboundMessage.sent_at)]


def test_a_timer_and_the_send_it_causes_go_out_with_no_dispatcher_running(
        data_dir, sqlite_db, stub_broker, stub_worker, standin) -> None:
    # Given the three-node plan (no_open after 2 s -> bump, no_click after 2 s -> stop)
    # and no dispatcher at all: only what the work itself enqueues after its commits
    configure(make_settings(data_dir, sendgrid_api_host=standin.host))
    try:
        make_tenant()
        load_plan()
        # When a host app enrolls Ada
        enrollment = enroll("acme", "ada@example.com", "onboarding", fields={"first_name": "Ada"})
        # Then the intro goes out, its no_open timer fires 2 s later, the bump goes out at
        # once, and its no_click timer ends the enrollment
        wait_until(lambda: Enrollment.get_by_id(enrollment.id).status == "completed", timeout=20)
    finally:
        configure(None)
    intro, bump = sent_at("ada@example.com")
    assert 2.0 <= (bump - intro).total_seconds() < 4.0
    assert Enrollment.get_by_id(enrollment.id).current_node == "stop"
    assert len(standin.messages) == 2


def test_an_action_enqueued_after_commit_and_by_the_dispatcher_acts_once(
        data_dir, sqlite_db, stub_broker, standin) -> None:
    configure(make_settings(data_dir, sendgrid_api_host=standin.host))
    try:
        make_tenant()
        load_plan()
        # Given Ada's first send, enqueued once her enrollment committed
        enroll("acme", "ada@example.com", "onboarding", fields={"first_name": "Ada"})
        action = ScheduledAction.get(ScheduledAction.kind == "send")
        assert action.status == "enqueued"
        assert len(stub_broker.queues["render"].queue) == 1
        # And the dispatcher enqueueing it too (forced: as if it had found the row first)
        ScheduledAction.update(status="pending").where(ScheduledAction.id == action.id).execute()
        assert dispatch.dispatch_due_actions(enqueue_actions) == 1
        assert len(stub_broker.queues["render"].queue) == 2
        # When workers run both messages
        import dramatiq

        worker = dramatiq.Worker(stub_broker, worker_timeout=100, worker_threads=4)
        worker.start()
        try:
            stub_broker.join("render")
            stub_broker.join("send")
        finally:
            worker.stop()
    finally:
        configure(None)
    # Then one email went out, from one stored message
    assert len(standin.messages) == 1
    assert OutboundMessage.select().count() == 1


def test_what_the_dispatcher_claimed_first_is_not_enqueued_again_after_commit(
        data_dir, sqlite_db, stub_broker, standin) -> None:
    configure(make_settings(data_dir, sendgrid_api_host=standin.host))
    try:
        make_tenant()
        load_plan()
        from outreach_actors.domain import engine

        # Given a unit of work whose send the dispatcher claims before the work ends
        with dispatch.dispatch_after_commit(enqueue_actions):
            engine.enroll("acme", "ada@example.com", "onboarding")
            assert dispatch.dispatch_due_actions(enqueue_actions) == 1
        # Then the after-commit dispatch found it claimed: one render message in all
        assert len(stub_broker.queues["render"].queue) == 1
    finally:
        configure(None)


def test_nothing_is_dispatched_when_the_work_raised_or_its_transaction_is_open(
        data_dir, sqlite_db, stub_broker) -> None:
    configure(make_settings(data_dir))
    try:
        make_tenant()
        load_plan()
        from outreach_actors.domain import engine
        from outreach_actors.domain.store.models import database_proxy

        # A block still inside a transaction: its rows are not committed yet
        with database_proxy.atomic():
            with dispatch.dispatch_after_commit(enqueue_actions):
                engine.enroll("acme", "ada@example.com", "onboarding")
        # A block that raised after scheduling
        try:
            with dispatch.dispatch_after_commit(enqueue_actions):
                engine.enroll("acme", "bob@example.com", "onboarding")
                raise RuntimeError("the work failed after its commit")
        except RuntimeError:
            pass
        # Then neither was enqueued: both wait, pending, for the dispatcher
        assert "render" not in stub_broker.queues or not stub_broker.queues["render"].queue
        assert {action.status for action in ScheduledAction.select()} == {"pending"}
        assert dispatch.dispatch_due_actions(enqueue_actions) == 2
    finally:
        configure(None)


def test_actions_due_beyond_the_horizon_are_left_to_the_dispatcher(
        data_dir, sqlite_db, stub_broker) -> None:
    far_plan = """
name: later
start: wait
nodes:
  wait:
    type: wait
    transitions:
      - {on: elapsed, after: P2D, to: done}
  done: {type: exit}
"""
    configure(make_settings(data_dir))
    try:
        make_tenant()
        load_plan(far_plan)
        started = time.monotonic()
        enroll("acme", "ada@example.com", "later")
        assert time.monotonic() - started < 5
        # The two-day timer stays a row; no message waits in the broker for it
        assert [action.status for action in ScheduledAction.select()] == ["pending"]
        assert not any(queue.queue for queue in stub_broker.queues.values())
    finally:
        configure(None)
