"""When things may happen: the send window (the node's, else the plan's) and the tenant's
blackout dates, in the contact's time zone."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from outreach_actors.domain.blackouts import Blackouts, blacked_out
from outreach_actors.domain.plans import WEEKDAYS, SendWindow, iana_zone


def contact_zone(timezone: str | None, window: SendWindow | None) -> ZoneInfo:
    """The contact's own IANA zone, else the window's default, else UTC."""
    for name in (timezone, window.timezone if window else None):
        # A bad zone on one contact (stored before enroll refused them) must not stop
        # its campaign: the next name is tried.
        if name and (zone := iana_zone(name)) is not None:
            return zone
    return ZoneInfo("UTC")


def next_send_time(now: datetime, window: SendWindow | None, timezone: str | None,
                   blackouts: Blackouts = ()) -> datetime:
    """The first moment at or after ``now`` (naive UTC) inside the send window and
    outside the tenant's ``blackouts`` (dates in the contact's zone).

    Window bounds are wall-clock times in the contact's zone, so "09:00" stays
    09:00 local across daylight-saving changes. Returns naive UTC.
    """
    if window is None and not blackouts:
        return now
    zone = contact_zone(timezone, window)
    local_now = now.replace(tzinfo=UTC).astimezone(zone)
    # Every weekday occurs within a week; blackouts push that back by their length.
    days_ahead = 8 + sum((last - first).days + 1 for first, last in blackouts)
    for offset in range(days_ahead):
        day = (local_now + timedelta(days=offset)).date()
        if blacked_out(day, blackouts):
            continue
        if window is None:
            opens = datetime.combine(day, time(0, 0), tzinfo=zone)
            if local_now < opens:
                return opens.astimezone(UTC).replace(tzinfo=None)
            return now
        if WEEKDAYS[day.weekday()] not in window.days:
            continue
        opens = datetime.combine(day, window.start, tzinfo=zone)
        closes = datetime.combine(day, window.end, tzinfo=zone)
        if local_now < opens:
            return opens.astimezone(UTC).replace(tzinfo=None)
        if local_now < closes:
            return now
    raise AssertionError("a validated send window has at least one day")  # pragma: no cover
