"""When things may happen: the plan's send window, in the contact's time zone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from outreach_actors.domain.plans import WEEKDAYS, SendWindow, iana_zone


def contact_zone(timezone: str | None, window: SendWindow | None) -> ZoneInfo:
    """The contact's own IANA zone, else the window's default, else UTC."""
    for name in (timezone, window.timezone if window else None):
        # A bad zone on one contact (stored before enroll refused them) must not stop
        # its campaign: the next name is tried.
        if name and (zone := iana_zone(name)) is not None:
            return zone
    return ZoneInfo("UTC")


def next_send_time(now: datetime, window: SendWindow | None, timezone: str | None) -> datetime:
    """The first moment at or after ``now`` (naive UTC) inside the send window.

    Window bounds are wall-clock times in the contact's zone, so "09:00" stays
    09:00 local across daylight-saving changes. Returns naive UTC.
    """
    if window is None:
        return now
    zone = contact_zone(timezone, window)
    local_now = now.replace(tzinfo=UTC).astimezone(zone)
    for offset in range(8):  # every weekday occurs within a week
        day = (local_now + timedelta(days=offset)).date()
        if WEEKDAYS[day.weekday()] not in window.days:
            continue
        opens = datetime.combine(day, window.start, tzinfo=zone)
        closes = datetime.combine(day, window.end, tzinfo=zone)
        if local_now < opens:
            return opens.astimezone(UTC).replace(tzinfo=None)
        if local_now < closes:
            return now
    raise AssertionError("a validated send window has at least one day")  # pragma: no cover
