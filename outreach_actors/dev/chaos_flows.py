"""The chaos run's host, recipient and operator flows: purchases POSTed to /events, replies, pauses, a migration.

``PurchasePoster`` plays the host app: for each purchasing contact whose first email
SendGrid accepted, it POSTs two signed host events (``trial_started``, a declared
event transition, then ``purchased``, the plan's goal), each one twice, the pair
in a random order and each request after a random delay, and retries a refused
request (503, a dropped connection: PostgreSQL down) as a host would. It records
when each event was first answered 200. ``OperatorFlows`` plays the operator: a
plan-wide pause and resume, a pause and resume of a few enrollments, a migration
of every enrollment in flight to a new plan version, each recording when it
committed (the audit's windows), each retried while the database is down.
``ReplyPoster`` plays SendGrid Inbound Parse: replies and out-of-office answers,
each posted twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import peewee

from outreach_actors.dev.inbound_posts import (
    REPLY_TEXT,
    inbound_form,
    post_inbound,
    simulated_reply,
)
from outreach_actors.dev.standin import AcceptedMessage, SendGridStandIn
from outreach_actors.domain import control, migrate, pauses
from outreach_actors.domain.store.models import database_proxy, utcnow
from outreach_actors.web.events import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign_events

logger = logging.getLogger(__name__)

TRIAL, PURCHASE = "trial_started", "purchased"
RETRY_PAUSE_S = 0.3
# Requests of a poster in flight at once: each holds one of the endpoint process's
# pooled database connections (32 by default) while it runs.
MAX_CONCURRENT_POSTS = 6
POST_TIMEOUT_S = 10


def watch_mail(standin: SendGridStandIn, stop: threading.Event,
               on_mail: Callable[[AcceptedMessage, str], None]) -> threading.Thread:
    """A thread calling ``on_mail(mail, recipient address)`` for each mail the stand-in
    accepts, until ``stop`` is set."""
    def watch() -> None:
        seen = 0
        while not stop.is_set():
            messages = standin.messages[seen:]
            seen += len(messages)
            for message in messages:
                on_mail(message, message.recipients()[0][0].lower())
            time.sleep(0.1)
    thread = threading.Thread(target=watch, name="chaos-mail-watch", daemon=True)
    thread.start()
    return thread


def purchase_event_ids(email: str) -> tuple[str, str]:
    """The host's own ids of one contact's two events (what it dedupes on)."""
    return f"trial:{email}", f"purchase:{email}"


@dataclass
class PurchasePoster:
    """POSTs the purchasing contacts' events to /events, signed, twice, out of order."""

    standin: SendGridStandIn
    events_url: str
    secret: str
    tenant: str
    purchasers: set[str]
    seed: int = 0
    max_delay_s: float = 2.0
    # Every other purchaser's events wait for release() (the run calls it as PostgreSQL
    # goes down), so that some POSTs meet the outage and are retried.
    hold_back_every: int = 2
    requests_posted: int = 0
    requests_refused: int = 0
    out_of_order_pairs: int = 0
    # Event id -> how many requests carrying it were answered 200, and the first such answer.
    answered: Counter = field(default_factory=Counter)
    first_answered_at: dict[str, datetime] = field(default_factory=dict)
    stored_answers: Counter = field(default_factory=Counter)  # answered "stored": true
    _queued: set[str] = field(default_factory=set)
    _held: list[str] = field(default_factory=list)
    _released: bool = False
    _timers: list[threading.Thread] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _in_flight: threading.Semaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(MAX_CONCURRENT_POSTS))

    def start(self) -> PurchasePoster:
        self._random = random.Random(self.seed)
        self._thread = watch_mail(self.standin, self._stop, self._on_mail)
        return self

    def _on_mail(self, message: AcceptedMessage, email: str) -> None:
        if email not in self.purchasers or email in self._queued:
            return
        self._queued.add(email)
        with self._lock:
            hold = (not self._released and self.hold_back_every
                    and len(self._queued) % self.hold_back_every == 0)
            if hold:
                self._held.append(email)
        if not hold:
            self._schedule(email)

    def _schedule(self, email: str) -> None:
        trial_id, purchase_id = purchase_event_ids(email)
        now = time.time()
        events = [{"tenant": self.tenant, "email": email, "event": TRIAL, "event_id": trial_id,
                   "occurred_at": _iso(now)},
                  {"tenant": self.tenant, "email": email, "event": PURCHASE,
                   "event_id": purchase_id, "properties": {"amount": 42},
                   "occurred_at": _iso(now + 0.5)}]
        posts = [event for event in events for _ in range(2)]
        self._random.shuffle(posts)
        self.out_of_order_pairs += posts.index(events[1]) < posts.index(events[0])
        for event in posts:
            thread = threading.Thread(target=self._post_until_accepted, daemon=True,
                                      args=(event, self._random.uniform(0, self.max_delay_s)))
            self._timers.append(thread)
            thread.start()

    def _post_until_accepted(self, event: dict[str, Any], delay_s: float) -> None:
        time.sleep(delay_s)
        body = json.dumps(event).encode()
        while True:
            timestamp = int(time.time())
            request = urllib.request.Request(self.events_url, data=body, method="POST", headers={
                "Content-Type": "application/json", TIMESTAMP_HEADER: str(timestamp),
                SIGNATURE_HEADER: sign_events(self.secret, body, timestamp)})
            try:
                with self._in_flight, urllib.request.urlopen(request,
                                                             timeout=POST_TIMEOUT_S) as response:
                    answer = json.loads(response.read())
            except (urllib.error.URLError, OSError, ValueError) as exc:
                with self._lock:
                    self.requests_posted += 1
                    self.requests_refused += 1
                logger.info("Chaos: POST /events refused (%s); retrying", exc)
                time.sleep(RETRY_PAUSE_S)
                continue
            with self._lock:
                self.requests_posted += 1
                self.answered[event["event_id"]] += 1
                self.first_answered_at.setdefault(event["event_id"], utcnow())
                self.stored_answers[event["event_id"]] += answer["results"][0]["stored"]
            return

    def release(self) -> None:
        """Post the events held back until now (and no longer hold any back)."""
        with self._lock:
            held, self._held, self._released = self._held, [], True
        for email in held:
            self._schedule(email)

    def stop(self) -> None:
        """Stop watching, and wait until every event queued has been answered 200."""
        self._stop.set()
        self._thread.join(timeout=10)
        self.release()
        for thread in self._timers:
            thread.join()

    def event_ids(self) -> set[str]:
        """The ids of every event posted (all of them accepted once stop returned)."""
        return {event_id for email in self._queued for event_id in purchase_event_ids(email)}


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, tz=None).astimezone().isoformat()


def retried(call: Callable[[], Any], *, attempts: int = 200) -> Any:
    """``call()``, again while the database is down (an operator would run it again)."""
    for _ in range(attempts - 1):
        try:
            return call()
        except (peewee.DatabaseError, peewee.InterfaceError) as exc:
            logger.info("Chaos: an operator call met the database down (%r); retrying", exc)
            if not database_proxy.obj.is_closed():
                try:
                    database_proxy.obj.close()
                except (peewee.DatabaseError, peewee.InterfaceError):
                    pass
            time.sleep(RETRY_PAUSE_S)
    return call()


@dataclass
class PauseWindow:
    """A pause as the audit reads it: from the moment ``pause`` had committed (it returned)
    to the moment ``resume`` was called; ``emails`` empty for a plan-wide pause."""

    started_at: datetime
    ended_at: datetime
    emails: tuple[str, ...] = ()


@dataclass
class OperatorFlows:
    """Pause and resume the plan, pause and resume a few enrollments, migrate mid-run."""

    tenant: str
    plan: str
    hold_s: float
    plan_pauses: list[PauseWindow] = field(default_factory=list)
    contact_pauses: list[PauseWindow] = field(default_factory=list)
    migrated: int = 0
    migration_started_at: datetime | None = None
    migration_ended_at: datetime | None = None

    def pause_plan(self) -> None:
        retried(lambda: pauses.pause_plan(self.tenant, self.plan, reason="chaos", by="chaos"))
        started = utcnow()
        time.sleep(self.hold_s)
        ended = utcnow()
        retried(lambda: pauses.resume_plan(self.tenant, self.plan, by="chaos"))
        self.plan_pauses.append(PauseWindow(started, ended))
        logger.warning("Chaos: plan paused and resumed")

    def pause_contacts(self, emails: list[str]) -> None:
        def pause(email: str) -> bool:
            try:
                return control.pause(self.tenant, email, self.plan)
            except control.ControlError:  # it ended meanwhile
                return False
        paused = tuple(email for email in emails if retried(lambda e=email: pause(e)))
        started = utcnow()
        time.sleep(self.hold_s)
        ended = utcnow()
        for email in paused:
            try:
                retried(lambda e=email: control.resume(self.tenant, e, self.plan))
            except control.ControlError:  # converted while paused: it ended
                pass
        self.contact_pauses.append(PauseWindow(started, ended, paused))
        logger.warning("Chaos: %d enrollments paused and resumed", len(paused))

    def migrate(self, to_version: int) -> None:
        self.migration_started_at = utcnow()
        result = retried(lambda: migrate.migrate(self.tenant, self.plan, to_version, apply=True))
        self.migration_ended_at = utcnow()
        self.migrated = result.moved
        logger.warning("Chaos: %d enrollments migrated to version %d", result.moved, to_version)




@dataclass
class ReplyPoster:
    """Posts the reply (a ``replier``) or out-of-office (a ``vacationer``) each such
    contact writes back to its first email, as SendGrid Inbound Parse posts it, signed,
    TWICE (as SendGrid retries a post byte for byte), each retried until answered 2xx."""

    standin: SendGridStandIn
    inbound_url: str
    private_key_pem: str
    persona: Callable[[str], str]
    posts: int = 0
    posts_refused: int = 0
    # The SHA-256 of every body answered 2xx (what must be stored once), by persona.
    accepted: dict[str, str] = field(default_factory=dict)
    _written: set[str] = field(default_factory=set)
    _threads: list[threading.Thread] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _in_flight: threading.Semaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(MAX_CONCURRENT_POSTS))

    def start(self) -> ReplyPoster:
        self._thread = watch_mail(self.standin, self._stop, self._on_mail)
        return self

    def _on_mail(self, message: AcceptedMessage, email: str) -> None:
        persona = self.persona(email)
        reply_to = (message.body.get("reply_to") or {}).get("email")
        if persona not in REPLY_TEXT or not reply_to or email in self._written:
            return
        self._written.add(email)
        body = inbound_form(simulated_reply(
            persona, sender=email, reply_to=reply_to, subject=message.body.get("subject", ""),
            message_id=(message.body.get("headers") or {}).get("Message-ID"),
            number=len(self._written)))
        for _ in range(2):
            thread = threading.Thread(target=self._post_until_accepted, args=(body, persona),
                                      daemon=True)
            self._threads.append(thread)
            thread.start()

    def _post_until_accepted(self, body: bytes, persona: str) -> None:
        while True:
            try:
                with self._in_flight:
                    status = post_inbound(self.inbound_url, body,
                                          private_key_pem=self.private_key_pem,
                                          timeout_s=POST_TIMEOUT_S)
            except OSError:
                status = 0
            with self._lock:
                self.posts += 1
                if 200 <= status < 300:
                    self.accepted[hashlib.sha256(body).hexdigest()] = persona
                    return
                self.posts_refused += 1
            time.sleep(RETRY_PAUSE_S)

    def stop(self) -> None:
        """Stop watching, and wait until every post has been answered 2xx."""
        self._stop.set()
        self._thread.join(timeout=10)
        for thread in self._threads:
            thread.join()


__all__ = ["OperatorFlows", "PauseWindow", "PurchasePoster", "ReplyPoster", "purchase_event_ids"]
