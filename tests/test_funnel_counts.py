"""The funnel's counts, kept by database triggers: exact after duplicates, rollbacks,
upgrades and folds, on SQLite and PostgreSQL, and generic over event types."""

from __future__ import annotations

import threading

import pytest

from outreach_actors.domain import engine
from outreach_actors.domain.stats import funnel
from outreach_actors.domain.store import counters, models
from outreach_actors.domain.store.models import (
    Enrollment,
    MessageEvent,
    NodeVisit,
    OutboundMessage,
    insert_rows,
    utcnow,
)

from .factories import load_plan, make_tenant


@pytest.fixture
def plan(db) -> models.Plan:
    make_tenant()
    return load_plan()


def send(enrollment: Enrollment, node: str = "intro", status: str = "sent") -> OutboundMessage:
    return OutboundMessage.create(
        tenant=enrollment.tenant_id, enrollment=enrollment, node=node,
        dedupe_key=f"{enrollment.id}:{node}", status=status, to_email="x@example.com",
        from_email="sales@acme.test", subject="s", html="h", text="t")


def event(message: OutboundMessage, kind: str, key: str, **data) -> dict:
    return {"message": message.id, "tenant": "acme", "type": kind, "event_key": key,
            "occurred_at": utcnow(), "data": data}


def stored(plan: models.Plan) -> dict[tuple[str, str], int]:
    return {(node, name): count for (_, node, name), count
            in counters.counts(models.database_proxy.obj, [plan.id]).items() if count}


def recount(plan: models.Plan) -> dict[tuple[str, str], int]:
    """The same figures counted from the rows themselves, the slow way."""
    found: dict[tuple[str, str], int] = {}

    def add(node: str, name: str) -> None:
        found[(node, name)] = found.get((node, name), 0) + 1

    enrollments = Enrollment.select().where(Enrollment.plan == plan)
    for enrollment in enrollments:
        add(enrollment.current_node, f"enrollment:{enrollment.status}")
        for visit in NodeVisit.select().where(NodeVisit.enrollment == enrollment):
            add(visit.node, "entered")
        for message in OutboundMessage.select().where(OutboundMessage.enrollment == enrollment):
            add(message.node, f"message:{message.status}")
            names = set()
            for row in MessageEvent.select().where(MessageEvent.message == message):
                if not ((row.type == "opened" and row.data.get("machine_open"))
                        or (row.type == "clicked" and row.data.get("unsubscribe_link"))):
                    names.add(row.type)
                if row.type == "opened":
                    names.add("opened:any")
            for name in names:
                add(message.node, name)
    return found


def test_counts_follow_every_change_as_a_recount_finds_it(plan) -> None:
    ada, bob, cy = (engine.enroll("acme", f"{name}@example.com", "onboarding")
                    for name in ("ada", "bob", "cy"))
    to_ada, to_bob = send(ada), send(bob, status="rendered")
    insert_rows(MessageEvent, [event(to_ada, "delivered", "d1"), event(to_ada, "opened", "o1"),
                               event(to_ada, "opened", "o2", machine_open=True),
                               event(to_ada, "clicked", "c1", unsubscribe_link=True)])
    OutboundMessage.update(status="ambiguous").where(OutboundMessage.id == to_bob.id).execute()
    engine.exit_enrollment(cy.id, "bounced")
    expected = recount(plan)
    assert stored(plan) == expected
    assert expected[("intro", "entered")] == 3 and expected[("intro", "opened")] == 1
    assert ("intro", "clicked") not in expected and expected[("intro", "message:ambiguous")] == 1


def test_an_event_delivered_twice_or_repeated_counts_its_email_once(plan) -> None:
    message = send(engine.enroll("acme", "ada@example.com", "onboarding"))
    batch = [event(message, "opened", "sg:1"), event(message, "delivered", "sg:2")]
    for _ in range(2):  # the same webhook batch delivered twice, as ingest stores it
        insert_rows(MessageEvent, batch, ignore_conflicts=True, conflict_target="event_key")
    insert_rows(MessageEvent, [event(message, "opened", "sg:3")])  # opened again
    assert stored(plan)[("intro", "opened")] == 1 == stored(plan)[("intro", "delivered")]
    [intro] = [row for row in funnel() if row["node"] == "intro"]
    assert (intro["opened"], intro["delivered"], intro["sent"]) == (1, 1, 1)


def test_a_rolled_back_change_leaves_no_count(plan) -> None:
    message = send(engine.enroll("acme", "ada@example.com", "onboarding"))
    before = stored(plan)
    with pytest.raises(RuntimeError), models.database_proxy.atomic():
        insert_rows(MessageEvent, [event(message, "clicked", "sg:c")])
        engine.enroll("acme", "bob@example.com", "onboarding")
        raise RuntimeError("the worker died before its commit")
    assert stored(plan) == before == recount(plan)
    # The click arrives again and counts now: the rollback took its "seen" mark too.
    insert_rows(MessageEvent, [event(message, "clicked", "sg:c")])
    assert stored(plan)[("intro", "clicked")] == 1


def test_an_event_type_the_engine_does_not_know_yet_is_counted_by_its_name(plan) -> None:
    message = send(engine.enroll("acme", "ada@example.com", "onboarding"))
    insert_rows(MessageEvent, [event(message, "replied", "r1"), event(message, "replied", "r2")])
    assert stored(plan)[("intro", "replied")] == 1


def test_folding_keeps_every_count_and_empties_the_deltas(plan) -> None:
    message = send(engine.enroll("acme", "ada@example.com", "onboarding"))
    insert_rows(MessageEvent, [event(message, "delivered", "d")])
    before = stored(plan)
    database = models.database_proxy.obj
    assert counters.fold_counts(database) > 0
    assert stored(plan) == before and models.FunnelCountDelta.select().count() == 0
    insert_rows(MessageEvent, [event(message, "opened", "o")])
    assert counters.fold_counts(database) == 2  # opened and opened:any
    assert stored(plan) == {**before, ("intro", "opened"): 1, ("intro", "opened:any"): 1}


def test_db_init_counts_the_rows_of_a_database_from_before_the_counters(plan, db) -> None:
    message = send(engine.enroll("acme", "ada@example.com", "onboarding"))
    insert_rows(MessageEvent, [event(message, "opened", "o", machine_open=True)])
    expected = recount(plan)
    # Given a database of the version before: no triggers, no counts
    with db.atomic():
        for name in ("funnel_count", "funnel_count_delta", "counted_event"):
            db.execute_sql(f"DELETE FROM {name}")
        for table in ("node_visit", "enrollment", "outbound_message", "message_event"):
            for trigger in [row[0] for row in db.execute_sql(
                    "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass "
                    "AND NOT tgisinternal" if counters.is_postgresql(db) else
                    "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?",
                    (table,)).fetchall()]:
                db.execute_sql(f"DROP TRIGGER {trigger}"
                               + (f" ON {table}" if counters.is_postgresql(db) else ""))
    assert models.missing_schema(db) == ["funnel count triggers"]
    models.create_schema(db)  # what `outreach db init` runs
    assert models.missing_schema(db) == [] and stored(plan) == expected
    models.create_schema(db)  # and again: nothing counted twice
    assert stored(plan) == expected


def test_one_email_opened_in_two_transactions_at_once_counts_once(postgres_db, data_dir) -> None:
    # Two workers store an open of the same email at the same moment: the unique mark
    # makes the second wait for the first and then find it counted.
    from outreach_actors.settings import configure

    from .conftest import make_settings

    configure(make_settings(data_dir))
    models.bind(postgres_db)
    make_tenant()
    plan = load_plan()
    message = send(engine.enroll("acme", "ada@example.com", "onboarding"))
    inserted = threading.Barrier(2)

    def store_open(key: str) -> None:
        with postgres_db.connection_context(), postgres_db.atomic():
            insert_rows(MessageEvent, [event(message, "opened", key)])
            inserted.wait(timeout=5) if key == "first" else None

    first = threading.Thread(target=store_open, args=("first",))
    first.start()
    second = threading.Thread(target=store_open, args=("second",))
    second.start()
    inserted.wait(timeout=5)  # the first is inserted and not committed; the second waits
    first.join(timeout=10)
    second.join(timeout=10)
    assert stored(plan)[("intro", "opened")] == 1
    assert MessageEvent.select().where(MessageEvent.message == message.id).count() == 2
    configure(None)
