"""Normalize SendGrid Event Webhook events into the project's event vocabulary (pure, no I/O).

Normalization is table-driven in django-anymail's manner: SendGrid's event name
maps to a normalized type, bounce types and drop reasons map through their own
tables, and the fields each type keeps are listed per type. The original event
is kept beside the normalized one (``raw``), so nothing SendGrid said is lost.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from outreach_actors.domain.addresses import address_key
from outreach_actors.domain.vocabulary import (
    INVALID_TENANT,
    MESSAGE_ID_ARG,
    TENANT_ARG,
    MalformedBatch,
    NormalizedEvent,
)

# SendGrid event name -> normalized type. Anything else is "unknown".
EVENT_TYPES: dict[str, str] = {
    "processed": "queued",
    "deferred": "deferred",
    "delivered": "delivered",
    "bounce": "bounced",
    "dropped": "rejected",
    "open": "opened",
    "click": "clicked",
    "spamreport": "complained",
    "unsubscribe": "unsubscribed",
    "group_unsubscribe": "unsubscribed",
    "group_resubscribe": "subscribed",
}

# A bounce event's "type": a real bounce is permanent, a block or an expiry is not.
BOUNCE_TYPES: dict[str, str] = {"bounce": "hard", "blocked": "soft", "expired": "soft"}

# A dropped event's "reason" (lower-cased) -> why SendGrid refused to send.
DROP_REASONS: dict[str, str] = {
    "bounced address": "bounced",
    "invalid": "invalid",
    "invalid address": "invalid",
    "spam reporting address": "complained",
    "unsubscribed address": "unsubscribed",
    "invalid smtpapi header": "invalid_request",
    "spam content (if spam checker app enabled)": "spam_content",
    "recipient list over package quota": "quota",
}

# For each normalized type, the SendGrid fields it keeps in ``data`` and their names there.
DATA_FIELDS: dict[str, dict[str, str]] = {
    "queued": {},
    "deferred": {"response": "response", "attempt": "attempt"},
    "delivered": {"response": "response"},
    "bounced": {"reason": "reason", "status": "status", "bounce_classification": "classification"},
    "rejected": {"reason": "reason", "status": "status"},
    "opened": {"useragent": "user_agent"},
    "clicked": {"url": "url", "useragent": "user_agent"},
    "complained": {},
    "unsubscribed": {},  # asm_group_id: see _group_fields
    "subscribed": {},
    "unknown": {"type": "type"},
}

# Fields SendGrid itself sets; any other top-level key is a custom arg (metadata).
SENDGRID_KEYS = frozenset({
    "asm_group_id", "attempt", "bounce_classification", "category", "cert_err", "email",
    "event", "ip", "marketing_campaign_id", "marketing_campaign_name", "newsletter", "pool",
    "post_type", "reason", "response", "send_at", "sg_content_type", "sg_event_id",
    "sg_machine_open", "sg_message_id", "sg_template_id", "sg_template_name",
    "singlesend_id", "singlesend_name", "smtp-id", "status", "template_id", "timestamp", "tls",
    "type", "url", "url_offset", "useragent",
})
# Our own custom args, read into their own fields rather than metadata.
OUR_ARGS = frozenset({MESSAGE_ID_ARG, TENANT_ARG})

_KNOWN_KEYS = SENDGRID_KEYS | OUR_ARGS

# sg_event_id is short; anything longer is not one and is keyed by hash instead.
MAX_EVENT_ID_LENGTH = 200


def event_key_for(raw: Mapping[str, Any]) -> str:
    """The dedupe key: ``sg:<sg_event_id>``, or a stable hash of the event where it is absent.

    SendGrid omits sg_event_id on some unsubscribe events; the same event sent
    twice hashes the same because the JSON is canonical (sorted keys).
    """
    sg_event_id = raw.get("sg_event_id")
    text = str(sg_event_id) if isinstance(sg_event_id, str | int) else ""
    # An id with characters a column refuses (NUL, lone surrogates) is no real id: hash it.
    if 0 < len(text) <= MAX_EVENT_ID_LENGTH and text.isprintable():
        return f"sg:{text}"
    canonical = json.dumps(raw, sort_keys=True, separators=(",", ":"), default=str)
    return "sg-sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def provider_message_id_for(sg_message_id: Any) -> str | None:
    """The X-Message-Id that the send returned: sg_message_id up to ``.filter``.

    SendGrid appends the relaying server to the id it returned at send time
    (``<X-Message-Id>.filter0001...``); older ids without that suffix are kept whole.
    """
    text = _text(sg_message_id) if isinstance(sg_message_id, str) else None
    return text.split(".filter", 1)[0] if text else None


def normalize_sendgrid_event(raw: Mapping[str, Any]) -> NormalizedEvent:
    """Turn one SendGrid event into a NormalizedEvent; never raises on a mapping."""
    provider_event = _text(raw.get("event"))
    event_type = EVENT_TYPES.get(provider_event or "", "unknown")
    data: dict[str, Any] = {
        ours: raw[theirs] for theirs, ours in DATA_FIELDS[event_type].items() if theirs in raw
    }
    data.update(_DERIVED.get(event_type, _no_derived)(raw))
    if categories := _categories(raw.get("category")):
        data["categories"] = categories
    metadata = {key: value for key, value in raw.items() if key not in _KNOWN_KEYS}
    if metadata:
        data["metadata"] = metadata
    tenant = _tenant(raw, data)
    email = _text(raw.get("email"))
    return NormalizedEvent(
        type=event_type,
        provider_event=provider_event,
        event_key=event_key_for(raw),
        message_id=_text(raw.get(MESSAGE_ID_ARG)),
        provider_message_id=provider_message_id_for(raw.get("sg_message_id")),
        tenant=tenant,
        email=address_key(email) if email else None,
        occurred_at=_timestamp(raw.get("timestamp")),
        data=data,
        raw=raw,
    )


def parse_sendgrid_batch(body: bytes) -> tuple[list[NormalizedEvent], list[str]]:
    """Parse a webhook body into events, plus one error per element that is not an event.

    Raises MalformedBatch when the body as a whole is not a JSON array.
    """
    try:
        # Decoded as UTF-8 (what SendGrid sends and signs), not json's guess among UTF-16/32.
        batch = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise MalformedBatch(f"body is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise MalformedBatch(
            f"body is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
        ) from None
    except RecursionError:
        raise MalformedBatch("body is nested too deeply to be a batch of events") from None
    except ValueError as exc:  # an integer over Python's 4,300-digit conversion limit
        raise MalformedBatch(f"body is not usable JSON ({str(exc).split(':')[0]})") from None
    if not isinstance(batch, list):
        raise MalformedBatch(
            f"body is a JSON {type(batch).__name__}, not an array of events"
        )
    events: list[NormalizedEvent] = []
    errors: list[str] = []
    for index, item in enumerate(batch):
        if isinstance(item, dict):
            events.append(normalize_sendgrid_event(item))
        else:
            errors.append(f"event {index}: expected a JSON object, got {_json_kind(item)}")
    return events, errors


def _bounce_fields(raw: Mapping[str, Any]) -> dict[str, Any]:
    # A bounce without "type" comes from SendGrid's older payloads, where it meant a hard
    # bounce; a type we do not know is taken as soft, so it alone suppresses no one.
    return {"bounce_type": BOUNCE_TYPES.get(_text(raw.get("type")) or "bounce", "soft")}


def _drop_fields(raw: Mapping[str, Any]) -> dict[str, Any]:
    reason = (_text(raw.get("reason")) or "").strip().lower()
    return {"reject_reason": DROP_REASONS.get(reason, "other")}


def _open_fields(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {"machine_open": raw.get("sg_machine_open") is True}


def _group_fields(raw: Mapping[str, Any]) -> dict[str, Any]:
    # SendGrid's unsubscribe group ids are integers. Anything else cannot name a group
    # (and would not fit the suppression's channel column): it is kept, under its own
    # name, and the event counts as an unsubscribe from all of the tenant's mail.
    if "asm_group_id" not in raw:
        return {}
    value = raw["asm_group_id"]
    if isinstance(value, str) and _GROUP_ID.fullmatch(value.strip()):
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63:
        return {"asm_group_id": value}
    return {"invalid_asm_group_id": json.dumps(value, default=str)[:MAX_EVENT_ID_LENGTH]}


def _no_derived(raw: Mapping[str, Any]) -> dict[str, Any]:
    return {}


_GROUP_ID = re.compile(r"[0-9]{1,18}")
# Fields computed from the event rather than copied, per normalized type.
_DERIVED = {"bounced": _bounce_fields, "rejected": _drop_fields, "opened": _open_fields,
            "unsubscribed": _group_fields, "subscribed": _group_fields}


def _tenant(raw: Mapping[str, Any], data: dict[str, Any]) -> str | None:
    """The tenant the event names. One given as anything but non-empty text names no
    tenant and is not the same as none given: ``data`` says what it was under
    ``INVALID_TENANT``, and ingest refuses the event."""
    if TENANT_ARG not in raw:
        return None
    value = raw[TENANT_ARG]
    tenant = _text(value) if isinstance(value, str) else None
    if tenant is None:
        data[INVALID_TENANT] = "empty text" if isinstance(value, str) else _json_kind(value)
    return tenant


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        if value.isascii() and "\x00" not in value:
            return value or None  # the usual case, taken whole: no surrogate is ASCII
        # What text columns take: PostgreSQL refuses NUL, no UTF-8 column a lone surrogate.
        return value.replace("\x00", "").encode("utf-8", "replace").decode("utf-8") or None
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _categories(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


_EPOCH = datetime(1970, 1, 1)


def _timestamp(value: Any) -> datetime | None:
    try:
        if isinstance(value, str) and value.strip().isdigit():
            value = int(value)
        if not isinstance(value, int | float) or isinstance(value, bool):
            return None
        # The epoch plus the seconds: what fromtimestamp(value, UTC) gives (the same
        # rounding), without the time-zone round trip that was much of a batch's parse.
        return _EPOCH + timedelta(seconds=value)
    except (OverflowError, OSError, ValueError):
        return None


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", str: "a string", list: "an array", dict: "an object"}.get(
        type(value), "a number")
