"""One campaign end to end, on every broker and database, then every actor run twice.

Real parts all the way: a Dramatiq worker on the broker, the database, the real
`sendgrid` client talking to the SendGrid stand-in over HTTP, and signed Event
Webhook batches posted to our WSGI endpoint by simulated recipients.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from wsgiref.simple_server import WSGIRequestHandler, make_server

import dramatiq
import pytest

from outreach_actors.dev.simulation import EngagementSimulator
from outreach_actors.dev.standin import SendGridStandIn
from outreach_actors.dev.webhook_events import generate_webhook_keys
from outreach_actors.domain import dispatch, engine
from outreach_actors.domain.store import models
from outreach_actors.domain.store.models import (
    Enrollment,
    MessageEvent,
    NodeVisit,
    OutboundMessage,
    ScheduledAction,
    Suppression,
    WebhookDelivery,
)
from outreach_actors.web.app import make_app
from outreach_actors.worker.actors.mail import (
    enqueue_actions,
    fire_timeout,
    fire_timeouts,
    render,
    render_batch,
    send,
)
from outreach_actors.worker.actors.periodic import dispatch_due, purge, reconcile
from outreach_actors.worker.actors.webhooks import normalize_webhook

from .conftest import POSTGRES_URL, install_broker, make_settings
from .factories import load_plan, make_tenant
from .test_funnel_counts import recount, stored

JOURNEY = """
name: journey
start: intro
nodes:
  intro:
    type: email
    subject: "Hello {{ contact.first_name }}"
    body: "<p>Hi {{ contact.first_name }}, <a href='https://example.com/x'>look</a>.</p>"
    transitions:
      - {on: click, to: thanks}
      - {on: bounce, to: bounced}
      - {on: no_open, after: PT3S, to: bump}
      - {on: no_click, after: PT5S, to: opened_only}
  bump:
    type: email
    subject: "Did you see this?"
    body: "<p>A bump. <a href='https://example.com/y'>look</a></p>"
    transitions:
      - {on: click, to: thanks}
      - {on: bounce, to: bounced}
      - {on: no_click, after: PT2S, to: gave_up}
  thanks: {type: exit}
  opened_only: {type: exit}
  gave_up: {type: exit}
  bounced: {type: exit}
"""
EXPECTED_END = {"clicker": "thanks", "opener": "opened_only", "ignorer": "gave_up",
                "bouncer": "bounced"}
EXPECTED_EMAILS = {"clicker": 1, "opener": 1, "ignorer": 2, "bouncer": 1}


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


def snapshot(standin: SendGridStandIn) -> dict:
    return {
        "accepted": len(standin.messages),
        "messages": sorted((m.id, m.status) for m in OutboundMessage.select()),
        "events": sorted((e.event_key, e.type, e.message_id) for e in MessageEvent.select()),
        "visits": NodeVisit.select().count(),
        "enrollments": sorted((e.id, e.current_node, e.status, e.version) for e in Enrollment.select()),
        "actions": sorted((a.id, a.kind, a.status) for a in ScheduledAction.select()),
        "suppressions": sorted((s.tenant_id, s.channel, s.value, s.reason) for s in Suppression.select()),
        "deliveries": sorted((d.id, d.status) for d in WebhookDelivery.select()),
    }


@pytest.mark.parametrize("database", ["sqlite_db", "postgres_db"])
def test_every_contact_ends_at_the_right_node_exactly_once(request, any_broker, data_dir,
                                                           database) -> None:
    request.getfixturevalue(database)
    keys = generate_webhook_keys()
    with SendGridStandIn(api_key="SG.test-key") as standin:
        server = make_server("127.0.0.1", 0, make_app(settings := make_settings(
            data_dir,
            sendgrid_api_host=standin.host,
            sendgrid_webhook_public_key=keys.public_key,
            **({"database_url": POSTGRES_URL} if database == "postgres_db" else {}),
        )), handler_class=_Quiet)
        # make_app makes the settings the process's own and builds their broker:
        # put the fixture's broker back so that the worker below consumes its queues.
        install_broker(any_broker)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        webhook_url = f"http://127.0.0.1:{server.server_port}/webhooks/sendgrid"

        # Given four contacts enrolled in a three-email-node plan
        make_tenant()
        load_plan(JOURNEY)
        for persona in EXPECTED_END:
            engine.enroll("acme", f"{persona}-1@example.com", "journey", fields={"first_name": persona})

        # When workers, the dispatcher and simulated recipients run
        worker = dramatiq.Worker(any_broker, worker_timeout=50, worker_threads=4)
        worker.start()
        simulator = EngagementSimulator(standin, webhook_url, keys.private_key_pem,
                                        interval_s=0.1).start()
        try:
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                dispatch.dispatch_due_actions(enqueue_actions, settings=settings)
                if not Enrollment.select().where(Enrollment.status == Enrollment.ACTIVE).exists():
                    break
                time.sleep(0.1)
            simulator.stop()
            any_broker.join("webhooks", timeout=10_000)
            worker.join()
        finally:
            worker.stop()
            server.shutdown()
            server.server_close()

        # Then every contact is at the node its behaviour leads to
        ends = {e.contact.email.split("-")[0]: (e.current_node, e.status) for e in Enrollment.select()}
        assert ends == {p: (node, "completed") for p, node in EXPECTED_END.items()}
        # and every email was sent exactly once
        sent = Counter(m.enrollment.contact.email.split("-")[0] for m in OutboundMessage.select()
                       if m.status == "sent")
        assert sent == EXPECTED_EMAILS
        assert len(standin.messages) == sum(EXPECTED_EMAILS.values())
        sent_ids = Counter(m.custom_args["outreach_message_id"] for m in standin.messages)
        assert set(sent_ids.values()) == {1}
        # and every timer fired exactly once or was cancelled/skipped
        synthetic = MessageEvent.select().where(MessageEvent.synthetic == True)  # noqa: E712
        assert sorted(e.type for e in synthetic) == ["no_click", "no_click", "no_open"]
        assert len({e.action_id for e in synthetic}) == 3
        open_timers = ScheduledAction.select().where(
            ScheduledAction.status.in_(ScheduledAction.OPEN_STATUSES))
        assert open_timers.count() == 0
        # and the bounced address is suppressed
        assert models.Suppression.get().value == "bouncer-1@example.com"

        # When every actor runs again on every id it has seen
        before = snapshot(standin)
        timers, sends = [], []
        for action in ScheduledAction.select():
            if action.kind == "send":
                message_id = render(action.id)
                send(message_id)
                sends.append(action.id)
            else:
                fire_timeout(action.id)
                timers.append(action.id)
        render_batch(sends)
        fire_timeouts(timers)
        for delivery in WebhookDelivery.select():
            normalize_webhook(delivery.id)
        dispatch_due(0)
        reconcile()
        purge()
        # Then nothing changed: no second email, event, move, timer or suppression
        assert snapshot(standin) == before
        # and the funnel's counts, kept by triggers through all of it, match a recount
        # (reconcile summed their deltas)
        assert models.FunnelCountDelta.select().count() == 0
        for plan in models.Plan.select():
            assert stored(plan) == recount(plan) != {}
