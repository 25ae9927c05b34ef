"""Send windows in the contact's time zone: weekends and daylight saving."""

from __future__ import annotations

from datetime import datetime, time

from outreach_actors.domain.plans import SendWindow
from outreach_actors.domain.windows import next_send_time

WORKDAYS = SendWindow(days=["mon", "tue", "wed", "thu", "fri"], start=time(9), end=time(17))


def test_no_window_means_now() -> None:
    now = datetime(2026, 3, 7, 3, 0)
    assert next_send_time(now, None, "Europe/Paris") == now


def test_inside_the_window_sends_now() -> None:
    now = datetime(2026, 3, 4, 10, 0)  # Wednesday 11:00 in Paris
    assert next_send_time(now, WORKDAYS, "Europe/Paris") == now


def test_friday_evening_waits_for_monday_morning_local_time() -> None:
    now = datetime(2026, 3, 6, 18, 0)  # Friday 19:00 in Paris
    assert next_send_time(now, WORKDAYS, "Europe/Paris") == datetime(2026, 3, 9, 8, 0)  # Mon 09:00 CET


def test_nine_am_stays_nine_am_across_the_dst_change() -> None:
    # Given New York moves to daylight time on Sunday 2026-03-08
    before = next_send_time(datetime(2026, 3, 6, 23, 0), WORKDAYS, "America/New_York")
    assert before == datetime(2026, 3, 9, 13, 0)  # Monday 09:00 EDT is 13:00 UTC
    friday = next_send_time(datetime(2026, 3, 5, 23, 0), WORKDAYS, "America/New_York")
    assert friday == datetime(2026, 3, 6, 14, 0)  # Friday 09:00 EST is 14:00 UTC


def test_contact_without_zone_uses_the_window_zone_and_bad_zone_falls_back() -> None:
    window = SendWindow(start=time(9), end=time(17), timezone="Asia/Tokyo")
    now = datetime(2026, 3, 4, 10, 0)  # 19:00 in Tokyo
    assert next_send_time(now, window, None) == datetime(2026, 3, 5, 0, 0)
    assert next_send_time(now, window, "Not/AZone") == datetime(2026, 3, 5, 0, 0)
