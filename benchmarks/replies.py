"""Benchmark of replies: Inbound Parse posts taken end to end per second, on the real stack.

Each reply is a person's 20 KB answer (above a quoted history) with a 100 KB
attachment, posted in the raw form and signed as SendGrid signs it, to ``outreach
serve`` (the standalone app on waitress, in a process of its own). SendGrid posts
concurrently: ``POSTERS`` threads here (8) post at once, each over a keep-alive
connection of its own. The workers are what production runs (``dramatiq
outreach_actors``, 2 processes x 8 threads, on Redis and PostgreSQL), and each person's
reply is forwarded, a real send to the SendGrid stand-in (in this process).

- inbound_replies_per_s: N replies (1,000; 300 with --quick), each to the intro of one
  enrolled contact, from the first POST until every enrollment is converted (a reply is
  the plan's default goal) and the stand-in has accepted every reply's forward. Against
  the issue's target of 500 per second; run.py prints it beside
  ``webhook_events_per_s`` of the same run. A warm-up of 40 replies takes the whole
  path first, not timed.

Also printed (to stderr): how fast the endpoint answered the posts, and the CPU of one reply by
part of the machine (CpuMeter; the web server is a part of its own).

Usage: python benchmarks/replies.py [--quick] [--json]
"""

from __future__ import annotations

import http.client
import os
import queue
import sys
import time
from collections.abc import Sequence
from email.message import EmailMessage
from urllib.parse import urlparse

import _common
import redis

from outreach_actors.dev.inbound_posts import inbound_form, inbound_headers
from outreach_actors.dev.standin import SendGridStandIn
from outreach_actors.dev.webhook_events import generate_webhook_keys
from outreach_actors.domain.mail.reply_address import reply_address
from outreach_actors.domain.mail.threading import our_message_id
from outreach_actors.domain.plans import validate_plan
from outreach_actors.domain.replies.forward import FORWARD_HEADER
from outreach_actors.domain.store import models
from outreach_actors.domain.store.keys import enrollment_key
from outreach_actors.settings import Settings
from outreach_actors.web.endpoints import INBOUND_PATH

NAMESPACE = "outreach-bench-replies"
API_KEY = "SG.bench-key"
TARGET_PER_S = 500
QUICK, FULL = 300, 1000
WARM_UP = 40
POSTERS = 8
BODY_BYTES, ATTACHMENT_BYTES = 20_000, 100_000
PLAN = """
name: outreach
start: intro
nodes:
  intro:
    type: email
    subject: "Hello"
    body: "<p>Hi</p>"
    transitions:
      - {on: no_reply, after: P3D, to: stop}
  stop: {type: exit}
"""
# What each reply puts in place of these in the one template all are made from.
SENDER, REPLY_ADDRESS = b"sender-placeholder@example.com", b"reply-placeholder@example.com"
OWN_ID, ANSWERED_ID = b"<own-placeholder@example.com>", b"<answered-placeholder@example.com>"


def seed(settings: Settings, count: int) -> list[models.OutboundMessage]:
    """``count`` enrolled contacts, each with its intro sent (our Message-ID, Reply-To)."""
    plan = _common.seed_tenant(validate_plan(PLAN).to_definition())
    emails = [f"prospect-{n}@example.com" for n in range(count)]
    models.insert_rows(models.Contact, [{"tenant": _common.TENANT, "email": e} for e in emails])
    contacts = dict(models.Contact.select(models.Contact.email, models.Contact.id).tuples())
    models.insert_rows(models.Enrollment, [
        {"tenant": _common.TENANT, "plan": plan.id, "contact": contacts[e], "current_node": "intro",
         "enrollment_key": enrollment_key(_common.TENANT, plan.name, contacts[e])} for e in emails])
    enrollments = dict(models.Enrollment.select(models.Enrollment.contact, models.Enrollment.id)
                       .tuples())
    rows = []
    for n, email in enumerate(emails):
        message_id = models.new_message_id()
        rows.append({
            "id": message_id, "tenant": _common.TENANT, "enrollment": enrollments[contacts[email]],
            "node": "intro", "dedupe_key": f"bench:{n:06d}", "status": models.OutboundMessage.SENT,
            "to_email": email, "from_email": _common.SENDER, "subject": "Hello", "html": "<p>Hi</p>",
            "text": "Hi", "sent_at": models.utcnow(),
            "headers": {"Message-ID": our_message_id(message_id, _common.SENDER),
                        "Reply-To": reply_address(settings, _common.TENANT, message_id)},
        })
    models.insert_rows(models.OutboundMessage, rows)
    return list(models.OutboundMessage.select().order_by(models.OutboundMessage.dedupe_key))


def reply_template() -> bytes:
    """The Inbound Parse form of a person's 20 KB answer with a 100 KB attachment, as Gmail
    writes it, with placeholders for whom it is from and what it answers.

    Built once: the attachment's bytes are the same in every reply; each post still
    differs (its headers), so each is stored and read as its own."""
    reply = EmailMessage()
    reply["From"] = SENDER.decode()
    reply["To"] = REPLY_ADDRESS.decode()
    reply["Subject"] = "Re: Hello"
    reply["Message-ID"] = OWN_ID.decode()
    reply["In-Reply-To"] = reply["References"] = ANSWERED_ID.decode()
    quoted = "\n".join(f"> line {n} of the earlier conversation, quoted as mail clients do"
                       for n in range(BODY_BYTES // 64))
    reply.set_content("Yes, let's talk on Thursday.\n\nOn Mon, Hello wrote:\n" + quoted)
    reply.add_attachment(os.urandom(ATTACHMENT_BYTES), maintype="application", subtype="pdf",
                         filename="proposal.pdf")
    return inbound_form(bytes(reply))


def reply_post(template: bytes, message: models.OutboundMessage, number: int) -> bytes:
    """The form of ``message``'s recipient's reply (the ``number``th of the run)."""
    return (template.replace(SENDER, message.to_email.encode())
            .replace(REPLY_ADDRESS, message.headers["Reply-To"].encode())
            .replace(OWN_ID, f"<bench-{number}@mail.example.com>".encode())
            .replace(ANSWERED_ID, message.headers["Message-ID"].encode()))


def post_all(port: int, bodies: Sequence[bytes], headers: Sequence[dict[str, str]],
             posters: int) -> None:
    """POST every body with its headers from ``posters`` threads at once; RuntimeError
    naming the first answer that was not a 200."""
    waiting: queue.SimpleQueue[int] = queue.SimpleQueue()
    for index in range(len(bodies)):
        waiting.put(index)
    failures: list[str] = []

    def poster() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        try:
            while not failures:
                try:
                    index = waiting.get_nowait()
                except queue.Empty:
                    return
                connection.request("POST", INBOUND_PATH, body=bodies[index],
                                   headers=headers[index])
                response = connection.getresponse()
                answer = response.read()
                if response.status != 200:
                    failures.append(f"{response.status} {answer[:200]!r}")
        finally:
            connection.close()

    _common.in_threads(poster, posters, "poster")
    if failures:
        raise RuntimeError(f"the endpoint answered {failures[0]}")


def converted() -> int:
    return models.Enrollment.select().where(
        models.Enrollment.status == models.Enrollment.CONVERTED).count()


def run(quick: bool, database_url: str = _common.DATABASE_URL,
        redis_url: str = _common.REDIS_URL, posters: int = POSTERS) -> dict[str, dict]:
    """The figure as {"value", "unit", "reference", "ratio"}; the endpoint's rate and
    the CPU split go to stderr."""
    count = QUICK if quick else FULL
    keys = generate_webhook_keys()
    _common.ensure_database(database_url)
    client = redis.Redis.from_url(redis_url)
    _common.clear_redis(client, f"{NAMESPACE}*")
    with SendGridStandIn(api_key=API_KEY) as standin:
        environment = _common.bench_environment(
            database_url, redis_url, NAMESPACE, OUTREACH_INBOUND_DOMAIN="in.bench.outreach.test",
            OUTREACH_SENDGRID_INBOUND_PUBLIC_KEY=keys.public_key,
            OUTREACH_SENDGRID_API_KEY=API_KEY, OUTREACH_SENDGRID_API_HOST=standin.host)
        settings = _common.install(environment)
        database = _common.fresh_schema()
        try:
            with database.connection_context():
                messages = seed(settings, WARM_UP + count)
                template = reply_template()
                bodies = [reply_post(template, message, n) for n, message in enumerate(messages)]
                # Signed before the clock starts: signing is SendGrid's work, not ours.
                headers = [inbound_headers(body, keys.private_key_pem) for body in bodies]
                with _common.Workers(environment) as workers, \
                        _common.WebServer(environment) as server:
                    post_all(server.port, bodies[:WARM_UP], headers[:WARM_UP], posters)
                    standin.wait_for(WARM_UP, timeout=120)
                    _common.wait_until(lambda: converted() >= WARM_UP, timeout_s=60,
                                       what="the warm-up")
                    cpu = _common.CpuMeter(workers, others={"web server": server.process.pid},
                                           database=urlparse(database_url).path.lstrip("/"))
                    started = time.monotonic()
                    post_all(server.port, bodies[WARM_UP:], headers[WARM_UP:], posters)
                    posted = time.monotonic()
                    # Watched through the stand-in, in this process; only then the database.
                    _common.wait_until(lambda: len(standin.messages) >= WARM_UP + count,
                                       timeout_s=600, what=f"{count} forwards", interval_s=0.02)
                    finished = _common.wait_until(lambda: converted() >= WARM_UP + count,
                                                  timeout_s=60, what=f"{count} conversions")
                    split = cpu.ms_per_item(count)
                check(standin, WARM_UP + count)
                # A run stamps the posts it read with one time.
                batches = models.InboundPost.select(models.InboundPost.processed_at).where(
                    models.InboundPost.id > WARM_UP).distinct().count()
                count_per_run = count / batches
        finally:
            database.close_all()
            _common.clear_redis(client, f"{NAMESPACE}*")
    per_s = count / (finished - started)
    print(f"{count} replies, {posters} posters: the endpoint took "
          f"{count / (posted - started):.0f} posts/s; end to end {per_s:.0f}/s; "
          f"{batches} runs of ingest_inbound_post read posts, {count_per_run:.1f} each\n"
          f"CPU ms per reply: {_common.cpu_split(split)}", file=sys.stderr)
    return {"inbound_replies_per_s": _common.figure(round(per_s), "replies/s", TARGET_PER_S)}


def check(standin: SendGridStandIn, total: int) -> None:
    """Every reply moved its enrollment once and was forwarded once, with its email."""
    forwards = standin.messages
    posts = {message.body["headers"][FORWARD_HEADER] for message in forwards}
    attached = sum(1 for message in forwards if message.body.get("attachments"))
    ended, events = converted(), models.MessageEvent.select().where(
        models.MessageEvent.type == "replied").count()
    if not (len(forwards) == len(posts) == attached == ended == events == total):
        raise RuntimeError(f"benchmark run is wrong: {len(forwards)} forwards of {len(posts)} "
                           f"posts ({attached} with the email), {events} replies recorded, "
                           f"{ended} enrollments converted; expected {total} of each")


def main() -> None:
    _common.command_line(run, __doc__, quick_help=f"{QUICK:,} replies, not {FULL:,}")


if __name__ == "__main__":
    main()
