"""Benchmark of reactions: how soon the engine acts on a timer that comes due, and on an event.

Real workers (``dramatiq outreach_actors``, 2 processes x 8 threads) on Redis and
PostgreSQL, the SendGrid stand-in, rate limits out of the way, and periodiq's
dispatcher running as in production (this process sends ``dispatch_due`` once a
minute): the dispatcher is the safety net, not the path. Each figure is printed beside
the dispatch interval, which is what a reaction waited for without the after-commit
enqueue.

- reaction_timer_p99_s: N contacts (500; 100 with --quick) are enrolled as a host app
  enrolls them; each intro's ``no_open`` timer (PT2S) is written when the intro is sent,
  2 s before it is due. The 99th percentile of ``fired_at - run_at`` (target 0.5 s).
- reaction_event_p99_s: M contacts (200; 50 with --quick) wait in a node for a click
  (their ``no_open`` is an hour away); a signed click webhook is POSTed for each to the
  real endpoint (``outreach serve``'s app, over HTTP), every tenth after a pause longer
  than the idle poll interval, so that some clicks find the workers idle, as a click in
  production mostly does. The 99th percentile of the time from the POST to the thanks
  email accepted by the stand-in (target 1 s).

Usage: python benchmarks/reactions.py [--quick] [--json]
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime
from wsgiref.simple_server import make_server

import _common
import redis
from timers import PeriodiqTicker, percentile

from outreach_actors.contrib import enroll
from outreach_actors.dev.standin import SendGridStandIn
from outreach_actors.dev.webhook_events import emit_events, events_for, generate_webhook_keys
from outreach_actors.domain.plans import validate_plan
from outreach_actors.domain.store.models import MessageEvent, OutboundMessage, Plan
from outreach_actors.web.app import QuietHandler, ThreadingWSGIServer, make_app

NAMESPACE = "outreach-bench-reactions"
API_KEY = "SG.bench-key"
TIMER_PLAN = """
name: reactions
start: intro
nodes:
  intro:
    type: email
    subject: "Hello"
    body: "<p>Hi, <a href='https://example.com/x'>look</a>. {{ unsubscribe_url }}</p>"
    transitions:
      - {on: no_open, after: PT2S, to: bump}
  bump:
    type: email
    subject: "A bump"
    body: "<p>A bump. {{ unsubscribe_url }}</p>"
    transitions:
      - {on: no_open, after: PT1H, to: done}
  done: {type: exit}
"""
EVENT_PLAN = """
name: reactions-click
start: intro
nodes:
  intro:
    type: email
    subject: "Hello again"
    body: "<p>Hi, <a href='https://example.com/y'>look</a>. {{ unsubscribe_url }}</p>"
    transitions:
      - {on: click, to: thanks}
      - {on: no_open, after: PT1H, to: done}
  thanks:
    type: email
    subject: "Thanks"
    body: "<p>Thanks. {{ unsubscribe_url }}</p>"
    transitions:
      - {on: no_open, after: PT1H, to: done}
  done: {type: exit}
"""


@dataclass(frozen=True)
class Size:
    timers: int
    events: int


FULL = Size(timers=500, events=200)
# Every tenth click is POSTed after this pause: longer than the idle poll interval (1 s),
# so that its reaction starts from queues whose consumers have backed off.
IDLE_PAUSE_S = 1.5
IDLE_EVERY = 10
QUICK = Size(timers=100, events=50)


def enroll_all(prefix: str, count: int, plan: str) -> list[int]:
    return [enroll(_common.TENANT, f"{prefix}-{n}@example.com", plan).id for n in range(count)]


def timer_lateness(count: int) -> list[float]:
    """Enroll ``count`` contacts; once every no_open has fired, each one's lateness."""
    enroll_all("timer", count, "reactions")
    fired = MessageEvent.select().where(MessageEvent.type == "no_open",
                                        MessageEvent.synthetic == True)  # noqa: E712
    _common.wait_until(lambda: fired.count() >= count, timeout_s=120 + count / 5,
                       what=f"{count} no_open timers")
    return sorted((datetime.fromisoformat(event.data["fired_at"])
                   - datetime.fromisoformat(event.data["scheduled_for"])).total_seconds()
                  for event in fired)


def event_reactions(count: int, standin: SendGridStandIn, webhook_url: str,
                    private_key: str) -> list[float]:
    """``count`` contacts sent the intro of a plan starting where a click is awaited; a
    signed click POSTed for each; the seconds from each POST to its thanks email."""
    enroll_all("event", count, "reactions-click")
    sent = OutboundMessage.select().where(OutboundMessage.subject == "Hello again",
                                         OutboundMessage.status == OutboundMessage.SENT)
    _common.wait_until(lambda: sent.count() >= count, timeout_s=120 + count / 5,
                       what=f"{count} first emails")
    by_recipient = {message.recipients()[0][0]: message for message in standin.messages}
    posted: dict[str, float] = {}
    for email in sorted(by_recipient):
        if not email.startswith("event-"):
            continue
        if len(posted) % IDLE_EVERY == 0:
            time.sleep(IDLE_PAUSE_S)
        posted[email] = time.monotonic()
        status = emit_events(webhook_url, events_for(by_recipient[email], "click"),
                             private_key_pem=private_key)
        if status != 200:
            raise RuntimeError(f"the webhook endpoint answered {status}")
    thanks: dict[str, float] = {}

    def all_thanked() -> bool:
        for message in standin.messages:
            if message.body.get("subject") == "Thanks":
                recipient = message.recipients()[0][0]
                thanks.setdefault(recipient, message.received_at)
        return len(thanks) >= len(posted)

    _common.wait_until(all_thanked, timeout_s=120, what=f"{len(posted)} thanks emails")
    # received_at is the stand-in's wall clock; posted is monotonic: convert once.
    offset = time.time() - time.monotonic()
    return sorted(thanks[email] - (posted[email] + offset) for email in posted)


def run(quick: bool, database_url: str = _common.DATABASE_URL,
        redis_url: str = _common.REDIS_URL) -> dict[str, dict]:
    size = QUICK if quick else FULL
    _common.ensure_database(database_url)
    client = redis.Redis.from_url(redis_url)
    _common.clear_redis(client, f"{NAMESPACE}*")
    keys = generate_webhook_keys()
    with SendGridStandIn(api_key=API_KEY) as standin:
        environment = _common.bench_environment(
            database_url, redis_url, NAMESPACE,
            OUTREACH_SENDGRID_API_KEY=API_KEY, OUTREACH_SENDGRID_API_HOST=standin.host,
            OUTREACH_SENDGRID_WEBHOOK_PUBLIC_KEY=keys.public_key,
        )
        settings = _common.install(environment)
        database = _common.fresh_schema()
        _common.seed_tenant(validate_plan(TIMER_PLAN).to_definition())
        Plan.create(tenant=_common.TENANT, name="reactions-click", version=1,
                    definition=validate_plan(EVENT_PLAN).to_definition())
        app = make_app(settings)
        server = make_server("127.0.0.1", 0, app, ThreadingWSGIServer, QuietHandler)
        serving = threading.Thread(target=server.serve_forever, daemon=True)
        serving.start()
        webhook_url = f"http://127.0.0.1:{server.server_port}/webhooks/sendgrid"
        try:
            with database.connection_context(), _common.Workers(environment), PeriodiqTicker():
                lateness = timer_lateness(size.timers)
                reactions = event_reactions(size.events, standin, webhook_url, keys.private_key_pem)
        finally:
            server.shutdown()
            database.close_all()
            _common.clear_redis(client, f"{NAMESPACE}*")
    interval_s = settings.dispatch_interval.total_seconds()
    return {
        "reaction_timer_p99_s": _common.figure(
            round(percentile(lateness, 0.99), 3), "s", interval_s),
        "reaction_event_p99_s": _common.figure(
            round(percentile(reactions, 0.99), 3), "s", interval_s),
    }


def main() -> None:
    _common.command_line(run, __doc__, quick_help="a smaller run")


if __name__ == "__main__":
    main()
