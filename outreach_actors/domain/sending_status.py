"""What the sending policy is doing now, for `outreach stats` and `outreach failures`:
each sender identity's cap for today (its warm-up day) and what it sent, and the pauses."""

from __future__ import annotations

from datetime import datetime

from outreach_actors.domain.pauses import active_pauses
from outreach_actors.domain.sending_days import daily_cap, sender_day, sender_zone
from outreach_actors.domain.store.models import OutboundMessage, SenderIdentity, utcnow
from outreach_actors.settings import Settings, get_settings


def sender_days(tenant_id: str | None = None, *, now: datetime | None = None,
                settings: Settings | None = None) -> list[dict]:
    """One row per sender identity with a daily cap or a warm-up: its day (in its own
    zone), its allowance today, its warm-up day, what it sent today."""
    settings = settings or get_settings()
    now = now or utcnow()
    query = SenderIdentity.select().order_by(SenderIdentity.tenant, SenderIdentity.email)
    if tenant_id is not None:
        query = query.where(SenderIdentity.tenant == tenant_id)
    rows = []
    for identity in query:
        limits = identity.rate_limits or {}
        tenant_limits = identity.tenant.rate_limits or {}
        cap = limits.get("sender_per_day", tenant_limits.get("sender_per_day",
                                                             settings.ratelimit_sender_per_day))
        today = sender_day(now, sender_zone(limits))
        allowed = daily_cap(cap, limits, identity.first_sent_at, today)
        if allowed is None and not limits.get("warmup_start"):
            continue
        first_day = (sender_day(identity.first_sent_at, sender_zone(limits)).day
                     if identity.first_sent_at else today.day)
        sent = OutboundMessage.select().where(
            OutboundMessage.tenant == identity.tenant_id,
            OutboundMessage.from_email == identity.email,
            OutboundMessage.sent_at >= today.starts.replace(tzinfo=None),
            OutboundMessage.sent_at < today.ends.replace(tzinfo=None)).count()
        rows.append({
            "tenant": identity.tenant_id, "sender": identity.email, "day": today.day.isoformat(),
            "cap_today": allowed, "daily_cap": cap,
            "warmup_day": (today.day - first_day).days + 1 if limits.get("warmup_start") else None,
            "sent_today": sent,
        })
    return rows


def pause_rows(tenant_id: str | None = None) -> list[dict]:
    """The pauses in force: what, since when, by whom, why."""
    return [{"tenant": pause.tenant_id, "kind": pause.kind, "name": pause.name,
             "since": pause.paused_at.isoformat(sep=" ", timespec="seconds"),
             "by": pause.paused_by, "reason": pause.reason}
            for pause in active_pauses(tenant_id)]
