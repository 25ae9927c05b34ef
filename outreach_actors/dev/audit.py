"""Count every breach of the engine's invariants after a campaign, from the database and two outside records.

The outside records are what the database cannot vouch for by itself: the mails
SendGrid accepted (the stand-in's list: a duplicate send is a second mail there,
whatever our rows say) and the webhook events our endpoint answered 2xx for (an
event lost after that is ours). Used by the chaos run (``outreach_actors/chaos.py``).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import peewee

from outreach_actors.dev.chaos_notify import ReceivedNotification
from outreach_actors.dev.standin import AcceptedMessage
from outreach_actors.domain import splits, stored_plans
from outreach_actors.domain.goals import GOAL_REASON_PREFIX
from outreach_actors.domain.notifications import REPLIED
from outreach_actors.domain.replies.ending import REPLY_GOAL
from outreach_actors.domain.store.keys import host_event_key
from outreach_actors.domain.store.models import (
    Contact,
    Enrollment,
    HostEvent,
    InboundPost,
    MessageEvent,
    NodeVisit,
    Notification,
    OutboundMessage,
    Plan,
    ScheduledAction,
    Suppression,
    WebhookDelivery,
    database_proxy,
)
from outreach_actors.domain.vocabulary import PROOF_OF_SEND

# The notes dispatch and engine leave on a settled ambiguous send (OutboundMessage.error).
CONFIRMED_NOTE = "resolved by provider event"
POLICY_FAILED_NOTE = "ambiguous send not confirmed"
# ... and the note of such a send that a provider event then proved sent: its enrollment
# had ended by then, so it starts no timers (see ambiguous.record_late_proof).
LATE_PROOF_NOTE = "confirmed late by a provider event"
# What each engagement timer waits for: a click counts as an open (see engagement.engagement_seen).
ENGAGEMENT = {"no_open": {"opened", "clicked"}, "no_click": {"clicked"}}


@dataclass
class FlowRecord:
    """What the host and the operator did in the run, as the audit needs it (see
    dev/chaos_flows.py): the host events our endpoint accepted (by the host's id), how
    many of their answers said "stored", the pause windows, the migration's window."""

    tenant: str
    host_event_ids: set[str] = field(default_factory=set)
    host_events_stored_answers: Counter = field(default_factory=Counter)
    plan_pauses: list = field(default_factory=list)  # chaos_flows.PauseWindow
    contact_pauses: list = field(default_factory=list)
    migration: tuple[datetime | None, datetime | None] = (None, None)
    # The SHA-256 of every Inbound Parse body answered 2xx, with the persona that wrote it.
    inbound_digests: dict[str, str] = field(default_factory=dict)
    # Notifications the broker still holds (see chaos._waiting_in_redis): late, not lost.
    notifications_in_broker: set[str] = field(default_factory=set)


@dataclass
class Audit:
    """The counts of one campaign. Every value of ``violations()`` must be zero.

    duplicate_sends: mails SendGrid accepted beyond one per (enrollment, node) (one per
      message for a reply forwarded to a person), and accepted mails that name no
      message of ours.
    lost_timers: timeout actions that neither fired exactly once (done, one synthetic
      event) nor were closed without firing for a reason that holds (cancelled or
      skipped after the enrollment left the visit, or skipped on engagement that is
      stored), plus the timers a sent email should have started and did not.
    lost_events: accepted events that are not stored, plus deliveries never processed.
    not_terminal: enrollments still active.
    suppressed_mailed: mails accepted for an address whose suppression was committed
      before the send was claimed.
    ambiguous: how ambiguous sends ended; ``unresolved`` ones and
      ``failed_though_confirmed`` ones (failed by the policy although a provider
      event confirming them had been processed) break the documented policy.
    mailed_after_goal: mails accepted for a converted enrollment whose send was claimed
      after the conversion committed, by a claim that did not cancel it (PostgreSQL's commit timestamp of the enrollment's
      last write; without track_commit_timestamp, the converting event's processed_at).
    arms_reassigned: split visits whose arm is not the stable assignment of the plan
      version in force (for a visit made while the migration ran, either version's), a
      second arm recorded for an enrollment at one split, and mails accepted for another
      arm's email node than the one recorded.
    notifications_lost: outbox rows never received by the host's actor and no longer
      in the broker, and ended enrollments with no notification of their end.
    notifications_doubled: notifications the outbox sent more than once that were
      received more than once by their stable id, received ids that are in no outbox
      row, and enrollments notified of their end twice. (A notification sent once and
      delivered twice by the broker, to a worker killed before its ack, is counted
      apart as ``notifications_redelivered``: hosts dedupe on the stable id.)
    mailed_while_paused: mails whose send was claimed after a plan-wide pause had
      committed and before its resume was called (an email claimed before the pause
      landed is in flight and goes); and mails to a paused enrollment rendered after
      its pause had committed and before its resume was called (an email rendered
      before the pause is in flight: control.py).
    mailed_after_reply: the same for enrollments a person's reply ended (``goal:replied``).
    replies_lost: Inbound Parse posts our endpoint accepted that are not stored once
      (by the digest of their body) and read to an end.
    host_events_lost: host events our endpoint accepted that are not stored (once:
      ``event_key`` is unique) and processed; host_events_stored_twice: events whose
      answers said "stored" more than once.
    """

    enrollments: dict[str, int]
    messages: dict[str, int]
    mails_accepted: int
    duplicate_sends: int
    timers: dict[str, int]
    lost_timers: int
    events: dict[str, int]
    lost_events: int
    not_terminal: int
    suppressed_mailed: int
    ambiguous: dict[str, int]
    flows: dict[str, int] = field(default_factory=dict)
    mailed_after_goal: int = 0
    mailed_after_reply: int = 0
    replies_lost: int = 0
    arms_reassigned: int = 0
    notifications_lost: int = 0
    notifications_doubled: int = 0
    mailed_while_paused: int = 0
    host_events_lost: int = 0
    host_events_stored_twice: int = 0
    #: The first few enrollments still active, each with its open actions and emails:
    #: what a run that ended with not_terminal above 0 was waiting for.
    still_active: list[str] = field(default_factory=list)

    def violations(self) -> dict[str, int]:
        return {
            "duplicate_sends": self.duplicate_sends,
            "lost_timers": self.lost_timers,
            "lost_events": self.lost_events,
            "not_terminal": self.not_terminal,
            "suppressed_mailed": self.suppressed_mailed,
            "ambiguous_unresolved": self.ambiguous["unresolved"],
            "ambiguous_misapplied": self.ambiguous["failed_though_confirmed"],
            "mailed_after_goal": self.mailed_after_goal,
            "mailed_after_reply": self.mailed_after_reply,
            "replies_lost": self.replies_lost,
            "arms_reassigned": self.arms_reassigned,
            "notifications_lost": self.notifications_lost,
            "notifications_doubled": self.notifications_doubled,
            "mailed_while_paused": self.mailed_while_paused,
            "host_events_lost": self.host_events_lost,
            "host_events_stored_twice": self.host_events_stored_twice,
        }

    def lines(self) -> list[str]:
        return [
            "enrollments: " + _join(self.enrollments),
            f"mails accepted by SendGrid: {self.mails_accepted}; messages: "
            + _join(self.messages),
            "timers: " + _join(self.timers),
            "webhook events: " + _join(self.events),
            "ambiguous sends: " + _join(self.ambiguous),
            "flows: " + _join(self.flows),
            "invariants (all must be 0): " + _join(self.violations()),
            *("still active: " + each for each in self.still_active),
        ]


def _join(values: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in values.items())


def audit_campaign(accepted_mails: Sequence[AcceptedMessage], accepted_event_ids: Counter[str],
                   presuppressed: set[str], record: FlowRecord | None = None) -> Audit:
    """Audit everything in the bound database.

    ``accepted_mails``: what SendGrid accepted. ``accepted_event_ids``: the
    ``sg_event_id`` of every event in a batch our endpoint answered 2xx, counted
    as often as it was accepted. ``presuppressed``: addresses suppressed before
    they were enrolled (any mail to them is a breach). ``record``: the host's and the
    operator's flows (none: those invariants are not audited).
    """
    messages = {
        row.id: row for row in OutboundMessage.select(
            OutboundMessage.id, OutboundMessage.enrollment, OutboundMessage.node,
            OutboundMessage.status, OutboundMessage.error, OutboundMessage.send_started_at,
            OutboundMessage.created_at,
        )
    }
    per_message = Counter(mail.custom_args.get("outreach_message_id") for mail in accepted_mails)
    per_visit: Counter[tuple] = Counter()
    for message_id, count in per_message.items():
        row = messages.get(message_id)
        # A message of no enrollment (a reply forwarded to a person) is one mail of its own.
        key = ((row.enrollment_id, row.node) if row.enrollment_id is not None
               else ("forward", message_id)) if row else ("unknown", message_id)
        per_visit[key] += count
    duplicates = sum(count - 1 for key, count in per_visit.items() if key[0] != "unknown")
    unknown = sum(count for key, count in per_visit.items() if key[0] == "unknown")
    enrollments = Counter(status for (status,) in Enrollment.select(Enrollment.status).tuples())
    timers, lost_timers = _audit_timers(messages)
    events, lost_events = _audit_events(accepted_event_ids)
    flows = _audit_flows(accepted_mails, messages, record) if record is not None else {}
    return Audit(
        enrollments=dict(sorted(enrollments.items())),
        messages=dict(sorted(Counter(row.status for row in messages.values()).items())),
        mails_accepted=len(accepted_mails),
        duplicate_sends=duplicates + unknown,
        timers=timers,
        lost_timers=lost_timers,
        events=events,
        lost_events=lost_events,
        not_terminal=enrollments.get(Enrollment.ACTIVE, 0),
        still_active=_still_active(),
        suppressed_mailed=_suppressed_mailed(accepted_mails, messages, presuppressed),
        ambiguous=_audit_ambiguous(messages, per_message),
        flows={key: value for key, value in flows.items() if key not in _FLOW_INVARIANTS},
        **{key: value for key, value in flows.items() if key in _FLOW_INVARIANTS},
    )


def _still_active(shown: int = 5) -> list[str]:
    """The first ``shown`` active enrollments: node and version, and the actions and
    emails of the enrollment, each with its state."""
    lines = []
    for enrollment in (Enrollment.select().where(Enrollment.status == Enrollment.ACTIVE)
                       .order_by(Enrollment.id).limit(shown)):
        actions = [f"{a.kind}:{a.event or '-'}@{a.node}/v{a.visit_version} {a.status}"
                   f" run_at={a.run_at:%H:%M:%S}" + (f" ({a.result})" if a.result else "")
                   for a in ScheduledAction.select().where(
                       ScheduledAction.enrollment == enrollment.id).order_by(ScheduledAction.id)]
        emails = [f"{m.node} {m.status}" for m in OutboundMessage.select(
            OutboundMessage.node, OutboundMessage.status).where(
            OutboundMessage.enrollment == enrollment.id).order_by(OutboundMessage.created_at)]
        lines.append(f"enrollment={enrollment.id} at {enrollment.current_node}/v{enrollment.version}"
                     f" since {enrollment.node_entered_at:%H:%M:%S}; actions: "
                     f"{', '.join(actions) or 'none'}; emails: {', '.join(emails) or 'none'}")
    return lines


def _audit_timers(messages: dict[str, OutboundMessage]) -> tuple[dict[str, int], int]:
    """Sort every timeout action by how it ended; returns the classes and the number lost."""
    fired = Counter(
        action_id for (action_id,) in MessageEvent.select(MessageEvent.action)
        .where(MessageEvent.synthetic == True).tuples()  # noqa: E712 (peewee expression)
    )
    enrollments = {
        row[0]: row[1:] for row in Enrollment.select(
            Enrollment.id, Enrollment.status, Enrollment.version, Enrollment.plan,
        ).tuples()
    }
    engaged = set(
        MessageEvent.select(MessageEvent.message, MessageEvent.type)
        .where(MessageEvent.synthetic == False,  # noqa: E712
               MessageEvent.type.in_(sorted(set().union(*ENGAGEMENT.values()))))
        .tuples()
    )
    classes: Counter[str] = Counter()
    started: Counter[str] = Counter()
    for action in ScheduledAction.select().where(ScheduledAction.kind == ScheduledAction.TIMEOUT):
        started[action.message_id] += 1
        status, version, _ = enrollments[action.enrollment_id]
        left_visit = status != Enrollment.ACTIVE or version != action.visit_version
        seen = any((action.message_id, kind) in engaged for kind in ENGAGEMENT.get(action.event, ()))
        if action.status == ScheduledAction.DONE:
            classes["fired" if fired[action.id] == 1 else "lost_fired_wrongly"] += 1
        elif fired[action.id]:
            classes[f"lost_fired_but_{action.status}"] += 1
        elif action.status == ScheduledAction.SKIPPED and action.result == "engagement seen":
            classes["skipped_on_engagement" if seen else "lost_skipped_without_engagement"] += 1
        elif action.status in (ScheduledAction.SKIPPED, ScheduledAction.CANCELLED):
            classes["cancelled_by_transition" if left_visit else "lost_cancelled_in_visit"] += 1
        else:
            classes[f"lost_{action.status}"] += 1
    total = sum(classes.values())
    missing = 0
    for message_id, row in messages.items():
        if (row.status == OutboundMessage.SENT and row.enrollment_id is not None
                and LATE_PROOF_NOTE not in (row.error or "")):
            plan = stored_plans.plan_for_id(enrollments[row.enrollment_id][2])
            missing += max(0, len(plan.timeout_transitions(row.node)) - started[message_id])
    if missing:
        classes["lost_never_started"] = missing
    lost = sum(count for name, count in classes.items() if name.startswith("lost"))
    return {"total": total, **dict(sorted(classes.items()))}, lost


def _audit_events(accepted_event_ids: Counter[str]) -> tuple[dict[str, int], int]:
    stored = {key for (key,) in MessageEvent.select(MessageEvent.event_key)
              .where(MessageEvent.synthetic == False).tuples()}  # noqa: E712
    accepted = {f"sg:{event_id}" for event_id in accepted_event_ids}
    missing = len(accepted - stored)
    unprocessed = WebhookDelivery.select().where(
        WebhookDelivery.status != WebhookDelivery.PROCESSED).count()
    total = sum(accepted_event_ids.values())
    counts = {
        "accepted": total,
        "accepted_unique": len(accepted),
        "stored": len(stored),
        "duplicates_absorbed": total - len(accepted),
        "deliveries": WebhookDelivery.select().count(),
        "deliveries_unprocessed": unprocessed,
        "missing": missing,
    }
    return counts, missing + unprocessed


def _suppressed_mailed(accepted_mails: Sequence[AcceptedMessage],
                       messages: dict[str, OutboundMessage], presuppressed: set[str]) -> int:
    """Mails accepted for an address after its suppression was committed.

    A suppression made from a webhook event commits with its delivery, whose
    ``processed_at`` is set just after: a send claimed later must have seen it.
    """
    visible_since: dict[str, datetime | None] = {}
    for suppression in Suppression.select().where(Suppression.channel == Suppression.EMAIL):
        if suppression.value in presuppressed:
            visible_since[suppression.value] = None  # before any send
            continue
        event = MessageEvent.get_or_none(MessageEvent.event_key == suppression.source)
        delivery = event.delivery if event is not None and event.delivery_id else None
        visible_since[suppression.value] = (
            delivery.processed_at if delivery and delivery.processed_at else suppression.created_at
        )
    mailed = 0
    for mail in accepted_mails:
        address = mail.recipients()[0][0].lower()
        if address not in visible_since:
            continue
        since = visible_since[address]
        row = messages.get(mail.custom_args.get("outreach_message_id"))
        claimed = row.send_started_at if row else None
        mailed += since is None or claimed is None or claimed > since
    return mailed


def _audit_ambiguous(messages: dict[str, OutboundMessage],
                     accepted: Counter[str]) -> dict[str, int]:
    """How every ambiguous send ended: confirmed by an event, or failed by the policy."""
    confirmed = [m for m in messages.values() if CONFIRMED_NOTE in (m.error or "")]
    failed = [m for m in messages.values() if (m.error or "").startswith(POLICY_FAILED_NOTE)]
    unresolved = [m for m in messages.values() if m.status == OutboundMessage.AMBIGUOUS]
    # The policy ends the enrollment when it fails a send: that is when it decided.
    settled_at = dict(
        Enrollment.select(Enrollment.id, Enrollment.updated_at)
        .where(Enrollment.exit_reason == "ambiguous_send").tuples()
    )
    failed_though_confirmed = 0
    for message in failed:
        proof_processed = [
            processed_at for (processed_at,) in MessageEvent.select(WebhookDelivery.processed_at)
            .join(WebhookDelivery)
            .where(MessageEvent.message == message.id,
                   MessageEvent.type.in_(sorted(PROOF_OF_SEND)))
            .tuples() if processed_at is not None
        ]
        settled = settled_at.get(message.enrollment_id)
        failed_though_confirmed += bool(settled and proof_processed
                                        and min(proof_processed) < settled)
    reached_sendgrid = sum(1 for m in failed if accepted[m.id])
    return {
        "total": len(confirmed) + len(failed) + len(unresolved),
        "confirmed_by_webhook": len(confirmed),
        "failed_by_policy": len(failed),
        "failed_by_policy_never_reached_sendgrid": len(failed) - reached_sendgrid,
        "failed_by_policy_events_too_late": reached_sendgrid - failed_though_confirmed,
        "failed_though_confirmed": failed_though_confirmed,
        "unresolved": len(unresolved),
    }


_FLOW_INVARIANTS = ("mailed_after_goal", "mailed_after_reply", "replies_lost", "arms_reassigned", "notifications_lost",
                    "notifications_doubled", "mailed_while_paused", "host_events_lost",
                    "host_events_stored_twice")


def _audit_flows(accepted_mails: Sequence[AcceptedMessage], messages: dict[str, OutboundMessage],
                 record: FlowRecord) -> dict[str, int]:
    """The flows' counts and invariants (see Audit), in one mapping."""
    mails = [(mail, messages.get(mail.custom_args.get("outreach_message_id")))
             for mail in accepted_mails]
    mails = [(mail, row) for mail, row in mails if row is not None and row.enrollment_id]
    counts: dict[str, int] = {}
    counts.update(_audit_goals(mails))
    counts.update(_audit_splits(mails, record))
    counts.update(_audit_notifications(record.notifications_in_broker))
    counts.update(_audit_pauses(mails, record))
    counts.update(_audit_host_events(record))
    counts.update(_audit_replies(record))
    return counts


def _goal_committed_at() -> dict[int, datetime]:
    """When each conversion committed: PostgreSQL's commit timestamp of the enrollment's
    last write (a converted enrollment is written no more), else the converting event's
    processed_at (taken when its transaction began: a little early)."""
    converted = Enrollment.status == Enrollment.CONVERTED
    try:
        with database_proxy.atomic():
            rows = database_proxy.execute_sql(
                "SELECT id, pg_xact_commit_timestamp(xmin) FROM enrollment WHERE status = %s",
                (Enrollment.CONVERTED,)).fetchall()
        return {enrollment_id: stamp.astimezone(UTC).replace(tzinfo=None)
                for enrollment_id, stamp in rows if stamp is not None}
    except peewee.DatabaseError:  # SQLite, or track_commit_timestamp off
        pass
    committed: dict[int, datetime] = {}
    for enrollment_id, reason, name, processed_at in (
        Enrollment.select(Enrollment.id, Enrollment.exit_reason, HostEvent.name,
                          HostEvent.processed_at)
        .join(Contact).join(HostEvent, on=((HostEvent.tenant == Contact.tenant)
                                           & (HostEvent.email == Contact.email)))
        .where(converted, HostEvent.processed_at.is_null(False)).tuples()
    ):
        if reason == GOAL_REASON_PREFIX + name:
            committed[enrollment_id] = min(committed.get(enrollment_id, processed_at), processed_at)
    return committed


def _audit_goals(mails: list[tuple[AcceptedMessage, OutboundMessage]]) -> dict[str, int]:
    """Mails after a goal: a reply's (``goal:replied``) counted apart from the others'."""
    committed = _goal_committed_at()
    replied = {enrollment_id for (enrollment_id,) in Enrollment.select(Enrollment.id).where(
        Enrollment.exit_reason == REPLY_GOAL).tuples()}
    # Every claim after the goal must cancel the send (and is the last claim): a mail
    # whose last claim came after the goal and did not cancel went out after it. (One
    # whose last claim cancelled was accepted on an earlier claim, made before the goal.)
    after = Counter(row.enrollment_id in replied for _, row in mails
                    if row.enrollment_id in committed and row.send_started_at is not None
                    and row.send_started_at > committed[row.enrollment_id]
                    and row.status != OutboundMessage.CANCELLED)
    return {"converted": len(committed), "replied": len(replied),
            "mailed_after_goal": after[False], "mailed_after_reply": after[True]}


def _audit_splits(mails: list[tuple[AcceptedMessage, OutboundMessage]],
                  record: FlowRecord) -> dict[str, int]:
    """Each split visit's arm against the stable assignment, one arm per enrollment and
    split, and no mail for another arm's node (SendGrid's record)."""
    started, ended = record.migration
    plans = {row.id: row for row in Plan.select()}
    by_version = {(row.name, row.version): row for row in plans.values()}
    visits = list(NodeVisit.select(NodeVisit.enrollment, NodeVisit.node, NodeVisit.route,
                                   NodeVisit.entered_at, Enrollment.plan, Enrollment.tenant,
                                   Contact.email)
                  .join(Enrollment).join(Contact)
                  .where(NodeVisit.route.is_null(False)).tuples())
    routes: dict[tuple[int, str], set[str]] = defaultdict(set)
    plan_of: dict[int, int] = {}
    wrong = 0
    for enrollment_id, node, route, entered_at, plan_id, tenant, email in visits:
        routes[(enrollment_id, node)].add(route)
        plan_of[enrollment_id] = plan_id
        current = plans[plan_id]
        candidates = [current]
        earlier = by_version.get((current.name, current.version - 1))
        if earlier is not None and started is not None:  # migrated mid-run, maybe
            if entered_at < started:
                candidates = [earlier]
            elif ended is None or entered_at <= ended:
                candidates = [earlier, current]
        expected = {splits.choose_route(
            splits.assignment_point(tenant, email, plan.name, plan.version, node),
            stored_plans.plan_for_id(plan.id).node(node)) for plan in candidates}
        wrong += route not in expected
    second_arms = sum(len(arms) - 1 for arms in routes.values())
    mailed_nodes: dict[int, set[str]] = defaultdict(set)
    for _, row in mails:
        mailed_nodes[row.enrollment_id].add(row.node)
    other_arm_mails = 0
    for (enrollment_id, node), arms in routes.items():
        spec = stored_plans.plan_for_id(plan_of[enrollment_id]).node(node)
        targets = dict(zip(splits.arm_names(spec), [arm.to for arm in spec.arms or []],
                           strict=True))
        chosen = {targets.get(arm) for arm in arms}
        other_arm_mails += len((set(targets.values()) - chosen) & mailed_nodes[enrollment_id])
    return {"split_visits": len(visits), "arms_reassigned": wrong + second_arms + other_arm_mails}


def _audit_notifications(in_broker: set[str]) -> dict[str, int]:
    """Every outbox row received once by its id (or still held by the broker, to be
    delivered late); every ended enrollment notified once."""
    received = Counter(notification_id for (notification_id,) in ReceivedNotification.select(
        ReceivedNotification.notification_id).tuples())
    rows = dict(Notification.select(Notification.id, Notification.payload).tuples())
    attempts = dict(Notification.select(Notification.id, Notification.attempts).tuples())
    late = {notification_id for notification_id in rows
            if not received[notification_id] and notification_id in in_broker}
    lost = sum(1 for notification_id in rows
               if not received[notification_id] and notification_id not in late)
    # Received twice: sent twice by the outbox (a breach), or one message delivered twice
    # by the broker to a worker killed before its ack (Dramatiq delivers at least once;
    # hosts dedupe on the stable id, as documented): counted apart.
    again = {notification_id: count - 1 for notification_id, count in received.items()
             if count > 1}
    redelivered = sum(count for notification_id, count in again.items()
                      if attempts.get(notification_id, 0) <= 1)
    doubled = sum(count for notification_id, count in again.items()
                  if attempts.get(notification_id, 0) > 1)
    doubled += sum(count for notification_id, count in received.items()
                   if notification_id not in rows)
    ends = Counter(payload.get("enrollment_id") for payload in rows.values()
                   if payload.get("type") != REPLIED)  # a reply's own, beside its goal's
    doubled += sum(count - 1 for count in ends.values() if count > 1)
    ended = [enrollment_id for (enrollment_id,) in Enrollment.select(Enrollment.id).where(
        Enrollment.status.not_in(Enrollment.LIVE)).tuples()]
    lost += sum(1 for enrollment_id in ended if not ends[enrollment_id])
    return {"notifications": len(rows), "notifications_received": sum(received.values()),
            "notifications_in_broker": len(late), "notifications_redelivered": redelivered,
            "notifications_lost": lost, "notifications_doubled": doubled}


def _audit_pauses(mails: list[tuple[AcceptedMessage, OutboundMessage]],
                  record: FlowRecord) -> dict[str, int]:
    breaches = 0
    for window in record.plan_pauses:
        breaches += sum(1 for _, row in mails if row.send_started_at is not None
                        and window.started_at < row.send_started_at < window.ended_at)
    for window in record.contact_pauses:
        addresses = set(window.emails)
        breaches += sum(1 for mail, row in mails
                        if mail.recipients()[0][0].lower() in addresses
                        and window.started_at < row.created_at < window.ended_at)
    return {"mailed_while_paused": breaches}


def _audit_host_events(record: FlowRecord) -> dict[str, int]:
    keys = {host_event_key(record.tenant, event_id) for event_id in record.host_event_ids}
    stored = Counter(key for (key,) in HostEvent.select(HostEvent.event_key).where(
        HostEvent.event_key.in_(sorted(keys)), HostEvent.status == HostEvent.PROCESSED).tuples())
    return {
        "host_events_accepted": len(keys),
        "host_events_lost": sum(1 for key in keys if stored[key] != 1),
        "host_events_stored_twice": sum(1 for count in record.host_events_stored_answers.values()
                                        if count > 1),
    }


def _audit_replies(record: FlowRecord) -> dict[str, int]:
    digests = sorted(record.inbound_digests)
    read = Counter(post.body_digest for post in InboundPost.select(
        InboundPost.body_digest, InboundPost.status).where(
        InboundPost.body_digest.in_(digests),
        InboundPost.status.not_in([InboundPost.RECEIVED, InboundPost.FAILED])))
    kinds = Counter(kind for (kind,) in InboundPost.select(InboundPost.kind).tuples())
    return {"inbound_accepted": len(digests),
            **{f"inbound_{kind}": count for kind, count in sorted(kinds.items(), key=str)},
            "replies_lost": sum(1 for digest in digests if read[digest] != 1)}


__all__ = ["Audit", "FlowRecord", "audit_campaign"]
