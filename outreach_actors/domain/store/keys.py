"""Dedupe keys: the unique key each effect is stored under, so that a replay finds it
taken and does nothing (DESIGN invariant 2). Provider events bring their own
(``providers.sendgrid.events.event_key_for``)."""

from __future__ import annotations

import hashlib


def action_key(kind: str, enrollment_id: int, node: str, event: str | None,
               visit_version: int) -> str:
    """A ScheduledAction's: one send, one timer per event, per visit of a node."""
    return f"{kind}:{enrollment_id}:{node}:{event or '-'}:{visit_version}"


def enrollment_key(tenant_id: str, plan_name: str, contact_id: int, *,
                   reentry: str | None = None) -> str:
    """An Enrollment's: one per contact and plan, or, for a plan that allows re-entry, one
    per ``reentry`` (a fresh id for each enroll, or a list's import key and row)."""
    return f"reentry:{reentry}" if reentry is not None else f"{tenant_id}:{plan_name}:{contact_id}"


def message_key(action_dedupe_key: str) -> str:
    """An OutboundMessage's: one email per send action."""
    return f"message:{action_dedupe_key}"


def synthetic_event_key(action_id: int) -> str:
    """A synthetic event's (``no_open``...): one per timer that fired."""
    return f"action:{action_id}"


def host_event_key(tenant_id: str, event_id: str) -> str:
    """A host event's (``track``): one per event id the host gave, per tenant."""
    return f"{tenant_id}:{event_id}"


def recipient_key(email: str) -> str:
    """A recipient's frequency-cap key: a digest of the normalized address, so that send
    orders (broker messages, Sentry's context of them) and limiter keys hold no address."""
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]


def reply_event_key(tenant_id: str, reply_id: str) -> str:
    """A reply's event (``replied``, a DSN's bounce...): one per mail that came back, by
    its own Message-ID (or a digest of its headers), whichever post brought it."""
    return f"inbound:{tenant_id}:{reply_id}"
