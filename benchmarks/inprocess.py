"""CPU cost of the domain alone: one email rendered and sent, one timer fired, no Dramatiq.

A diagnostic for the pipeline benchmark (not a figure run.py reports): it calls
``delivery.render_action`` and ``delivery.send_message`` for N fresh enrollments,
then ``timers.fire_timeouts`` over N due timers in batches, in this process on
PostgreSQL, and prints the CPU time (``time.process_time``), the SQL statements and
the CPU of the PostgreSQL backend serving this process, per email and per timer.
The SendGrid stand-in runs in this process too, so its share of an HTTP request
counts. ``--profile`` adds cProfile's top functions.

Usage: python benchmarks/inprocess.py [--count N] [--batch N] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections.abc import Callable
from contextlib import contextmanager

import _common
import psutil
from pipeline import sample_plan

from outreach_actors.dev.standin import SendGridStandIn
from outreach_actors.domain import dispatch, engine
from outreach_actors.domain import mail as delivery
from outreach_actors.domain.store import models
from outreach_actors.domain.timers import fire_timeouts
from outreach_actors.settings import Settings

# Beside the benchmarks' database, named after it (BENCH_DATABASE_URL moves both).
DATABASE_URL = _common.DATABASE_URL + "_inprocess"
API_KEY = "SG.bench-key"


@contextmanager
def counted_statements(counter: list[int]):
    """Count the SQL statements the bound database runs inside the block."""
    database = models.database_proxy.obj
    original = database.execute_sql

    def counting(sql, params=None, *args, **kwargs):
        counter[0] += 1
        return original(sql, params, *args, **kwargs)

    database.execute_sql = counting
    try:
        yield
    finally:
        del database.execute_sql


def backend_cpu_s(backend: psutil.Process) -> float:
    times = backend.cpu_times()
    return times.user + times.system


def measure(work: Callable[[], None], count: int, profile: bool, what: str) -> None:
    statements = [0]
    profiler = cProfile.Profile() if profile else None
    pid = models.database_proxy.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
    backend = psutil.Process(pid)
    with counted_statements(statements):
        started, backend_started = time.process_time(), backend_cpu_s(backend)
        if profiler:
            profiler.enable()
        work()
        if profiler:
            profiler.disable()
        cpu_s = time.process_time() - started
        backend_s = backend_cpu_s(backend) - backend_started
    print(f"{what}: {cpu_s / count * 1e3:.2f} ms CPU, {statements[0] / count:.2f} SQL "
          f"statements and {backend_s / count * 1e3:.2f} ms of PostgreSQL CPU each "
          f"({count}{', under cProfile' if profile else ''})")
    if profiler:
        pstats.Stats(profiler).sort_stats("tottime").print_stats(20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=300, help="emails, and timers")
    parser.add_argument("--batch", type=int, default=Settings().timeout_batch_size,
                        help="timers per fire_timeouts call (default: OUTREACH_TIMEOUT_BATCH_SIZE's)")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions")
    options = parser.parse_args()
    _common.ensure_database(DATABASE_URL)
    with SendGridStandIn(api_key=API_KEY) as standin:
        environment = _common.bench_environment(
            DATABASE_URL, "stub://", "outreach-bench-inprocess",
            OUTREACH_SENDGRID_API_KEY=API_KEY, OUTREACH_SENDGRID_API_HOST=standin.host,
        )
        settings = _common.install(environment)
        from outreach_actors.providers.sendgrid.client import sendgrid_client_from_settings

        database = _common.fresh_schema()
        with database.connection_context():
            _common.seed_tenant(sample_plan())
            with models.database_proxy.atomic():
                for n in range(options.count):
                    engine.enroll(_common.TENANT, f"contact-{n}@example.com", "onboarding",
                                  fields={"first_name": f"Ada{n}"})
            sends: list[int] = []
            dispatch.dispatch_due_actions(
                lambda due: sends.extend(action.id for action, _ in due), settings=settings)
            client = sendgrid_client_from_settings(settings)

            def emails() -> None:
                for action_id in sends:
                    delivery.send_message(delivery.render_action(action_id), client)

            measure(emails, len(sends), options.profile, "email (render + send)")
            if len(standin.messages) != len(sends):
                raise RuntimeError(f"{len(standin.messages)} mails reached the stand-in, "
                                   f"expected {len(sends)}")

            _common.truncate_all()
            plan = _common.seed_tenant(sample_plan())
            timer_ids = _common.seed_sent_messages(plan, "quiet", [models.utcnow()] * options.count)

            def fire() -> None:
                for start in range(0, len(timer_ids), options.batch):
                    fire_timeouts(timer_ids[start:start + options.batch])

            measure(fire, len(timer_ids), options.profile, f"timer (batches of {options.batch})")
            if _common.finished(timer_ids) != len(timer_ids):
                raise RuntimeError("not every timer fired")
        database.close_all()


if __name__ == "__main__":
    main()
