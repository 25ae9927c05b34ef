"""The SendGrid stand-in: answers mail/send like SendGrid, fails on demand, signs webhook batches."""

from __future__ import annotations

import base64
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import pytest
from sendgrid import SendGridAPIClient
from sendgrid.helpers.eventwebhook import EventWebhook
from sendgrid.helpers.eventwebhook.eventwebhook_header import EventWebhookHeader

from outreach_actors.dev.standin import MAIL_SEND_PATH, SendGridStandIn
from outreach_actors.dev.webhook_events import (
    emit_events,
    events_for,
    generate_webhook_keys,
    public_key_for,
    sign_webhook,
    webhook_body,
)

API_KEY = "SG.standin-test-key"
SAMPLES = Path(__file__).resolve().parent / "samples"  # copies of ../shared/samples


def valid_mail(**changes: Any) -> dict[str, Any]:
    mail: dict[str, Any] = {
        "personalizations": [{"to": [{"email": "ada@example.com", "name": "Ada"}]}],
        "from": {"email": "team@example.org", "name": "Team"},
        "subject": "Hello",
        "content": [{"type": "text/plain", "value": "Hi"}, {"type": "text/html", "value": "<p>Hi</p>"}],
        "categories": ["onboarding"],
        "custom_args": {"outreach_message_id": "MSG-1", "outreach_tenant": "acme"},
        "headers": {"List-Unsubscribe": "<https://example.org/u/1>"},
    }
    mail.update(changes)
    return mail


def post(host: str, body: bytes | dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """POST with plain urllib, so that tests can send what the sendgrid client never would."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = Request(host + MAIL_SEND_PATH, data=data, method="POST", headers={
        "Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json", **(headers or {}),
    })
    try:
        with urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read()
    except HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture
def server() -> Iterator[SendGridStandIn]:
    with SendGridStandIn(api_key=API_KEY) as standin:
        yield standin


def test_accepts_valid_mail_from_the_sendgrid_client_with_a_unique_message_id(server):
    client = SendGridAPIClient(API_KEY, host=server.host)

    first = client.send(valid_mail())
    second = client.send(valid_mail())

    assert first.status_code == second.status_code == 202
    ids = [first.headers["X-Message-Id"], second.headers["X-Message-Id"]]
    assert ids[0] != ids[1]
    for message_id in ids:
        assert len(message_id) == 22
        base64.urlsafe_b64decode(message_id + "==")
    recorded = server.messages
    assert [message.x_message_id for message in recorded] == ids
    assert recorded[0].body == valid_mail()
    assert recorded[0].headers["authorization"] == f"Bearer {API_KEY}"
    assert recorded[0].custom_args == {"outreach_message_id": "MSG-1", "outreach_tenant": "acme"}
    assert recorded[0].received_at <= recorded[1].received_at


def test_missing_authorization_gets_sendgrids_401(server):
    status, _, body = post(server.host, valid_mail(), headers={"Authorization": ""})

    assert status == 401
    assert json.loads(body) == {"errors": [{"message": "authorization required", "field": None, "help": None}]}
    assert server.messages == []


def test_wrong_key_gets_sendgrids_401(server):
    status, _, body = post(server.host, valid_mail(), headers={"Authorization": "Bearer SG.other"})

    assert status == 401
    assert "authorization grant is invalid" in json.loads(body)["errors"][0]["message"]


def test_any_key_is_accepted_when_none_is_configured():
    with SendGridStandIn() as standin:
        status, _, _ = post(standin.host, valid_mail(), headers={"Authorization": "Bearer anything"})
    assert status == 202


def _recipients(count: int) -> list[dict[str, str]]:
    return [{"email": f"r{index}@example.com"} for index in range(count)]


@pytest.mark.parametrize(("change", "field", "message"), [
    ({"personalizations": []}, "personalizations", "at least one personalization"),
    ({"personalizations": [{"to": []}]}, "personalizations.0.to", "The to array is required"),
    ({"personalizations": [{"to": [{"email": "not an address"}]}]}, "personalizations.0.to.0.email",
     "Does not contain a valid address."),
    ({"personalizations": [{"to": _recipients(1001)}]}, "personalizations", "limit of 1000 total recipients"),
    ({"personalizations": [{"to": [{"email": "a@example.com"}], "cc": [{"email": "A@example.com"}]}]},
     "personalizations.0", "should be unique"),
    ({"from": None}, "from.email", "The from object must be provided"),
    ({"from": {"email": "nobody"}}, "from.email", "The from email does not contain a valid address."),
    ({"subject": None}, "subject", "The subject is required."),
    ({"content": []}, "content", "the content parameter is required"),
    ({"content": [{"type": "text/plain", "value": ""}]}, "content.0.value",
     "must be a string at least one character in length"),
    ({"content": [{"type": "text/html", "value": "<p>x</p>"}, {"type": "text/plain", "value": "x"}]},
     "content", "text/plain content must be first"),
    ({"custom_args": {"outreach_message_id": 7}}, "custom_args.outreach_message_id",
     "Invalid type. Expected: string, given: integer."),
    ({"custom_args": {"big": "x" * 10_000}}, "custom_args", "less than 10000 bytes"),
    ({"headers": {"X-Campaign": "a\r\nBcc: victim@example.com"}}, "headers.X-Campaign", "CR or LF"),
    ({"headers": {"Subject": "other"}}, "headers.Subject", "reserved"),
    ({"categories": [f"c{index}" for index in range(11)]}, "categories", "more than 10 categories"),
])
def test_invalid_bodies_get_sendgrid_style_400s_and_are_not_recorded(server, change, field, message):
    status, _, body = post(server.host, valid_mail(**change))

    assert status == 400
    errors = json.loads(body)["errors"]
    assert any(error["field"] == field and message in error["message"] for error in errors), errors
    assert all(set(error) == {"message", "field", "help"} for error in errors)
    assert server.messages == []
    assert [request.status for request in server.requests] == [400]


def test_a_subject_in_every_personalization_replaces_the_top_level_subject(server):
    mail = valid_mail(subject=None, personalizations=[{"to": [{"email": "a@example.com"}], "subject": "Hi A"}])
    del mail["subject"]

    status, _, _ = post(server.host, mail)

    assert status == 202


def test_malformed_json_wrong_content_type_and_oversized_bodies_are_refused():
    with SendGridStandIn(api_key=API_KEY, max_body_bytes=2_000) as standin:
        assert post(standin.host, b"{not json")[0] == 400
        assert post(standin.host, valid_mail(), headers={"Content-Type": "text/plain"})[0] == 415
        oversized = valid_mail(content=[{"type": "text/plain", "value": "x" * 3_000}])
        status, _, body = post(standin.host, oversized)
        assert status == 413
        assert "too large" in json.loads(body)["errors"][0]["message"]
        assert standin.messages == []


def test_unknown_paths_get_404(server):
    request = Request(server.host + "/v3/mail/batch", data=b"{}", method="POST")
    with pytest.raises(HTTPError) as raised:
        urlopen(request, timeout=5)
    assert raised.value.code == 404


def test_fail_next_answers_the_planned_statuses_in_order_then_accepts_again(server):
    server.fail_next(429, retry_after=7)
    server.fail_next(500, count=2)
    server.fail_next(503, body="<html>upstream down</html>")

    answers = [post(server.host, valid_mail()) for _ in range(5)]

    assert [status for status, _, _ in answers] == [429, 500, 500, 503, 202]
    assert answers[0][1]["Retry-After"] == "7"
    assert json.loads(answers[1][2]) == {
        "errors": [{"message": "internal server error", "field": None, "help": None}]
    }
    assert answers[3][2] == b"<html>upstream down</html>"
    assert len(server.messages) == 1


def test_a_seeded_failure_rate_repeats_the_same_statuses():
    def statuses(seed: int) -> list[int]:
        with SendGridStandIn(failure_rate=0.5, failure_statuses=(500, 429), seed=seed) as standin:
            return [post(standin.host, valid_mail())[0] for _ in range(30)]

    first, again = statuses(seed=11), statuses(seed=11)

    assert first == again
    assert set(first) == {202, 500, 429}


def test_drop_next_records_the_mail_then_closes_without_answering(server):
    server.drop_next()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    connection.request("POST", MAIL_SEND_PATH, json.dumps(valid_mail()), {
        "Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json",
    })

    with pytest.raises(http.client.RemoteDisconnected):
        connection.getresponse()
    assert len(server.messages) == 1
    assert server.requests[0].status is None
    assert post(server.host, valid_mail())[0] == 202


def test_a_drop_rate_of_one_drops_every_accepted_mail():
    with SendGridStandIn(drop_rate=1.0) as standin:
        for _ in range(3):
            with pytest.raises(http.client.RemoteDisconnected):
                post(standin.host, valid_mail())
        assert len(standin.messages) == 3


def test_delay_holds_the_answer(server):
    server.delay = 0.3
    started = time.monotonic()

    status, _, _ = post(server.host, valid_mail())

    assert status == 202
    assert time.monotonic() - started >= 0.3


def test_reset_forgets_messages_and_planned_failures(server):
    post(server.host, valid_mail())
    server.fail_next(500, count=3)
    server.delay = 5

    server.reset()

    assert server.messages == [] and server.requests == []
    assert server.delay == 0
    assert post(server.host, valid_mail())[0] == 202


def test_wait_for_returns_once_mails_arrive_and_times_out_otherwise(server):
    threading.Timer(0.1, post, args=(server.host, valid_mail())).start()

    assert len(server.wait_for(1, timeout=5)) == 1
    with pytest.raises(TimeoutError, match="accepted 1 mails"):
        server.wait_for(2, timeout=0.1)


def test_the_stand_in_runs_as_its_own_process():
    process = subprocess.Popen(
        [sys.executable, "-m", "outreach_actors.testing", "--port", "0", "--api-key", API_KEY],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "OUTREACH_BROKER_URL": "stub://"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, line
        host = line.rsplit(" ", 1)[1].strip()

        response = SendGridAPIClient(API_KEY, host=host).send(valid_mail())

        with urlopen(host + "/_standin/messages", timeout=5) as listing:
            messages = json.load(listing)["messages"]
        assert [message["x_message_id"] for message in messages] == [response.headers["X-Message-Id"]]
        assert messages[0]["body"]["custom_args"]["outreach_message_id"] == "MSG-1"
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert process.returncode == 0


def test_events_for_builds_sendgrid_shaped_events_carrying_the_custom_args(server):
    post(server.host, valid_mail())
    message = server.messages[0]

    events = events_for(message, "processed", "delivered", "open", "click", "bounce", timestamp=1_700_000_000)

    assert [event["event"] for event in events] == ["processed", "delivered", "open", "click", "bounce"]
    assert [event["timestamp"] for event in events] == list(range(1_700_000_000, 1_700_000_005))
    for event in events:
        assert event["email"] == "ada@example.com"
        assert event["outreach_message_id"] == "MSG-1" and event["outreach_tenant"] == "acme"
        assert event["sg_message_id"].startswith(message.x_message_id + ".filter")
        assert event["category"] == ["onboarding"]
    assert len({event["sg_event_id"] for event in events}) == len(events)
    assert events[2]["sg_machine_open"] is False
    assert events[4]["type"] == "bounce" and events[4]["status"].startswith("5.")
    assert "smtp-id" in events[0] and "smtp-id" not in events[2]


def test_events_for_covers_every_recipient_and_takes_overrides(server):
    post(server.host, valid_mail(personalizations=[
        {"to": [{"email": "a@example.com"}], "custom_args": {"outreach_message_id": "MSG-A"}},
        {"to": [{"email": "b@example.com"}], "custom_args": {"outreach_message_id": "MSG-B"}},
    ]))

    events = events_for(server.messages[0], "click", url="https://example.org/pricing")

    assert [(event["email"], event["outreach_message_id"]) for event in events] == [
        ("a@example.com", "MSG-A"), ("b@example.com", "MSG-B"),
    ]
    assert {event["outreach_tenant"] for event in events} == {"acme"}
    assert {event["url"] for event in events} == {"https://example.org/pricing"}
    assert events[0]["sg_message_id"] != events[1]["sg_message_id"]


def test_events_for_refuses_unknown_kinds(server):
    post(server.host, valid_mail())
    with pytest.raises(ValueError, match="unknown event kinds"):
        events_for(server.messages[0], "opened")


class _Receiver:
    """A webhook endpoint that keeps each raw request and answers a chosen status."""

    def __init__(self, status: int = 200) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks/sendgrid"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[_Receiver]:
    endpoint = _Receiver()
    yield endpoint
    endpoint.close()


def _verify(public_key: str, headers: dict[str, str], body: bytes) -> bool:
    return EventWebhook(public_key).verify_signature(
        body.decode(), headers[EventWebhookHeader.SIGNATURE], headers[EventWebhookHeader.TIMESTAMP]
    )


def test_emitted_batches_verify_with_the_sendgrid_event_webhook_helper(server, receiver):
    keys = generate_webhook_keys()
    post(server.host, valid_mail())
    events = events_for(server.messages[0], "delivered", "open")

    status = emit_events(receiver.url, events, private_key_pem=keys.private_key_pem, timestamp=1_700_000_123)

    assert status == 200
    headers, body = receiver.received[0]
    assert headers[EventWebhookHeader.TIMESTAMP] == "1700000123"
    assert json.loads(body) == events
    assert body.endswith(b"]\r\n")
    assert _verify(keys.public_key, headers, body)
    assert not _verify(keys.public_key, headers, body.replace(b"delivered", b"bounce"))
    assert not _verify(generate_webhook_keys().public_key, headers, body)


def test_emitted_batches_verify_with_the_samples_public_key(receiver):
    sample = json.loads((_samples() / "sendgrid_signed_request.json").read_text())
    events = [{"email": "ada@example.com", "event": "delivered", "timestamp": 1_763_790_010}]

    emit_events(receiver.url, events, private_key_pem=sample["private_key_pem"])

    headers, body = receiver.received[0]
    assert _verify(sample["public_key"], headers, body)
    assert abs(int(headers[EventWebhookHeader.TIMESTAMP]) - time.time()) < 60


def test_emit_events_returns_the_receivers_status_and_can_send_unsigned_raw_bytes():
    endpoint = _Receiver(status=401)
    try:
        status = emit_events(endpoint.url, b"[{broken", private_key_pem=None)
    finally:
        endpoint.close()

    assert status == 401
    headers, body = endpoint.received[0]
    assert body == b"[{broken"
    assert EventWebhookHeader.SIGNATURE not in headers


def _samples() -> Path:
    return SAMPLES


def test_the_sample_signed_request_verifies_and_our_signer_matches_its_key():
    sample = json.loads((_samples() / "sendgrid_signed_request.json").read_text())
    body = (_samples() / sample["body_file"]).read_bytes()
    headers = sample["headers"]

    assert _verify(sample["public_key"], headers, body)
    assert public_key_for(sample["private_key_pem"]) == sample["public_key"]
    # ECDSA signatures are randomized: ours differs from the sample's but verifies the same way.
    ours = sign_webhook(body, headers[EventWebhookHeader.TIMESTAMP], sample["private_key_pem"])
    assert _verify(sample["public_key"], {**headers, EventWebhookHeader.SIGNATURE: ours}, body)


def test_webhook_body_is_compact_json_with_crlf_line_ends():
    body = webhook_body([{"event": "open"}, {"event": "click"}])

    assert body == b'[{"event":"open"},\r\n{"event":"click"}]\r\n'
