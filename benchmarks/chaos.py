"""Chaos run: a campaign under worker kills, a Redis restart, SendGrid failures and webhook replays.

A few thousand enrollments (a few hundred with ``--quick``) go through a
three-email-node plan with seconds-long timers on a Redis broker (the embedded
server, append-only), PostgreSQL and two ``dramatiq outreach_actors`` processes,
while workers are killed with SIGKILL every 3-8 s and restarted, the Redis server
is killed once mid-run and started again on its append-only file, the SendGrid
stand-in answers about 10% of sends with 500 or 429 and drops about 2% of
connections after accepting the mail, and every webhook batch is posted twice
with its events out of order (see ``outreach_actors/dev/chaos.py``).

Three figures, each a count whose reference is 0:

- chaos_duplicate_sends: mails SendGrid accepted beyond one per (enrollment, node);
- chaos_lost_timers: timers that neither fired exactly once nor were closed by a
  transition or by engagement, or that a sent email never started;
- chaos_lost_events: events our endpoint accepted that were not stored once.

The counts and fault tallies (and the other invariants: enrollments left active,
suppressed addresses mailed, ambiguous sends not settled by the policy) go to
stderr; the exit status is 1 if any invariant broke.

Usage: python benchmarks/chaos.py [--quick] [--json] [--database-url URL] [--seed N]
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

# Its own database, beside the other benchmarks' (BENCH_CHAOS_DATABASE_URL to move it).
DEFAULT_DATABASE_URL = os.environ.get("BENCH_CHAOS_DATABASE_URL",
                                      "postgresql://postgres@127.0.0.1:5432/outreach_chaos")
FULL_ENROLLMENTS, QUICK_ENROLLMENTS = 2000, 300


def config_for(quick: bool, data_dir: Path, database_url: str = DEFAULT_DATABASE_URL,
               seed: int = 7) -> ChaosConfig:
    enrollments = QUICK_ENROLLMENTS if quick else FULL_ENROLLMENTS
    return ChaosConfig(
        database_url=database_url,
        data_dir=data_dir,
        enrollments=enrollments,
        suppressed=enrollments // 100,
        seed=seed,
        time_limit_s=150 if quick else 900,
    )


def figures(report: ChaosReport) -> dict[str, dict[str, Any]]:
    """The three figures; a count against 0 has no ratio."""
    def count(value: int, unit: str) -> dict[str, Any]:
        return {"value": value, "unit": unit, "reference": 0, "ratio": None}

    return {
        "chaos_duplicate_sends": count(report.audit.duplicate_sends, "emails"),
        "chaos_lost_timers": count(report.audit.lost_timers, "timers"),
        "chaos_lost_events": count(report.audit.lost_events, "events"),
    }


def chaos_report(quick: bool, database_url: str = DEFAULT_DATABASE_URL,
                 seed: int = 7) -> ChaosReport:
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
        report = run_chaos(config_for(quick, data_dir, database_url, seed))
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


def run(quick: bool, database_url: str = DEFAULT_DATABASE_URL, seed: int = 7) -> dict[str, dict]:
    """The figures as {"value", "unit", "reference", "ratio"}; the counts go to stderr."""
    return figures(chaos_report(quick, database_url, seed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_ENROLLMENTS} enrollments instead of {FULL_ENROLLMENTS}")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL,
                        help="a PostgreSQL database of its own: its tables are dropped")
    parser.add_argument("--seed", type=int, default=7, help="replays the same faults")
    options = parser.parse_args()
    report = chaos_report(options.quick, options.database_url, options.seed)
    results = figures(report)
    if options.json:
        print(json.dumps(results))
    else:
        for name, figure in results.items():
            print(f"{name} {figure['value']} {figure['unit']} (reference {figure['reference']})")
    sys.exit(1 if any(report.violations().values()) else 0)


if __name__ == "__main__":
    main()
