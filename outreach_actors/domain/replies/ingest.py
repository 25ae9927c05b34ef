"""Act on one stored Inbound Parse post: read it, match it to our email, classify it,
record its event once, and move, end or suppress (DESIGN invariants 2 and 3).

Safe to run twice: the reply's event is stored under a unique key (its own Message-ID),
and only the run that stored it acts; a second post of the same reply (SendGrid retries)
is kept as a duplicate of the first.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from datetime import UTC, date, datetime
from email.utils import parseaddr, parsedate_to_datetime

from outreach_actors.domain import engine, ingest
from outreach_actors.domain.addresses import address_key
from outreach_actors.domain.mail import ambiguous
from outreach_actors.domain.replies.classify import Classification, classify
from outreach_actors.domain.replies.ending import apply_reply, wait_for_return
from outreach_actors.domain.replies.forward import FORWARD_HEADER
from outreach_actors.domain.replies.matching import find_message
from outreach_actors.domain.replies.parse import ParsedInbound, UnreadablePost, parse_post
from outreach_actors.domain.store.keys import reply_event_key
from outreach_actors.domain.store.models import (
    InboundPost,
    MessageEvent,
    OutboundMessage,
    database_proxy,
    insert_rows,
    utcnow,
)
from outreach_actors.domain.vocabulary import REPLY_EVENTS, EventType, NormalizedEvent
from outreach_actors.settings import Settings, get_settings

logger = logging.getLogger(__name__)

#: What SendGrid's own name for these events is, kept as ``provider_event``.
PROVIDER_EVENT = "inbound_parse"
MAX_TEXT = 255

# Hands a post whose reply is to be forwarded to the worker that forwards it.
EnqueueForward = Callable[[int], None]


def ingest_post(post_id: int, *, enqueue_forward: EnqueueForward,
                settings: Settings | None = None) -> str:
    """Process one stored post; returns its status afterwards. A post already processed
    (or kept as unmatched, ignored, duplicate) is left alone: replay resets it first.

    One transaction, committed before its forward is enqueued: a reply's effects and its
    post's status are stored together or not at all."""
    settings = settings or get_settings()
    with database_proxy.atomic():
        post = InboundPost.get_or_none(InboundPost.id == post_id)
        if post is None:
            logger.error("Inbound post=%s does not exist (purged?); nothing to do", post_id)
            return "missing"
        if post.status != InboundPost.RECEIVED:
            return post.status
        status = _ingest(post, settings)
    if status == InboundPost.PROCESSED and post.forward_status == InboundPost.FORWARD_PENDING:
        enqueue_forward(post_id)
    return status


def _ingest(post: InboundPost, settings: Settings) -> str:
    post_id = post.id
    try:
        parsed = parse_post(bytes(post.body), (post.headers or {}).get("content-type"))
        message = parsed.message
        facts = _facts(message)
    except (UnreadablePost, ValueError, LookupError, TypeError, RecursionError) as exc:
        # Hostile or broken mail: kept with the reason, never retried as it is.
        logger.warning("Inbound post=%s cannot be read: %s", post_id, exc)
        return _finish(post_id, InboundPost.FAILED,
                       f"{exc}; kept as received (`outreach replies show {post_id}`)")
    if (loop := message.get(FORWARD_HEADER)) is not None:
        return _finish(post_id, InboundPost.IGNORED,
                       f"mail loop: our own forward (of post {str(loop)[:40]}) came back", **facts)
    try:
        classification = classify(message)
    except (LookupError, UnicodeError, ValueError, TypeError) as exc:  # a body no codec reads
        parsed.warnings.append(f"read as a reply: its body cannot be decoded ({exc})")
        classification = Classification(EventType.REPLIED)
    match = find_message(settings, parsed.recipients, message, classification.returned)
    if match.message is None:
        logger.info("Inbound post=%s matches none of our emails: %s", post_id, match.how)
        return _finish(post_id, InboundPost.UNMATCHED, "; ".join([match.how, *parsed.warnings]),
                       kind=classification.kind, **facts)
    ours = match.message
    occurred_at = _occurred_at(message, post.received_at)
    event_key = reply_event_key(ours.tenant_id, _reply_id(parsed))
    note = "; ".join(parsed.warnings) or None
    new = insert_rows(MessageEvent, [{
        "message": ours.id, "tenant": ours.tenant_id, "type": classification.kind,
        "provider_event": PROVIDER_EVENT, "synthetic": False, "event_key": event_key,
        "email": address_key(ours.to_email), "occurred_at": occurred_at,
        "received_at": post.received_at, "data": {**classification.data, "inbound_post": post_id},
    }], ignore_conflicts=True, conflict_target="event_key", returning="event_key")
    common = {"kind": classification.kind, "tenant": ours.tenant_id, "message": ours.id,
              "event_key": event_key, **facts}
    if not new:
        first = (InboundPost.select(InboundPost.id).where(
            InboundPost.event_key == event_key, InboundPost.id != post_id).scalar())
        if first is None:  # this post's own event: a replay of a processed post
            return _finish(post_id, InboundPost.PROCESSED,
                           "replayed; its reply was acted on before", **common)
        return _finish(post_id, InboundPost.DUPLICATE,
                       f"the same reply as post {first}; acted on once", **common)
    outcome = _react(classification, ours, occurred_at, event_key, settings)
    # A person's reply goes to a person; auto-replies, DSNs and removals do not.
    if classification.kind == EventType.REPLIED:
        post.forward_status = common["forward_status"] = InboundPost.FORWARD_PENDING
    logger.info("Inbound post=%s: %s of message=%s (%s, matched by %s)", post_id,
                classification.kind, ours.id, outcome, match.how)
    return _finish(post_id, InboundPost.PROCESSED,
                   "; ".join(filter(None, [outcome, f"matched by {match.how}", note])), **common)


def _react(classification: Classification, message: OutboundMessage, occurred_at: datetime,
           event_key: str, settings: Settings) -> str:
    kind = classification.kind
    if kind in REPLY_EVENTS and message.status in {OutboundMessage.AMBIGUOUS,
                                                   OutboundMessage.FAILED}:
        # An answer proves the send whose answer was lost: it is not sent again.
        ambiguous.confirm_by_event(
            OutboundMessage.select(*ambiguous.AMBIGUOUS_COLUMNS, OutboundMessage.status,
                                   OutboundMessage.action)
            .where(OutboundMessage.id == message.id).first(), kind, occurred_at, None)
    if kind == EventType.REPLIED:
        # Moves happen now (their timers count from now), whenever the reply was written.
        return f"enrollment {apply_reply(message.enrollment_id, now=utcnow())}" \
            if message.enrollment_id else "no enrollment"
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


def _finish(post_id: int, status: str, note: str | None, **values) -> str:
    """Record how a run over the post ended (each run counts as an attempt)."""
    InboundPost.update(status=status, note=note, processed_at=utcnow(),
                       attempts=InboundPost.attempts + 1, **values).where(
        InboundPost.id == post_id).execute()
    return status


def replay_post(post_id: int, enqueue: Callable[[int], None]) -> None:
    """Reset a post to ``received`` and enqueue it again (``outreach replies replay``)."""
    reset = InboundPost.update(status=InboundPost.RECEIVED, note=None, processed_at=None).where(
        InboundPost.id == post_id).execute()
    if not reset:
        raise LookupError(f"there is no inbound post {post_id}")
    enqueue(post_id)
