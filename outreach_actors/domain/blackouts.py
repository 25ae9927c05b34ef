"""Tenant blackout dates: days on which none of a tenant's email goes out, in each
contact's own time zone (a send due then waits for the first window after them)."""

from __future__ import annotations

import threading
import time
from datetime import date

from outreach_actors.domain.store.models import BlackoutDate, Tenant, database_cache

#: How long a process trusts what it read of a tenant's blackout dates, in seconds.
#: Changes made in this process apply at once; elsewhere within this long.
BLACKOUT_CACHE_SECONDS = 5.0
#: The longest blackout one command may set: a year (a longer hold is a pause).
MAX_BLACKOUT_DAYS = 366

Blackouts = tuple[tuple[date, date], ...]

# The bound database's cache (see models.database_cache): tenant id -> (until when it is
# trusted, by time.monotonic(); the tenant's blackouts).
_BLACKOUTS = "blackouts"
_cache_lock = threading.Lock()


def _forget() -> None:
    with _cache_lock:
        database_cache(_BLACKOUTS).clear()


def add_blackout(tenant_id: str, first_day: date, last_day: date) -> bool:
    """Hold the tenant's sends from ``first_day`` to ``last_day`` inclusive; False if
    exactly that blackout exists already."""
    if last_day < first_day:
        raise ValueError(f"a blackout ends on or after its first day: {first_day} .. {last_day}")
    if (last_day - first_day).days + 1 > MAX_BLACKOUT_DAYS:
        raise ValueError(f"a blackout is at most {MAX_BLACKOUT_DAYS} days; to hold a plan "
                         "longer, pause it (`outreach plan pause`)")
    if not Tenant.select().where(Tenant.id == tenant_id).exists():
        raise LookupError(f"no tenant {tenant_id!r}")
    added = (BlackoutDate.insert(tenant=tenant_id, first_day=first_day, last_day=last_day)
             .on_conflict_ignore().execute())
    _forget()
    return bool(added) and BlackoutDate.select().where(
        BlackoutDate.tenant == tenant_id, BlackoutDate.first_day == first_day,
        BlackoutDate.last_day == last_day).exists()


def remove_blackout(tenant_id: str, first_day: date, last_day: date) -> bool:
    """Lift one blackout; False if there is no such blackout."""
    removed = BlackoutDate.delete().where(
        BlackoutDate.tenant == tenant_id, BlackoutDate.first_day == first_day,
        BlackoutDate.last_day == last_day).execute()
    _forget()
    return bool(removed)


def list_blackouts(tenant_id: str) -> Blackouts:
    """The tenant's blackouts, (first day, last day) inclusive, in date order."""
    return tuple(BlackoutDate.select(BlackoutDate.first_day, BlackoutDate.last_day)
                 .where(BlackoutDate.tenant == tenant_id)
                 .order_by(BlackoutDate.first_day, BlackoutDate.last_day).tuples())


def tenant_blackouts(tenant_id: str) -> Blackouts:
    """The tenant's blackouts as this process last read them (see BLACKOUT_CACHE_SECONDS):
    the engine asks at every scheduled send."""
    now = time.monotonic()
    cache = database_cache(_BLACKOUTS)
    cached = cache.get(tenant_id)
    if cached is not None and cached[0] > now:
        return cached[1]
    blackouts = list_blackouts(tenant_id)
    with _cache_lock:
        cache[tenant_id] = (now + BLACKOUT_CACHE_SECONDS, blackouts)
    return blackouts


def blacked_out(day: date, blackouts: Blackouts) -> bool:
    return any(first <= day <= last for first, last in blackouts)
