"""The SendGrid client keeps its connection open between sends, and never at the cost
of a send's classification: a kept connection the server has closed is replaced
before use, so it costs no retry and makes no send ambiguous."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest

from outreach_actors.providers.sendgrid.client import OutgoingEmail, SendGridClient
from outreach_actors.providers.sendgrid.keepalive import KeptAliveConnections

from .conftest import STANDIN_API_KEY

EMAIL = OutgoingEmail(
    message_id="MSG-1", tenant="acme", to_email="ada@example.com", from_email="team@example.org",
    from_name="Team", subject="Hello", html="<p>Hi</p>", text="Hi",
)


def email(number: int) -> OutgoingEmail:
    return replace(EMAIL, message_id=f"MSG-{number}")


def test_sends_from_one_thread_share_one_connection(standin, sendgrid_client):
    outcomes = [sendgrid_client.send(email(number)) for number in range(5)]

    assert [outcome.kind for outcome in outcomes] == ["sent"] * 5
    assert len(standin.messages) == 5
    assert standin.connections == 1


def test_each_worker_thread_keeps_its_own_connection(standin, sendgrid_client):
    outcomes = []

    def sender(first: int) -> None:
        outcomes.extend(sendgrid_client.send(email(first + number)) for number in range(3))

    threads = [threading.Thread(target=sender, args=(10 * index,)) for index in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert [outcome.kind for outcome in outcomes] == ["sent"] * 9
    assert len(standin.messages) == 9
    assert standin.connections == 3


def test_a_connection_the_server_closed_while_idle_is_replaced_before_use(standin, sendgrid_client):
    assert sendgrid_client.send(email(1)).kind == "sent"
    standin.close_connections()

    outcome = sendgrid_client.send(email(2))

    assert outcome.kind == "sent"
    assert [message.custom_args["outreach_message_id"] for message in standin.messages] == [
        "MSG-1", "MSG-2"]
    assert standin.connections == 2


def test_a_stopped_server_is_unreachable_not_ambiguous(standin, sendgrid_client):
    assert sendgrid_client.send(email(1)).kind == "sent"
    standin.stop()

    outcome = sendgrid_client.send(email(2))

    assert outcome.kind == "retry"
    assert "could not reach SendGrid" in outcome.error


def test_a_drop_on_a_kept_connection_is_ambiguous_and_the_next_send_reconnects(standin, sendgrid_client):
    assert sendgrid_client.send(email(1)).kind == "sent"
    standin.drop_next()

    dropped = sendgrid_client.send(email(2))
    after = sendgrid_client.send(email(3))

    assert dropped.kind == "ambiguous"
    assert after.kind == "sent"
    assert standin.connections == 2


def test_a_connection_idle_past_its_limit_is_replaced(standin):
    connections = KeptAliveConnections(standin.host, timeout_s=2.0, max_idle_s=0.05)

    first = connections.post("/v3/unknown", b"{}", {})
    second = connections.post("/v3/unknown", b"{}", {})
    time.sleep(0.1)
    third = connections.post("/v3/unknown", b"{}", {})

    assert [answer.status for answer in (first, second, third)] == [404, 404, 404]
    assert standin.connections == 2


def test_an_answer_that_closes_the_connection_is_not_reused(standin):
    connections = KeptAliveConnections(standin.host, timeout_s=2.0)

    connections.post("/v3/unknown", b"{}", {"Connection": "close"})
    connections.post("/v3/unknown", b"{}", {})

    assert standin.connections == 2


def test_a_base_path_in_the_host_is_kept(standin):
    # A host such as https://proxy.example/sendgrid puts the API under a path.
    client = SendGridClient(STANDIN_API_KEY, host=standin.host + "/relay", timeout_s=2.0)

    outcome = client.send(EMAIL)

    assert outcome.kind == "permanent"  # the stand-in serves /v3/mail/send only
    assert standin.requests[0].path == "/relay/v3/mail/send"


@pytest.mark.parametrize("url", ["api.sendgrid.com", "ftp://api.sendgrid.com", "https://"])
def test_a_url_that_is_no_http_host_is_refused(url):
    with pytest.raises(ValueError, match="http"):
        KeptAliveConnections(url, timeout_s=1.0)


def test_closing_the_client_ends_the_threads_connection(standin, sendgrid_client):
    assert sendgrid_client.send(email(1)).kind == "sent"
    sendgrid_client.close()

    assert sendgrid_client.send(email(2)).kind == "sent"
    assert standin.connections == 2
