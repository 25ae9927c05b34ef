"""Benchmark of the Redis rate limiter: overshoot and utilization under contention, cost of one acquire.

Several processes, each with several threads, ask for the same small limit as fast
as the limiter lets them, sleeping exactly the wait it answers. The grant times
(the limiter's own clock) then give:

- limiter_overshoot: the most grants in any window of one period, however placed,
  beyond the limit (must be 0);
- limiter_utilization: the grants in the first ``windows`` whole periods after the
  first grant, over ``windows * limit`` (target at least 98%).

Then, uncontended: the median cost of one acquire of the five scopes of a send,
and of the eight with the sending policy (the sender's day, two frequency caps),
beside the median cost of a Redis PING on the same connection.

Usage: python benchmarks/limiter.py [--quick] [--json] [--redis-url URL]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import threading
import time
import uuid
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from outreach_actors.worker.limiters import HOUR_MS, Limit, RedisRateLimiter

DEFAULT_REDIS_URL = os.environ.get("OUTREACH_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@dataclass(frozen=True)
class Contention:
    processes: int
    threads: int
    limit: int
    period_ms: int
    windows: int

    @property
    def duration_s(self) -> float:
        # Half a period more, so that the last whole window is fully inside the run.
        return (self.windows + 0.5) * self.period_ms / 1000


FULL = Contention(processes=4, threads=8, limit=50, period_ms=1000, windows=5)
QUICK = Contention(processes=2, threads=4, limit=20, period_ms=500, windows=4)


def _hammer(redis_url: str, prefix: str, limits: list[Limit], threads: int,
            duration_s: float, barrier, results) -> None:
    """One process: ``threads`` threads taking ``limits`` until the run ends."""
    limiter = RedisRateLimiter(redis.Redis.from_url(redis_url), prefix=prefix)
    grants: list[int] = []
    barrier.wait()
    stop = time.monotonic() + duration_s

    def take() -> None:
        while (remaining := stop - time.monotonic()) > 0:
            decision = limiter.decide(limits)
            if decision.wait_ms == 0:
                grants.append(decision.clock_us)
            else:
                time.sleep(min(decision.wait_ms / 1000, remaining))

    workers = [threading.Thread(target=take) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    results.put(grants)


def contend(redis_url: str, limits: Sequence[Limit], *, processes: int, threads: int,
            duration_s: float) -> list[int]:
    """Grant times (limiter clock, µs, sorted) of ``processes`` x ``threads`` takers."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(processes)
    results = context.Queue()
    prefix = f"bench:{uuid.uuid4().hex}:"
    children = [
        context.Process(
            target=_hammer,
            args=(redis_url, prefix, list(limits), threads, duration_s, barrier, results),
        )
        for _ in range(processes)
    ]
    for child in children:
        child.start()
    try:
        grants = [time_us for _ in children for time_us in results.get(timeout=duration_s + 60)]
    finally:
        for child in children:
            child.join(timeout=10)
            child.kill()
    return sorted(grants)


def max_in_window(times_us: Sequence[int], period_us: int) -> int:
    """The most grants in any window [t, t + period): a window holding the most
    grants can always be moved to start at one of them."""
    return max(
        (bisect_left(times_us, start + period_us) - index for index, start in enumerate(times_us)),
        default=0,
    )


def measure_contention(redis_url: str, run: Contention) -> dict[str, float]:
    binding = Limit("sender", "bench", run.limit, run.period_ms)
    # A second, looser scope on every request, as a send always takes several.
    loose = Limit("global", "bench", run.limit * 10, run.period_ms)
    times = contend(redis_url, [binding, loose], processes=run.processes,
                    threads=run.threads, duration_s=run.duration_s)
    period_us = run.period_ms * 1000
    overshoot = max(
        max(0, max_in_window(times, period_us) - limit.limit) for limit in (binding, loose)
    )
    end = times[0] + run.windows * period_us if times else 0
    in_whole_windows = bisect_left(times, end)
    return {
        "overshoot": overshoot,
        "utilization": in_whole_windows / (run.windows * run.limit),
    }


def _median_us(call, count: int) -> float:
    samples = []
    for _ in range(count):
        start = time.perf_counter_ns()
        call()
        samples.append(time.perf_counter_ns() - start)
    return statistics.median(samples) / 1000


def measure_cost(redis_url: str, count: int) -> dict[str, float]:
    client = redis.Redis.from_url(redis_url)
    prefix = f"bench:{uuid.uuid4().hex}:"
    limiter = RedisRateLimiter(client, prefix=prefix)
    # The five scopes of a send, with room to spare: the granted path, which writes.
    limits = [
        Limit("sender", "acme:sales@acme.com", 1_000_000, 60_000),
        Limit("sender", "acme:sales@acme.com", 1_000_000, HOUR_MS),
        Limit("tenant", "acme", 1_000_000, HOUR_MS),
        Limit("domain", "acme:example.com", 1_000_000, HOUR_MS),
        Limit("global", "all", 1_000_000, HOUR_MS),
    ]
    # And with the sending policy: the sender's day (a calendar window) and the
    # tenant's two frequency caps on the recipient.
    day_ends_ms = int(time.time() * 1000) + 24 * HOUR_MS
    policy = [*limits,
              Limit("sender_day", "acme:sales@acme.com:2026-12-05", 1_000_000, 24 * HOUR_MS,
                    resets_at_ms=day_ends_ms),
              Limit("contact", "acme:ada@example.com", 1_000_000, 2 * 24 * HOUR_MS),
              Limit("contact", "acme:ada@example.com", 1_000_000, 7 * 24 * HOUR_MS)]
    try:
        limiter.acquire(limits)  # loads the script
        acquire_us = _median_us(lambda: limiter.acquire(limits), count)
        policy_us = _median_us(lambda: limiter.acquire(policy), count)
        roundtrip_us = _median_us(client.ping, count)
    finally:
        client.delete(*[prefix + limit.state_key for limit in policy])
    return {"acquire_us": acquire_us, "acquire_policy_us": policy_us,
            "redis_roundtrip_us": roundtrip_us}


def run(quick: bool, redis_url: str = DEFAULT_REDIS_URL) -> dict[str, dict]:
    """Every figure as {"value", "unit", "reference", "ratio"}."""
    contention = measure_contention(redis_url, QUICK if quick else FULL)
    cost = measure_cost(redis_url, 500 if quick else 5000)
    utilization_target = 0.98
    return {
        "limiter_overshoot": {
            "value": contention["overshoot"], "unit": "grants", "reference": 0, "ratio": None,
        },
        "limiter_utilization": {
            "value": round(contention["utilization"], 4), "unit": "fraction",
            "reference": utilization_target,
            "ratio": round(contention["utilization"] / utilization_target, 4),
        },
        "acquire_us": {
            "value": round(cost["acquire_us"], 1), "unit": "µs",
            "reference": round(cost["redis_roundtrip_us"], 1),
            "ratio": round(cost["acquire_us"] / cost["redis_roundtrip_us"], 2),
        },
        # Target: at most 4 round trips' worth (issue: sending policy).
        "acquire_with_policy_us": {
            "value": round(cost["acquire_policy_us"], 1), "unit": "µs",
            "reference": round(cost["redis_roundtrip_us"], 1),
            "ratio": round(cost["acquire_policy_us"] / cost["redis_roundtrip_us"], 2),
        },
        "redis_roundtrip_us": {
            "value": round(cost["redis_roundtrip_us"], 1), "unit": "µs",
            "reference": None, "ratio": None,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a shorter, smaller run")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL)
    options = parser.parse_args()
    figures = run(options.quick, options.redis_url)
    if options.json:
        print(json.dumps(figures))
        return
    setup = QUICK if options.quick else FULL
    print(f"contention: {setup.processes} processes x {setup.threads} threads, "
          f"{setup.limit} per {setup.period_ms} ms, {setup.windows} windows")
    print(f"limiter_overshoot    {figures['limiter_overshoot']['value']} grants (must be 0)")
    print(f"limiter_utilization  {figures['limiter_utilization']['value']:.2%} of the binding "
          f"limit (target {figures['limiter_utilization']['reference']:.0%})")
    print(f"acquire_us           {figures['acquire_us']['value']} µs (five scopes, granted)")
    print(f"redis_roundtrip_us   {figures['redis_roundtrip_us']['value']} µs (PING)")
    print(f"acquire / round trip {figures['acquire_us']['ratio']}x")
    print(f"acquire_with_policy  {figures['acquire_with_policy_us']['value']} µs (eight scopes: "
          f"with the sender's day and two frequency caps; "
          f"{figures['acquire_with_policy_us']['ratio']}x a round trip, target at most 4x)")


if __name__ == "__main__":
    main()
