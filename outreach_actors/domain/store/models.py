"""The tables: every fact the engine keeps, bound to the database through a proxy."""

from __future__ import annotations

import json
import threading
import uuid
import weakref
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import peewee
from playhouse.shortcuts import ThreadSafeDatabaseMetadata

from outreach_actors.domain.store.by_id import update_by_id
from outreach_actors.domain.store.copy_insert import COPY_MIN_ROWS, copy_insert
from outreach_actors.domain.store.counters import counters_installed, install_counters
from outreach_actors.domain.store.db import database_proxy, is_postgresql


def utcnow() -> datetime:
    """Naive UTC: what every DateTimeField holds, on SQLite and PostgreSQL alike."""
    if _clock is not None:
        return _clock()
    return datetime.now(UTC).replace(tzinfo=None)


# The one clock seam: every domain module reads the time through utcnow, so the plan
# simulation (dev.plan_simulation) sets a virtual clock here and nowhere else.
_clock: Callable[[], datetime] | None = None


def set_clock(clock: Callable[[], datetime] | None) -> Callable[[], datetime] | None:
    """Make utcnow read ``clock`` (naive UTC) instead of the system's; None restores
    the system clock. Returns the clock it replaces. For simulations and tests only."""
    global _clock
    previous, _clock = _clock, clock
    return previous


def new_message_id() -> str:
    return "msg_" + uuid.uuid4().hex


class JSONField(peewee.TextField):
    """JSON stored as text, so the same schema works on SQLite and PostgreSQL."""

    # One encoder for every value: json.dumps with an argument builds a new one per call.
    _encoder = json.JSONEncoder(default=str)

    def db_value(self, value):
        # Key order is kept: a plan's nodes are listed in the order they were written.
        return None if value is None else self._encoder.encode(value)

    def python_value(self, value):
        return None if value is None else json.loads(value)


def write_transaction() -> peewee._transaction:
    """A transaction that reads and then writes.

    On SQLite it takes the write lock up front: a deferred transaction that reads
    first and then finds another writer fails at once with "database is locked"
    instead of waiting out the busy timeout, and two dispatchers must not both read
    the same pending rows and then both mark them.
    """
    database = database_proxy.obj
    if isinstance(database, peewee.SqliteDatabase):
        return database.atomic("IMMEDIATE")
    return database.atomic()


class BaseModel(peewee.Model):
    class Meta:
        database = database_proxy
        # Tests and host apps rebind the database at run time; this keeps the
        # binding consistent across worker threads.
        model_metadata_class = ThreadSafeDatabaseMetadata
        legacy_table_names = False


class Tenant(BaseModel):
    id = peewee.CharField(primary_key=True, max_length=64)
    name = peewee.CharField(default="")
    # Per-tenant overrides of the rate limits, e.g. {"tenant_per_hour": 10000}.
    rate_limits = JSONField(default=dict)
    created_at = peewee.DateTimeField(default=utcnow)


class SenderIdentity(BaseModel):
    tenant = peewee.ForeignKeyField(Tenant, backref="senders", on_delete="CASCADE")
    email = peewee.CharField()
    name = peewee.CharField(default="")
    verified = peewee.BooleanField(default=False)
    rate_limits = JSONField(default=dict)
    created_at = peewee.DateTimeField(default=utcnow)
    # Its first send: day 1 of its warm-up (see domain/sending_days.py).
    first_sent_at = peewee.DateTimeField(null=True)
    # Where human replies to this sender's mail are forwarded; None: the sender itself.
    forward_replies_to = peewee.CharField(null=True)

    class Meta:
        indexes = ((("tenant", "email"), True),)


class Contact(BaseModel):
    # No index of its own: (tenant, email) below serves lookups by tenant.
    tenant = peewee.ForeignKeyField(Tenant, backref="contacts", on_delete="CASCADE", index=False)
    email = peewee.CharField()  # stored lower-cased
    fields = JSONField(default=dict)
    timezone = peewee.CharField(null=True)
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("tenant", "email"), True),)


class Plan(BaseModel):
    tenant = peewee.ForeignKeyField(Tenant, backref="plans", on_delete="CASCADE")
    name = peewee.CharField()
    version = peewee.IntegerField(default=1)
    definition = JSONField()
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("tenant", "name", "version"), True),)


class Enrollment(BaseModel):
    ACTIVE, COMPLETED, EXITED, FAILED = "active", "completed", "exited", "failed"
    # Converted: a plan goal was reached (see goals.py). Paused: held by an operator,
    # its actions held until it is resumed (see control.py).
    CONVERTED, PAUSED = "converted", "paused"
    LIVE = (ACTIVE, PAUSED)  # still in the plan

    tenant = peewee.ForeignKeyField(Tenant, backref="enrollments", on_delete="CASCADE")
    plan = peewee.ForeignKeyField(Plan, backref="enrollments", on_delete="CASCADE")
    contact = peewee.ForeignKeyField(Contact, backref="enrollments", on_delete="CASCADE")
    # Unique unless the plan allows re-entry: refuses a second enrollment atomically.
    enrollment_key = peewee.CharField(unique=True)
    current_node = peewee.CharField()
    status = peewee.CharField(default=ACTIVE, index=True)
    exit_reason = peewee.CharField(null=True)
    # Optimistic concurrency: every move is `UPDATE ... WHERE version = seen`.
    version = peewee.IntegerField(default=0)
    node_entered_at = peewee.DateTimeField(default=utcnow)
    created_at = peewee.DateTimeField(default=utcnow)
    updated_at = peewee.DateTimeField(default=utcnow)


# The failures page and `outreach failures` list failed enrollments newest first: a
# partial index holds those alone, in that order (a few rows among millions).
Enrollment.add_index(Enrollment.index(Enrollment.updated_at, Enrollment.id,
                                      name="enrollment_failed_newest")
                     .where(Enrollment.status == Enrollment.FAILED))


class NodeVisit(BaseModel):
    """One row each time an enrollment enters a node: the history behind the funnel."""

    # No index of its own: (enrollment, version) below serves lookups by enrollment.
    enrollment = peewee.ForeignKeyField(Enrollment, backref="visits", on_delete="CASCADE",
                                        index=False)
    node = peewee.CharField()
    via_event = peewee.CharField(null=True)
    entered_at = peewee.DateTimeField(default=utcnow)
    # The version the enrollment had after this move: unique per enrollment.
    version = peewee.IntegerField()
    # Where a routing node sent the contact on: a split's arm, or "holdout".
    route = peewee.CharField(null=True)
    # The node the move came from (None: the start, or a visit stored before it was kept):
    # what the edge counters count (store/counters.py).
    from_node = peewee.CharField(null=True)

    class Meta:
        indexes = (
            (("enrollment", "version"), True),
            # A period's first and last partial day count their visits (store/counters.py).
            (("entered_at",), False),
        )


class ScheduledAction(BaseModel):
    """A timer: the database, not the broker, is the source of truth for time."""

    SEND, TIMEOUT = "send", "timeout"
    PENDING, ENQUEUED, RUNNING = "pending", "enqueued", "running"
    DONE, SKIPPED, CANCELLED, FAILED = "done", "skipped", "cancelled", "failed"
    # Waiting for its paused enrollment to be resumed (see control.py).
    HELD = "held"
    OPEN_STATUSES = (PENDING, ENQUEUED, RUNNING)

    # No index of its own: (enrollment, status) below serves lookups by enrollment.
    enrollment = peewee.ForeignKeyField(Enrollment, backref="actions", on_delete="CASCADE",
                                        index=False)
    node = peewee.CharField()
    kind = peewee.CharField()
    event = peewee.CharField(null=True)  # the synthetic event a timeout fires
    # The enrollment's version when it entered `node`: a timer or send from an
    # earlier visit of the same node (plans may loop) is recognised as stale.
    visit_version = peewee.IntegerField(default=0)
    message = peewee.DeferredForeignKey("OutboundMessage", null=True, on_delete="SET NULL")
    run_at = peewee.DateTimeField()
    status = peewee.CharField(default=PENDING)
    attempts = peewee.IntegerField(default=0)
    # An enqueued/running action whose lease passed is enqueued again.
    lease_until = peewee.DateTimeField(null=True)
    dedupe_key = peewee.CharField(unique=True)
    result = peewee.TextField(null=True)
    created_at = peewee.DateTimeField(default=utcnow)
    enqueued_at = peewee.DateTimeField(null=True)
    fired_at = peewee.DateTimeField(null=True)
    finished_at = peewee.DateTimeField(null=True)

    class Meta:
        indexes = (
            (("status", "run_at"), False),
            (("enrollment", "status"), False),
        )

    @classmethod
    def finish(cls, action_ids: int | Collection[int], status: str, result: str, *,
               now: datetime, message_id: str | None = None) -> None:
        """Record how one action or several ended (done, skipped, failed) and, for a
        send, its message."""
        ids = [action_ids] if isinstance(action_ids, int) else list(action_ids)
        values = {"status": status, "result": result, "finished_at": now}
        if message_id is not None:
            values["message"] = message_id
        update_by_id(cls, ids, **values)


class OutboundMessage(BaseModel):
    RENDERED, SENDING, SENT, FAILED = "rendered", "sending", "sent", "failed"
    SUPPRESSED, AMBIGUOUS, CANCELLED = "suppressed", "ambiguous", "cancelled"

    id = peewee.CharField(primary_key=True, default=new_message_id, max_length=64)
    tenant = peewee.ForeignKeyField(Tenant, backref="messages", on_delete="CASCADE")
    enrollment = peewee.ForeignKeyField(
        Enrollment, backref="messages", null=True, on_delete="CASCADE"
    )
    action = peewee.ForeignKeyField(
        ScheduledAction, backref="messages", null=True, on_delete="SET NULL"
    )
    node = peewee.CharField(null=True)
    dedupe_key = peewee.CharField(unique=True)
    status = peewee.CharField(default=RENDERED)
    to_email = peewee.CharField()
    from_email = peewee.CharField()
    from_name = peewee.CharField(default="")
    subject = peewee.TextField()
    html = peewee.TextField()
    text = peewee.TextField()
    categories = JSONField(default=list)
    headers = JSONField(default=dict)
    provider_message_id = peewee.CharField(null=True, index=True)
    error = peewee.TextField(null=True)
    attempts = peewee.IntegerField(default=0)
    created_at = peewee.DateTimeField(default=utcnow)
    send_started_at = peewee.DateTimeField(null=True)
    # When the reconciler last enqueued this send again (at most once per lease).
    requeued_at = peewee.DateTimeField(null=True)
    sent_at = peewee.DateTimeField(null=True)

    class Meta:
        # Status and id, not status alone: on an index of the status alone, PostgreSQL
        # planned a claim (``WHERE id = ? AND status = 'rendered'``) as a walk through
        # every rendered message, filtered by id, whenever its statistics took
        # rendered messages for rare: so each send of a burst, or of mail held by rate
        # limits, cost as much as the backlog before it. Here both are index keys.
        indexes = ((("status", "id"), False),
                   # The reputation check and `outreach stats` count the sends of a window.
                   (("sent_at",), False))


# A period's first and last partial day count their sends by this time (store/counters.py).
OutboundMessage.add_index(OutboundMessage.index(
    peewee.fn.COALESCE(OutboundMessage.sent_at, OutboundMessage.created_at),
    name="outbound_message_sent_or_created"))


class WebhookDelivery(BaseModel):
    RECEIVED, PROCESSED, FAILED = "received", "processed", "failed"

    provider = peewee.CharField(default="sendgrid")
    body = peewee.BlobField()
    headers = JSONField(default=dict)
    status = peewee.CharField(default=RECEIVED, index=True)
    error = peewee.TextField(null=True)
    attempts = peewee.IntegerField(default=0)
    received_at = peewee.DateTimeField(default=utcnow, index=True)
    processed_at = peewee.DateTimeField(null=True)
    # When the reconciler last enqueued it again: at most once per lease, so that a
    # backlog on the webhooks queue does not gain a copy of every delivery each minute.
    requeued_at = peewee.DateTimeField(null=True)


class MessageEvent(BaseModel):
    # No index of its own: (message, type) below serves lookups by message.
    message = peewee.ForeignKeyField(
        OutboundMessage, backref="events", null=True, on_delete="CASCADE", index=False
    )
    tenant = peewee.CharField(null=True)
    type = peewee.CharField()
    provider_event = peewee.CharField(null=True)  # SendGrid's own name, e.g. "spamreport"
    synthetic = peewee.BooleanField(default=False)
    # sg_event_id, a stable hash of the event, or "action:<id>" for synthetic events.
    event_key = peewee.CharField(unique=True)
    email = peewee.CharField(null=True)
    occurred_at = peewee.DateTimeField()
    received_at = peewee.DateTimeField(default=utcnow)
    action = peewee.ForeignKeyField(ScheduledAction, null=True, on_delete="SET NULL")
    delivery = peewee.ForeignKeyField(WebhookDelivery, null=True, on_delete="SET NULL")
    scheduled_for = peewee.DateTimeField(null=True)  # synthetic: when the timer was due
    data = JSONField(default=dict)

    class Meta:
        indexes = (
            (("message", "type"), False),
            # Per-address history: soft-bounce counts and ASM group (un)subscribe order.
            (("tenant", "email", "type"), False),
        )


class Suppression(BaseModel):
    EMAIL = "email"  # whole-tenant suppression; ASM groups use "asm_group:<id>"

    tenant = peewee.ForeignKeyField(Tenant, backref="suppressions", on_delete="CASCADE")
    channel = peewee.CharField(default=EMAIL)
    value = peewee.CharField()  # the address, lower-cased
    reason = peewee.CharField()
    source = peewee.CharField(null=True)  # event key, "manual", "import", ...
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("tenant", "channel", "value"), True),)


class HostEvent(BaseModel):
    """An event the host app reported (``track``, ``POST /events``): stored before it
    moves anyone, once per ``event_key``."""

    RECEIVED, PROCESSED = "received", "processed"

    tenant = peewee.ForeignKeyField(Tenant, backref="host_events", on_delete="CASCADE")
    email = peewee.CharField()  # the address as stored (address_key)
    name = peewee.CharField()
    # "<tenant>:<event_id>" for an event the host named, a random key otherwise.
    event_key = peewee.CharField(unique=True)
    properties = JSONField(default=dict)
    occurred_at = peewee.DateTimeField()
    received_at = peewee.DateTimeField(default=utcnow)
    status = peewee.CharField(default=RECEIVED)
    processed_at = peewee.DateTimeField(null=True)
    # How many enrollments it moved or converted.
    moved = peewee.IntegerField(default=0)

    class Meta:
        indexes = (
            (("tenant", "email", "name"), False),
            (("status", "received_at"), False),
        )


class Notification(BaseModel):
    """The outbox of host notifications (goal reached, exit, failure...): written in the
    transaction of its effect, sent to OUTREACH_NOTIFY_ACTOR after commit."""

    PENDING, SENT = "pending", "sent"

    # The stable id the host dedupes on: the same in every delivery of it.
    id = peewee.CharField(primary_key=True, max_length=64)
    tenant = peewee.CharField()
    type = peewee.CharField()
    # One per effect: "<type>:<enrollment>:<version>", so a replayed effect notifies once.
    dedupe_key = peewee.CharField(unique=True)
    payload = JSONField(default=dict)
    status = peewee.CharField(default=PENDING)
    attempts = peewee.IntegerField(default=0)
    created_at = peewee.DateTimeField(default=utcnow)
    sent_at = peewee.DateTimeField(null=True)

    class Meta:
        indexes = ((("status", "created_at"), False),)


class InboundPost(BaseModel):
    """One SendGrid Inbound Parse post, stored raw before it is read (domain/replies)."""

    RECEIVED, PROCESSED, FAILED = "received", "processed", "failed"
    UNMATCHED, IGNORED, DUPLICATE = "unmatched", "ignored", "duplicate"
    FORWARD_PENDING, FORWARD_SENDING, FORWARD_SENT, FORWARD_FAILED = (
        "pending", "sending", "sent", "failed")

    body = peewee.BlobField()
    headers = JSONField(default=dict)
    # SHA-256 of the body: a post SendGrid retries byte for byte is stored once.
    body_digest = peewee.CharField(unique=True)
    status = peewee.CharField(default=RECEIVED, index=True)
    # What the reply was (replied, auto_replied, bounced, unsubscribed) once read.
    kind = peewee.CharField(null=True)
    note = peewee.TextField(null=True)
    tenant = peewee.CharField(null=True)
    message = peewee.ForeignKeyField(OutboundMessage, null=True, on_delete="SET NULL")
    from_email = peewee.CharField(null=True)
    subject = peewee.TextField(null=True)
    # The reply's event: a second post of the same reply finds the first by it.
    event_key = peewee.CharField(null=True, index=True)
    forward_status = peewee.CharField(null=True)
    forward_to = peewee.CharField(null=True)
    forward_error = peewee.TextField(null=True)
    forwarded_at = peewee.DateTimeField(null=True)
    attempts = peewee.IntegerField(default=0)
    received_at = peewee.DateTimeField(default=utcnow, index=True)
    processed_at = peewee.DateTimeField(null=True)
    # When the reconciler last enqueued it again (at most once per lease).
    requeued_at = peewee.DateTimeField(null=True)


class PeriodicTick(BaseModel):
    """One row per (job, tick): a unique insert makes a periodic job run once per tick."""

    job = peewee.CharField()
    tick = peewee.CharField()
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("job", "tick"), True),)


class SendingPause(BaseModel):
    """A plan's or a sender identity's sends held, by hand or by the reputation check;
    one row per plan or sender, kept once lifted (who and when)."""

    PLAN = "plan"
    SENDER = "sender"

    tenant = peewee.ForeignKeyField(Tenant, on_delete="CASCADE")
    kind = peewee.CharField(max_length=16)  # plan | sender
    name = peewee.CharField()  # the plan's name, or the sender's address
    reason = peewee.TextField(default="")
    paused_by = peewee.CharField(default="")
    paused_at = peewee.DateTimeField(default=utcnow)
    resumed_by = peewee.CharField(null=True)
    resumed_at = peewee.DateTimeField(null=True)  # null while paused

    class Meta:
        indexes = ((("tenant", "kind", "name"), True),)


class BlackoutDate(BaseModel):
    """Days on which no email of a tenant goes out, in each contact's time zone."""

    tenant = peewee.ForeignKeyField(Tenant, on_delete="CASCADE")
    first_day = peewee.DateField()
    last_day = peewee.DateField()  # inclusive
    created_at = peewee.DateTimeField(default=utcnow)

    class Meta:
        indexes = ((("tenant", "first_day", "last_day"), True),)


class FunnelCount(BaseModel):
    """A funnel figure of one plan version and node, by name (``entered``,
    ``enrollment:<status>``, ``message:<status>``, an event type): kept exact by the
    database's own triggers (store/counters.py), summed from FunnelCountDelta."""

    plan_id = peewee.IntegerField()
    node = peewee.CharField()
    name = peewee.CharField()
    count = peewee.BigIntegerField(default=0)

    class Meta:
        indexes = ((("plan_id", "node", "name"), True),)


class FunnelDayCount(BaseModel):
    """A FunnelCount of one UTC day: the visits, sends and events of that day (the
    statuses of enrollments, which are where contacts are now, have no day)."""

    plan_id = peewee.IntegerField()
    day = peewee.DateField()
    node = peewee.CharField()
    name = peewee.CharField()
    count = peewee.BigIntegerField(default=0)

    class Meta:
        indexes = ((("plan_id", "day", "node", "name"), True),)


class FunnelCountDelta(BaseModel):
    """A change to a FunnelCount, written by a trigger in the transaction that made it:
    appended, never updated, so that no two transactions wait on a shared counter row.
    With a day, also a change to that FunnelDayCount."""

    plan_id = peewee.IntegerField()
    node = peewee.CharField()
    name = peewee.CharField()
    delta = peewee.BigIntegerField()
    day = peewee.DateField(null=True)


class CountedEvent(BaseModel):
    """The (message, event name) pairs already counted: an event type counts each
    message once, however often it is delivered, on the day of its earliest copy."""

    message_id = peewee.CharField(max_length=64)
    name = peewee.CharField()
    # When the earliest copy stored occurred (None: counted before days were kept, and
    # its events purged since).
    first_at = peewee.DateTimeField(null=True, index=True)

    class Meta:
        primary_key = peewee.CompositeKey("message_id", "name")


ALL_MODELS: list[type[BaseModel]] = [
    Tenant,
    SenderIdentity,
    Contact,
    Plan,
    Enrollment,
    NodeVisit,
    ScheduledAction,
    OutboundMessage,
    WebhookDelivery,
    MessageEvent,
    Suppression,
    PeriodicTick,
    HostEvent,
    Notification,
    SendingPause,
    BlackoutDate,
    InboundPost,
    FunnelCount,
    FunnelDayCount,
    FunnelCountDelta,
    CountedEvent,
]


# SQLite's default limit on parameters per statement is 32,766.
_MAX_INSERT_PARAMS = 30_000


def insert_rows(model: type[BaseModel], rows: Sequence[Mapping[str, Any]], *,
                ignore_conflicts: bool = False, conflict_target: str | None = None,
                returning: str | tuple[str, ...] | None = None,
                rows_per_statement: int | None = None) -> list[Any]:
    """Insert ``rows`` (field name -> Python value) into ``model``'s table, in as few
    statements as the parameter limit allows; a row whose unique key exists already is
    left alone when ``ignore_conflicts`` (on ``conflict_target``'s key, or any). With
    ``returning`` (a column), the values of that column in the rows actually inserted.

    Why not ``insert_many``: Peewee builds each value through its query compiler, which
    cost more CPU than the database spent on the batch. Here each value goes through its
    field's ``db_value`` only. Fields a row leaves out take their defaults, as with
    Peewee; ``ON CONFLICT DO NOTHING [RETURNING]`` is accepted by PostgreSQL and SQLite
    3.35+ alike. ``returning`` may name several columns: then each value is a tuple.
    """
    database = database_proxy.obj
    if len(rows) >= COPY_MIN_ROWS and rows_per_statement is None and is_postgresql(database):
        returned_rows = _copy_rows(model, rows, ignore_conflicts=ignore_conflicts,
                                   conflict_target=conflict_target, returning=returning)
        return ([row[0] for row in returned_rows] if isinstance(returning, str)
                else list(map(tuple, returned_rows)))
    returned: list[Any] = []
    for sql, params in insert_statements(model, rows, ignore_conflicts=ignore_conflicts,
                                         conflict_target=conflict_target, returning=returning,
                                         rows_per_statement=rows_per_statement):
        cursor = database.execute_sql(sql, params)
        if isinstance(returning, str):
            returned.extend(row[0] for row in cursor.fetchall())
        elif returning:
            returned.extend(map(tuple, cursor.fetchall()))
    return returned


def insert_statements(model: type[BaseModel], rows: Sequence[Mapping[str, Any]], *,
                      ignore_conflicts: bool = False, conflict_target: str | None = None,
                      returning: str | tuple[str, ...] | None = None,
                      rows_per_statement: int | None = None,
                      ) -> Iterator[tuple[str, list[Any]]]:
    """The (sql, params) statements insert_rows runs, for a caller that runs them
    itself (e.g. as part of a larger statement); none for no rows."""
    if not rows:
        return
    fields, values = _insert_values(model, rows)
    param = database_proxy.obj.param
    key = (model, tuple(fields), param)
    found = _INSERT_HEADS.get(key)
    if found is None:
        found = _INSERT_HEADS[key] = (
            f'INSERT INTO "{model._meta.table_name}" ('
            + ", ".join(f'"{field.column_name}"' for field in fields) + ") VALUES ",
            "(" + ", ".join([param] * len(fields)) + ")")
    head, placeholders = found
    tail = _insert_tail(ignore_conflicts, conflict_target, returning)
    per_statement = max(1, _MAX_INSERT_PARAMS // len(fields))
    per_statement = min(per_statement, rows_per_statement or per_statement)
    for start in range(0, len(rows), per_statement):
        chunk = rows[start:start + per_statement]
        params = [value for row in values(chunk) for value in row]
        yield head + ", ".join([placeholders] * len(chunk)) + tail, params


# (model, fields given) -> what _insert_values derives from them; (model, fields written,
# placeholder) -> the head of the INSERT and one row's placeholders. Each insert of the
# hot paths has one shape, so both are worked out once.
_INSERT_SHAPES: dict[tuple[type[BaseModel], frozenset[str]], tuple[
    list[peewee.Field], dict[str, Any], list[tuple[str, Callable[[Any], Any]]]]] = {}
_INSERT_HEADS: dict[tuple[type[BaseModel], tuple[peewee.Field, ...], str], tuple[str, str]] = {}


def _insert_values(model: type[BaseModel], rows: Sequence[Mapping[str, Any]]) -> tuple[
        list[peewee.Field], Callable[[Sequence[Mapping[str, Any]]], Iterator[list[Any]]]]:
    """The fields an insert of ``rows`` writes (those given, and those with a default),
    and a function giving each row's database values in that order."""
    given = frozenset(rows[0]) if len(rows) == 1 else frozenset(
        name for row in rows for name in row)
    shape = _INSERT_SHAPES.get((model, given))
    if shape is None:
        fields = [field for field in model._meta.sorted_fields
                  if field.name in given or (field.default is not None and not field.primary_key)]
        missing = given - {field.name for field in fields}
        if missing:
            raise ValueError(f"{model.__name__} has no field {sorted(missing)[0]!r}")
        shape = _INSERT_SHAPES[(model, given)] = (
            fields, {field.name: field.default for field in fields if field.name not in given},
            [(field.name, field.db_value) for field in fields])
    fields, defaults, converters = shape

    def values(chunk: Sequence[Mapping[str, Any]]) -> Iterator[list[Any]]:
        for row in chunk:
            if len(row) == len(converters):  # every field given: the usual case, the fast path
                yield [convert(row[name]) for name, convert in converters]
                continue
            converted = []
            for name, convert in converters:
                if name in row:
                    value = row[name]
                else:
                    value = defaults[name]
                    value = value() if callable(value) else value
                converted.append(convert(value))
            yield converted

    return fields, values


def _insert_tail(ignore_conflicts: bool, conflict_target: str | None,
                 returning: str | tuple[str, ...] | None) -> str:
    """An insert's ``ON CONFLICT`` and ``RETURNING`` clauses."""
    tail = ""
    if ignore_conflicts:
        tail = f' ON CONFLICT ("{conflict_target}") DO NOTHING' if conflict_target else " ON CONFLICT DO NOTHING"
    if returning:
        columns = (returning,) if isinstance(returning, str) else returning
        tail += " RETURNING " + ", ".join(f'"{column}"' for column in columns)
    return tail


def _copy_rows(model: type[BaseModel], rows: Sequence[Mapping[str, Any]], *,
               ignore_conflicts: bool, conflict_target: str | None,
               returning: str | tuple[str, ...] | None) -> list[tuple]:
    """insert_rows through COPY (PostgreSQL, many rows): the same rows, conflicts and
    returned values; the database does the same work with no parameters to parse."""
    fields, values = _insert_values(model, rows)
    return copy_insert(database_proxy.obj, model._meta.table_name,
                       [field.column_name for field in fields], list(values(rows)),
                       _insert_tail(ignore_conflicts, conflict_target, returning))


def bind(database: peewee.Database | None) -> None:
    database_proxy.initialize(database)


# What processes cache of a database's rows, by database object (weakly: a test's goes
# with it), then by cache name: what is cached by row id means other rows in another
# database. Kept while its database is bound again (the plan simulation binds its own
# around each scenario, and what was bound before after it).
_database_caches: weakref.WeakKeyDictionary[peewee.Database, dict[str, dict]] = (
    weakref.WeakKeyDictionary())
_database_caches_lock = threading.Lock()


def database_cache(name: str) -> dict:
    """The bound database's cache called ``name``: a dict (empty at first) that its
    owner fills and clears; emptied when create_schema runs on the database."""
    caches = _database_caches.get(database_proxy.obj)
    if caches is None:
        with _database_caches_lock:
            caches = _database_caches.setdefault(database_proxy.obj, {})
    cache = caches.get(name)
    if cache is None:
        cache = caches.setdefault(name, {})
    return cache


# Indexes of earlier versions that a newer one replaces (see the model's Meta), by
# table: create_schema drops them, or the planner could still choose them.
_REPLACED_INDEXES = {
    "outbound_message": ("outbound_message_status",),
    # Prefixes of a unique index on the same table: each insert paid for a copy
    # (bulk enrollment writes contacts, visits and actions by the thousand).
    "contact": ("contact_tenant_id",),
    "node_visit": ("node_visit_enrollment_id",),
    "scheduled_action": ("scheduled_action_enrollment_id",),
    "message_event": ("message_event_message_id",),  # every event, timer or webhook, paid
}


def create_schema(database: peewee.Database) -> None:
    """Create or upgrade the schema; safe to run any number of times.

    Missing tables and indexes are created; columns added in a newer version are
    added to existing tables (with their defaults); indexes a newer one replaces are
    dropped. Nothing else is ever dropped.
    """
    bind(database)
    with _database_caches_lock:
        _database_caches.pop(database, None)  # its tables may have been dropped and made again
    with database.connection_context():
        # Columns first: creating the tables also creates every index of the existing
        # ones, and an index of a new column needs the column.
        _add_missing_columns(database)
        # A DeferredForeignKey (ScheduledAction.message) is created as a plain
        # column: the tables reference each other, and no constraint is needed.
        database.create_tables(ALL_MODELS, safe=True)
        _, replaced = _index_changes(database, database.get_tables())
        for index in replaced:
            database.execute_sql(f'DROP INDEX IF EXISTS "{index}"')
        install_counters(database)
        if is_postgresql(database):
            _store_raw_columns(database)


# Columns of raw posts as received: mostly attachments in base64, which pglz (PostgreSQL's
# default) cannot compress and spends more CPU failing at than the insert itself takes
# (3.9 ms against 1.8 for a 157 KB post); lz4 gives up at once and still compresses text.
# Where PostgreSQL has no lz4 (before 14, or built without it) they are not compressed.
_RAW_COLUMNS = (("inbound_post", "body"),)


def _store_raw_columns(database: peewee.Database) -> None:
    """Set how PostgreSQL stores the raw columns, where it is not set yet."""
    lz4 = database.execute_sql(
        "SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' "
        "AND 'lz4' = ANY(enumvals)").fetchone() is not None
    setting, wanted, change = (("attcompression", "l", "SET COMPRESSION lz4") if lz4
                               else ("attstorage", "e", "SET STORAGE EXTERNAL"))
    for table, column in _RAW_COLUMNS:
        (current,) = database.execute_sql(
            f"SELECT {setting} FROM pg_attribute WHERE attrelid = %s::regclass AND attname = %s",
            (table, column)).fetchone()
        if current != wanted:
            database.execute_sql(f'ALTER TABLE "{table}" ALTER COLUMN "{column}" {change}')


def missing_schema(database: peewee.Database) -> list[str]:
    """What create_schema would change (of a database connected by the caller): the
    missing tables, the missing columns as ``table.column``, and indexes to create or
    replace as ``index NAME``."""
    tables = set(database.get_tables())
    missing = [model._meta.table_name for model in ALL_MODELS
               if model._meta.table_name not in tables]
    columns = [f"{table}.{field.column_name}" for table, field in _missing_columns(database, tables)]
    created, replaced = _index_changes(database, tables)
    triggers = [] if counters_installed(database) else ["funnel count triggers"]
    return (missing + columns + [f"index {name}" for name in sorted(created + replaced)]
            + triggers)


def _index_changes(database: peewee.Database,
                   tables: Collection[str]) -> tuple[list[str], list[str]]:
    """Of the tables among ``tables``: the models' indexes that are not there (to
    create), and the indexes of earlier versions that a newer one replaces (to drop)."""
    created: list[str] = []
    replaced: list[str] = []
    for model in ALL_MODELS:
        table = model._meta.table_name
        if table in tables:
            existing = {index.name for index in database.get_indexes(table)}
            created += [index._name for index in model._meta.fields_to_index()
                        if index._name not in existing]
            replaced += [name for name in _REPLACED_INDEXES.get(table, ()) if name in existing]
    return created, replaced


def _missing_columns(database: peewee.Database,
                     tables: Collection[str]) -> Iterator[tuple[str, peewee.Field]]:
    """(table, field) for each field of a model whose table is among ``tables`` but
    lacks its column: what a newer version added."""
    for model in ALL_MODELS:
        table = model._meta.table_name
        if table in tables:
            existing = {column.name for column in database.get_columns(table)}
            yield from ((table, field) for field in model._meta.sorted_fields
                        if field.column_name not in existing)


def _add_missing_columns(database: peewee.Database) -> None:
    from playhouse.migrate import SchemaMigrator, migrate

    migrator = SchemaMigrator.from_database(database)
    operations = [migrator.add_column(table, field.column_name, field)
                  for table, field in _missing_columns(database, database.get_tables())]
    if operations:
        with database.atomic():
            migrate(*operations)
