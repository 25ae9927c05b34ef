"""The event vocabulary: every event the engine knows, as plans name it and as it means,
and the one normalized event type every provider's parser produces.

One table per question, each derived from :class:`EventType` (anymail's ``EventType``
is the model): which names a plan may use, which events a timer fires, what
engagement a timer waits for, which provider events prove a send, and which ones
suppress an address or end a contact's enrollments. The custom-arg names that tie a
provider's event back to our message live here too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


class EventType:
    """Normalized event types, whatever the provider calls them."""

    #: The provider accepted the message for delivery (SendGrid ``processed``).
    QUEUED = "queued"
    #: The receiving server said try later; the provider keeps trying.
    DEFERRED = "deferred"
    #: The receiving server accepted the message.
    DELIVERED = "delivered"
    #: The receiving server refused it: ``data.bounce_type`` hard or soft.
    BOUNCED = "bounced"
    #: The provider would not send it (SendGrid ``dropped``): ``data.reject_reason``.
    REJECTED = "rejected"
    #: The recipient opened it (``data.machine_open`` when a proxy fetched the pixel).
    OPENED = "opened"
    #: The recipient clicked a tracked link.
    CLICKED = "clicked"
    #: The recipient marked it as spam (SendGrid ``spamreport``).
    COMPLAINED = "complained"
    #: The recipient unsubscribed (SendGrid ``unsubscribe``, ``group_unsubscribe``).
    UNSUBSCRIBED = "unsubscribed"
    #: The recipient resubscribed to a group (SendGrid ``group_resubscribe``).
    SUBSCRIBED = "subscribed"
    #: An event the provider sent that we do not know; kept, moves no one.
    UNKNOWN = "unknown"

    #: Synthetic: no open (or click) came before the node's ``after`` passed.
    NO_OPEN = "no_open"
    #: Synthetic: no click came before the node's ``after`` passed.
    NO_CLICK = "no_click"
    #: Synthetic: the node's ``after`` passed, whatever happened.
    ELAPSED = "elapsed"

    #: A person answered one of our emails (SendGrid Inbound Parse).
    REPLIED = "replied"
    #: An auto-reply (out of office, vacation) answered: ``data.return_date`` when one reads.
    AUTO_REPLIED = "auto_replied"
    #: Synthetic: no reply came before the node's ``after`` passed.
    NO_REPLY = "no_reply"


#: Every normalized type a provider's event may have.
PROVIDER_EVENTS = frozenset({
    EventType.QUEUED, EventType.DEFERRED, EventType.DELIVERED, EventType.BOUNCED,
    EventType.REJECTED, EventType.OPENED, EventType.CLICKED, EventType.COMPLAINED,
    EventType.UNSUBSCRIBED, EventType.SUBSCRIBED, EventType.UNKNOWN,
})

#: Synthetic events fired by a timer; only these may carry ``after`` in a plan.
TIMEOUT_EVENTS = frozenset({EventType.NO_OPEN, EventType.NO_CLICK, EventType.ELAPSED,
                            EventType.NO_REPLY})

#: Events of the replies that come back through Inbound Parse (domain/replies).
REPLY_EVENTS = frozenset({EventType.REPLIED, EventType.AUTO_REPLIED})

#: Timeouts that watch for engagement with the node's email, and the real events that
#: stop each one. A click counts as an open (image blocking hides the opens of people
#: who click).
AWAITED_ENGAGEMENT: dict[str, frozenset[str]] = {
    EventType.NO_OPEN: frozenset({EventType.OPENED, EventType.CLICKED}),
    EventType.NO_CLICK: frozenset({EventType.CLICKED}),
    EventType.NO_REPLY: frozenset({EventType.REPLIED}),
}

#: The event names a plan may use (the provider's spelling too), mapped to the
#: normalized event that fires them.
EVENT_ALIASES: dict[str, str] = {
    **{name: name for name in PROVIDER_EVENTS - {EventType.SUBSCRIBED, EventType.UNKNOWN}},
    **{name: name for name in TIMEOUT_EVENTS},
    **{name: name for name in REPLY_EVENTS},
    "reply": EventType.REPLIED,
    "open": EventType.OPENED, "click": EventType.CLICKED, "bounce": EventType.BOUNCED,
    "deliver": EventType.DELIVERED, "dropped": EventType.REJECTED,
    "spamreport": EventType.COMPLAINED, "unsubscribe": EventType.UNSUBSCRIBED,
}

#: Provider events handed to the engine: every one a plan may name or that proves a
#: send reached the provider. A resubscribe moves no one; ``unknown`` means nothing.
ENGINE_EVENTS = PROVIDER_EVENTS - {EventType.SUBSCRIBED, EventType.UNKNOWN}

#: Provider events that prove the provider accepted a send whose answer was lost (and
#: replies to it: whoever answered got it).
PROOF_OF_SEND = ENGINE_EVENTS | REPLY_EVENTS

#: Tenant-wide suppression reasons, by normalized event (bounces and drops below).
SUPPRESSING_EVENTS = {EventType.COMPLAINED: "complained", EventType.UNSUBSCRIBED: "unsubscribed"}
#: A bounce suppresses by its ``bounce_type``: only a hard one does.
SUPPRESSING_BOUNCES = {"hard": "bounced"}
#: A drop suppresses by its ``reject_reason``. SendGrid's own unsubscribe list is
#: among them: our list must know it too, or other plans (and another provider)
#: keep mailing the address.
SUPPRESSING_DROPS = {
    "bounced": "rejected:bounced",
    "invalid": "rejected:invalid",
    "complained": "rejected:complained",
    "unsubscribed": "rejected:unsubscribed",
}
#: Events after which the contact leaves every active enrollment of the tenant.
EXITING_EVENTS = {EventType.COMPLAINED: "complained", EventType.UNSUBSCRIBED: "unsubscribed"}

#: The flag ingest sets in ``data`` on a click on our own unsubscribe link.
UNSUBSCRIBE_LINK = "unsubscribe_link"
#: The flag a provider sets in ``data`` on an open made by a proxy, not a person.
MACHINE_OPEN = "machine_open"
#: Set by a provider in ``data`` when the event's tenant arg is not text (its JSON, cut
#: short): no tenant can be read from it, so ingest refuses the event.
INVALID_TENANT = "invalid_tenant"
#: The flag ingest sets in ``data`` when the event names another address than its
#: message's recipient; only the recipient is acted on.
RECIPIENT_MISMATCH = "recipient_mismatch"

#: The custom args every email carries; the provider returns them with each event.
MESSAGE_ID_ARG = "outreach_message_id"
TENANT_ARG = "outreach_tenant"


class MalformedBatch(ValueError):
    """A webhook body that is not a JSON array of events; the message says what is wrong."""


@dataclass(frozen=True)
class NormalizedEvent:
    """One provider event in the project's vocabulary, with the provider's original beside it."""

    type: str
    provider_event: str | None
    event_key: str
    message_id: str | None
    provider_message_id: str | None
    tenant: str | None
    email: str | None
    occurred_at: datetime | None  # naive UTC; None when the event has no usable timestamp
    data: dict[str, Any] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict)


#: What a host event's name may be (``track("acme", email, "purchased")``): a word a
#: plan can declare in ``events:`` and a transition can name; never a built-in event.
HOST_EVENT_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]{0,63}")


def host_event_name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a host event's name, or None when it can."""
    if not isinstance(name, str) or not HOST_EVENT_NAME.fullmatch(name):
        return (f"event name {str(name)[:80]!r} must be 1 to 64 letters, digits, _ . : or -, "
                "starting with a letter")
    if name in EVENT_ALIASES:
        return f"{name!r} is a built-in event; a host event needs a name of its own"
    return None
