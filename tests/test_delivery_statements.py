"""What one email costs the database, and that the cheaper path decides as before.

The statements are counted for real: every statement the bound database runs goes
through Peewee's query hooks (Peewee-built queries and fixed SQL alike), and every
transaction through its ``begin``. A change that adds a query to the email path
fails here, on SQLite and on PostgreSQL, instead of showing up in a benchmark.

The rest runs the render and send outcomes on both databases: the render read,
the claim, the rate-limit read and the writes are fixed SQL that each must accept
(on PostgreSQL the writes are single statements with data-modifying CTEs, with no
BEGIN or COMMIT; on SQLite, transactions).
"""

from __future__ import annotations

from datetime import datetime, timedelta

import dramatiq
import pytest

from outreach_actors.domain import engine
from outreach_actors.domain import mail as delivery
from outreach_actors.domain.mail import render as mail_render
from outreach_actors.domain.mail import send as mail_send
from outreach_actors.domain.mail import send_order as mail_send_order
from outreach_actors.domain.store import models, statements
from outreach_actors.domain.store.db import is_postgresql
from outreach_actors.domain.store.keys import recipient_key
from outreach_actors.domain.store.models import (
    Enrollment,
    OutboundMessage,
    ScheduledAction,
    SenderIdentity,
    Tenant,
    utcnow,
)
from outreach_actors.worker.actors.mail import send_rate_limits

from .conftest import counting
from .factories import load_plan, make_tenant


def send_action(email: str, **fields) -> ScheduledAction:
    enrollment = engine.enroll("acme", email, "onboarding",
                               fields=fields or {"first_name": email.split("@")[0]})
    return ScheduledAction.get(ScheduledAction.enrollment == enrollment.id,
                               ScheduledAction.kind == ScheduledAction.SEND)


@pytest.fixture
def acme(db) -> None:
    make_tenant()
    load_plan()


@pytest.fixture
def rendered(acme) -> OutboundMessage:
    return OutboundMessage.get_by_id(delivery.render_action(send_action("ada@example.com").id))


def limits_message(order: dict | str | None) -> dramatiq.Message:
    return dramatiq.Message(queue_name="send", actor_name="send", args=(order,), kwargs={},
                            options={})


def limits_of(order: dict | str | None) -> dict[tuple[str, int], int]:
    """The send's limits by (scope, period)."""
    return {(limit.scope, limit.period_ms): limit.limit
            for limit in send_rate_limits(limits_message(order))}


def timers_of(enrollment_id: int) -> list[tuple[str, str]]:
    return [(timer.node, timer.event) for timer in ScheduledAction.select().where(
        ScheduledAction.enrollment == enrollment_id, ScheduledAction.kind == ScheduledAction.TIMEOUT)]


# --- the statement budget -----------------------------------------------------------

def on_postgresql() -> bool:
    return is_postgresql(models.database_proxy.obj)


def test_an_email_costs_two_statements_to_render_none_for_its_limits_and_two_to_send(
        acme, standin, sendgrid_client) -> None:
    # A first email warms the plan cache and the connection, as a running worker has.
    delivery.send_message(delivery.render_action(send_action("first@example.com").id), sendgrid_client)
    action = send_action("ada@example.com", first_name="Ada")

    with counting() as render:
        order = delivery.render_for_send(action.id)
    message_id = delivery.order_message_id(order)
    if on_postgresql():
        # the joined read; then the message stored and the action marked done by one
        # autocommitted statement: no BEGIN, no COMMIT
        assert render.kinds == ["SELECT", "WITH"], render.sql
        assert render.sql[1] == rendered_statement(mail_render._RENDER_IN_ONE, 1)
        assert render.transactions == 0
    else:
        # the joined read; then, in one transaction, the message and the action marked done
        assert render.kinds == ["SELECT", "INSERT", "UPDATE"], render.sql
        assert render.sql[1:] == [rendered_statement(mail_render._INSERT_MESSAGES, 1),
                                  statements.statement(mail_render._FINISH_RENDERED)]
        assert render.transactions == 1

    # the send order the render pipes says whom the send counts against
    with counting() as limits:
        assert len(send_rate_limits(limits_message(order))) == 5
    assert limits.sql == []
    # a bare message id (the reconciler's) costs one narrow read
    with counting() as limits:
        assert len(send_rate_limits(limits_message(message_id))) == 5
    assert limits.sql == [statements.statement(mail_send_order._SEND_SCOPE)]

    with counting() as send:
        assert delivery.send_message(message_id, sendgrid_client).status == "sent"
    # the claim, which returns the row and the checks; then the message marked sent
    # and the node's timers
    if on_postgresql():
        # in one autocommitted statement
        assert send.kinds == ["UPDATE", "WITH"], send.sql
        assert send.sql[1].startswith(
            f"WITH sent AS ({statements.statement(mail_send._MARK_SENT)}) "
            'INSERT INTO "scheduled_action"'), send.sql[1]
        assert send.transactions == 0
    else:
        assert send.kinds == ["UPDATE", "UPDATE", "INSERT"], send.sql
        assert send.sql[1] == statements.statement(mail_send._MARK_SENT)
        assert send.transactions == 1

    message = OutboundMessage.get_by_id(message_id)
    assert (message.status, message.subject, message.attempts) == ("sent", "Welcome, Ada", 1)
    assert message.provider_message_id == standin.messages[-1].x_message_id
    assert message.sent_at is not None and message.error is None
    assert timers_of(action.enrollment_id) == [("intro", "no_open")]
    action = ScheduledAction.get_by_id(action.id)
    assert (action.status, action.result, action.message_id) == ("done", "rendered", message_id)
    assert action.finished_at is not None


def rendered_statement(template: str, emails: int) -> str:
    """The text of the write of ``emails`` rendered messages on the bound database."""
    return statements.statement(template.replace("{rows}", ", ".join([mail_render._MESSAGE_ROW] * emails)),
                               prepared=False)


def test_a_batch_of_emails_costs_the_statements_of_one_to_render(acme) -> None:
    delivery.render_action(send_action("first@example.com").id)  # warms the plan cache
    actions = [send_action(f"contact{n}@example.com") for n in range(5)]

    with counting() as render:
        batch = delivery.render_for_send_many([action.id for action in actions])
    if on_postgresql():
        # one read of the five, then one statement that stores them all
        assert render.kinds == ["SELECT", "WITH"], render.sql
        assert render.sql[1] == rendered_statement(mail_render._RENDER_IN_ONE, 5)
        assert render.transactions == 0
    else:
        # one read, then one insert of the five and each action marked done, together
        assert render.kinds == ["SELECT", "INSERT"] + ["UPDATE"] * 5, render.sql
        assert render.transactions == 1
    assert batch.raised == {}
    assert list(batch.orders) == [action.id for action in actions]
    for action in actions:
        message = OutboundMessage.get_by_id(delivery.order_message_id(batch.orders[action.id]))
        assert (message.action_id, message.to_email, message.status) == (
            action.id, Enrollment.get_by_id(action.enrollment_id).contact.email, "rendered")
        action = ScheduledAction.get_by_id(action.id)
        assert (action.status, action.message_id) == ("done", message.id)


def test_a_batch_decides_each_action_as_a_render_of_its_own_would(acme) -> None:
    # Given, in one batch: an id that is no action, a cancelled send, a send whose
    # enrollment moved on, a send already rendered, one whose render races another
    # (its action still says enqueued, but the message is stored), and a fresh one
    cancelled = send_action("cancelled@example.com")
    ScheduledAction.update(status="cancelled").where(ScheduledAction.id == cancelled.id).execute()
    moved = send_action("moved@example.com")
    Enrollment.update(version=Enrollment.version + 1).where(
        Enrollment.id == moved.enrollment_id).execute()
    done = send_action("done@example.com")
    done_message = delivery.render_action(done.id)
    raced = send_action("raced@example.com")
    raced_message = delivery.render_action(raced.id)
    ScheduledAction.update(status="enqueued", message_id=None).where(
        ScheduledAction.id == raced.id).execute()
    fresh = send_action("fresh@example.com")

    # When they are rendered together, the duplicate id given twice
    ids = [-1, cancelled.id, moved.id, done.id, raced.id, fresh.id, fresh.id]
    batch = delivery.render_for_send_many(ids)

    # Then each gets what it would alone, once, in the batch's order
    assert batch.raised == {}
    assert list(batch.orders) == [-1, cancelled.id, moved.id, done.id, raced.id, fresh.id]
    assert batch.orders[-1] is None and batch.orders[cancelled.id] is None
    assert batch.orders[moved.id] is None
    assert ScheduledAction.get_by_id(moved.id).result == "enrollment moved on"
    assert batch.orders[done.id] == done_message
    assert batch.orders[raced.id] == raced_message  # the raced insert found it stored
    fresh_message = OutboundMessage.get_by_id(delivery.order_message_id(batch.orders[fresh.id]))
    assert fresh_message.to_email == "fresh@example.com"
    assert OutboundMessage.select().count() == 3
    assert OutboundMessage.select().where(OutboundMessage.action == raced.id).count() == 1


def test_a_fault_in_one_render_is_reported_and_stores_nothing_of_it(acme, monkeypatch) -> None:
    # Given a batch of three whose second meets a fault (not a template error)
    actions = [send_action(f"{name}@example.com") for name in ("ada", "bob", "cy")]
    real_context = delivery.email_context

    def faulty_context(**facts):
        if facts["email"] == "bob@example.com":
            raise RuntimeError("the disk is on fire")
        return real_context(**facts)

    monkeypatch.setattr(mail_render, "email_context", faulty_context)
    # When the batch renders
    batch = delivery.render_for_send_many([action.id for action in actions])
    # Then the other two are stored, and the fault is handed back for Bob alone
    ada, bob, cy = actions
    assert list(batch.orders) == [ada.id, cy.id]
    assert [str(error) for error in batch.raised.values()] == ["the disk is on fire"]
    assert list(batch.raised) == [bob.id]
    assert ScheduledAction.get_by_id(bob.id).status == "pending"
    assert OutboundMessage.select().where(OutboundMessage.action == bob.id).count() == 0
    assert OutboundMessage.select().count() == 2
    # and a render of Bob's alone raises it, to be retried
    with pytest.raises(RuntimeError, match="on fire"):
        delivery.render_for_send(bob.id)
    monkeypatch.setattr(mail_render, "email_context", real_context)
    assert OutboundMessage.get_by_id(delivery.render_action(bob.id)).to_email == "bob@example.com"


def test_replays_cost_two_statements_and_change_nothing(rendered, standin, sendgrid_client) -> None:
    with counting() as render:
        assert delivery.render_action(rendered.action_id) == rendered.id
    assert render.kinds == ["SELECT", "SELECT"] and render.transactions == 0
    assert delivery.send_message(rendered.id, sendgrid_client).status == "sent"
    with counting() as send:
        assert delivery.send_message(rendered.id, sendgrid_client).status == "replay"
    assert send.kinds == ["UPDATE", "SELECT"] and send.transactions == 0
    assert len(standin.messages) == 1
    assert OutboundMessage.select().count() == 1
    assert timers_of(rendered.enrollment_id) == [("intro", "no_open")]


def test_a_claim_reads_its_own_message_however_many_wait(postgres_db) -> None:
    # Given 2,000 rendered messages waiting (a burst, or mail held by rate limits),
    # and statistics taken when the table held only sent mail
    make_tenant()
    loose = [(f"msg_{n}", "acme", f"loose:{n}", "sent", f"c{n}@example.com", "sales@acme.test",
              "Hi", "<p>Hi</p>", "Hi", utcnow()) for n in range(2000)]
    OutboundMessage.insert_many(loose, fields=[
        OutboundMessage.id, OutboundMessage.tenant, OutboundMessage.dedupe_key,
        OutboundMessage.status, OutboundMessage.to_email, OutboundMessage.from_email,
        OutboundMessage.subject, OutboundMessage.html, OutboundMessage.text,
        OutboundMessage.created_at]).execute()
    postgres_db.execute_sql("ANALYZE outbound_message")
    OutboundMessage.update(status="rendered").execute()
    # When one of them is claimed, as the send claims it
    claim = statements.statement(mail_send._CLAIM)
    params = ("sending", utcnow(), "msg_1234", "rendered", *mail_send._SUPPRESSED_PARAMS)
    with postgres_db.atomic() as transaction:
        plan = "\n".join(row for (row,) in postgres_db.execute_sql(
            "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + claim, params).fetchall())
        transaction.rollback()
    # Then it went to that row by its key, not through every message of its status
    assert "Rows Removed by Filter" not in plan, plan
    assert "Update on outbound_message" in plan and "(actual time" in plan


# --- the same decisions, on both databases -------------------------------------------

def test_the_rendered_message_holds_what_the_render_read(rendered) -> None:
    assert (rendered.status, rendered.node, rendered.attempts) == ("rendered", "intro", 0)
    assert (rendered.to_email, rendered.from_email, rendered.from_name) == (
        "ada@example.com", "sales@acme.test", "Acme Sales")
    assert rendered.categories == ["onboarding"]
    assert rendered.headers["List-Unsubscribe"].startswith("<http://localhost:8000/unsubscribe/")
    assert "https://example.com/start" in rendered.text
    action = ScheduledAction.get_by_id(rendered.action_id)
    assert (action.status, action.result, action.message_id) == ("done", "rendered", rendered.id)


def test_the_plans_sender_is_used_and_a_missing_one_fails_the_render(acme) -> None:
    SenderIdentity.create(tenant="acme", email="news@acme.test", name="Acme News", verified=True)
    load_plan(sender="News@Acme.test")  # a later version: new enrollments take it
    message = OutboundMessage.get_by_id(delivery.render_action(send_action("ada@example.com").id))
    assert (message.from_email, message.from_name) == ("news@acme.test", "Acme News")

    load_plan(sender="nobody@acme.test")
    action = send_action("bob@example.com")
    assert delivery.render_action(action.id) is None
    action = ScheduledAction.get_by_id(action.id)
    assert action.status == "failed" and "no sender identity 'nobody@acme.test'" in action.result
    assert Enrollment.get_by_id(action.enrollment_id).status == "failed"


def test_a_tenant_without_sender_prefers_a_verified_one_or_fails_the_render(db) -> None:
    Tenant.create(id="acme", name="")
    load_plan()
    action = send_action("ada@example.com")
    assert delivery.render_action(action.id) is None
    assert "tenant 'acme' has no sender identity" in ScheduledAction.get_by_id(action.id).result

    SenderIdentity.create(tenant="acme", email="draft@acme.test", verified=False)
    SenderIdentity.create(tenant="acme", email="sales@acme.test", verified=True)
    message = OutboundMessage.get_by_id(delivery.render_action(send_action("bob@example.com").id))
    assert message.from_email == "sales@acme.test"


def test_an_enrollment_that_moved_on_skips_the_render_and_cancels_the_send(acme, sendgrid_client) -> None:
    # A move cancels the node's pending send; one already taken by a worker is not.
    action = send_action("ada@example.com")
    Enrollment.update(version=Enrollment.version + 1).execute()
    assert delivery.render_action(action.id) is None
    assert ScheduledAction.get_by_id(action.id).status == "skipped"
    assert ScheduledAction.get_by_id(action.id).result == "enrollment moved on"
    action = send_action("cy@example.com")
    engine.process_event(action.enrollment_id, "clicked", node="intro")
    assert delivery.render_action(action.id) is None
    assert ScheduledAction.get_by_id(action.id).status == "cancelled"

    action = send_action("bob@example.com")
    message_id = delivery.render_action(action.id)
    engine.process_event(action.enrollment_id, "clicked", node="intro")
    assert delivery.send_message(message_id, sendgrid_client).status == "cancelled"
    assert OutboundMessage.get_by_id(message_id).error == "enrollment moved on before sending"


def test_an_unverified_or_removed_sender_never_sends(rendered, acme, standin, sendgrid_client) -> None:
    SenderIdentity.update(verified=False).execute()
    result = delivery.send_message(rendered.id, sendgrid_client)
    assert result.status == "failed" and "not a verified sender" in result.detail

    other = OutboundMessage.get_by_id(delivery.render_action(send_action("bob@example.com").id))
    SenderIdentity.delete().execute()
    assert delivery.send_message(other.id, sendgrid_client).status == "failed"
    assert Enrollment.get_by_id(other.enrollment_id).status == "failed"
    assert standin.messages == []


def test_a_retry_gives_the_claim_back_and_the_last_attempt_fails(rendered, standin,
                                                                 sendgrid_client) -> None:
    standin.fail_next(503, count=2)
    with pytest.raises(delivery.RetryableSendError):
        delivery.send_message(rendered.id, sendgrid_client)
    assert OutboundMessage.get_by_id(rendered.id).status == "rendered"
    assert delivery.send_message(rendered.id, sendgrid_client, final_attempt=True).status == "failed"
    message = OutboundMessage.get_by_id(rendered.id)
    assert (message.status, message.attempts) == ("failed", 2)
    assert Enrollment.get_by_id(rendered.enrollment_id).status == "failed"


def loose_message() -> None:
    """A rendered message of no enrollment and no action (sent by hand, say)."""
    OutboundMessage.create(
        id="msg_loose", tenant="acme", dedupe_key="loose", status="rendered",
        to_email="ada@example.com", from_email="sales@acme.test", subject="Hello",
        html="<p>Hello</p>", text="Hello", created_at=utcnow(),
    )


def test_a_message_without_enrollment_or_action_is_sent_without_timers(acme, standin,
                                                                       sendgrid_client) -> None:
    loose_message()
    assert delivery.send_message("msg_loose", sendgrid_client).status == "sent"
    assert [m.custom_args["outreach_message_id"] for m in standin.messages] == ["msg_loose"]
    assert ScheduledAction.select().where(ScheduledAction.kind == "timeout").count() == 0


def test_send_rate_limits_read_the_tenants_and_the_senders_overrides(rendered) -> None:
    Tenant.update(rate_limits={"tenant_per_hour": 7, "sender_per_hour": 9}).execute()
    SenderIdentity.update(rate_limits={"sender_per_minute": 3}).execute()
    limits = limits_of(rendered.id)
    assert limits[("tenant", 3_600_000)] == 7
    assert limits[("sender", 3_600_000)] == 9
    assert limits[("sender", 60_000)] == 3
    # A sender that is no identity (any more) takes the tenant's and the settings' limits.
    SenderIdentity.delete().execute()
    assert len(send_rate_limits(limits_message(rendered.id))) == 5
    # Nothing will be sent: no slot taken.
    OutboundMessage.update(status="sent").execute()
    assert send_rate_limits(limits_message(rendered.id)) == []
    assert send_rate_limits(limits_message("msg_missing")) == []
    assert send_rate_limits(limits_message(None)) == []


def test_a_send_order_carries_the_overrides_the_render_read(acme) -> None:
    Tenant.update(rate_limits={"tenant_per_hour": 7, "sender_per_hour": 9}).execute()
    SenderIdentity.update(rate_limits={"sender_per_minute": 3}).execute()
    order = delivery.render_for_send(send_action("Ada@Example.COM").id)

    assert order["message_id"] == OutboundMessage.get().id
    assert order["scope"] == {
        "tenant": "acme", "sender": "sales@acme.test", "recipient_domain": "example.com",
        "tenant_overrides": {"tenant_per_hour": 7, "sender_per_hour": 9},
        "sender_overrides": {"sender_per_minute": 3},
        # and what the sending policy needs: the frequency caps' recipient (a digest,
        # no address in a broker message), the node's
        # opt-out, the sender's warm-up start, where a held send waits for
        "recipient": recipient_key("ada@example.com"), "frequency_capped": True, "sender_first_sent": None,
        "plan": "onboarding", "window": None, "timezone": None,
    }
    # the same limits as a read of the message gives
    assert limits_of(order) == limits_of(order["message_id"])
    assert limits_of(order)[("sender", 60_000)] == 3
    assert limits_of(order)[("tenant", 3_600_000)] == 7


def test_a_send_order_names_the_plans_sender_and_its_overrides(acme) -> None:
    SenderIdentity.create(tenant="acme", email="news@acme.test", name="Acme News", verified=True,
                          rate_limits={"sender_per_hour": 11})
    load_plan(sender="News@Acme.test")
    order = delivery.render_for_send(send_action("ada@example.com").id)

    assert (order["scope"]["sender"], order["scope"]["sender_overrides"]) == (
        "news@acme.test", {"sender_per_hour": 11})
    assert limits_of(order) == limits_of(order["message_id"])


def test_an_order_that_waited_reads_the_message_again(acme) -> None:
    rendered_at = utcnow() - delivery.SEND_ORDER_FRESH_FOR
    order = delivery.render_for_send(send_action("ada@example.com").id, now=rendered_at)
    # an override changed since the render reaches a send that waited
    Tenant.update(rate_limits={"tenant_per_hour": 5}).execute()
    with counting() as read:
        assert limits_of(order)[("tenant", 3_600_000)] == 5
    assert read.sql == [statements.statement(mail_send_order._SEND_SCOPE)]
    # and one whose message went out meanwhile takes no slot
    OutboundMessage.update(status="sent").execute()
    assert send_rate_limits(limits_message(order)) == []
    # while a fresh order is believed: its send will find the claim taken
    fresh = {**order, "rendered_at": utcnow().isoformat()}
    assert len(send_rate_limits(limits_message(fresh))) == 5


@pytest.mark.parametrize("broken", [
    {"rendered_at": "yesterday"},
    {"rendered_at": None},
    {"rendered_at": "2026-11-22T10:00:00+00:00"},  # naive UTC is what the render writes
    {"scope": {"tenant": "acme"}},
    {"scope": "acme"},
])
def test_an_order_this_version_did_not_write_reads_the_message(acme, broken) -> None:
    order = {**delivery.render_for_send(send_action("ada@example.com").id), **broken}
    with counting() as read:
        assert len(send_rate_limits(limits_message(order))) == 5
    assert read.sql == [statements.statement(mail_send_order._SEND_SCOPE)]


# --- the single-statement writes keep their outcomes ----------------------------------

def unfinish(action_id: int) -> None:
    """Put a rendered action back as a worker found it, as if a second render raced."""
    ScheduledAction.update(status="running", result=None, finished_at=None, message=None).where(
        ScheduledAction.id == action_id).execute()


def test_two_renders_that_race_return_the_first_message_and_change_nothing(rendered) -> None:
    unfinish(rendered.action_id)
    with counting() as render:
        assert delivery.render_action(rendered.action_id) == rendered.id
    # the read, the write that fails on the dedupe key, the first render's message
    assert render.kinds[0] == "SELECT" and render.kinds[-1] == "SELECT", render.sql
    assert OutboundMessage.select().count() == 1
    action = ScheduledAction.get_by_id(rendered.action_id)
    # the failed write finished nothing (one statement, or a rolled-back transaction)
    assert (action.status, action.result, action.message_id, action.finished_at) == (
        "running", None, None, None)


def test_a_raced_render_inside_a_callers_transaction_leaves_it_usable(rendered) -> None:
    unfinish(rendered.action_id)
    with models.database_proxy.atomic():
        assert delivery.render_action(rendered.action_id) == rendered.id
        # PostgreSQL aborts a transaction on an error, unless a savepoint took it
        ScheduledAction.update(result="still here").where(
            ScheduledAction.id == rendered.action_id).execute()
    assert ScheduledAction.get_by_id(rendered.action_id).result == "still here"


TWO_TIMER_PLAN = """
name: onboarding
start: intro
nodes:
  intro:
    type: email
    subject: "Welcome"
    body: "<p>Hi</p>"
    transitions:
      - {on: no_open, after: PT72H, to: stop}
      - {on: no_click, after: PT24H, to: stop}
  stop: {type: exit}
"""

TIMER_COLUMNS = [field.name for field in ScheduledAction._meta.sorted_fields
                 if field.name not in {"id", "created_at"}]


def stored_timers(enrollment_id: int) -> list[tuple]:
    return sorted(
        tuple(getattr(timer, name) for name in TIMER_COLUMNS)
        for timer in ScheduledAction.select().where(
            ScheduledAction.enrollment == enrollment_id,
            ScheduledAction.kind == ScheduledAction.TIMEOUT))


def test_a_send_writes_the_timers_after_send_writes(db, standin, sendgrid_client) -> None:
    make_tenant()
    load_plan(TWO_TIMER_PLAN)
    action = send_action("ada@example.com")
    message_id = delivery.render_action(action.id)
    sent_at = utcnow()
    assert delivery.send_message(message_id, sendgrid_client, now=sent_at).status == "sent"
    sent = stored_timers(action.enrollment_id)
    assert [(timer[TIMER_COLUMNS.index("event")], timer[TIMER_COLUMNS.index("run_at")])
            for timer in sent] == [("no_click", sent_at + timedelta(hours=24)),
                                   ("no_open", sent_at + timedelta(hours=72))]
    assert ScheduledAction.select().where(ScheduledAction.created_at.is_null()).count() == 0

    # engine.after_send, on the message as stored, writes the very same rows ...
    ScheduledAction.delete().where(ScheduledAction.kind == ScheduledAction.TIMEOUT).execute()
    engine.after_send(OutboundMessage.get_by_id(message_id))
    assert stored_timers(action.enrollment_id) == sent
    # ... under the same dedupe keys: a send finding them there adds none and still
    # records the message as sent
    OutboundMessage.update(status="rendered").where(OutboundMessage.id == message_id).execute()
    assert delivery.send_message(message_id, sendgrid_client, now=sent_at).status == "sent"
    assert stored_timers(action.enrollment_id) == sent
    assert OutboundMessage.get_by_id(message_id).status == "sent"


def test_a_send_without_timers_is_one_statement_after_the_claim(acme, standin,
                                                               sendgrid_client) -> None:
    loose_message()
    # The identity has sent before: the first send of one also records that, once
    # (the first day of its warm-up).
    SenderIdentity.update(first_sent_at=datetime(2026, 1, 1)).execute()
    with counting() as send:
        assert delivery.send_message("msg_loose", sendgrid_client).status == "sent"
    assert send.kinds == ["UPDATE", "UPDATE"] and send.transactions == 0, send.sql
    message = OutboundMessage.get_by_id("msg_loose")
    assert (message.status, message.provider_message_id) == (
        "sent", standin.messages[-1].x_message_id)
