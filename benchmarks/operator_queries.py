"""Benchmark of operator commands at scale: `outreach suppressions list` and `outreach
stats` on PostgreSQL as the number of rows grows.

Each command runs in this process as the CLI runs it (click, the database opened from
the settings, the table drawn to a captured terminal), median of 3; the Python start of
the `outreach` script, the same at every size, is left out. Each figure is printed beside
its 10k figure of the same run: the growth factor is what matters (target: under 1 s).

- suppressions_list_ms_10k / _100k: that many suppressions of one tenant; the command
  with its defaults (a page of 50 and the line saying how many more).
- stats_ms_10k / _100k / _1m: that many enrollments of one plan with companions in the
  proportions of a real account (per enrollment 2.2 node visits, 1.5 emails with an HTML
  body of 1.3 kB, 3.6 events: deliveries, human and machine opens, clicks, a few of
  them on the unsubscribe link, and no_open timers), seeded set-based (generate_series),
  enrolled over a year (a 365th of them each day, the visits and emails that follow
  days later, the events hours after each email);
  `outreach stats` for every plan. With --quick the 1m figure is measured at 300k
  enrollments (its name keeps the full size; the unit says the size measured).

Usage: python benchmarks/operator_queries.py [--quick] [--json]
"""

from __future__ import annotations

import statistics
import time

import _common
from click.testing import CliRunner

from outreach_actors.cli.commands import main as outreach
from outreach_actors.domain.plans import validate_plan
from outreach_actors.domain.store import models

NAMESPACE = "outreach-bench-operator"
SUPPRESSION_SIZES = {"10k": 10_000, "100k": 100_000}
STATS_SIZES = {"10k": 10_000, "100k": 100_000, "1m": 1_000_000}
QUICK_STATS_SIZES = {"10k": 10_000, "100k": 100_000, "1m": 300_000}
PLAN = """
name: funnel
start: intro
nodes:
  intro:
    type: email
    subject: "Hello"
    body: "<p>Hi, <a href='https://example.com/x'>look</a>. {{ unsubscribe_url }}</p>"
    transitions:
      - {on: click, to: thanks}
      - {on: no_open, after: P3D, to: bump}
  bump:
    type: email
    subject: "A bump"
    body: "<p>A bump. {{ unsubscribe_url }}</p>"
    transitions:
      - {on: click, to: thanks}
      - {on: no_click, after: P3D, to: done}
  thanks: {type: exit}
  done: {type: exit}
"""


def command_ms(*args: str, runs: int = 3) -> float:
    """The median wall time of ``outreach ARGS`` in this process, in ms."""
    runner = CliRunner()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        result = runner.invoke(outreach, list(args), catch_exceptions=False)
        times.append((time.perf_counter() - started) * 1000)
        if result.exit_code != 0:
            raise RuntimeError(f"outreach {' '.join(args)} exited {result.exit_code}: "
                               f"{result.output[-300:]}")
    return statistics.median(times)


def seed_suppressions(count: int) -> None:
    _common.truncate_all()
    models.Tenant.create(id=_common.TENANT, name="Bench Inc.")
    models.database_proxy.obj.execute_sql(
        "INSERT INTO suppression (tenant_id, channel, value, reason, source, created_at) "
        "SELECT %s, 'email', 'gone-' || g || '@example.com', 'unsubscribe', 'import', "
        "now() - g * interval '1 second' FROM generate_series(1, %s) g",
        (_common.TENANT, count))


def seed_funnel(count: int) -> None:
    """``count`` enrollments of one plan and their companions, as the engine writes them."""
    _common.truncate_all()
    plan = _common.seed_tenant(validate_plan(PLAN).to_definition())
    sql = models.database_proxy.obj.execute_sql
    sql("INSERT INTO contact (tenant_id, email, fields, created_at) "
        "SELECT %s, 'c' || g || '@example.com', '{}', now() FROM generate_series(1, %s) g",
        (_common.TENANT, count))
    # Where they are now: 30% at bump, 8% active at intro, 2% failed, the rest done.
    sql("""INSERT INTO enrollment (tenant_id, plan_id, contact_id, enrollment_key, current_node,
               status, version, node_entered_at, created_at, updated_at)
           SELECT tenant_id, %s, id, tenant_id || ':funnel:' || id,
               CASE WHEN id %% 100 < 30 THEN 'bump' WHEN id %% 100 < 40 THEN 'intro'
                    WHEN id %% 100 < 70 THEN 'thanks' ELSE 'done' END,
               CASE WHEN id %% 100 < 30 THEN 'active' WHEN id %% 100 < 38 THEN 'active'
                    WHEN id %% 100 < 40 THEN 'failed' ELSE 'completed' END,
               2, now(), now() - interval '7 days' - (id %% 365) * interval '1 day'
                   - (id %% 1440) * interval '1 minute', now()
           FROM contact""", (plan.id,))
    # 2.2 visits each: intro for all, bump for 70%, an exit node for half.
    sql("""INSERT INTO node_visit (enrollment_id, node, via_event, entered_at, version, from_node)
           SELECT id, 'intro', NULL, created_at, 0, NULL FROM enrollment
           UNION ALL SELECT id, 'bump', 'no_open', created_at + interval '3 days', 1, 'intro'
               FROM enrollment WHERE id %% 10 < 7
           UNION ALL SELECT id, 'done', 'no_click', created_at + interval '6 days', 2, 'bump'
               FROM enrollment WHERE id %% 2 = 0""")
    # 1.5 emails each: the intro for all, the bump for half; bodies as rendered (1.3 kB).
    sql("""INSERT INTO outbound_message (id, tenant_id, enrollment_id, node, dedupe_key, status,
               to_email, from_email, from_name, subject, html, text, categories, headers,
               attempts, created_at)
           SELECT 'msg_' || e.id || '_' || n.node, e.tenant_id, e.id, n.node,
               'bench:' || e.id || ':' || n.node,
               CASE WHEN e.id %% 200 = 0 THEN 'ambiguous' ELSE 'sent' END,
               'c' || e.contact_id || '@example.com', %s, 'Bench', 'Hello',
               '<html><body>' || repeat(md5(e.id::text || n.node), 40) || '</body></html>',
               repeat(md5(e.id::text), 20), '[]', '{}', 1, e.created_at + n.later
           FROM enrollment e
           CROSS JOIN (VALUES ('intro', interval '0'), ('bump', interval '3 days')) n(node, later)
           WHERE n.node = 'intro' OR e.id %% 2 = 0""", (_common.SENDER,))
    # 3.6 events per enrollment (2.4 per email): a delivery each, opens (a fifth of them
    # machine opens), clicks (a tenth on the unsubscribe link), no_open timers.
    sql("""INSERT INTO message_event (message_id, tenant, type, provider_event, synthetic,
               event_key, email, occurred_at, received_at, data)
           SELECT m.id, m.tenant_id, k.type, k.type, k.type = 'no_open',
               m.id || ':' || k.type || ':' || k.n, m.to_email,
               m.created_at + k.n * interval '1 hour', now(),
               CASE WHEN k.type = 'opened' THEN
                        '{"machine_open": ' || (hashtext(m.id) %% 5 = 0)::text || '}'
                    WHEN k.type = 'clicked' THEN
                        '{"url": "https://example.com/x", "unsubscribe_link": '
                        || (hashtext(m.id) %% 10 = 0)::text || '}'
                    ELSE '{}' END
           FROM outbound_message m
           JOIN (VALUES ('delivered', 1, 100), ('opened', 1, 70), ('opened', 2, 25),
                        ('clicked', 1, 30), ('no_open', 1, 15))
                AS k(type, n, percent)
             ON abs(hashtext(m.id || k.type || k.n)) %% 100 < k.percent""")
    sql("ANALYZE")


def run(quick: bool, database_url: str = _common.DATABASE_URL,
        redis_url: str = _common.REDIS_URL) -> dict[str, dict]:
    _common.ensure_database(database_url)
    _common.install(_common.bench_environment(database_url, redis_url, NAMESPACE))
    database = _common.fresh_schema()
    measured: dict[str, tuple[float, int]] = {}  # name: (ms, rows it was measured at)
    try:
        for label, count in SUPPRESSION_SIZES.items():
            with database.connection_context():
                seed_suppressions(count)
            measured[f"suppressions_list_ms_{label}"] = (command_ms("suppressions", "list"), count)
        for label, count in (QUICK_STATS_SIZES if quick else STATS_SIZES).items():
            with database.connection_context():
                seed_funnel(count)
            measured[f"stats_ms_{label}"] = (command_ms("stats"), count)
    finally:
        database.close_all()
    figures = {}
    for name, (value, count) in measured.items():
        reference = measured[name.rsplit("_", 1)[0] + "_10k"][0]
        nominal = {**SUPPRESSION_SIZES, **STATS_SIZES}[name.rsplit("_", 1)[1]]
        unit = "ms" if count == nominal else f"ms at {count:,}"
        figures[name] = _common.figure(round(value, 1), unit, round(reference, 1))
    return figures


def main() -> None:
    _common.command_line(run, __doc__, quick_help="stats_ms_1m at 300k enrollments")


if __name__ == "__main__":
    main()
