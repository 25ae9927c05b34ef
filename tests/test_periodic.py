"""Periodic work: one run per tick whatever the schedulers, purge, ambiguous-send policy."""

from __future__ import annotations

from datetime import timedelta

import dramatiq
import pytest
from periodiq import cron

from outreach_actors.domain import dispatch, engine, ingest, maintenance
from outreach_actors.domain.mail import ambiguous
from outreach_actors.domain.store import models
from outreach_actors.domain.store.models import (
    Enrollment,
    MessageEvent,
    OutboundMessage,
    ScheduledAction,
    WebhookDelivery,
    utcnow,
)
from outreach_actors.worker.middleware.periodic import tick_of

from .conftest import make_settings, wait_until
from .factories import load_plan, make_tenant, normalize_delivery


def test_a_tick_sent_by_two_schedulers_runs_once(settings, stub_broker) -> None:
    # Given two periodiq processes that both sent the 05:41 tick (their clocks a second apart)
    runs: list[str] = []

    @dramatiq.actor(broker=stub_broker, periodic=cron("* * * * *"))
    def heartbeat() -> None:
        runs.append("ran")

    now = utcnow().replace(second=0, microsecond=0).isoformat() + "+00:00"
    later = now.replace(":00+00:00", ":01+00:00")
    worker = dramatiq.Worker(stub_broker, worker_timeout=50)
    worker.start()
    try:
        heartbeat.send_with_options(scheduled_at=now)
        heartbeat.send_with_options(scheduled_at=later)
        # and one sent by hand, which always runs
        heartbeat.send()
        stub_broker.join(heartbeat.queue_name)
        worker.join()
    finally:
        worker.stop()
    # Then the tick ran once, plus the manual run.
    assert runs == ["ran", "ran"]
    assert models.PeriodicTick.select().count() == 1


def test_tick_of_floors_to_the_utc_minute() -> None:
    assert tick_of("2026-11-22T06:41:00.500000+01:00") == "2026-11-22T05:41"
    assert tick_of("2026-11-22T05:41:59+00:00") == "2026-11-22T05:41"


@pytest.fixture
def sent_message(settings):
    make_tenant()
    load_plan()
    enrollment = engine.enroll("acme", "ada@example.com", "onboarding")
    action = ScheduledAction.get(ScheduledAction.enrollment == enrollment)
    return OutboundMessage.create(
        tenant="acme", enrollment=enrollment, action=action, node="intro", dedupe_key="k",
        status="ambiguous", to_email="ada@example.com", from_email="sales@acme.test", subject="s",
        html="h", text="t", send_started_at=utcnow() - timedelta(hours=2),
    )


def test_unconfirmed_ambiguous_send_fails_by_default_and_ends_the_enrollment(sent_message,
                                                                             data_dir) -> None:
    resent: list[str] = []
    settled = ambiguous.settle_ambiguous_sends(resent.append, settings=make_settings(data_dir))
    assert settled == 1 and resent == []
    message = OutboundMessage.get_by_id(sent_message.id)
    assert message.status == "failed" and "not confirmed" in message.error
    assert Enrollment.get_by_id(sent_message.enrollment_id).status == "failed"


def test_resend_policy_sends_an_unconfirmed_ambiguous_send_again(sent_message, data_dir) -> None:
    resent: list[str] = []
    settings = make_settings(data_dir, ambiguous_send_policy="resend")
    assert ambiguous.settle_ambiguous_sends(resent.append, settings=settings) == 1
    assert resent == [sent_message.id]
    assert OutboundMessage.get_by_id(sent_message.id).status == "rendered"


def test_an_event_confirms_an_ambiguous_send_before_the_window(sent_message, data_dir) -> None:
    # Given SendGrid's `processed` event for the ambiguous message
    ingest.handle_message_event(sent_message.id, "queued", utcnow(), provider_message_id="X1")
    # Then it is sent, its timers exist, and the policy leaves it alone.
    message = OutboundMessage.get_by_id(sent_message.id)
    assert (message.status, message.provider_message_id) == ("sent", "X1")
    assert ScheduledAction.select().where(ScheduledAction.kind == "timeout").count() == 1
    assert ambiguous.settle_ambiguous_sends(lambda _: None, settings=make_settings(data_dir)) == 0


def test_purge_keeps_failed_deliveries_and_active_contacts_events(sent_message, data_dir) -> None:
    old = utcnow() - timedelta(days=40)
    processed = WebhookDelivery.create(body=b"[]", status="processed", received_at=old)
    failed = WebhookDelivery.create(body=b"{", status="failed", received_at=old, error="bad")
    MessageEvent.create(message=sent_message, type="opened", event_key="a", occurred_at=old,
                        received_at=old)
    MessageEvent.create(message=None, type="unknown", event_key="b", occurred_at=old,
                        received_at=old)
    counts = maintenance.purge_old_data(settings=make_settings(data_dir))
    assert counts["deliveries"] == 1 and counts["events"] == 1
    assert WebhookDelivery.get_or_none(WebhookDelivery.id == processed.id) is None
    assert WebhookDelivery.get_by_id(failed.id).status == "failed"
    # The active contact's open stays: its no_open timer may still look for it.
    assert MessageEvent.get(MessageEvent.event_key == "a")
    engine.exit_enrollment(sent_message.enrollment_id, "unsubscribed")
    assert maintenance.purge_old_data(settings=make_settings(data_dir))["events"] == 1


def test_each_message_gets_a_connection_and_gives_it_back(settings, stub_broker) -> None:
    import sqlite3

    from outreach_actors.domain.store.models import database_proxy

    # Given one worker thread running the same actor twice
    connections: list[sqlite3.Connection] = []
    previous_was_closed: list[bool] = []

    @dramatiq.actor(broker=stub_broker)
    def query(n: int) -> None:
        if connections:  # (SQLite connections may only be touched by their own thread)
            try:
                connections[-1].execute("SELECT 1")
                previous_was_closed.append(False)
            except sqlite3.ProgrammingError:
                previous_was_closed.append(True)
        connections.append(database_proxy.obj.connection())
        models.Tenant.select().count()

    worker = dramatiq.Worker(stub_broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        query.send(1)
        stub_broker.join(query.queue_name)
        query.send(2)
        stub_broker.join(query.queue_name)
        worker.join()
    finally:
        worker.stop()
    # Then the first message's connection was closed before the second ran,
    # and the second got a fresh one.
    assert previous_was_closed == [True]
    assert connections[0] is not connections[1]


def test_workers_poll_the_timer_and_reaction_queues_often_and_the_others_seldom(data_dir) -> None:
    from outreach_actors.worker.broker import make_broker
    from outreach_actors.worker.middleware.polling import (
        RENDER_QUEUE,
        SEND_QUEUE,
        TIMER_QUEUE,
        WEBHOOK_QUEUE,
    )

    broker = make_broker(make_settings(data_dir, worker_poll_interval="PT0.05S",
                                       worker_idle_poll_interval="PT0.7S"))

    @dramatiq.actor(broker=broker, queue_name=TIMER_QUEUE)
    def fire() -> None:
        pass

    @dramatiq.actor(broker=broker, queue_name=RENDER_QUEUE)
    def render() -> None:
        pass

    @dramatiq.actor(broker=broker, queue_name=SEND_QUEUE)
    def send() -> None:
        pass

    @dramatiq.actor(broker=broker, queue_name=WEBHOOK_QUEUE)
    def webhook() -> None:
        pass

    @dramatiq.actor(broker=broker, queue_name="periodic")
    def tick() -> None:
        pass

    worker = dramatiq.Worker(broker, worker_timeout=1000)
    worker.start()
    try:
        # The consumers are built with the worker's interval and set their own as their
        # threads start: give the threads a moment, then compare.
        # An event's reaction waits on the webhook, render and send queues in turn;
        # their delay queues (retries, deferrals) and the periodic queue wait longer.
        expected = {TIMER_QUEUE: 50, f"{TIMER_QUEUE}.DQ": 50, "periodic": 700, "periodic.DQ": 700}
        for queue in (WEBHOOK_QUEUE, RENDER_QUEUE, SEND_QUEUE):
            expected.update({queue: 50, f"{queue}.DQ": 700})

        def intervals() -> dict[str, int]:
            return {name: consumer.worker_timeout for name, consumer in worker.consumers.items()}

        wait_until(lambda: intervals() == expected, timeout=5.0)
        assert intervals() == expected
        assert worker.worker_timeout == 700
        assert all(thread.timeout == 0.7 for thread in worker.workers)
    finally:
        worker.stop()


@pytest.mark.parametrize("name", ["worker_poll_interval", "worker_idle_poll_interval"])
def test_a_zero_polling_interval_is_refused_naming_the_setting(data_dir, name) -> None:
    from outreach_actors.settings import SettingsError, env_name
    from outreach_actors.worker.middleware import project_middleware

    with pytest.raises(SettingsError, match=env_name(name)):
        project_middleware(make_settings(data_dir, **{name: "PT0S"}))


def test_a_send_cut_short_whose_proof_is_already_stored_is_resolved_at_once(sent_message,
                                                                           data_dir) -> None:
    # Given a worker killed between SendGrid's 202 and its commit: the row says
    # `sending`, and SendGrid's `delivered` arrived before the lease ran out.
    OutboundMessage.update(status="sending").where(OutboundMessage.id == sent_message.id).execute()
    MessageEvent.create(message=sent_message, type="delivered", event_key="sg:d1",
                        occurred_at=utcnow() - timedelta(minutes=90))
    # When the reconciler finds it, it does not wait out the ambiguous window (an hour).
    assert dispatch.reconcile_stuck_messages(lambda _: None, settings=make_settings(data_dir)) == (0, 1)
    message = OutboundMessage.get_by_id(sent_message.id)
    assert message.status == "sent"
    assert ScheduledAction.select().where(ScheduledAction.kind == "timeout").count() == 1


def test_a_proof_after_the_policy_failed_the_send_records_it_sent_late(sent_message,
                                                                      data_dir) -> None:

    assert ambiguous.settle_ambiguous_sends(lambda _: None, settings=make_settings(data_dir)) == 1
    # SendGrid retries its events for 24 hours: a `delivered` comes after the window.
    body = (b'[{"event": "delivered", "email": "ada@example.com", "timestamp": 1700000000, '
            b'"sg_event_id": "late", "outreach_message_id": "' + sent_message.id.encode()
            + b'", "outreach_tenant": "acme"}]')
    delivery = WebhookDelivery.create(body=body, headers={})
    assert normalize_delivery(delivery.id, settings=make_settings(data_dir)).stored == 1
    message = OutboundMessage.get_by_id(sent_message.id)
    assert message.status == "sent" and "confirmed late" in message.error
    # The enrollment the policy ended stays ended; no timer starts for it.
    assert Enrollment.get_by_id(sent_message.enrollment_id).status == "failed"
    assert ScheduledAction.select().where(ScheduledAction.kind == "timeout").count() == 0
