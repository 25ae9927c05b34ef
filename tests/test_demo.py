"""`outreach demo`, the main job, run as a newcomer would: no configuration at all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _processes_under(path: Path) -> list[str]:
    result = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True)
    return [line for line in result.stdout.splitlines() if str(path) in line]


def test_demo_runs_a_whole_campaign_and_cleans_up(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTREACH_")}
    command = [sys.executable, "-m", "outreach_actors.cli", "demo", "--contacts", "40",
               "--timeout", "90"]
    for run in (1, 2):  # a second run starts clean
        result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True,
                                timeout=150)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "40 contacts, 40 finished" in result.stdout, run
        assert "emails sent" in result.stdout and "synthetic" in result.stdout
        # The funnel shows every node of the sample plan.
        for node in ("intro", "bump", "thanks", "done", "stop"):
            assert f" {node} " in result.stdout
    # Nothing is left running: no worker, scheduler or embedded Redis of this run.
    assert _processes_under(tmp_path / "var") == []
    assert (tmp_path / "var" / "demo" / "outreach.db").exists()
