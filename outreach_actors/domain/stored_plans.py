"""Stored plan versions: a validated plan stored as its tenant's next version, and each
version parsed once per process as the engine reads it."""

from __future__ import annotations

from collections.abc import Collection

from outreach_actors.domain.plans import PlanSpec, plan_from_definition
from outreach_actors.domain.store.models import (
    Plan,
    SenderIdentity,
    Tenant,
    database_cache,
    database_proxy,
)


def plan_for(plan: Plan) -> PlanSpec:
    """The parsed plan of a stored row (cached: a stored plan version never changes)."""
    cache = database_cache(_PLANS)
    cached = cache.get(plan.id)
    if cached is None:
        cached = cache[plan.id] = plan_from_definition(plan.definition)
    return cached


def plan_for_id(plan_id: int) -> PlanSpec:
    """Like plan_for, without loading the row when the plan is cached."""
    cached = database_cache(_PLANS).get(plan_id)
    return cached if cached is not None else plan_for(Plan.get_by_id(plan_id))


def plans_for_ids(plan_ids: Collection[int]) -> dict[int, PlanSpec]:
    """The parsed plans by id, reading in one query only the rows not cached; an id that
    is no plan is left out."""
    cache = database_cache(_PLANS)
    plans = {plan_id: cache[plan_id] for plan_id in plan_ids if plan_id in cache}
    missing = sorted(set(plan_ids) - plans.keys())
    if missing:
        plans.update((row.id, plan_for(row)) for row in Plan.select().where(Plan.id.in_(missing)))
    return plans


# The bound database's cache of parsed plans, by plan id (see models.database_cache).
_PLANS = "plans"


def store_plan(tenant_id: str, plan: PlanSpec) -> int:
    """Store a validated plan as the tenant's next version of it (the tenant is created
    if new); returns that version. Versions already stored never change."""
    Tenant.get_or_create(id=tenant_id, defaults={"name": tenant_id})
    with database_proxy.atomic():
        version = Plan.select().where(Plan.tenant == tenant_id, Plan.name == plan.name).count() + 1
        Plan.create(tenant=tenant_id, name=plan.name, version=version,
                    definition=plan.to_definition())
    return version


def sender_problem(tenant: str, sender: str | None) -> str | None:
    """Why every send of a plan would fail for want of a sender, if it would. A warning:
    the sender may well be added after the plan, but before anyone is enrolled."""
    identities = SenderIdentity.select().where(SenderIdentity.tenant == tenant)
    if sender:
        identities = identities.where(SenderIdentity.email == sender)
    if not identities.exists():
        what = f"no sender identity {sender}" if sender else "no sender identity"
        return (f"tenant {tenant!r} has {what}: every send of this plan would fail; add it with "
                f"`outreach sender add {sender or 'EMAIL'} --tenant {tenant} --verified`")
    if not identities.where(SenderIdentity.verified == True).exists():  # noqa: E712
        return (f"tenant {tenant!r} has no verified sender identity "
                f"{sender or ''}".rstrip() + ": every send of this plan would fail until it is "
                "verified (`outreach sender add ... --verified`)")
    return None
