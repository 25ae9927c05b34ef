"""The reputation check: pause a sender identity or a plan whose complaint or hard-bounce
rate, over a rolling window, passes its threshold (Gmail and Yahoo hold bulk senders
under 0.3% complaints)."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from outreach_actors.domain.metrics import set_gauge
from outreach_actors.domain.pauses import PauseChange, active_pauses, pause
from outreach_actors.domain.store.models import (
    Enrollment,
    MessageEvent,
    OutboundMessage,
    Plan,
    SendingPause,
    utcnow,
)
from outreach_actors.domain.vocabulary import EventType
from outreach_actors.settings import Settings, get_settings

logger = logging.getLogger(__name__)

#: Who an automatic pause is recorded as paused by.
REPUTATION_CHECK = "reputation check"

# (tenant, kind, name) of the gauges this process set to 1, to set back to 0 when lifted.
_gauged: set[tuple[str, str, str]] = set()


@dataclass(frozen=True)
class Standing:
    """One sender's or plan's sends in the window and the complaints and hard bounces
    among them."""

    tenant: str
    kind: str
    name: str
    sends: int
    complaints: int
    hard_bounces: int

    def problem(self, settings: Settings) -> str | None:
        """Why it must be paused, or None: too few sends to tell, or rates in bounds."""
        if self.sends < settings.reputation_min_sends:
            return None
        for what, found, limit in (
                ("complaint", self.complaints, settings.reputation_max_complaint_rate),
                ("hard-bounce", self.hard_bounces, settings.reputation_max_hard_bounce_rate)):
            if found / self.sends > limit:
                return (f"{what} rate {found / self.sends:.2%} ({found} of {self.sends} sends "
                        f"since {{since}}) is over {limit:.2%}")
        return None


def standings(since: datetime, *, tenant: str | None = None, kind: str | None = None,
              name: str | None = None) -> list[Standing]:
    """Per sender identity and per plan: the sends from ``since`` and their complaints
    and hard bounces (events received at any time)."""
    plan_name = (Plan.select(Plan.name).join(Enrollment, on=(Enrollment.plan == Plan.id))
                 .where(Enrollment.id == OutboundMessage.enrollment))
    where = [OutboundMessage.sent_at >= since]
    if tenant is not None:
        where.append(OutboundMessage.tenant == tenant)
    if kind == SendingPause.SENDER:
        where.append(OutboundMessage.from_email == name)
    sends = (OutboundMessage.select(OutboundMessage.tenant, OutboundMessage.from_email,
                                    plan_name.alias("plan"), OutboundMessage.id)
             .where(*where))
    events = (MessageEvent.select(OutboundMessage.tenant, OutboundMessage.from_email,
                                  plan_name.alias("plan"), OutboundMessage.id, MessageEvent.type,
                                  MessageEvent.data)
              .join(OutboundMessage, on=(OutboundMessage.id == MessageEvent.message))
              .where(*where, MessageEvent.type.in_([EventType.COMPLAINED, EventType.BOUNCED])))
    sent: Counter = Counter()
    for tenant_id, sender, plan, _ in sends.tuples().iterator():
        sent[(tenant_id, SendingPause.SENDER, sender)] += 1
        if plan is not None:
            sent[(tenant_id, SendingPause.PLAN, plan)] += 1
    complained: dict[tuple, set] = {}
    bounced: dict[tuple, set] = {}
    for tenant_id, sender, plan, message_id, event_type, data in events.tuples().iterator():
        if event_type == EventType.BOUNCED and (data or {}).get("bounce_type") != "hard":
            continue
        found = complained if event_type == EventType.COMPLAINED else bounced
        keys = [(tenant_id, SendingPause.SENDER, sender)]
        if plan is not None:
            keys.append((tenant_id, SendingPause.PLAN, plan))
        for key in keys:
            found.setdefault(key, set()).add(message_id)
    return [Standing(*key, count, len(complained.get(key, ())), len(bounced.get(key, ())))
            for key, count in sent.items()
            if kind is None or (key[1] == kind and key[2] == name)]


def check_reputation(*, now: datetime | None = None,
                     settings: Settings | None = None) -> list[PauseChange]:
    """Pause each sender identity and plan past a threshold over the window; returns the
    pauses made. A pause is logged at ERROR once (Sentry hears it once, through its
    logging integration); one lifted by hand counts only the sends after the lift."""
    settings = settings or get_settings()
    now = now or utcnow()
    since = now - settings.reputation_window
    lifted = {(row.tenant_id, row.kind, row.name): row.resumed_at
              for row in SendingPause.select().where(SendingPause.resumed_at > since)}
    held = {(row.tenant_id, row.kind, row.name) for row in active_pauses()}
    changes = []
    for standing in standings(since):
        key = (standing.tenant, standing.kind, standing.name)
        if key in held:
            continue
        if key in lifted:  # judged again on what it sent since it was resumed
            again = standings(lifted[key], tenant=standing.tenant, kind=standing.kind,
                              name=standing.name)
            if not again:
                continue
            standing = again[0]
        problem = standing.problem(settings)
        if problem is None:
            continue
        when = lifted.get(key, since)
        reason = "auto: " + problem.format(since=when.isoformat(sep=" ", timespec="minutes"))
        change = pause(standing.tenant, standing.kind, standing.name, reason=reason,
                       by=REPUTATION_CHECK, now=now)
        if change.changed:
            logger.error("Paused %s %r of tenant %r: %s; lift it with `outreach %s resume`",
                         standing.kind, standing.name, standing.tenant, reason, standing.kind)
            changes.append(change)
    _set_gauges()
    return changes


def _set_gauges() -> None:
    """outreach_sending_paused: 1 for each pause in force, 0 for those lifted since."""
    now_paused = {(row.tenant_id, row.kind, row.name) for row in active_pauses()}
    for tenant, kind, name in now_paused | _gauged:
        set_gauge("outreach_sending_paused", 1 if (tenant, kind, name) in now_paused else 0,
                  tenant=tenant, kind=kind, name=name)
    _gauged.clear()
    _gauged.update(now_paused)
