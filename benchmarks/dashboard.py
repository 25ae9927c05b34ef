"""Benchmark of the dashboard: how long its pages take with 1,000,000 enrollments on
PostgreSQL (the issue's target: every page under 300 ms).

- dashboard_ms_1m: the slowest of its pages (plans, a plan with its graph and counts, a
  contact search, a timeline, failures, webhooks and inbound posts (with a state filter
  too), suppressions, senders),
  rendered in process (queries and templates; no HTTP), each the median of 5, with
  1,000,000 enrollments of one plan and their companions in a real account's
  proportions (2.2 visits, 1.5 emails with their HTML, 3.6 events each: the seeding of
  operator_queries.py, set-based) and 100,000 webhook deliveries and inbound posts,
  the counters' deltas not folded (the slower case).
- dashboard_plan_page_ms_1m: the plan page alone, all time (the page whose counts grow
  with the data; read from the counters the database keeps).
- dashboard_plan_period_ms_1m: the plan page for a chosen period (since a day; the
  seeded enrollments span a year, so the period holds 365 days of counts).
- funnel_partial_days_ms_1m: the plan page's counts (stats.funnel and
  stats.transition_counts) for 180 days that start and end within a day, as the
  Python API allows (the dashboard's periods are whole days): those two parts of a day
  are counted from their rows.
- The reference of each, measured in the same run: the same at 10,000 enrollments.
  With --quick the 1m figures are measured at 100,000 enrollments (their names keep
  the full size; the unit says the size measured).

Usage: python benchmarks/dashboard.py [--quick] [--json]
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from datetime import timedelta

import _common
import operator_queries

from outreach_actors.domain import stats
from outreach_actors.domain.store import models
from outreach_actors.domain.store.models import Contact, Plan, utcnow
from outreach_actors.settings import get_settings
from outreach_actors.web.dashboard import Dashboard, DashboardRequest
from outreach_actors.web.dashboard.access import csrf_token

NAMESPACE = "outreach-bench-dashboard"
SIZES = {False: (10_000, 1_000_000), True: (10_000, 100_000)}
NOMINAL_LARGE = 1_000_000


def median_ms(call: Callable[[], object], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def seed_deliveries(count: int) -> None:
    """``count`` webhook deliveries and as many Inbound Parse posts (one per ten
    enrollments), most processed, one in a thousand failed, bodies of about 1 kB."""
    sql = models.database_proxy.obj.execute_sql
    sql("""INSERT INTO webhook_delivery (provider, body, headers, status, error, attempts,
               received_at)
           SELECT 'sendgrid', convert_to(repeat(md5(g::text), 32), 'UTF8'), '{}',
               CASE WHEN g %% 1000 = 0 THEN 'failed' ELSE 'processed' END,
               CASE WHEN g %% 1000 = 0 THEN 'not JSON' END, 1,
               now() - g * interval '1 second'
           FROM generate_series(1, %s) g""", (count,))
    sql("""INSERT INTO inbound_post (body, headers, body_digest, status, kind, note, attempts,
               received_at)
           SELECT convert_to(repeat(md5(g::text), 32), 'UTF8'), '{}', md5('post' || g),
               CASE WHEN g %% 1000 = 0 THEN 'failed' ELSE 'processed' END,
               'replied', NULL, 1, now() - g * interval '1 second'
           FROM generate_series(1, %s) g""", (count,))
    sql("ANALYZE webhook_delivery")
    sql("ANALYZE inbound_post")


def page_times(dashboard: Dashboard) -> dict[str, float]:
    plan = Plan.get()
    contact = Contact.select().order_by(Contact.id.desc()).get()

    def page(method: str, path: str) -> Callable[[], object]:
        def render() -> None:
            reply = dashboard.handle(DashboardRequest(method, path.split("?")[0], query=dict(
                part.split("=") for part in path.partition("?")[2].split("&") if part)))
            if reply.status != 200:
                raise RuntimeError(f"{path} answered {reply.status}: {reply.body[:200]}")
        return render

    # A search is a POST (addresses stay out of URLs): its token is the one of the cookie.
    secret = "b" * 43
    token = csrf_token(dashboard.settings.secret_key, secret)

    def search() -> None:
        reply = dashboard.handle(DashboardRequest("POST", "/contacts", cookies={"outreach_csrf": secret},
                                                  form={"q": contact.email, "csrf_token": token}))
        if reply.status != 200 or f"/contacts/{contact.id}" not in reply.body:
            raise RuntimeError(f"the search did not find contact {contact.id}")

    pages = {
        "plans": page("GET", "/"), "plan": page("GET", f"/plans/{plan.id}"), "search": search,
        "timeline": page("GET", f"/contacts/{contact.id}"), "failures": page("GET", "/failures"),
        "failures_page_5": page("GET", "/failures?page=5"),
        "webhooks": page("GET", "/webhooks"), "inbound": page("GET", "/inbound"),
        "webhooks_failed": page("GET", "/webhooks?status=failed&page=3"),
        "inbound_failed": page("GET", "/inbound?status=failed&page=3"),
        "suppressions": page("GET", "/suppressions"), "senders": page("GET", "/senders"),
    }
    times = {name: median_ms(render) for name, render in pages.items()}
    period = median_ms(page("GET", f"/plans/{plan.id}?since=2000-01-01"), repeats=3)
    since = utcnow() - timedelta(days=200, hours=7, minutes=13)
    until = since + timedelta(days=180, hours=8)

    def partial_days() -> None:
        stats.funnel(plan_name=plan.name, tenant_id=plan.tenant_id, version=plan.version,
                     since=since, until=until)
        stats.transition_counts(plan.id, since=since, until=until)

    return {**times, "plan_period": period, "partial_days": median_ms(partial_days, repeats=3)}


def run(quick: bool, database_url: str = _common.DATABASE_URL,
        redis_url: str = _common.REDIS_URL) -> dict[str, dict]:
    small, large = SIZES[quick]
    _common.ensure_database(database_url)
    _common.install(_common.bench_environment(database_url, redis_url, NAMESPACE))
    database = _common.fresh_schema()
    measured: dict[int, dict[str, float]] = {}
    try:
        with database.connection_context():
            dashboard = Dashboard(get_settings(), enqueue_delivery=lambda delivery_id: None)
            for size in (small, large):
                operator_queries.seed_funnel(size)
                seed_deliveries(size // 10)
                measured[size] = page_times(dashboard)
    finally:
        database.close_all()
    pages_small, pages_large = measured[small], measured[large]
    print(f"pages at {large:,} (ms):", {name: round(ms, 1) for name, ms in pages_large.items()})
    print(f"pages at {small:,} (ms):", {name: round(ms, 1) for name, ms in pages_small.items()})
    at = "" if large == NOMINAL_LARGE else f" at {large:,}"
    shown = [name for name in pages_large if name not in ("plan_period", "partial_days")]
    slowest = max(shown, key=pages_large.get)
    return {
        "dashboard_ms_1m": _common.figure(
            round(pages_large[slowest], 1), f"ms{at} ({slowest}; reference at {small // 1000}k)",
            round(max(pages_small[name] for name in shown), 1)),
        "dashboard_plan_page_ms_1m": _common.figure(round(pages_large["plan"], 1), f"ms{at}",
                                                    round(pages_small["plan"], 1)),
        "dashboard_plan_period_ms_1m": _common.figure(round(pages_large["plan_period"], 1),
                                                      f"ms{at}", round(pages_small["plan_period"], 1)),
        "funnel_partial_days_ms_1m": _common.figure(round(pages_large["partial_days"], 1),
                                                    f"ms{at}", round(pages_small["partial_days"], 1)),
    }


def main() -> None:
    _common.command_line(run, __doc__, quick_help=f"{SIZES[True][1]:,} enrollments, not "
                                                  f"{SIZES[False][1]:,}")


if __name__ == "__main__":
    main()
