"""Receive SendGrid's Event Webhook, framework-neutral: verify, limit, store raw, enqueue.

The Flask blueprint, the Django view and the standalone WSGI app each turn their
request into ``receive(headers, read, content_length)`` and its ``Reply`` back
into their response. The receiver does no business logic: it answers 2xx as
soon as the raw body is stored, and the ``normalize_webhook`` actor does the rest.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Mapping
from time import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from sendgrid.helpers.eventwebhook import EventWebhook, EventWebhookHeader

from outreach_actors.domain.ingest import store_delivery
from outreach_actors.settings import Settings, SettingsError, env_name
from outreach_actors.web.http import Reply, database_connection
from outreach_actors.worker.actors.webhooks import enqueue_delivery

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = EventWebhookHeader.SIGNATURE
TIMESTAMP_HEADER = EventWebhookHeader.TIMESTAMP
# Request headers not worth keeping with the raw body: credentials.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie"})
READ_CHUNK = 64 * 1024

BodyReader = Callable[[int], bytes]


class SendGridWebhookReceiver:
    """Verifies, size-checks and stores one SendGrid Event Webhook request, then enqueues it.

    Parameters:
      settings(Settings): ``sendgrid_webhook_public_key`` (base64 DER key from SendGrid's
        Mail Settings), ``sendgrid_webhook_allow_unsigned``, ``webhook_replay_window``,
        ``webhook_max_body_bytes``.

    Raises SettingsError at construction when the public key cannot be read, so a
    bad key fails the app at start rather than every request.
    """

    #: The settings of this receiver's key and of its unsigned opt-in, and what it takes.
    key_setting = "sendgrid_webhook_public_key"
    allow_unsigned_setting = "sendgrid_webhook_allow_unsigned"
    max_body_setting = "webhook_max_body_bytes"
    what = "webhook"
    #: The (signature, timestamp) header pairs a request may be signed in, in order.
    signature_headers: tuple[tuple[str, str], ...] = ((SIGNATURE_HEADER, TIMESTAMP_HEADER),)

    def __init__(self, settings: Settings) -> None:
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.settings = settings
        self.max_body = getattr(settings, self.max_body_setting)
        self.allow_unsigned = getattr(settings, self.allow_unsigned_setting)
        self.replay_window_s = settings.webhook_replay_window.total_seconds()
        self.verifier = _verifier(getattr(settings, self.key_setting), env_name(self.key_setting))
        key, unsigned = env_name(self.key_setting), env_name(self.allow_unsigned_setting)
        if self.verifier is None and self.allow_unsigned:
            self.logger.warning(
                "Unsigned %ss accepted: %s is set and no public key is configured; "
                "anyone who knows the URL can post them", self.what, unsigned,
            )
        elif self.verifier is None:
            self.logger.error(
                "No %s: every SendGrid %s is refused (403) until it is set (or %s=true)",
                key, self.what, unsigned,
            )

    def receive(
        self, headers: Mapping[str, str], read: BodyReader, content_length: int | None
    ) -> Reply:
        """Answer one POST: 200 once stored, 4xx for a request to refuse, 503 to be retried."""
        try:
            return self._receive({k.lower(): v for k, v in headers.items()}, read, content_length)
        except Exception:
            # SendGrid retries a 5xx for up to 24 hours; a 503 says "later", not "broken".
            self.logger.exception("Unexpected failure receiving a SendGrid webhook")
            return Reply(503, "The webhook could not be accepted now; retry later.\n")

    def _receive(
        self, headers: dict[str, str], read: BodyReader, content_length: int | None
    ) -> Reply:
        if content_length is not None and content_length > self.max_body:
            return self._refuse(413, f"body of {content_length} bytes is over the limit")
        if self.verifier is None and not self.allow_unsigned:
            return self._refuse(403, f"no {self.what} public key is configured")
        try:
            body = read_body(read, content_length, self.max_body)
        except BodyRefused as refused:
            return self._refuse(refused.status, refused.reason)
        if self.verifier is not None and (problem := self._signature_problem(headers, body)):
            return self._refuse(403, problem)
        try:
            with database_connection():
                stored_id, new = self.store(
                    body, {k: v for k, v in headers.items() if k not in SECRET_HEADERS})
        except Exception:
            self.logger.critical(
                "Could not store a SendGrid %s of %d bytes; answering 503 so that "
                "SendGrid sends it again", self.what, len(body), exc_info=True,
            )
            return Reply(503, f"The {self.what} could not be stored now; retry later.\n")
        if not new:
            return Reply(200, f"Already stored as {stored_id}.\n")
        try:
            self.enqueue(stored_id)
        except Exception:
            # The body is safe in the database; the stale sweep or a replay enqueues it again.
            self.logger.error(
                "Stored %s %s but could not enqueue it; run `outreach %s replay %s` if it "
                "stays received", self.what, stored_id, self.replay_group, stored_id,
                exc_info=True,
            )
        return Reply(200, f"Stored {self.what} {stored_id}.\n")

    replay_group = "webhooks"

    def store(self, body: bytes, headers: dict[str, str]) -> tuple[int, bool]:
        """Store the raw body; (its id, whether it is new)."""
        return store_delivery(body, headers), True

    def enqueue(self, stored_id: int) -> None:
        """Hand what was stored to the worker."""
        enqueue_delivery(stored_id)

    def _signature_problem(self, headers: dict[str, str], body: bytes) -> str | None:
        signed = [(name, headers.get(name.lower()), headers.get(stamp.lower()), stamp)
                  for name, stamp in self.signature_headers if headers.get(name.lower())]
        if not signed:
            name, stamp = self.signature_headers[0]
            return f"the {name} and {stamp} headers are required"
        # Signed in more than one pair: any that verifies will do.
        problems = [self._pair_problem(body, *pair) for pair in signed]
        return None if None in problems else problems[0]

    def _pair_problem(self, body: bytes, name: str, signature: str, timestamp: str | None,
                      stamp: str) -> str | None:
        if not timestamp:
            return f"the {name} and {stamp} headers are required"
        try:
            signed_at = int(timestamp)
        except ValueError:
            return f"{stamp} is not a Unix time"
        try:
            valid = self.verifier.verify_signature(body.decode("utf-8"), signature, timestamp)
        except UnicodeDecodeError:
            valid = self._verify_bytes(body, signature, timestamp)
        except (ValueError, TypeError):  # not base64: the helper raises instead of saying False
            valid = False
        if not valid:
            return "the signature does not match the body and timestamp"
        # In integers: a signed timestamp of hundreds of digits overflows a float.
        if abs(int(time()) - signed_at) > self.replay_window_s:
            return "the timestamp is outside the replay window"
        return None

    def _verify_bytes(self, body: bytes, signature: str, timestamp: str) -> bool:
        """The same check on raw bytes, for a body that is not UTF-8.

        SendGrid signs bytes, but its helper takes text; such a body is still ours to
        store (and keep as failed) when its signature is right.
        """
        try:
            self.verifier.public_key.verify(
                base64.b64decode(signature, validate=True), timestamp.encode() + body,
                ec.ECDSA(hashes.SHA256()),
            )
        except (InvalidSignature, ValueError, TypeError):
            return False
        return True

    def _refuse(self, status: int, reason: str) -> Reply:
        self.logger.warning("Refused a SendGrid webhook (%d): %s", status, reason)
        return Reply(status, f"Refused: {reason}.\n")


class BodyRefused(Exception):
    """A request body refused before it was read whole: ``status`` and ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status, self.reason = status, reason


def read_body(read: BodyReader, content_length: int | None, limit: int) -> bytes:
    """A request's body of at most ``limit`` bytes; BodyRefused (413 too long, 400
    unreadable) otherwise."""
    if content_length is not None and content_length > limit:
        raise BodyRefused(413, f"body of {content_length} bytes is over the limit of {limit}")
    try:
        body = read_at_most(read, limit)
    except Exception as exc:  # a client that hangs up mid-body
        raise BodyRefused(400, f"the body could not be read ({exc})") from None
    if body is None:
        raise BodyRefused(413, f"body is over the limit of {limit} bytes")
    return body


def read_at_most(read: BodyReader, limit: int) -> bytes | None:
    """Read a body of at most ``limit`` bytes; None if there is more."""
    chunks: list[bytes] = []
    remaining = limit + 1
    while remaining > 0:
        chunk = read(min(remaining, READ_CHUNK))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    body = b"".join(chunks)
    return None if len(body) > limit else body


def _verifier(public_key: str | None, setting: str) -> EventWebhook | None:
    if not public_key:
        return None
    # SendGrid shows the key as bare base64; people also paste it with PEM armour.
    bare = "".join(
        line.strip() for line in public_key.strip().splitlines() if not line.startswith("-----")
    )
    try:
        verifier = EventWebhook(bare)
    except ValueError as exc:
        raise SettingsError(
            f"{setting} is not a readable public key; copy the "
            f"verification key from SendGrid ({exc})"
        ) from None
    if not isinstance(verifier.public_key, ec.EllipticCurvePublicKey):
        raise SettingsError(
            f"{setting} is not an ECDSA key; "
            "SendGrid's signed webhooks use one"
        )
    return verifier
