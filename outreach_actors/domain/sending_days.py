"""A sender identity's day: its daily cap, its warm-up ramp, and where its day begins and ends.

A "day" of a daily cap is the calendar day in the sender identity's own time zone
(``timezone`` in its rate limits, default UTC): a mailbox provider sees a mailbox's
volume per day wherever its recipients are. A DST day is 23 or 25 hours long, and the
cap holds for that day as a whole. Which day it is comes from the worker's clock (the
date is part of the limiter's key); the waits within it from the limiter's (Redis's).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from outreach_actors.domain.plans import iana_zone

#: The keys of a sender identity's rate limits that describe its day, not an override.
SENDER_DAY_KEYS = frozenset({"warmup_start", "warmup_growth", "timezone"})
#: The most a warm-up allows in a day when no daily cap ends it (a ramp past this is over).
WARMUP_CEILING = 10**9


@dataclass(frozen=True)
class SenderDay:
    """One calendar day of a sender in its zone: its date and its bounds (aware, UTC)."""

    day: date
    starts: datetime
    ends: datetime


def sender_zone(sender_limits: Mapping | None) -> ZoneInfo:
    """The sender identity's time zone (its rate limits' ``timezone``), else UTC."""
    zone = iana_zone((sender_limits or {}).get("timezone"))
    return zone if zone is not None else ZoneInfo("UTC")


def sender_day(now: datetime, zone: ZoneInfo) -> SenderDay:
    """The calendar day in ``zone`` holding ``now`` (naive UTC or aware)."""
    aware = now if now.tzinfo else now.replace(tzinfo=UTC)
    day = aware.astimezone(zone).date()
    starts = datetime.combine(day, datetime.min.time(), tzinfo=zone).astimezone(UTC)
    ends = datetime.combine(day + timedelta(days=1), datetime.min.time(),
                            tzinfo=zone).astimezone(UTC)
    return SenderDay(day, starts, ends)


def warmup_allowance(start: int, growth: float, day_number: int) -> int:
    """What a warm-up allows on its ``day_number``-th day (1 is the first): ``start``,
    then ``growth`` (0.15 for 15%) more each day, rounded down."""
    days_grown = max(0, day_number - 1)
    if growth <= 0:
        return start
    if days_grown * math.log1p(growth) >= math.log(WARMUP_CEILING / start):
        return WARMUP_CEILING
    return int(start * (1 + growth) ** days_grown + 1e-9)  # 20 * 1.15 is 23, not 22.999


def daily_cap(cap: int | None, sender_limits: Mapping | None, first_sent: datetime | None,
              today: SenderDay) -> int | None:
    """The sender's allowance for ``today``: its daily cap, lowered by its warm-up
    (counted from ``first_sent``, its first send; today when it has sent nothing yet).
    None: no daily limit."""
    sender_limits = sender_limits or {}
    start = sender_limits.get("warmup_start")
    if not start:
        return cap
    first_day = sender_day(first_sent, sender_zone(sender_limits)).day if first_sent else today.day
    allowed = warmup_allowance(start, float(sender_limits.get("warmup_growth") or 0),
                               (today.day - first_day).days + 1)
    if cap is not None:
        allowed = min(allowed, cap)
    return None if allowed >= WARMUP_CEILING else allowed


def check_sender_day(sender_limits: Mapping, *, owner: str) -> None:
    """Refuse a bad warm-up or time zone, naming ``owner`` and the fix."""
    start = sender_limits.get("warmup_start")
    growth = sender_limits.get("warmup_growth")
    zone = sender_limits.get("timezone")
    if start is not None and (isinstance(start, bool) or not isinstance(start, int) or start < 1):
        raise ValueError(f"{owner} warm-up start must be a positive whole number, got {start!r}")
    if growth is not None and (isinstance(growth, bool) or not isinstance(growth, int | float)
                               or not 0 <= growth <= 10):
        raise ValueError(f"{owner} warm-up growth must be a fraction from 0 to 10 (0.15 for 15%),"
                         f" got {growth!r}")
    if growth is not None and start is None:
        raise ValueError(f"{owner} has a warm-up growth but no warm-up start; set --warmup-start")
    if zone is not None and iana_zone(zone) is None:
        raise ValueError(f"{owner} time zone {zone!r} is not an IANA time zone such as "
                         "Europe/Paris")


def parse_growth(text: str) -> float:
    """``15%`` or ``0.15`` as 0.15; a clear error otherwise."""
    value = text.strip()
    try:
        return float(value[:-1]) / 100 if value.endswith("%") else float(value)
    except ValueError:
        raise ValueError(f"warm-up growth {text!r} is not a percentage such as 15%") from None
