"""Funnel counts kept by the database: triggers append a delta in the same transaction
as every change the funnel counts, whatever code made it, and ``fold_counts`` sums the
deltas into one row per plan version, node and name.

The names are generic, so that a new status or event type is counted with no change
here: ``entered`` (node visits), ``enrollment:<status>`` (contacts whose enrollment is in
the node now, by status), ``message:<status>`` (the node's emails by status), and each
event type of a node's emails, once per email however often it is delivered (a click on
our own unsubscribe link is not a click; an open is ``opened`` when a person made it and
``opened:any`` counts machine opens too). Rows deleted later (a tenant removed, events
purged) leave event counts as history; statuses follow the enrollment and message rows.

Why triggers rather than calls in the engine: every path that writes these tables
(engine, ingest, timers, sends, a host's own scripts, the tests' fixtures) is counted,
and a rolled-back transaction takes its deltas with it. Why deltas rather than
``UPDATE ... count = count + 1``: concurrent workers would queue on (and could deadlock
over) the same counter rows until each commit.
"""

from __future__ import annotations

import peewee

from outreach_actors.domain.store.db import is_postgresql
from outreach_actors.domain.vocabulary import MACHINE_OPEN, UNSUBSCRIBE_LINK, EventType

ENTERED = "entered"
ENROLLMENT_STATUS = "enrollment:"
MESSAGE_STATUS = "message:"
ANY_OPEN = f"{EventType.OPENED}:any"
# The trigger that create_schema looks for to know the counters are installed.
_MARKER = "outreach_count_visits"


def _named_events(row: str, source: str, flag) -> str:
    """SQL for the (message_id, name) pairs the event rows of ``source`` (each called
    ``row``; no source: the trigger's one row) count under: each event its type's name,
    and an open also ``opened:any`` (a NULL name: not counted). ``flag(row, key)`` is
    the dialect's test of a true flag in the row's JSON ``data``."""
    human = (f"CASE WHEN {row}.type = '{EventType.OPENED}' AND {flag(row, MACHINE_OPEN)} "
             f"THEN NULL WHEN {row}.type = '{EventType.CLICKED}' AND "
             f"{flag(row, UNSUBSCRIBE_LINK)} THEN NULL ELSE {row}.type END")
    any_open = f"CASE WHEN {row}.type = '{EventType.OPENED}' THEN '{ANY_OPEN}' END"
    source = f" FROM {source} {row}" if source else ""
    return (f"SELECT {row}.message_id AS message_id, {human} AS name{source} "
            f"UNION ALL SELECT {row}.message_id, {any_open}{source}")


def _sqlite_flag(row: str, key: str) -> str:
    return f"coalesce(json_extract({row}.data, '$.{key}'), 0) = 1"


def _postgresql_flag(row: str, key: str) -> str:
    # The text JSONField writes (json.dumps), not a parse: PostgreSQL's json refuses the
    # whole value for a \u0000 anywhere in it, which a broken relay's event may hold.
    # Read once, when the event is stored; stats never matches text.
    return f"strpos({row}.data, '\"{key}\": true') > 0"


def _sqlite_triggers() -> list[str]:
    def delta(plan: str, node: str, name: str, sign: str, source: str) -> str:
        return (f"INSERT INTO funnel_count_delta (plan_id, node, name, delta) "
                f"SELECT {plan}, {node}, {name}, {sign} {source};")

    names = _named_events("NEW", "", _sqlite_flag)
    message_plan = "(SELECT plan_id FROM enrollment WHERE id = {row}.enrollment_id)"
    return [
        f"""CREATE TRIGGER IF NOT EXISTS {_MARKER} AFTER INSERT ON node_visit BEGIN
            {delta("plan_id", "NEW.node", f"'{ENTERED}'", "1",
                   "FROM enrollment WHERE id = NEW.enrollment_id")} END""",
        f"""CREATE TRIGGER IF NOT EXISTS outreach_count_enrollments_in AFTER INSERT ON enrollment
            BEGIN {delta("NEW.plan_id", "NEW.current_node",
                         f"'{ENROLLMENT_STATUS}' || NEW.status", "1", "")} END""",
        f"""CREATE TRIGGER IF NOT EXISTS outreach_count_enrollments_moved
            AFTER UPDATE OF plan_id, current_node, status ON enrollment BEGIN
            {delta("OLD.plan_id", "OLD.current_node", f"'{ENROLLMENT_STATUS}' || OLD.status",
                   "-1", "")}
            {delta("NEW.plan_id", "NEW.current_node", f"'{ENROLLMENT_STATUS}' || NEW.status",
                   "1", "")} END""",
        f"""CREATE TRIGGER IF NOT EXISTS outreach_count_enrollments_out AFTER DELETE ON enrollment
            BEGIN {delta("OLD.plan_id", "OLD.current_node",
                         f"'{ENROLLMENT_STATUS}' || OLD.status", "-1", "")} END""",
        f"""CREATE TRIGGER IF NOT EXISTS outreach_count_messages_in AFTER INSERT ON outbound_message
            WHEN NEW.enrollment_id IS NOT NULL BEGIN
            {delta(message_plan.format(row="NEW"), "NEW.node",
                   f"'{MESSAGE_STATUS}' || NEW.status", "1", "")} END""",
        f"""CREATE TRIGGER IF NOT EXISTS outreach_count_messages_moved
            AFTER UPDATE OF status, node, enrollment_id ON outbound_message BEGIN
            {delta(message_plan.format(row="OLD"), "OLD.node",
                   f"'{MESSAGE_STATUS}' || OLD.status", "-1",
                   "WHERE OLD.enrollment_id IS NOT NULL")}
            {delta(message_plan.format(row="NEW"), "NEW.node",
                   f"'{MESSAGE_STATUS}' || NEW.status", "1",
                   "WHERE NEW.enrollment_id IS NOT NULL")} END""",
        f"""CREATE TRIGGER IF NOT EXISTS outreach_count_messages_out
            AFTER DELETE ON outbound_message WHEN OLD.enrollment_id IS NOT NULL BEGIN
            {delta(message_plan.format(row="OLD"), "OLD.node",
                   f"'{MESSAGE_STATUS}' || OLD.status", "-1", "")} END""",
        # SQLite runs one writer at a time: "not counted yet" cannot race.
        f"""CREATE TRIGGER IF NOT EXISTS outreach_count_events AFTER INSERT ON message_event
            WHEN NEW.message_id IS NOT NULL BEGIN
            INSERT INTO funnel_count_delta (plan_id, node, name, delta)
                SELECT e.plan_id, m.node, names.name, 1 FROM ({names}) names
                JOIN outbound_message m ON m.id = NEW.message_id
                JOIN enrollment e ON e.id = m.enrollment_id
                WHERE names.name IS NOT NULL AND NOT EXISTS (
                    SELECT 1 FROM counted_event c
                    WHERE c.message_id = NEW.message_id AND c.name = names.name);
            INSERT OR IGNORE INTO counted_event (message_id, name)
                SELECT message_id, name FROM ({names}) names WHERE name IS NOT NULL; END""",
    ]


def _postgresql_triggers() -> list[str]:
    def function(name: str, body: str) -> str:
        return (f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ "
                f"BEGIN {body}; RETURN NULL; END $$")

    def trigger(name: str, timing: str, table: str, level: str) -> str:
        return (f"CREATE OR REPLACE TRIGGER {name} {timing} ON {table} {level} "
                f"EXECUTE FUNCTION {name}()")

    insert = "INSERT INTO funnel_count_delta (plan_id, node, name, delta) "
    # Inserts come in batches (bulk enrollment, webhook batches): one trigger call per
    # statement, its rows summed. Updates come one row at a time, and most do not touch
    # what is counted: a row trigger whose WHEN is checked without calling any function.
    statements = [
        function(_MARKER, insert + f"SELECT e.plan_id, n.node, '{ENTERED}', count(*) "
                 "FROM new_rows n JOIN enrollment e ON e.id = n.enrollment_id GROUP BY 1, 2"),
        trigger(_MARKER, "AFTER INSERT", "node_visit",
                "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT"),
        function("outreach_count_enrollments_in", insert
                 + f"SELECT plan_id, current_node, '{ENROLLMENT_STATUS}' || status, count(*) "
                 "FROM new_rows GROUP BY 1, 2, 3"),
        trigger("outreach_count_enrollments_in", "AFTER INSERT", "enrollment",
                "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT"),
        function("outreach_count_enrollments_moved", insert
                 + f"VALUES (OLD.plan_id, OLD.current_node, '{ENROLLMENT_STATUS}' || OLD.status, -1), "
                 f"(NEW.plan_id, NEW.current_node, '{ENROLLMENT_STATUS}' || NEW.status, 1)"),
        trigger("outreach_count_enrollments_moved", "AFTER UPDATE", "enrollment",
                "FOR EACH ROW WHEN (OLD.plan_id IS DISTINCT FROM NEW.plan_id OR "
                "OLD.current_node IS DISTINCT FROM NEW.current_node OR "
                "OLD.status IS DISTINCT FROM NEW.status)"),
        function("outreach_count_enrollments_out", insert
                 + f"VALUES (OLD.plan_id, OLD.current_node, '{ENROLLMENT_STATUS}' || OLD.status, -1)"),
        trigger("outreach_count_enrollments_out", "AFTER DELETE", "enrollment", "FOR EACH ROW"),
        function("outreach_count_messages_in", insert
                 + f"SELECT e.plan_id, n.node, '{MESSAGE_STATUS}' || n.status, count(*) "
                 "FROM new_rows n JOIN enrollment e ON e.id = n.enrollment_id GROUP BY 1, 2, 3"),
        trigger("outreach_count_messages_in", "AFTER INSERT", "outbound_message",
                "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT"),
        function("outreach_count_messages_moved", insert
                 + f"SELECT plan_id, OLD.node, '{MESSAGE_STATUS}' || OLD.status, -1 "
                 "FROM enrollment WHERE id = OLD.enrollment_id UNION ALL "
                 f"SELECT plan_id, NEW.node, '{MESSAGE_STATUS}' || NEW.status, 1 "
                 "FROM enrollment WHERE id = NEW.enrollment_id"),
        trigger("outreach_count_messages_moved", "AFTER UPDATE", "outbound_message",
                "FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status OR "
                "OLD.node IS DISTINCT FROM NEW.node OR "
                "OLD.enrollment_id IS DISTINCT FROM NEW.enrollment_id)"),
        function("outreach_count_messages_out", insert
                 + f"SELECT plan_id, OLD.node, '{MESSAGE_STATUS}' || OLD.status, -1 "
                 "FROM enrollment WHERE id = OLD.enrollment_id"),
        trigger("outreach_count_messages_out", "AFTER DELETE", "outbound_message", "FOR EACH ROW"),
        # The unique insert into counted_event decides which copy of an event counts: a
        # concurrent one waits for this transaction and then finds the pair taken.
        function("outreach_count_events",
                 "WITH named AS (SELECT DISTINCT message_id, name FROM ("
                 f"{_named_events('n', 'new_rows', _postgresql_flag)}) names "
                 "WHERE message_id IS NOT NULL AND name IS NOT NULL), "
                 "fresh AS (INSERT INTO counted_event (message_id, name) "
                 "SELECT message_id, name FROM named ORDER BY 1, 2 "
                 "ON CONFLICT DO NOTHING RETURNING message_id, name) "
                 + insert + "SELECT e.plan_id, m.node, f.name, count(*) FROM fresh f "
                 "JOIN outbound_message m ON m.id = f.message_id "
                 "JOIN enrollment e ON e.id = m.enrollment_id GROUP BY 1, 2, 3"),
        trigger("outreach_count_events", "AFTER INSERT", "message_event",
                "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT"),
    ]
    return statements


def _backfill(database: peewee.Database) -> list[str]:
    """The counts of the rows already there, for a database upgraded by ``db init``."""
    flag = _postgresql_flag if is_postgresql(database) else _sqlite_flag
    insert = "INSERT INTO funnel_count_delta (plan_id, node, name, delta) "
    return [
        insert + f"SELECT e.plan_id, v.node, '{ENTERED}', count(*) FROM node_visit v "
        "JOIN enrollment e ON e.id = v.enrollment_id GROUP BY 1, 2",
        insert + f"SELECT plan_id, current_node, '{ENROLLMENT_STATUS}' || status, count(*) "
        "FROM enrollment GROUP BY 1, 2, 3",
        insert + f"SELECT e.plan_id, m.node, '{MESSAGE_STATUS}' || m.status, count(*) "
        "FROM outbound_message m JOIN enrollment e ON e.id = m.enrollment_id GROUP BY 1, 2, 3",
        "INSERT INTO counted_event (message_id, name) SELECT DISTINCT message_id, name "
        f"FROM ({_named_events('n', 'message_event', flag)}) names "
        "WHERE message_id IS NOT NULL AND name IS NOT NULL",
        insert + "SELECT e.plan_id, m.node, c.name, count(*) FROM counted_event c "
        "JOIN outbound_message m ON m.id = c.message_id "
        "JOIN enrollment e ON e.id = m.enrollment_id GROUP BY 1, 2, 3",
    ]


def counters_installed(database: peewee.Database) -> bool:
    """Whether the counting triggers exist (of a database connected by the caller)."""
    if is_postgresql(database):
        sql = "SELECT 1 FROM pg_trigger WHERE tgname = %s"
    else:
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = ?"
    return database.execute_sql(sql, (_MARKER,)).fetchone() is not None


def install_counters(database: peewee.Database) -> None:
    """Create the counting triggers; the first time, count the rows already there, in
    the same transaction (writers wait meanwhile, so nothing is counted twice or missed)."""
    with database.atomic():
        if is_postgresql(database):
            database.execute_sql("LOCK TABLE node_visit, enrollment, outbound_message, "
                                 "message_event IN SHARE ROW EXCLUSIVE MODE")
        first = not counters_installed(database)
        if first:
            database.execute_sql("DELETE FROM funnel_count")
            database.execute_sql("DELETE FROM funnel_count_delta")
            database.execute_sql("DELETE FROM counted_event")
            for statement in _backfill(database):
                database.execute_sql(statement)
        for statement in (_postgresql_triggers() if is_postgresql(database)
                          else _sqlite_triggers()):
            database.execute_sql(statement)


def fold_counts(database: peewee.Database) -> int:
    """Sum the deltas into the counts; returns how many deltas were folded. Safe beside
    writers and another fold: each delta is taken by exactly one fold."""
    if is_postgresql(database):
        cursor = database.execute_sql(
            "WITH moved AS (DELETE FROM funnel_count_delta RETURNING plan_id, node, name, delta), "
            "summed AS (SELECT plan_id, node, name, sum(delta) AS delta, count(*) AS n "
            "FROM moved GROUP BY 1, 2, 3), "
            'upserted AS (INSERT INTO funnel_count (plan_id, node, name, "count") '
            "SELECT plan_id, node, name, delta FROM summed ORDER BY 1, 2, 3 "
            "ON CONFLICT (plan_id, node, name) DO UPDATE "
            'SET "count" = funnel_count."count" + EXCLUDED."count") '
            "SELECT coalesce(sum(n), 0) FROM summed")
        return int(cursor.fetchone()[0])
    with database.atomic():
        (last,) = database.execute_sql("SELECT max(id) FROM funnel_count_delta").fetchone()
        if last is None:
            return 0
        database.execute_sql(
            'INSERT INTO funnel_count (plan_id, node, name, "count") '
            "SELECT plan_id, node, name, sum(delta) FROM funnel_count_delta WHERE id <= ? "
            "GROUP BY 1, 2, 3 ON CONFLICT (plan_id, node, name) DO UPDATE "
            'SET "count" = "count" + excluded."count"', (last,))
        return database.execute_sql("DELETE FROM funnel_count_delta WHERE id <= ?",
                                    (last,)).rowcount


def counts(database: peewee.Database, plan_ids: list[int]) -> dict[tuple[int, str, str], int]:
    """(plan id, node, name): count, for these plan versions: the folded counts plus the
    deltas not folded yet, so exact at any moment."""
    if not plan_ids:
        return {}
    marks = ", ".join([database.param] * len(plan_ids))
    cursor = database.execute_sql(
        f"SELECT plan_id, node, name, sum(total) FROM ("
        f"SELECT plan_id, node, name, \"count\" AS total FROM funnel_count WHERE plan_id IN ({marks}) "
        f"UNION ALL SELECT plan_id, node, name, delta FROM funnel_count_delta "
        f"WHERE plan_id IN ({marks})) counted GROUP BY plan_id, node, name",
        [*plan_ids, *plan_ids])
    return {(plan_id, node, name): int(total) for plan_id, node, name, total in cursor.fetchall()}
