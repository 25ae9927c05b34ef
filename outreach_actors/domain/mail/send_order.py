"""The send order: what a render hands its send (the message and whom the send counts
against), so that the send's rate limits need no read of their own."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import NamedTuple

from outreach_actors.domain.plans import SendWindow
from outreach_actors.domain.store.keys import recipient_key
from outreach_actors.domain.store.models import (
    OutboundMessage,
    SenderIdentity,
    Tenant,
    database_proxy,
    utcnow,
)
from outreach_actors.domain.store.statements import statement
from outreach_actors.domain.stored_plans import plan_for_id

# How long the rate-limit facts read by a render serve its send. A send follows its
# render within a second or so; one that waited longer (a backlog, a rate-limit
# deferral, a retry) reads them again, so that a changed override reaches it.
SEND_ORDER_FRESH_FOR = timedelta(seconds=30)


class SendScope(NamedTuple):
    """Whom one send counts against: what its rate limits are built from."""

    tenant: str
    sender: str
    recipient_domain: str
    tenant_overrides: dict
    sender_overrides: dict
    #: The recipient's key (store.keys.recipient_key: no address), for the tenant's
    #: frequency caps; empty in orders of earlier versions.
    recipient: str = ""
    #: False when the email's node opted out of the frequency caps (``frequency_cap: false``).
    frequency_capped: bool = True
    #: The sender identity's first send (ISO), which starts its warm-up; None before it.
    sender_first_sent: str | None = None
    #: The plan, the email's send window (the node's, else the plan's; as the plan
    #: spells it) and the contact's time zone: where a held send waits for.
    plan: str | None = None
    window: dict | None = None
    timezone: str | None = None

    @classmethod
    def of(cls, tenant: str, sender: str, to_email: str, tenant_overrides: dict | None,
           sender_overrides: dict | None, *, frequency_capped: bool = True,
           sender_first_sent: datetime | str | None = None, plan: str | None = None,
           window: SendWindow | None = None, timezone: str | None = None) -> SendScope:
        """The scope of a send from ``sender`` to ``to_email`` (overrides decoded;
        None for none)."""
        if isinstance(sender_first_sent, datetime):
            sender_first_sent = sender_first_sent.isoformat()
        return cls(tenant, sender, to_email.rsplit("@", 1)[-1], tenant_overrides or {},
                   sender_overrides or {}, recipient_key(to_email), frequency_capped,
                   str(sender_first_sent) if sender_first_sent else None, plan,
                   window.model_dump(mode="json") if window is not None else None, timezone)

    @property
    def send_window(self) -> SendWindow | None:
        """The email's send window, parsed."""
        return SendWindow.model_validate(self.window) if self.window else None

    @property
    def first_sent(self) -> datetime | None:
        """When the sender identity first sent (naive UTC), or None."""
        return datetime.fromisoformat(self.sender_first_sent) if self.sender_first_sent else None


def make_send_order(message_id: str, scope: SendScope, rendered_at: datetime) -> dict:
    """What a render hands its send: the message id and whom the send counts
    against, so that the send's rate limits need no read of their own (the render
    read it all already). JSON, as it travels in a broker message."""
    return {"message_id": message_id, "scope": scope._asdict(),
            "rendered_at": rendered_at.isoformat()}


def order_message_id(order: dict | str | None) -> str | None:
    """The message id of a send order; a bare message id (what the reconciler enqueues,
    and earlier versions piped) is its own."""
    return order.get("message_id") if isinstance(order, dict) else order


# The message's status, tenant, sender and recipient, and the rate-limit overrides
# of its tenant and (when it is one) its sender identity: scalar subqueries, which
# PostgreSQL plans faster than the joins.
_SEND_SCOPE = """
SELECT m.status, m.tenant_id, m.from_email, m.to_email,
    (SELECT t.rate_limits FROM tenant AS t WHERE t.id = m.tenant_id),
    (SELECT s.rate_limits FROM sender_identity AS s
     WHERE s.tenant_id = m.tenant_id AND s.email = m.from_email),
    (SELECT s.first_sent_at FROM sender_identity AS s
     WHERE s.tenant_id = m.tenant_id AND s.email = m.from_email),
    (SELECT e.plan_id FROM enrollment AS e WHERE e.id = m.enrollment_id), m.node,
    (SELECT c.timezone FROM enrollment AS e JOIN contact AS c ON c.id = e.contact_id
     WHERE e.id = m.enrollment_id)
FROM outbound_message AS m
WHERE m.id = {p}
"""


def send_scope(order: dict | str | None, *, now: datetime | None = None) -> SendScope | None:
    """Whom the send of ``order`` counts against; None when nothing will be sent.

    A fresh order (rendered less than SEND_ORDER_FRESH_FOR ago) says so itself.
    Otherwise one narrow read of the message, which also finds a message that is no
    longer ``rendered``: nothing will be sent, so the send takes no slot. (A fresh
    order's message is not looked at: a duplicate of its send, were it to get past
    the idempotency lease, would take one slot and then find the claim taken.)
    """
    if isinstance(order, dict):
        scope = _fresh_scope(order, now or utcnow())
        if scope is not None:
            return scope
    message_id = order_message_id(order)
    if message_id is None:
        return None
    row = database_proxy.execute_sql(statement(_SEND_SCOPE), (message_id,)).fetchone()
    if row is None or row[0] != OutboundMessage.RENDERED:
        return None
    (_, tenant_id, from_email, to_email, tenant_overrides, sender_overrides, first_sent,
     plan_id, node, timezone) = row
    plan = plan_for_id(plan_id) if plan_id is not None else None
    return SendScope.of(tenant_id, from_email, to_email,
                        Tenant.rate_limits.python_value(tenant_overrides),
                        SenderIdentity.rate_limits.python_value(sender_overrides),
                        frequency_capped=plan is None or node is None
                        or plan.nodes[node].frequency_cap,
                        sender_first_sent=SenderIdentity.first_sent_at.python_value(first_sent),
                        plan=plan.name if plan else None,
                        window=plan.window_of(node) if plan and node else None,
                        timezone=timezone)


def _fresh_scope(order: dict, now: datetime) -> SendScope | None:
    """The scope an order carries, if it is fresh and well formed (else None: read it)."""
    try:
        scope = SendScope(**order["scope"])
        # A clock behind the render's (another host) counts as fresh for as long.
        age = abs(now - datetime.fromisoformat(order["rendered_at"]))
    except (KeyError, TypeError, ValueError):
        return None  # not an order this version wrote: read the message instead
    return scope if age < SEND_ORDER_FRESH_FOR else None



