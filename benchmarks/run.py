"""Run every benchmark and print one table of figures, each beside its reference.

Each benchmark module exposes ``run(quick) -> {name: {"value", "unit",
"reference", "ratio"}}`` and runs here in a process of its own (each installs its
own settings, broker and database binding). A benchmark that fails shows its
error in place of its figures and makes this script exit non-zero; chaos.py is
run when it exists. Each starts once the machine has settled (see settle): the one
before it can leave work behind that a CPU-bound figure would share the cores with.

Usage: python benchmarks/run.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

BENCHMARKS_DIR = Path(__file__).resolve().parent
# In order, with the figures each one must report (a failed one shows them as errors).
BENCHMARKS: dict[str, tuple[str, ...]] = {
    "pipeline": ("emails_per_s", "noop_chain_per_s", "timeouts_per_s"),
    "limiter": ("limiter_overshoot", "limiter_utilization", "acquire_with_policy_us"),
    "webhooks": ("webhook_events_per_s",),
    "replies": ("inbound_replies_per_s",),
    "track": ("track_events_per_s",),
    "rendering": ("render_isolation_us_per_email", "render_isolation_cpu_us_per_email"),
    "reactions": ("reaction_timer_p99_s", "reaction_event_p99_s"),
    "enroll": ("enroll_per_s",),
    # (not operator.py: importing "operator" finds the standard library's module)
    "operator_queries": ("suppressions_list_ms_10k", "suppressions_list_ms_100k", "stats_ms_10k",
                 "stats_ms_100k", "stats_ms_1m"),
    "timers": ("timer_lateness_p99_s", "broker_bytes_per_pending_timer",
               "worker_rss_mib_1m_timers"),
    "dashboard": ("dashboard_ms_1m", "dashboard_plan_page_ms_1m", "dashboard_plan_period_ms_1m"),
    "simulation": ("simulated_scenarios_per_s", "simulated_scenario_cpu_ms"),
    "chaos": ("chaos_duplicate_sends", "chaos_lost_timers", "chaos_lost_events",
              "chaos_rabbitmq_duplicate_sends", "chaos_rabbitmq_lost_timers",
              "chaos_rabbitmq_lost_events",
              "chaos_mailed_after_goal", "chaos_arms_reassigned", "chaos_notifications_lost",
              "chaos_notifications_doubled", "chaos_mailed_while_paused",
              "chaos_host_events_lost",
              "chaos_rabbitmq_mailed_after_goal", "chaos_rabbitmq_arms_reassigned",
              "chaos_rabbitmq_notifications_lost", "chaos_rabbitmq_notifications_doubled",
              "chaos_rabbitmq_mailed_while_paused", "chaos_rabbitmq_host_events_lost",
              "chaos_mailed_after_reply", "chaos_replies_lost",
              "chaos_rabbitmq_mailed_after_reply", "chaos_rabbitmq_replies_lost"),
}
OPTIONAL = {"chaos"}
TIMEOUT_S = {True: 600, False: 3600}
# Settled: at most this share of the CPUs busy over a second, waited for up to SETTLE_MAX_S.
SETTLED_BUSY_PERCENT = 10.0
SETTLE_MAX_S = 60.0


def settle() -> float:
    """Wait until the machine is settled (or SETTLE_MAX_S passed); the seconds waited."""
    started = time.monotonic()
    while (psutil.cpu_percent(interval=1.0) > SETTLED_BUSY_PERCENT
           and time.monotonic() - started < SETTLE_MAX_S):
        pass
    return time.monotonic() - started


def run_one(name: str, quick: bool, output: Path) -> None:
    """In the child process: import one benchmark, run it, write its figures as JSON."""
    sys.path.insert(0, str(BENCHMARKS_DIR))
    module = importlib.import_module(name)
    if not hasattr(module, "run"):
        raise SystemExit(f"benchmarks/{name}.py has no run(quick) function")
    output.write_text(json.dumps(module.run(quick)))


def child_environment() -> dict[str, str]:
    env = dict(os.environ)
    # limiter.py reads the test suite's Redis URL: point it at the benchmarks' database.
    env.setdefault("OUTREACH_TEST_REDIS_URL",
                   os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13"))
    return env


def run_benchmark(name: str, quick: bool) -> tuple[dict[str, dict], str | None, float]:
    """(figures, error or None, seconds) of one benchmark run in a child process."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as scratch:
        output = Path(scratch) / "figures.json"
        command = [sys.executable, str(Path(__file__).resolve()), "--one", name,
                   "--output", str(output), *(["--quick"] if quick else [])]
        try:
            child = subprocess.run(command, env=child_environment(), capture_output=True,
                                   text=True, timeout=TIMEOUT_S[quick])
        except subprocess.TimeoutExpired:
            return {}, f"did not finish within {TIMEOUT_S[quick]} s", time.monotonic() - started
        elapsed = time.monotonic() - started
        if child.returncode != 0 or not output.exists():
            lines = (child.stderr or child.stdout).strip().splitlines()
            return {}, lines[-1] if lines else f"exited with {child.returncode}", elapsed
        return json.loads(output.read_text()), None, elapsed


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"
        return text.rstrip("0") + ("0" if text.rstrip("0").endswith(".") else "")
    return f"{value:,}" if isinstance(value, int) else str(value)


def print_table(results: dict[str, tuple[dict[str, dict], str | None, float]]) -> None:
    rows = [("figure", "value", "unit", "reference", "ratio", "benchmark")]
    for name, (figures, error, elapsed) in results.items():
        if error is not None:
            rows += [(figure, "ERROR", "", "", "", name) for figure in BENCHMARKS[name]]
            continue
        for figure, entry in figures.items():
            rows.append((figure, _cell(entry["value"]), entry["unit"], _cell(entry["reference"]),
                         _cell(entry["ratio"]), f"{name} ({elapsed:.0f} s)"))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for index, row in enumerate(rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
        if index == 0:
            print("  ".join("-" * width for width in widths))
    errors = [(name, error) for name, (_f, error, _e) in results.items() if error is not None]
    if errors:
        print()
    for name, error in errors:
        print(f"{name} failed: {error}")


def report_progress(name: str, figures: dict[str, dict], error: str | None,
                    elapsed: float, settled_s: float) -> None:
    """One line per benchmark on stderr as it ends: a full run takes long."""
    told = error if error is not None else ", ".join(
        f"{figure} {_cell(entry['value'])}" for figure, entry in figures.items())
    print(f"{name} ({elapsed:.0f} s, after {settled_s:.0f} s settling): {told}",
          file=sys.stderr, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every benchmark, small (~2 min)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--one", choices=sorted(BENCHMARKS), help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.one:
        run_one(options.one, options.quick, options.output)
        return

    load_before = os.getloadavg()[0]
    started = time.monotonic()
    results = {}
    for name in BENCHMARKS:
        if name in OPTIONAL and not (BENCHMARKS_DIR / f"{name}.py").exists():
            continue
        settled_s = settle()
        results[name] = run_benchmark(name, options.quick)
        report_progress(name, *results[name], settled_s)
    failed = [name for name, (_f, error, _e) in results.items() if error is not None]
    if options.json:
        merged: dict[str, dict] = {}
        for name, (figures, error, _elapsed) in results.items():
            merged.update(figures if error is None else {
                figure: {"value": None, "unit": None, "reference": None, "ratio": None,
                         "error": error}
                for figure in BENCHMARKS[name]
            })
        print(json.dumps(merged))
    else:
        print_table(results)
        skipped = [name for name in BENCHMARKS if name not in results]
        print(f"\n{'quick' if options.quick else 'full'} run, {time.monotonic() - started:.0f} s; "
              f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after "
              f"({os.cpu_count()} CPUs)"
              + (f"; not present: {', '.join(skipped)}" if skipped else ""))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
