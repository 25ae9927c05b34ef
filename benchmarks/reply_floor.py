"""The CPU a reply costs before any of our logic: the floor under inbound_replies_per_s.

A diagnostic (not a figure run.py reports, and no target). It takes the posts of
replies.py (a 20 KB reply with a 100 KB attachment, the raw form) through only what
issue #20 requires of every reply whatever the code does with it, and measures the
CPU of the whole machine (``/proc/stat``: not idle, not waiting on disk, not stolen)
per reply, in two phases:

- stored: POSTed by 8 concurrent posters to a bare WSGI app on waitress (a process
  of its own, 8 threads) that reads the body and inserts it into a table of the
  benchmark database (lz4, as inbound_post.body), one commit per post;
- forwarded: each stored body read back and sent through the real ``sendgrid``
  client to the stand-in as a forward (the reply's text, the original attached as
  ``message/rfc822``), 8 threads.

No parsing, signature check, matching, event, move or queue. On a machine of
``os.cpu_count()`` cores the sum of the two bounds any implementation's rate:
cores x 1000 / (ms per reply). As in replies.py, the posters and the stand-in (SendGrid's
side) run on the same machine and count.

Usage: python benchmarks/reply_floor.py [--count N]
"""

from __future__ import annotations

import argparse
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import _common
import psycopg2
import replies

from outreach_actors.dev.standin import SendGridStandIn
from outreach_actors.domain.mail.outgoing import OutgoingEmail
from outreach_actors.providers.sendgrid.client import sendgrid_client_from_settings

NAMESPACE = "outreach-bench-reply-floor"
TABLE = "reply_floor_post"
THREADS = 8
WARM_UP = 40


def serve(database_url: str, port: int) -> None:
    """The bare app: store each POST's body, answer 200."""
    import logging

    import waitress

    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "Task queue depth is 1"

    local = threading.local()

    def app(environ, start_response):
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        if getattr(local, "connection", None) is None:
            local.connection = psycopg2.connect(database_url)
        with local.connection, local.connection.cursor() as cursor:
            cursor.execute(f"INSERT INTO {TABLE} (body) VALUES (%s)", (psycopg2.Binary(body),))
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
        return [b"ok"]

    waitress.serve(app, host="127.0.0.1", port=port, threads=THREADS, _quiet=True)


class BareApp(_common.WebServer):
    """``serve`` below in a subprocess, on a free port (started and stopped as the
    benchmarks' ``outreach serve`` is)."""

    name, log_name, stop_signal = "the bare app", "bare-app.log", signal.SIGTERM

    def __init__(self, environment: dict[str, str], database_url: str) -> None:
        super().__init__(environment, threads=THREADS)
        self.database_url = database_url

    def command(self) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "serve", self.database_url,
                str(self.port)]


def machine_busy_s() -> float:
    """CPU seconds the machine spent busy so far (not idle, iowait or steal)."""
    with open("/proc/stat") as stat:
        ticks = [int(value) for value in stat.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4] - ticks[7]) / os.sysconf("SC_CLK_TCK")


def measured(work: Callable[[], None], count: int) -> tuple[float, float]:
    """(per second, machine CPU ms per item) of ``work`` doing ``count`` items."""
    busy, started = machine_busy_s(), time.monotonic()
    work()
    return (count / (time.monotonic() - started),
            1000 * (machine_busy_s() - busy) / count)


def forward_all(settings, database_url: str, ids: list[int]) -> None:
    waiting: queue.SimpleQueue[int] = queue.SimpleQueue()
    for post_id in ids:
        waiting.put(post_id)
    failures: list[str] = []

    def forwarder() -> None:
        connection = psycopg2.connect(database_url)
        client = sendgrid_client_from_settings(settings)
        try:
            while not failures:
                try:
                    post_id = waiting.get_nowait()
                except queue.Empty:
                    return
                with connection, connection.cursor() as cursor:
                    cursor.execute(f"SELECT body FROM {TABLE} WHERE id = %s", (post_id,))
                    raw = bytes(cursor.fetchone()[0])
                outcome = client.send(OutgoingEmail(
                    message_id=f"msg_floor_{post_id}", tenant=_common.TENANT,
                    to_email="sales@example.com", from_email=_common.SENDER, from_name=None,
                    subject="Re: Hello", html=None, text="Yes, let's talk on Thursday.\n" * 700,
                    headers={"X-Outreach-Forward": str(post_id)},
                    reply_to="prospect@example.com",
                    attachments=(("reply.eml", "message/rfc822", raw),)))
                if outcome.kind != "sent":
                    failures.append(f"{outcome.kind}: {outcome.error}")
        finally:
            connection.close()

    _common.in_threads(forwarder, THREADS, "forwarder")
    if failures:
        raise RuntimeError(f"a forward was not sent: {failures[0]}")


def main() -> None:
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2], int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=replies.FULL)
    parser.add_argument("--database-url", default=_common.DATABASE_URL)
    options = parser.parse_args()
    url, count = options.database_url, options.count
    _common.ensure_database(url)
    connection = psycopg2.connect(url)
    connection.autocommit = True
    connection.cursor().execute(
        f"DROP TABLE IF EXISTS {TABLE}; CREATE TABLE {TABLE} (id serial PRIMARY KEY, body bytea)")
    try:
        connection.cursor().execute(f"ALTER TABLE {TABLE} ALTER COLUMN body SET COMPRESSION lz4")
    except psycopg2.Error:
        pass  # PostgreSQL before 14 (or without lz4): stored as inbound_post.body would be
    template = replies.reply_template()
    bodies = [template.replace(replies.OWN_ID, f"<floor-{n}@mail.example.com>".encode())
              for n in range(WARM_UP + count)]
    boundary = template.split(b"\r\n", 1)[0][2:].decode()
    headers = [{"Content-Type": f"multipart/form-data; boundary={boundary}"}] * len(bodies)
    with SendGridStandIn(api_key=replies.API_KEY) as standin:
        environment = _common.bench_environment(
            url, _common.REDIS_URL, NAMESPACE,
            OUTREACH_SENDGRID_API_KEY=replies.API_KEY, OUTREACH_SENDGRID_API_HOST=standin.host)
        settings = _common.install(environment)
        with BareApp(environment, url) as app:
            replies.post_all(app.port, bodies[:WARM_UP], headers[:WARM_UP], THREADS)
            stored = measured(lambda: replies.post_all(
                app.port, bodies[WARM_UP:], headers[WARM_UP:], THREADS), count)
        forward_all(settings, url, list(range(1, WARM_UP + 1)))
        forwarded = measured(lambda: forward_all(
            settings, url, list(range(WARM_UP + 1, WARM_UP + count + 1))), count)
    connection.cursor().execute(f"DROP TABLE {TABLE}")
    total = stored[1] + forwarded[1]
    cores = os.cpu_count() or 1
    print(f"stored:    {stored[0]:,.0f}/s, machine CPU {stored[1]:.2f} ms per reply\n"
          f"forwarded: {forwarded[0]:,.0f}/s, machine CPU {forwarded[1]:.2f} ms per reply\n"
          f"floor:     {total:.2f} ms per reply: at most {cores * 1000 / total:,.0f} replies/s "
          f"on {cores} cores (replies.py's target: {replies.TARGET_PER_S}/s)")


if __name__ == "__main__":
    main()
