"""Stored plan versions as the engine reads them: each version parsed once per process."""

from __future__ import annotations

from outreach_actors.domain.plans import PlanSpec, plan_from_definition
from outreach_actors.domain.store.models import Plan, on_bind


def plan_for(plan: Plan) -> PlanSpec:
    """The parsed plan of a stored row (cached: a stored plan version never changes)."""
    cached = _plan_cache.get(plan.id)
    if cached is None:
        cached = _plan_cache[plan.id] = plan_from_definition(plan.definition)
    return cached


def plan_for_id(plan_id: int) -> PlanSpec:
    """Like plan_for, without loading the row when the plan is cached."""
    cached = _plan_cache.get(plan_id)
    return cached if cached is not None else plan_for(Plan.get_by_id(plan_id))


# Plan id -> parsed plan. Emptied whenever another database is bound (see models.bind).
_plan_cache: dict[int, PlanSpec] = {}
on_bind(_plan_cache.clear)
