"""Timers fired in batches: each exactly once, a batch at the cost of one timer, safe twice."""

from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import timedelta

import dramatiq
import pytest
from prometheus_client import REGISTRY

from outreach_actors.domain import dispatch, engine, timers
from outreach_actors.domain.store import models
from outreach_actors.domain.store.db import is_postgresql
from outreach_actors.domain.store.models import (
    Enrollment,
    MessageEvent,
    OutboundMessage,
    ScheduledAction,
    utcnow,
)
from outreach_actors.settings import configure
from outreach_actors.worker.actors.mail import enqueue_actions, fire_timeouts, render_batch

from .conftest import counting, make_settings
from .factories import THREE_NODE_PLAN, load_plan, make_tenant

# intro waits for an open and for a click at once: both timers can fall in one batch.
TWO_TIMER_PLAN = THREE_NODE_PLAN.replace(
    "      - {on: no_open, after: PT2S, to: bump}",
    "      - {on: no_open, after: PT2S, to: bump}\n      - {on: no_click, after: PT3S, to: stop}",
)


@pytest.fixture
def db(data_dir, any_db):
    configure(make_settings(data_dir))
    yield any_db
    configure(None)


def sent_intros(count: int, plan_text: str = THREE_NODE_PLAN) -> list[ScheduledAction]:
    """``count`` contacts whose intro email was sent; their timers, all due now."""
    make_tenant()
    load_plan(plan_text)
    for n in range(count):
        enrollment = engine.enroll("acme", f"c{n}@example.com", "onboarding")
        action = ScheduledAction.get(ScheduledAction.enrollment == enrollment)
        message = OutboundMessage.create(
            tenant="acme", enrollment=enrollment, action=action, node="intro",
            dedupe_key=f"k{n}", status="sent", to_email=f"c{n}@example.com",
            from_email="sales@acme.test", subject="s", html="h", text="t",
            sent_at=utcnow() - timedelta(minutes=1),
        )
        ScheduledAction.finish(action.id, ScheduledAction.DONE, "rendered", now=utcnow())
        engine.after_send(message)
    return list(ScheduledAction.select().where(ScheduledAction.kind == "timeout")
                .order_by(ScheduledAction.id))


def synthetic_events() -> Counter:
    return Counter(event.action_id for event in
                   MessageEvent.select().where(MessageEvent.synthetic == True))  # noqa: E712


def fired_counted() -> float:
    """The outreach_events_total metric of fired no_open timers."""
    return REGISTRY.get_sample_value(
        "outreach_events_total", {"type": "no_open", "synthetic": "true"}) or 0.0


def test_a_batch_fires_every_timer_once_and_a_replay_changes_nothing(db) -> None:
    due = sent_intros(20)
    ids = [timer.id for timer in due]
    counted_before = fired_counted()
    outcomes = timers.fire_timeouts(ids)
    assert outcomes == dict.fromkeys(ids, "fired")
    assert fired_counted() == counted_before + 20
    assert Counter(e.current_node for e in Enrollment.select()) == {"bump": 20}
    assert synthetic_events() == dict.fromkeys(ids, 1)
    # The bump emails are scheduled, one per contact.
    assert ScheduledAction.select().where(ScheduledAction.kind == "send",
                                          ScheduledAction.node == "bump").count() == 20
    # Run twice, and once more with the ids in another order: nothing more happens.
    assert timers.fire_timeouts(ids) == dict.fromkeys(ids, "replay")
    assert timers.fire_timeouts(ids[::-1]) == dict.fromkeys(ids, "replay")
    assert synthetic_events() == dict.fromkeys(ids, 1)
    assert fired_counted() == counted_before + 20
    assert Enrollment.select().where(Enrollment.version != 1).count() == 0


def test_a_batch_costs_the_statements_of_one_timer(db) -> None:
    due = sent_intros(41)
    with counting() as one:
        assert timers.fire_timeouts([due[0].id]) == {due[0].id: "fired"}
    with counting() as forty:
        outcomes = timers.fire_timeouts([timer.id for timer in due[1:]])
    assert set(outcomes.values()) == {"fired"} and len(outcomes) == 40
    assert len(forty.sql) == len(one.sql) and forty.transactions == one.transactions


def test_each_timer_in_a_batch_gets_its_own_outcome(db) -> None:
    engaged, moved_on, quiet = sent_intros(3)
    # One contact opened the email; another bounced, which moved them on.
    MessageEvent.create(message=engaged.message_id, type="opened", event_key="sg:o",
                        occurred_at=utcnow())
    engine.process_event(moved_on.enrollment_id, "bounced", node="intro")
    ScheduledAction.update(status="enqueued").where(ScheduledAction.id == moved_on.id).execute()
    outcomes = timers.fire_timeouts([engaged.id, moved_on.id, quiet.id])
    assert outcomes == {engaged.id: "skipped", moved_on.id: "moved-on", quiet.id: "fired"}
    assert synthetic_events() == {quiet.id: 1}
    nodes = {e.id: e.current_node for e in Enrollment.select()}
    assert nodes == {engaged.enrollment_id: "intro", moved_on.enrollment_id: "stop",
                     quiet.enrollment_id: "bump"}
    results = {a.id: (a.status, a.result) for a in ScheduledAction.select()
               .where(ScheduledAction.id.in_([engaged.id, moved_on.id, quiet.id]))}
    assert results == {engaged.id: ("skipped", "engagement seen"),
                       moved_on.id: ("skipped", "enrollment moved on"),
                       quiet.id: ("done", "moved")}


def test_two_timers_of_one_contact_in_a_batch_move_it_once(db) -> None:
    due = sent_intros(2, TWO_TIMER_PLAN)
    by_event = {(t.enrollment_id, t.event): t.id for t in due}
    assert len(by_event) == 4
    outcomes = timers.fire_timeouts(list(by_event.values()))
    # The earlier no_open moves each contact to bump; its no_click finds it gone.
    assert {(key[1], outcomes[action]) for key, action in by_event.items()} == {
        ("no_open", "fired"), ("no_click", "moved-on")}
    assert Counter(e.current_node for e in Enrollment.select()) == {"bump": 2}
    assert sorted(synthetic_events()) == sorted(
        action for (_, event), action in by_event.items() if event == "no_open")


def test_concurrent_deliveries_of_overlapping_batches_fire_each_timer_once(db) -> None:
    due = sent_intros(30)
    ids = [timer.id for timer in due]
    batches = [ids, ids[::-1], ids[10:], ids[:20]]
    barrier = threading.Barrier(len(batches))
    results: list[dict[int, str]] = []
    errors: list[BaseException] = []

    def deliver(batch):
        try:
            with models.database_proxy.obj.connection_context():
                barrier.wait()
                results.append(timers.fire_timeouts(batch))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=deliver, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    fired = Counter(action for result in results for action, outcome in result.items()
                    if outcome == "fired")
    assert fired == dict.fromkeys(ids, 1)
    assert synthetic_events() == dict.fromkeys(ids, 1)
    assert Counter(e.current_node for e in Enrollment.select()) == {"bump": 30}


def refuse_inserts(database, table: str) -> tuple[list[str], list[str]]:
    """SQL that makes every insert into ``table`` fail, and SQL that undoes it."""
    if is_postgresql(database):
        return ([
            "CREATE FUNCTION refuse() RETURNS trigger AS $$ "
            "BEGIN RAISE EXCEPTION 'storage refused'; END $$ LANGUAGE plpgsql",
            f"CREATE TRIGGER refuse BEFORE INSERT ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION refuse()",
        ], [f"DROP TRIGGER refuse ON {table}", "DROP FUNCTION refuse()"])
    return ([f"CREATE TRIGGER refuse BEFORE INSERT ON {table} "
             "BEGIN SELECT RAISE(ABORT, 'storage refused'); END"], ["DROP TRIGGER refuse"])


def test_a_failed_batch_gives_its_claims_back_for_the_retry(db) -> None:
    due = sent_intros(4)
    ids = [timer.id for timer in due]
    # One contact bounced while its timer was already enqueued: a skip, rolled back too.
    moved_on = due[-1]
    engine.process_event(moved_on.enrollment_id, "bounced", node="intro")
    ScheduledAction.update(status="enqueued").where(ScheduledAction.id == moved_on.id).execute()
    # A real failure inside the transaction: the synthetic events cannot be stored.
    refuse, allow = refuse_inserts(db, MessageEvent._meta.table_name)
    for statement in refuse:
        db.execute_sql(statement)
    try:
        with pytest.raises(Exception, match="storage refused"):
            timers.fire_timeouts(ids)
        assert {a.status for a in ScheduledAction.select().where(ScheduledAction.id.in_(ids))} == {
            "enqueued"}
        assert Enrollment.select().where(Enrollment.current_node == "bump").count() == 0
    finally:
        for statement in allow:
            db.execute_sql(statement)
    # The message's retry claims them again and fires each once.
    assert timers.fire_timeouts(ids) == {**dict.fromkeys(ids[:-1], "fired"),
                                           moved_on.id: "moved-on"}
    assert synthetic_events() == dict.fromkeys(ids[:-1], 1)


def test_timers_due_together_share_a_message_and_none_is_sent_early() -> None:
    def action(action_id):
        return ScheduledAction(id=action_id, kind="timeout")

    due = [(action(n), 0) for n in range(1, 251)] + [
        (action(300), 40), (action(301), 90), (action(302), 150), (action(303), 5_000)]
    batches = dispatch.due_batches(due, max_size=100, window_ms=100)
    assert [(len(ids), delay) for ids, delay in batches] == [
        (100, 0), (100, 0), (52, 90), (1, 150), (1, 5_000)]
    assert batches[2][0][-2:] == [300, 301]
    assert sorted(i for ids, _ in batches for i in ids) == sorted(a.id for a, _ in due)


def test_enqueued_timers_travel_in_batches_and_sends_in_pipelines(stub_broker, db) -> None:
    due = sent_intros(3)
    # Plus a send due now (a fourth contact, just enrolled).
    engine.enroll("acme", "d@example.com", "onboarding")
    dispatch.dispatch_due_actions(enqueue_actions)
    timeout_messages = [dramatiq.Message.decode(data)
                        for data in stub_broker.queues["timeouts"].queue]
    assert [(m.actor_name, sorted(m.args[0])) for m in timeout_messages] == [
        (fire_timeouts.actor_name, sorted(t.id for t in due))]
    assert stub_broker.queues["render"].qsize() == 1


class _Recorder(dramatiq.Middleware):
    def __init__(self) -> None:
        self.ran: list[str] = []

    def before_process_message(self, broker, message) -> None:
        self.ran.append(message.actor_name)


def test_a_worker_holding_renders_and_timers_fires_the_timers_first(stub_broker, sqlite_db) -> None:
    def taken(queue_name: str) -> None:
        while stub_broker.queues[queue_name].qsize():
            time.sleep(0.01)
        time.sleep(0.1)  # from the consumer to the worker's own queue

    recorder = _Recorder()
    stub_broker.add_middleware(recorder)
    started, release = threading.Event(), threading.Event()

    @dramatiq.actor(queue_name="busy", broker=stub_broker)
    def busy() -> None:
        started.set()
        release.wait(10)

    worker = dramatiq.Worker(stub_broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        # Given the worker's one thread busy, and holding renders taken before a timer
        # batch (two: what a consumer of a one-thread worker takes ahead)
        busy.send()
        assert started.wait(10)
        for missing in range(2):  # distinct arguments: duplicates would be skipped
            render_batch.send([-1 - missing])
        taken("render")
        fire_timeouts.send([-1])
        taken("timeouts")
        # When the thread is free again
        release.set()
        stub_broker.join("render")
        stub_broker.join("timeouts")
        worker.join()
    finally:
        release.set()
        worker.stop()
    # Then the timers went first, the renders after them
    assert recorder.ran == ["busy", fire_timeouts.actor_name] + [render_batch.actor_name] * 2
