"""Daily caps, warm-up ramps and frequency caps: exact in the limiter's one atomic take, on
every backend and under contention, with a clock the tests move across days, time
zones and daylight-saving changes."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import redis

from benchmarks.limiter import contend, max_in_window
from outreach_actors.domain.sending_days import (
    daily_cap,
    parse_growth,
    sender_day,
    warmup_allowance,
)
from outreach_actors.settings import Settings
from outreach_actors.worker.limiters import (
    HOUR_MS,
    Limit,
    MemoryRateLimiter,
    RedisRateLimiter,
    default_limits,
)
from tests.test_ratelimit import limiter  # noqa: F401 (the fixture: memory, redis, embedded)

from .conftest import REDIS_URL, require_redis

PARIS = ZoneInfo("Europe/Paris")


def send_limits(now: datetime, *, sender_limits: dict | None = None,
                tenant_limits: dict | None = None, first_sent: datetime | None = None,
                recipient: str = "ada@example.com", frequency_capped: bool = True,
                settings: Settings | None = None) -> list[Limit]:
    return default_limits(
        settings or Settings(), tenant="acme", sender="sales@acme.test",
        recipient_domain="example.com", tenant_overrides=tenant_limits or {},
        sender_overrides=sender_limits or {}, recipient=recipient,
        frequency_capped=frequency_capped, first_sent=first_sent, now=now)


def ms(moment: datetime) -> int:
    return int(moment.replace(tzinfo=moment.tzinfo or UTC).timestamp() * 1000)


def day_limit(limits: list[Limit]) -> Limit:
    (found,) = [limit for limit in limits if limit.scope == "sender_day"]
    return found


def grants_until_refused(rate_limiter, now: datetime, **kwargs) -> tuple[int, int]:
    """Take a send's limits at ``now`` until refused: (grants, the refusal's wait ms).
    The other scopes are lifted so that the day is what binds."""
    granted = 0
    while True:
        limits = [limit for limit in send_limits(now, **kwargs)
                  if limit.scope in ("sender_day", "contact")]
        decision = rate_limiter.decide(limits, ms(now))
        if decision.wait_ms:
            return granted, decision.wait_ms
        granted += 1
        assert granted < 10_000


# --- the day ------------------------------------------------------------------------

def test_no_daily_cap_by_default_and_a_cap_adds_the_senders_day() -> None:
    now = datetime(2026, 12, 5, 15, 0)
    assert [limit.scope for limit in send_limits(now)] == [
        "sender", "sender", "tenant", "domain", "global"]
    limit = day_limit(send_limits(now, settings=Settings(ratelimit_sender_per_day=100)))
    assert (limit.key, limit.limit) == ("acme:sales@acme.test:2026-12-05", 100)
    assert limit.resets_at_ms == ms(datetime(2026, 12, 6))


def test_sender_beats_tenant_beats_setting_for_the_daily_cap() -> None:
    now = datetime(2026, 12, 5, 15, 0)
    settings = Settings(ratelimit_sender_per_day=100)
    assert day_limit(send_limits(now, settings=settings,
                                 tenant_limits={"sender_per_day": 50})).limit == 50
    assert day_limit(send_limits(now, settings=settings, tenant_limits={"sender_per_day": 50},
                                 sender_limits={"sender_per_day": 70})).limit == 70


def test_a_day_is_the_senders_calendar_day_in_its_time_zone() -> None:
    paris = {"sender_per_day": 10, "timezone": "Europe/Paris"}
    # 23:30 UTC on 5 December is already 6 December in Paris ...
    late = day_limit(send_limits(datetime(2026, 12, 5, 23, 30), sender_limits=paris))
    assert late.key.endswith(":2026-12-06")
    assert late.resets_at_ms == ms(datetime(2026, 12, 6, 23, 0))  # midnight in Paris
    # ... and in UTC, the default, still the 5th.
    assert day_limit(send_limits(datetime(2026, 12, 5, 23, 30),
                                 sender_limits={"sender_per_day": 10})).key.endswith(":2026-12-05")


@pytest.mark.parametrize(("day", "hours"), [(date(2026, 3, 29), 23), (date(2026, 10, 25), 25),
                                            (date(2026, 6, 1), 24)])
def test_dst_days_are_23_and_25_hours_long(day: date, hours: int) -> None:
    bounds = sender_day(datetime.combine(day, datetime.min.time()).replace(
        hour=12, tzinfo=PARIS), PARIS)
    assert bounds.day == day
    assert bounds.ends - bounds.starts == timedelta(hours=hours)
    limit = day_limit(send_limits(bounds.starts + timedelta(hours=1),
                                  sender_limits={"sender_per_day": 5, "timezone": "Europe/Paris"}))
    assert limit.period_ms == hours * HOUR_MS


def test_a_day_full_waits_exactly_until_the_next_day_of_the_sender(limiter) -> None:  # noqa: F811
    paris = {"sender_per_day": 3, "timezone": "Europe/Paris"}
    # 22:30 UTC on 28 March 2026 is 23:30 in Paris; the next day (DST) starts at 23:00 UTC.
    now = datetime(2026, 3, 28, 22, 30)
    granted, wait_ms = grants_until_refused(limiter, now, sender_limits=paris)
    assert granted == 3
    assert wait_ms == 30 * 60_000
    # A minute before midnight in Paris: still refused; at midnight: the new day's three.
    assert grants_until_refused(limiter, datetime(2026, 3, 28, 22, 59),
                                sender_limits=paris) == (0, 60_000)
    granted, wait_ms = grants_until_refused(limiter, datetime(2026, 3, 28, 23, 0),
                                            sender_limits=paris)
    # The 29th is 23 hours long in Paris: full until 22:00 UTC.
    assert (granted, wait_ms) == (3, 23 * HOUR_MS)


def test_a_day_is_counted_in_the_senders_zone_not_the_contacts(limiter) -> None:  # noqa: F811
    # Two contacts in zones a day apart; the sender's day (UTC) is one and the same.
    now = datetime(2026, 12, 5, 12, 0)
    assert grants_until_refused(limiter, now, sender_limits={"sender_per_day": 2},
                                recipient="tokyo@example.jp")[0] == 2
    assert grants_until_refused(limiter, now, sender_limits={"sender_per_day": 2},
                                recipient="honolulu@example.com")[0] == 0


# --- warm-up ------------------------------------------------------------------------

def test_warmup_growth_reads_percentages_and_fractions() -> None:
    assert parse_growth("15%") == pytest.approx(0.15)
    assert parse_growth("0.15") == pytest.approx(0.15)
    with pytest.raises(ValueError, match="not a percentage such as 15%"):
        parse_growth("fast")


def test_warmup_across_ten_virtual_days_grows_from_its_first_send_to_the_cap(
        limiter) -> None:  # noqa: F811
    # Given a sender capped at 50 a day, warming up from 20 by 15% a day
    sender = {"sender_per_day": 50, "warmup_start": 20, "warmup_growth": 0.15,
              "timezone": "America/New_York"}
    first_sent = datetime(2026, 11, 1, 14, 0)  # 09:00 in New York
    # When it sends all it may, at 15:00 UTC, on ten days in a row (a DST change on the 1st)
    sent = [grants_until_refused(limiter, first_sent + timedelta(days=day, hours=1),
                                 sender_limits=sender, first_sent=first_sent)[0]
            for day in range(10)]
    # Then day 1 allows 20, each later day 15% more, rounded down, until the cap.
    assert sent == [20, 23, 26, 30, 34, 40, 46, 50, 50, 50]
    assert sent == [min(50, warmup_allowance(20, 0.15, day)) for day in range(1, 11)]


def test_a_warmup_not_started_counts_today_as_its_first_day() -> None:
    today = sender_day(datetime(2026, 12, 5, 9), ZoneInfo("UTC"))
    assert daily_cap(None, {"warmup_start": 20, "warmup_growth": 0.5}, None, today) == 20
    assert daily_cap(None, {"warmup_start": 20, "warmup_growth": 0.5},
                     datetime(2026, 12, 3, 9), today) == 45
    # A ramp with no cap ends when it no longer limits anything.
    assert daily_cap(None, {"warmup_start": 20, "warmup_growth": 0.5},
                     datetime(2020, 1, 1), today) is None


@pytest.mark.parametrize(("sender_limits", "message"), [
    ({"warmup_start": 0}, "warm-up start must be a positive whole number"),
    ({"warmup_start": 20, "warmup_growth": -0.1}, "warm-up growth must be a fraction"),
    ({"warmup_growth": 0.1}, "no warm-up start"),
    ({"timezone": "Mars/Olympus"}, "not an IANA time zone"),
    ({"sender_per_day": 0}, "must be a positive whole number"),
])
def test_bad_warmups_are_refused_naming_the_sender(sender_limits: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as refused:
        send_limits(datetime(2026, 12, 5), sender_limits=sender_limits)
    assert "sales@acme.test" in str(refused.value)


# --- frequency caps -----------------------------------------------------------------

def test_frequency_caps_limit_each_contact_across_plans_unless_the_node_opts_out() -> None:
    caps = {"frequency_caps": [[1, "P2D"], [3, "P7D"]]}
    now = datetime(2026, 12, 5, 12)
    contact = [limit for limit in send_limits(now, tenant_limits=caps) if limit.scope == "contact"]
    assert contact == [Limit("contact", "acme:ada@example.com", 1, 2 * 24 * HOUR_MS),
                       Limit("contact", "acme:ada@example.com", 3, 7 * 24 * HOUR_MS)]
    assert not [limit for limit in send_limits(now, tenant_limits=caps, frequency_capped=False)
                if limit.scope == "contact"]


def test_frequency_caps_defer_and_never_count_a_refused_send(limiter) -> None:  # noqa: F811
    caps = {"frequency_caps": [[1, "P2D"], [3, "P7D"]]}
    start = datetime(2026, 12, 1, 9)
    # One email passes; a second within two days waits exactly until the two days are up.
    assert grants_until_refused(limiter, start, tenant_limits=caps) == (1, 2 * 24 * HOUR_MS)
    # Refused many times on the way, none counted: day 2, 4 and 6 each let one through,
    # then the week's three are used until the first leaves the week.
    for day in (2, 4):
        assert grants_until_refused(limiter, start + timedelta(days=day),
                                    tenant_limits=caps)[0] == 1
    granted, wait_ms = grants_until_refused(limiter, start + timedelta(days=6),
                                            tenant_limits=caps)
    assert (granted, wait_ms) == (0, 24 * HOUR_MS)
    # Another contact of the tenant is not held by it.
    assert grants_until_refused(limiter, start + timedelta(days=6), tenant_limits=caps,
                                recipient="bob@example.com")[0] == 1


@pytest.mark.parametrize(("caps", "message"), [
    ([[0, "P2D"]], "is not \\[count, ISO-8601 duration\\]"),
    ([[1, "two days"]], "not an ISO-8601 duration"),
    ([[1, "P1M"]], "years or months"),
    ("1/P2D", "must be a list"),
])
def test_bad_frequency_caps_are_refused_naming_the_tenant(caps, message: str) -> None:
    with pytest.raises(ValueError, match=message) as refused:
        send_limits(datetime(2026, 12, 5), tenant_limits={"frequency_caps": caps})
    assert "tenant 'acme'" in str(refused.value)


# --- under contention ---------------------------------------------------------------

def test_a_daily_cap_is_exact_with_processes_and_threads_contending() -> None:
    # Given 3 processes x 4 threads sending as fast as they are let, against a daily cap
    # of 60 (the day ends after the run) and a sliding limit of 25 per 400 ms
    require_redis()
    key = uuid.uuid4().hex
    resets_at_ms = int(datetime.now(UTC).timestamp() * 1000) + 60_000
    day = Limit("sender_day", f"acme:{key}:2026-12-05", 60, 24 * HOUR_MS,
                resets_at_ms=resets_at_ms)
    minute = Limit("sender", key, 25, 400)
    grants = contend(REDIS_URL, [day, minute], processes=3, threads=4, duration_s=2.0)
    # Then exactly the day's 60 went out (none beyond, none left unused) ...
    assert len(grants) == 60
    # ... and the sliding window held at the same time.
    assert max_in_window(grants, 400_000) <= 25


def test_a_frequency_cap_and_a_daily_cap_hold_across_threads_in_memory() -> None:
    memory = MemoryRateLimiter()
    now = datetime(2026, 12, 5, 12)
    granted: list[str] = []

    def send(recipient: str) -> None:
        limits = [limit for limit in send_limits(
            now, sender_limits={"sender_per_day": 7},
            tenant_limits={"frequency_caps": [[2, "P1D"]]}, recipient=recipient)
            if limit.scope in ("sender_day", "contact")]
        for _ in range(20):
            if memory.decide(limits, ms(now)).wait_ms == 0:
                granted.append(recipient)

    threads = [threading.Thread(target=send, args=(f"c{n % 5}@example.com",)) for n in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(granted) == 7
    assert max(granted.count(f"c{n}@example.com") for n in range(5)) <= 2


def test_a_frequency_cap_is_exact_with_processes_and_threads_contending() -> None:
    # Given 3 processes x 4 threads mailing one contact as fast as they are let, under a
    # frequency cap of 5 per 300 ms beside a roomy daily cap
    require_redis()
    key = uuid.uuid4().hex
    contact = Limit("contact", f"acme:{key}", 5, 300)
    resets_at_ms = int(datetime.now(UTC).timestamp() * 1000) + 60_000
    day = Limit("sender_day", f"acme:{key}:2026-12-05", 10_000, 24 * HOUR_MS,
                resets_at_ms=resets_at_ms)
    grants = contend(REDIS_URL, [contact, day], processes=3, threads=4, duration_s=1.6)
    # Then no window of 300 ms, however placed, holds more than 5, and the cap was used:
    # five whole windows full (at least 98% of them).
    assert max_in_window(grants, 300_000) == 5
    first = grants[0]
    in_five_windows = len([g for g in grants if g < first + 5 * 300_000])
    assert in_five_windows >= 0.98 * 25


def test_a_days_redis_key_expires_when_its_day_ends() -> None:
    require_redis()
    client = redis.Redis.from_url(REDIS_URL)
    redis_limiter = RedisRateLimiter(client, prefix=f"test:{uuid.uuid4().hex}:")
    ends_ms = int(datetime.now(UTC).timestamp() * 1000) + 5_000
    day = Limit("sender_day", "acme:s:2026-12-05", 3, 24 * HOUR_MS, resets_at_ms=ends_ms)
    assert redis_limiter.acquire([day]) == 0
    assert redis_limiter.acquire([day]) == 0  # a later grant leaves the expiry where it was
    ttl = client.pttl(redis_limiter.prefix + day.state_key)
    assert 3_000 < ttl <= 5_000
    client.delete(redis_limiter.prefix + day.state_key)
