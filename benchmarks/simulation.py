"""Benchmark of the plan simulation harness: scenarios run per second on SQLite in memory.

- simulated_scenarios_per_s: N scenarios (500; 100 with --quick) of the sample plan
  (templates/onboarding.yaml) run by one PlanSimulator, as a test suite runs them: each
  enrolls a contact, renders and records the welcome email, plays "at +1h opened",
  "at +2h clicked" (two Event Webhook bodies through ingest), renders the thanks email
  and fires its timer at +1d. Target: 200 scenarios/s. The reference, measured in the
  same run on the same database: bare enrollments per second (``engine.enroll``, the
  first of the engine calls of every scenario).
- simulated_scenario_cpu_ms: the CPU one of those scenarios took, this process's and
  its render processes' together, beside the wall-clock time it took (the reference);
  the ratio is the share of that time the scenario had a CPU. Each email is rendered
  in a render process, as the workers render it (issue #19), and the simulation waits
  for it: on a loaded machine the scenarios wait for the CPU too, and the first figure
  falls with the load while this one does not.

A scenario runs about 80 SQL statements (17 of them the emptying of the previous
scenario's rows); what it costs is mostly Python building and reading them. See the
commits of issue #22 for the figures before and after each change.

Usage: python benchmarks/simulation.py [--quick] [--json]
"""

from __future__ import annotations

import os
import time

# No broker is needed; keep the package from building the embedded one at import.
os.environ.setdefault("OUTREACH_BROKER_URL", "stub://")

from _common import BENCHMARKS_DIR, command_line, figure, timed  # noqa: E402

from outreach_actors.dev.plan_simulation import PlanSimulator, VirtualClock  # noqa: E402
from outreach_actors.domain import engine  # noqa: E402

TEMPLATES = BENCHMARKS_DIR.parent / "templates"
SCRIPT = ["at +1h opened", "at +2h clicked", "at +2d nothing"]
FULL, QUICK = 500, 100


def run(quick: bool) -> dict[str, dict]:
    """The figures as {"value", "unit", "reference", "ratio"}."""
    count = QUICK if quick else FULL
    with PlanSimulator(TEMPLATES / "onboarding.yaml", templates_dir=TEMPLATES) as simulator:
        # Also starts the render processes, whose CPU timed() then counts.
        warm = simulator.run({"email": "warm@example.com", "first_name": "Ada"}, SCRIPT)
        if warm.path != ["intro", "thanks", "done"] or len(warm.emails) != 2:
            raise SystemExit(f"benchmark run is wrong: the scenario took {warm.path}")
        contacts = iter(range(count))
        elapsed, cpu = timed(lambda: simulator.run(
            {"email": f"contact-{next(contacts)}@example.com", "first_name": "Ada"}, SCRIPT), count)
        with simulator._bound(VirtualClock(simulator.start)):
            simulator._clear()
            started = time.perf_counter()
            for n in range(count):
                engine.enroll(simulator.tenant, f"bare-{n}@example.com", simulator.plan.name,
                              fields={"first_name": "Ada"}, now=simulator.start)
            enrolls_per_s = count / (time.perf_counter() - started)
    return {
        "simulated_scenarios_per_s": figure(round(count / elapsed, 1), "scenarios/s",
                                            round(enrolls_per_s, 1)),
        "simulated_scenario_cpu_ms": figure(round(cpu / count * 1000, 2), "ms/scenario",
                                            round(elapsed / count * 1000, 2)),
    }


if __name__ == "__main__":
    command_line(run, __doc__, quick_help=f"{QUICK} scenarios instead of {FULL}")
