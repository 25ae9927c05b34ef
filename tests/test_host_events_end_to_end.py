"""Host events end to end on every broker: POST /events over HTTP, a real worker, the
real `sendgrid` client and the SendGrid stand-in; the same batch posted twice acts once."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from pathlib import Path

import dramatiq

from outreach_actors.dev.standin import SendGridStandIn
from outreach_actors.domain import dispatch, engine
from outreach_actors.domain.store.models import Enrollment, OutboundMessage
from outreach_actors.web.app import http_server, make_app
from outreach_actors.web.events import sign_events
from outreach_actors.worker.actors.mail import enqueue_actions

from .conftest import install_broker, make_settings
from .factories import load_plan, make_tenant

CHECKOUT = (Path(__file__).parent / "samples" / "plans" / "checkout.yaml").read_text()
SECRET = "e2e-events-secret"


def post_events(url: str, events: list[dict]) -> dict:
    body = json.dumps(events).encode()
    at = int(time.time())
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "X-Outreach-Timestamp": str(at),
        "X-Outreach-Signature": sign_events(SECRET, body, at)})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_purchases_move_convert_and_mail_once(sqlite_db, any_broker, data_dir) -> None:
    with SendGridStandIn(api_key="SG.test-key") as standin:
        settings = make_settings(data_dir, sendgrid_api_host=standin.host, events_secret=SECRET)
        server = http_server("127.0.0.1", 0, make_app(settings))
        install_broker(any_broker)  # make_app built its own: the worker consumes the fixture's
        threading.Thread(target=server.run, daemon=True).start()
        url = f"http://127.0.0.1:{server.effective_port}/events"
        make_tenant()
        load_plan(CHECKOUT)
        for name in ["ada", "bob", "cy"]:
            engine.enroll("acme", f"{name}@example.com", "checkout", fields={"first_name": name})
        worker = dramatiq.Worker(any_broker, worker_timeout=50, worker_threads=4)
        worker.start()
        try:
            batch = [{"tenant": "acme", "email": "ada@example.com", "event": "purchased",
                      "event_id": "order-1", "properties": {"amount": 20}},
                     {"tenant": "acme", "email": "bob@example.com", "event": "purchased",
                      "event_id": "order-2", "properties": {"amount": 500}}]
            first = post_events(url, batch)
            again = post_events(url, batch)  # a client's retry
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and Enrollment.select().where(
                    Enrollment.status == Enrollment.ACTIVE).exists():
                dispatch.dispatch_due_actions(enqueue_actions, settings=settings)
                time.sleep(0.1)
            worker.join()
        finally:
            worker.stop()
            server.close()
        assert [r["moved"] for r in first["results"]] == [1, 1]
        assert [(r["stored"], r["moved"]) for r in again["results"]] == [(False, 0), (False, 0)]
        ends = {e.contact.email: (e.status, e.current_node) for e in Enrollment.select()}
        assert ends == {"ada@example.com": ("completed", "done"),
                        "bob@example.com": ("converted", "waiting"),
                        "cy@example.com": ("completed", "done")}
        # One email: Ada's thanks, sent once; Bob converted and Cy only waited.
        assert [m.to_email for m in OutboundMessage.select()] == ["ada@example.com"]
        assert len(standin.messages) == 1
