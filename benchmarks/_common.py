"""Helpers the benchmarks share: their database and broker, worker processes, figures.

Benchmarks run beside other people's tests on one machine, so each uses its own
PostgreSQL database and Redis database (``BENCH_DATABASE_URL`` and
``BENCH_REDIS_URL``, defaults ``outreach_bench`` and Redis db 13; not ``OUTREACH_*``
names, which Settings refuses when it does not know them).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Self

# The package builds its process-wide broker at import: keep that the stub broker
# (no embedded Redis) until a benchmark installs its own settings.
os.environ.setdefault("OUTREACH_BROKER_URL", "stub://")

import peewee  # noqa: E402
import psutil  # noqa: E402

import outreach_actors  # noqa: E402,F401  (installs the broker before any actor is declared)
from outreach_actors.dev.ports import free_port  # noqa: E402
from outreach_actors.domain.store import models  # noqa: E402
from outreach_actors.domain.store.db import ensure_postgres_database  # noqa: E402
from outreach_actors.domain.store.keys import action_key, enrollment_key  # noqa: E402
from outreach_actors.domain.store.models import Enrollment, OutboundMessage, ScheduledAction  # noqa: E402
from outreach_actors.settings import Settings, settings_from_mapping  # noqa: E402
from outreach_actors.web.app import DEFAULT_THREADS  # noqa: E402
from outreach_actors.worker import runtime

DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/outreach_bench"
)
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
BENCHMARKS_DIR = Path(__file__).resolve().parent
# Rate limits far above anything a benchmark sends, so that they never bind.
UNBOUNDED_RATE_LIMITS = {
    "OUTREACH_RATELIMIT_SENDER_PER_MINUTE": "100000000",
    "OUTREACH_RATELIMIT_SENDER_PER_HOUR": "100000000",
    "OUTREACH_RATELIMIT_TENANT_PER_HOUR": "100000000",
    "OUTREACH_RATELIMIT_DOMAIN_PER_HOUR": "100000000",
    "OUTREACH_RATELIMIT_GLOBAL_PER_HOUR": "100000000",
}
TENANT = "bench"
SENDER = "hello@bench.outreach.test"
# What `dramatiq` runs with on a 2-core machine: one process per core, its default threads.
WORKER_PROCESSES = 2
WORKER_THREADS = 8


def figure(value: float | int, unit: str, reference: float | int | None,
           ratio: float | None = None) -> dict[str, Any]:
    """One figure as run.py prints it; the ratio defaults to value / reference."""
    if ratio is None and reference:
        ratio = value / reference
    return {"value": value, "unit": unit, "reference": reference,
            "ratio": None if ratio is None else round(ratio, 3)}


def timed(work: Callable[[], object], count: int = 1) -> tuple[float, float]:
    """(wall-clock s, CPU s of this process and its descendants, render processes
    included) of ``count`` runs of ``work``. Descendants are counted as they are when
    it starts: start them (a first render) before."""
    this = psutil.Process()
    processes = [this, *this.children(recursive=True)]
    cpu, started = _cpu_s(processes), time.perf_counter()
    for _ in range(count):
        work()
    return time.perf_counter() - started, _cpu_s(processes) - cpu


def _cpu_s(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def ensure_database(url: str) -> None:
    """Create the PostgreSQL database ``url`` names if it does not exist."""
    ensure_postgres_database(url)


def data_dir_for(namespace: str) -> Path:
    """A benchmark's scratch directory: worker log, embedded Redis."""
    data_dir = Path(tempfile.gettempdir()) / f"outreach-bench-{namespace}"
    data_dir.mkdir(parents=True, exist_ok=True)
    return data_dir


def bench_environment(database_url: str, redis_url: str, namespace: str,
                      **overrides: str) -> dict[str, str]:
    """The ``OUTREACH_*`` variables of a benchmark, for its own process and its workers."""
    return {
        "OUTREACH_BROKER_URL": redis_url,
        "OUTREACH_DATABASE_URL": database_url,
        "OUTREACH_BROKER_NAMESPACE": namespace,
        "OUTREACH_DATA_DIR": str(data_dir_for(namespace)),
        "OUTREACH_TEMPLATES_DIR": str(BENCHMARKS_DIR.parent / "templates"),
        **UNBOUNDED_RATE_LIMITS,
        **overrides,
    }


def install(environment: dict[str, str]) -> Settings:
    """Make these settings this process's own: broker, database, actors moved over."""
    settings = settings_from_mapping(environment)
    runtime.install(settings)
    return settings


def fresh_schema() -> peewee.Database:
    """Drop and create every table of the bound database."""
    database = models.database_proxy.obj
    with database.connection_context():
        database.drop_tables(models.ALL_MODELS, safe=True, cascade=True)
    models.create_schema(database)
    return database


def truncate_all() -> None:
    """Empty every table (cheaper than dropping them while workers hold connections).

    Ids go on from where they were: a new row never shares an id, and so an
    idempotency key, with one that already ran.
    """
    tables = ", ".join(f'"{model._meta.table_name}"' for model in models.ALL_MODELS)
    models.database_proxy.obj.execute_sql(f"TRUNCATE {tables} CASCADE")


def seed_tenant(definition: dict) -> models.Plan:
    """The benchmark tenant, its verified sender and one plan."""
    models.Tenant.create(id=TENANT, name="Bench Inc.")
    models.SenderIdentity.create(tenant=TENANT, email=SENDER, name="Bench", verified=True)
    return models.Plan.create(tenant=TENANT, name=definition["name"], version=1,
                              definition=definition)


def seed_sent_messages(plan: models.Plan, prefix: str, run_ats: Sequence[datetime]) -> list[int]:
    """One enrolled contact per ``run_ats`` entry, its intro email sent, and its no_open timer.

    Rows are bulk-inserted as the engine would have written them after the send;
    returns the timers' ids.
    """
    now = models.utcnow()
    emails = [f"{prefix}-{n}@example.com" for n in range(len(run_ats))]
    models.Contact.insert_many([(TENANT, email) for email in emails],
                               fields=[models.Contact.tenant, models.Contact.email]).execute()
    contacts = dict(models.Contact.select(models.Contact.email, models.Contact.id)
                    .where(models.Contact.email.in_(emails)).tuples())
    Enrollment.insert_many(
        [(TENANT, plan.id, contacts[email], enrollment_key(TENANT, plan.name, contacts[email]),
          "intro")
         for email in emails],
        fields=[Enrollment.tenant, Enrollment.plan, Enrollment.contact, Enrollment.enrollment_key,
                Enrollment.current_node],
    ).execute()
    enrollments = dict(Enrollment.select(Enrollment.contact, Enrollment.id)
                       .where(Enrollment.contact.in_(list(contacts.values()))).tuples())
    OutboundMessage.insert_many(
        [(f"msg_{prefix}_{n}", TENANT, enrollments[contacts[email]], "intro", f"bench:{prefix}:{n}",
          OutboundMessage.SENT, email, SENDER, "Welcome", "<p>Hi</p>", "Hi", now)
         for n, email in enumerate(emails)],
        fields=[OutboundMessage.id, OutboundMessage.tenant, OutboundMessage.enrollment,
                OutboundMessage.node, OutboundMessage.dedupe_key, OutboundMessage.status,
                OutboundMessage.to_email, OutboundMessage.from_email, OutboundMessage.subject,
                OutboundMessage.html, OutboundMessage.text, OutboundMessage.sent_at],
    ).execute()
    keys = []
    rows = []
    for n, (email, run_at) in enumerate(zip(emails, run_ats, strict=True)):
        enrollment = enrollments[contacts[email]]
        keys.append(action_key(ScheduledAction.TIMEOUT, enrollment, "intro", "no_open", 0))
        rows.append((enrollment, "intro", ScheduledAction.TIMEOUT, "no_open", f"msg_{prefix}_{n}",
                     keys[-1], run_at))
    ScheduledAction.insert_many(
        rows,
        fields=[ScheduledAction.enrollment, ScheduledAction.node, ScheduledAction.kind,
                ScheduledAction.event, ScheduledAction.message, ScheduledAction.dedupe_key,
                ScheduledAction.run_at],
    ).execute()
    return [action_id for (action_id,) in ScheduledAction.select(ScheduledAction.id)
            .where(ScheduledAction.dedupe_key.in_(keys)).tuples()]


def finished(action_ids: Sequence[int]) -> int:
    """How many of these timers have fired or been skipped."""
    low, high = min(action_ids), max(action_ids)
    # One bulk insert gives consecutive ids: a range keeps this poll cheap.
    ids = (ScheduledAction.id.between(low, high) if high - low + 1 == len(action_ids)
           else ScheduledAction.id.in_(list(action_ids)))
    return ScheduledAction.select().where(
        ids, ScheduledAction.status.in_([ScheduledAction.DONE, ScheduledAction.SKIPPED]),
    ).count()


def clear_redis(client, *patterns: str) -> None:
    """Delete a benchmark's keys: idempotency marks of an earlier run would skip work."""
    for pattern in patterns:
        keys = list(client.scan_iter(match=pattern, count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start:start + 1000])


def in_threads(work: Callable[[], None], count: int, name: str) -> None:
    """Run ``work`` in ``count`` threads at once and wait for them all."""
    threads = [threading.Thread(target=work, name=f"{name}-{n}") for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def wait_until(condition: Callable[[], bool], *, timeout_s: float, what: str,
               interval_s: float = 0.02) -> float:
    """Poll ``condition`` until true; returns the monotonic time it became true."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout_s:.0f}s")
        time.sleep(interval_s)
    return time.monotonic()


class Subprocess:
    """A command of the package run as production runs it, in a subprocess of its own
    with the benchmark's environment, its output in a log under the data directory;
    ``start`` waits until ``ready`` says so, ``stop`` signals it to end.
    """

    #: What it is called in errors, its log's name, and the signal that ends it.
    name, log_name, stop_signal = "the subprocess", "subprocess.log", signal.SIGTERM

    def __init__(self, environment: dict[str, str]) -> None:
        self.environment = environment
        self.log_path = Path(environment["OUTREACH_DATA_DIR"]) / self.log_name
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout_s: float = 60) -> Self:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OUTREACH_")}
        env.update(self.environment)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(self.command(), env=env, stdout=log,
                                            stderr=subprocess.STDOUT, cwd=BENCHMARKS_DIR.parent)
        try:
            wait_until(self._ready, timeout_s=timeout_s, what=f"{self.name} start",
                       interval_s=0.1)
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"{self.name} did not start; see {self.log_path}") from None
        return self

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.process.returncode}; "
                               f"see {self.log_path}")
        return self.ready()

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class Workers(Subprocess):
    """``dramatiq outreach_actors [modules]`` in subprocesses, as production runs it.

    Parameters:
      environment: the ``OUTREACH_*`` variables the workers read.
      modules: more modules to import (the benchmark's own actors).
      processes, threads: the ``dramatiq`` CLI's ``-p`` and ``-t``.
    """

    READY = "is ready for action"
    name, log_name = "dramatiq workers", "workers.log"

    def __init__(self, environment: dict[str, str], *, modules: tuple[str, ...] = (),
                 processes: int = WORKER_PROCESSES, threads: int = WORKER_THREADS) -> None:
        super().__init__(environment)
        self.modules = modules
        self.processes = processes
        self.threads = threads

    def command(self) -> list[str]:
        return [sys.executable, "-m", "dramatiq", "outreach_actors", *self.modules,
                "--path", str(BENCHMARKS_DIR), "-p", str(self.processes), "-t", str(self.threads)]

    def ready(self) -> bool:
        return self.log_path.read_text(errors="replace").count(self.READY) >= self.processes

    def children(self) -> list[psutil.Process]:
        """The worker processes (the CLI's main process only supervises them)."""
        return psutil.Process(self.process.pid).children()

    def rss_mib(self) -> float:
        """The resident memory of the largest worker process, in MiB."""
        return max(child.memory_info().rss for child in self.children()) / 2**20


class WebServer(Subprocess):
    """``outreach serve`` (the standalone app on waitress) in a subprocess, as production
    runs it, on a free port of 127.0.0.1.

    Parameters:
      environment: the ``OUTREACH_*`` variables the server reads.
      threads: waitress's request threads (``--threads``).
    """

    # `outreach serve` ends on Ctrl-C, closing its database connections.
    name, log_name, stop_signal = "outreach serve", "web.log", signal.SIGINT

    def __init__(self, environment: dict[str, str], *, threads: int = DEFAULT_THREADS) -> None:
        super().__init__(environment)
        self.threads = threads
        self.port = free_port()

    def command(self) -> list[str]:
        return [sys.executable, "-m", "outreach_actors.cli", "serve", "--port", str(self.port),
                "--threads", str(self.threads)]

    def ready(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
        except OSError:
            return False
        return True


def _server_processes(name: str) -> list[psutil.Process]:
    return [process for process in psutil.process_iter(["name"])
            if (process.info["name"] or "").startswith(name)]


# A PostgreSQL backend's title: "postgres: 15/main: USER DATABASE HOST(PORT) STATE".
BACKEND_TITLE = re.compile(r"postgres: (?:\S+: )?\S+ (?P<database>\S+) \S+\(\d+\)")


def _postgres_processes(database: str | None) -> list[psutil.Process]:
    """PostgreSQL's processes; with ``database``, not the backends of other databases
    (other people's tests and benchmarks on this machine)."""
    processes = []
    for process in _server_processes("postgres"):
        try:
            title = " ".join(process.cmdline())
        except psutil.Error:  # ended meanwhile
            continue
        backend = BACKEND_TITLE.match(title)
        if database is None or backend is None or backend["database"] == database:
            processes.append(process)
    return processes


class CpuMeter:
    """The CPU each part of this machine spends from the meter's start, per item done.

    A throughput on a shared 2-core machine moves with the other load; where the
    CPU of an item goes does not, much, and it says what a ratio is made of. The
    parts: the workers (the CLI's main process, its workers and their render
    processes), PostgreSQL and Redis (every server process of theirs on this
    machine), this process (the
    benchmark: its dispatching and waiting, and the SendGrid stand-in's threads),
    and the machine as a whole (all time not idle, not waiting on disk, not stolen
    by the hypervisor), and any other process of the benchmark's (``others``: a web
    server in a process of its own). With ``database``, PostgreSQL's backends of other
    databases are left out: they serve other people on a shared machine. Processes are
    listed again at the end, so a PostgreSQL backend that connected meanwhile counts.
    Beside them, the time the machine's
    CPUs stood idle (or waited on disk) and the time the hypervisor took for other
    guests ("stolen"): a phase whose throughput fell while its CPU per item did not
    was starved (stolen) or could not keep the CPUs busy (idle).
    """

    PARTS = ("workers", "PostgreSQL", "Redis", "this process", "machine", "idle", "stolen")

    def __init__(self, workers: Workers, *, others: dict[str, int] | None = None,
                 database: str | None = None) -> None:
        self.workers = workers
        # Only this database's backends count (and PostgreSQL's own processes).
        self.database = database
        # More processes of the benchmark's own, by part name -> pid (a web server).
        self.others = dict(others or {})
        self.parts = (*self.PARTS[:4], *self.others, *self.PARTS[4:])
        self.started = self._read()

    def _processes(self) -> dict[str, list[psutil.Process]]:
        return {
            # Their render processes too: forked from a server that a worker starts,
            # they are not its children, and rendered an email for as much CPU as it sent.
            "workers": [main := psutil.Process(self.workers.process.pid),
                        *main.children(recursive=True)],
            "PostgreSQL": _postgres_processes(self.database),
            "Redis": _server_processes("redis-server"),
            "this process": [psutil.Process()],
            **{part: [psutil.Process(pid)] for part, pid in self.others.items()},
        }

    def _read(self) -> dict[str, dict[int, float]]:
        seconds: dict[str, dict[int, float]] = {}
        for part, processes in self._processes().items():
            seconds[part] = {}
            for process in processes:
                try:
                    times = process.cpu_times()
                except psutil.Error:  # ended meanwhile
                    continue
                seconds[part][process.pid] = times.user + times.system
        machine = psutil.cpu_times()
        seconds["machine"] = {0: machine.user + machine.nice + machine.system
                              + machine.irq + machine.softirq}
        seconds["idle"] = {0: machine.idle + machine.iowait}
        seconds["stolen"] = {0: machine.steal}
        return seconds

    def spent(self) -> dict[str, float]:
        """Seconds of CPU each part spent since the start."""
        ended = self._read()
        return {part: sum(seconds - self.started[part].get(pid, 0.0)
                          for pid, seconds in ended[part].items())
                for part in self.parts}

    def ms_per_item(self, items: int) -> dict[str, float]:
        """Milliseconds of CPU each part spent per item since the start."""
        return {part: seconds / items * 1e3 for part, seconds in self.spent().items()}


def cpu_split(ms_per_item: dict[str, float]) -> str:
    return ", ".join(f"{part} {ms:.2f}" for part, ms in ms_per_item.items())


def command_line(run: Callable[[bool], dict[str, dict]], doc: str, *, quick_help: str) -> None:
    """The command line of a benchmark module: ``--quick``, ``--json``, or each figure
    printed beside its reference."""
    import argparse
    import json

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    options = parser.parse_args()
    figures = run(options.quick)
    if options.json:
        print(json.dumps(figures))
        return
    for name, measured in figures.items():
        print(f"{name}: {measured['value']:,} {measured['unit']} "
              f"(reference {measured['reference']:,}, ratio {measured['ratio']})")
