"""What SendGrid's Event Webhook would report of mail the stand-in accepted: the events
(:func:`events_for`), signed as SendGrid signs them (:func:`sign_webhook`) and posted
(:func:`emit_events`); and the key pair a test or the demo signs with."""

from __future__ import annotations

import base64
import copy
import json
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sendgrid.helpers.eventwebhook.eventwebhook_header import EventWebhookHeader

from outreach_actors.dev.standin import AcceptedMessage

# What SendGrid adds to each kind of event, beyond the fields every event has.
# "machine_open" and "blocked" are names for this helper only: SendGrid reports them
# as an "open" with sg_machine_open and a "bounce" of type "blocked".
_EVENT_FIELDS: dict[str, dict[str, Any]] = {
    "processed": {"event": "processed"},
    "deferred": {"event": "deferred", "response": "400 try again later", "attempt": "1"},
    "delivered": {"event": "delivered", "response": "250 OK", "tls": 1, "ip": "168.1.1.1"},
    "open": {
        "event": "open", "sg_machine_open": False, "ip": "192.0.2.10",
        "useragent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64)",
    },
    "machine_open": {
        "event": "open", "sg_machine_open": True, "ip": "192.0.2.11",
        "useragent": "Mozilla/5.0 (via ggpht.com GoogleImageProxy)",
    },
    "click": {
        "event": "click", "url": "https://example.com/", "url_offset": {"index": 0, "type": "html"},
        "ip": "192.0.2.10", "useragent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64)",
    },
    "bounce": {
        "event": "bounce", "type": "bounce", "bounce_classification": "Invalid Address",
        "reason": "550 5.1.1 The email account that you tried to reach does not exist", "status": "5.1.1",
    },
    "blocked": {
        "event": "bounce", "type": "blocked", "bounce_classification": "Technical",
        "reason": "550 5.7.1 blocked by policy", "status": "5.7.1",
    },
    "dropped": {"event": "dropped", "reason": "Bounced Address", "status": "5.0.0"},
    "spamreport": {"event": "spamreport"},
    "unsubscribe": {"event": "unsubscribe"},
    "group_unsubscribe": {"event": "group_unsubscribe", "asm_group_id": 1},
    "group_resubscribe": {"event": "group_resubscribe", "asm_group_id": 1},
}
# Events that SendGrid sends from its MTA carry the SMTP id of the mail.
_SMTP_EVENTS = frozenset({"processed", "deferred", "delivered", "bounce", "blocked", "dropped"})
EVENT_KINDS = frozenset(_EVENT_FIELDS)


def events_for(
    message: AcceptedMessage, *kinds: str, timestamp: int | None = None, **overrides: Any
) -> list[dict[str, Any]]:
    """The events SendGrid would report for ``message``: one per recipient per kind, in order.

    Each carries the mail's custom_args at the top level, its categories, a fresh
    ``sg_event_id`` and an ``sg_message_id`` that starts with the X-Message-Id.
    Timestamps start at ``timestamp`` (now by default), one second apart per kind;
    ``overrides`` replace fields in every event (``url=...``, ``reason=...``).
    """
    unknown = [kind for kind in kinds if kind not in _EVENT_FIELDS]
    if unknown:
        raise ValueError(f"unknown event kinds {unknown}; known: {sorted(_EVENT_FIELDS)}")
    start = int(time.time()) if timestamp is None else timestamp
    categories = message.body.get("categories")
    events = []
    for step, kind in enumerate(kinds):
        for index, (email, custom_args) in enumerate(message.recipients()):
            event: dict[str, Any] = {
                "email": email,
                "timestamp": start + step,
                **copy.deepcopy(_EVENT_FIELDS[kind]),
                "sg_event_id": base64.b64encode(secrets.token_bytes(16)).decode(),
                "sg_message_id": (
                    f"{message.x_message_id}.filterdrecv-standin-{int(message.received_at):X}-{index}.0"
                ),
            }
            if kind in _SMTP_EVENTS:
                event["smtp-id"] = f"<{message.x_message_id}@ismtpd0001p1.sendgrid.net>"
            if categories:
                event["category"] = list(categories)
            event.update(custom_args)
            event.update(overrides)
            events.append(event)
    return events


@dataclass(frozen=True)
class WebhookKeys:
    """An Event Webhook key pair: the PEM private key signs, ``public_key`` is what SendGrid shows."""

    private_key_pem: str
    public_key: str


def generate_webhook_keys() -> WebhookKeys:
    """A fresh P-256 key pair, with the public key as SendGrid's settings page shows it."""
    private_key = ec.generate_private_key(ec.SECP256R1())
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return WebhookKeys(pem, public_key_for(pem))


def public_key_for(private_key_pem: str) -> str:
    """The base64 DER public key (no PEM armour) that verifies what ``private_key_pem`` signs."""
    der = _private_key(private_key_pem).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def _private_key(private_key_pem: str) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError("the Event Webhook key must be an ECDSA P-256 private key in PEM")
    return key


def sign_webhook(body: bytes, timestamp: str, private_key_pem: str) -> str:
    """SendGrid's signature: base64(ECDSA-P256-SHA256 over timestamp + raw body), DER encoded."""
    signature = _private_key(private_key_pem).sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return base64.b64encode(signature).decode()


def webhook_body(events: Iterable[dict[str, Any]]) -> bytes:
    """A batch as SendGrid writes it: compact events, each line ending in CRLF.

    The exact bytes are signed, so a receiver that re-serializes the JSON before
    verifying fails here as it would against SendGrid.
    """
    lines = ",\r\n".join(json.dumps(event, separators=(",", ":")) for event in events)
    return f"[{lines}]\r\n".encode()


def emit_events(
    url: str,
    events: Iterable[dict[str, Any]] | bytes,
    *,
    private_key_pem: str | None,
    timestamp: int | str | None = None,
    timeout_s: float = 10.0,
) -> int:
    """POST an Event Webhook batch to ``url`` as SendGrid does and return the HTTP status.

    ``events`` may be raw bytes, sent as they are (to test malformed batches).
    ``private_key_pem=None`` sends it unsigned, as SendGrid does with signing off.
    """
    body = events if isinstance(events, bytes) else webhook_body(events)
    headers = {"Content-Type": "application/json;charset=utf-8", "User-Agent": "SendGrid Event API"}
    if private_key_pem is not None:
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        headers[EventWebhookHeader.SIGNATURE] = sign_webhook(body, stamp, private_key_pem)
        headers[EventWebhookHeader.TIMESTAMP] = stamp
    request = Request(url, data=body, headers=headers, method="POST")
    try:
        with urlopen(request, timeout=timeout_s) as response:
            return response.status
    except HTTPError as exc:
        return exc.code
