"""Host notifications: written with their effect, sent after commit, once, by a stable id."""

from __future__ import annotations

import json
import time
from datetime import timedelta
from pathlib import Path

import dramatiq
import pytest

from outreach_actors.domain import control, dispatch, engine, notifications
from outreach_actors.domain.host_events import track
from outreach_actors.domain.store.models import Notification, database_proxy, utcnow
from outreach_actors.settings import configure
from outreach_actors.worker.notify import send_to_host

from .conftest import make_settings
from .factories import load_plan, make_tenant

TRIAL_PLAN = (Path(__file__).parent / "samples" / "plans" / "trial.yaml").read_text()
HOST_QUEUE = "host_app"


@dramatiq.actor(queue_name=HOST_QUEUE)
def on_outreach_event(payload: dict) -> None:
    """The host app's actor, as a host declares it."""


@pytest.fixture
def host(db, stub_broker, data_dir):
    stub_broker.declare_actor(on_outreach_event)
    configure(make_settings(data_dir, notify_actor=f"{__name__}.on_outreach_event"))
    notifications.install_sender(send_to_host)
    make_tenant()
    load_plan(TRIAL_PLAN)
    yield stub_broker
    notifications.install_sender(send_to_host)


def sent(broker) -> list[tuple[str, dict]]:
    return [(message.message_id, message.args[0]) for message in
            (dramatiq.Message.decode(raw) for raw in broker.queues[HOST_QUEUE].queue)]


def test_a_goal_reached_is_sent_after_commit_with_its_stable_id(host) -> None:
    engine.enroll("acme", "ada@example.com", "trial")
    with dispatch.dispatch_after_commit(lambda due: None):
        track("acme", "ada@example.com", "purchased", {"amount": 20})
    [(message_id, payload)] = sent(host)
    row = Notification.get()
    assert message_id == row.id == payload["id"] and row.status == "sent"
    assert {key: payload[key] for key in ("type", "tenant", "email", "plan", "node", "reason")} == {
        "type": "goal_reached", "tenant": "acme", "email": "ada@example.com", "plan": "trial",
        "node": "intro", "reason": "goal:purchased"}
    assert json.loads(json.dumps(payload)) == payload  # plain JSON


def test_an_effect_that_rolled_back_notifies_no_one(host) -> None:
    engine.enroll("acme", "ada@example.com", "trial")
    with pytest.raises(RuntimeError), dispatch.dispatch_after_commit(lambda due: None):
        with database_proxy.atomic():
            control.unenroll("acme", "ada@example.com")
            raise RuntimeError("the host's transaction failed")
    assert Notification.select().count() == 0 and sent(host) == []


def test_what_a_crash_left_pending_the_periodic_job_sends_once(host) -> None:
    engine.enroll("acme", "ada@example.com", "trial")
    notifications.install_sender(None)  # the process died before sending
    control.unenroll("acme", "ada@example.com")
    assert Notification.get().status == "pending" and sent(host) == []
    notifications.install_sender(send_to_host)
    later = utcnow() + timedelta(minutes=1)
    assert notifications.send_pending_notifications(now=later) == 1
    assert notifications.send_pending_notifications(now=later) == 0
    [(_, payload)] = sent(host)
    assert (payload["type"], payload["reason"]) == ("exited", "unenrolled")


@pytest.mark.parametrize(("reason", "kind"), [("unsubscribed", "unsubscribed"),
                                              ("send_failed", "failed"), ("suppressed", "exited")])
def test_each_exit_is_told_by_its_type(host, reason, kind) -> None:
    enrollment = engine.enroll("acme", "ada@example.com", "trial")
    with dispatch.dispatch_after_commit(lambda due: None):
        engine.exit_enrollment(enrollment.id, reason)
        engine.exit_enrollment(enrollment.id, reason)  # twice: one effect, one notification
    [(_, payload)] = sent(host)
    assert (payload["type"], payload["reason"]) == (kind, reason)


def test_without_a_notify_actor_nothing_is_written(db, stub_broker) -> None:
    make_tenant()
    load_plan(TRIAL_PLAN)
    engine.enroll("acme", "ada@example.com", "trial")
    control.unenroll("acme", "ada@example.com")
    assert Notification.select().count() == 0


RECEIVED: list[dict] = []


@dramatiq.actor(queue_name=HOST_QUEUE, actor_name="on_outreach_event_received")
def record_outreach_event(payload: dict) -> None:
    """A host actor that keeps what it is told, run by a real worker."""
    RECEIVED.append(payload)


def test_the_host_actor_runs_once_per_notification_on_every_broker(settings, any_broker, data_dir) -> None:
    from .conftest import wait_until

    any_broker.declare_actor(record_outreach_event)
    configure(make_settings(data_dir, notify_actor=f"{__name__}.record_outreach_event"))
    notifications.install_sender(send_to_host)
    make_tenant()
    load_plan(TRIAL_PLAN)
    RECEIVED.clear()
    worker = dramatiq.Worker(any_broker, worker_timeout=100, worker_threads=2)
    worker.start()
    try:
        for email in ["ada@example.com", "bob@example.com"]:
            engine.enroll("acme", email, "trial")
        with dispatch.dispatch_after_commit(lambda due: None):
            track("acme", "ada@example.com", "purchased", {"amount": 20}, event_id="o-1")
            track("acme", "ada@example.com", "purchased", {"amount": 20}, event_id="o-1")
            control.unenroll("acme", "bob@example.com")
        wait_until(lambda: len(RECEIVED) >= 2)
        time.sleep(0.3)  # nothing more arrives
    finally:
        worker.stop()
    assert sorted((p["type"], p["email"]) for p in RECEIVED) == [
        ("exited", "bob@example.com"), ("goal_reached", "ada@example.com")]
    assert {p["id"] for p in RECEIVED} == {n.id for n in Notification.select()}
