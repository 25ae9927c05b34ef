"""What holds a rendered send back before its rate limits are even asked: a pause of its
plan or sender, the tenant's blackout dates, and, for a send that already waited, its
send window (a send held past the window's close waits for the next opening)."""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from outreach_actors.domain.blackouts import tenant_blackouts
from outreach_actors.domain.mail.send_order import SendScope
from outreach_actors.domain.pauses import paused
from outreach_actors.domain.store.models import SendingPause
from outreach_actors.domain.windows import next_send_time


class Hold(NamedTuple):
    """Why a send waits (``pause``, ``blackout``, ``window``) and until when (naive
    UTC; None: until resumed, looked at again later)."""

    reason: str
    until: datetime | None


def send_hold(scope: SendScope, now: datetime, *, waited: bool) -> Hold | None:
    """The hold on a send of ``scope`` at ``now``, if any. ``waited``: the send was
    deferred before (a rate or daily cap, a pause), so its window is looked at again."""
    if paused(scope.tenant, SendingPause.SENDER, scope.sender.lower()) or (
            scope.plan is not None and paused(scope.tenant, SendingPause.PLAN, scope.plan)):
        return Hold("pause", None)
    blackouts = tenant_blackouts(scope.tenant)
    if not blackouts and not waited:
        return None
    opens = next_send_time(now, scope.send_window, scope.timezone, blackouts)
    if opens <= now:
        return None
    return Hold("blackout" if blackouts and opens > next_send_time(
        now, scope.send_window, scope.timezone) else "window", opens)
