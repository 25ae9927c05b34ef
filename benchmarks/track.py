"""Benchmark of host events: tracked events per second through ``POST /events`` on PostgreSQL.

- track_events_per_s: N contacts (10,000; 2,000 with --quick) wait in a plan's wait
  node; their ``purchased`` events are posted to the standalone app (waitress, on a
  local port) in signed batches of 100 over one keep-alive connection, and each moves
  its enrollment to an email node (a visit, the wait's timer cancelled, the email's
  send scheduled and dispatched after commit). The figure is 100 events over the
  median time of one request (the median, so another process on a small machine
  does not decide it), against the target of 2,000 events/s; run.py prints it beside
  webhook_events_per_s, SendGrid's events normalized in the same run.

Usage: python benchmarks/track.py [--quick] [--json]
"""

from __future__ import annotations

import http.client
import json
import statistics
import threading
import time

import _common

from outreach_actors.domain.enroll_many import ContactRow, enroll_many
from outreach_actors.domain.plans import validate_plan
from outreach_actors.domain.store.models import Enrollment, HostEvent
from outreach_actors.web.app import http_server, make_app
from outreach_actors.web.events import sign_events

NAMESPACE = "outreach-bench-track"
FULL, QUICK = 10_000, 2_000
BATCH = 100
TARGET_EVENTS_PER_S = 2000
SECRET = "bench-events-secret"
PLAN = """
name: trial
start: waiting
events: [purchased]
nodes:
  waiting:
    type: wait
    transitions:
      - {on: purchased, if: "event.amount >= 10", to: thanks}
      - {on: elapsed, after: P7D, to: done}
  thanks:
    type: email
    subject: "Thank you"
    body: "<p>Thanks. {{ unsubscribe_url }}</p>"
    transitions:
      - {on: no_open, after: P3D, to: done}
  done: {type: exit}
"""


def post(connection: http.client.HTTPConnection, events: list[dict]) -> dict:
    body = json.dumps(events).encode()
    at = int(time.time())
    connection.request("POST", "/events", body=body, headers={
        "Content-Type": "application/json", "X-Outreach-Timestamp": str(at),
        "X-Outreach-Signature": sign_events(SECRET, body, at)})
    response = connection.getresponse()
    answer = json.loads(response.read())
    if response.status != 200:
        raise RuntimeError(f"POST /events answered {response.status}: {answer}")
    return answer


def run(quick: bool, database_url: str = _common.DATABASE_URL,
        redis_url: str = _common.REDIS_URL) -> dict[str, dict]:
    count = QUICK if quick else FULL
    _common.ensure_database(database_url)
    settings = _common.install(_common.bench_environment(
        database_url, redis_url, NAMESPACE, OUTREACH_BROKER_URL="stub://",
        OUTREACH_EVENTS_SECRET=SECRET))
    database = _common.fresh_schema()
    emails = [f"buyer-{n}@example.com" for n in range(count)]
    with database.connection_context():
        _common.seed_tenant(validate_plan(PLAN).to_definition())
        enroll_many(_common.TENANT, "trial", [ContactRow(n, e) for n, e in enumerate(emails)])
    server = http_server("127.0.0.1", 0, make_app(settings), threads=4)
    threading.Thread(target=server.run, daemon=True).start()
    connection = http.client.HTTPConnection("127.0.0.1", server.effective_port, timeout=60)
    durations = []
    try:
        for offset in range(0, count, BATCH):
            events = [{"tenant": _common.TENANT, "email": email, "event": "purchased",
                       "event_id": f"order-{offset + index}", "properties": {"amount": 49}}
                      for index, email in enumerate(emails[offset:offset + BATCH])]
            started = time.perf_counter()
            answer = post(connection, events)
            durations.append(time.perf_counter() - started)
            if sum(result["moved"] for result in answer["results"]) != len(events):
                raise RuntimeError(f"a batch moved {answer['results'][:3]}...")
        with database.connection_context():
            moved = Enrollment.select().where(Enrollment.current_node == "thanks").count()
            stored = HostEvent.select().count()
    finally:
        connection.close()
        server.close()
        database.close_all()
    if moved != count or stored != count:
        raise RuntimeError(f"benchmark run is wrong: {stored} stored, {moved} moved of {count}")
    per_s = BATCH / statistics.median(durations[1:] or durations)  # the first warms up
    return {"track_events_per_s": _common.figure(round(per_s), "events/s", TARGET_EVENTS_PER_S)}


def main() -> None:
    _common.command_line(run, __doc__, quick_help=f"{QUICK:,} events, not {FULL:,}")


if __name__ == "__main__":
    main()
