"""The suppression list: case-insensitive, per tenant and ASM group, idempotent; soft bounces."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from outreach_actors.domain import suppressions
from outreach_actors.domain.store.models import MessageEvent, Suppression

from .conftest import make_settings
from .factories import make_tenant

T0 = datetime(2025, 11, 22, 12, 0, 0)


@pytest.fixture
def tenants(settings):
    make_tenant("acme")
    make_tenant("globex", sender="sales@globex.test")


def test_suppress_is_case_insensitive_and_per_tenant(tenants) -> None:
    assert suppressions.suppress("acme", "Ada@Example.COM", "bounced", "sg:abc")
    assert suppressions.is_suppressed("acme", "ada@example.com")
    assert suppressions.is_suppressed("acme", " ADA@example.com ")
    assert not suppressions.is_suppressed("globex", "ada@example.com")
    row = Suppression.get()
    assert (row.value, row.reason, row.source, row.channel) == (
        "ada@example.com", "bounced", "sg:abc", "email"
    )


def test_suppress_twice_keeps_the_first_reason(tenants) -> None:
    assert suppressions.suppress("acme", "ada@example.com", "bounced", "sg:first")
    assert not suppressions.suppress("acme", "ADA@example.com", "complained", "sg:second")
    assert Suppression.select().count() == 1
    assert Suppression.get().source == "sg:first"


def test_group_suppression_only_blocks_that_group(tenants) -> None:
    suppressions.suppress("acme", "gus@example.com", "group_unsubscribed", "sg:g",
                          suppressions.group_channel(42))
    assert suppressions.is_suppressed("acme", "gus@example.com", asm_group_id=42)
    assert not suppressions.is_suppressed("acme", "gus@example.com", asm_group_id=7)
    assert not suppressions.is_suppressed("acme", "gus@example.com")


def test_a_tenant_wide_suppression_blocks_every_group(tenants) -> None:
    suppressions.suppress("acme", "eve@example.com", "complained", "sg:c")
    assert suppressions.is_suppressed("acme", "eve@example.com", asm_group_id=42)


def test_lift_removes_only_the_named_channel(tenants) -> None:
    suppressions.suppress("acme", "gus@example.com", "unsubscribed", "sg:u")
    suppressions.suppress("acme", "gus@example.com", "group_unsubscribed", "sg:g",
                          suppressions.group_channel(42))
    assert suppressions.lift("acme", "GUS@example.com", suppressions.group_channel(42))
    assert not suppressions.lift("acme", "gus@example.com", suppressions.group_channel(42))
    assert suppressions.is_suppressed("acme", "gus@example.com")


def soft_bounce(key: str, at: datetime, *, bounce_type: str = "soft", tenant: str = "acme",
                email: str = "cy@example.net") -> None:
    MessageEvent.create(
        tenant=tenant, type="bounced", event_key=key, email=email, occurred_at=at,
        data={"bounce_type": bounce_type},
    )


def test_soft_bounces_suppress_at_the_limit_within_the_window(tenants, data_dir) -> None:
    policy = make_settings(data_dir, soft_bounce_limit=3, soft_bounce_window=timedelta(days=7))
    soft_bounce("b1", T0 - timedelta(days=8))  # outside the window
    soft_bounce("b2", T0 - timedelta(days=2))
    soft_bounce("b3", T0 - timedelta(days=1), bounce_type="hard")  # not a soft one
    soft_bounce("b4", T0 - timedelta(days=1), tenant="globex")  # another tenant
    soft_bounce("b5", T0 - timedelta(hours=1), email="other@example.net")
    soft_bounce("b6", T0)
    assert not suppressions.soft_bounce_should_suppress("acme", "cy@example.net", T0,
                                                        settings=policy)
    soft_bounce("b7", T0 + timedelta(minutes=1))
    assert suppressions.soft_bounce_should_suppress(
        "acme", "CY@example.net", T0 + timedelta(minutes=1), settings=policy
    )


def test_soft_bounce_limit_is_a_setting(tenants, data_dir) -> None:
    soft_bounce("b1", T0)
    strict = make_settings(data_dir, soft_bounce_limit=1)
    lenient = make_settings(data_dir, soft_bounce_limit=2)
    assert suppressions.soft_bounce_should_suppress("acme", "cy@example.net", T0, settings=strict)
    assert not suppressions.soft_bounce_should_suppress("acme", "cy@example.net", T0,
                                                        settings=lenient)
