"""Chaos run: a campaign under worker kills, Redis and PostgreSQL restarts, SendGrid failures and webhook replays.

A few thousand enrollments (a few hundred with ``--quick``) go through a
three-email-node plan with seconds-long timers, once on a Redis broker (the
embedded server, append-only) and once on RabbitMQ (state in that Redis), each
on a PostgreSQL server of the run's own and two ``dramatiq outreach_actors``
processes, while workers are killed with SIGKILL every 3-8 s and restarted, the
Redis server is killed once mid-run and started again on its append-only file,
PostgreSQL is crashed once (``pg_ctl stop -m immediate``) and started again, the
SendGrid stand-in answers about 10% of sends with 500 or 429 and drops about 2%
of connections after accepting the mail, and every webhook batch is posted twice
with its events out of order (see ``outreach_actors/dev/chaos.py``).

The plan has a split (two arms) and a goal on a host event: every seventh
contact's ``trial_started`` and ``purchased`` events are POSTed to ``/events``,
signed, each twice, out of order, retried when refused; the plan is paused and
resumed a quarter of the way through, a few enrollments are paused and resumed,
and halfway every enrollment in flight is migrated to a new plan version; host
notifications go to a recording actor (``outreach_actors/dev/chaos_notify.py``).

Eleven figures per broker, each a count whose reference is 0 (``chaos_*`` for
Redis, ``chaos_rabbitmq_*`` for RabbitMQ):

- duplicate_sends: mails SendGrid accepted beyond one per (enrollment, node);
- lost_timers: timers that neither fired exactly once nor were closed by a
  transition or by engagement, or that a sent email never started;
- lost_events: events our endpoint accepted that were not stored once;
- mailed_after_goal: mails sent on a claim made after the contact's goal committed;
- arms_reassigned: split arms that differ from the stable assignment, change, or
  disagree with the email SendGrid accepted;
- notifications_lost / notifications_doubled: outbox notifications never received
  by the host's actor (or ended enrollments never notified) / received twice by
  their stable id (or an enrollment's end notified twice);
- mailed_while_paused: sends claimed while the plan was paused, or rendered while
  the contact's enrollment was;
- host_events_lost: host events /events accepted that were not stored and
  processed once;
- mailed_after_reply: mails sent on a claim made after the contact's reply ended
  its enrollment (replies and out-of-office answers are posted twice to Inbound Parse);
- replies_lost: Inbound Parse posts accepted that were not stored and read once.

The counts and fault tallies (and the other invariants: enrollments left active,
suppressed addresses mailed, ambiguous sends not settled by the policy) go to
stderr; the exit status is 1 if any invariant broke.

Usage: python benchmarks/chaos.py [--quick] [--json] [--broker redis|rabbitmq|both]
                                  [--database-url URL] [--rabbitmq-url URL] [--seed N]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

# The package builds its process-wide broker at import: the stub broker until the
# run installs its own settings.
os.environ.setdefault("OUTREACH_BROKER_URL", "stub://")

from outreach_actors.dev.chaos import ChaosConfig, ChaosReport, run_chaos  # noqa: E402

DEFAULT_RABBITMQ_URL = os.environ.get("BENCH_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/")
FULL_ENROLLMENTS, QUICK_ENROLLMENTS = 2000, 300
BROKERS = ("redis", "rabbitmq")


def config_for(quick: bool, data_dir: Path, *, broker: str = "redis",
               database_url: str | None = None, rabbitmq_url: str = DEFAULT_RABBITMQ_URL,
               seed: int = 7) -> ChaosConfig:
    """With a database URL of the caller's, PostgreSQL is not restarted (it may be shared)."""
    enrollments = QUICK_ENROLLMENTS if quick else FULL_ENROLLMENTS
    return ChaosConfig(
        database_url=database_url,
        postgres_restart="immediate" if database_url is None else None,
        broker=broker,
        rabbitmq_url=rabbitmq_url,
        data_dir=data_dir,
        enrollments=enrollments,
        suppressed=enrollments // 100,
        seed=seed,
        time_limit_s=150 if quick else 900,
    )


def figures(report: ChaosReport) -> dict[str, dict[str, Any]]:
    """The figures of one run; a count against 0 has no ratio."""
    def count(value: int, unit: str) -> dict[str, Any]:
        return {"value": value, "unit": unit, "reference": 0, "ratio": None}

    prefix = "chaos_" if report.config.broker == "redis" else f"chaos_{report.config.broker}_"
    return {
        f"{prefix}duplicate_sends": count(report.audit.duplicate_sends, "emails"),
        f"{prefix}lost_timers": count(report.audit.lost_timers, "timers"),
        f"{prefix}lost_events": count(report.audit.lost_events, "events"),
        f"{prefix}mailed_after_goal": count(report.audit.mailed_after_goal, "emails"),
        f"{prefix}arms_reassigned": count(report.audit.arms_reassigned, "contacts"),
        f"{prefix}notifications_lost": count(report.audit.notifications_lost, "notifications"),
        f"{prefix}notifications_doubled": count(report.audit.notifications_doubled,
                                                "notifications"),
        f"{prefix}mailed_while_paused": count(report.audit.mailed_while_paused, "emails"),
        f"{prefix}host_events_lost": count(report.audit.host_events_lost, "events"),
        f"{prefix}mailed_after_reply": count(report.audit.mailed_after_reply, "emails"),
        f"{prefix}replies_lost": count(report.audit.replies_lost, "posts"),
    }


def chaos_report(quick: bool, **options: Any) -> ChaosReport:
    """Run the chaos campaign; prints its counts and fault tallies to stderr.

    Its Redis server and its own and the workers' logs go to a directory of their
    own, removed after a clean run and kept (and named) when an invariant broke.
    """
    data_dir = Path(tempfile.mkdtemp(prefix="outreach-chaos-"))
    # The faults make the package log warnings and tracebacks by design: they go
    # to a file beside the worker logs rather than over the figures.
    log = logging.FileHandler(data_dir / "harness.log")
    log.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(log)
    try:
        report = run_chaos(config_for(quick, data_dir, **options))
    finally:
        logging.getLogger().removeHandler(log)
        log.close()
    for line in report.lines():
        print(line, file=sys.stderr)
    if any(report.violations().values()):
        print(f"logs and Redis data kept in {data_dir}", file=sys.stderr)
    else:
        shutil.rmtree(data_dir, ignore_errors=True)
    return report


def run(quick: bool, brokers: tuple[str, ...] = BROKERS, **options: Any) -> dict[str, dict]:
    """The figures as {"value", "unit", "reference", "ratio"}; the counts go to stderr."""
    return {name: figure for broker in brokers
            for name, figure in figures(chaos_report(quick, broker=broker, **options)).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_ENROLLMENTS} enrollments instead of {FULL_ENROLLMENTS}")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--broker", choices=[*BROKERS, "both"], default="both")
    parser.add_argument("--database-url", default=None,
                        help="a PostgreSQL database of its own (its tables are dropped); "
                             "default: a server of the run's own, restarted mid-run")
    parser.add_argument("--rabbitmq-url", default=DEFAULT_RABBITMQ_URL,
                        help="its queues are purged")
    parser.add_argument("--seed", type=int, default=7, help="replays the same faults")
    options = parser.parse_args()
    brokers = BROKERS if options.broker == "both" else (options.broker,)
    reports = [chaos_report(options.quick, broker=broker, database_url=options.database_url,
                            rabbitmq_url=options.rabbitmq_url, seed=options.seed)
               for broker in brokers]
    results = {name: figure for report in reports for name, figure in figures(report).items()}
    if options.json:
        print(json.dumps(results))
    else:
        for name, figure in results.items():
            print(f"{name} {figure['value']} {figure['unit']} (reference {figure['reference']})")
    sys.exit(1 if any(any(report.violations().values()) for report in reports) else 0)


if __name__ == "__main__":
    main()
