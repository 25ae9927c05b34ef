"""What idle workers cost: CPU of ``dramatiq outreach_actors`` with nothing to do.

A diagnostic (not a figure run.py reports, and no target): it starts the workers as
pipeline.py does (2 processes x 8 threads, Redis broker, PostgreSQL), lets them
settle, then measures for ``--seconds`` the CPU of the worker processes and of the
Redis server (psutil), and the scripts the workers ran in Redis (``INFO
commandstats``: each look at an empty queue is one). Every consumer of an empty
queue looks again after OUTREACH_WORKER_IDLE_POLL_INTERVAL, the timer queue's after
OUTREACH_WORKER_POLL_INTERVAL; set either in the environment to compare.

Usage: python benchmarks/idle.py [--seconds N]
"""

from __future__ import annotations

import argparse
import os
import time

import _common
import redis

NAMESPACE = "outreach-bench-idle"
SETTLE_S = 5


def scripts_run(client: redis.Redis) -> int:
    return client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20, help="how long to measure")
    options = parser.parse_args()
    polling = {name: os.environ[name] for name in (
        "OUTREACH_WORKER_POLL_INTERVAL", "OUTREACH_WORKER_IDLE_POLL_INTERVAL")
        if name in os.environ}
    environment = _common.bench_environment(_common.DATABASE_URL, _common.REDIS_URL,
                                            NAMESPACE, **polling)
    _common.install(environment)
    _common.ensure_database(_common.DATABASE_URL)
    client = redis.Redis.from_url(_common.REDIS_URL)
    try:
        with _common.Workers(environment, modules=("pipeline",)) as workers:
            time.sleep(SETTLE_S)
            meter, scripts_before = _common.CpuMeter(workers), scripts_run(client)
            time.sleep(options.seconds)
            spent, scripts = meter.spent(), scripts_run(client) - scripts_before
    finally:
        _common.clear_redis(client, f"{NAMESPACE}*")
    workers_cpu, redis_cpu = (spent[part] / options.seconds for part in ("workers", "Redis"))
    scripts /= options.seconds
    print(f"polling: {polling or 'the defaults'}; workers: dramatiq, "
          f"{_common.WORKER_PROCESSES} processes x {_common.WORKER_THREADS} threads, idle")
    print(f"worker_cpu_cores   {workers_cpu:.3f} (the CLI's main process and its workers)")
    print(f"redis_cpu_cores    {redis_cpu:.3f} (every redis-server on this machine)")
    print(f"redis_scripts_per_s {scripts:.0f}")


if __name__ == "__main__":
    main()
