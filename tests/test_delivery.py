"""Render and send through the real client and the SendGrid stand-in: every outcome."""

from __future__ import annotations

import logging

import pytest

from outreach_actors.dev.standin import SendGridStandIn
from outreach_actors.domain import engine
from outreach_actors.domain import mail as delivery
from outreach_actors.domain.store.models import (
    Enrollment,
    OutboundMessage,
    ScheduledAction,
    SenderIdentity,
)
from outreach_actors.providers.sendgrid.client import SendGridClient

from .conftest import STANDIN_API_KEY, recipients, wait_until
from .factories import load_plan, make_tenant


@pytest.fixture
def rendered(settings):
    """A rendered intro email for Ada, ready to send."""
    make_tenant()
    load_plan()
    enrollment = engine.enroll("acme", "ada@example.com", "onboarding", fields={"first_name": "Ada"})
    action = ScheduledAction.get(ScheduledAction.enrollment == enrollment)
    return OutboundMessage.get_by_id(delivery.render_action(action.id))


def client_for(standin: SendGridStandIn, timeout: float = 5) -> SendGridClient:
    return SendGridClient(STANDIN_API_KEY, standin.host, timeout)


def status_of(message: OutboundMessage) -> str:
    return OutboundMessage.get_by_id(message.id).status


def test_render_stores_subject_html_text_and_unsubscribe_headers(rendered) -> None:
    assert rendered.subject == "Welcome, Ada"
    assert "https://example.com/start" in rendered.text
    assert rendered.headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert rendered.headers["List-Unsubscribe"].startswith("<http://localhost:8000/unsubscribe/")
    # A replay returns the same row and renders nothing new.
    assert delivery.render_action(rendered.action_id) == rendered.id
    assert OutboundMessage.select().count() == 1


def test_a_category_of_both_the_plan_and_the_node_is_sent_once(settings, standin) -> None:
    from .factories import THREE_NODE_PLAN

    make_tenant()
    load_plan(THREE_NODE_PLAN.replace(
        '    subject: "Welcome', '    categories: [welcome, onboarding]\n    subject: "Welcome'))
    enrollment = engine.enroll("acme", "ada@example.com", "onboarding", fields={"first_name": "Ada"})
    action = ScheduledAction.get(ScheduledAction.enrollment == enrollment)
    delivery.send_message(delivery.render_action(action.id), client_for(standin))
    [mail] = standin.messages
    assert mail.body["categories"] == ["onboarding", "welcome"]


def test_a_sent_message_carries_our_ids_and_schedules_its_timers(rendered, standin) -> None:
    result = delivery.send_message(rendered.id, client_for(standin))
    assert result.status == "sent"
    [mail] = standin.messages
    assert mail.custom_args == {"outreach_message_id": rendered.id, "outreach_tenant": "acme"}
    assert mail.body["categories"] == ["onboarding"]
    assert OutboundMessage.get_by_id(rendered.id).provider_message_id == mail.x_message_id
    assert ScheduledAction.select().where(ScheduledAction.kind == "timeout").count() == 1
    # Sending again is a replay: no second request.
    assert delivery.send_message(rendered.id, client_for(standin)).status == "replay"
    assert len(standin.messages) == 1


@pytest.mark.parametrize("status", [500, 503, 429])
def test_temporary_failures_are_retried_then_fail_on_the_last_attempt(rendered, standin,
                                                                      status) -> None:
    standin.fail_next(status, count=2)
    with pytest.raises(delivery.RetryableSendError):
        delivery.send_message(rendered.id, client_for(standin))
    assert status_of(rendered) == "rendered"  # the retry can claim it again
    result = delivery.send_message(rendered.id, client_for(standin), final_attempt=True)
    assert result.status == "failed"
    assert Enrollment.get_by_id(rendered.enrollment_id).status == "failed"
    assert standin.messages == []


def test_a_send_claimed_again_does_not_show_the_last_attempts_error(rendered, standin) -> None:
    import threading

    standin.fail_next(500)
    with pytest.raises(delivery.RetryableSendError):
        delivery.send_message(rendered.id, client_for(standin))
    assert OutboundMessage.get_by_id(rendered.id).error == "internal server error"
    # While the retry is in flight, the row says `sending`, not the old failure.
    standin.delay = 1.0
    retry = threading.Thread(target=delivery.send_message, args=(rendered.id, client_for(standin)))
    retry.start()
    try:
        wait_until(lambda: status_of(rendered) == "sending")
        assert OutboundMessage.get_by_id(rendered.id).error is None
    finally:
        retry.join()
    assert status_of(rendered) == "sent"


def test_a_permanent_refusal_is_recorded_with_the_providers_message(rendered, standin) -> None:
    standin.fail_next(400, body={"errors": [{"message": "The from address does not match a "
                                             "verified Sender Identity.", "field": "from"}]})
    result = delivery.send_message(rendered.id, client_for(standin))
    assert result.status == "failed"
    assert "verified Sender Identity" in OutboundMessage.get_by_id(rendered.id).error


def test_a_sendgrid_error_quoting_addresses_is_logged_and_stored_without_them(
    rendered, standin, caplog
) -> None:
    # SendGrid's text goes to the ERROR log (and so to Sentry) and to the message's error.
    standin.fail_next(400, body={"errors": [{
        "message": "The from address sales@acme.test does not match a verified Sender "
                   "Identity (to: <Ada@Example.com>).", "field": "from"}]})

    with caplog.at_level(logging.DEBUG):
        result = delivery.send_message(rendered.id, client_for(standin))

    assert result.status == "failed"
    error = OutboundMessage.get_by_id(rendered.id).error
    assert error == ("400 from: The from address [address] does not match a verified Sender "
                     "Identity (to: <[address]>).")
    [logged] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "does not match a verified Sender Identity" in logged
    assert all("@" not in r.getMessage() for r in caplog.records)


def test_a_connection_dropped_after_acceptance_is_ambiguous_not_retried(rendered, standin) -> None:
    standin.drop_next()
    result = delivery.send_message(rendered.id, client_for(standin, timeout=2))
    assert result.status == "ambiguous"
    assert len(standin.messages) == 1  # SendGrid did take it
    assert delivery.send_message(rendered.id, client_for(standin)).status == "replay"
    assert len(standin.messages) == 1


def test_an_unverified_sender_never_sends(rendered, standin) -> None:
    SenderIdentity.update(verified=False).execute()
    result = delivery.send_message(rendered.id, client_for(standin))
    assert result.status == "failed" and "not a verified sender" in result.detail
    assert standin.messages == []


def test_a_message_whose_enrollment_moved_on_is_cancelled(rendered, standin) -> None:
    engine.process_event(rendered.enrollment_id, "clicked", node="intro")
    assert delivery.send_message(rendered.id, client_for(standin)).status == "cancelled"
    assert standin.messages == []


def test_a_contact_field_cannot_inject_headers_through_the_subject(settings, standin) -> None:
    make_tenant()
    load_plan()
    enrollment = engine.enroll("acme", "eve@example.com", "onboarding",
                               fields={"first_name": "Eve\r\nBcc: everyone@example.com"})
    action = ScheduledAction.get(ScheduledAction.enrollment == enrollment)
    assert delivery.render_action(action.id) is None
    action = ScheduledAction.get_by_id(action.id)
    assert action.status == "failed" and "line break" in action.result
    assert Enrollment.get_by_id(enrollment.id).status == "failed"
    assert standin.messages == []


@pytest.mark.parametrize("database", ["sqlite_db", "postgres_db"])
def test_eight_deliveries_of_one_render_and_send_at_once_mail_once(request, data_dir, standin,
                                                                   database) -> None:
    # Given a send action delivered eight times at once (no idempotency lease in front:
    # the database's claims alone must hold), for a few contacts in turn
    import threading

    from outreach_actors.domain.store import models
    from outreach_actors.settings import configure

    from .conftest import make_settings

    db = request.getfixturevalue(database)
    configure(make_settings(data_dir))  # what rendering reads: templates, unsubscribe links
    models.bind(db)
    make_tenant()
    load_plan()
    def deliver(action_id: int, start: threading.Barrier, errors: list[str]) -> None:
        try:
            with db.connection_context():
                start.wait()
                message_id = delivery.render_action(action_id)
                if message_id:
                    delivery.send_message(message_id, client_for(standin))
        except Exception as exc:  # reported below
            errors.append(repr(exc))

    for n in range(4):
        enrollment = engine.enroll("acme", f"c{n}@example.com", "onboarding",
                                   fields={"first_name": "Ada"})
        action = ScheduledAction.get(ScheduledAction.enrollment == enrollment)
        start, errors = threading.Barrier(8), []
        threads = [threading.Thread(target=deliver, args=(action.id, start, errors))
                   for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
    configure(None)
    # Then each contact got one email, from one stored message.
    assert recipients(standin) == [f"c{n}@example.com" for n in range(4)]
    assert OutboundMessage.select().count() == 4
    assert {m.status for m in OutboundMessage.select()} == {"sent"}


def test_the_send_actor_retries_after_sendgrids_retry_after(rendered, standin, data_dir) -> None:
    # 429 with Retry-After: the retry waits what SendGrid asked, not the backoff; a 5xx
    # without one leaves the delay to Dramatiq's backoff. Either way a dramatiq.Retry:
    # expected, so neither a traceback in the log nor a Sentry error.
    import dramatiq

    from outreach_actors.settings import configure
    from outreach_actors.worker.actors.mail import send

    from .conftest import make_settings

    configure(make_settings(data_dir, sendgrid_api_host=standin.host))
    standin.fail_next(429, retry_after=7)
    with pytest.raises(dramatiq.Retry) as retried:
        send(rendered.id)
    assert retried.value.delay == 7000
    standin.fail_next(503)
    with pytest.raises(dramatiq.Retry) as retried:
        send(rendered.id)
    assert retried.value.delay is None
    send(rendered.id)
    assert status_of(rendered) == "sent" and len(standin.messages) == 1


def test_a_failed_render_marks_the_action_and_ends_the_enrollment_together(settings, sqlite_db) -> None:
    import peewee

    make_tenant()
    load_plan()
    # No first_name: the intro's subject cannot render, so the render fails the send.
    enrollment = engine.enroll("acme", "ada@example.com", "onboarding")
    action = ScheduledAction.get(ScheduledAction.enrollment == enrollment)
    # The database refuses the second write (as a locked SQLite file does).
    sqlite_db.execute_sql("CREATE TRIGGER refuse_exit BEFORE UPDATE OF status ON enrollment "
                          "BEGIN SELECT RAISE(ABORT, 'refused for the test'); END")
    with pytest.raises(peewee.IntegrityError):
        delivery.render_action(action.id)
    # Neither write stayed: the action is open, so the retry renders (and fails) again.
    assert ScheduledAction.get_by_id(action.id).status == ScheduledAction.PENDING
    sqlite_db.execute_sql("DROP TRIGGER refuse_exit")
    assert delivery.render_action(action.id) is None
    assert ScheduledAction.get_by_id(action.id).status == ScheduledAction.FAILED
    assert Enrollment.get_by_id(enrollment.id).status == Enrollment.FAILED
