"""The dispatcher: move due ScheduledActions from the database into the broker.

The broker only ever holds actions due within a short horizon; everything later
waits as a row. Claiming is a conditional update (``pending -> enqueued``) taken
with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL (an immediate transaction on SQLite),
so several dispatchers never enqueue one action twice. An action enqueued but not
finished within its lease (a killed worker, a flushed broker) is enqueued again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime

import peewee

from outreach_actors.domain import notifications, scheduled_soon
from outreach_actors.domain.mail.ambiguous import mark_interrupted_sends
from outreach_actors.domain.pauses import plan_paused_sql
from outreach_actors.domain.store.db import is_postgresql
from outreach_actors.domain.store.models import (
    OutboundMessage,
    ScheduledAction,
    database_proxy,
    utcnow,
    write_transaction,
)
from outreach_actors.domain.store.statements import ids_condition, model_rows, statement
from outreach_actors.settings import Settings, get_settings

logger = logging.getLogger(__name__)

# Called with the claimed actions, each with its delay in ms, after the claim is committed.
Enqueue = Callable[[list[tuple[ScheduledAction, int]]], None]
# Called with (message_id) for a rendered message whose send was lost.
EnqueueSend = Callable[[str], None]


# The dispatcher's read at every poll, as fixed SQL (see store/statements.py): the due
# actions, earliest first, that no pause of their plan holds; whole rows, as
# ScheduledAction.select() reads them. Locked (FOR UPDATE SKIP LOCKED) on PostgreSQL.
_ACTION_COLUMNS = ", ".join(f'a."{field.column_name}"'
                            for field in ScheduledAction._meta.sorted_fields)
_DUE_ACTIONS = (
    "SELECT " + _ACTION_COLUMNS + " FROM scheduled_action AS a WHERE a.status = {p} AND a.run_at <= {p}"
    " AND NOT " + plan_paused_sql("a.enrollment_id") + " ORDER BY a.run_at LIMIT {p}"
)
_LOCK = " FOR UPDATE SKIP LOCKED"
# The same read of the actions named by their keys (``{keys}`` as ids_condition gives
# it): what a unit of work scheduled, dispatched once it commits.
_DUE_BY_KEY = (
    "SELECT " + _ACTION_COLUMNS + " FROM scheduled_action AS a WHERE a.dedupe_key {keys}"
    " AND a.status = {p} AND a.run_at <= {p} AND NOT " + plan_paused_sql("a.enrollment_id")
)
# Claimed actions marked enqueued; ``{ids}`` as statements.ids_condition gives it. By
# primary key alone: the rows are ours (locked FOR UPDATE SKIP LOCKED on PostgreSQL, the
# write lock held on SQLite), and adding the status test makes PostgreSQL pick the
# status index and scan every pending row.
_MARK_ENQUEUED = "UPDATE scheduled_action SET status = {p}, enqueued_at = {p}, lease_until = {p} WHERE id {ids}"


def _claim(read: Callable[[], list[ScheduledAction]], now: datetime,
           lease_until: datetime) -> list[ScheduledAction]:
    """Mark the rows ``read`` gives (run in the claim's transaction, locking them on
    PostgreSQL) enqueued, in one transaction, and return the ones we won."""
    database = database_proxy.obj
    with write_transaction():
        actions = read()
        if actions:
            condition, ids = ids_condition([action.id for action in actions])
            database.execute_sql(statement(_MARK_ENQUEUED.replace("{ids}", condition)),
                                 [ScheduledAction.ENQUEUED, now, lease_until, *ids])
    for action in actions:
        action.status, action.enqueued_at, action.lease_until = ScheduledAction.ENQUEUED, now, lease_until
    return actions


def _due_actions(horizon: datetime, limit: int) -> list[ScheduledAction]:
    locked = is_postgresql(database_proxy.obj)
    return model_rows(ScheduledAction, statement(_DUE_ACTIONS + (_LOCK if locked else "")),
                      (ScheduledAction.PENDING, horizon, limit))


def _due_by_key(keys: list[str], horizon: datetime) -> list[ScheduledAction]:
    condition, params = ids_condition(keys)
    locked = is_postgresql(database_proxy.obj)
    return model_rows(ScheduledAction, statement(
        _DUE_BY_KEY.replace("{keys}", condition) + (_LOCK if locked else "")),
        [*params, ScheduledAction.PENDING, horizon])


def _locked(query: peewee.ModelSelect) -> list[ScheduledAction]:
    """The rows of ``query``, locked FOR UPDATE SKIP LOCKED on PostgreSQL (on SQLite the
    claim's transaction holds the write lock)."""
    if is_postgresql(database_proxy.obj):
        query = query.for_update("FOR UPDATE SKIP LOCKED")
    return list(query)


def dispatch_due_actions(
    enqueue: Enqueue, *, now: datetime | None = None, settings: Settings | None = None,
) -> int:
    """Claim actions due within the horizon and hand them to ``enqueue``; returns the count."""
    settings = settings or get_settings()
    total = 0
    while True:
        claimed = _dispatch(lambda horizon: _due_actions(horizon, settings.dispatch_batch_size),
                            enqueue, now, settings)
        total += claimed
        if claimed < settings.dispatch_batch_size:
            break
    if total:
        logger.info("Dispatched %d due actions", total)
    return total


def dispatch_actions(dedupe_keys: Sequence[str], enqueue: Enqueue, *, now: datetime | None = None,
                     settings: Settings | None = None) -> int:
    """Claim these actions, where still pending and due within the horizon, and hand them
    to ``enqueue`` as the dispatcher would; returns the count. The claim is the
    dispatcher's, so an action both paths reach is enqueued once."""
    settings = settings or get_settings()
    total = 0
    for chunk in peewee.chunked(sorted(set(dedupe_keys)), settings.dispatch_batch_size):
        total += _dispatch(lambda horizon, keys=chunk: _due_by_key(keys, horizon),
                           enqueue, now, settings)
    return total


@contextmanager
def dispatch_after_commit(enqueue: Enqueue, *, settings: Settings | None = None) -> Iterator[None]:
    """Run the block; once it has committed, dispatch at once what it scheduled due within
    the horizon (a transition's next send, a timer due soon), instead of waiting for the
    dispatcher's next poll. The dispatcher stays the safety net: nothing is dispatched
    when the block raised or a transaction is still open, and a failure here is logged."""
    token = scheduled_soon.start_noting()
    try:
        with notifications.sending_after_commit():  # the host's, after commit too
            yield
    finally:
        noted = scheduled_soon.stop_noting(token)
    if not noted:
        return
    if database_proxy.in_transaction():
        return  # not committed yet: the dispatcher finds the rows once they are
    try:
        dispatch_actions(noted, enqueue, settings=settings)
    except Exception:
        logger.warning("Dispatching %d actions after commit failed; the dispatcher will",
                       len(noted), exc_info=True)


def _dispatch(select: Callable[[datetime], list[ScheduledAction]], enqueue: Enqueue,
              now: datetime | None, settings: Settings) -> int:
    """Claim what ``select(horizon)`` picks (locked on PostgreSQL) and enqueue it, each
    with its delay."""
    clock = (lambda: now) if now is not None else utcnow
    horizon = clock() + settings.dispatch_horizon
    # The lease counts from the end of the horizon: an action enqueued with a
    # delay is not late before it is due.
    actions = _claim(lambda: select(horizon), clock(), horizon + settings.action_lease)
    if actions:
        # Delays count from now, not from the start: claiming a large backlog
        # takes a while, and every timer would be late by that much.
        sent_at = clock()
        enqueue([(action, max(0, int((action.run_at - sent_at).total_seconds() * 1000)))
                 for action in actions])
    return len(actions)


def due_batches(
    due: Sequence[tuple[ScheduledAction, int]], *, max_size: int, window_ms: int,
) -> list[tuple[list[int], int]]:
    """Group due actions (timers, or sends) into (action ids, delay ms) batches, one
    broker message each.

    A batch holds at most ``max_size`` actions, all due within ``window_ms`` of its
    first, and is sent with the delay of its last: none runs early, none later than
    the window (about a polling interval, which lateness already includes).
    """
    batches: list[tuple[list[int], int]] = []
    ids: list[int] = []
    first = last = 0
    for action, delay_ms in sorted(due, key=lambda pair: (pair[1], pair[0].id)):
        if ids and (len(ids) >= max_size or delay_ms - first > window_ms):
            batches.append((ids, last))
            ids = []
        if not ids:
            first = delay_ms
        ids.append(action.id)
        last = delay_ms
    if ids:
        batches.append((ids, last))
    return batches


def reconcile_expired_leases(
    enqueue: Enqueue, *, now: datetime | None = None, settings: Settings | None = None,
) -> int:
    """Enqueue again the actions whose lease passed without the work finishing."""
    settings = settings or get_settings()
    now = now or utcnow()
    query = (
        ScheduledAction.select()
        .where(
            ScheduledAction.status.in_([ScheduledAction.ENQUEUED, ScheduledAction.RUNNING]),
            ScheduledAction.lease_until < now,
        )
        .order_by(ScheduledAction.lease_until)
        .limit(settings.dispatch_batch_size)
    )
    actions = _claim(lambda: _locked(query), now, now + settings.action_lease)
    for action in actions:
        logger.warning("Re-enqueueing action=%s kind=%s: its lease expired", action.id, action.kind)
    if actions:
        enqueue([(action, 0) for action in actions])
    return len(actions)


def note_send_waiting(message_id: str, until: datetime) -> None:
    """Record that a rendered message's send is waiting in the broker until ``until``
    (a rate-limit deferral): reconcile_stuck_messages leaves it alone until a lease
    after that, instead of taking it for a lost send and enqueueing another."""
    OutboundMessage.update(requeued_at=until).where(
        OutboundMessage.id == message_id, OutboundMessage.status == OutboundMessage.RENDERED,
        (OutboundMessage.requeued_at.is_null()) | (OutboundMessage.requeued_at < until),
    ).execute()


def reconcile_stuck_messages(
    enqueue_send: EnqueueSend, *, now: datetime | None = None, settings: Settings | None = None,
) -> tuple[int, int]:
    """Find sends that were lost or cut short; returns (re-enqueued, marked ambiguous).

    A message ``rendered`` long ago lost its send message: enqueue it again (the
    send claims ``rendered -> sending``, so a duplicate is harmless), at most once
    per lease, since it may only be waiting (a retry backoff, a rate-limit
    deferral) and each pass would otherwise pile another copy on the queue; a
    deferred send says how long it waits (note_send_waiting). A message left
    ``sending`` past the lease may or may not have reached SendGrid: it becomes
    ``ambiguous`` and is never resent silently (see README, "Guarantees").
    """
    settings = settings or get_settings()
    now = now or utcnow()
    cutoff = now - settings.action_lease
    with write_transaction():
        query = OutboundMessage.select(OutboundMessage.id).where(
            OutboundMessage.status == OutboundMessage.RENDERED, OutboundMessage.created_at < cutoff,
            (OutboundMessage.send_started_at.is_null()) | (OutboundMessage.send_started_at < cutoff),
            (OutboundMessage.requeued_at.is_null()) | (OutboundMessage.requeued_at < cutoff),
        ).limit(settings.dispatch_batch_size)
        if is_postgresql(database_proxy.obj):
            query = query.for_update("FOR UPDATE SKIP LOCKED")
        stale_rendered = [message.id for message in query]
        if stale_rendered:
            OutboundMessage.update(requeued_at=now).where(
                OutboundMessage.id.in_(stale_rendered)).execute()
    for message_id in stale_rendered:
        enqueue_send(message_id)
    ambiguous = mark_interrupted_sends(cutoff, limit=settings.dispatch_batch_size)
    return len(stale_rendered), ambiguous



