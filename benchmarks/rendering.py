"""Benchmark of render isolation: what rendering an email in a render process costs,
beside rendering it in the worker's own process.

The sample plan's first email (templates/onboarding.yaml, ``intro``: a template that
extends a layout, a subject with a filter) is rendered N times by a TemplateRenderer in
this process, then N times by an IsolatedRenderer (the render processes the workers
use, default limits), one after the other in one thread, as one worker thread renders a
batch; in alternation, ``--rounds`` times, medians. Two figures, each beside the same
thing in process:

- ``render_isolation_us_per_email``: wall-clock time per email.
- ``render_isolation_cpu_us_per_email``: CPU per email, this process's and the render
  processes' (the pipe, the pickling, the limits set before each render) together.

Usage: python benchmarks/rendering.py [--quick] [--json] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path

# No broker is needed; keep the package from building the embedded one at import.
os.environ.setdefault("OUTREACH_BROKER_URL", "stub://")

import yaml  # noqa: E402
from _common import BENCHMARKS_DIR, figure, timed  # noqa: E402

from outreach_actors.domain.mail import email_context  # noqa: E402
from outreach_actors.domain.rendering import (  # noqa: E402
    IsolatedRenderer,
    RenderLimits,
    TemplateRenderer,
)
from outreach_actors.settings import Settings  # noqa: E402

TEMPLATES = BENCHMARKS_DIR.parent / "templates"


def run(quick: bool, rounds: int = 5) -> dict[str, dict]:
    """The figures as {"value", "unit", "reference", "ratio"}."""
    plan = yaml.safe_load((TEMPLATES / "onboarding.yaml").read_text())
    node = plan["nodes"][plan["start"]]
    context = email_context(
        fields={"first_name": "Ada", "company": "Analytical Engines"}, email="ada@example.com",
        timezone="Europe/Paris", tenant_id="bench", tenant_name="Bench", plan_name=plan["name"],
        plan_version=1, node=plan["start"], unsubscribe="https://example.com/u/" + "t" * 120)
    email = {"subject": node["subject"], "template": node.get("template"),
             "body": node.get("body"), "context": context}
    in_process = TemplateRenderer(TEMPLATES)
    isolated = IsolatedRenderer(TEMPLATES, RenderLimits.from_settings(Settings()))
    if in_process.render_email(**email) != isolated.render_email(**email):
        raise SystemExit("benchmark run is wrong: the two renderers disagree")
    count = 200 if quick else 1000
    rounds = min(rounds, 3) if quick else rounds
    wall: dict[str, list[float]] = {"in": [], "isolated": []}
    cpu: dict[str, list[float]] = {"in": [], "isolated": []}
    for _ in range(rounds):
        for name, renderer in (("in", in_process), ("isolated", isolated)):
            # The isolated renderer's processes exist by now: timed counts their CPU.
            elapsed, spent = timed(lambda renderer=renderer: renderer.render_email(**email), count)
            wall[name].append(elapsed / count * 1e6)
            cpu[name].append(spent / count * 1e6)
    return {
        "render_isolation_us_per_email": figure(
            round(statistics.median(wall["isolated"])), "us/email",
            round(statistics.median(wall["in"]))),
        "render_isolation_cpu_us_per_email": figure(
            round(statistics.median(cpu["isolated"])), "us/email",
            round(statistics.median(cpu["in"]))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 renders a round, 3 rounds")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--rounds", type=int, default=5)
    options = parser.parse_args()
    figures = run(options.quick, options.rounds)
    if options.json:
        print(json.dumps(figures))
        return
    print(f"the sample plan's first email ({Path('templates/onboarding.yaml')}), one thread")
    for name, entry in figures.items():
        print(f"{name} {entry['value']} {entry['unit']} "
              f"(in process {entry['reference']}, ratio {entry['ratio']})")


if __name__ == "__main__":
    main()
