"""Funnel counts kept by the database: triggers append a delta in the same transaction
as every change the funnel counts, whatever code made it, and ``fold_counts`` sums the
deltas into one row per plan version, node and name, and one per UTC day of it.

The names are generic, so that a new status or event type is counted with no change
here: ``entered`` (node visits), ``enrollment:<status>`` (contacts whose enrollment is in
the node now, by status), ``message:<status>`` (the node's emails by status),
``edge:<from node><US><event>`` (the moves into the node along one edge; US is the ASCII
unit separator, which no node or event name holds, and the event is empty for a routing
node's move that had none), and each
event type of a node's emails, once per email however often it is delivered (a click on
our own unsubscribe link is not a click; an open is ``opened`` when a person made it and
``opened:any`` counts machine opens too). Rows deleted later (a tenant removed, events
purged) leave event counts as history; statuses follow the enrollment and message rows.

The day of a count: a visit's (and its edge's) entry, a message's send (its creation
until it is sent), an email's earliest copy of the event (an earlier copy stored later
moves the count to its day). Enrollment statuses, where contacts are now, have no day.
A period's counts (``period_counts``) are its whole days' counts plus, for a period that
starts or ends within a day, the rows of those parts of a day, read through indexes on
the same times: exact, and bounded by two days of rows whatever the period's length.

Why triggers rather than calls in the engine: every path that writes these tables
(engine, ingest, timers, sends, a host's own scripts, the tests' fixtures) is counted,
and a rolled-back transaction takes its deltas with it. Why deltas rather than
``UPDATE ... count = count + 1``: concurrent workers would queue on (and could deadlock
over) the same counter rows until each commit.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from typing import NamedTuple

import peewee

from outreach_actors.domain.store.db import is_postgresql
from outreach_actors.domain.vocabulary import MACHINE_OPEN, UNSUBSCRIBE_LINK, EventType

ENTERED = "entered"
ENROLLMENT_STATUS = "enrollment:"
MESSAGE_STATUS = "message:"
ANY_OPEN = f"{EventType.OPENED}:any"
# The trigger that create_schema looks for to know the counters are installed.
_MARKER = "outreach_count_visits"
# The edge counter's trigger (added later: a database without it is backfilled for it).
_EDGE_MARKER = "outreach_count_edges"
# The trigger that moves an event's count to the day of an earlier copy: there once
# counts are kept per day (added later: a database without it is backfilled for them).
_DAY_MARKER = "outreach_count_events_earlier"
_INSERT_DELTA = "INSERT INTO funnel_count_delta (plan_id, node, name, day, delta) "
_INSERT_DAY_COUNT = 'INSERT INTO funnel_day_count (plan_id, node, name, day, "count") '
EDGE = "edge:"
EDGE_SEPARATOR = "\x1f"


def edge_name(source: str, event: str | None) -> str:
    """The counter name of the moves from ``source`` on ``event`` (into the counted node)."""
    return f"{EDGE}{source}{EDGE_SEPARATOR}{event or ''}"


def edge_of(name: str) -> tuple[str, str | None] | None:
    """(from node, event or None) of an edge counter's name; None for another name."""
    if not name.startswith(EDGE) or EDGE_SEPARATOR not in name:
        return None
    source, _, event = name[len(EDGE):].partition(EDGE_SEPARATOR)
    return source, event or None


def _edge_sql(row: str) -> str:
    """SQL for the edge counter name of visit ``row`` (whose from_node is known)."""
    return f"'{EDGE}' || {row}.from_node || '{EDGE_SEPARATOR}' || coalesce({row}.via_event, '')"


def _message_time(row: str) -> str:
    """SQL for the time message ``row`` counts at: its send, or its creation until it
    is sent (the expression of the index outbound_message_sent_or_created)."""
    return f"coalesce({row}.sent_at, {row}.created_at)"


class _Dialect(NamedTuple):
    """How SQLite and PostgreSQL say what the counts need."""

    #: flag(row, key): SQL testing a true flag in the row's JSON ``data``.
    flag: Callable[[str, str], str]
    #: day(sql): the UTC day of a (naive UTC) timestamp.
    day: Callable[[str], str]


def _sqlite_flag(row: str, key: str) -> str:
    return f"coalesce(json_extract({row}.data, '$.{key}'), 0) = 1"


def _postgresql_flag(row: str, key: str) -> str:
    # The text JSONField writes (json.dumps), not a parse: PostgreSQL's json refuses the
    # whole value for a \u0000 anywhere in it, which a broken relay's event may hold.
    # Read once, when the event is stored; stats never matches text.
    return f"strpos({row}.data, '\"{key}\": true') > 0"


_SQLITE = _Dialect(flag=_sqlite_flag, day=lambda sql: f"date({sql})")
_POSTGRESQL = _Dialect(flag=_postgresql_flag, day=lambda sql: f"({sql})::date")


def _dialect(database: peewee.Database) -> _Dialect:
    return _POSTGRESQL if is_postgresql(database) else _SQLITE


def _named_events(row: str, source: str, flag: Callable[[str, str], str]) -> str:
    """SQL for the (message_id, name, at) of the event rows of ``source`` (each called
    ``row``; no source: the trigger's one row) count under: each event its type's name,
    and an open also ``opened:any`` (a NULL name: not counted); ``at`` is when it occurred."""
    human = (f"CASE WHEN {row}.type = '{EventType.OPENED}' AND {flag(row, MACHINE_OPEN)} "
             f"THEN NULL WHEN {row}.type = '{EventType.CLICKED}' AND "
             f"{flag(row, UNSUBSCRIBE_LINK)} THEN NULL ELSE {row}.type END")
    any_open = f"CASE WHEN {row}.type = '{EventType.OPENED}' THEN '{ANY_OPEN}' END"
    source = f" FROM {source} {row}" if source else ""
    return (f"SELECT {row}.message_id AS message_id, {human} AS name, "
            f"{row}.occurred_at AS at{source} "
            f"UNION ALL SELECT {row}.message_id, {any_open}, {row}.occurred_at{source}")


def _first_copies(dialect: _Dialect, source: str) -> str:
    """SQL for (message_id, name, at) of the pairs the event rows of ``source`` count
    under, ``at`` the earliest of each pair's copies among them."""
    return ("SELECT message_id, name, min(at) AS at FROM ("
            f"{_named_events('n', source, dialect.flag)}) names "
            "WHERE message_id IS NOT NULL AND name IS NOT NULL GROUP BY 1, 2")


def _sqlite_triggers() -> list[str]:
    def delta(plan: str, node: str, name: str, day: str, sign: str, source: str) -> str:
        return f"{_INSERT_DELTA} SELECT {plan}, {node}, {name}, {day}, {sign} {source};"

    day = _SQLITE.day
    names = _named_events("NEW", "", _sqlite_flag)
    message_plan = "(SELECT plan_id FROM enrollment WHERE id = {row}.enrollment_id)"
    message_day = day(_message_time("{row}"))
    return [
        f"""CREATE TRIGGER IF NOT EXISTS {_MARKER} AFTER INSERT ON node_visit BEGIN
            {delta("plan_id", "NEW.node", f"'{ENTERED}'", day("NEW.entered_at"), "1",
                   "FROM enrollment WHERE id = NEW.enrollment_id")} END""",
        f"""CREATE TRIGGER IF NOT EXISTS {_EDGE_MARKER} AFTER INSERT ON node_visit
            WHEN NEW.from_node IS NOT NULL BEGIN
            {delta("plan_id", "NEW.node", _edge_sql("NEW"), day("NEW.entered_at"), "1",
                   "FROM enrollment WHERE id = NEW.enrollment_id")} END""",
        f"""CREATE TRIGGER IF NOT EXISTS outreach_count_enrollments_in AFTER INSERT ON enrollment
            BEGIN {delta("NEW.plan_id", "NEW.current_node",
                         f"'{ENROLLMENT_STATUS}' || NEW.status", "NULL", "1", "")} END""",
        f"""CREATE TRIGGER IF NOT EXISTS outreach_count_enrollments_moved
            AFTER UPDATE OF plan_id, current_node, status ON enrollment BEGIN
            {delta("OLD.plan_id", "OLD.current_node", f"'{ENROLLMENT_STATUS}' || OLD.status",
                   "NULL", "-1", "")}
            {delta("NEW.plan_id", "NEW.current_node", f"'{ENROLLMENT_STATUS}' || NEW.status",
                   "NULL", "1", "")} END""",
        f"""CREATE TRIGGER IF NOT EXISTS outreach_count_enrollments_out AFTER DELETE ON enrollment
            BEGIN {delta("OLD.plan_id", "OLD.current_node",
                         f"'{ENROLLMENT_STATUS}' || OLD.status", "NULL", "-1", "")} END""",
        f"""CREATE TRIGGER IF NOT EXISTS outreach_count_messages_in AFTER INSERT ON outbound_message
            WHEN NEW.enrollment_id IS NOT NULL BEGIN
            {delta(message_plan.format(row="NEW"), "NEW.node",
                   f"'{MESSAGE_STATUS}' || NEW.status", message_day.format(row="NEW"),
                   "1", "")} END""",
        f"""CREATE TRIGGER IF NOT EXISTS outreach_count_messages_moved
            AFTER UPDATE OF status, node, enrollment_id, sent_at, created_at
            ON outbound_message BEGIN
            {delta(message_plan.format(row="OLD"), "OLD.node",
                   f"'{MESSAGE_STATUS}' || OLD.status", message_day.format(row="OLD"), "-1",
                   "WHERE OLD.enrollment_id IS NOT NULL")}
            {delta(message_plan.format(row="NEW"), "NEW.node",
                   f"'{MESSAGE_STATUS}' || NEW.status", message_day.format(row="NEW"), "1",
                   "WHERE NEW.enrollment_id IS NOT NULL")} END""",
        f"""CREATE TRIGGER IF NOT EXISTS outreach_count_messages_out
            AFTER DELETE ON outbound_message WHEN OLD.enrollment_id IS NOT NULL BEGIN
            {delta(message_plan.format(row="OLD"), "OLD.node",
                   f"'{MESSAGE_STATUS}' || OLD.status", message_day.format(row="OLD"),
                   "-1", "")} END""",
        # SQLite runs one writer at a time: "not counted yet" cannot race.
        f"""CREATE TRIGGER IF NOT EXISTS outreach_count_events AFTER INSERT ON message_event
            WHEN NEW.message_id IS NOT NULL BEGIN
            {_INSERT_DELTA}
                SELECT e.plan_id, m.node, names.name, {day("NEW.occurred_at")}, 1
                FROM ({names}) names
                JOIN outbound_message m ON m.id = NEW.message_id
                JOIN enrollment e ON e.id = m.enrollment_id
                WHERE names.name IS NOT NULL AND NOT EXISTS (
                    SELECT 1 FROM counted_event c
                    WHERE c.message_id = NEW.message_id AND c.name = names.name);
            INSERT OR IGNORE INTO counted_event (message_id, name, first_at)
                SELECT message_id, name, at FROM ({names}) names WHERE name IS NOT NULL; END""",
        f"""CREATE TRIGGER IF NOT EXISTS {_DAY_MARKER} AFTER INSERT ON message_event
            WHEN NEW.message_id IS NOT NULL BEGIN
            {_INSERT_DELTA}
                SELECT e.plan_id, m.node, c.name,
                    CASE WHEN moved.sign < 0 THEN {day("c.first_at")}
                         ELSE {day("NEW.occurred_at")} END, moved.sign
                FROM counted_event c JOIN ({names}) names ON names.name = c.name
                JOIN outbound_message m ON m.id = c.message_id
                JOIN enrollment e ON e.id = m.enrollment_id
                CROSS JOIN (SELECT -1 AS sign UNION ALL SELECT 1) moved
                WHERE c.message_id = NEW.message_id AND NEW.occurred_at < c.first_at
                    AND {day("NEW.occurred_at")} <> {day("c.first_at")};
            UPDATE counted_event SET first_at = NEW.occurred_at
                WHERE message_id = NEW.message_id AND NEW.occurred_at < first_at
                    AND name IN (SELECT name FROM ({names}) names); END""",
    ]


def _postgresql_triggers() -> list[str]:
    def function(name: str, body: str) -> str:
        return (f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ "
                f"BEGIN {body}; RETURN NULL; END $$")

    def trigger(name: str, timing: str, table: str, level: str) -> str:
        return (f"CREATE OR REPLACE TRIGGER {name} {timing} ON {table} {level} "
                f"EXECUTE FUNCTION {name}()")

    day = _POSTGRESQL.day
    insert = _INSERT_DELTA
    of_message = "FROM enrollment WHERE id = {row}.enrollment_id"
    first_copies = _first_copies(_POSTGRESQL, "new_rows")
    # Inserts come in batches (bulk enrollment, webhook batches): one trigger call per
    # statement, its rows summed. So do enrollments' moves (a batch of timers or events
    # moves hundreds in one UPDATE): their rows are summed too, where a row trigger's
    # function call and two delta rows per contact cost half of such an UPDATE. A
    # message's updates come one row at a time, and most do not touch what is counted:
    # a row trigger whose WHEN is checked without calling any function.
    statements = [
        function(_MARKER, insert + f"SELECT e.plan_id, n.node, '{ENTERED}', "
                 f"{day('n.entered_at')}, count(*) "
                 "FROM new_rows n JOIN enrollment e ON e.id = n.enrollment_id GROUP BY 1, 2, 4"),
        trigger(_MARKER, "AFTER INSERT", "node_visit",
                "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT"),
        function(_EDGE_MARKER, insert + f"SELECT e.plan_id, n.node, {_edge_sql('n')}, "
                 f"{day('n.entered_at')}, count(*) "
                 "FROM new_rows n JOIN enrollment e ON e.id = n.enrollment_id "
                 "WHERE n.from_node IS NOT NULL GROUP BY 1, 2, 3, 4"),
        trigger(_EDGE_MARKER, "AFTER INSERT", "node_visit",
                "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT"),
        function("outreach_count_enrollments_in", insert
                 + f"SELECT plan_id, current_node, '{ENROLLMENT_STATUS}' || status, NULL, "
                 "count(*) FROM new_rows GROUP BY 1, 2, 3"),
        trigger("outreach_count_enrollments_in", "AFTER INSERT", "enrollment",
                "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT"),
        # A row whose plan, node and status stayed adds -1 and +1 to one count: summed away.
        function("outreach_count_enrollments_moved", insert
                 + f"SELECT plan_id, current_node, '{ENROLLMENT_STATUS}' || status, NULL, "
                 "sum(delta) FROM (SELECT plan_id, current_node, status, -1 AS delta "
                 "FROM old_rows UNION ALL SELECT plan_id, current_node, status, 1 "
                 "FROM new_rows) moved GROUP BY 1, 2, 3 HAVING sum(delta) <> 0"),
        trigger("outreach_count_enrollments_moved", "AFTER UPDATE", "enrollment",
                "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT"),
        function("outreach_count_enrollments_out", insert
                 + f"VALUES (OLD.plan_id, OLD.current_node, '{ENROLLMENT_STATUS}' || OLD.status, "
                 "NULL, -1)"),
        trigger("outreach_count_enrollments_out", "AFTER DELETE", "enrollment", "FOR EACH ROW"),
        function("outreach_count_messages_in", insert
                 + f"SELECT e.plan_id, n.node, '{MESSAGE_STATUS}' || n.status, "
                 f"{day(_message_time('n'))}, count(*) "
                 "FROM new_rows n JOIN enrollment e ON e.id = n.enrollment_id GROUP BY 1, 2, 3, 4"),
        trigger("outreach_count_messages_in", "AFTER INSERT", "outbound_message",
                "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT"),
        function("outreach_count_messages_moved", insert
                 + f"SELECT plan_id, OLD.node, '{MESSAGE_STATUS}' || OLD.status, "
                 f"{day(_message_time('OLD'))}, -1 {of_message.format(row='OLD')} UNION ALL "
                 f"SELECT plan_id, NEW.node, '{MESSAGE_STATUS}' || NEW.status, "
                 f"{day(_message_time('NEW'))}, 1 {of_message.format(row='NEW')}"),
        trigger("outreach_count_messages_moved", "AFTER UPDATE", "outbound_message",
                "FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status OR "
                "OLD.node IS DISTINCT FROM NEW.node OR "
                "OLD.enrollment_id IS DISTINCT FROM NEW.enrollment_id OR "
                "OLD.sent_at IS DISTINCT FROM NEW.sent_at OR "
                "OLD.created_at IS DISTINCT FROM NEW.created_at)"),
        function("outreach_count_messages_out", insert
                 + f"SELECT plan_id, OLD.node, '{MESSAGE_STATUS}' || OLD.status, "
                 f"{day(_message_time('OLD'))}, -1 {of_message.format(row='OLD')}"),
        trigger("outreach_count_messages_out", "AFTER DELETE", "outbound_message", "FOR EACH ROW"),
        # The unique insert into counted_event decides which copy of an event counts: a
        # concurrent one waits for this transaction and then finds the pair taken.
        function("outreach_count_events",
                 f"WITH named AS ({first_copies}), "
                 "fresh AS (INSERT INTO counted_event (message_id, name, first_at) "
                 "SELECT message_id, name, at FROM named ORDER BY 1, 2 "
                 "ON CONFLICT DO NOTHING RETURNING message_id, name, first_at) "
                 + insert + f"SELECT e.plan_id, m.node, f.name, {day('f.first_at')}, count(*) "
                 "FROM fresh f JOIN outbound_message m ON m.id = f.message_id "
                 "JOIN enrollment e ON e.id = m.enrollment_id GROUP BY 1, 2, 3, 4"),
        trigger("outreach_count_events", "AFTER INSERT", "message_event",
                "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT"),
        # Runs after outreach_count_events (triggers fire in the order of their names),
        # so it sees a pair a concurrent transaction counted first; the row lock makes
        # two earlier copies at once move the count one after the other, each from the
        # day the other left it on. Each pair is looked up by its key (LATERAL), in key
        # order: a join left to the planner hashed the whole table where its statistics
        # were stale (a new table, or autovacuum behind), at every batch of events.
        function(_DAY_MARKER,
                 f"WITH named AS ({first_copies}), "
                 "earlier AS (SELECT c.message_id, c.name, c.was, c.at "
                 "FROM (SELECT * FROM named ORDER BY 1, 2) n CROSS JOIN LATERAL ("
                 "SELECT c.message_id, c.name, c.first_at AS was, n.at FROM counted_event c "
                 "WHERE c.message_id = n.message_id AND c.name = n.name "
                 "AND n.at < c.first_at FOR UPDATE) c), "
                 "moved AS (UPDATE counted_event c SET first_at = earlier.at FROM earlier "
                 "WHERE c.message_id = earlier.message_id AND c.name = earlier.name "
                 "RETURNING earlier.message_id, earlier.name, earlier.was, earlier.at) "
                 + insert + "SELECT e.plan_id, m.node, moved.name, days.day, sum(days.sign) "
                 "FROM moved JOIN outbound_message m ON m.id = moved.message_id "
                 "JOIN enrollment e ON e.id = m.enrollment_id "
                 f"CROSS JOIN LATERAL (VALUES ({day('moved.was')}, -1), "
                 f"({day('moved.at')}, 1)) days(day, sign) "
                 f"WHERE {day('moved.was')} <> {day('moved.at')} GROUP BY 1, 2, 3, 4"),
        trigger(_DAY_MARKER, "AFTER INSERT", "message_event",
                "REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT"),
    ]
    return statements


# The counted rows, each as a SELECT of (plan_id, node, name, day, count): ``day`` the
# dialect's day of a time, or None (all time: a NULL day); ``where`` more conditions (on
# the visit v, message m or counted event c and enrollment e) with parameters.
def _visits(day: Callable[[str], str] | None, where: str = "") -> str:
    return (f"SELECT e.plan_id, v.node, '{ENTERED}', {_day_of(day, 'v.entered_at')}, count(*) "
            f"FROM node_visit v JOIN enrollment e ON e.id = v.enrollment_id {_where(where)} "
            "GROUP BY 1, 2, 3, 4")


def _edges(day: Callable[[str], str] | None, where: str = "") -> str:
    """A visit stored before from_node was kept came from the enrollment's visit of the
    version before (a move raises it by one)."""
    return (f"SELECT e.plan_id, v.node, '{EDGE}' || coalesce(v.from_node, p.node) || "
            f"'{EDGE_SEPARATOR}' || coalesce(v.via_event, ''), {_day_of(day, 'v.entered_at')}, "
            "count(*) FROM node_visit v "
            "JOIN enrollment e ON e.id = v.enrollment_id LEFT JOIN node_visit p "
            "ON p.enrollment_id = v.enrollment_id AND p.version = v.version - 1 "
            f"{_where('coalesce(v.from_node, p.node) IS NOT NULL', where)} GROUP BY 1, 2, 3, 4")


def _messages(day: Callable[[str], str] | None, where: str = "") -> str:
    return (f"SELECT e.plan_id, m.node, '{MESSAGE_STATUS}' || m.status, "
            f"{_day_of(day, _message_time('m'))}, count(*) "
            f"FROM outbound_message m JOIN enrollment e ON e.id = m.enrollment_id {_where(where)} "
            "GROUP BY 1, 2, 3, 4")


def _events(day: Callable[[str], str] | None, where: str = "") -> str:
    return (f"SELECT e.plan_id, m.node, c.name, {_day_of(day, 'c.first_at')}, count(*) "
            "FROM counted_event c JOIN outbound_message m ON m.id = c.message_id "
            f"JOIN enrollment e ON e.id = m.enrollment_id {_where(where)} GROUP BY 1, 2, 3, 4")


def _day_of(day: Callable[[str], str] | None, sql: str) -> str:
    # Typed: PostgreSQL takes a grouped bare NULL for text.
    return "CAST(NULL AS DATE)" if day is None else day(sql)


def _where(*conditions: str) -> str:
    conditions = tuple(condition for condition in conditions if condition)
    return f"WHERE {' AND '.join(conditions)}" if conditions else ""


def _backfill(database: peewee.Database) -> list[str]:
    """The all-time counts of the rows already there, for a database upgraded by
    ``db init``."""
    return [
        _INSERT_DELTA + _visits(None),
        _INSERT_DELTA + f"SELECT plan_id, current_node, '{ENROLLMENT_STATUS}' || status, "
        "NULL, count(*) FROM enrollment GROUP BY 1, 2, 3",
        _INSERT_DELTA + _messages(None),
        "INSERT INTO counted_event (message_id, name) SELECT DISTINCT message_id, name "
        f"FROM ({_named_events('n', 'message_event', _dialect(database).flag)}) names "
        "WHERE message_id IS NOT NULL AND name IS NOT NULL",
        _INSERT_DELTA + _events(None),
        _INSERT_DELTA + _edges(None),
    ]


def _day_backfill(database: peewee.Database) -> list[str]:
    """The day counts of the rows already there (whose all-time counts are kept): each
    counted event's earliest copy still stored, then every count by its day."""
    dialect = _dialect(database)
    return [
        "DELETE FROM funnel_day_count",
        f"UPDATE counted_event SET first_at = copies.at FROM ("
        f"{_first_copies(dialect, 'message_event')}) copies "
        "WHERE counted_event.message_id = copies.message_id "
        "AND counted_event.name = copies.name",
        _INSERT_DAY_COUNT + _visits(dialect.day),
        _INSERT_DAY_COUNT + _edges(dialect.day),
        _INSERT_DAY_COUNT + _messages(dialect.day),
        _INSERT_DAY_COUNT + _events(dialect.day, "c.first_at IS NOT NULL"),
    ]


def counters_installed(database: peewee.Database) -> bool:
    """Whether the counting triggers exist (of a database connected by the caller)."""
    return all(_has_trigger(database, name) for name in (_MARKER, _EDGE_MARKER, _DAY_MARKER))


def _has_trigger(database: peewee.Database, name: str) -> bool:
    if is_postgresql(database):
        sql = "SELECT 1 FROM pg_trigger WHERE tgname = %s"
    else:
        sql = "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = ?"
    return database.execute_sql(sql, (name,)).fetchone() is not None


def install_counters(database: peewee.Database) -> None:
    """Create the counting triggers; the first time, count the rows already there, in
    the same transaction (writers wait meanwhile, so nothing is counted twice or missed)."""
    with database.atomic():
        if is_postgresql(database):
            database.execute_sql("LOCK TABLE node_visit, enrollment, outbound_message, "
                                 "message_event IN SHARE ROW EXCLUSIVE MODE")
        counted_by_day = _has_trigger(database, _DAY_MARKER)
        if not _has_trigger(database, _MARKER):
            for table in ("funnel_count", "funnel_count_delta", "funnel_day_count",
                          "counted_event"):
                database.execute_sql(f"DELETE FROM {table}")
            for statement in _backfill(database):
                database.execute_sql(statement)
        elif not _has_trigger(database, _EDGE_MARKER):  # counters of an earlier version
            database.execute_sql(_INSERT_DELTA + _edges(None))
        if not counted_by_day:
            for statement in _day_backfill(database):
                database.execute_sql(statement)
            if not is_postgresql(database):  # which has no CREATE OR REPLACE TRIGGER
                for (name,) in database.execute_sql(
                        "SELECT name FROM sqlite_master WHERE type = 'trigger' "
                        "AND name LIKE 'outreach_count_%'").fetchall():
                    database.execute_sql(f"DROP TRIGGER {name}")
        for statement in (_postgresql_triggers() if is_postgresql(database)
                          else _sqlite_triggers()):
            database.execute_sql(statement)


def fold_counts(database: peewee.Database) -> int:
    """Sum the deltas into the counts, and those with a day into that day's; returns
    how many deltas were folded. Safe beside writers and another fold: each delta is
    taken by exactly one fold."""
    into_days = (_INSERT_DAY_COUNT + "SELECT plan_id, node, name, day, sum(delta) FROM {source} "
                 "WHERE day IS NOT NULL {more} GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4 "
                 "ON CONFLICT (plan_id, day, node, name) DO UPDATE "
                 'SET "count" = funnel_day_count."count" + excluded."count"')
    if is_postgresql(database):
        cursor = database.execute_sql(
            "WITH moved AS (DELETE FROM funnel_count_delta "
            "RETURNING plan_id, node, name, day, delta), "
            "summed AS (SELECT plan_id, node, name, sum(delta) AS delta, count(*) AS n "
            "FROM moved GROUP BY 1, 2, 3), "
            'upserted AS (INSERT INTO funnel_count (plan_id, node, name, "count") '
            "SELECT plan_id, node, name, delta FROM summed ORDER BY 1, 2, 3 "
            "ON CONFLICT (plan_id, node, name) DO UPDATE "
            'SET "count" = funnel_count."count" + EXCLUDED."count"), '
            f"by_day AS ({into_days.format(source='moved', more='')}) "
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
        database.execute_sql(into_days.format(source="funnel_count_delta", more="AND id <= ?"),
                             (last,))
        return database.execute_sql("DELETE FROM funnel_count_delta WHERE id <= ?",
                                    (last,)).rowcount


Counts = dict[tuple[int, str, str], int]


def counts(database: peewee.Database, plan_ids: list[int]) -> Counts:
    """(plan id, node, name): count, for these plan versions: the folded counts plus the
    deltas not folded yet, so exact at any moment."""
    return _summed(database, plan_ids, "funnel_count", "", [])


def period_counts(database: peewee.Database, plan_ids: list[int], since: datetime | None,
                  until: datetime | None) -> Counts:
    """(plan id, node, name): count of the visits, moves, sends and events of these plan
    versions within [since, until) (naive UTC; None: open), by the times the module's
    docstring gives; no enrollment statuses (they have no day). Exact at any moment."""
    first_day = None if since is None else _day_from(since)
    end_day = None if until is None else until.date()
    if first_day is not None and end_day is not None and first_day >= end_day:
        # Within one day (or two parts of two days that meet): the rows alone.
        return _rows_between(database, plan_ids, since, until) if since < until else {}
    days, params = ["day IS NOT NULL"], []
    if first_day is not None:
        days.append(f"day >= {database.param}")
        params.append(first_day)
    if end_day is not None:
        days.append(f"day < {database.param}")
        params.append(end_day)
    counted = _summed(database, plan_ids, "funnel_day_count", " ".join(
        f"AND {condition}" for condition in days), params)
    # The parts of a day before the first whole day and after the last one.
    parts = []
    if since is not None and since != _midnight(first_day):
        parts.append((since, _midnight(first_day)))
    if until is not None and until != _midnight(end_day):
        parts.append((_midnight(end_day), until))
    for start, end in parts:
        for key, count in _rows_between(database, plan_ids, start, end).items():
            counted[key] = counted.get(key, 0) + count
    return counted


def _day_from(moment: datetime) -> date:
    """The first whole day from ``moment`` on."""
    return moment.date() if moment == _midnight(moment.date()) else moment.date() + timedelta(days=1)


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time())


def _summed(database: peewee.Database, plan_ids: list[int], table: str, days: str,
            day_params: list) -> Counts:
    """The counts of ``table`` plus the deltas not folded yet; ``days`` (SQL conditions
    on the day, each after AND, with ``day_params``): the days to sum, none for all time."""
    if not plan_ids:
        return {}
    marks = ", ".join([database.param] * len(plan_ids))
    cursor = database.execute_sql(
        f"SELECT plan_id, node, name, sum(total) FROM ("
        f'SELECT plan_id, node, name, "count" AS total FROM {table} '
        f"WHERE plan_id IN ({marks}) {days} "
        f"UNION ALL SELECT plan_id, node, name, delta FROM funnel_count_delta "
        f"WHERE plan_id IN ({marks}) {days}) counted GROUP BY plan_id, node, name",
        [*plan_ids, *day_params, *plan_ids, *day_params])
    return {(plan_id, node, name): int(total) for plan_id, node, name, total in cursor.fetchall()}


def _rows_between(database: peewee.Database, plan_ids: list[int], start: datetime,
                  end: datetime) -> Counts:
    """The counts of the rows whose times are within [start, end), from the rows (each
    read through the index on its time: meant for parts of a day)."""
    if not plan_ids:
        return {}
    marks = ", ".join([database.param] * len(plan_ids))
    plans = f"e.plan_id IN ({marks})"
    found: Counts = {}
    for select, moment in ((_visits, "v.entered_at"), (_edges, "v.entered_at"),
                           (_messages, _message_time("m")), (_events, "c.first_at")):
        within = f"{plans} AND {moment} >= {database.param} AND {moment} < {database.param}"
        for plan_id, node, name, _, count in database.execute_sql(
                select(None, within), [*plan_ids, start, end]).fetchall():
            found[(plan_id, node, name)] = found.get((plan_id, node, name), 0) + count
    return found
