"""`outreach demo`, the main job, run as a newcomer would: no configuration at all."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from .conftest import wait_until


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


def _demo_processes(demo: psutil.Process) -> list[psutil.Process]:
    """The demo's workers (the dramatiq parent and its children) and periodiq, once up."""
    processes, commands = [], []
    for process in demo.children(recursive=True):
        try:
            commands.append(" ".join(process.cmdline()))
        except psutil.Error:  # a helper process that just ended (a zombie until reaped)
            continue
        processes.append(process)
    dramatiq_up = any("dramatiq outreach_actors" in command for command in commands)
    periodiq_up = any("periodiq" in command for command in commands)
    return processes if dramatiq_up and periodiq_up and len(processes) >= 4 else []


@pytest.mark.parametrize("signal_name", ["SIGTERM", "SIGHUP"])
def test_a_terminated_demo_stops_every_process_it_started(tmp_path: Path, signal_name: str) -> None:
    # Given a demo well under way (enough contacts that it is still running)...
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTREACH_")}
    demo = subprocess.Popen(
        [sys.executable, "-m", "outreach_actors.cli", "demo", "--contacts", "3000", "--timeout", "300"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        demo_process = psutil.Process(demo.pid)
        wait_until(lambda: _demo_processes(demo_process), timeout=90)
        started = _demo_processes(demo_process)
        # ...when it is told to stop as `kill` or a closed terminal would,
        demo.send_signal(getattr(signal, signal_name))
        demo.wait(timeout=60)
    finally:
        if demo.poll() is None:  # the test failed early: let the demo clean up after itself
            demo.terminate()
            try:
                demo.wait(timeout=60)
            except subprocess.TimeoutExpired:
                demo.kill()
        output = demo.stdout.read().decode(errors="replace")
    # then it exits with the shell's status for that signal, and leaves nothing running.
    assert demo.returncode == 128 + getattr(signal, signal_name), output[-3000:]
    _, alive = psutil.wait_procs(started, timeout=10)
    assert [" ".join(process.cmdline()) for process in alive] == []


def _ended(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE  # ended, not reaped by its new parent
    except psutil.NoSuchProcess:
        return True


def test_stopping_the_demos_processes_also_ends_what_they_left_in_their_groups() -> None:
    from outreach_actors.dev.demo import _stop_processes

    # Given a process started as the demo starts its workers and periodiq (a process
    # group of its own), with a child of its own that outlives a SIGTERM
    script = ("import os, signal, time\n"
              "child = os.fork()\n"
              "if child == 0:\n"
              "    signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
              "    time.sleep(120)\n"
              "    os._exit(0)\n"
              "print(child, flush=True)\n"
              "time.sleep(120)\n")
    started = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    child = psutil.Process(int(started.stdout.readline()))
    try:
        # when the demo stops its processes
        _stop_processes([started])
        # then the process ended on the SIGTERM, and its child with the rest of its group.
        assert started.returncode == -signal.SIGTERM
        wait_until(lambda: _ended(child), timeout=10)
    finally:
        with contextlib.suppress(psutil.Error):
            child.kill()
        started.stdout.close()


def test_a_demo_killed_outright_is_cleaned_up_by_the_next_one(tmp_path: Path) -> None:
    # Given a demo killed with SIGKILL (the OOM killer, kill -9): no cleanup could run,
    # and its workers and periodiq are still up
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTREACH_")}
    command = [sys.executable, "-m", "outreach_actors.cli", "demo"]
    killed = subprocess.Popen([*command, "--contacts", "3000", "--timeout", "300"], env=env,
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        demo_process = psutil.Process(killed.pid)
        wait_until(lambda: _demo_processes(demo_process), timeout=90)
        orphans = _demo_processes(demo_process)
    finally:
        killed.kill()
        killed.wait()
    assert all(process.is_running() for process in orphans)
    # When the next demo starts
    result = subprocess.run([*command, "--contacts", "40", "--timeout", "90"], env=env,
                            cwd=tmp_path, capture_output=True, text=True, timeout=180)
    # then it stopped them first, and ran its own campaign to the end.
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "40 contacts, 40 finished" in result.stdout
    _, alive = psutil.wait_procs(orphans, timeout=5)
    assert [" ".join(process.cmdline()) for process in alive] == []


def test_demo_with_dashboard_serves_it_until_ctrl_c(tmp_path: Path) -> None:
    import base64
    import re
    import urllib.error
    import urllib.request

    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTREACH_")}
    env["COLUMNS"] = "200"  # one line per message, for the test to read
    demo = subprocess.Popen(
        [sys.executable, "-m", "outreach_actors.cli", "demo", "--contacts", "10", "--timeout", "90",
         "--dashboard"], env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
        # started as a background job is (SIGINT ignored), as CI starts the suite
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        output = ""
        for line in demo.stdout:
            output += line
            if "until Ctrl-C" in line:
                break
        found = re.search(r"dashboard: (http://127\.0\.0\.1:\d+/outreach/)\s+\(user demo, password (\S+),",
                          output)
        assert found and "until Ctrl-C" in output, output[-3000:]
        url, password = found.groups()
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=10)
        assert refused.value.code == 401
        token = base64.b64encode(f"demo:{password}".encode()).decode()
        page = urllib.request.urlopen(urllib.request.Request(
            url, headers={"Authorization": f"Basic {token}"}), timeout=10).read().decode()
        assert "onboarding" in page
        # Keep reading what it prints (a full pipe would stop it), then Ctrl-C
        rest: list[str] = []
        threading.Thread(target=lambda: rest.extend(demo.stdout), daemon=True).start()
        demo.send_signal(signal.SIGINT)
        try:
            status = demo.wait(timeout=90)
        except subprocess.TimeoutExpired:
            status = None
        assert status == 0, "".join(rest)[-3000:]
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert _processes_under(tmp_path / "var") == []
