"""Simulated recipients: turn mail the SendGrid stand-in accepted into signed webhooks.

Used by ``outreach demo``, the end-to-end tests and the chaos benchmark. Each
recipient has a persona, read from the address (``clicker-7@example.com``): what
they do with every email they get.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from outreach_actors.dev.inbound_posts import (
    REPLY_TEXT,
    inbound_form,
    post_inbound,
    simulated_reply,
)
from outreach_actors.dev.standin import AcceptedMessage, SendGridStandIn
from outreach_actors.dev.webhook_events import emit_events, events_for

logger = logging.getLogger(__name__)

# What each persona does with an email, in SendGrid's event names.
PERSONAS: dict[str, tuple[str, ...]] = {
    "clicker": ("processed", "delivered", "open", "click"),
    "opener": ("processed", "delivered", "open"),
    "ignorer": ("processed", "delivered"),
    "bouncer": ("processed", "bounce"),
    # These also write back (dev/inbound_posts.py) when an inbound URL is given.
    "replier": ("processed", "delivered", "open"),
    "vacationer": ("processed", "delivered"),
}


def persona_of(email: str) -> str:
    """``clicker-3@example.com`` -> ``clicker``; unknown shapes ignore their mail."""
    prefix = email.split("@", 1)[0].split("-", 1)[0].lower()
    return prefix if prefix in PERSONAS else "ignorer"


@dataclass
class EngagementSimulator:
    """Watches the stand-in and posts each accepted mail's events, signed, to a webhook URL.

    Parameters:
      standin: the SendGrid stand-in whose accepted mail is watched.
      webhook_url: our ``/webhooks/sendgrid`` endpoint.
      private_key_pem: the Event Webhook signing key (None: unsigned).
      deliver_twice: post every batch twice, as SendGrid may.
      shuffle: post the events of a batch out of order.
      interval_s: how often batches are posted.
      inbound_url: our ``/webhooks/sendgrid/inbound`` endpoint: repliers and vacationers
        write back there, as SendGrid Inbound Parse posts (signed with the same key).
    """

    standin: SendGridStandIn
    webhook_url: str
    private_key_pem: str | None
    deliver_twice: bool = False
    shuffle: bool = False
    interval_s: float = 0.2
    persona: Callable[[str], str] = persona_of
    seed: int = 0
    inbound_url: str | None = None
    posted_batches: int = 0
    posted_events: int = 0
    posted_replies: int = 0
    failed_posts: int = 0
    _seen: int = 0
    _pending: list = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> EngagementSimulator:
        self._random = random.Random(self.seed)
        self._thread = threading.Thread(target=self._run, name="engagement", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop posting, then post the events of the mails accepted meanwhile."""
        self.halt()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.flush()

    def halt(self) -> None:
        """Stop posting at the next tick, leaving pending events unposted."""
        self._stop.set()

    def events_for_message(self, message: AcceptedMessage) -> list[dict]:
        email = message.recipients()[0][0]
        return events_for(message, *PERSONAS[self.persona(email)])

    def flush(self) -> None:
        """Post the events of every mail accepted since the last flush.

        A batch the endpoint refuses is kept and posted again next time, as
        SendGrid retries a webhook that did not answer 2xx.
        """
        messages = self.standin.messages
        new, self._seen = messages[self._seen:], len(messages)
        if self.inbound_url:
            for message in new:
                self._write_back(message)
        self._pending.extend(event for message in new for event in self.events_for_message(message))
        if not self._pending:
            return
        events, self._pending = self._pending, []
        if self.shuffle:
            self._random.shuffle(events)
        for _ in range(2 if self.deliver_twice else 1):
            if not self._post(events):
                self._pending = events
                return

    def _write_back(self, message: AcceptedMessage) -> None:
        """Post the reply of a replier or vacationer to the inbound endpoint (raw form)."""
        email = message.recipients()[0][0]
        persona = self.persona(email)
        reply_to = (message.body.get("reply_to") or {}).get("email")
        if persona not in REPLY_TEXT or not reply_to:
            return
        reply = simulated_reply(
            persona, sender=email, reply_to=reply_to, subject=message.body.get("subject", ""),
            message_id=(message.body.get("headers") or {}).get("Message-ID"),
            number=self.posted_replies)
        try:
            status = post_inbound(self.inbound_url, inbound_form(reply),
                                  private_key_pem=self.private_key_pem)
        except OSError as exc:
            status = 0
            logger.warning("Posting a simulated reply failed: %s", exc)
        if 200 <= status < 300:
            self.posted_replies += 1
        else:
            self.failed_posts += 1

    def _post(self, events: list[dict]) -> bool:
        try:
            status = emit_events(self.webhook_url, events, private_key_pem=self.private_key_pem)
        except OSError as exc:
            status = 0
            logger.warning("Posting %d simulated events failed: %s", len(events), exc)
        if 200 <= status < 300:
            self.posted_batches += 1
            self.posted_events += len(events)
            return True
        self.failed_posts += 1
        logger.warning("Webhook answered %s to %d simulated events", status, len(events))
        return False

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush()
