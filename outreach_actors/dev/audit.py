"""Count every breach of the engine's invariants after a campaign, from the database and two outside records.

The outside records are what the database cannot vouch for by itself: the mails
SendGrid accepted (the stand-in's list: a duplicate send is a second mail there,
whatever our rows say) and the webhook events our endpoint answered 2xx for (an
event lost after that is ours). Used by the chaos run (``outreach_actors/chaos.py``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from outreach_actors.dev.standin import AcceptedMessage
from outreach_actors.domain import stored_plans
from outreach_actors.domain.store.models import (
    Enrollment,
    MessageEvent,
    OutboundMessage,
    ScheduledAction,
    Suppression,
    WebhookDelivery,
)
from outreach_actors.domain.vocabulary import PROOF_OF_SEND

# The notes dispatch and engine leave on a settled ambiguous send (OutboundMessage.error).
CONFIRMED_NOTE = "resolved by provider event"
POLICY_FAILED_NOTE = "ambiguous send not confirmed"
# What each engagement timer waits for: a click counts as an open (see engagement.engagement_seen).
ENGAGEMENT = {"no_open": {"opened", "clicked"}, "no_click": {"clicked"}}


@dataclass
class Audit:
    """The counts of one campaign. Every value of ``violations()`` must be zero.

    duplicate_sends: mails SendGrid accepted beyond one per (enrollment, node), and
      accepted mails that name no message of ours.
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

    def violations(self) -> dict[str, int]:
        return {
            "duplicate_sends": self.duplicate_sends,
            "lost_timers": self.lost_timers,
            "lost_events": self.lost_events,
            "not_terminal": self.not_terminal,
            "suppressed_mailed": self.suppressed_mailed,
            "ambiguous_unresolved": self.ambiguous["unresolved"],
            "ambiguous_misapplied": self.ambiguous["failed_though_confirmed"],
        }

    def lines(self) -> list[str]:
        return [
            "enrollments: " + _join(self.enrollments),
            f"mails accepted by SendGrid: {self.mails_accepted}; messages: "
            + _join(self.messages),
            "timers: " + _join(self.timers),
            "webhook events: " + _join(self.events),
            "ambiguous sends: " + _join(self.ambiguous),
            "invariants (all must be 0): " + _join(self.violations()),
        ]


def _join(values: dict[str, Any]) -> str:
    return ", ".join(f"{key} {value}" for key, value in values.items())


def audit_campaign(accepted_mails: Sequence[AcceptedMessage], accepted_event_ids: Counter[str],
                   presuppressed: set[str]) -> Audit:
    """Audit everything in the bound database.

    ``accepted_mails``: what SendGrid accepted. ``accepted_event_ids``: the
    ``sg_event_id`` of every event in a batch our endpoint answered 2xx, counted
    as often as it was accepted. ``presuppressed``: addresses suppressed before
    they were enrolled (any mail to them is a breach).
    """
    messages = {
        row.id: row for row in OutboundMessage.select(
            OutboundMessage.id, OutboundMessage.enrollment, OutboundMessage.node,
            OutboundMessage.status, OutboundMessage.error, OutboundMessage.send_started_at,
        )
    }
    per_message = Counter(mail.custom_args.get("outreach_message_id") for mail in accepted_mails)
    per_visit: Counter[tuple] = Counter()
    for message_id, count in per_message.items():
        row = messages.get(message_id)
        per_visit[(row.enrollment_id, row.node) if row else ("unknown", message_id)] += count
    duplicates = sum(count - 1 for key, count in per_visit.items() if key[0] != "unknown")
    unknown = sum(count for key, count in per_visit.items() if key[0] == "unknown")
    enrollments = Counter(status for (status,) in Enrollment.select(Enrollment.status).tuples())
    timers, lost_timers = _audit_timers(messages)
    events, lost_events = _audit_events(accepted_event_ids)
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
        suppressed_mailed=_suppressed_mailed(accepted_mails, messages, presuppressed),
        ambiguous=_audit_ambiguous(messages, per_message),
    )


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
        if row.status == OutboundMessage.SENT and row.enrollment_id is not None:
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


__all__ = ["Audit", "audit_campaign"]
