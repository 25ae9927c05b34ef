"""Benchmark of webhook normalization: SendGrid events normalized per second on PostgreSQL.

Stored deliveries of 1,000 events each (processed, delivered, open, then a click
for one message in ten or a deferral, for 250 messages of enrolled contacts) go through
``ingest.normalize_delivery`` one after another, as one worker thread runs them:
parse, bulk message lookup, deduped bulk insert, suppressions and the engine
(every click moves its enrollment). The figure is 1,000 events over the median
time of one batch (the median, so that another process on a small machine does
not decide the result), against the target of 10,000 events per second on a
2-core machine.

Usage: python benchmarks/webhooks.py [--quick] [--json] [--database-url URL] [--click-every N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from urllib.parse import urlparse

# No broker is needed; keep the package from building the embedded one at import.
os.environ.setdefault("OUTREACH_BROKER_URL", "stub://")

import psycopg2  # noqa: E402

from outreach_actors.domain import ingest  # noqa: E402
from outreach_actors.domain.plans import validate_plan  # noqa: E402
from outreach_actors.domain.store import models  # noqa: E402
from outreach_actors.domain.store.db import database_from_url  # noqa: E402
from outreach_actors.providers.sendgrid.events import parse_sendgrid_batch  # noqa: E402
from outreach_actors.settings import Settings, configure  # noqa: E402

DEFAULT_DATABASE_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/outreach_bench"
)
TARGET_EVENTS_PER_S = 10_000
BATCH_SIZE = 1000
EVENTS_PER_MESSAGE = 4
# One message in ten is clicked, and each click moves its contact (a generous
# click rate for outreach mail); the other events reach the engine's filter only.
CLICK_EVERY = 10
PLAN = """
name: onboarding
start: intro
nodes:
  intro:
    type: email
    subject: "Welcome"
    body: "<p>Hi</p>"
    transitions:
      - {on: click, to: thanks}
      - {on: bounce, to: stop}
  thanks: {type: exit}
  stop: {type: exit}
"""


def ensure_database(url: str) -> None:
    parsed = urlparse(url)
    admin = psycopg2.connect(dbname="postgres", user=parsed.username, password=parsed.password,
                             host=parsed.hostname, port=parsed.port or 5432)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", (parsed.path.lstrip("/"),))
        if cursor.fetchone() is None:
            cursor.execute(f'CREATE DATABASE "{parsed.path.lstrip("/")}"')
    admin.close()


def fresh_schema(url: str, settings: Settings):
    database = database_from_url(url, settings)
    models.bind(database)
    with database.connection_context():
        database.drop_tables(models.ALL_MODELS, safe=True, cascade=True)
    models.create_schema(database)
    return database


def seed(messages: int) -> list[str]:
    """A tenant, its plan, and one enrolled contact with one sent message each (bulk)."""
    models.Tenant.create(id="acme", name="Acme")
    plan = models.Plan.create(tenant="acme", name="onboarding", version=1,
                              definition=validate_plan(PLAN).to_definition())
    emails = [f"contact{n}@example.com" for n in range(messages)]
    models.Contact.insert_many([{"tenant": "acme", "email": e} for e in emails]).execute()
    contacts = dict(models.Contact.select(models.Contact.email, models.Contact.id).tuples())
    models.Enrollment.insert_many([
        {"tenant": "acme", "plan": plan.id, "contact": contacts[e],
         "enrollment_key": f"acme:onboarding:{contacts[e]}", "current_node": "intro"}
        for e in emails
    ]).execute()
    enrollments = dict(
        models.Enrollment.select(models.Enrollment.contact, models.Enrollment.id).tuples()
    )
    ids = [f"msg-{n}" for n in range(messages)]
    models.OutboundMessage.insert_many([
        {"id": ids[n], "tenant": "acme", "enrollment": enrollments[contacts[e]], "node": "intro",
         "dedupe_key": f"bench:{n}", "status": "sent", "to_email": e,
         "from_email": "sales@acme.test", "subject": "s", "html": "h", "text": "t",
         "provider_message_id": f"X{n}"}
        for n, e in enumerate(emails)
    ]).execute()
    return ids


def events_for(message_id: str, n: int, start: int, click_every: int) -> list[dict]:
    email = f"contact{n}@example.com"
    base = {"email": email, "sg_message_id": f"X{n}.filter0001.1.2.0",
            "outreach_message_id": message_id, "outreach_tenant": "acme",
            "category": ["onboarding"]}
    last = ({"event": "click", "url": "https://example.com/pricing"} if n % click_every == 0
            else {"event": "deferred", "response": "400 try again later", "attempt": "1"})
    shapes = [{"event": "processed"}, {"event": "delivered", "response": "250 OK"},
              {"event": "open", "sg_machine_open": False, "useragent": "Mozilla/5.0"}, last]
    return [
        {**base, **shape, "timestamp": start + step, "sg_event_id": f"{message_id}-{step}"}
        for step, shape in enumerate(shapes)
    ]


def store_batches(ids: list[str], click_every: int) -> list[int]:
    per_batch = BATCH_SIZE // EVENTS_PER_MESSAGE
    deliveries = []
    for offset in range(0, len(ids), per_batch):
        batch = [event for n in range(offset, min(offset + per_batch, len(ids)))
                 for event in events_for(ids[n], n, 1763790000, click_every)]
        deliveries.append(models.WebhookDelivery.create(body=json.dumps(batch).encode()).id)
    return deliveries


def run(quick: bool, database_url: str = DEFAULT_DATABASE_URL,
        click_every: int = CLICK_EVERY) -> dict[str, dict]:
    """The figure as {"value", "unit", "reference", "ratio"}."""
    ensure_database(database_url)
    settings = Settings(broker_url="stub://", database_url=database_url)
    configure(settings)
    database = fresh_schema(database_url, settings)
    batches = 5 if quick else 20
    with database.connection_context():
        ids = seed(batches * BATCH_SIZE // EVENTS_PER_MESSAGE)
        deliveries = store_batches(ids, click_every)
        ingest.normalize_delivery(deliveries[0], parse_batch=parse_sendgrid_batch,
                                  settings=settings)  # warm-up, not timed
        durations = []
        for delivery_id in deliveries[1:]:
            started = time.perf_counter()
            ingest.normalize_delivery(delivery_id, parse_batch=parse_sendgrid_batch,
                                      settings=settings)
            durations.append(time.perf_counter() - started)
        stored = models.MessageEvent.select().count()
        moved = models.Enrollment.select().where(models.Enrollment.current_node == "thanks").count()
    database.close_all()
    configure(None)
    if stored != len(deliveries) * BATCH_SIZE or moved != len(range(0, len(ids), click_every)):
        raise SystemExit(f"benchmark run is wrong: {stored} events stored, {moved} moved")
    per_s = BATCH_SIZE / statistics.median(durations)
    return {
        "webhook_events_per_s": {
            "value": round(per_s), "unit": "events/s", "reference": TARGET_EVENTS_PER_S,
            "ratio": round(per_s / TARGET_EVENTS_PER_S, 3),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 batches instead of 20")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL)
    parser.add_argument("--click-every", type=int, default=CLICK_EVERY,
                        help="one message in N is clicked, moving its contact (default 10)")
    options = parser.parse_args()
    figures = run(options.quick, options.database_url, options.click_every)
    if options.json:
        print(json.dumps(figures))
        return
    figure = figures["webhook_events_per_s"]
    print(f"batches of {BATCH_SIZE} events on {urlparse(options.database_url).hostname}, "
          f"one message in {options.click_every} clicked (each click moves a contact)")
    print(f"webhook_events_per_s {figure['value']} events/s "
          f"(target {figure['reference']}, ratio {figure['ratio']})")


if __name__ == "__main__":
    main()
