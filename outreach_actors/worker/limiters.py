"""Rate limiters that take several limits at once, all or nothing, and say how long to wait.

A limit of ``limit`` per ``period_ms`` means: in no window of ``period_ms``, however
placed, are more than ``limit`` requests granted. Each scope keeps the times of its
last ``limit`` grants (a sliding-window log). A request is granted when, in every
scope, the ``limit``-th most recent grant is at least a period old; then the request
is recorded in every scope. Otherwise nothing is recorded and the answer is the
exact wait until every scope has room: the moment the binding scope's
``limit``-th most recent grant leaves its window. Refusals are never recorded, so
they cannot eat the limit.

Why not GCRA or a token bucket: with a burst of ``limit`` they let up to
``2 * limit - 1`` requests through in one period-long window (a full burst, then
the refill), which breaks "never more than 20 in any minute"; with no burst they
forbid the bursts the limit allows. Why not the ``limits`` library: its moving
window takes one limit per call, so a refusal in a later scope would come after
earlier scopes were already consumed.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import redis

from outreach_actors.settings import Settings

MINUTE_MS = 60_000
HOUR_MS = 3_600_000

#: Override keys a tenant may set, and the subset a sender identity may set.
TENANT_OVERRIDES = frozenset(
    {"sender_per_minute", "sender_per_hour", "tenant_per_hour", "domain_per_hour"}
)
SENDER_OVERRIDES = frozenset({"sender_per_minute", "sender_per_hour"})


@dataclass(frozen=True)
class Limit:
    """At most ``limit`` grants in any window of ``period_ms`` for one ``key`` of a ``scope``."""

    scope: str
    key: str
    limit: int
    period_ms: int

    def __post_init__(self) -> None:
        if not self.scope or not self.key:
            raise ValueError(f"a rate limit needs a scope and a key, got {self!r}")
        if self.limit < 1 or self.period_ms < 1:
            raise ValueError(f"a rate limit needs a positive limit and period, got {self!r}")

    @property
    def state_key(self) -> str:
        """Where this limit's grants are kept; the period is part of it because one
        sender has both a per-minute and a per-hour limit."""
        return f"{self.scope}:{self.period_ms}:{self.key}"


@dataclass(frozen=True)
class Decision:
    """The outcome of one request: granted (``wait_ms == 0``) or how long to wait."""

    wait_ms: int
    #: The limiter's clock when it decided, in microseconds since the epoch.
    clock_us: int
    #: The limit that needs the longest wait; None when granted.
    refused_by: Limit | None


class RateLimiter(ABC):
    """Takes a set of limits atomically; see the module docstring for the semantics."""

    @abstractmethod
    def decide(self, limits: Sequence[Limit], now_ms: int | None = None) -> Decision:
        """Grant the request in every limit, or in none and say how long to wait.

        ``now_ms`` replaces the limiter's clock (tests); by default the Redis
        limiter uses the server's clock, so clocks of worker hosts do not matter.
        """

    def acquire(self, limits: Sequence[Limit], now_ms: int | None = None) -> int:
        """0 when granted (every limit consumed), else the milliseconds until all have room."""
        return self.decide(limits, now_ms).wait_ms


def _state_keys(limits: Sequence[Limit]) -> list[str]:
    keys = [limit.state_key for limit in limits]
    if len(set(keys)) != len(keys):
        raise ValueError(f"the same scope, key and period appear twice in {list(limits)!r}")
    return keys


def _ceil_ms(us: int) -> int:
    return -(-us // 1000)


# KEYS: one list per limit, newest grant first, trimmed to `limit` entries (older
# grants can never decide anything). ARGV[1]: now in µs or "" for the server clock,
# then limit and period (µs) for each key.
# Returns {wait_ms, now_us, 1-based index of the binding limit or 0}.
_DECIDE_LUA = """
local now
if ARGV[1] == '' then
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
else
  now = tonumber(ARGV[1])
end
local wait, binding = 0, 0
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 * i])
  local period = tonumber(ARGV[2 * i + 1])
  local count = redis.call('LLEN', key)
  if count >= limit then
    -- The limit-th most recent grant, read from the tail: O(1) when count == limit.
    local oldest = tonumber(redis.call('LINDEX', key, limit - count - 1))
    local needed = oldest + period - now
    if needed > wait then
      wait, binding = needed, i
    end
  end
end
if wait > 0 then
  return {math.ceil(wait / 1000), now, binding}
end
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[2 * i])
  local period = tonumber(ARGV[2 * i + 1])
  redis.call('LPUSH', key, now)
  redis.call('LTRIM', key, 0, limit - 1)
  redis.call('PEXPIRE', key, math.ceil(period / 1000))
end
return {0, now, 0}
"""


class RedisRateLimiter(RateLimiter):
    """The limiter shared by every worker: one Lua script per request, keys expire on their own.

    All keys of one request must live on one Redis node (no Redis Cluster slots).
    """

    def __init__(self, client: redis.Redis, *, prefix: str = "outreach:ratelimit:") -> None:
        self.prefix = prefix
        self._decide = client.register_script(_DECIDE_LUA)

    def decide(self, limits: Sequence[Limit], now_ms: int | None = None) -> Decision:
        keys = [self.prefix + key for key in _state_keys(limits)]
        args: list[int | str] = ["" if now_ms is None else now_ms * 1000]
        for limit in limits:
            args += [limit.limit, limit.period_ms * 1000]
        wait_ms, clock_us, binding = self._decide(keys=keys, args=args)
        return Decision(int(wait_ms), int(clock_us), limits[binding - 1] if binding else None)


class MemoryRateLimiter(RateLimiter):
    """The same limiter inside one process (the stub broker), guarded by one lock."""

    #: How often, in µs, entries whose newest grant has left the window are dropped.
    SWEEP_EVERY_US = 60_000_000

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._grants: dict[str, deque[int]] = {}
        self._expires_us: dict[str, int] = {}
        self._next_sweep_us = 0

    def __len__(self) -> int:
        """How many keys hold state (expired keys go at the next sweep)."""
        return len(self._grants)

    def decide(self, limits: Sequence[Limit], now_ms: int | None = None) -> Decision:
        keys = _state_keys(limits)
        with self._lock:
            now = time.time_ns() // 1000 if now_ms is None else now_ms * 1000
            self._sweep(now)
            wait, refused_by = 0, None
            for limit, key in zip(limits, keys, strict=True):
                grants = self._grants.get(key, ())
                if len(grants) >= limit.limit:
                    needed = grants[-limit.limit] + limit.period_ms * 1000 - now
                    if needed > wait:
                        wait, refused_by = needed, limit
            if wait > 0:
                return Decision(_ceil_ms(wait), now, refused_by)
            for limit, key in zip(limits, keys, strict=True):
                grants = self._grants.get(key)
                if grants is None or grants.maxlen != limit.limit:
                    grants = self._grants[key] = deque(grants or (), maxlen=limit.limit)
                grants.append(now)
                self._expires_us[key] = now + limit.period_ms * 1000
            return Decision(0, now, None)

    def _sweep(self, now: int) -> None:
        if now < self._next_sweep_us:
            return
        for key in [key for key, expires in self._expires_us.items() if expires <= now]:
            del self._grants[key], self._expires_us[key]
        self._next_sweep_us = now + self.SWEEP_EVERY_US


def check_overrides(overrides: Mapping[str, int], *, allowed: frozenset[str], owner: str) -> None:
    """Refuse unknown override keys and non-positive values, naming ``owner`` and the fix."""
    for name, value in overrides.items():
        if name not in allowed:
            raise ValueError(
                f"{owner} rate limit override {name!r} is not one of {sorted(allowed)}"
            )
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"{owner} rate limit override {name!r} must be a positive whole number, got {value!r}"
            )


def default_limits(
    settings: Settings,
    *,
    tenant: str,
    sender: str,
    recipient_domain: str,
    tenant_overrides: Mapping[str, int] | None = None,
    sender_overrides: Mapping[str, int] | None = None,
) -> list[Limit]:
    """The five limits of one send: sender per minute and per hour, tenant, recipient
    domain (per tenant) and global.

    A sender override beats a tenant override, which beats the setting. A sender may
    only override its own limits: the tenant and domain limits are shared by all of
    the tenant's senders, so they are set on the tenant. Global is settings only.
    """
    tenant_overrides = tenant_overrides or {}
    sender_overrides = sender_overrides or {}
    check_overrides(tenant_overrides, allowed=TENANT_OVERRIDES, owner=f"tenant {tenant!r}")
    check_overrides(sender_overrides, allowed=SENDER_OVERRIDES, owner=f"sender {sender!r}")

    def value(name: str) -> int:
        default = getattr(settings, f"ratelimit_{name}")
        return sender_overrides.get(name, tenant_overrides.get(name, default))

    sender_key = f"{tenant}:{sender.lower()}"
    return [
        Limit("sender", sender_key, value("sender_per_minute"), MINUTE_MS),
        Limit("sender", sender_key, value("sender_per_hour"), HOUR_MS),
        Limit("tenant", tenant, value("tenant_per_hour"), HOUR_MS),
        Limit("domain", f"{tenant}:{recipient_domain.lower()}", value("domain_per_hour"), HOUR_MS),
        Limit("global", "all", settings.ratelimit_global_per_hour, HOUR_MS),
    ]
