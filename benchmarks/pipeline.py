"""Benchmark of the campaign pipeline: emails rendered and sent, and timeouts fired, per second.

Everything is real except SendGrid: ``dramatiq outreach_actors`` worker processes
(2 processes x 8 threads, the CLI's defaults on this 2-core machine) on a Redis
broker, PostgreSQL, and the real ``sendgrid`` client posting to the SendGrid
stand-in over HTTP. This process plays the dispatcher (``dispatch_due_actions``,
what the ``dispatch_due`` actor runs) and watches the database.

- emails_per_s: N contacts are enrolled in the sample plan (templates/onboarding.yaml,
  send window removed so that every first send is due now); from the dispatch of
  their send actions until all N messages are ``sent``. Rate limits are raised so
  that they do not bind.
- noop_chain_per_s, the reference: N two-actor pipelines of actors that do nothing,
  on the same workers, broker and middleware; from the first enqueue until both
  queues are empty. The target is emails_per_s >= noop_chain_per_s / 2 (issue #25).
- Each of the two is timed right after a warm-up of its queues (see warm_up): the
  figures are throughput, not the latency of a worker's first look at an idle queue.
- The two are measured in alternation, ``--rounds`` times (5 by default): on a
  shared machine one phase can catch a slow spell the other misses, and a single
  pair moved the ratio by a quarter between runs (the CPU an email costs moved by a
  third between the rounds of one run). Each round prints its pair; the figures are
  the medians of the rounds, the ratio the median of their ratios.
- Each round also prints where the CPU of an email and of a chain went (CpuMeter: the
  workers, PostgreSQL (the backends of the benchmark's database), Redis, this process with the stand-in, the machine; and the CPU
  time left idle, and stolen by the hypervisor). The machine is CPU-bound in both
  phases, so the ratio follows the CPU per item; the split says which part of an
  email's cost a change moved.
- timeouts_per_s: N sent messages each with a due ``no_open`` timer (a move to the
  ``bump`` email node); from their dispatch until the ``fire_timeouts`` actor has
  fired all N. Measured in each round, after its pair; the figure is the median of
  the rounds (one measurement moved by a third between runs). The target is 5,000
  per second. Each round prints how many bumps reached the stand-in before the last
  timer fired: the fired timers' bumps are rendered and sent by the worker threads
  left free, and a round whose window holds some of them is the slower (see
  README.md).

Usage: python benchmarks/pipeline.py [--quick] [--json] [--rounds N] [--profile DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import _common
import dramatiq
import redis

from outreach_actors.dev.standin import SendGridStandIn
from outreach_actors.domain import dispatch, engine
from outreach_actors.domain.plans import validate_plan
from outreach_actors.domain.store import models
from outreach_actors.domain.store.models import Enrollment, OutboundMessage, utcnow
from outreach_actors.settings import Settings
from outreach_actors.worker.actors.mail import enqueue_actions, render_batch, send

NAMESPACE = "outreach-bench-pipeline"
NOOP_QUEUES = ("bench_noop_first", "bench_noop_second")
API_KEY = "SG.bench-key"
TIMEOUTS_TARGET_PER_S = 5000
EMAILS_TARGET_RATIO = 0.5  # issue #25
PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")


@dataclass(frozen=True)
class Size:
    emails: int
    noop_chains: int
    timeouts: int


@dataclass(frozen=True)
class Round:
    """One alternation: the throughputs, and the CPU per item of each phase by part of
    the machine (CpuMeter.PARTS, in ms)."""

    emails_per_s: float
    noop_per_s: float
    email_cpu: dict[str, float]
    noop_cpu: dict[str, float]
    timeouts_per_s: float
    timeout_cpu: dict[str, float]
    bumps_in_window: int


ROUNDS = 5
FULL = Size(emails=3000, noop_chains=6000, timeouts=6000)
QUICK = Size(emails=400, noop_chains=1500, timeouts=3000)


@dramatiq.actor(queue_name=NOOP_QUEUES[0])
def noop_first(n: int) -> int:
    """First link of the reference chain: hands its argument on."""
    return n


@dramatiq.actor(queue_name=NOOP_QUEUES[1])
def noop_second(n: int) -> None:
    """Second link of the reference chain: does nothing."""


def sample_plan() -> dict:
    """The sample plan as the README shows it, without its send window."""
    text = (_common.BENCHMARKS_DIR.parent / "templates" / "onboarding.yaml").read_text()
    definition = validate_plan(text).to_definition()
    definition.pop("send_window", None)
    return definition


def warm_up(broker: dramatiq.Broker, queues: tuple[str, ...], send_one: Callable[[int], None],
            idle_poll_s: float) -> None:
    """Feed ``queues`` a trickle of cheap messages for longer than the workers' idle poll
    interval, then wait until they are empty: every consumer has just fetched, so the
    timed phase that follows does not begin with consumers still waiting out an idle
    interval (up to OUTREACH_WORKER_IDLE_POLL_INTERVAL, 1 s, on each of the two queues
    of a chain). That wait is a latency, not throughput, and it weighed more on the
    shorter phase."""
    until, n = time.monotonic() + 1.5 * idle_poll_s, 0
    while time.monotonic() < until:
        n += 1
        send_one(n)
        time.sleep(0.02)
    _common.wait_until(lambda: all(broker.do_qsize(queue) == 0 for queue in queues),
                       timeout_s=60, what="the warm-up", interval_s=0.005)


def measure_noop_chains(broker: dramatiq.Broker, workers: _common.Workers, count: int,
                        idle_poll_s: float, database: str) -> tuple[float, dict[str, float]]:
    """No-op chains per second, and the CPU of a chain (see CpuMeter)."""
    warm_up(broker, NOOP_QUEUES, lambda n: dramatiq.pipeline(
        [noop_first.message(-n), noop_second.message()]).run(), idle_poll_s)
    cpu = _common.CpuMeter(workers, database=database)  # listing processes: not timed
    started = time.monotonic()
    for n in range(count):
        dramatiq.pipeline([noop_first.message(n), noop_second.message()]).run()
    finished = _common.wait_until(
        lambda: all(broker.do_qsize(queue) == 0 for queue in NOOP_QUEUES),
        timeout_s=300, what=f"{count} no-op chains",
    )
    return count / (finished - started), cpu.ms_per_item(count)


def measure_emails(settings: Settings, standin: SendGridStandIn, workers: _common.Workers,
                   count: int, database: str) -> tuple[float, dict[str, float]]:
    """Emails per second, and the CPU of an email (see CpuMeter); the database and the
    stand-in must hold no earlier email."""
    standin.reset()
    with models.database_proxy.atomic():
        for n in range(count):
            engine.enroll(_common.TENANT, f"contact-{n}@example.com", "onboarding",
                          fields={"first_name": f"Ada{n}"})
    sent = OutboundMessage.select().where(OutboundMessage.status == OutboundMessage.SENT)
    # Renders of actions that do not exist: each finds nothing to render, and so
    # enqueues no send; a send of no message returns at once. No email, no row.
    def warm_up_one(n: int) -> None:
        render_batch.send([-n])
        send.send(None)

    warm_up(dramatiq.get_broker(), (render_batch.queue_name, send.queue_name), warm_up_one,
            settings.worker_idle_poll_interval.total_seconds())
    cpu = _common.CpuMeter(workers, database=database)  # listing processes: not timed
    started = time.monotonic()
    dispatch.dispatch_due_actions(enqueue_actions, settings=settings)
    # Watched through the stand-in, in this process, until every mail reached it; only
    # then through the database. Counting the sent rows every 50 ms throughout cost this
    # process and PostgreSQL about 2% of an email's CPU, which the no-op chain, watched
    # through two Redis LLENs, did not pay.
    _common.wait_until(lambda: len(standin.messages) >= count, timeout_s=600,
                       what=f"{count} emails at the stand-in", interval_s=0.02)
    finished = _common.wait_until(lambda: sent.count() >= count, timeout_s=60,
                                  what=f"{count} emails sent", interval_s=0.005)
    if len(standin.messages) != count or sent.count() != count:
        raise RuntimeError(f"{len(standin.messages)} mails reached the stand-in and "
                           f"{sent.count()} are sent, expected {count}")
    return count / (finished - started), cpu.ms_per_item(count)


def measure_timeouts(settings: Settings, standin: SendGridStandIn, plan: models.Plan, count: int,
                     workers: _common.Workers, database: str) -> tuple[float, dict[str, float], int]:
    """Timeouts per second, the CPU of a timeout (with its share of the bumps rendered
    and sent meanwhile; see CpuMeter), and how many bumps reached the stand-in before
    the last timer fired: what moves the figure between rounds."""
    standin.reset()
    now = utcnow()
    timers = _common.seed_sent_messages(plan, "quiet", [now] * count)
    cpu = _common.CpuMeter(workers, database=database)
    # As the dispatcher runs in production: a claim of OUTREACH_DISPATCH_BATCH_SIZE at a
    # time, each enqueued before the next, so the workers start on the first while it
    # claims the rest (one claim of them all kept the workers waiting for it).
    # The bump sends the fired timers create are enqueued by their workers once each
    # batch commits; a later claim that takes one of them first enqueues it instead.
    started = time.monotonic()
    dispatch.dispatch_due_actions(enqueue_actions, settings=settings)
    finished = _common.wait_until(lambda: _common.finished(timers) >= count, timeout_s=600,
                                  what=f"{count} timeouts fired", interval_s=0.05)
    spent = cpu.ms_per_item(count)
    bumps_in_window = len(standin.messages)
    synthetic = models.MessageEvent.select().where(models.MessageEvent.type == "no_open").count()
    moved = Enrollment.select().where(Enrollment.current_node == "bump").count()
    if synthetic != count or moved != count:
        raise RuntimeError(f"{synthetic} no_open events and {moved} moves, expected {count}")
    # The bumps are let finish (untimed): the next round empties the tables they write.
    bumps = models.OutboundMessage.select().where(
        models.OutboundMessage.node == "bump", models.OutboundMessage.status == "sent")
    _common.wait_until(lambda: bumps.count() >= count, timeout_s=600, what=f"{count} bumps sent")
    return count / (finished - started), spent, bumps_in_window


def profiled(workers: _common.Workers, profile_dir: Path | None, name: str) -> ExitStack:
    """py-spy records every worker process while the block runs (when asked)."""
    stack = ExitStack()
    if profile_dir is None:
        return stack
    profile_dir.mkdir(parents=True, exist_ok=True)
    for child in workers.children():
        process = subprocess.Popen(
            [PY_SPY, "record", "--pid", str(child.pid), "--rate", "200", "--gil", "--format", "raw",
             "--output", str(profile_dir / f"{name}-{child.pid}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stack.callback(_stop_profiler, process)
    return stack


def _stop_profiler(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGINT)
    process.wait(timeout=30)


def run(quick: bool, database_url: str = _common.DATABASE_URL,
        redis_url: str = _common.REDIS_URL, profile_dir: Path | None = None,
        processes: int = _common.WORKER_PROCESSES,
        threads: int = _common.WORKER_THREADS, rounds: int = ROUNDS,
        on_round: Callable[[int, Round], None] | None = None) -> dict[str, dict]:
    """Every figure as {"value", "unit", "reference", "ratio"}; ``on_round`` is told
    each round as it ends."""
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    size = QUICK if quick else FULL
    _common.ensure_database(database_url)
    # PostgreSQL's CPU is that of this database's backends: on a shared machine the
    # backends of other people's databases moved the split by a third.
    database_name = urlparse(database_url).path.lstrip("/")
    client = redis.Redis.from_url(redis_url)
    _common.clear_redis(client, f"{NAMESPACE}*")
    state_keys = (f"{NAMESPACE}:idempotency:*", f"{NAMESPACE}:ratelimit:*")
    with SendGridStandIn(api_key=API_KEY) as standin:
        environment = _common.bench_environment(
            database_url, redis_url, NAMESPACE,
            OUTREACH_SENDGRID_API_KEY=API_KEY, OUTREACH_SENDGRID_API_HOST=standin.host,
        )
        settings = _common.install(environment)
        broker = dramatiq.get_broker()
        database = _common.fresh_schema()
        measured: list[Round] = []
        try:
            with database.connection_context(), _common.Workers(
                environment, modules=("pipeline",), processes=processes, threads=threads,
            ) as workers:
                def fresh_tenant() -> models.Plan:
                    """Empty tables and rate-limit/idempotency state; the tenant's plan."""
                    _common.truncate_all()
                    _common.clear_redis(client, *state_keys)
                    return _common.seed_tenant(sample_plan())

                for round_number in range(1, rounds + 1):
                    fresh_tenant()
                    noop_per_s, noop_cpu = measure_noop_chains(
                        broker, workers, size.noop_chains,
                        settings.worker_idle_poll_interval.total_seconds(), database_name)
                    _common.clear_redis(client, *state_keys)
                    with profiled(workers, profile_dir, f"emails-{round_number}"):
                        emails_per_s, email_cpu = measure_emails(
                            settings, standin, workers, size.emails, database_name)
                    plan = fresh_tenant()
                    with profiled(workers, profile_dir, f"timeouts-{round_number}"):
                        timeouts_per_s, timeout_cpu, bumps_in_window = measure_timeouts(
                            settings, standin, plan, size.timeouts, workers, database_name)
                    measured.append(Round(emails_per_s, noop_per_s, email_cpu, noop_cpu,
                                          timeouts_per_s, timeout_cpu, bumps_in_window))
                    if on_round:
                        on_round(round_number, measured[-1])
        finally:
            database.close_all()
            _common.clear_redis(client, f"{NAMESPACE}*")
    emails_per_s = statistics.median(r.emails_per_s for r in measured)
    noop_per_s = statistics.median(r.noop_per_s for r in measured)
    timeouts_per_s = statistics.median(r.timeouts_per_s for r in measured)
    return {
        "emails_per_s": _common.figure(
            round(emails_per_s, 1), "emails/s", round(noop_per_s, 1),
            ratio=statistics.median(r.emails_per_s / r.noop_per_s for r in measured)),
        "noop_chain_per_s": _common.figure(round(noop_per_s, 1), "chains/s", None),
        "timeouts_per_s": _common.figure(
            round(timeouts_per_s, 1), "timeouts/s", TIMEOUTS_TARGET_PER_S),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller run (about 30 s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--database-url", default=_common.DATABASE_URL)
    parser.add_argument("--redis-url", default=_common.REDIS_URL)
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="record each worker with py-spy into DIR (raw stacks)")
    parser.add_argument("--processes", type=int, default=_common.WORKER_PROCESSES,
                        help="worker processes (dramatiq -p)")
    parser.add_argument("--threads", type=int, default=_common.WORKER_THREADS,
                        help="threads per worker process (dramatiq -t)")
    parser.add_argument("--rounds", type=int, default=ROUNDS,
                        help="alternating no-op and email measurements (medians are reported)")
    options = parser.parse_args()

    def print_round(number: int, measured: Round) -> None:
        if not options.json:
            print(f"round {number}: emails {measured.emails_per_s:.1f}/s, no-op chains "
                  f"{measured.noop_per_s:.1f}/s, ratio "
                  f"{measured.emails_per_s / measured.noop_per_s:.3f}; timeouts "
                  f"{measured.timeouts_per_s:.1f}/s ({measured.bumps_in_window} bumps sent "
                  "before the last timer fired)\n"
                  f"  CPU ms per email: {_common.cpu_split(measured.email_cpu)}\n"
                  f"  CPU ms per chain: {_common.cpu_split(measured.noop_cpu)}\n"
                  f"  CPU ms per timeout: {_common.cpu_split(measured.timeout_cpu)}", flush=True)

    figures = run(options.quick, options.database_url, options.redis_url, options.profile,
                  options.processes, options.threads, options.rounds, print_round)
    if options.json:
        print(json.dumps(figures))
        return
    size = QUICK if options.quick else FULL
    emails, noop, timeouts = (figures[name] for name in
                              ("emails_per_s", "noop_chain_per_s", "timeouts_per_s"))
    print(f"workers: dramatiq, {options.processes} processes x {options.threads} threads; "
          "Redis broker; PostgreSQL")
    print(f"noop_chain_per_s {noop['value']} chains/s ({size.noop_chains} chains; "
          f"median of {options.rounds} rounds)")
    print(f"emails_per_s     {emails['value']} emails/s ({size.emails} emails; median), "
          f"{emails['ratio']} of the no-op chain, the median of the rounds' ratios "
          f"(target {EMAILS_TARGET_RATIO:.2f})")
    print(f"timeouts_per_s   {timeouts['value']} timeouts/s ({size.timeouts} timers; median), "
          f"{timeouts['ratio']} of the target {TIMEOUTS_TARGET_PER_S}/s")


if __name__ == "__main__":
    main()
