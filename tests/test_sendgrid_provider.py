"""Sending through SendGrid: the mail we build, and how each answer or failure is classified.

Every send goes through the real ``sendgrid`` client to the SendGrid stand-in.
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.message import Message
from email.utils import format_datetime

import pytest

from outreach_actors.dev.ports import free_port
from outreach_actors.dev.standin import SendGridStandIn, error_body
from outreach_actors.providers.sendgrid.client import (
    InvalidEmail,
    OutgoingEmail,
    SendGridClient,
    build_mail,
    outcome_for_response,
    sendgrid_client_from_settings,
    validate_address,
)
from outreach_actors.settings import Settings, SettingsError

from .conftest import STANDIN_API_KEY as API_KEY

EMAIL = OutgoingEmail(
    message_id="MSG-42",
    tenant="acme",
    to_email="ada@example.com",
    from_email="team@example.org",
    from_name="The Team",
    subject="Welcome, Ada",
    html="<p>Hi Ada</p>",
    text="Hi Ada",
    categories=["onboarding", "intro"],
    headers={
        "List-Unsubscribe": "<https://example.org/u/tok>, <mailto:unsub@example.org?subject=MSG-42>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    },
    custom_args={"plan": "onboarding"},
)


def test_a_202_is_sent_with_the_x_message_id_and_everything_reaches_sendgrid(standin, sendgrid_client):
    outcome = sendgrid_client.send(EMAIL)

    assert outcome.kind == "sent"
    assert outcome.status_code == 202
    [message] = standin.messages
    assert outcome.provider_message_id == message.x_message_id
    body = message.body
    assert body["personalizations"] == [{"to": [{"email": "ada@example.com"}]}]
    assert body["from"] == {"email": "team@example.org", "name": "The Team"}
    assert body["subject"] == "Welcome, Ada"
    assert body["content"] == [
        {"type": "text/plain", "value": "Hi Ada"}, {"type": "text/html", "value": "<p>Hi Ada</p>"},
    ]
    assert body["custom_args"] == {
        "outreach_message_id": "MSG-42", "outreach_tenant": "acme", "plan": "onboarding",
    }
    assert body["categories"] == ["onboarding", "intro"]  # in the given order
    assert body["headers"] == EMAIL.headers
    assert message.headers["authorization"] == f"Bearer {API_KEY}"


def test_the_outreach_custom_args_are_added_even_when_none_are_given(standin, sendgrid_client):
    sendgrid_client.send(replace(EMAIL, custom_args={}, categories=[], headers={}, text=None))

    body = standin.messages[0].body
    assert body["custom_args"] == {"outreach_message_id": "MSG-42", "outreach_tenant": "acme"}
    assert body["content"] == [{"type": "text/html", "value": "<p>Hi Ada</p>"}]


def test_429_is_retried_after_the_retry_after_header(standin, sendgrid_client):
    standin.fail_next(429, retry_after=7)

    outcome = sendgrid_client.send(EMAIL)

    assert (outcome.kind, outcome.status_code, outcome.retry_after_s) == ("retry", 429, 7.0)
    assert outcome.error == "too many requests"
    assert standin.messages == []


def test_429_without_retry_after_waits_until_the_rate_limit_resets(standin, sendgrid_client):
    standin.fail_next(429, headers={"X-RateLimit-Reset": str(int(time.time()) + 30)})

    outcome = sendgrid_client.send(EMAIL)

    assert outcome.kind == "retry"
    assert outcome.retry_after_s is not None and 27 <= outcome.retry_after_s <= 30


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_retried_with_the_providers_text(standin, sendgrid_client, status):
    standin.fail_next(status, body="<html>upstream unavailable</html>")

    outcome = sendgrid_client.send(EMAIL)

    assert (outcome.kind, outcome.status_code) == ("retry", status)
    assert outcome.error == "<html>upstream unavailable</html>"
    assert outcome.retry_after_s is None


def test_400_is_permanent_with_sendgrids_message(standin, sendgrid_client):
    standin.fail_next(400, body=error_body("The from email does not contain a valid address.", "from.email"))

    outcome = sendgrid_client.send(EMAIL)

    assert (outcome.kind, outcome.status_code) == ("permanent", 400)
    assert outcome.error == "from.email: The from email does not contain a valid address."


def test_413_from_the_stand_ins_own_size_check_is_permanent():
    with SendGridStandIn(api_key=API_KEY, max_body_bytes=1_000) as small:
        sender = SendGridClient(API_KEY, host=small.host, timeout_s=2.0)
        outcome = sender.send(replace(EMAIL, html="<p>" + "x" * 2_000 + "</p>"))

    assert (outcome.kind, outcome.status_code) == ("permanent", 413)
    assert "too large" in outcome.error


def test_a_refused_api_key_is_permanent(standin):
    sender = SendGridClient("SG.wrong-key", host=standin.host, timeout_s=2.0)

    outcome = sender.send(EMAIL)

    assert (outcome.kind, outcome.status_code) == ("permanent", 401)
    assert outcome.error == "The provided authorization grant is invalid, expired, or revoked"
    assert standin.messages == []


def test_403_is_permanent(standin, sendgrid_client):
    standin.fail_next(403, body=error_body("access forbidden"))

    outcome = sendgrid_client.send(EMAIL)

    assert (outcome.kind, outcome.status_code, outcome.error) == ("permanent", 403, "access forbidden")


def test_a_connection_dropped_after_sendgrid_accepted_is_ambiguous(standin, sendgrid_client):
    standin.drop_next()

    outcome = sendgrid_client.send(EMAIL)

    assert outcome.kind == "ambiguous"
    assert outcome.provider_message_id is None
    # The mail did go out: sending it again would deliver it twice.
    [message] = standin.messages
    assert message.custom_args["outreach_message_id"] == "MSG-42"


def test_a_read_timeout_after_the_request_was_written_is_ambiguous(standin):
    standin.delay = 1.0
    sender = SendGridClient(API_KEY, host=standin.host, timeout_s=0.2)

    outcome = sender.send(EMAIL)

    assert outcome.kind == "ambiguous"
    assert "timed out" in outcome.error
    assert len(standin.messages) == 1


def test_connection_refused_is_retried_because_nothing_was_sent():
    # Given a port that nothing listens on
    port = free_port()
    sender = SendGridClient(API_KEY, host=f"http://127.0.0.1:{port}", timeout_s=1.0)

    outcome = sender.send(EMAIL)

    assert outcome.kind == "retry"
    assert outcome.status_code is None
    assert "could not reach SendGrid" in outcome.error


@pytest.mark.parametrize("change", [
    {"subject": "Hello\r\nBcc: victim@example.com"},
    {"subject": "Hello\nthere"},
    {"from_name": "Team\r\nX-Injected: 1"},
    {"from_name": "Team\x00"},
    {"to_email": "ada@example.com\r\nBcc: victim@example.com"},
    {"from_email": "team@example.org\n"},
    {"headers": {"X-Campaign": "spring\r\nBcc: victim@example.com"}},
    {"headers": {"X-Bad\r\nName": "value"}},
    {"headers": {"X-Bad: Name": "value"}},
])
def test_header_injection_is_refused_before_any_request(standin, sendgrid_client, change):
    bad = replace(EMAIL, **change)

    with pytest.raises(InvalidEmail) as raised:
        build_mail(bad)
    outcome = sendgrid_client.send(bad)

    field = next(iter(change))
    assert raised.value.field.startswith(field)
    assert outcome.kind == "permanent"
    assert outcome.status_code is None
    assert outcome.error == str(raised.value)
    assert standin.requests == []


@pytest.mark.parametrize(("change", "field"), [
    ({"headers": {"From": "boss@example.org"}}, "headers['From']"),
    ({"categories": [f"c{index}" for index in range(11)]}, "categories"),
    ({"categories": ["x" * 256]}, "categories[0]"),
    ({"custom_args": {"outreach_message_id": "MSG-other"}}, "custom_args.outreach_message_id"),
    ({"custom_args": {"count": 3}}, "custom_args.count"),
    ({"custom_args": {"blob": "x" * 10_000}}, "custom_args"),
    ({"message_id": ""}, "message_id"),
    ({"tenant": ""}, "tenant"),
    ({"subject": "  "}, "subject"),
    ({"html": None, "text": None}, "html"),
    ({"html": "SG.abcdef.ghijkl is our key"}, "html"),
])
def test_mail_sendgrid_would_refuse_is_refused_here_naming_the_field(standin, sendgrid_client, change, field):
    bad = replace(EMAIL, **change)

    with pytest.raises(InvalidEmail) as raised:
        build_mail(bad)

    assert raised.value.field == field
    assert str(raised.value).startswith(f"{field}: ")
    assert sendgrid_client.send(bad).kind == "permanent"
    assert standin.requests == []


@pytest.mark.parametrize("address", [
    "ada@example.com", "first.last+tag@mail.example.co.uk", "o'hara@example.ie",
    "a_b-c@sub-domain.example.org",
])
def test_valid_addresses_pass_unchanged(address):
    assert validate_address(address) == address


def test_an_international_domain_is_sent_in_its_idna_form(standin, sendgrid_client):
    assert validate_address("ada@bücher.example") == "ada@xn--bcher-kva.example"

    sendgrid_client.send(replace(EMAIL, to_email="ada@bücher.example"))

    assert standin.messages[0].body["personalizations"][0]["to"] == [{"email": "ada@xn--bcher-kva.example"}]


@pytest.mark.parametrize("address", [
    "", "ada", "ada@", "@example.com", "ada@example", "ada@@example.com", "a b@example.com",
    "ada..lovelace@example.com", ".ada@example.com", "ada.@example.com", "ada@-example.com",
    "ada@example-.com", "ada@example..com", "ada@example.com.", "ada@example.123",
    "adä@example.com", '"ada"@example.com', "ada@[192.0.2.1]", "a" * 65 + "@example.com",
    "ada@" + "a" * 64 + ".com",
])
def test_invalid_addresses_are_refused(address):
    with pytest.raises(InvalidEmail, match="to_email: "):
        validate_address(address, "to_email")


def test_concurrent_sends_through_one_client_each_get_their_own_id(standin, sendgrid_client):
    outcomes = []

    def send(index: int) -> None:
        outcomes.append(sendgrid_client.send(replace(EMAIL, message_id=f"MSG-{index}")))

    threads = [threading.Thread(target=send, args=(index,)) for index in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert {outcome.kind for outcome in outcomes} == {"sent"}
    by_provider_id = {message.x_message_id: message for message in standin.messages}
    assert sorted(by_provider_id) == sorted(outcome.provider_message_id for outcome in outcomes)
    assert {message.custom_args["outreach_message_id"] for message in standin.messages} == {
        f"MSG-{index}" for index in range(16)
    }


def test_under_random_failures_only_sent_outcomes_were_accepted():
    with SendGridStandIn(api_key=API_KEY, failure_rate=0.5, failure_statuses=(500, 503, 429), seed=3) as standin:
        sender = SendGridClient(API_KEY, host=standin.host, timeout_s=2.0)
        outcomes = [sender.send(replace(EMAIL, message_id=f"MSG-{index}")) for index in range(20)]
        accepted = {message.x_message_id for message in standin.messages}

    assert {outcome.kind for outcome in outcomes} == {"sent", "retry"}
    assert accepted == {outcome.provider_message_id for outcome in outcomes if outcome.kind == "sent"}


def test_retry_after_may_be_an_http_date():
    headers = Message()
    headers["Retry-After"] = format_datetime(datetime.now(UTC) + timedelta(seconds=120), usegmt=True)

    outcome = outcome_for_response(503, headers, b"")

    assert outcome.kind == "retry"
    assert outcome.retry_after_s is not None and 115 <= outcome.retry_after_s <= 120
    assert outcome.error == "HTTP 503 with no message"


def test_a_client_from_settings_uses_the_configured_host_key_and_timeout(standin):
    settings = Settings(
        sendgrid_api_key=API_KEY, sendgrid_api_host=standin.host, sendgrid_timeout=timedelta(seconds=3),
    )

    sender = sendgrid_client_from_settings(settings)

    assert sender.timeout_s == 3.0
    assert sender.send(EMAIL).kind == "sent"
    assert len(standin.messages) == 1


def test_a_client_from_settings_needs_an_api_key_and_an_http_host():
    with pytest.raises(SettingsError, match="OUTREACH_SENDGRID_API_KEY"):
        sendgrid_client_from_settings(Settings())
    with pytest.raises(SettingsError, match="must be an http"):
        sendgrid_client_from_settings(Settings(sendgrid_api_key=API_KEY, sendgrid_api_host="api.sendgrid.com"))
