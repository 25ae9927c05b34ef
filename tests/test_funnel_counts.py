"""The funnel's counts, kept by database triggers: exact after duplicates, rollbacks,
upgrades and folds, on SQLite and PostgreSQL, and generic over event types; and per
day, so that any period's counts (whole days and parts of days) match its rows."""

from __future__ import annotations

import random
import threading
from datetime import datetime, timedelta

import peewee
import pytest

from outreach_actors.domain import engine
from outreach_actors.domain.stats import funnel, transition_counts
from outreach_actors.domain.store import counters, models
from outreach_actors.domain.store.models import (
    Enrollment,
    MessageEvent,
    NodeVisit,
    OutboundMessage,
    insert_rows,
    utcnow,
)
from outreach_actors.settings import configure

from .conftest import make_settings
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


def stored_in(plan: models.Plan, since: datetime | None,
              until: datetime | None) -> dict[tuple[str, str], int]:
    return {(node, name): count for (_, node, name), count in counters.period_counts(
        models.database_proxy.obj, [plan.id], since, until).items() if count}


def recount(plan: models.Plan, since: datetime | None = None,
            until: datetime | None = None) -> dict[tuple[str, str], int]:
    """The same figures counted from the rows themselves, the slow way; with a period,
    the visits, sends and events within it (each email's event type at its earliest
    copy), and no enrollment statuses (they have no time)."""
    found: dict[tuple[str, str], int] = {}
    period = since is not None or until is not None

    def add(node: str, name: str, moment: datetime | None = None) -> None:
        if period and (moment is None or (since is not None and moment < since)
                       or (until is not None and moment >= until)):
            return
        found[(node, name)] = found.get((node, name), 0) + 1

    enrollments = Enrollment.select().where(Enrollment.plan == plan)
    for enrollment in enrollments:
        add(enrollment.current_node, f"enrollment:{enrollment.status}")
        visits = {visit.version: visit for visit in
                  NodeVisit.select().where(NodeVisit.enrollment == enrollment)}
        for visit in visits.values():
            add(visit.node, "entered", visit.entered_at)
            if (before := visits.get(visit.version - 1)) is not None:  # the edge it moved along
                add(visit.node, counters.edge_name(before.node, visit.via_event), visit.entered_at)
        for message in OutboundMessage.select().where(OutboundMessage.enrollment == enrollment):
            add(message.node, f"message:{message.status}", message.sent_at or message.created_at)
            first: dict[str, datetime] = {}
            for row in MessageEvent.select().where(MessageEvent.message == message):
                names = set()
                if not ((row.type == "opened" and row.data.get("machine_open"))
                        or (row.type == "clicked" and row.data.get("unsubscribe_link"))):
                    names.add(row.type)
                if row.type == "opened":
                    names.add("opened:any")
                for name in names:
                    first[name] = min(first.get(name, row.occurred_at), row.occurred_at)
            for name, moment in first.items():
                add(message.node, name, moment)
    return found


START = datetime(2026, 3, 2)


def spread_over_days(rng: random.Random, contacts: int = 16, prefix: str = "c") -> None:
    """Enrollments, moves, sends and events over six days at any time of day: sends
    that change status (and day) later, events stored out of order, twice, machine
    opens and unsubscribe clicks; half of it folded."""
    clock = [START]
    previous = models.set_clock(lambda: clock[0])

    def later(hours: float) -> datetime:
        return clock[0] + timedelta(hours=hours, seconds=rng.randrange(3600),
                                    microseconds=rng.randrange(1_000_000))

    try:
        for n in range(contacts):
            clock[0] = START + timedelta(hours=9 * n, seconds=rng.randrange(3600))
            enrollment = engine.enroll("acme", f"{prefix}{n}@example.com", "onboarding")
            clock[0] = later(rng.choice([0, 5, 14]))
            message = send(enrollment, status="rendered")
            outcome = rng.choice(["sent", "sent", "ambiguous", "rendered"])
            if outcome != "rendered":
                sent_at = later(rng.choice([0, 3, 20])) if outcome == "sent" else None
                OutboundMessage.update(status=outcome, sent_at=sent_at).where(
                    OutboundMessage.id == message.id).execute()
            copies = [("delivered", {}), ("opened", {}), ("opened", {}),
                      ("opened", {"machine_open": True}), ("clicked", {}),
                      ("clicked", {"unsubscribe_link": True})]
            rows = [{**event(message, kind, f"{prefix}{n}:{index}", **data),
                     "occurred_at": later(rng.uniform(0, 60))}
                    for index, (kind, data) in enumerate(rng.sample(copies, rng.randrange(7)))]
            for first in range(0, len(rows), 2):  # batches out of time order, overlapping
                insert_rows(MessageEvent, rows[first:first + 3], ignore_conflicts=True,
                            conflict_target="event_key")
            if rng.random() < 0.6:
                clock[0] = later(rng.choice([2, 30]))
                engine.process_event(enrollment.id, rng.choice(["clicked", "no_open"]))
            if n == contacts // 2:
                counters.fold_counts(models.database_proxy.obj)
    finally:
        models.set_clock(previous)


def random_periods(rng: random.Random, count: int) -> list[tuple[datetime | None, datetime | None]]:
    """Periods over the data's days and around them: open ends, whole days, parts of
    days, within one day."""
    def moment() -> datetime | None:
        hours = rng.uniform(-30, 190)
        if rng.random() < 0.15:
            return None
        at = START + timedelta(hours=hours)
        return datetime(at.year, at.month, at.day) if rng.random() < 0.3 else at

    periods = []
    while len(periods) < count:
        since, until = moment(), moment()
        if since is not None and until is not None and until < since:
            since, until = until, since
        if since is not None and until is not None and rng.random() < 0.3:
            until = since + timedelta(hours=rng.uniform(0, 20))  # within a day or across one
        if since is not None or until is not None:
            periods.append((since, until))
    return periods


def without_statuses(counted: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    return {key: count for key, count in counted.items() if not key[1].startswith("enrollment:")}


def test_counts_follow_every_change_as_a_recount_finds_it(plan) -> None:
    ada, bob, cy = (engine.enroll("acme", f"{name}@example.com", "onboarding")
                    for name in ("ada", "bob", "cy"))
    to_ada, to_bob = send(ada), send(bob, status="rendered")
    insert_rows(MessageEvent, [event(to_ada, "delivered", "d1"), event(to_ada, "opened", "o1"),
                               event(to_ada, "opened", "o2", machine_open=True),
                               event(to_ada, "clicked", "c1", unsubscribe_link=True)])
    OutboundMessage.update(status="ambiguous").where(OutboundMessage.id == to_bob.id).execute()
    engine.exit_enrollment(cy.id, "bounced")
    engine.process_event(ada.id, "clicked")
    expected = recount(plan)
    assert stored(plan) == expected
    assert expected[("thanks", counters.edge_name("intro", "clicked"))] == 1
    assert expected[("intro", "entered")] == 3 and expected[("intro", "opened")] == 1
    assert ("intro", "clicked") not in expected and expected[("intro", "message:ambiguous")] == 1


def test_one_update_that_moves_some_enrollments_and_leaves_others_counts_each_once(
        plan) -> None:
    # A batch of timers moves hundreds of enrollments in one UPDATE; beside them, rows
    # whose node and status stay (only a timestamp changes) must add nothing.
    enrollments = [engine.enroll("acme", f"c{n}@example.com", "onboarding") for n in range(9)]
    ids = [enrollment.id for enrollment in enrollments]
    Enrollment.update(current_node="thanks").where(Enrollment.id.in_(ids[:4])).execute()
    Enrollment.update(
        current_node=peewee.Case(Enrollment.id, [(ids[4], "bump")], Enrollment.current_node),
        status=peewee.Case(Enrollment.id, [(ids[5], "converted"), (ids[0], "exited")],
                           Enrollment.status),
        updated_at=utcnow(),
    ).where(Enrollment.id.in_(ids)).execute()
    assert stored(plan) == recount(plan)
    assert stored(plan)[("thanks", "enrollment:active")] == 3
    assert stored(plan)[("thanks", "enrollment:exited")] == 1
    assert stored(plan)[("intro", "enrollment:active")] == 3


def test_db_init_replaces_the_row_trigger_of_enrollment_moves(postgres_db, data_dir) -> None:
    configure(make_settings(data_dir))
    models.bind(postgres_db)
    make_tenant()
    plan = load_plan()
    # Given the row trigger of an earlier version
    postgres_db.execute_sql(
        "CREATE OR REPLACE TRIGGER outreach_count_enrollments_moved AFTER UPDATE ON enrollment "
        "FOR EACH ROW EXECUTE FUNCTION outreach_count_enrollments_in()")
    models.create_schema(postgres_db)  # what `outreach db init` runs
    (definition,) = postgres_db.execute_sql(
        "SELECT pg_get_triggerdef(oid) FROM pg_trigger "
        "WHERE tgname = 'outreach_count_enrollments_moved'").fetchone()
    assert "FOR EACH STATEMENT" in definition
    ada = engine.enroll("acme", "ada@example.com", "onboarding")
    engine.process_event(ada.id, "clicked")
    assert stored(plan) == recount(plan)
    configure(None)


def test_an_event_delivered_twice_or_repeated_counts_its_email_once(plan) -> None:
    message = send(engine.enroll("acme", "ada@example.com", "onboarding"))
    batch = [event(message, "opened", "sg:1"), event(message, "delivered", "sg:2")]
    for _ in range(2):  # the same webhook batch delivered twice, as ingest stores it
        insert_rows(MessageEvent, batch, ignore_conflicts=True, conflict_target="event_key")
    insert_rows(MessageEvent, [event(message, "opened", "sg:3")])  # opened again
    assert stored(plan)[("intro", "opened")] == 1 == stored(plan)[("intro", "delivered")]
    [intro] = [row for row in funnel() if row["node"] == "intro"]
    assert (intro["opened"], intro["delivered"], intro["sent"]) == (1, 1, 1)


def test_a_move_delivered_twice_counts_its_edge_once(plan) -> None:
    ada = engine.enroll("acme", "ada@example.com", "onboarding")
    for _ in range(2):  # the same click, as a redelivered message runs the actor again
        engine.process_event(ada.id, "clicked", node="intro", visit_version=0)
    assert stored(plan)[("thanks", counters.edge_name("intro", "clicked"))] == 1
    assert stored(plan) == recount(plan)
    assert transition_counts(plan.id) == {("intro", "clicked", "thanks"): 1}
    assert transition_counts(plan.id, since=datetime(2000, 1, 1)) == transition_counts(plan.id)


def test_a_rolled_back_change_leaves_no_count(plan) -> None:
    message = send(engine.enroll("acme", "ada@example.com", "onboarding"))
    before = stored(plan)
    with pytest.raises(RuntimeError), models.database_proxy.atomic():
        insert_rows(MessageEvent, [event(message, "clicked", "sg:c")])
        engine.enroll("acme", "bob@example.com", "onboarding")
        engine.process_event(message.enrollment_id, "clicked")
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
        for name in ("funnel_count", "funnel_count_delta", "funnel_day_count",
                     "counted_event"):
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
    today = datetime.combine(utcnow().date(), datetime.min.time())
    assert stored_in(plan, today, today + timedelta(days=1)) == without_statuses(expected)


def test_db_init_counts_the_edges_of_visits_stored_before_they_were_kept(plan, db) -> None:
    ada, bob = (engine.enroll("acme", f"{name}@example.com", "onboarding") for name in ("ada", "bob"))
    engine.process_event(ada.id, "clicked")
    engine.process_event(bob.id, "no_open")
    expected = recount(plan)
    # Given the counters of the version before: no edge trigger, no edge counts, and
    # visits that do not say where they came from.
    db.execute_sql("DROP TRIGGER outreach_count_edges"
                   + (" ON node_visit" if counters.is_postgresql(db) else ""))
    for table in (models.FunnelCount, models.FunnelCountDelta):
        table.delete().where(table.name.startswith(counters.EDGE)).execute()
    NodeVisit.update(from_node=None).execute()
    assert models.missing_schema(db) == ["funnel count triggers"]
    models.create_schema(db)  # what `outreach db init` runs
    assert stored(plan) == expected
    assert expected[("bump", counters.edge_name("intro", "no_open"))] == 1
    models.create_schema(db)
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


def test_any_periods_counts_match_a_recount_of_its_rows(plan) -> None:
    rng = random.Random(24)
    spread_over_days(rng)
    assert stored(plan) == recount(plan)
    periods = random_periods(rng, 60)
    assert any(since and until and since.date() == until.date() for since, until in periods)
    for since, until in periods:
        expected = without_statuses(recount(plan, since, until))
        assert stored_in(plan, since, until) == expected, (since, until)
        moves = {(*edge, node): count for (node, name), count in expected.items()
                 if (edge := counters.edge_of(name)) is not None}
        assert transition_counts(plan.id, since=since, until=until) == moves
    since, until = periods[0]
    rows = {row["node"]: row for row in funnel(since=since, until=until)}
    expected = recount(plan, since, until)
    assert all(rows[node]["entered"] == count for (node, name), count in expected.items()
               if name == "entered")


def test_an_earlier_copy_stored_later_moves_its_emails_count_to_its_day(plan) -> None:
    message = send(engine.enroll("acme", "ada@example.com", "onboarding"))
    insert_rows(MessageEvent, [{**event(message, "opened", "late"),
                                "occurred_at": START + timedelta(days=2, hours=9)}])
    counters.fold_counts(models.database_proxy.obj)
    insert_rows(MessageEvent, [{**event(message, "opened", "early"),
                                "occurred_at": START + timedelta(hours=23)}])

    def opened_on(day: int) -> int:
        since = START + timedelta(days=day)
        return stored_in(plan, since, since + timedelta(days=1)).get(("intro", "opened"), 0)

    assert [opened_on(day) for day in range(3)] == [1, 0, 0]
    assert stored_in(plan, START + timedelta(hours=23), START + timedelta(hours=23, seconds=1)) \
        == {("intro", "opened"): 1, ("intro", "opened:any"): 1}
    assert stored(plan)[("intro", "opened")] == 1


def test_an_earlier_copy_stored_while_the_first_commits_moves_the_count_once(
        postgres_db, data_dir) -> None:
    # A worker stores an open and has not committed; another stores an earlier copy of
    # it, waits on the first's mark, and then must find it and move the count.
    from outreach_actors.settings import configure

    from .conftest import make_settings, wait_until

    configure(make_settings(data_dir))
    models.bind(postgres_db)
    make_tenant()
    plan = load_plan()
    message = send(engine.enroll("acme", "ada@example.com", "onboarding"))
    inserted, release = threading.Event(), threading.Event()

    def store_open(key: str, day: int, hold: bool) -> None:
        with postgres_db.connection_context(), postgres_db.atomic():
            insert_rows(MessageEvent, [{**event(message, "opened", key),
                                        "occurred_at": START + timedelta(days=day, hours=12)}])
            if hold:
                inserted.set()
                release.wait(timeout=10)

    first = threading.Thread(target=store_open, args=("first", 2, True))
    first.start()
    assert inserted.wait(timeout=10)
    second = threading.Thread(target=store_open, args=("second", 0, False))
    second.start()
    wait_until(lambda: postgres_db.execute_sql(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND wait_event_type = 'Lock'").fetchone()[0] > 0)
    release.set()
    first.join(timeout=10)
    second.join(timeout=10)
    by_day = [stored_in(plan, START + timedelta(days=day), START + timedelta(days=day + 1))
              .get(("intro", "opened"), 0) for day in range(3)]
    assert by_day == [1, 0, 0] and stored(plan)[("intro", "opened")] == 1
    configure(None)


def test_db_init_counts_the_days_of_a_database_counted_before_days_were_kept(plan, db) -> None:
    rng = random.Random(25)
    spread_over_days(rng)
    all_time = stored(plan)
    # Given the counters of the version before: no day trigger, no day counts, deltas
    # without a day, and counted events without the time of their first copy.
    db.execute_sql(f"DROP TRIGGER {counters._DAY_MARKER}"
                   + (" ON message_event" if counters.is_postgresql(db) else ""))
    models.FunnelDayCount.delete().execute()
    models.FunnelCountDelta.update(day=None).execute()
    models.CountedEvent.update(first_at=None).execute()
    assert models.missing_schema(db) == ["funnel count triggers"]
    models.create_schema(db)  # what `outreach db init` runs
    assert models.missing_schema(db) == [] and stored(plan) == all_time
    models.create_schema(db)  # and again: nothing counted twice
    for since, until in random_periods(rng, 20):
        assert stored_in(plan, since, until) == without_statuses(recount(plan, since, until))
    # The triggers count days from now on.
    counters.fold_counts(db)
    spread_over_days(rng, contacts=20, prefix="d")
    assert stored(plan) == recount(plan)
    for since, until in random_periods(rng, 20):
        assert stored_in(plan, since, until) == without_statuses(recount(plan, since, until))
