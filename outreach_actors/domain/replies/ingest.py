"""Act on stored Inbound Parse posts, a batch at a time: read each, match it to our email,
classify it, record its event once, and move, end or suppress (DESIGN invariants 2 and 3).

Safe to run twice: a reply's event is stored under a unique key (its own Message-ID),
and only the run that stored it acts; a second post of the same reply (SendGrid retries)
is kept as a duplicate of the first.

A run takes the post it was handed and up to ``BATCH_SIZE - 1`` more that wait (the
oldest), each locked so that no other run takes it (``FOR UPDATE SKIP LOCKED`` on
PostgreSQL, the write lock on SQLite), and processes them in one transaction: a busy
endpoint's posts cost one commit, one read of the emails they answer, one insert of
their events and one conversion, rather than each its own. The run that later gets
one of them finds it processed and ends there. Only posts no run has failed on, of at
most ``BATCH_MAX_POST_BYTES``, join another's run: a big post, or one that broke a run,
waits for its own. A post whose batch failed and was rolled back waits for the next run
that takes it, or for reconcile.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.utils import parseaddr, parsedate_to_datetime

from peewee import fn

from outreach_actors.domain import engine, ingest
from outreach_actors.domain.addresses import address_key
from outreach_actors.domain.mail import ambiguous
from outreach_actors.domain.replies.classify import Classification, classify
from outreach_actors.domain.replies.ending import apply_replies, wait_for_return
from outreach_actors.domain.replies.forward import FORWARD_HEADER, ReplyToForward
from outreach_actors.domain.replies.matching import Match, find_message, load_messages, named
from outreach_actors.domain.replies.parse import ParsedInbound, UnreadablePost, parse_post
from outreach_actors.domain.store.db import is_postgresql
from outreach_actors.domain.store.keys import reply_event_key
from outreach_actors.domain.store.models import (
    InboundPost,
    MessageEvent,
    OutboundMessage,
    database_proxy,
    insert_rows,
    utcnow,
    write_transaction,
)
from outreach_actors.domain.store.statements import statement
from outreach_actors.domain.vocabulary import REPLY_EVENTS, EventType, NormalizedEvent
from outreach_actors.settings import Settings, get_settings

logger = logging.getLogger(__name__)

#: What SendGrid's own name for these events is, kept as ``provider_event``.
PROVIDER_EVENT = "inbound_parse"
MAX_TEXT = 255
#: The most posts one run processes in one transaction (its own and others waiting).
BATCH_SIZE = 20
#: Larger posts are not taken into another post's run (a batch's memory stays small).
BATCH_MAX_POST_BYTES = 1024 * 1024

# Hands a post whose reply is to be forwarded to the worker that forwards it.
EnqueueForward = Callable[[int], None]

# How a run over a post ended; the columns it leaves NULL are kept as they were.
_FINISH = """
UPDATE inbound_post SET status = {p}, note = {p}, processed_at = {p}, attempts = attempts + 1,
    kind = COALESCE({p}, kind), tenant = COALESCE({p}, tenant),
    message_id = COALESCE({p}, message_id), event_key = COALESCE({p}, event_key),
    from_email = COALESCE({p}, from_email), subject = COALESCE({p}, subject),
    forward_status = COALESCE({p}, forward_status)
WHERE id = {p}
"""
_FINISHED = ("kind", "tenant", "message", "event_key", "from_email", "subject", "forward_status")


@dataclass
class Batch:
    """What one run did: each post's status afterwards, and the people's replies to
    forward now that it has committed."""

    statuses: dict[int, str] = field(default_factory=dict)
    forwards: list[ReplyToForward] = field(default_factory=list)


@dataclass
class _Reading:
    """One post of a batch as it is read, and how its run ends."""

    post: InboundPost
    parsed: ParsedInbound | None = None
    facts: dict = field(default_factory=dict)
    classification: Classification | None = None
    match: Match | None = None
    status: str | None = None
    note: str | None = None
    values: dict = field(default_factory=dict)

    def finish(self, status: str, note: str | None, **values) -> None:
        self.status, self.note, self.values = status, note, {**self.facts, **values}


def ingest_post(post_id: int, *, enqueue_forward: EnqueueForward,
                settings: Settings | None = None) -> str:
    """Process one stored post (alone); returns its status afterwards. A post already
    processed (or kept as unmatched, ignored, duplicate) is left alone: replay resets
    it first. A reply to forward is handed to ``enqueue_forward`` once committed."""
    batch = ingest_posts(post_id, limit=1, settings=settings)
    for reply in batch.forwards:
        enqueue_forward(reply.post_id)
    return batch.statuses[post_id]


def ingest_posts(post_id: int, *, limit: int = BATCH_SIZE,
                 settings: Settings | None = None) -> Batch:
    """Process the post ``post_id`` and up to ``limit - 1`` more that wait, in one
    transaction (see the module's docstring); its status is in the result whatever it
    was. A batch that fails is rolled back and its own post run alone: the others go
    back to waiting for their own runs, and a post that fails alone fails its own run,
    which is retried."""
    settings = settings or get_settings()
    batch = None
    if limit > 1:
        try:
            batch = _ingest_batch(post_id, limit, settings)
        except Exception:
            logger.warning("A batch of inbound posts with post=%s failed; it runs alone",
                           post_id, exc_info=True)
    if batch is None:
        try:
            batch = _ingest_batch(post_id, 1, settings)
        except Exception as exc:
            _count_failed_run(post_id, exc)
            raise
    if post_id not in batch.statuses:  # not waiting: taken by another run, or done before
        status = InboundPost.select(InboundPost.status).where(InboundPost.id == post_id).scalar()
        if status is None:
            logger.error("Inbound post=%s does not exist (purged?); nothing to do", post_id)
        batch.statuses[post_id] = status or "missing"
    return batch


def _ingest_batch(post_id: int, limit: int, settings: Settings) -> Batch:
    with write_transaction():
        readings = [_read(post) for post in _claim(post_id, limit)]
        _match(readings, settings)
        acting = _record_events(readings)
        forwards = _act(acting, settings)
        now = utcnow()
        for reading in readings:
            values = [reading.values.get(name) for name in _FINISHED]
            database_proxy.execute_sql(statement(_FINISH), [
                reading.status, reading.note, now, *values, reading.post.id])
    return Batch({reading.post.id: reading.status for reading in readings}, forwards)


def _count_failed_run(post_id: int, exc: Exception) -> None:
    """Count a run over the post that failed, and say so in its note: no other run takes
    it into a batch after that (its own run, retried, does)."""
    try:
        InboundPost.update(attempts=InboundPost.attempts + 1,
                           note=f"a run failed ({exc!r:.300}); it is retried").where(
            InboundPost.id == post_id, InboundPost.status == InboundPost.RECEIVED).execute()
    except Exception:  # the database that failed the run may be down
        logger.warning("Could not count the failed run of inbound post=%s", post_id,
                       exc_info=True)


def _claim(post_id: int, limit: int) -> list[InboundPost]:
    """The post ``post_id`` if it waits, and then the oldest others that wait, up to
    ``limit``, locked for this transaction (others: small, and no run failed on them)."""
    columns = (InboundPost.id, InboundPost.body, InboundPost.headers, InboundPost.received_at)
    locking = is_postgresql(database_proxy.obj)
    own = InboundPost.select(*columns).where(InboundPost.id == post_id,
                                             InboundPost.status == InboundPost.RECEIVED)
    posts = list(own.for_update("FOR UPDATE SKIP LOCKED") if locking else own)
    # A run whose post another took ends there: the posts that wait have runs of their own.
    if posts and limit > 1:
        others = InboundPost.select(*columns).where(
            InboundPost.status == InboundPost.RECEIVED, InboundPost.id != post_id,
            InboundPost.attempts == 0, fn.LENGTH(InboundPost.body) <= BATCH_MAX_POST_BYTES,
        ).order_by(InboundPost.id).limit(limit - 1)
        posts += list(others.for_update("FOR UPDATE SKIP LOCKED") if locking else others)
    # In the order received: of two posts of one reply, the first acts.
    return sorted(posts, key=lambda post: post.id)


def _read(post: InboundPost) -> _Reading:
    """Parse and classify one post; a post that cannot be read, or our own forward come
    back, is finished here."""
    reading = _Reading(post)
    try:
        reading.parsed = parse_post(bytes(post.body), (post.headers or {}).get("content-type"))
        reading.facts = _facts(reading.parsed.message)
    except (UnreadablePost, ValueError, LookupError, TypeError, RecursionError) as exc:
        # Hostile or broken mail: kept with the reason, never retried as it is.
        logger.warning("Inbound post=%s cannot be read: %s", post.id, exc)
        reading.parsed = None
        reading.finish(InboundPost.FAILED,
                       f"{exc}; kept as received (`outreach replies show {post.id}`)")
        return reading
    message = reading.parsed.message
    if (loop := message.get(FORWARD_HEADER)) is not None:
        reading.finish(InboundPost.IGNORED,
                       f"mail loop: our own forward (of post {str(loop)[:40]}) came back")
        return reading
    try:
        reading.classification = classify(message)
    except (LookupError, UnicodeError, ValueError, TypeError) as exc:  # a body no codec reads
        reading.parsed.warnings.append(f"read as a reply: its body cannot be decoded ({exc})")
        reading.classification = Classification(EventType.REPLIED)
    return reading


def _match(readings: list[_Reading], settings: Settings) -> None:
    """Find the email each reply answers, all read at once; the unmatched are finished."""
    open_readings = [reading for reading in readings if reading.status is None]
    names = {id(reading): named(reading.parsed.recipients, reading.parsed.message,
                                reading.classification.returned) for reading in open_readings}
    messages = load_messages(m for found in names.values() for m in found.message_ids)
    for reading in open_readings:
        match = reading.match = find_message(
            settings, reading.parsed.recipients, reading.parsed.message,
            reading.classification.returned, messages)
        if match.message is None:
            logger.info("Inbound post=%s matches none of our emails: %s", reading.post.id,
                        match.how)
            reading.finish(InboundPost.UNMATCHED,
                           "; ".join([match.how, *reading.parsed.warnings]),
                           kind=reading.classification.kind)


def _record_events(readings: list[_Reading]) -> list[_Reading]:
    """Store each matched reply's event once (one insert); the readings whose event this
    run stored, to act on. The rest are finished: a duplicate of another post's reply,
    or a post replayed after its reply was acted on."""
    matched = [reading for reading in readings if reading.status is None]
    rows = {}
    for reading in matched:
        ours = reading.match.message
        reading.values = {"event_key": reply_event_key(ours.tenant_id, _reply_id(reading.parsed)),
                          "occurred_at": _occurred_at(reading.parsed.message,
                                                      reading.post.received_at)}
        rows.setdefault(reading.values["event_key"], {
            "message": ours.id, "tenant": ours.tenant_id, "type": reading.classification.kind,
            "provider_event": PROVIDER_EVENT, "synthetic": False,
            "event_key": reading.values["event_key"], "email": address_key(ours.to_email),
            "occurred_at": reading.values["occurred_at"], "received_at": reading.post.received_at,
            "data": {**reading.classification.data, "inbound_post": reading.post.id},
        })
    new = set(insert_rows(MessageEvent, list(rows.values()), ignore_conflicts=True,
                          conflict_target="event_key", returning="event_key")) if rows else set()
    acting, first_of = [], {}
    for reading in matched:
        ours, key = reading.match.message, reading.values["event_key"]
        common = {"kind": reading.classification.kind, "tenant": ours.tenant_id,
                  "message": ours.id, "event_key": key}
        if key in new and key not in first_of:
            first_of[key] = reading.post.id
            acting.append(reading)
            continue
        first = first_of.get(key) or (InboundPost.select(InboundPost.id).where(
            InboundPost.event_key == key, InboundPost.id != reading.post.id).scalar())
        if first is None:  # this post's own event: a replay of a processed post
            reading.finish(InboundPost.PROCESSED, "replayed; its reply was acted on before",
                           **common)
        else:
            reading.finish(InboundPost.DUPLICATE, f"the same reply as post {first}; acted on once",
                           **common)
    return acting


def _act(acting: list[_Reading], settings: Settings) -> list[ReplyToForward]:
    """Move, end or suppress for each new reply, people's replies all at once; the
    replies to forward."""
    now = utcnow()
    replied = [r for r in acting if r.classification.kind == EventType.REPLIED]
    for reading in acting:
        _confirm_send(reading)
    # Moves happen now (their timers count from now), whenever the reply was written.
    moved = apply_replies([r.match.message.enrollment_id for r in replied
                           if r.match.message.enrollment_id], now=now)
    forwards, acted = [], set()
    for reading in acting:
        ours, kind = reading.match.message, reading.classification.kind
        if kind != EventType.REPLIED:
            outcome = _react(reading.classification, ours, reading.values["occurred_at"],
                             reading.values["event_key"], settings)
        elif ours.enrollment_id is None:
            outcome = "no enrollment"
        else:
            outcome = "enrollment " + (
                moved[ours.enrollment_id] if ours.enrollment_id not in acted else "nothing")
            acted.add(ours.enrollment_id)
        values = {"kind": kind, "tenant": ours.tenant_id, "message": ours.id,
                  "event_key": reading.values["event_key"]}
        # A person's reply goes to a person; auto-replies, DSNs and removals do not.
        if kind == EventType.REPLIED:
            values["forward_status"] = InboundPost.FORWARD_PENDING
            forwards.append(ReplyToForward(reading.post.id, ours, reading.parsed))
        logger.info("Inbound post=%s: %s of message=%s (%s, matched by %s)", reading.post.id,
                    kind, ours.id, outcome, reading.match.how)
        note = "; ".join(reading.parsed.warnings) or None
        reading.finish(InboundPost.PROCESSED,
                       "; ".join(filter(None, [outcome, f"matched by {reading.match.how}", note])),
                       **values)
    return forwards


def _confirm_send(reading: _Reading) -> None:
    """An answer proves the send whose answer was lost: it is not sent again."""
    ours, kind = reading.match.message, reading.classification.kind
    if kind in REPLY_EVENTS and ours.status in {OutboundMessage.AMBIGUOUS, OutboundMessage.FAILED}:
        ambiguous.confirm_by_event(
            OutboundMessage.select(*ambiguous.AMBIGUOUS_COLUMNS, OutboundMessage.status,
                                   OutboundMessage.action)
            .where(OutboundMessage.id == ours.id).first(), kind, reading.values["occurred_at"],
            None)


def _react(classification: Classification, message: OutboundMessage, occurred_at: datetime,
           event_key: str, settings: Settings) -> str:
    """What an auto-reply, a bounce or a removal request does (a person's reply: _act)."""
    kind = classification.kind
    if kind == EventType.AUTO_REPLIED:
        # Neither engagement nor a reply: it moves only where the plan routes it.
        moved = message.enrollment_id is not None and engine.process_event(
            message.enrollment_id, EventType.AUTO_REPLIED)
        if not moved:
            return "moves no one"
        if back := _date(classification.data.get("return_date")):
            held = wait_for_return(message.enrollment_id, back)
            return f"enrollment moved{', held until ' + back.isoformat() if held else ''}"
        return "enrollment moved"
    ingest.apply_message_event(NormalizedEvent(
        type=kind, provider_event=PROVIDER_EVENT, event_key=event_key, message_id=message.id,
        provider_message_id=None, tenant=message.tenant_id, email=message.to_email,
        occurred_at=occurred_at, data=classification.data,
    ), occurred_at, settings)
    return f"{kind} applied as a webhook's"


def _date(value: object) -> date | None:
    try:
        return date.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _facts(message) -> dict:
    sender = parseaddr(str(message.get("from", "")))[1]
    return {"from_email": sender[:MAX_TEXT] or None,
            "subject": str(message.get("subject", ""))[:1000] or None}


def _occurred_at(message, received_at: datetime) -> datetime:
    """When the reply was written (its Date), if that is before we received it."""
    try:
        written = parsedate_to_datetime(str(message["date"]))
    except (TypeError, ValueError, IndexError):
        return received_at
    if written.tzinfo is not None:
        written = written.astimezone(UTC).replace(tzinfo=None)
    return written if written <= received_at else received_at


def _reply_id(parsed: ParsedInbound) -> str:
    """The reply's own Message-ID; a digest of its headers when it has none."""
    own = str(parsed.message.get("message-id", "")).strip()
    if own:
        return own[:180]
    return hashlib.sha256("\n".join(f"{k}: {v}" for k, v in parsed.message.items())
                          .encode("utf-8", "replace")).hexdigest()


def replay_post(post_id: int, enqueue: Callable[[int], None]) -> None:
    """Reset a post to ``received`` and enqueue it again (``outreach replies replay``)."""
    reset = InboundPost.update(status=InboundPost.RECEIVED, note=None, processed_at=None).where(
        InboundPost.id == post_id).execute()
    if not reset:
        raise LookupError(f"there is no inbound post {post_id}")
    enqueue(post_id)
