"""POST /events: signed host events from any language; bad requests get a clear 4xx, never a 500."""

from __future__ import annotations

import io
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from outreach_actors.domain import engine
from outreach_actors.domain.store.models import Enrollment, HostEvent
from outreach_actors.settings import configure
from outreach_actors.web.app import OutreachWSGI, http_server
from outreach_actors.web.endpoints import Endpoints
from outreach_actors.web.events import EventsReceiver, sign_events
from outreach_actors.web.inbound import SendGridInboundReceiver
from outreach_actors.web.unsubscribe import UnsubscribePage
from outreach_actors.web.webhooks import SendGridWebhookReceiver

from .conftest import make_settings
from .factories import load_plan, make_tenant

SECRET = "events-test-secret-4f9a"
TRIAL_PLAN = (Path(__file__).parent / "samples" / "plans" / "trial.yaml").read_text()


@pytest.fixture
def app(db, stub_broker, data_dir) -> OutreachWSGI:
    settings = make_settings(data_dir, events_secret=SECRET, webhook_max_body_bytes=2_000_000)
    configure(settings)
    make_tenant()
    load_plan(TRIAL_PLAN)
    return OutreachWSGI(Endpoints(settings, SendGridWebhookReceiver(settings),
                                  UnsubscribePage(settings), EventsReceiver(settings),
                                  SendGridInboundReceiver(settings)))


def call(app: OutreachWSGI, body: bytes, headers: dict[str, str] | None = None,
         method: str = "POST") -> tuple[int, dict]:
    environ = {"REQUEST_METHOD": method, "PATH_INFO": "/events", "CONTENT_LENGTH": str(len(body)),
               "wsgi.input": io.BytesIO(body)}
    environ.update({"HTTP_" + k.upper().replace("-", "_"): v for k, v in (headers or {}).items()})
    reply = app.route(environ)
    return reply.status, (json.loads(reply.body) if reply.content_type.startswith("application/json")
                          else {"text": reply.body})


def signed(body: bytes, *, at: int | None = None, secret: str = SECRET) -> dict[str, str]:
    at = int(time.time()) if at is None else at
    return {"X-Outreach-Timestamp": str(at), "X-Outreach-Signature": sign_events(secret, body, at)}


def event(email: str = "ada@example.com", name: str = "booked_meeting", **extra) -> dict:
    return {"tenant": "acme", "email": email, "event": name, **extra}


def test_a_signed_event_is_stored_and_moves_its_contact_once(app) -> None:
    engine.enroll("acme", "ada@example.com", "trial")
    body = json.dumps(event(event_id="ev-1", properties={"where": "zoom"})).encode()
    assert call(app, body, signed(body)) == (200, {"results": [
        {"event_key": "acme:ev-1", "stored": True, "moved": 1}]})
    # The same request again (a client's retry): nothing stored, nothing moved.
    assert call(app, body, signed(body))[1]["results"][0] == {
        "event_key": "acme:ev-1", "stored": False, "moved": 0}
    assert HostEvent.select().count() == 1
    assert Enrollment.get().current_node == "waiting"


def test_a_batch_moves_each_contact_in_order(app) -> None:
    for email in ["a@example.com", "b@example.com"]:
        engine.enroll("acme", email, "trial")
    batch = [event("a@example.com", event_id="1"), event("b@example.com", event_id="2"),
             event("a@example.com", event_id="3"),  # a's second: from waiting to thanks
             event("b@example.com", "purchased", event_id="4", properties={"amount": 99})]
    body = json.dumps(batch).encode()
    status, answer = call(app, body, signed(body))
    assert status == 200 and [r["moved"] for r in answer["results"]] == [1, 1, 1, 1]
    a, b = (Enrollment.get(Enrollment.id == e) for e in sorted(e.id for e in Enrollment.select()))
    assert (a.status, a.current_node) == ("completed", "thanks")
    assert (b.status, b.current_node) == ("converted", "waiting")


@pytest.mark.parametrize(("body", "headers", "status", "problem"), [
    (b'{"tenant": "acme"}', {}, 401, "headers are required"),
    (b'{"tenant": "acme"}', {"X-Outreach-Timestamp": "1", "X-Outreach-Signature": "sha256=00"},
     401, "does not match"),
    (b'{"tenant": "acme"}', "other secret", 401, "does not match"),
    (b'{"tenant": "acme"}', "stale", 401, "replay window"),
    (b'{"tenant": "acme"}', {"X-Outreach-Timestamp": "9" * 400, "X-Outreach-Signature": "x"},
     401, "Unix time"),
    (b'{"tenant": ', None, 400, "not JSON"),
    (b"[" * 100_000 + b"]" * 100_000, None, 400, "not JSON"),
    (b"\xff\xfe", None, 400, "not JSON"),
    (b'"text"', None, 400, "one event"),
    (b"[]", None, 400, "no events"),
    (json.dumps([event(event_id=str(i)) for i in range(1001)]).encode(), None, 400, "limit is 1,000"),
    (json.dumps(event(tenant="ghost")).encode(), None, 400, "unknown tenant"),
    (json.dumps(event(tenant="g" * 100_000)).encode(), None, 400, "unknown tenant"),
    (json.dumps(event(properties={"n": 1}, occurred_at=5)).encode(), None, 400, "ISO-8601"),
    (b'{"tenant": "acme", "email": "a@example.com", "event": "x", "properties": {"n": '
     + b"9" * 5000 + b"}}", None, 400, "not JSON"),
    (json.dumps([event(), event("no address"), event(name="open"), 7,
                 event(properties={"x": "y" * 20_000}), {**event(), "amont": 1}]).encode(),
     None, 400, "nothing was stored"),
    (b" " * 2_000_001, None, 413, "over the limit"),
])
def test_a_bad_request_is_refused_saying_why_and_stores_nothing(app, body, headers, status,
                                                                 problem) -> None:
    if headers is None:
        headers = signed(body)
    elif headers == "other secret":
        headers = signed(body, secret="not-the-secret")
    elif headers == "stale":
        headers = signed(body, at=int(time.time()) - 3600)
    got, answer = call(app, body, headers)
    assert got == status and problem in json.dumps(answer)
    assert HostEvent.select().count() == 0


def test_each_invalid_event_of_a_batch_is_named_by_its_index(app) -> None:
    body = json.dumps([event(), event("no address"), event(name="open"), 7]).encode()
    status, answer = call(app, body, signed(body))
    assert status == 400
    assert [error["index"] for error in answer["errors"]] == [1, 2, 3]


def test_without_a_secret_every_post_is_refused(db, stub_broker, data_dir) -> None:
    settings = make_settings(data_dir)
    app = OutreachWSGI(Endpoints(settings, SendGridWebhookReceiver(settings),
                                 UnsubscribePage(settings), EventsReceiver(settings),
                                  SendGridInboundReceiver(settings)))
    status, answer = call(app, b"{}", signed(b"{}"))
    assert status == 403 and "OUTREACH_EVENTS_SECRET" in answer["error"]


def test_get_is_not_allowed(app) -> None:
    assert call(app, b"", method="GET")[0] == 405


def test_over_http_with_a_curl_like_client(app) -> None:
    engine.enroll("acme", "ada@example.com", "trial")
    server = http_server("127.0.0.1", 0, app)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        body = json.dumps(event(event_id="http-1")).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.effective_port}/events", data=body, method="POST",
            headers={"Content-Type": "application/json", **signed(body)})
        with urllib.request.urlopen(request, timeout=10) as response:
            assert json.loads(response.read())["results"][0]["moved"] == 1
        request = urllib.request.Request(
            f"http://127.0.0.1:{server.effective_port}/events", data=b"{", method="POST",
            headers=signed(b"{"))
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 400
    finally:
        server.close()
