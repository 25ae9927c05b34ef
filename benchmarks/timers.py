"""Benchmark of timers at scale: a million pending timers cost the broker and the workers nothing.

Timers are ScheduledAction rows in PostgreSQL; the broker only sees those due
within the dispatch horizon (a minute). ``dramatiq outreach_actors`` workers
(2 processes x 8 threads) run the real dispatcher: this process plays periodiq,
sending ``dispatch_due`` once a minute, which repeats every dispatch interval
(5 s, the default).

1. Reference, empty database: M timers due now are dispatched from this process
   before the workers start (timed: the dispatcher's cost per due timer) and then
   fired by them; the tables are emptied and the largest worker's RSS and Redis
   ``used_memory`` are read.
2. P pending timers (1,000,000; 100,000 with --quick), no_open/no_click timeouts
   spread over seven days, are bulk-inserted; after a dispatcher run over them
   ``used_memory`` is read again: broker_bytes_per_pending_timer is the growth
   over P (reference 0). The broker is a Redis server of the benchmark's own (the
   embedded one) unless --redis-url names another: used_memory is server-wide.
3. A burst of K timers due within a short window, a few seconds ahead, is left to
   the workers' own dispatcher: timer_lateness_p99_s is the 99th percentile of
   ``fired_at - run_at`` (target under 1 s). Then worker_rss_mib_1m_timers, the
   largest worker's RSS, beside the reference RSS.
4. The workers stopped, M more timers due now are dispatched over the P pending:
   dispatch_us_per_timer beside the empty-table reference.

Usage: python benchmarks/timers.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import _common
import redis

from outreach_actors.domain import dispatch
from outreach_actors.domain.plans import validate_plan
from outreach_actors.domain.store import models
from outreach_actors.domain.store.models import ScheduledAction, utcnow
from outreach_actors.worker.actors.mail import enqueue_actions
from outreach_actors.worker.actors.periodic import dispatch_due
from outreach_actors.worker.embedded import ensure_embedded_redis, stop_embedded_redis

NAMESPACE = "outreach-bench-timers"
LATENESS_TARGET_S = 1.0
INSERT_BATCH = 10_000
# Pending timers per enrollment: a million contacts are not needed to hold a million timers.
TIMERS_PER_ENROLLMENT = 100
PLAN = """
name: reminders
start: intro
nodes:
  intro:
    type: email
    subject: "Hello"
    body: "<p>Hello</p>"
    transitions:
      - {on: no_open, after: P3D, to: stop}
      - {on: no_click, after: P7D, to: stop}
  stop: {type: exit}
"""


@dataclass(frozen=True)
class Size:
    pending: int
    burst: int
    burst_window_s: float
    due_now: int


FULL = Size(pending=1_000_000, burst=3000, burst_window_s=30.0, due_now=3000)
QUICK = Size(pending=100_000, burst=1000, burst_window_s=10.0, due_now=500)


class PeriodiqTicker:
    """Sends ``dispatch_due`` every minute, as ``periodiq outreach_actors`` would."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ticker", daemon=True)

    def _run(self) -> None:
        while True:
            dispatch_due.send()
            if self._stop.wait(60):
                return

    def __enter__(self) -> PeriodiqTicker:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()


def seed_pending_timers(plan: models.Plan, count: int) -> None:
    """``count`` pending timeouts spread over seven days from an hour ahead, bulk-inserted."""
    enrollment_count = max(1, count // TIMERS_PER_ENROLLMENT)
    emails = [f"waiting-{n}@example.com" for n in range(enrollment_count)]
    models.Contact.insert_many([(_common.TENANT, email) for email in emails],
                               fields=[models.Contact.tenant, models.Contact.email]).execute()
    contacts = [c for (c,) in models.Contact.select(models.Contact.id)
                .where(models.Contact.email.in_(emails)).tuples()]
    models.Enrollment.insert_many(
        [(_common.TENANT, plan.id, contact, f"waiting:{contact}", "intro") for contact in contacts],
        fields=[models.Enrollment.tenant, models.Enrollment.plan, models.Enrollment.contact,
                models.Enrollment.enrollment_key, models.Enrollment.current_node],
    ).execute()
    enrollments = [e for (e,) in models.Enrollment.select(models.Enrollment.id)
                   .where(models.Enrollment.enrollment_key.startswith("waiting:")).tuples()]
    start = utcnow() + timedelta(hours=1)
    step_s = 7 * 86_400 / count
    fields = [ScheduledAction.enrollment, ScheduledAction.node, ScheduledAction.kind,
              ScheduledAction.event, ScheduledAction.dedupe_key, ScheduledAction.run_at]
    for first in range(0, count, INSERT_BATCH):
        rows = [
            (enrollments[n % len(enrollments)], "intro", ScheduledAction.TIMEOUT,
             "no_open" if n % 2 else "no_click", f"pending:{n}",
             start + timedelta(seconds=n * step_s))
            for n in range(first, min(first + INSERT_BATCH, count))
        ]
        with models.database_proxy.atomic():
            ScheduledAction.insert_many(rows, fields=fields).execute()


def timed_dispatch() -> float:
    """Dispatch what is due from this process; µs per timer dispatched.

    Called while no worker consumes: on two cores the workers firing the first
    timers would otherwise take the CPU from the dispatcher being timed.
    """
    started = time.perf_counter()
    dispatched = dispatch.dispatch_due_actions(enqueue_actions)
    elapsed = time.perf_counter() - started
    if dispatched == 0:
        raise RuntimeError("nothing was due; nothing was timed")
    return elapsed / dispatched * 1e6


def burst_lateness(plan: models.Plan, size: Size, lead_s: float) -> list[float]:
    """Lateness (s) of each timer of a burst due from ``lead_s`` ahead over the window."""
    first = utcnow() + timedelta(seconds=lead_s)
    run_ats = [first + timedelta(seconds=size.burst_window_s * n / size.burst)
               for n in range(size.burst)]
    timers = _common.seed_sent_messages(plan, "burst", run_ats)
    _common.wait_until(lambda: _common.finished(timers) >= size.burst,
                       timeout_s=lead_s + size.burst_window_s + 300,
                       what=f"{size.burst} burst timers fired", interval_s=0.2)
    rows = (ScheduledAction.select(ScheduledAction.run_at, ScheduledAction.fired_at)
            .where(ScheduledAction.id.between(min(timers), max(timers))))
    return sorted((row.fired_at - row.run_at).total_seconds() for row in rows)


def percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[max(0, math.ceil(fraction * len(sorted_values)) - 1)]


def broker_memory(client: redis.Redis) -> dict[str, int]:
    """Redis's whole memory, the part its data takes, and what this benchmark's keys take.

    ``used_memory`` also counts client buffers, which grow and shrink with traffic
    by tens of kilobytes; ``used_memory_dataset`` leaves them out.
    """
    info = client.info("memory")
    return {"used_memory": int(info["used_memory"]),
            "dataset": int(info["used_memory_dataset"]), "own_keys": namespace_bytes(client)}


def namespace_bytes(client: redis.Redis) -> int:
    """What this benchmark's own keys take in Redis (immune to other clients)."""
    return sum(client.memory_usage(key) or 0
               for key in client.scan_iter(match=f"{NAMESPACE}*", count=1000))


def measure(quick: bool, database_url: str = _common.DATABASE_URL,
            redis_url: str | None = None) -> tuple[dict[str, dict], dict[str, float]]:
    """The figures, and the details behind them for the text report.

    Without ``redis_url`` the broker is a Redis server of this benchmark's own (the
    embedded one the package starts by default): ``used_memory`` counts the whole
    server, and on a shared one other clients' traffic outweighs what is measured.
    """
    if redis_url is None:
        data_dir = _common.data_dir_for(NAMESPACE)
        try:
            return measure(quick, database_url, ensure_embedded_redis(data_dir).url)
        finally:
            stop_embedded_redis(data_dir)
    size = QUICK if quick else FULL
    _common.ensure_database(database_url)
    client = redis.Redis.from_url(redis_url)
    _common.clear_redis(client, f"{NAMESPACE}*")
    environment = _common.bench_environment(database_url, redis_url, NAMESPACE)
    settings = _common.install(environment)
    database = _common.fresh_schema()
    details: dict[str, float] = {}
    try:
        with database.connection_context():
            plan = _common.seed_tenant(validate_plan(PLAN).to_definition())
            # 1. Reference, an empty database: dispatch cost, then warm workers' memory.
            warm_up = _common.seed_sent_messages(plan, "reference", [utcnow()] * size.due_now)
            dispatch_empty_us = timed_dispatch()
            with _common.Workers(environment) as workers, PeriodiqTicker():
                _common.wait_until(lambda: _common.finished(warm_up) >= size.due_now,
                                   timeout_s=300, what="the first timers fired", interval_s=0.05)
                _common.truncate_all()
                _common.clear_redis(client, f"{NAMESPACE}:idempotency:*")
                plan = _common.seed_tenant(validate_plan(PLAN).to_definition())
                time.sleep(1)
                rss_empty = workers.rss_mib()
                memory_empty = broker_memory(client)

                # 2. The pending timers, and a dispatcher run over them.
                started = time.perf_counter()
                seed_pending_timers(plan, size.pending)
                details["insert_s"] = time.perf_counter() - started
                # The steady state: autovacuum analyzes a table that grew this much within
                # a minute or so. Until it does, the planner takes the table for empty and
                # the dispatcher's claim scans every pending row (seconds per batch).
                database.execute_sql("ANALYZE scheduled_action")
                started = time.perf_counter()
                dispatch.dispatch_due_actions(enqueue_actions)
                details["idle_dispatch_ms"] = (time.perf_counter() - started) * 1000
                memory_pending = broker_memory(client)

                # 3. A burst coming due, dispatched by the workers' own dispatcher.
                lead_s = settings.dispatch_interval.total_seconds() + 3
                lateness = burst_lateness(plan, size, lead_s)
                time.sleep(1)
                rss_pending = workers.rss_mib()

            # 4. Dispatch cost over the pending timers, the workers stopped again.
            _common.seed_sent_messages(plan, "loaded", [utcnow()] * size.due_now)
            dispatch_pending_us = timed_dispatch()
            still_pending = ScheduledAction.select().where(
                ScheduledAction.status == ScheduledAction.PENDING).count()
            if still_pending != size.pending:
                raise RuntimeError(f"{still_pending} timers pending, expected {size.pending}")
            _common.truncate_all()
    finally:
        database.close_all()
        _common.clear_redis(client, f"{NAMESPACE}*")
    p99 = percentile(lateness, 0.99)
    details.update(
        pending=size.pending, burst=size.burst, burst_window_s=size.burst_window_s,
        lateness_p50_s=percentile(lateness, 0.5), lateness_max_s=lateness[-1],
        **{f"{part}_bytes_per_pending_timer": (memory_pending[part] - memory_empty[part])
           / size.pending for part in ("dataset", "own_keys")},
    )
    figures = {
        "timer_lateness_p99_s": _common.figure(round(p99, 3), "s", LATENESS_TARGET_S),
        "broker_bytes_per_pending_timer": _common.figure(
            # + 0.0: a growth that rounds to nothing shows as 0.0, not -0.0
            round((memory_pending["used_memory"] - memory_empty["used_memory"]) / size.pending, 3)
            + 0.0, "B", 0),
        "worker_rss_mib_1m_timers": _common.figure(
            round(rss_pending, 1), "MiB", round(rss_empty, 1)),
        "dispatch_us_per_timer": _common.figure(
            round(dispatch_pending_us, 1), "µs", round(dispatch_empty_us, 1)),
    }
    # + 0.0 turns a rounded -0.0 into 0.0.
    return figures, {key: round(value, 3) + 0.0 for key, value in details.items()}


def run(quick: bool) -> dict[str, dict]:
    """Every figure as {"value", "unit", "reference", "ratio"}."""
    return measure(quick)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 pending timers")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--database-url", default=_common.DATABASE_URL)
    parser.add_argument("--redis-url", help="a Redis server to use as the broker "
                        "(default: a private one, see measure())")
    options = parser.parse_args()
    figures, details = measure(options.quick, options.database_url, options.redis_url)
    if options.json:
        print(json.dumps(figures))
        return
    lateness, broker, rss, cost = (figures[name] for name in (
        "timer_lateness_p99_s", "broker_bytes_per_pending_timer", "worker_rss_mib_1m_timers",
        "dispatch_us_per_timer"))
    print(f"{details['pending']:,} pending timers inserted in {details['insert_s']:.1f}s; "
          f"a dispatcher run over them took {details['idle_dispatch_ms']:.1f} ms")
    print(f"timer_lateness_p99_s           {lateness['value']} s over {details['burst']} timers "
          f"due within {details['burst_window_s']:.0f} s (p50 {details['lateness_p50_s']} s, "
          f"max {details['lateness_max_s']} s; target < {LATENESS_TARGET_S} s)")
    print(f"broker_bytes_per_pending_timer {broker['value']} B (Redis used_memory growth; "
          f"used_memory_dataset: {details['dataset_bytes_per_pending_timer']} B; "
          f"this benchmark's keys: {details['own_keys_bytes_per_pending_timer']} B)")
    print(f"worker_rss_mib_1m_timers       {rss['value']} MiB (idle worker, empty database: "
          f"{rss['reference']} MiB)")
    print(f"dispatch_us_per_timer          {cost['value']} µs (empty table: "
          f"{cost['reference']} µs)")


if __name__ == "__main__":
    main()
