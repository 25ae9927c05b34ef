"""Invariant 5: rate limits are never exceeded and never burn retries. Contending
processes never pass a window, and a send that finds no token waits the exact delay
without using one of its retries."""

from __future__ import annotations

import time
import uuid

import dramatiq
from dramatiq.middleware import CurrentMessage

from benchmarks.limiter import contend, max_in_window
from outreach_actors.worker.limiters import (
    Limit,
)
from tests.test_ratelimit import EnqueueRecorder, T, deferral_count

from ..conftest import REDIS_URL, require_redis, wait_until


def test_no_window_exceeds_the_limit_with_processes_and_threads_contending() -> None:
    # Given 3 processes x 4 threads taking 20 per second as fast as they are let,
    # each sleeping exactly the wait it is told
    require_redis()
    limit = Limit("sender", f"contended-{uuid.uuid4().hex}", 20, 1000)
    grants = contend(REDIS_URL, [limit], processes=3, threads=4, duration_s=3.5)
    # Then no window of one second, however placed, holds more than 20 grants
    # (the limiter's guarantee: at most `limit` in any [t, t + period)), ...
    assert max_in_window(grants, 1_000_000) == 20
    # ... and the limit was used: three whole windows full.
    assert len(grants) >= 60


def test_a_deferred_send_is_sent_once_the_window_opens_using_no_retry(any_broker, worker) -> None:
    recorder = EnqueueRecorder()
    any_broker.add_middleware(recorder)
    sent: list[tuple[int, float, int, int]] = []
    key = uuid.uuid4().hex

    # max_retries=0: a deferral that used a retry would dead-letter the message.
    @dramatiq.actor(broker=any_broker, queue_name="limited", max_retries=0,
                    rate_limits=lambda message: [Limit("sender", key, 1, 400)])
    def limited_send(n: int) -> None:
        options = CurrentMessage.get_current_message().options
        sent.append((n, time.time(), options.get("retries", 0), options.get("deferrals", 0)))

    any_broker.flush_all()
    before = deferral_count("sender")
    for n in range(3):
        limited_send.send(n)
    wait_until(lambda: len(sent) == 3)

    assert sorted(n for n, *_ in sent) == [0, 1, 2]
    # One send per 400 ms window (times taken just after each grant).
    times = [at for _, at, *_ in sent]
    assert all(later - earlier >= 0.38 for earlier, later in zip(times, times[1:], strict=False))
    # No retry used; the two later sends were deferred, each by at most the window.
    assert [retries for *_, retries, _ in sent] == [0, 0, 0]
    assert sorted(deferrals > 0 for *_, deferrals in sent) == [False, True, True]
    assert recorder.deferrals and all(0 < delay <= 400 for _, delay in recorder.deferrals)
    assert deferral_count("sender") - before == len(recorder.deferrals)


def test_refusals_are_not_counted(limiter) -> None:
    two_per_second = [Limit("sender", "s", 2, 1000)]
    assert limiter.acquire(two_per_second, T) == 0
    assert limiter.acquire(two_per_second, T + 10) == 0
    # Given many refused requests inside the window
    for dt in range(20, 1000, 20):
        assert limiter.acquire(two_per_second, T + dt) > 0
    # Then the window reopens exactly when the two grants leave it.
    assert limiter.acquire(two_per_second, T + 1000) == 0
    assert limiter.acquire(two_per_second, T + 1010) == 0
