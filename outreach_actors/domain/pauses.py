"""Pausing a plan or a sender identity: its sends (and a plan's timers) held, not failed,
until it is resumed; by hand or by the reputation check, recorded with who and when.

A pause holds work at three places: the dispatcher leaves a paused plan's due actions
in the database; the send's claim (``rendered -> sending``) is refused while the
message's plan or sender is paused, in the same statement, so a pause racing a send has
one outcome; and the send actor, seeing a pause it knows of, waits in the broker without
taking a rate-limit slot. Resuming a plan moves its overdue sends to each contact's next
send window; the rate limits then space them out, so a long pause ends in no burst.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime

import peewee

from outreach_actors.domain.blackouts import tenant_blackouts
from outreach_actors.domain.store.models import (
    Contact,
    Enrollment,
    Plan,
    ScheduledAction,
    SenderIdentity,
    SendingPause,
    Tenant,
    database_cache,
    utcnow,
    write_transaction,
)
from outreach_actors.domain.stored_plans import plan_for_id
from outreach_actors.domain.windows import next_send_time

logger = logging.getLogger(__name__)

#: How long a process trusts what it read of the pauses, in seconds. Only a shortcut:
#: the send's claim reads the pauses itself, so a stale cache never lets a send out.
PAUSE_CACHE_SECONDS = 2.0
#: Overdue sends a resume moves to their next send window per transaction.
RESCHEDULE_CHUNK = 500


class PauseError(LookupError):
    """The plan or sender to pause or resume does not exist; the message says which."""


@dataclass(frozen=True)
class PauseChange:
    """What pause or resume did: ``changed`` is False when it was so already."""

    kind: str
    name: str
    changed: bool
    reason: str = ""


def pause(tenant_id: str, kind: str, name: str, *, reason: str = "", by: str = "",
          now: datetime | None = None) -> PauseChange:
    """Hold the sends of plan or sender ``name``; idempotent (a second pause changes
    nothing and keeps the first one's reason), safe against a concurrent pause."""
    now = now or utcnow()
    row = {"tenant": tenant_id, "kind": kind, "name": name, "reason": reason, "paused_by": by,
           "paused_at": now, "resumed_by": None, "resumed_at": None}
    with write_transaction():
        inserted = SendingPause.insert(**row).on_conflict_ignore().execute()
        changed = bool(inserted) and _paused_row(tenant_id, kind, name, now)
        if not changed:
            # A lifted pause is taken again; one in force is left as it is.
            changed = bool(SendingPause.update(
                reason=reason, paused_by=by, paused_at=now, resumed_by=None, resumed_at=None,
            ).where(SendingPause.tenant == tenant_id, SendingPause.kind == kind,
                    SendingPause.name == name, SendingPause.resumed_at.is_null(False)).execute())
    _forget()
    if changed:
        logger.info("Paused %s %r of tenant %r by %s: %s", kind, name, tenant_id, by or "?",
                    reason or "no reason given")
    return PauseChange(kind, name, changed, reason)


def _paused_row(tenant_id: str, kind: str, name: str, now: datetime) -> bool:
    # on_conflict_ignore returns the last row id on SQLite even when nothing was inserted.
    return SendingPause.select().where(
        SendingPause.tenant == tenant_id, SendingPause.kind == kind, SendingPause.name == name,
        SendingPause.paused_at == now, SendingPause.resumed_at.is_null()).exists()


def resume(tenant_id: str, kind: str, name: str, *, by: str = "",
           now: datetime | None = None) -> PauseChange:
    """Lift the pause of plan or sender ``name``, recording who and when; idempotent."""
    now = now or utcnow()
    changed = bool(SendingPause.update(resumed_by=by, resumed_at=now).where(
        SendingPause.tenant == tenant_id, SendingPause.kind == kind, SendingPause.name == name,
        SendingPause.resumed_at.is_null()).execute())
    _forget()
    if changed:
        logger.info("Resumed %s %r of tenant %r by %s", kind, name, tenant_id, by or "?")
    return PauseChange(kind, name, changed)


def pause_plan(tenant_id: str, plan_name: str, *, reason: str = "", by: str = "",
               now: datetime | None = None) -> PauseChange:
    """Hold every send and timer of the plan (all its versions) until resume_plan."""
    _require_plan(tenant_id, plan_name)
    return pause(tenant_id, SendingPause.PLAN, plan_name, reason=reason, by=by, now=now)


def resume_plan(tenant_id: str, plan_name: str, *, by: str = "",
                now: datetime | None = None) -> PauseChange:
    """Lift the plan's pause: its timers that fell due fire in order (the dispatcher
    takes them by due time), its overdue sends move to each contact's next send window."""
    _require_plan(tenant_id, plan_name)
    now = now or utcnow()
    change = resume(tenant_id, SendingPause.PLAN, plan_name, by=by, now=now)
    if change.changed:
        moved = reschedule_overdue_sends(tenant_id, plan_name, now)
        if moved:
            logger.info("Moved %d overdue sends of plan %r to their next send window", moved,
                        plan_name)
    return change


def pause_sender(tenant_id: str, email: str, *, reason: str = "", by: str = "",
                 now: datetime | None = None) -> PauseChange:
    """Hold every send from the sender identity until resume_sender."""
    return pause(tenant_id, SendingPause.SENDER, _require_sender(tenant_id, email),
                 reason=reason, by=by, now=now)


def resume_sender(tenant_id: str, email: str, *, by: str = "",
                  now: datetime | None = None) -> PauseChange:
    """Lift the sender identity's pause; its held sends go out within the rate limits."""
    return resume(tenant_id, SendingPause.SENDER, _require_sender(tenant_id, email), by=by,
                  now=now)


def _require_plan(tenant_id: str, plan_name: str) -> None:
    if not Tenant.select().where(Tenant.id == tenant_id).exists():
        raise PauseError(f"no tenant {tenant_id!r}")
    if not Plan.select().where(Plan.tenant == tenant_id, Plan.name == plan_name).exists():
        raise PauseError(f"tenant {tenant_id!r} has no plan {plan_name!r}; "
                         "see `outreach plan list`")


def _require_sender(tenant_id: str, email: str) -> str:
    address = email.strip().lower()
    if not SenderIdentity.select().where(SenderIdentity.tenant == tenant_id,
                                         SenderIdentity.email == address).exists():
        raise PauseError(f"tenant {tenant_id!r} has no sender identity {address!r}; "
                         "see `outreach sender add`")
    return address


def reschedule_overdue_sends(tenant_id: str, plan_name: str, now: datetime) -> int:
    """Move the plan's pending sends that fell due before ``now`` to each contact's next
    send window (the node's window, else the plan's, and the tenant's blackouts)."""
    overdue = (
        ScheduledAction.select(ScheduledAction.id, ScheduledAction.node, Enrollment.plan,
                               Contact.timezone)
        .join(Enrollment, on=(Enrollment.id == ScheduledAction.enrollment))
        .join(Plan, on=(Plan.id == Enrollment.plan))
        .join(Contact, on=(Contact.id == Enrollment.contact))
        .where(Plan.tenant == tenant_id, Plan.name == plan_name,
               ScheduledAction.status == ScheduledAction.PENDING,
               ScheduledAction.kind == ScheduledAction.SEND, ScheduledAction.run_at <= now)
        .order_by(ScheduledAction.id)
        .tuples()
    )
    blackouts = tenant_blackouts(tenant_id)
    moved = 0
    # A transaction per chunk: a long pause may leave many overdue sends, and one
    # transaction over all of them would hold SQLite's write lock the whole time.
    for chunk in peewee.chunked(list(overdue), RESCHEDULE_CHUNK):
        with write_transaction():
            for action_id, node, plan_id, timezone in chunk:
                run_at = next_send_time(now, plan_for_id(plan_id).window_of(node), timezone,
                                        blackouts)
                moved += ScheduledAction.update(run_at=run_at).where(
                    ScheduledAction.id == action_id,
                    ScheduledAction.status == ScheduledAction.PENDING).execute()
    return moved


def in_force(tenant_id: str, kind: str, name: str) -> bool:
    """Whether the plan or sender is paused, read now (not from this process's cache)."""
    return SendingPause.select().where(
        SendingPause.tenant == tenant_id, SendingPause.kind == kind, SendingPause.name == name,
        SendingPause.resumed_at.is_null()).exists()


def active_pauses(tenant_id: str | None = None) -> list[SendingPause]:
    """The pauses in force, of one tenant or of all."""
    query = SendingPause.select().where(SendingPause.resumed_at.is_null())
    if tenant_id is not None:
        query = query.where(SendingPause.tenant == tenant_id)
    return list(query.order_by(SendingPause.paused_at))


def plan_paused_condition(action_enrollment: peewee.Field) -> peewee.Expression:
    """A condition true when the enrollment ``action_enrollment`` names belongs to a
    paused plan (any version): the dispatcher leaves such actions where they are."""
    paused = (
        SendingPause.select(SendingPause.id)
        .join(Plan, on=((Plan.tenant == SendingPause.tenant) & (Plan.name == SendingPause.name)))
        .join(Enrollment, on=(Enrollment.plan == Plan.id))
        .where(Enrollment.id == action_enrollment, SendingPause.kind == SendingPause.PLAN,
               SendingPause.resumed_at.is_null())
    )
    return peewee.fn.EXISTS(paused)


def plan_paused_sql(action_enrollment: str) -> str:
    """plan_paused_condition as SQL text, for fixed statements (store/statements.py):
    ``action_enrollment`` is the SQL (a column) of the enrollment to test."""
    return (f"EXISTS (SELECT 1 FROM sending_pause AS sp"
            f" JOIN plan AS spl ON spl.tenant_id = sp.tenant_id AND spl.name = sp.name"
            f" JOIN enrollment AS spe ON spe.plan_id = spl.id"
            f" WHERE spe.id = {action_enrollment} AND sp.kind = '{SendingPause.PLAN}'"
            f" AND sp.resumed_at IS NULL)")


# The bound database's cache (see models.database_cache): under _IN_FORCE, (until when
# it is trusted, by time.monotonic(); (tenant, kind, name) of every pause in force).
_PAUSES, _IN_FORCE = "pauses", "in force"
_cache_lock = threading.Lock()


def _forget() -> None:
    with _cache_lock:
        database_cache(_PAUSES).clear()


def paused(tenant_id: str, kind: str, name: str) -> bool:
    """Whether the plan or sender is paused, as this process read it at most
    PAUSE_CACHE_SECONDS ago (the send's claim checks again)."""
    now = time.monotonic()
    cache = database_cache(_PAUSES)
    cached = cache.get(_IN_FORCE)
    if cached is None or cached[0] <= now:
        keys = frozenset(SendingPause.select(SendingPause.tenant, SendingPause.kind,
                                             SendingPause.name)
                         .where(SendingPause.resumed_at.is_null()).tuples())
        with _cache_lock:
            cache[_IN_FORCE] = cached = (now + PAUSE_CACHE_SECONDS, keys)
    return (tenant_id, kind, name) in cached[1]
