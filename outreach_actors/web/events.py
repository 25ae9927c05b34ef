"""``POST /events``, framework-neutral: host events from apps that are not Python.

The body is JSON: one event ``{"tenant", "email", "event", "properties"?, "event_id"?,
"occurred_at"?}`` or an array of up to 1,000 of them. It is authenticated like
Stripe's webhooks: ``X-Outreach-Timestamp`` (Unix seconds) and
``X-Outreach-Signature: sha256=<hex>``, the HMAC-SHA256 of ``"<timestamp>.<body>"``
with ``OUTREACH_EVENTS_SECRET``; a timestamp outside the replay window is refused.
A batch with any bad event is refused whole (400, each fault with its index) and
stores nothing; a good one is stored, then moves contacts (see domain.host_events),
and the answer lists, in order, each event's key, whether it was new, and how many
enrollments it moved.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Mapping
from time import time
from typing import Any

import peewee

from outreach_actors.domain import dispatch
from outreach_actors.domain.host_events import MAX_BATCH, TrackError, checked_event, track_many
from outreach_actors.settings import Settings
from outreach_actors.web.http import Reply, database_connection
from outreach_actors.web.webhooks import BodyReader, BodyRefused, read_body
from outreach_actors.worker.actors.mail import enqueue_actions

logger = logging.getLogger(__name__)

EVENTS_PATH = "/events"
SIGNATURE_HEADER = "X-Outreach-Signature"
TIMESTAMP_HEADER = "X-Outreach-Timestamp"
SIGNATURE_PREFIX = "sha256="
_EVENT_KEYS = {"tenant", "email", "event", "properties", "event_id", "occurred_at"}
JSON_TYPE = "application/json"


def sign_events(secret: str, body: bytes, timestamp: int) -> str:
    """The X-Outreach-Signature value of ``body`` sent at ``timestamp`` (for clients and tests)."""
    digest = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return SIGNATURE_PREFIX + digest.hexdigest()


class EventsReceiver:
    """Verifies, bounds, checks and stores one ``POST /events`` request.

    Parameters:
      settings(Settings): ``events_secret``, ``webhook_replay_window``,
        ``webhook_max_body_bytes``.
    """

    def __init__(self, settings: Settings) -> None:
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.secret = settings.events_secret
        self.max_body = settings.webhook_max_body_bytes
        self.replay_window_s = int(settings.webhook_replay_window.total_seconds())

    def receive(self, headers: Mapping[str, str], read: BodyReader,
                content_length: int | None) -> Reply:
        """Answer one POST: 200 with the results, 4xx saying what to fix, 503 to retry."""
        try:
            return self._receive({k.lower(): v for k, v in headers.items()}, read, content_length)
        except Exception:
            self.logger.exception("Unexpected failure receiving host events")
            return _json(503, {"error": "the events could not be accepted now; retry later"})

    def _receive(self, headers: dict[str, str], read: BodyReader,
                 content_length: int | None) -> Reply:
        if not self.secret:
            return self._refuse(403, "OUTREACH_EVENTS_SECRET is not set: every POST /events is "
                                     "refused until it is")
        try:
            body = read_body(read, content_length, self.max_body)
        except BodyRefused as refused:
            return self._refuse(refused.status, refused.reason)
        if problem := self._signature_problem(headers, body):
            return self._refuse(401, problem)
        try:
            events = _events(body)
        except ValueError as exc:
            return self._refuse(400, str(exc))
        rows, errors = [], []
        for index, event in enumerate(events):
            try:
                rows.append(_checked(event))
            except TrackError as exc:
                errors.append({"index": index, "error": str(exc)})
        if errors:
            self.logger.warning("Refused a batch of %d host events: %d invalid",
                                len(events), len(errors))
            return _json(400, {"error": "some events are invalid; nothing was stored",
                               "errors": errors})
        try:
            with database_connection(), dispatch.dispatch_after_commit(enqueue_actions):
                results = track_many(rows)
        except TrackError as exc:  # an unknown tenant
            return self._refuse(400, str(exc))
        except peewee.OperationalError:
            self.logger.error("Could not store %d host events", len(rows), exc_info=True)
            return _json(503, {"error": "the events could not be stored now; retry later"})
        return _json(200, {"results": [
            {"event_key": result.event_key, "stored": result.stored, "moved": result.moved}
            for result in results]})

    def _signature_problem(self, headers: dict[str, str], body: bytes) -> str | None:
        signature = headers.get(SIGNATURE_HEADER.lower(), "")
        timestamp = headers.get(TIMESTAMP_HEADER.lower(), "")
        if not signature or not timestamp:
            return f"the {SIGNATURE_HEADER} and {TIMESTAMP_HEADER} headers are required"
        if not timestamp.isdigit() or len(timestamp) > 12:
            return f"{TIMESTAMP_HEADER} is not a Unix time in seconds"
        expected = sign_events(self.secret, body, int(timestamp))
        if not hmac.compare_digest(expected.encode(), signature.strip().encode("utf-8", "replace")):
            return (f"{SIGNATURE_HEADER} does not match: expected sha256= and the hex HMAC-SHA256 "
                    "of '<timestamp>.<body>' with OUTREACH_EVENTS_SECRET")
        if abs(int(time()) - int(timestamp)) > self.replay_window_s:
            return f"{TIMESTAMP_HEADER} is outside the replay window of {self.replay_window_s} s"
        return None

    def _refuse(self, status: int, reason: str) -> Reply:
        self.logger.warning("Refused POST /events (%d): %s", status, reason)
        return _json(status, {"error": reason})


def _events(body: bytes) -> list[Any]:
    """The events of a body: one object or an array of them; ValueError saying why not."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"the body is not JSON: {exc}"[:300]) from None
    events = [data] if isinstance(data, dict) else data
    if not isinstance(events, list):
        raise ValueError("the body must be one event (a JSON object) or an array of them")
    if not events:
        raise ValueError("the array holds no events")
    if len(events) > MAX_BATCH:
        raise ValueError(f"{len(events):,} events in one request; the limit is {MAX_BATCH:,}")
    return events


def _checked(event: Any) -> dict[str, Any]:
    if not isinstance(event, dict):
        raise TrackError("an event must be a JSON object with tenant, email and event")
    unknown = sorted(set(event) - _EVENT_KEYS)
    if unknown:
        raise TrackError(f"unknown key {unknown[0][:40]!r}; an event has "
                         f"{', '.join(sorted(_EVENT_KEYS))}")
    return checked_event(event.get("tenant"), event.get("email"), event.get("event"),
                         event.get("properties"), event_id=event.get("event_id"),
                         occurred_at=event.get("occurred_at"))


def _json(status: int, payload: dict[str, Any]) -> Reply:
    return Reply(status, json.dumps(payload) + "\n", content_type=JSON_TYPE)
