"""Rate limiters that take several limits at once, all or nothing, and say how long to wait.

A limit of ``limit`` per ``period_ms`` means: in no window of ``period_ms``, however
placed, are more than ``limit`` requests granted. Each scope keeps the times of its
last ``limit`` grants (a sliding-window log). A request is granted when, in every
scope, the ``limit``-th most recent grant is at least a period old; then the request
is recorded in every scope. Otherwise nothing is recorded and the answer is the
exact wait until every scope has room: the moment the binding scope's
``limit``-th most recent grant leaves its window. Refusals are never recorded, so
they cannot eat the limit.

A limit may instead be a calendar window (a sender's day, ``resets_at_ms``): its date is
part of its key, its grants count until the window ends however old they are, and a
full one waits exactly until then. It is taken in the same all-or-nothing request.

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
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis

from outreach_actors.domain.sending_days import (
    SENDER_DAY_KEYS,
    check_sender_day,
    daily_cap,
    sender_day,
    sender_zone,
)
from outreach_actors.settings import Settings, parse_duration

MINUTE_MS = 60_000
HOUR_MS = 3_600_000

#: Override keys a tenant may set, and the subset a sender identity may set.
TENANT_OVERRIDES = frozenset(
    {"sender_per_minute", "sender_per_hour", "tenant_per_hour", "domain_per_hour",
     "sender_per_day"}
)
SENDER_OVERRIDES = frozenset({"sender_per_minute", "sender_per_hour", "sender_per_day"})
#: The tenant's frequency caps across its plans: a list of [count, ISO-8601 duration].
FREQUENCY_CAPS = "frequency_caps"


@dataclass(frozen=True)
class Limit:
    """At most ``limit`` grants in any window of ``period_ms`` for one ``key`` of a ``scope``."""

    scope: str
    key: str
    limit: int
    period_ms: int
    #: Set for a calendar window (a sender's day, whose date is in ``key``): the
    #: moment, ms since the epoch, it ends. Its grants count until then, however old.
    resets_at_ms: int | None = None

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


# The Lua of the Redis limiter, a file beside this module as Dramatiq keeps its own.
_LUA_DIR = Path(__file__).parent / "lua"
_SCRIPTS = {path.stem: path.read_text() for path in _LUA_DIR.glob("*.lua")}


class RedisRateLimiter(RateLimiter):
    """The limiter shared by every worker: one Lua script per request, keys expire on their own.

    All keys of one request must live on one Redis node (no Redis Cluster slots).
    """

    def __init__(self, client: redis.Redis, *, prefix: str = "outreach:ratelimit:") -> None:
        self.prefix = prefix
        self._decide = client.register_script(_SCRIPTS["decide"])

    def decide(self, limits: Sequence[Limit], now_ms: int | None = None) -> Decision:
        keys = [self.prefix + key for key in _state_keys(limits)]
        args: list[int | str] = ["" if now_ms is None else now_ms * 1000]
        for limit in limits:
            args += [limit.limit, limit.period_ms * 1000, (limit.resets_at_ms or 0) * 1000]
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
                    needed = (limit.resets_at_ms * 1000 - now if limit.resets_at_ms
                              else grants[-limit.limit] + limit.period_ms * 1000 - now)
                    if needed > wait:
                        wait, refused_by = needed, limit
            if wait > 0:
                return Decision(_ceil_ms(wait), now, refused_by)
            for limit, key in zip(limits, keys, strict=True):
                grants = self._grants.get(key)
                if grants is None or grants.maxlen != limit.limit:
                    grants = self._grants[key] = deque(grants or (), maxlen=limit.limit)
                grants.append(now)
                self._expires_us[key] = (limit.resets_at_ms * 1000 if limit.resets_at_ms
                                         else now + limit.period_ms * 1000)
            return Decision(0, now, None)

    def _sweep(self, now: int) -> None:
        if now < self._next_sweep_us:
            return
        for key in [key for key, expires in self._expires_us.items() if expires <= now]:
            del self._grants[key], self._expires_us[key]
        self._next_sweep_us = now + self.SWEEP_EVERY_US


def check_overrides(overrides: Mapping[str, object], *, allowed: frozenset[str],
                    owner: str) -> None:
    """Refuse unknown override keys and non-positive values, naming ``owner`` and the fix.

    A sender's warm-up and time zone (SENDER_DAY_KEYS) and a tenant's frequency caps
    are checked by their own rules where ``allowed`` has them.
    """
    for name, value in overrides.items():
        if name in SENDER_DAY_KEYS and name in allowed:
            continue
        if name == FREQUENCY_CAPS and name in allowed:
            frequency_caps(value, owner=owner)
            continue
        if name not in allowed:
            raise ValueError(
                f"{owner} rate limit override {name!r} is not one of {sorted(allowed)}"
            )
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"{owner} rate limit override {name!r} must be a positive whole number, got {value!r}"
            )
    if SENDER_DAY_KEYS <= allowed:
        check_sender_day(overrides, owner=owner)


#: What a tenant may set: its overrides and its frequency caps.
TENANT_SETTINGS = TENANT_OVERRIDES | {FREQUENCY_CAPS}
#: What a sender identity may set: its overrides, its warm-up and its time zone.
SENDER_SETTINGS = SENDER_OVERRIDES | SENDER_DAY_KEYS


def frequency_caps(value: object, *, owner: str) -> list[tuple[int, int]]:
    """A tenant's frequency caps as (count, period ms), checked: ``[[1, "P2D"], ...]``."""
    if not isinstance(value, list):
        raise ValueError(f"{owner} frequency caps must be a list of [count, duration], "
                         f"got {value!r}")
    caps = []
    for cap in value:
        if (not isinstance(cap, list | tuple) or len(cap) != 2 or isinstance(cap[0], bool)
                or not isinstance(cap[0], int) or cap[0] < 1 or not isinstance(cap[1], str)):
            raise ValueError(f"{owner} frequency cap {cap!r} is not [count, ISO-8601 duration]"
                             " such as [1, \"P2D\"]")
        try:
            period = parse_duration(cap[1])
        except ValueError as exc:
            raise ValueError(f"{owner} frequency cap {cap!r}: {exc}") from None
        if period <= timedelta(0):
            raise ValueError(f"{owner} frequency cap {cap!r} needs a positive duration")
        caps.append((cap[0], int(period.total_seconds() * 1000)))
    return caps


def default_limits(
    settings: Settings,
    *,
    tenant: str,
    sender: str,
    recipient_domain: str,
    tenant_overrides: Mapping[str, object] | None = None,
    sender_overrides: Mapping[str, object] | None = None,
    recipient: str | None = None,
    frequency_capped: bool = True,
    first_sent: datetime | None = None,
    now: datetime | None = None,
) -> list[Limit]:
    """The limits of one send: sender per minute and per hour, tenant, recipient
    domain (per tenant) and global; the sender's day when it has a daily cap or a
    warm-up; the tenant's frequency caps on ``recipient`` unless the node opted out
    (``frequency_capped``; ``recipient`` is its key, store.keys.recipient_key).

    A sender override beats a tenant override, which beats the setting. A sender may
    only override its own limits: the tenant and domain limits are shared by all of
    the tenant's senders, so they are set on the tenant. Global is settings only.
    ``first_sent`` (the sender's first send) starts its warm-up; ``now`` (naive UTC)
    says which day it is, by default the clock's.
    """
    tenant_overrides = tenant_overrides or {}
    sender_overrides = sender_overrides or {}
    check_overrides(tenant_overrides, allowed=TENANT_SETTINGS, owner=f"tenant {tenant!r}")
    check_overrides(sender_overrides, allowed=SENDER_SETTINGS, owner=f"sender {sender!r}")

    def value(name: str) -> int | None:
        default = getattr(settings, f"ratelimit_{name}")
        return sender_overrides.get(name, tenant_overrides.get(name, default))

    sender_key = f"{tenant}:{sender.lower()}"
    limits = [
        Limit("sender", sender_key, value("sender_per_minute"), MINUTE_MS),
        Limit("sender", sender_key, value("sender_per_hour"), HOUR_MS),
        Limit("tenant", tenant, value("tenant_per_hour"), HOUR_MS),
        Limit("domain", f"{tenant}:{recipient_domain.lower()}", value("domain_per_hour"), HOUR_MS),
        Limit("global", "all", settings.ratelimit_global_per_hour, HOUR_MS),
    ]
    today = sender_day(now or datetime.now(UTC), sender_zone(sender_overrides))
    allowed_today = daily_cap(value("sender_per_day"), sender_overrides, first_sent, today)
    if allowed_today is not None:
        limits.append(Limit(
            "sender_day", f"{sender_key}:{today.day.isoformat()}", allowed_today,
            int((today.ends - today.starts).total_seconds() * 1000),
            resets_at_ms=int(today.ends.timestamp() * 1000)))
    if frequency_capped and recipient and FREQUENCY_CAPS in tenant_overrides:
        for count, period_ms in frequency_caps(tenant_overrides[FREQUENCY_CAPS],
                                               owner=f"tenant {tenant!r}"):
            limits.append(Limit("contact", f"{tenant}:{recipient}", count, period_ms))
    return limits
