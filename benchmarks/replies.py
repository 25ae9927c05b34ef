"""Benchmark of replies: Inbound Parse posts taken end to end per second on PostgreSQL.

Each reply is a 20 KB email (the answer above a quoted history) with a 100 KB
attachment, posted in the raw form and signed as SendGrid signs it. One after
another, as one web thread and one worker thread would take them: the receiver
verifies the signature and stores the post raw, then ``ingest_post`` parses,
classifies and matches it, records its event and ends its enrollment (the plan's
default on a reply). The forward it queues is a send of its own, not timed here. The
figure is replies over the median time of one (the median, so that another process on
a small machine does not decide it), against the issue's target of 500 per second;
run.py prints it beside ``webhook_events_per_s``.

Usage: python benchmarks/replies.py [--quick] [--json]
"""

from __future__ import annotations

import io
import os
import statistics
import time
from email.message import EmailMessage

import _common

from outreach_actors.dev.inbound_posts import inbound_form, inbound_headers
from outreach_actors.dev.webhook_events import generate_webhook_keys
from outreach_actors.domain.mail.reply_address import reply_address
from outreach_actors.domain.mail.threading import our_message_id
from outreach_actors.domain.plans import validate_plan
from outreach_actors.domain.replies.ingest import ingest_post
from outreach_actors.domain.store import models
from outreach_actors.domain.store.keys import enrollment_key
from outreach_actors.settings import Settings
from outreach_actors.web.inbound import SendGridInboundReceiver

NAMESPACE = "bench-replies"
TARGET_PER_S = 500
QUICK, FULL = 200, 1000
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
            "node": "intro", "dedupe_key": f"bench:{n}", "status": models.OutboundMessage.SENT,
            "to_email": email, "from_email": _common.SENDER, "subject": "Hello", "html": "<p>Hi</p>",
            "text": "Hi", "sent_at": models.utcnow(),
            "headers": {"Message-ID": our_message_id(message_id, _common.SENDER),
                        "Reply-To": reply_address(settings, _common.TENANT, message_id)},
        })
    models.insert_rows(models.OutboundMessage, rows)
    return list(models.OutboundMessage.select().order_by(models.OutboundMessage.dedupe_key))


def reply_to(message: models.OutboundMessage, number: int) -> bytes:
    """A person's 20 KB answer to ``message`` with a 100 KB attachment, as Gmail writes it."""
    reply = EmailMessage()
    reply["From"] = message.to_email
    reply["To"] = message.headers["Reply-To"]
    reply["Subject"] = "Re: Hello"
    reply["Message-ID"] = f"<bench-{number}@mail.example.com>"
    reply["In-Reply-To"] = reply["References"] = message.headers["Message-ID"]
    quoted = "\n".join(f"> line {n} of the earlier conversation, quoted as mail clients do"
                       for n in range(BODY_BYTES // 64))
    reply.set_content("Yes, let's talk on Thursday.\n\nOn Mon, Hello wrote:\n" + quoted)
    reply.add_attachment(os.urandom(ATTACHMENT_BYTES), maintype="application", subtype="pdf",
                         filename="proposal.pdf")
    return bytes(reply)


def run(quick: bool, database_url: str = _common.DATABASE_URL,
        redis_url: str = _common.REDIS_URL) -> dict[str, dict]:
    count = QUICK if quick else FULL
    keys = generate_webhook_keys()
    _common.ensure_database(database_url)
    settings = _common.install(_common.bench_environment(
        database_url, redis_url, NAMESPACE, OUTREACH_INBOUND_DOMAIN="in.bench.outreach.test",
        OUTREACH_SENDGRID_INBOUND_PUBLIC_KEY=keys.public_key))
    database = _common.fresh_schema()
    receiver = SendGridInboundReceiver(settings)
    stored: list[int] = []
    receiver.enqueue = stored.append  # the worker below takes it, in this thread
    try:
        with database.connection_context():
            messages = seed(settings, count)
            bodies = [inbound_form(reply_to(message, n)) for n, message in enumerate(messages)]
            durations = []
            for body in bodies:
                headers = inbound_headers(body, keys.private_key_pem)
                started = time.perf_counter()
                answer = receiver.receive(headers, io.BytesIO(body).read, len(body))
                ingest_post(stored[-1], enqueue_forward=lambda post_id: None, settings=settings)
                durations.append(time.perf_counter() - started)
                if answer.status != 200:
                    raise RuntimeError(f"the endpoint answered {answer.status}: {answer.body}")
            ended = models.Enrollment.select().where(
                models.Enrollment.status == models.Enrollment.COMPLETED).count()
            if ended != count:
                raise RuntimeError(f"{ended} of {count} enrollments ended on their reply")
    finally:
        database.close_all()
    per_s = 1 / statistics.median(durations)
    return {"inbound_replies_per_s": _common.figure(round(per_s), "replies/s", TARGET_PER_S)}


def main() -> None:
    _common.command_line(run, __doc__, quick_help=f"{QUICK:,} replies, not {FULL:,}")


if __name__ == "__main__":
    main()
