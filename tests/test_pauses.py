"""Pausing a plan or a sender: its sends and timers held (not failed) at the dispatcher, at
the send's claim and before the rate limits; resumed into the next send window; idempotent,
and one outcome when a pause races a send."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta

import pytest

from outreach_actors.contrib import pause_plan as host_pause_plan
from outreach_actors.contrib import resume_plan as host_resume_plan
from outreach_actors.domain import dispatch, engine
from outreach_actors.domain import mail as delivery
from outreach_actors.domain.mail.holds import send_hold
from outreach_actors.domain.mail.send import HELD
from outreach_actors.domain.mail.send_order import send_scope
from outreach_actors.domain.pauses import (
    PauseError,
    pause_plan,
    pause_sender,
    resume_plan,
    resume_sender,
)
from outreach_actors.domain.store.models import (
    OutboundMessage,
    ScheduledAction,
    SendingPause,
    utcnow,
)
from outreach_actors.domain.timers import fire_timeouts
from outreach_actors.providers.sendgrid.client import SendGridClient

from .conftest import STANDIN_API_KEY
from .factories import THREE_NODE_PLAN, load_plan, make_tenant


@pytest.fixture
def acme(db) -> None:
    make_tenant()
    load_plan()


@pytest.fixture
def client(standin) -> SendGridClient:
    return SendGridClient(STANDIN_API_KEY, standin.host, 5)


def enroll(email: str, **kwargs) -> ScheduledAction:
    enrollment = engine.enroll("acme", email, "onboarding", fields={"first_name": "Ada"}, **kwargs)
    return ScheduledAction.get(ScheduledAction.enrollment == enrollment,
                               ScheduledAction.kind == ScheduledAction.SEND)


def dispatched(now: datetime) -> list[ScheduledAction]:
    taken: list[ScheduledAction] = []
    dispatch.dispatch_due_actions(lambda due: taken.extend(action for action, _ in due), now=now)
    return taken


def test_a_paused_plan_holds_its_sends_and_timers_at_the_dispatcher(acme, client) -> None:
    # Given Ada's intro sent (her no_open timer waits) and Bob's intro due
    ada = enroll("ada@example.com")
    delivery.send_message(delivery.render_action(ada.id), client)
    bob = enroll("bob@example.com")
    # When the plan is paused
    assert pause_plan("acme", "onboarding", reason="checking the copy", by="ops").changed
    # Then nothing of it is dispatched, an hour later either
    assert dispatched(utcnow() + timedelta(hours=1)) == []
    # Until it is resumed: both go, the timer and the send, none lost.
    assert resume_plan("acme", "onboarding", by="ops").changed
    taken = dispatched(utcnow() + timedelta(hours=1))
    assert sorted((action.kind, action.enrollment_id) for action in taken) == sorted(
        [(ScheduledAction.TIMEOUT, ada.enrollment_id), (ScheduledAction.SEND, bob.enrollment_id)])


def test_a_send_rendered_before_the_pause_is_held_at_its_claim_then_sent(acme, client,
                                                                         standin) -> None:
    message_id = delivery.render_action(enroll("ada@example.com").id)
    pause_plan("acme", "onboarding", by="ops")
    result = delivery.send_message(message_id, client)
    # Held, not failed: still rendered, nothing reached SendGrid.
    assert (result.status, result.detail) == (HELD, "plan 'onboarding' is paused")
    assert OutboundMessage.get_by_id(message_id).status == OutboundMessage.RENDERED
    assert standin.messages == []
    resume_plan("acme", "onboarding", by="ops")
    assert delivery.send_message(message_id, client).status == OutboundMessage.SENT
    assert len(standin.messages) == 1


def test_a_timer_already_in_the_broker_goes_back_to_wait_for_the_resume(acme, client) -> None:
    ada = enroll("ada@example.com")
    delivery.send_message(delivery.render_action(ada.id), client)
    [timer] = dispatched(utcnow() + timedelta(hours=1))  # enqueued: in the broker
    pause_plan("acme", "onboarding")
    # The broker delivers it: it does not fire, it waits as a pending row.
    later = utcnow() + timedelta(hours=1)
    assert fire_timeouts([timer.id], now=later) == {timer.id: "replay"}
    assert ScheduledAction.get_by_id(timer.id).status == ScheduledAction.PENDING
    resume_plan("acme", "onboarding")
    [again] = dispatched(later)
    assert again.id == timer.id
    assert fire_timeouts([timer.id], now=later)[timer.id] != "replay"


def test_pause_and_resume_are_idempotent_and_recorded(acme) -> None:
    first = pause_plan("acme", "onboarding", reason="copy review", by="ada")
    second = pause_plan("acme", "onboarding", reason="something else", by="bob")
    assert (first.changed, second.changed) == (True, False)
    row = SendingPause.get()
    # The pause in force keeps its first reason and author.
    assert (row.kind, row.name, row.reason, row.paused_by, row.resumed_at) == (
        "plan", "onboarding", "copy review", "ada", None)
    assert resume_plan("acme", "onboarding", by="carol").changed
    assert not resume_plan("acme", "onboarding", by="dave").changed
    row = SendingPause.get()
    assert row.resumed_by == "carol" and row.resumed_at is not None
    # Paused again after a resume: a new pause, with its own reason.
    assert pause_plan("acme", "onboarding", reason="again", by="erin").changed
    assert SendingPause.get().reason == "again"
    assert SendingPause.select().count() == 1


def test_unknown_plans_and_senders_are_refused_by_name(acme) -> None:
    with pytest.raises(PauseError, match="tenant 'acme' has no plan 'nope'"):
        pause_plan("acme", "nope")
    with pytest.raises(PauseError, match="no tenant 'globex'"):
        resume_plan("globex", "onboarding")
    with pytest.raises(PauseError, match="no sender identity 'who@acme.test'"):
        pause_sender("acme", "who@acme.test")


def test_the_host_api_pauses_and_resumes_a_plan(acme) -> None:
    assert host_pause_plan("acme", "onboarding", reason="from the app", by="admin").changed
    assert not host_pause_plan("acme", "onboarding").changed
    assert host_resume_plan("acme", "onboarding", by="admin").changed


def test_resume_moves_overdue_sends_to_the_next_send_window(acme) -> None:
    window_plan = THREE_NODE_PLAN.replace(
        "categories: [onboarding]",
        'categories: [onboarding]\nsend_window: {days: [mon, tue, wed, thu, fri], '
        'start: "09:00", end: "17:00"}')
    load_plan(window_plan)
    # Enrolled on Friday at 10:00 (inside the window): due at once, then paused
    friday = datetime(2026, 12, 4, 10, 0)
    action = enroll("ada@example.com", now=friday)
    assert action.run_at == friday
    pause_plan("acme", "onboarding", now=friday)
    # When it is resumed on Saturday, its send moves to Monday 09:00, not out at once.
    resume_plan("acme", "onboarding", now=datetime(2026, 12, 5, 12, 0))
    assert ScheduledAction.get_by_id(action.id).run_at == datetime(2026, 12, 7, 9, 0)


def test_a_paused_sender_is_held_before_the_rate_limits_and_at_the_claim(acme, client,
                                                                         standin) -> None:
    order = delivery.render_for_send(enroll("ada@example.com").id)
    scope = send_scope(order)
    assert send_hold(scope, utcnow(), waited=False) is None
    pause_sender("acme", "Sales@Acme.test", reason="bounces", by="ops")
    hold = send_hold(scope, utcnow(), waited=False)
    assert (hold.reason, hold.until) == ("pause", None)
    assert delivery.send_message(order["message_id"], client).status == HELD
    resume_sender("acme", "sales@acme.test", by="ops")
    assert send_hold(scope, utcnow(), waited=False) is None
    assert delivery.send_message(order["message_id"], client).status == OutboundMessage.SENT
    assert len(standin.messages) == 1


def test_a_pause_racing_sends_has_one_outcome_for_each(acme, client, standin) -> None:
    # Given 30 rendered emails and 6 threads sending them while another pauses the plan
    messages = [delivery.render_action(enroll(f"c{n}@example.com").id) for n in range(30)]
    paused_at: list[float] = []
    results: dict[str, tuple[str, float]] = {}
    queue = list(messages)
    lock = threading.Lock()

    pause_committed = threading.Event()

    def sender() -> None:
        while True:
            with lock:
                if not queue:
                    return
                message_id = queue.pop(0)
            if len(results) >= 15:  # the last half begins once the pause has committed
                pause_committed.wait(timeout=10)
            started = time.monotonic()
            results[message_id] = (delivery.send_message(message_id, client).status, started)

    def pauser() -> None:
        while len(results) < 5:  # in the middle of the sends
            time.sleep(0.001)
        pause_plan("acme", "onboarding", by="race")
        paused_at.append(time.monotonic())
        pause_committed.set()

    threads = [threading.Thread(target=sender) for _ in range(6)] + [threading.Thread(target=pauser)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then each email was sent or held, never both, never neither ...
    statuses = {message_id: OutboundMessage.get_by_id(message_id).status for message_id in messages}
    sent = {message_id for message_id, status in statuses.items() if status == "sent"}
    held = {message_id for message_id, status in statuses.items() if status == "rendered"}
    assert sent | held == set(messages) and not sent & held
    assert sent and held  # the pause did land in the middle
    assert {results[m][0] for m in sent} == {"sent"} and {results[m][0] for m in held} <= {HELD}
    # ... SendGrid got exactly the sent ones, and no send that began after the pause
    # had committed went out.
    assert sorted(mail.custom_args["outreach_message_id"] for mail in standin.messages) == sorted(sent)
    assert not [m for m in sent if results[m][1] > paused_at[0]]
    # Resumed: the held ones go, once each.
    resume_plan("acme", "onboarding")
    for message_id in held:
        assert delivery.send_message(message_id, client).status == "sent"
    assert len(standin.messages) == len(messages)


def test_a_send_held_at_its_claim_is_sent_by_the_reconciler_once_resumed(
        data_dir, sqlite_db, stub_broker, stub_worker, monkeypatch) -> None:
    # The chaos run found this: a send whose claim found the plan paused (before this
    # worker had read the pause) ended normally, so its idempotency key was marked
    # done; every message the reconciler enqueued for it was then skipped as a
    # duplicate, and once resumed it stayed rendered for good.
    from outreach_actors.dev.standin import SendGridStandIn
    from outreach_actors.settings import configure
    from outreach_actors.worker.actors import mail as mail_actors

    from .conftest import make_settings

    with SendGridStandIn(api_key=STANDIN_API_KEY) as standin:
        configure(make_settings(data_dir, sendgrid_api_host=standin.host))
        try:
            make_tenant()
            load_plan()
            message_id = delivery.render_action(enroll("ada@example.com").id)
            # Given a worker that has not read the pause yet (its cache is stale)
            monkeypatch.setattr(mail_actors, "send_hold", lambda *args, **kwargs: None)
            pause_plan("acme", "onboarding", by="ops")
            mail_actors.send.send(message_id)
            stub_broker.join(mail_actors.send.queue_name)
            stub_worker.join()
            assert OutboundMessage.get_by_id(message_id).status == OutboundMessage.RENDERED
            # When the plan is resumed and the reconciler enqueues the send again
            resume_plan("acme", "onboarding", by="ops")
            mail_actors.enqueue_send(message_id)
            stub_broker.join(mail_actors.send.queue_name)
            stub_worker.join()
        finally:
            configure(None)
        # Then it is sent, once
        assert OutboundMessage.get_by_id(message_id).status == OutboundMessage.SENT
        # (its no_open, due 2 s after the send, may move Ada on to the bump meanwhile)
        assert [m.body["custom_args"]["outreach_message_id"] for m in standin.messages
                ].count(message_id) == 1
