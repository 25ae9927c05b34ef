"""The dispatcher: due rows go to the broker once; far-off rows stay in the database."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import dramatiq
import pytest

from outreach_actors.domain import dispatch, engine
from outreach_actors.domain.store import models
from outreach_actors.domain.store.models import OutboundMessage, ScheduledAction, utcnow

from .conftest import make_settings, recipients
from .factories import load_plan, make_tenant


@pytest.fixture
def enrollments(request, data_dir):
    """Twenty enrollments, each with a pending send action, on SQLite or PostgreSQL."""
    database = request.getfixturevalue(getattr(request, "param", "sqlite_db"))
    models.bind(database)
    make_tenant()
    load_plan()
    return [engine.enroll("acme", f"c{i}@example.com", "onboarding") for i in range(20)]


def test_interrupted_sends_become_ambiguous_and_lost_sends_are_requeued(enrollments, data_dir) -> None:
    settings = make_settings(data_dir)
    old = utcnow() - timedelta(hours=1)
    action = ScheduledAction.select().first()
    common = dict(tenant="acme", enrollment=action.enrollment, action=action, node="intro",
                  to_email="a@example.com", from_email="sales@acme.test", subject="s", html="h",
                  text="t", created_at=old)
    OutboundMessage.create(id="lost", dedupe_key="k1", status="rendered", **common)
    OutboundMessage.create(id="cut", dedupe_key="k2", status="sending", send_started_at=old, **common)
    requeued: list[str] = []
    assert dispatch.reconcile_stuck_messages(requeued.append, settings=settings) == (1, 1)
    assert requeued == ["lost"]
    assert OutboundMessage.get_by_id("cut").status == "ambiguous"
    # A message that is only waiting (retry backoff, rate-limit deferral) is not
    # piled onto the queue again at every pass: once per lease.
    assert dispatch.reconcile_stuck_messages(requeued.append, settings=settings) == (0, 0)
    later = utcnow() + settings.action_lease + timedelta(seconds=1)
    assert dispatch.reconcile_stuck_messages(requeued.append, now=later, settings=settings) == (1, 0)
    assert requeued == ["lost", "lost"]


def test_a_send_waiting_out_a_rate_limit_is_not_taken_for_a_lost_one(enrollments, data_dir) -> None:
    # Given a message rendered an hour ago whose send a rate limit holds back 20 minutes
    settings = make_settings(data_dir)
    now = utcnow()
    action = ScheduledAction.select().first()
    OutboundMessage.create(
        id="waiting", dedupe_key="k1", status="rendered", tenant="acme",
        enrollment=action.enrollment, action=action, node="intro", to_email="a@example.com",
        from_email="sales@acme.test", subject="s", html="h", text="t",
        created_at=now - timedelta(hours=1))
    dispatch.note_send_waiting("waiting", now + timedelta(minutes=20))
    requeued: list[str] = []
    # When the reconciler passes while it waits, and a lease after that
    past_lease = now + settings.action_lease + timedelta(seconds=1)
    assert dispatch.reconcile_stuck_messages(requeued.append, now=past_lease,
                                             settings=settings) == (0, 0)
    back = now + timedelta(minutes=20) + settings.action_lease + timedelta(seconds=1)
    assert dispatch.reconcile_stuck_messages(requeued.append, now=back,
                                             settings=settings) == (1, 0)
    # Then it is enqueued again only once its wait and a lease passed with no send
    assert requeued == ["waiting"]
    # and an earlier "until" never shortens a longer wait already noted.
    dispatch.note_send_waiting("waiting", now)
    assert OutboundMessage.get_by_id("waiting").requeued_at == back


def test_the_send_actor_notes_its_rate_limit_deferrals(data_dir, sqlite_db, stub_broker,
                                                       stub_worker, standin) -> None:
    from outreach_actors.settings import configure
    from outreach_actors.worker.actors.mail import enqueue_actions

    configure(make_settings(data_dir, sendgrid_api_host=standin.host))
    try:
        # Given a tenant allowed one email an hour, and two contacts due now
        make_tenant()
        load_plan()
        models.Tenant.update(rate_limits={"sender_per_hour": 1}).execute()
        for email in ("ada@example.com", "bob@example.com"):
            engine.enroll("acme", email, "onboarding", fields={"first_name": "A"})
        started = utcnow()
        dispatch.dispatch_due_actions(enqueue_actions)
        # (No join: the deferred copy waits ten minutes in the delay queue.)
        noted = OutboundMessage.select().where(OutboundMessage.status == "rendered",
                                               OutboundMessage.requeued_at.is_null(False))
        deadline = time.monotonic() + 20
        while not (noted.exists() and len(standin.messages) == 1):
            assert time.monotonic() < deadline, "no send went, or the deferral was not noted"
            time.sleep(0.05)
    finally:
        configure(None)
    # Then one went, and the other, held back, says it waits (max_deferral, 10 min)
    assert len(standin.messages) == 1
    waiting = OutboundMessage.get(OutboundMessage.status == "rendered")
    assert started + timedelta(minutes=9) < waiting.requeued_at <= utcnow() + timedelta(minutes=10)


class _SeenMessages(dramatiq.Middleware):
    """Records the arguments of the messages a worker runs, and of those it skips."""

    def __init__(self) -> None:
        self.args: dict[str, list[tuple]] = {}
        self.skipped: list[tuple] = []

    def before_process_message(self, broker, message) -> None:
        self.args.setdefault(message.actor_name, []).append(message.args)

    def after_skip_message(self, broker, message) -> None:
        self.skipped.append(message.args)


@contextmanager
def campaign(stub_broker, data_dir, standin, emails: list[str],
             **settings: object) -> Iterator[_SeenMessages]:
    """``emails`` enrolled, their first sends dispatched and run by the stub worker, in
    the block; yields what messages the worker saw."""
    from outreach_actors.settings import configure
    from outreach_actors.worker.actors.mail import enqueue_actions

    seen = _SeenMessages()
    stub_broker.add_middleware(seen)
    configure(make_settings(data_dir, sendgrid_api_host=standin.host, **settings))
    try:
        make_tenant()
        load_plan()
        for email in emails:
            engine.enroll("acme", email, "onboarding", fields={"first_name": "Ada"})
        dispatch.dispatch_due_actions(enqueue_actions)
        stub_broker.join("render")
        stub_broker.join("send")
        yield seen
    finally:
        configure(None)


def test_the_render_hands_its_send_a_send_order_and_a_send_delivered_again_sends_once(
        data_dir, sqlite_db, stub_broker, stub_worker, standin) -> None:
    from outreach_actors.worker.actors.mail import send

    with campaign(stub_broker, data_dir, standin, ["ada@example.com"]) as seen:
        message = OutboundMessage.get()
        # The send took the order the render gave it: the message and whom it counts against
        (order,), = seen.args["send"]
        assert order["message_id"] == message.id
        assert order["scope"]["tenant"] == "acme"
        assert message.status == "sent" and len(standin.messages) == 1

        # When the order is delivered again, and the bare id too (the reconciler's form)
        send.send(order)
        send.send(message.id)
        stub_broker.join("send")
    # Then both were skipped as the same effect, done already, and no second email went out
    assert sorted(seen.skipped, key=repr) == sorted([(order,), (message.id,)], key=repr)
    assert len(standin.messages) == 1
    assert OutboundMessage.get_by_id(message.id).attempts == 1


def test_sends_due_together_are_rendered_in_batches_and_each_sent_once(
        data_dir, sqlite_db, stub_broker, stub_worker, standin) -> None:
    # Given ten contacts whose first emails are due now, four to a render
    emails = [f"contact{n}@example.com" for n in range(10)]
    # When the dispatcher hands them to the workers
    with campaign(stub_broker, data_dir, standin, emails, render_batch_size=4) as seen:
        pass
    # Then three messages rendered them, at most four each, and each was sent once
    assert sorted(len(ids) for (ids,) in seen.args["render_batch"]) == [2, 4, 4]
    assert "render" not in seen.args
    assert len(seen.args["send"]) == 10
    assert recipients(standin) == sorted(emails)
    assert OutboundMessage.select().where(OutboundMessage.status == "sent").count() == 10


def test_a_render_batch_out_of_time_hands_the_rest_to_a_batch_of_their_own(
        data_dir, sqlite_db, stub_broker, stub_worker, standin, monkeypatch) -> None:
    from outreach_actors.worker.actors import mail

    # Given three contacts due together, and render batches with no time to spare
    monkeypatch.setattr(mail, "RENDER_BATCH_BUDGET_S", 0)
    emails = ["ada@example.com", "bob@example.com", "cy@example.com"]
    with campaign(stub_broker, data_dir, standin, emails) as seen:
        pass
    # Then each batch rendered one and handed on the rest, and each email went out once
    (first,), (second,), (third,) = seen.args["render_batch"]
    assert (len(first), second, third) == (3, first[1:], first[2:])
    assert recipients(standin) == emails
    assert OutboundMessage.select().where(OutboundMessage.status == "sent").count() == 3


def test_a_render_that_faults_in_its_batch_is_rendered_alone_and_holds_back_no_other(
        data_dir, sqlite_db, stub_broker, stub_worker, standin, monkeypatch) -> None:
    from outreach_actors.domain import mail as delivery
    from outreach_actors.domain.mail import render as mail_render

    # Given three contacts due together, and a fault that Bob's render meets once
    real_context = delivery.email_context
    faults = {"bob@example.com"}

    def faulty_context(**facts):
        if facts["email"] in faults:
            faults.discard(facts["email"])
            raise RuntimeError("a passing fault")
        return real_context(**facts)

    monkeypatch.setattr(mail_render, "email_context", faulty_context)
    # When they are dispatched, one batch
    emails = ["ada@example.com", "bob@example.com", "cy@example.com"]
    with campaign(stub_broker, data_dir, standin, emails) as seen:
        bobs_action = ScheduledAction.get(ScheduledAction.enrollment == models.Enrollment.get(
            models.Enrollment.contact == models.Contact.get(email="bob@example.com")))
    # Then Ada's and Cy's went out from the batch, and Bob's from a render of its own
    assert [len(ids) for (ids,) in seen.args["render_batch"]] == [3]
    assert seen.args["render"] == [(bobs_action.id,)]
    assert recipients(standin) == emails
    assert OutboundMessage.select().where(OutboundMessage.status == "sent").count() == 3
