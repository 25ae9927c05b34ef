"""Fire due timers: turn missing engagement into synthetic events, exactly once.

Timers fire in batches: one broker message carries the timers that come due
together, and the batch costs the statements of one timer (a claim, a read of
the enrollments, one engagement query, one insert of the synthetic events, the
moves in bulk, the completions). One message per timer capped the rate at what
Dramatiq and a dozen statements cost per message.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import datetime

from outreach_actors.domain import control, engine
from outreach_actors.domain.engagement import engaged_timers
from outreach_actors.domain.metrics import count, observe
from outreach_actors.domain.observability import tag
from outreach_actors.domain.pauses import plan_paused_condition, plan_paused_sql
from outreach_actors.domain.scheduled_soon import note_scheduled
from outreach_actors.domain.store.by_id import rows_by_id
from outreach_actors.domain.store.keys import synthetic_event_key
from outreach_actors.domain.store.models import (
    Enrollment,
    MessageEvent,
    ScheduledAction,
    insert_rows,
    utcnow,
    write_transaction,
)
from outreach_actors.domain.store.statements import ids_condition, model_rows, statement
from outreach_actors.domain.vocabulary import AWAITED_ENGAGEMENT
from outreach_actors.settings import get_settings

logger = logging.getLogger(__name__)

# What fire_timeouts reports for each action id.
FIRED, SKIPPED, MOVED_ON, REPLAY = "fired", "skipped", "moved-on", "replay"
HELD = "held"  # the enrollment is paused: the timer waits for its resume (control.py)

# The claim ``pending|enqueued -> running`` of the actions ``{ids}`` (see
# statements.ids_condition) that no pause of their plan holds, returning what firing
# them reads. Fixed SQL (see store/statements.py): every batch of timers runs it.
_CLAIM = """
UPDATE scheduled_action SET status = {p}, attempts = attempts + 1, fired_at = {p},
    lease_until = {p}
WHERE id {ids} AND status IN ({p}, {p}) AND NOT """ + plan_paused_sql("scheduled_action.enrollment_id") + """
RETURNING id, enrollment_id, node, event, message_id, run_at, visit_version
"""
_ENROLLMENT_COLUMNS = (
    Enrollment.id, Enrollment.tenant, Enrollment.plan, Enrollment.contact, Enrollment.status,
    Enrollment.current_node, Enrollment.version,
)


def claim_actions(action_ids: Sequence[int], now: datetime) -> list[ScheduledAction]:
    """``pending|enqueued -> running`` for each id; the rows claimed here (another
    delivery holds or finished the rest). One statement: the rows come back with
    RETURNING."""
    if not action_ids:
        return []
    condition, ids = ids_condition(sorted(set(action_ids)))
    return model_rows(ScheduledAction, statement(_CLAIM.replace("{ids}", condition)), [
        ScheduledAction.RUNNING, now, now + get_settings().action_lease, *ids,
        ScheduledAction.PENDING, ScheduledAction.ENQUEUED])


def hold_paused_timers(action_ids: set[int]) -> None:
    """Timers of a paused plan that reached the broker before the pause go back to the
    database (``enqueued -> pending``): the dispatcher fires them, in order, once the
    plan is resumed."""
    held = ScheduledAction.update(status=ScheduledAction.PENDING, lease_until=None).where(
        ScheduledAction.id.in_(sorted(action_ids)),
        ScheduledAction.status == ScheduledAction.ENQUEUED,
        plan_paused_condition(ScheduledAction.enrollment),
    ).execute()
    if held:
        logger.info("Held %d timers of a paused plan until it is resumed", held)


def release_actions(actions: Sequence[ScheduledAction]) -> None:
    """Give claimed actions back (``running -> enqueued``) so a retry can claim them."""
    ScheduledAction.update(status=ScheduledAction.ENQUEUED).where(
        ScheduledAction.id.in_([action.id for action in actions]),
        ScheduledAction.status == ScheduledAction.RUNNING,
    ).execute()


def fire_timeout(action_id: int, *, now: datetime | None = None) -> str:
    """Run one timeout action; returns fired, skipped, moved-on or replay."""
    return fire_timeouts([action_id], now=now)[action_id]


def fire_timeouts(action_ids: Sequence[int], *, now: datetime | None = None) -> dict[int, str]:
    """Run timeout actions; returns what happened to each id (see fire_timeout).

    Each timer's synthetic event, the move it causes and its completion commit in
    one transaction, so a worker killed half-way leaves nothing to undo: the
    reconciler enqueues the actions again and they run from the start. If the
    transaction fails, the claims are given back, so the message's retry runs them.
    """
    now = now or utcnow()
    claimed = claim_actions(action_ids, now)
    outcomes = dict.fromkeys(action_ids, REPLAY)
    if len(claimed) < len(set(action_ids)):
        hold_paused_timers(set(action_ids) - {action.id for action in claimed})
    for action_id in sorted(set(action_ids) - {action.id for action in claimed}):
        logger.info("Timeout action=%s skipped: already claimed or finished", action_id)
    if not claimed:
        return outcomes
    tag(action=claimed[0].id if len(claimed) == 1 else f"{len(claimed)} timers")
    # An enrollment's second timer in one batch waits for the first to have moved it.
    rounds = _one_per_enrollment(claimed)
    for index, batch in enumerate(rounds):
        try:
            outcomes.update(_fire(batch, now))
        except BaseException:
            # This round rolled back; it and the rounds after it were not run.
            _release_quietly([action for later in rounds[index:] for action in later])
            raise
    return outcomes


def _one_per_enrollment(actions: list[ScheduledAction]) -> list[list[ScheduledAction]]:
    """Split actions into rounds in which each enrollment appears once, earliest first."""
    rounds: list[list[ScheduledAction]] = []
    depth: dict[int, int] = defaultdict(int)
    for action in sorted(actions, key=lambda action: (action.run_at, action.id)):
        level = depth[action.enrollment_id]
        depth[action.enrollment_id] += 1
        if level == len(rounds):
            rounds.append([])
        rounds[level].append(action)
    return rounds


def _fire(actions: list[ScheduledAction], now: datetime) -> dict[int, str]:
    """Fire actions of distinct enrollments in one transaction."""
    outcomes: dict[int, str] = {}
    with write_transaction():
        enrollments = {enrollment.id: enrollment for enrollment in rows_by_id(
            Enrollment, [action.enrollment_id for action in actions], *_ENROLLMENT_COLUMNS)}
        live = []
        for action in actions:
            enrollment = enrollments.get(action.enrollment_id)
            if (enrollment is not None and enrollment.status == Enrollment.PAUSED
                    and enrollment.current_node == action.node
                    and enrollment.version == action.visit_version):
                outcomes[action.id] = HELD  # fires when the enrollment is resumed
            elif (enrollment is None or enrollment.status != Enrollment.ACTIVE
                    or enrollment.current_node != action.node
                    or enrollment.version != action.visit_version):
                logger.info("Timeout action=%s skipped: enrollment=%s moved on", action.id,
                            action.enrollment_id)
                outcomes[action.id] = MOVED_ON
            else:
                live.append(action)
        engaged = engaged_timers(
            (action.message_id, action.event) for action in live
            if action.event in AWAITED_ENGAGEMENT and action.message_id is not None
        )
        due, stopped = [], set()
        for action in live:
            if (action.message_id, action.event) in engaged:
                logger.info("Timeout action=%s skipped: %s was seen", action.id,
                            " or ".join(sorted(AWAITED_ENGAGEMENT[action.event])))
                outcomes[action.id] = SKIPPED
            else:
                due.append(action)
        followed = _restarted_where_their_email_went(
            [a for a in actions if outcomes.get(a.id) == MOVED_ON], enrollments)
        ScheduledAction.finish(sorted(followed), ScheduledAction.SKIPPED,
                               "started again in the visit its email moved to", now=now)
        ScheduledAction.finish([a for a, o in outcomes.items() if o == MOVED_ON
                                and a not in followed],
                               ScheduledAction.SKIPPED, "enrollment moved on", now=now)
        ScheduledAction.finish([a for a, o in outcomes.items() if o == SKIPPED],
                               ScheduledAction.SKIPPED, "engagement seen", now=now)
        if due:
            moved = _record_and_move(due, enrollments, now)
            # A pause that landed while this ran stopped the move: hold the timer for it.
            stopped = {a.id for a in due if a.enrollment_id not in moved
                       and _paused_now(a.enrollment_id)}
            control.hold_actions(sorted(stopped))  # or pending again, if resumed meanwhile
            ScheduledAction.finish([a.id for a in due if a.enrollment_id in moved],
                                   ScheduledAction.DONE, "moved", now=now)
            ScheduledAction.finish([a.id for a in due if a.enrollment_id not in moved
                                    and a.id not in stopped],
                                   ScheduledAction.DONE, "no transition", now=now)
            for action_id in stopped:
                outcomes[action_id] = HELD
            due = [a for a in due if a.id not in stopped]
        control.hold_actions([a for a, o in outcomes.items() if o == HELD and a not in stopped])
    # One line per batch at INFO (a line per timer was a large share of a burst's CPU).
    each = logger.isEnabledFor(logging.DEBUG)
    latest = 0.0
    for action in due:
        outcomes[action.id] = FIRED
        lateness = (now - action.run_at).total_seconds()
        latest = max(latest, lateness)
        observe("outreach_timer_lateness_seconds", lateness)
        if each:
            logger.debug("Fired timeout action=%s event=%s enrollment=%s late_s=%.3f",
                         action.id, action.event, action.enrollment_id, lateness)
    fired = sorted(Counter(action.event for action in due).items())
    for event, events_of_type in fired:  # one increment per type, as ingest counts
        count("outreach_events_total", events_of_type, type=event, synthetic="true")
    if due:
        logger.info("Fired %d timeouts (%s), late_s at most %.3f", len(due),
                    ", ".join(f"{event} {n}" for event, n in fired), latest)
    return outcomes


def _restarted_where_their_email_went(moved_on: list[ScheduledAction],
                                      enrollments: dict[int, Enrollment]) -> set[int]:
    """Of the timers that look moved on, those whose email a migration carried into its
    enrollment's current visit (migrate._rehome) while the send, which had read the old
    visit, was in flight: their email's timers are started again for that visit (from
    its sent_at, by the plan in force). The ids of the timers so replaced."""
    with_email = [a for a in moved_on if a.message_id is not None]
    followed = {}
    for message_id, visit in engine.email_visits([a.message_id for a in with_email]).items():
        enrollment = enrollments.get(visit.enrollment_id)
        if (enrollment is not None and visit.sent_at is not None
                and enrollment.status in (Enrollment.ACTIVE, Enrollment.PAUSED)
                and (visit.node, visit.visit_version) == (enrollment.current_node,
                                                          enrollment.version)):
            followed[message_id] = visit
    timers = [timer for message_id, visit in followed.items()
              for timer in engine.timers_after_send(message_id, visit.enrollment_id,
                                                    visit.action_id, visit.sent_at)]
    insert_rows(ScheduledAction, timers, ignore_conflicts=True)
    note_scheduled(timers)
    return {a.id for a in with_email if a.message_id in followed}


def _record_and_move(due: list[ScheduledAction], enrollments: dict[int, Enrollment],
                     now: datetime) -> set[int]:
    """Store each timer's synthetic event once and move its enrollment; returns the
    ids of the enrollments that moved."""
    insert_rows(MessageEvent, [
        {"message": action.message_id, "tenant": enrollments[action.enrollment_id].tenant_id,
         "type": action.event, "synthetic": True, "event_key": synthetic_event_key(action.id),
         "occurred_at": now, "action": action.id, "scheduled_for": action.run_at,
         "data": {"scheduled_for": action.run_at.isoformat(), "fired_at": now.isoformat(),
                  "node": action.node}}
        for action in due
    ], ignore_conflicts=True)
    by_event: dict[str, list[Enrollment]] = defaultdict(list)
    for action in due:
        by_event[action.event].append(enrollments[action.enrollment_id])
    moved: set[int] = set()
    for event, group in sorted(by_event.items()):
        moved.update(enrollment.id for enrollment in engine.move_on_event(group, event, now=now))
    return moved


def _paused_now(enrollment_id: int) -> bool:
    return Enrollment.select().where(Enrollment.id == enrollment_id,
                                     Enrollment.status == Enrollment.PAUSED).exists()


def _release_quietly(actions: list[ScheduledAction]) -> None:
    if not actions:
        return
    try:
        release_actions(actions)
    except Exception:  # the database is down: the lease reconciler will find them
        logger.exception("Could not release %d claimed timeout actions", len(actions))
