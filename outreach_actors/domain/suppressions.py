"""The suppression list: which addresses a tenant must not mail, why, and since which event.

Addresses are compared lower-cased. A whole-tenant suppression lives on the
``email`` channel; a SendGrid ASM group unsubscribe lives on ``asm_group:<id>``
and only blocks mail sent in that group.
"""

from __future__ import annotations

import logging
from datetime import datetime

from outreach_actors.domain.addresses import address_key
from outreach_actors.domain.metrics import count
from outreach_actors.domain.store.models import MessageEvent, Suppression, utcnow
from outreach_actors.settings import Settings, get_settings

logger = logging.getLogger(__name__)


def group_channel(asm_group_id: int | str) -> str:
    """The channel of one SendGrid unsubscribe group."""
    return f"asm_group:{asm_group_id}"


def is_suppressed(tenant_id: str, email: str, *, asm_group_id: int | str | None = None) -> bool:
    """Whether the tenant must not mail this address (in this ASM group, when one is given)."""
    channels = [Suppression.EMAIL]
    if asm_group_id is not None:
        channels.append(group_channel(asm_group_id))
    return (
        Suppression.select()
        .where(
            Suppression.tenant == tenant_id,
            Suppression.value == address_key(email),
            Suppression.channel.in_(channels),
        )
        .exists()
    )


def suppressed_sql(tenant: str, address: str, param: str) -> tuple[str, list[str]]:
    """SQL that is true when the tenant must not mail the address (``email`` channel),
    for use inside a larger statement (the send folds it into its claim), and its
    parameters.

    ``tenant`` and ``address`` are SQL (column names, usually), ``param`` the
    database's placeholder. The address must already be normalized (see
    address_key), as a message's ``to_email`` is.
    """
    return (
        f"EXISTS (SELECT 1 FROM suppression AS sup WHERE sup.tenant_id = {tenant}"
        f" AND sup.value = {address} AND sup.channel = {param})",
        [Suppression.EMAIL],
    )


def suppress(
    tenant_id: str,
    email: str,
    reason: str,
    source: str | None = None,
    channel: str = Suppression.EMAIL,
) -> bool:
    """Suppress an address for a tenant; True if it was not suppressed already.

    Idempotent: the first reason and source are kept, a repeat changes nothing.
    """
    created = (
        Suppression.insert(
            tenant=tenant_id, channel=channel, value=address_key(email),
            reason=reason, source=source, created_at=utcnow(),
        )
        .on_conflict_ignore()
        .as_rowcount()
        .execute()
    )
    if created:
        count("outreach_suppressions_total", reason=reason)
        logger.info(
            "Suppressed tenant=%s channel=%s reason=%s source=%s",
            tenant_id, channel, reason, source,
        )
    return bool(created)


def lift(tenant_id: str, email: str, channel: str = Suppression.EMAIL) -> bool:
    """Remove a suppression; True if there was one."""
    removed = (
        Suppression.delete()
        .where(
            Suppression.tenant == tenant_id,
            Suppression.channel == channel,
            Suppression.value == address_key(email),
        )
        .execute()
    )
    if removed:
        logger.info("Lifted suppression tenant=%s channel=%s", tenant_id, channel)
    return bool(removed)


def soft_bounce_should_suppress(
    tenant_id: str, email: str, occurred_at: datetime, *, settings: Settings | None = None
) -> bool:
    """Whether the soft bounces stored up to ``occurred_at`` reach the configured limit.

    Counts this tenant's soft bounces of the address within ``soft_bounce_window``
    before ``occurred_at`` (the event's own time, so a late retry counts the same).
    """
    settings = settings or get_settings()
    rows = MessageEvent.select(MessageEvent.data).where(
        MessageEvent.tenant == tenant_id,
        MessageEvent.email == address_key(email),
        MessageEvent.type == "bounced",
        MessageEvent.occurred_at.between(occurred_at - settings.soft_bounce_window, occurred_at),
    )
    soft = sum(1 for row in rows if (row.data or {}).get("bounce_type") == "soft")
    return soft >= settings.soft_bounce_limit
