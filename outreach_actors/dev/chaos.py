"""A chaos run: one campaign on real workers, broker and database under faults, then an audit.

What production runs, on this machine: a Redis broker with append-only
persistence (the embedded server), or RabbitMQ with that Redis holding the
limiter and lease state; PostgreSQL (a server of the run's own, see
``postgres_server.py``); two ``dramatiq outreach_actors`` worker processes, the
webhook endpoint, the real ``sendgrid`` client. The faults: workers killed with
SIGKILL at random intervals and restarted, the SendGrid stand-in failing a share
of sends with 500/429 and dropping a share of connections after accepting the
mail (the ambiguous case), the Redis server killed once mid-run and started
again on its append-only file, PostgreSQL stopped once as a crash would stop it
(``immediate``: every connection cut) and started again, every webhook batch
posted twice with its events out of order. Under those faults run the newer
flows (``chaos_flows.py``): the host's ``trial_started`` and ``purchased`` events
POSTed to ``/events`` twice and out of order (some while PostgreSQL is down),
replies and out-of-office answers posted twice to Inbound Parse, a split, a
goal, a plan-wide pause, a pause of a few enrollments, a migration of every
enrollment in flight to a new plan version, and host notifications sent to a
recording actor (``chaos_notify.py``).

The dispatcher and the reconciler run in this process, in the campaign loop,
rather than under ``periodiq``: the loop is then the only clock, its pace (every
0.25 s, the reconciler every second) is what the short leases assume, and the
seed fixes the kill intervals and the stand-in's draws. Then the audit
(``outreach_actors/audit.py``) counts every breach of the invariants in
DESIGN.md. Used by ``benchmarks/chaos.py`` and ``tests/test_chaos.py``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from wsgiref.simple_server import make_server

import dramatiq
import peewee
import redis

from outreach_actors.dev import chaos_notify
from outreach_actors.dev.audit import Audit, FlowRecord, audit_campaign
from outreach_actors.dev.chaos_flows import OperatorFlows, PurchasePoster, ReplyPoster
from outreach_actors.dev.chaos_notify import ReceivedNotification
from outreach_actors.dev.postgres_server import ThrowawayPostgres
from outreach_actors.dev.simulation import EngagementSimulator, persona_of
from outreach_actors.dev.standin import SendGridStandIn
from outreach_actors.dev.webhook_events import generate_webhook_keys
from outreach_actors.domain import dispatch, engine, host_events, ingest, notifications
from outreach_actors.domain.mail import ambiguous
from outreach_actors.domain.plans import validate_plan
from outreach_actors.domain.store import models
from outreach_actors.domain.store.db import ensure_postgres_database
from outreach_actors.domain.store.models import (
    Enrollment,
    OutboundMessage,
    ScheduledAction,
    WebhookDelivery,
    utcnow,
)
from outreach_actors.domain.suppressions import suppress
from outreach_actors.settings import Settings, configure, get_settings, settings_from_mapping
from outreach_actors.web.app import QuietHandler, ThreadingWSGIServer, make_app
from outreach_actors.web.endpoints import INBOUND_PATH
from outreach_actors.worker.actors.mail import (
    enqueue_actions,
    enqueue_send,
    requeue_actions,
    requeue_send,
)
from outreach_actors.worker.actors.replies import enqueue_inbound_post
from outreach_actors.worker.actors.webhooks import enqueue_delivery
from outreach_actors.worker.embedded import (
    EmbeddedRedis,
    ensure_embedded_redis,
    stop_embedded_redis,
)
from outreach_actors.worker.runtime import rebind_actors

logger = logging.getLogger(__name__)

TENANT = "chaos"
PLAN_NAME = "chaos"
INBOUND_DOMAIN = "reply.chaos.outreach.test"
SENDER = "team@chaos.outreach.test"
API_KEY = "SG.chaos-key"
# Four email nodes, a split, a goal and a host event; seconds-long timers, every path
# ends at an exit node. Each persona takes another path: clickers intro -> pick (a split:
# arm a -> thanks, arm b -> thanks_b) -> done; openers intro -> bump -> pick -> ... ->
# done (intro's no_open is skipped on their open, its no_click fires); ignorers intro ->
# bump -> gave_up; bouncers intro -> bounced. Purchasers (every PURCHASE_EVERY-th
# contact, whatever their persona) send `trial_started` (to thanks, from intro or bump)
# and `purchased` (the goal: converted, from any node).
PLAN = """
name: chaos
start: intro
events: [trial_started, purchased]
goals: [{on: purchased, if: "event.amount >= 10"}]
nodes:
  intro:
    type: email
    subject: "Hello {{ contact.first_name }}"
    body: "<p>Hi {{ contact.first_name }}, <a href='https://example.com/intro'>look</a>.</p>"
    transitions:
      - {on: click, to: pick}
      - {on: trial_started, to: thanks}
      - {on: bounce, to: bounced}
      - {on: no_open, after: PT3S, to: bump}
      - {on: no_click, after: PT4S, to: bump}
  bump:
    type: email
    subject: "Did you see this?"
    body: "<p>A bump. <a href='https://example.com/bump'>look</a></p>"
    transitions:
      - {on: click, to: pick}
      - {on: open, to: pick}
      - {on: trial_started, to: thanks}
      - {on: bounce, to: bounced}
      - {on: no_open, after: PT3S, to: gave_up}
  pick:
    type: split
    arms:
      - {weight: 1, to: thanks, name: a}
      - {weight: 1, to: thanks_b, name: b}
  thanks:
    type: email
    subject: "Thanks, {{ contact.first_name }}"
    body: "<p>Thank you. <a href='https://example.com/thanks'>more</a></p>"
    transitions:
      - {on: open, to: done}
      - {on: bounce, to: bounced}
      - {on: no_open, after: PT3S, to: done}
  thanks_b:
    type: email
    subject: "Many thanks, {{ contact.first_name }}"
    body: "<p>Thank you! <a href='https://example.com/thanks-b'>more</a></p>"
    transitions:
      - {on: open, to: done}
      - {on: bounce, to: bounced}
      - {on: no_open, after: PT3S, to: done}
  done: {type: exit}
  gave_up: {type: exit}
  bounced: {type: exit}
"""
# The version every enrollment in flight is migrated to mid-run: the same nodes (no
# mapping needed), another bump and longer timers on the thanks emails.
PLAN_V2 = (PLAN.replace('"Did you see this?"', '"Did you see this (v2)?"')
           .replace("- {on: no_open, after: PT3S, to: done}",
                    "- {on: no_open, after: PT4S, to: done}"))
# Repliers open and write back (their reply ends the sequence: a plan's default goal);
# vacationers answer out of office and otherwise ignore their mail.
PERSONA_MIX = (("clicker", 3), ("opener", 3), ("ignorer", 3), ("bouncer", 1), ("replier", 1),
               ("vacationer", 1))
# Rate limits far above what the run sends: limits are not under test here.
UNBOUNDED = "100000000"
ENROLL_CHUNK = 500
LOOP_PAUSE_S = 0.25
RECONCILE_EVERY_S = 1.0
RESTART_PAUSE_S = 0.5
# How old a host event left unprocessed, or a notification left unsent, must be before
# the loop does what the periodic job would: past the Redis client's retries (an
# after-commit send may wait that long on a broker that is down, then succeed).
LEFT_PENDING = timedelta(seconds=8)
WORKER_READY = "is ready for action"
IN_FLIGHT = (OutboundMessage.RENDERED, OutboundMessage.SENDING, OutboundMessage.AMBIGUOUS)


@dataclass(frozen=True)
class ChaosConfig:
    """What to run and which faults to inject.

    Parameters:
      database_url: a PostgreSQL database of the run's own; its tables are dropped first.
        None (the default): a PostgreSQL server of the run's own, which the
        ``postgres_restart`` fault needs (restarting a shared server would break its
        other users).
      broker: "redis" (the embedded server is the broker) or "rabbitmq" (``rabbitmq_url``,
        whose queues the run purges; the embedded Redis then holds only the state).
      data_dir: where the Redis server, the worker logs and the templates directory go.
      enrollments: contacts enrolled, personas in PERSONA_MIX order.
      suppressed: how many of them are suppressed before enrollment.
      failure_rate, drop_rate: the stand-in's share of sends answered 500/429, and of
        accepted mails whose connection is dropped unanswered.
      kill_every_s: a worker is killed every uniform(low, high) seconds.
      redis_restart: "kill" (SIGKILL: the append-only file, fsynced every second, may
        lose the last second of writes) or "shutdown" (clean, nothing lost).
      redis_down_s: how long the Redis server stays down: longer than the Redis
        client's own retries (about 4 s), so that enqueues fail and are recovered.
      postgres_restart: "immediate" (a crash), "fast" (a clean stop) or None (no fault).
      postgres_down_s: how long PostgreSQL stays down.
      time_limit_s: the campaign's limit; drain_limit_s: the wait for the system to
        settle after it (deliveries processed, timers closed).
      worker_processes, worker_threads: ``dramatiq`` processes, each ``-p 1 -t N``.
      action_lease, ambiguous_send_window: ISO-8601, short so that recovery is seen.
      purchase_every: every Nth contact purchases (its host events are POSTed to /events).
      pause_hold_s: how long the plan-wide pause, and the pause of a few enrollments, last.
      paused_contacts: how many enrollments are paused and resumed one by one.
    """

    data_dir: Path
    database_url: str | None = None
    broker: Literal["redis", "rabbitmq"] = "redis"
    rabbitmq_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    enrollments: int = 2000
    suppressed: int = 20
    seed: int = 7
    failure_rate: float = 0.10
    drop_rate: float = 0.02
    kill_every_s: tuple[float, float] = (3.0, 8.0)
    redis_restart: Literal["kill", "shutdown"] = "kill"
    redis_down_s: float = 5.0
    postgres_restart: Literal["immediate", "fast"] | None = "immediate"
    postgres_down_s: float = 3.0
    time_limit_s: float = 600.0
    drain_limit_s: float = 60.0
    worker_processes: int = 2
    worker_threads: int = 4
    action_lease: str = "PT5S"
    ambiguous_send_window: str = "PT10S"
    purchase_every: int = 7
    pause_hold_s: float = 2.0
    paused_contacts: int = 5


@dataclass
class FaultTally:
    """Every fault injected, and what the recovery paths did about them."""

    worker_kills: int = 0
    worker_restarts: int = 0
    worker_exits: int = 0  # workers that exited on their own (a start while Redis was down)
    redis_restarts: int = 0
    postgres_restarts: int = 0
    enqueue_failures: int = 0  # dispatcher/reconciler passes that lost the broker or database
    sends_answered_500: int = 0
    sends_answered_429: int = 0
    connections_dropped: int = 0  # accepted by the stand-in, then no answer
    webhook_batches_accepted: int = 0
    duplicate_batches: int = 0
    out_of_order_batches: int = 0
    webhook_batches_refused: int = 0
    leases_reclaimed: int = 0
    sends_requeued: int = 0
    marked_ambiguous: int = 0
    settled_by_policy: int = 0
    deliveries_requeued: int = 0
    events_posts: int = 0  # POST /events requests, purchases and trials, each event twice
    events_posts_refused: int = 0  # refused (PostgreSQL down) and retried, as a host would
    events_pairs_out_of_order: int = 0  # purchase posted before the trial it follows
    inbound_posts: int = 0  # Inbound Parse posts: replies and out-of-office, each twice
    inbound_posts_refused: int = 0
    plan_pauses: int = 0
    enrollments_paused: int = 0
    enrollments_migrated: int = 0
    host_events_left_pending: int = 0  # stored, then processed by the loop (a crash between)
    notifications_left_pending: int = 0  # written, then sent by the loop (a crash between)


@dataclass
class ChaosReport:
    """One run: its configuration, the faults injected, and the audit (see audit.Audit)."""

    config: ChaosConfig
    faults: FaultTally
    elapsed_s: float
    finished_in_time: bool
    audit: Audit

    def violations(self) -> dict[str, int]:
        """Every invariant's breaches; all must be zero."""
        return self.audit.violations()

    def lines(self) -> list[str]:
        """The counts and fault tallies, one group per line, for a person to read."""
        faults = ", ".join(f"{key} {value}" for key, value in asdict(self.faults).items())
        return [
            f"chaos run: {self.config.enrollments} enrollments on {self.config.broker}, "
            f"seed {self.config.seed}, "
            f"in {self.elapsed_s:.1f}s" + ("" if self.finished_in_time else " (time limit reached)"),
            "faults: " + faults,
            *self.audit.lines(),
        ]


def run_chaos(config: ChaosConfig) -> ChaosReport:
    """Run one campaign under faults and audit it; this process's settings are restored after."""
    if config.postgres_restart and config.database_url is not None:
        raise ValueError("restarting PostgreSQL needs a server of the run's own: "
                         "leave database_url unset, or set postgres_restart=None")
    data_dir = Path(config.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(config.seed)
    tally = FaultTally()
    with ExitStack() as stack:
        postgres = None
        if config.database_url is None:
            postgres = stack.enter_context(ThrowawayPostgres())
        database_url = config.database_url or postgres.url
        ensure_postgres_database(database_url)
        stack.enter_context(_process_state_restored())
        redis_dir = data_dir / "redis"
        _fresh_data_dir(data_dir, redis_dir)
        ensure_embedded_redis(redis_dir)
        stack.callback(stop_embedded_redis, redis_dir)
        standin = stack.enter_context(SendGridStandIn(
            api_key=API_KEY, failure_rate=config.failure_rate, failure_statuses=(500, 429),
            drop_rate=config.drop_rate, seed=config.seed,
        ))
        keys = generate_webhook_keys()
        server = make_server("127.0.0.1", 0, _not_ready, ThreadingWSGIServer, QuietHandler)
        stack.callback(server.server_close)
        base_url = f"http://127.0.0.1:{server.server_port}"
        events_secret = secrets.token_urlsafe(32)
        environment = _environment(config, database_url, data_dir, redis_dir, standin.host,
                                   keys.public_key, base_url, events_secret)
        settings = settings_from_mapping(environment)
        # make_app makes these settings this process's own: database, broker, actors.
        recorder = BatchRecorder(make_app(settings), tally)
        server.set_app(recorder)
        threading.Thread(target=server.serve_forever, name="chaos-webhooks", daemon=True).start()
        stack.callback(server.shutdown)
        database = models.database_proxy.obj
        stack.callback(database.close_all)
        _fresh_schema(database)
        if config.broker == "rabbitmq":
            _purge_queues(dramatiq.get_broker())
        presuppressed, purchasers = _seed(config)

        workers = [WorkerProcess(environment, data_dir / f"worker-{index}.log",
                                 threads=config.worker_threads)
                   for index in range(config.worker_processes)]
        stack.callback(lambda: [worker.stop() for worker in workers])
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.wait_ready()
        simulator = EngagementSimulator(standin, f"{base_url}/webhooks/sendgrid",
                                        keys.private_key_pem, deliver_twice=True, shuffle=True,
                                        seed=config.seed).start()
        stack.callback(simulator.stop)  # a failed run must not leave it posting
        poster = PurchasePoster(standin, f"{base_url}/events", events_secret, TENANT, purchasers,
                                seed=config.seed).start()
        stack.callback(poster.stop)
        replies = ReplyPoster(standin, f"{base_url}{INBOUND_PATH}", keys.private_key_pem,
                              persona_of).start()
        stack.callback(replies.stop)

        started = time.monotonic()
        flows = OperatorFlows(TENANT, PLAN_NAME, config.pause_hold_s)
        campaign = Campaign(config, settings, workers, EmbeddedRedis(redis_dir), postgres,
                            tally, rng, flows, on_postgres_down=poster.release)
        finished = campaign.run(started + config.time_limit_s)
        campaign.restart_stopped_workers()
        simulator.stop()
        poster.stop()
        replies.stop()
        campaign.drain(time.monotonic() + config.drain_limit_s)
        elapsed = time.monotonic() - started
        for worker in workers:
            worker.stop()
        in_broker = campaign.held_by_broker()
        return _report(config, tally, standin, recorder, presuppressed, elapsed, finished,
                       poster, replies, flows, in_broker)


@contextmanager
def _process_state_restored() -> Iterator[None]:
    """Put this process's settings, broker and database back after the run (tests go on)."""
    settings, broker, database = get_settings(), dramatiq.get_broker(), models.database_proxy.obj
    try:
        yield
    finally:
        actors = list(dramatiq.get_broker().actors.values())
        configure(settings)
        dramatiq.set_broker(broker)
        rebind_actors(broker, actors)
        models.bind(database)


def _not_ready(environ: dict, start_response) -> list[bytes]:
    start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
    return [b"starting\n"]


def _environment(config: ChaosConfig, database_url: str, data_dir: Path, redis_dir: Path,
                 sendgrid_host: str, public_key: str, base_url: str,
                 events_secret: str) -> dict[str, str]:
    """The ``OUTREACH_*`` variables of the workers, and of this process's settings."""
    templates = data_dir / "templates"  # the plan's bodies are inline
    templates.mkdir(exist_ok=True)
    redis_url = EmbeddedRedis(redis_dir).url
    brokers = ({"OUTREACH_BROKER_URL": redis_url} if config.broker == "redis" else
               {"OUTREACH_BROKER_URL": config.rabbitmq_url, "OUTREACH_STATE_REDIS_URL": redis_url})
    return {
        **brokers,
        "OUTREACH_DATABASE_URL": database_url,
        "OUTREACH_DATA_DIR": str(data_dir),
        "OUTREACH_TEMPLATES_DIR": str(templates),
        "OUTREACH_SENDGRID_API_KEY": API_KEY,
        "OUTREACH_SENDGRID_API_HOST": sendgrid_host,
        # Below the lease: a live send is never taken for one cut short.
        "OUTREACH_SENDGRID_TIMEOUT": "PT3S",
        "OUTREACH_SENDGRID_WEBHOOK_PUBLIC_KEY": public_key,
        "OUTREACH_PUBLIC_BASE_URL": base_url,
        "OUTREACH_SECRET_KEY": secrets.token_urlsafe(32),
        "OUTREACH_DISPATCH_INTERVAL": "PT0.5S",
        # Timers last seconds, so the broker holds only what is due within a second;
        # with the default minute, a killed worker's delayed messages would hold
        # their actions until the lease after that minute.
        "OUTREACH_DISPATCH_HORIZON": "PT1S",
        # On this time scale a second spent waiting on an empty queue is a long time
        # (every step of a campaign would wait it, the dispatcher's too, past the
        # horizon): every queue is looked at as often as the timer queue.
        "OUTREACH_WORKER_IDLE_POLL_INTERVAL": "PT0.1S",
        "OUTREACH_ACTION_LEASE": config.action_lease,
        # A killed worker's idempotency lease must not outlive the action lease, or
        # the reconciler's re-enqueued message waits for it.
        "OUTREACH_IDEMPOTENCY_LEASE": config.action_lease,
        "OUTREACH_AMBIGUOUS_SEND_WINDOW": config.ambiguous_send_window,
        "OUTREACH_AMBIGUOUS_SEND_POLICY": "fail",
        "OUTREACH_RATELIMIT_SENDER_PER_MINUTE": UNBOUNDED,
        "OUTREACH_RATELIMIT_SENDER_PER_HOUR": UNBOUNDED,
        "OUTREACH_RATELIMIT_TENANT_PER_HOUR": UNBOUNDED,
        "OUTREACH_RATELIMIT_DOMAIN_PER_HOUR": UNBOUNDED,
        "OUTREACH_RATELIMIT_GLOBAL_PER_HOUR": UNBOUNDED,
        "OUTREACH_EVENTS_SECRET": events_secret,
        # The workers import its module (WorkerProcess), this process does below.
        "OUTREACH_NOTIFY_ACTOR": chaos_notify.ACTOR_PATH,
        # Every email's Reply-To is reply+TOKEN@ this domain; Inbound Parse posts are
        # signed with the Event Webhook's key pair.
        "OUTREACH_INBOUND_DOMAIN": INBOUND_DOMAIN,
        "OUTREACH_SENDGRID_INBOUND_PUBLIC_KEY": public_key,
    }


def _fresh_data_dir(data_dir: Path, redis_dir: Path) -> None:
    """Forget an earlier run: its Redis data and its worker logs.

    The tables start empty, so ids start again at 1; an earlier run's idempotency
    marks ("render of action 206 is done") would skip this run's work.
    """
    if redis_dir.exists():
        stop_embedded_redis(redis_dir)
        shutil.rmtree(redis_dir)
    for log in data_dir.glob("worker-*.log"):
        log.unlink()


def _fresh_schema(database) -> None:
    with database.connection_context():
        database.drop_tables([*models.ALL_MODELS, ReceivedNotification], safe=True, cascade=True)
    models.create_schema(database)
    with database.connection_context():
        database.create_tables([ReceivedNotification])


def _purge_queues(broker: dramatiq.Broker) -> None:
    """Empty the RabbitMQ queues of an earlier run: its messages name this run's ids."""
    for actor in broker.actors.values():
        broker.declare_queue(actor.queue_name)
    broker.flush_all()


def _seed(config: ChaosConfig) -> tuple[set[str], set[str]]:
    """Tenant, sender, plan and enrollments; returns the addresses suppressed beforehand,
    and the purchasers'."""
    models.Tenant.create(id=TENANT, name="Chaos Inc.")
    models.SenderIdentity.create(tenant=TENANT, email=SENDER, name="Chaos", verified=True)
    definition = validate_plan(PLAN).to_definition()
    models.Plan.create(tenant=TENANT, name=definition["name"], version=1, definition=definition)
    personas = [name for name, weight in PERSONA_MIX for _ in range(weight)]
    addresses = [f"{personas[n % len(personas)]}-{n}@example.com"
                 for n in range(config.enrollments)]
    step = max(1, config.enrollments // max(config.suppressed, 1))
    presuppressed = addresses[step // 2::step][:config.suppressed]
    for address in presuppressed:
        suppress(TENANT, address, "manual", "chaos:before-enrollment")
    for start in range(0, len(addresses), ENROLL_CHUNK):
        with models.database_proxy.atomic():
            for address in addresses[start:start + ENROLL_CHUNK]:
                engine.enroll(TENANT, address, definition["name"],
                              fields={"first_name": address.split("-")[0].title()})
    purchasers = set(addresses[3::config.purchase_every]) if config.purchase_every else set()
    return set(presuppressed), purchasers


def add_plan_version(version: int) -> None:
    """Store PLAN_V2 as ``version`` of the plan (a migration's target)."""
    definition = validate_plan(PLAN_V2).to_definition()
    models.Plan.create(tenant=TENANT, name=definition["name"], version=version,
                       definition=definition)


class WorkerProcess:
    """One ``dramatiq outreach_actors -p 1`` process in a session of its own, to kill whole."""

    def __init__(self, environment: dict[str, str], log_path: Path, *, threads: int) -> None:
        self.environment = environment
        self.log_path = log_path
        self.threads = threads
        self.process: subprocess.Popen | None = None
        self.killed = False
        self._ready_seen = 0

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OUTREACH_")}
        env.update(self.environment)
        self._ready_seen = self._ready_count()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "dramatiq", "outreach_actors", chaos_notify.__name__,
                 "-p", "1",
                 "-t", str(self.threads)],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                cwd=self.log_path.parent,
            )
        self.killed = False

    def _ready_count(self) -> int:
        try:
            return self.log_path.read_text(errors="replace").count(WORKER_READY)
        except FileNotFoundError:
            return 0

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while self._ready_count() <= self._ready_seen:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"a dramatiq worker did not start; see {self.log_path}")
            time.sleep(0.1)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL the CLI and its worker process: no shutdown, no acks, no cleanup."""
        if self.running():
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.killed = True

    def stop(self) -> None:
        if not self.running():
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


class Campaign:
    """The loop that runs the dispatcher and the reconciler, and injects the faults."""

    def __init__(self, config: ChaosConfig, settings: Settings, workers: list[WorkerProcess],
                 redis_server: EmbeddedRedis, postgres: ThrowawayPostgres | None,
                 tally: FaultTally, rng: random.Random, flows: OperatorFlows,
                 on_postgres_down: Callable[[], None] = lambda: None) -> None:
        self.config = config
        self.flows = flows
        self.on_postgres_down = on_postgres_down
        self.held_by_broker: Callable[[], set[str]] = (
            (lambda: _waiting_in_redis(redis_server, settings.broker_namespace))
            if config.broker == "redis" else set)
        self.settings = settings
        self.workers = workers
        self.redis_server = redis_server
        self.postgres = postgres
        self.tally = tally
        self.rng = rng
        self.next_reconcile = 0.0
        self.next_kill = time.monotonic() + rng.uniform(*config.kill_every_s)
        self.restarts: list[tuple[float, WorkerProcess]] = []

    def run(self, deadline: float) -> bool:
        """Until every enrollment is terminal (True) or the deadline passes (False)."""
        total = Enrollment.select().count()
        # Mid-run, each in a thread so that the dispatcher and reconciler run into the
        # outage: Redis once a third of the contacts are through, PostgreSQL at two thirds.
        # The operator's flows too, in their own threads: a few enrollments paused early,
        # the plan paused a quarter of the way, its in-flight enrollments migrated halfway.
        outages = [(0.1, self.pause_contacts), (0.25, self.flows.pause_plan),
                   (1 / 3, self.restart_redis), (0.5, self.migrate)]
        if self.config.postgres_restart and self.postgres is not None:
            outages.append((2 / 3, self.restart_postgres))
        started: list[threading.Thread] = []
        try:
            while time.monotonic() < deadline:
                self.maintain()
                self.inject_worker_faults()
                active = _active_enrollments()
                if active == 0:
                    return True
                while active is not None and outages and total - active >= total * outages[0][0]:
                    started.append(threading.Thread(target=outages.pop(0)[1], name="chaos-outage"))
                    started[-1].start()
                time.sleep(LOOP_PAUSE_S)
            return False
        finally:
            for thread in started:
                thread.join()

    def drain(self, deadline: float) -> bool:
        """Keep dispatching and reconciling until nothing is left in flight."""
        while time.monotonic() < deadline:
            self.maintain()
            self.restart_stopped_workers()
            try:
                if not _in_flight(self.held_by_broker()):
                    return True
            except peewee.DatabaseError:
                _drop_connection()
            time.sleep(LOOP_PAUSE_S)
        return False

    def maintain(self) -> None:
        """One pass of the dispatcher and, every second, of the reconciler."""
        try:
            dispatch.dispatch_due_actions(enqueue_actions, settings=self.settings)
            if time.monotonic() >= self.next_reconcile:
                self.next_reconcile = time.monotonic() + RECONCILE_EVERY_S
                self.tally.leases_reclaimed += dispatch.reconcile_expired_leases(
                    requeue_actions, settings=self.settings)
                requeued, marked_ambiguous = dispatch.reconcile_stuck_messages(
                    enqueue_send, settings=self.settings)
                self.tally.sends_requeued += requeued
                self.tally.marked_ambiguous += marked_ambiguous
                self.tally.settled_by_policy += ambiguous.settle_ambiguous_sends(
                    requeue_send, settings=self.settings)
                self.tally.deliveries_requeued += ingest.requeue_stale_deliveries(
                    enqueue_delivery, self.settings.action_lease)
                self.finish_host_flows()
                ingest.requeue_stale_deliveries(enqueue_inbound_post, self.settings.action_lease,
                                                model=models.InboundPost)
        except Exception as exc:  # broker or database down: what was claimed comes back by lease
            self.tally.enqueue_failures += 1
            logger.warning("Chaos: a dispatcher pass failed: %r", exc)
            _drop_connection()

    def finish_host_flows(self) -> None:
        """The periodic job's share for host events and notifications, on this run's
        clock: what a crash left stored but unprocessed, or written but not sent, once
        it is LEFT_PENDING_S old (rather than the minute and half-minute of production)."""
        with dispatch.dispatch_after_commit(enqueue_actions, settings=self.settings):
            self.tally.host_events_left_pending += host_events.process_pending_host_events(
                now=utcnow() + host_events.PENDING_GRACE - LEFT_PENDING)
        self.tally.notifications_left_pending += notifications.send_pending_notifications(
            now=utcnow() + notifications.SEND_GRACE - LEFT_PENDING)

    def pause_contacts(self) -> None:
        """Pause a few active enrollments, hold them, resume them."""
        emails = [email for (email,) in models.Contact.select(models.Contact.email)
                  .join(Enrollment).where(Enrollment.status == Enrollment.ACTIVE)
                  .order_by(models.Contact.id).limit(self.config.paused_contacts).tuples()]
        self.flows.pause_contacts(emails)

    def migrate(self) -> None:
        """A new version of the plan, and every enrollment in flight migrated to it."""
        add_plan_version(2)
        self.flows.migrate(2)

    def inject_worker_faults(self) -> None:
        now = time.monotonic()
        if now >= self.next_kill:
            victim = self.rng.choice([w for w in self.workers if w.running()] or self.workers)
            victim.kill()
            self.tally.worker_kills += 1
            self.restarts.append((now + RESTART_PAUSE_S, victim))
            self.next_kill = now + self.rng.uniform(*self.config.kill_every_s)
        due = [worker for at, worker in self.restarts if at <= now]
        self.restarts = [(at, worker) for at, worker in self.restarts if at > now]
        for worker in due:
            worker.start()
            self.tally.worker_restarts += 1
        self._restart_exited(pending={id(worker) for _, worker in self.restarts})

    def restart_stopped_workers(self) -> None:
        """No more kills: start every worker that is down."""
        for _, worker in self.restarts:
            worker.start()
            self.tally.worker_restarts += 1
        self.restarts = []
        self._restart_exited(pending=set())

    def _restart_exited(self, pending: set[int]) -> None:
        for worker in self.workers:
            if not worker.running() and id(worker) not in pending:
                if not worker.killed:
                    self.tally.worker_exits += 1
                worker.start()

    def restart_redis(self) -> None:
        """Stop the Redis server (SIGKILL, or a clean SHUTDOWN) and start it on its AOF."""
        pid = self.redis_server.pid()
        if self.config.redis_restart == "kill" and pid is not None:
            os.kill(pid, signal.SIGKILL)
        else:
            stop_embedded_redis(self.redis_server.data_dir)
        if not (self.config.postgres_restart and self.postgres is not None):
            self.on_postgres_down()  # no database outage: the held-back events meet this one
        time.sleep(self.config.redis_down_s)
        ensure_embedded_redis(self.redis_server.data_dir)
        self.tally.redis_restarts += 1
        logger.warning("Chaos: Redis restarted (%s)", self.config.redis_restart)

    def restart_postgres(self) -> None:
        """Stop the run's PostgreSQL server (a crash, or a clean stop) and start it again."""
        self.postgres.stop(self.config.postgres_restart)
        self.on_postgres_down()
        time.sleep(self.config.postgres_down_s)
        self.postgres.start()
        self.tally.postgres_restarts += 1
        logger.warning("Chaos: PostgreSQL restarted (%s)", self.config.postgres_restart)


def _active_enrollments() -> int | None:
    """How many enrollments are still active; None while the database is down."""
    try:
        return Enrollment.select().where(Enrollment.status == Enrollment.ACTIVE).count()
    except peewee.DatabaseError:
        _drop_connection()
        return None


def _drop_connection() -> None:
    """Let go of this thread's connection: after an outage it is dead, and the pool
    opens a new one for the next statement."""
    database = models.database_proxy.obj
    if database is not None and not database.is_closed():
        try:
            database.close()
        except peewee.DatabaseError:
            pass


def _in_flight(held_by_broker: set[str]) -> bool:
    """Whether anything is still on its way; a notification the Redis broker holds for a
    killed worker comes back only after a minute (see _waiting_in_redis): not waited for."""
    received = ReceivedNotification.select(ReceivedNotification.notification_id)
    return (
        Enrollment.select().where(Enrollment.status == Enrollment.ACTIVE).exists()
        or ScheduledAction.select().where(
            ScheduledAction.status.in_(ScheduledAction.OPEN_STATUSES)).exists()
        or OutboundMessage.select().where(OutboundMessage.status.in_(IN_FLIGHT)).exists()
        or WebhookDelivery.select().where(
            WebhookDelivery.status != WebhookDelivery.PROCESSED).exists()
        or models.HostEvent.select().where(
            models.HostEvent.status != models.HostEvent.PROCESSED).exists()
        or models.InboundPost.select().where(
            models.InboundPost.status == models.InboundPost.RECEIVED).exists()
        # A notification sent and not yet received is on its way through the broker.
        or models.Notification.select().where(
            models.Notification.id.not_in(received),
            models.Notification.id.not_in(sorted(held_by_broker))).exists()
    )


class BatchRecorder:
    """WSGI middleware that records each webhook batch our endpoint answered 2xx.

    The audit needs what was accepted, not what was posted: an event SendGrid posts
    and we refuse is SendGrid's to send again, one we accept is ours to keep.
    """

    def __init__(self, app, tally: FaultTally) -> None:
        self.app = app
        self.tally = tally
        self.event_ids: Counter[str] = Counter()
        self._digests: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        answered: list[str] = []

        def recording_start_response(status: str, headers, exc_info=None):
            answered.append(status)
            return start_response(status, headers, exc_info)

        result = list(self.app(environ, recording_start_response))
        if environ.get("PATH_INFO") == "/webhooks/sendgrid":
            self._record(body, answered[0].startswith("2"))
        return result

    def _record(self, body: bytes, accepted: bool) -> None:
        with self._lock:
            if not accepted:
                self.tally.webhook_batches_refused += 1
                return
            events = json.loads(body)
            digest = hashlib.sha256(body).hexdigest()
            self.tally.webhook_batches_accepted += 1
            self.tally.duplicate_batches += digest in self._digests
            self._digests.add(digest)
            stamps = [event["timestamp"] for event in events]
            self.tally.out_of_order_batches += stamps != sorted(stamps)
            self.event_ids.update(event["sg_event_id"] for event in events)


def _waiting_in_redis(server: EmbeddedRedis, namespace: str) -> set[str]:
    """The notifications still held by the Redis broker: a killed worker's fetched but
    unacknowledged messages, which Dramatiq's Redis broker gives back to the queue only
    after its heartbeat timeout (a minute), later than the run waits. Not lost: late."""
    client = redis.Redis.from_url(server.url)
    try:
        # Dramatiq's Redis broker keys each message by its own message id: the
        # notification's id is in the message's argument.
        return {json.loads(value)["args"][0]["id"]
                for queue in (chaos_notify.QUEUE, f"{chaos_notify.QUEUE}.DQ")
                for value in client.hvals(f"{namespace}:{queue}.msgs")}
    except redis.RedisError:  # down: nothing known to be held
        return set()
    finally:
        client.close()


def _report(config: ChaosConfig, tally: FaultTally, standin: SendGridStandIn,
            recorder: BatchRecorder, presuppressed: set[str], elapsed: float,
            finished: bool, poster: PurchasePoster, replies: ReplyPoster,
            flows: OperatorFlows, in_broker: set[str]) -> ChaosReport:
    for request in standin.requests:
        tally.sends_answered_500 += request.status == 500
        tally.sends_answered_429 += request.status == 429
        tally.connections_dropped += request.status is None
    tally.events_posts, tally.events_posts_refused = poster.requests_posted, poster.requests_refused
    tally.events_pairs_out_of_order = poster.out_of_order_pairs
    tally.inbound_posts, tally.inbound_posts_refused = replies.posts, replies.posts_refused
    tally.plan_pauses = len(flows.plan_pauses)
    tally.enrollments_paused = sum(len(window.emails) for window in flows.contact_pauses)
    tally.enrollments_migrated = flows.migrated
    record = FlowRecord(
        tenant=TENANT, host_event_ids=poster.event_ids(),
        host_events_stored_answers=poster.stored_answers, inbound_digests=replies.accepted,
        notifications_in_broker=in_broker,
        plan_pauses=flows.plan_pauses, contact_pauses=flows.contact_pauses,
        migration=(flows.migration_started_at, flows.migration_ended_at))
    return ChaosReport(
        config=config, faults=tally, elapsed_s=round(elapsed, 1), finished_in_time=finished,
        audit=audit_campaign(standin.messages, recorder.event_ids, presuppressed, record),
    )


__all__ = ["BatchRecorder", "ChaosConfig", "ChaosReport", "FaultTally", "run_chaos"]
