"""Rows for tests: a tenant with a verified sender and a stored plan."""

from __future__ import annotations

from typing import Any

from outreach_actors.domain import ingest
from outreach_actors.domain.plans import validate_plan
from outreach_actors.domain.store import models
from outreach_actors.providers.sendgrid.events import parse_sendgrid_batch

THREE_NODE_PLAN = """
name: onboarding
start: intro
categories: [onboarding]
nodes:
  intro:
    type: email
    subject: "Welcome, {{ contact.first_name }}"
    body: "<p>Hi {{ contact.first_name }}, see <a href='https://example.com/start'>this</a>.</p>"
    transitions:
      - {on: click, to: thanks}
      - {on: no_open, after: PT2S, to: bump}
      - {on: bounce, to: stop}
  bump:
    type: email
    subject: "Did you see this?"
    body: "<p>Hi {{ contact.first_name }}, a gentle bump. <a href='https://example.com/b'>b</a></p>"
    transitions:
      - {on: click, to: thanks}
      - {on: no_click, after: PT2S, to: stop}
      - {on: bounce, to: stop}
  thanks: {type: exit}
  stop: {type: exit}
"""


def make_tenant(tenant_id: str = "acme", sender: str = "sales@acme.test",
                verified: bool = True) -> models.Tenant:
    tenant, _ = models.Tenant.get_or_create(id=tenant_id, defaults={"name": tenant_id.title()})
    models.SenderIdentity.get_or_create(
        tenant=tenant, email=sender, defaults={"name": "Acme Sales", "verified": verified}
    )
    return tenant


def load_plan(text: str = THREE_NODE_PLAN, tenant_id: str = "acme", **overrides: Any) -> models.Plan:
    plan = validate_plan(text)
    definition = {**plan.to_definition(), **overrides}
    version = (
        models.Plan.select().where(models.Plan.tenant == tenant_id, models.Plan.name == plan.name)
        .count() + 1
    )
    return models.Plan.create(tenant=tenant_id, name=plan.name, version=version,
                              definition=definition)


def normalize_delivery(delivery_id: int, **options: Any) -> ingest.IngestResult:
    """``ingest.normalize_delivery`` with SendGrid's parser, as the worker runs it."""
    return ingest.normalize_delivery(delivery_id, parse_batch=parse_sendgrid_batch, **options)
