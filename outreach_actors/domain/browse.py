"""Paged lists of stored rows for people to browse (the dashboard): plans, webhook
deliveries, inbound posts, suppressions, senders. Each page reads one row more than it shows to know
whether another follows, so no list ever counts its whole table."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import peewee

from outreach_actors.domain.addresses import address_key
from outreach_actors.domain.store.models import (
    InboundPost,
    Plan,
    SenderIdentity,
    Suppression,
    Tenant,
    WebhookDelivery,
)

#: Rows a page shows.
PAGE_SIZE = 50

Row = TypeVar("Row")


@dataclass(frozen=True)
class Page(Generic[Row]):
    """One page of a list: its rows, its number (from 1) and whether another follows."""

    rows: list[Row]
    number: int
    has_next: bool


def page_of(query: peewee.Query, number: int, size: int = PAGE_SIZE) -> Page:
    """Page ``number`` (from 1) of an ordered query."""
    number = max(1, number)
    rows = list(query.limit(size + 1).offset((number - 1) * size))
    return Page(rows[:size], number, len(rows) > size)


Tenants = Collection[str] | None  # the tenants a list is of; None: every tenant


def plans(number: int = 1, *, tenant_ids: Tenants = None) -> Page[Plan]:
    """Every stored plan version, by tenant and name, newest version first."""
    query = Plan.select(Plan.id, Plan.tenant, Plan.name, Plan.version, Plan.created_at).order_by(
        Plan.tenant, Plan.name, Plan.version.desc())
    if tenant_ids is not None:
        query = query.where(Plan.tenant.in_(list(tenant_ids)))
    return page_of(query, number)


def deliveries(number: int = 1, *, status: str | None = None) -> Page[WebhookDelivery]:
    """Webhook deliveries, newest first (bodies are not read: a page shows their size)."""
    query = WebhookDelivery.select(
        WebhookDelivery.id, WebhookDelivery.provider, WebhookDelivery.status,
        WebhookDelivery.error, WebhookDelivery.attempts, WebhookDelivery.received_at,
        WebhookDelivery.processed_at, peewee.fn.LENGTH(WebhookDelivery.body).alias("size"),
    ).order_by(WebhookDelivery.id.desc())
    if status:
        query = query.where(WebhookDelivery.status == status)
    return page_of(query, number)


def inbound_posts(number: int = 1, *, status: str | None = None) -> Page[InboundPost]:
    """Inbound Parse posts, newest first (bodies are not read: a page shows their size)."""
    query = InboundPost.select(
        InboundPost.id, InboundPost.status, InboundPost.kind, InboundPost.note,
        InboundPost.tenant, InboundPost.message, InboundPost.from_email, InboundPost.subject,
        InboundPost.forward_status, InboundPost.attempts, InboundPost.received_at,
        peewee.fn.LENGTH(InboundPost.body).alias("size"),
    ).order_by(InboundPost.id.desc())
    if status:
        query = query.where(InboundPost.status == status)
    return page_of(query, number)


def suppressions(number: int = 1, *, address: str = "",
                 tenant_ids: Tenants = None) -> Page[Suppression]:
    """Suppressions, newest first; of one address (exact, normalized) when given."""
    query = Suppression.select().order_by(Suppression.id.desc())
    if address.strip():
        query = query.where(Suppression.value == address_key(address))
    if tenant_ids is not None:
        query = query.where(Suppression.tenant.in_(list(tenant_ids)))
    return page_of(query, number)


def senders(number: int = 1, *, tenant_ids: Tenants = None) -> Page[SenderIdentity]:
    """Sender identities with their tenants (for the tenants' limit overrides)."""
    query = (SenderIdentity.select(SenderIdentity, Tenant).join(Tenant)
             .order_by(SenderIdentity.tenant, SenderIdentity.email))
    if tenant_ids is not None:
        query = query.where(SenderIdentity.tenant.in_(list(tenant_ids)))
    return page_of(query, number)


def tenant_ids(among: Tenants = None) -> list[str]:
    """Every tenant's id, or those of ``among`` that exist (a form's choice of tenant)."""
    query = Tenant.select(Tenant.id).order_by(Tenant.id)
    if among is not None:
        query = query.where(Tenant.id.in_(list(among)))
    return [tenant_id for (tenant_id,) in query.tuples()]


def row_or_none(model: type[peewee.Model], row_id: Any) -> Any:
    """The row of that id, or None (also for an id of the wrong form)."""
    try:
        return model.get_or_none(model._meta.primary_key == row_id)
    except (ValueError, peewee.DataError):
        return None
