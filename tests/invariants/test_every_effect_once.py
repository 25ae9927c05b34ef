"""Invariant 2: every effect happens once, whatever is delivered twice. Each actor is
run twice here, or raced, and the effect is counted."""

from __future__ import annotations

import threading
from datetime import timedelta

import dramatiq
import pytest

from outreach_actors.domain import dispatch
from outreach_actors.domain.store.models import (
    Enrollment,
    MessageEvent,
    NodeVisit,
    OutboundMessage,
    ScheduledAction,
    Suppression,
    WebhookDelivery,
    utcnow,
)
from outreach_actors.worker.actors.webhooks import (
    normalize_webhook,
)
from outreach_actors.worker.runtime import rebind_actors
from tests.test_ingest import reload, sample_world, store

from ..conftest import make_settings
from ..factories import normalize_delivery
from ..test_events import SAMPLE_BODY, SAMPLE_EVENTS


@pytest.mark.parametrize("enrollments", ["sqlite_db", "postgres_db"], indirect=True)
def test_concurrent_dispatchers_never_enqueue_an_action_twice(enrollments, data_dir) -> None:
    settings = make_settings(data_dir, dispatch_batch_size=3)
    enqueued: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(4)

    def record(due):
        with lock:
            enqueued.extend(action.id for action, _ in due)

    def run():
        barrier.wait()
        dispatch.dispatch_due_actions(record, settings=settings)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(enqueued) == sorted({a.id for a in ScheduledAction.select()})
    assert len(enqueued) == 20


def test_normalizing_twice_has_every_effect_once(db) -> None:
    sample_world()
    delivery_id = store(SAMPLE_BODY)
    normalize_delivery(delivery_id)
    snapshot = (MessageEvent.select().count(), NodeVisit.select().count(),
                Suppression.select().count(), [e.version for e in Enrollment.select()])
    # The same delivery again, reset as a replay would, and the same body delivered twice.
    WebhookDelivery.update(status="received").execute()
    again = normalize_delivery(delivery_id)
    second = normalize_delivery(store(SAMPLE_BODY))
    assert again.stored == second.stored == 0
    assert second.duplicates == len(SAMPLE_EVENTS)
    assert snapshot == (MessageEvent.select().count(), NodeVisit.select().count(),
                        Suppression.select().count(), [e.version for e in Enrollment.select()])


def test_the_actor_run_twice_stores_and_applies_each_event_once(settings, stub_broker) -> None:
    rebind_actors(stub_broker, [normalize_webhook])
    enrollments = sample_world()
    delivery_id = store(SAMPLE_BODY)
    worker = dramatiq.Worker(stub_broker, worker_timeout=50, worker_threads=2)
    worker.start()
    try:
        normalize_webhook.send(delivery_id)
        normalize_webhook.send(delivery_id)
        stub_broker.join(normalize_webhook.queue_name)
        worker.join()
    finally:
        worker.stop()
    assert MessageEvent.select().count() == len(SAMPLE_EVENTS)
    assert WebhookDelivery.get_by_id(delivery_id).status == "processed"
    assert reload(enrollments["ada@example.com"]).current_node == "thanks"
    assert NodeVisit.select().where(
        NodeVisit.enrollment == enrollments["ada@example.com"].id).count() == 2


def test_the_periodic_actors_run_twice_enqueue_and_change_nothing_more(sent_message,
                                                                      stub_broker) -> None:
    # Given what crashes leave behind: a webhook delivery stored and never normalized, a
    # message whose send was lost, an ambiguous send past its window (sent_message), and
    # the contact's first send due now.
    from outreach_actors.worker.actors import mail, periodic, webhooks
    from outreach_actors.worker.runtime import rebind_actors

    rebind_actors(stub_broker, [webhooks.normalize_webhook, mail.render, mail.send,
                                mail.fire_timeouts, periodic.dispatch_due])
    long_ago = utcnow() - timedelta(hours=2)
    WebhookDelivery.create(body=b"[]", received_at=long_ago)
    OutboundMessage.create(
        tenant="acme", dedupe_key="lost", status="rendered", to_email="bob@example.com",
        from_email="sales@acme.test", subject="s", html="h", text="t", created_at=long_ago)
    ScheduledAction.update(run_at=utcnow() - timedelta(seconds=1)).execute()

    def state() -> tuple:
        queued = sum(len(queue.queue) for queue in stub_broker.queues.values())  # and .DQ ones
        rows = [(m.id, m.status, m.requeued_at is not None) for m in OutboundMessage.select()]
        actions = [(a.id, a.status) for a in ScheduledAction.select()]
        deliveries = [(d.id, d.status) for d in WebhookDelivery.select()]
        enrollments = [(e.id, e.status) for e in Enrollment.select()]
        return queued, sorted(rows), sorted(actions), deliveries, enrollments

    def run_every_periodic_actor() -> None:
        periodic.dispatch_due.fn(remaining=0)  # 0: this run does not send itself again
        periodic.reconcile.fn()
        periodic.purge.fn()

    before = state()
    run_every_periodic_actor()
    first = state()
    # The first run did its work: the due send, the lost send and the delivery were
    # enqueued (a pipeline's second step travels with its first), the ambiguous
    # send was settled by the default policy.
    assert first[0] == before[0] + 3
    assert "failed" in {status for _, status, _ in first[1]}
    run_every_periodic_actor()
    assert state() == first
