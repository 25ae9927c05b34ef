"""Benchmark of the dashboard: how long its pages take as the data grows, on PostgreSQL.

- dashboard_slowest_page_ms: the slowest of its pages (plans, a plan with its graph and
  counts, a contact search, a timeline, failures, webhooks, suppressions, senders),
  rendered in process (queries and templates; no HTTP), each the median of 5, with
  LARGE enrollments (200,000; 20,000 with --quick), each sent an email, a third of
  them opened and a tenth clicked. Target (the issue's): 300 ms.
- dashboard_plan_page_ms: the plan page alone (its counts read every visit, message and
  event of the plan: the page that grows with the data).
- stats_funnel_ms: ``outreach stats``'s funnel, which the plan page shows.
- The reference of each, measured in the same run: the same at SMALL enrollments
  (10,000; 2,000 with --quick), so the ratio says how the time grows with the data.

Usage: python benchmarks/dashboard.py [--quick] [--json]
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import _common

from outreach_actors.domain import stats
from outreach_actors.domain.plans import validate_plan
from outreach_actors.domain.store.models import (
    Contact,
    Enrollment,
    MessageEvent,
    NodeVisit,
    Plan,
    insert_rows,
    utcnow,
)
from outreach_actors.settings import get_settings
from outreach_actors.web.dashboard import Dashboard, DashboardRequest

NAMESPACE = "outreach-bench-dashboard"
SIZES = {False: (10_000, 200_000), True: (2_000, 20_000)}
# Rows a seeding statement carries: 12 columns of a message each, under PostgreSQL's
# 65,535 parameters a statement.
CHUNK = 5_000
PLAN = """
name: dashboard
start: intro
nodes:
  intro:
    type: email
    subject: "Hello"
    body: "<p>Hello {{ unsubscribe_url }}</p>"
    transitions:
      - {on: click, to: thanks}
      - {on: no_open, after: P3D, to: bump}
  bump:
    type: email
    subject: "Again"
    body: "<p>Again {{ unsubscribe_url }}</p>"
    transitions:
      - {on: no_click, after: P1D, to: stop}
  thanks: {type: exit}
  stop: {type: exit}
"""


def grow(plan: Plan, start: int, stop: int) -> None:
    """Enrollments start..stop: each sent intro, a third opened, a tenth clicked."""
    now = utcnow()
    for low in range(start, stop, CHUNK):
        high = min(stop, low + CHUNK)
        prefix = f"c{low}"
        _common.seed_sent_messages(plan, prefix, [now] * (high - low))
        messages = (Enrollment.select(Enrollment.id, Contact.email).join(Contact)
                    .where(Contact.email.startswith(prefix + "-")).tuples())
        visits, events = [], []
        for enrollment_id, email in messages:
            n = int(email.split("-", 1)[1].split("@")[0])
            message_id = f"msg_{prefix}_{n}"
            visits.append({"enrollment": enrollment_id, "node": "intro", "entered_at": now,
                           "version": 0})
            for event, every in (("opened", 3), ("clicked", 10)):
                if n % every == 0:
                    events.append({"message": message_id, "tenant": _common.TENANT, "type": event,
                                   "event_key": f"{event}:{message_id}", "email": email,
                                   "occurred_at": now, "data": {}})
        insert_rows(NodeVisit, visits)
        insert_rows(MessageEvent, events)
    _common.models.database_proxy.obj.execute_sql("ANALYZE")


def median_ms(call: Callable[[], object], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def page_times(dashboard: Dashboard, plan: Plan) -> dict[str, float]:
    contact = Contact.select().order_by(Contact.id.desc()).get()

    def page(method: str, path: str, **form: str) -> Callable[[], object]:
        def render() -> None:
            reply = dashboard.handle(DashboardRequest(method, path, form=form))
            if reply.status != 200:
                raise RuntimeError(f"{path} answered {reply.status}: {reply.body[:200]}")
        return render

    # A search is a POST (addresses stay out of URLs): its token is the one of the cookie.
    from outreach_actors.web.dashboard.access import csrf_token

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
        "webhooks": page("GET", "/webhooks"), "suppressions": page("GET", "/suppressions"),
        "senders": page("GET", "/senders"),
    }
    return {name: median_ms(render) for name, render in pages.items()}


def run(quick: bool, database_url: str = _common.DATABASE_URL,
        redis_url: str = _common.REDIS_URL) -> dict[str, dict]:
    small, large = SIZES[quick]
    _common.ensure_database(database_url)
    _common.install(_common.bench_environment(database_url, redis_url, NAMESPACE))
    database = _common.fresh_schema()
    measured: dict[int, tuple[dict[str, float], float]] = {}
    try:
        with database.connection_context():
            plan = _common.seed_tenant(validate_plan(PLAN).to_definition())
            dashboard = Dashboard(get_settings(), enqueue_delivery=lambda delivery_id: None)
            grown = 0
            for size in (small, large):
                grow(plan, grown, size)
                grown = size
                funnel_ms = median_ms(lambda: stats.funnel(plan_name="dashboard"))
                measured[size] = (page_times(dashboard, plan), funnel_ms)
    finally:
        database.close_all()
    (pages_small, funnel_small), (pages_large, funnel_large) = measured[small], measured[large]
    slowest = max(pages_large, key=pages_large.get)
    print(f"pages at {large:,} (ms):", {name: round(ms, 1) for name, ms in pages_large.items()})
    print(f"pages at {small:,} (ms):", {name: round(ms, 1) for name, ms in pages_small.items()})
    unit = f"ms at {large // 1000}k ({slowest}; reference at {small // 1000}k)"
    return {
        "dashboard_slowest_page_ms": _common.figure(round(pages_large[slowest], 1), unit,
                                                    round(max(pages_small.values()), 1)),
        "dashboard_plan_page_ms": _common.figure(round(pages_large["plan"], 1),
                                                 f"ms at {large // 1000}k", round(pages_small["plan"], 1)),
        "stats_funnel_ms": _common.figure(round(funnel_large, 1), f"ms at {large // 1000}k",
                                          round(funnel_small, 1)),
    }


def main() -> None:
    _common.command_line(run, __doc__, quick_help=f"{SIZES[True]} enrollments, not {SIZES[False]}")


if __name__ == "__main__":
    main()
