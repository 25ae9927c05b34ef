"""Leases on effect keys: who may perform an effect now, and whether it is already done.

A key is free, leased (``lease:<token>``, with a time to live so that a killed
worker does not block it for ever) or done (``done:<token>``, kept for a while so
that late duplicates are recognised). Each attempt has its own token, so an attempt
can release or complete only the lease it took.
"""

from __future__ import annotations

import enum
import threading
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

import redis

LEASE = "lease:"
DONE = "done:"


class LeaseState(enum.Enum):
    ACQUIRED = "acquired"  # this attempt holds the lease
    HELD = "held"  # another attempt holds it
    DONE = "done"  # the effect was completed


@dataclass(frozen=True)
class LeaseOutcome:
    state: LeaseState
    #: The token of the attempt that holds the lease or completed the effect.
    holder: str


def _outcome(value: str | None, token: str) -> LeaseOutcome:
    if value is None:
        return LeaseOutcome(LeaseState.ACQUIRED, token)
    if value.startswith(DONE):
        return LeaseOutcome(LeaseState.DONE, value.removeprefix(DONE))
    return LeaseOutcome(LeaseState.HELD, value.removeprefix(LEASE))


class Leases(ABC):
    """Set-if-absent leases with a time to live, and done markers."""

    @abstractmethod
    def acquire(self, key: str, token: str, ttl_ms: int) -> LeaseOutcome:
        """Take the lease on ``key`` for ``token`` unless it is held or done."""

    @abstractmethod
    def complete(self, key: str, token: str, ttl_ms: int) -> bool:
        """Mark ``key`` done for ``ttl_ms``; False if ``token`` had lost its lease."""

    @abstractmethod
    def release(self, key: str, token: str) -> bool:
        """Free ``key`` if ``token`` still holds its lease; False if it did not."""


# Lua keeps "look, then take" atomic; SET NX alone cannot tell "held" from "done".
_ACQUIRE_LUA = """
local current = redis.call('GET', KEYS[1])
if current then
  return current
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return false
"""

# The effect happened, so the key is marked done even if the lease had expired.
_COMPLETE_LUA = """
local held = redis.call('GET', KEYS[1]) == ARGV[1]
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return held and 1 or 0
"""

_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class RedisLeases(Leases):
    """Leases shared by every worker, kept in Redis with PX expiry."""

    def __init__(self, client: redis.Redis, *, prefix: str = "outreach:idempotency:") -> None:
        self.prefix = prefix
        self._acquire = client.register_script(_ACQUIRE_LUA)
        self._complete = client.register_script(_COMPLETE_LUA)
        self._release = client.register_script(_RELEASE_LUA)

    def acquire(self, key: str, token: str, ttl_ms: int) -> LeaseOutcome:
        value = self._acquire(keys=[self.prefix + key], args=[LEASE + token, ttl_ms])
        return _outcome(value.decode() if isinstance(value, bytes) else value, token)

    def complete(self, key: str, token: str, ttl_ms: int) -> bool:
        held = self._complete(keys=[self.prefix + key], args=[LEASE + token, DONE + token, ttl_ms])
        return bool(held)

    def release(self, key: str, token: str) -> bool:
        return bool(self._release(keys=[self.prefix + key], args=[LEASE + token]))


class MemoryLeases(Leases):
    """The same leases inside one process (the stub broker), guarded by one lock."""

    #: How often, in seconds, expired leases and done markers are dropped.
    SWEEP_EVERY_S = 60.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, tuple[str, float]] = {}
        self._next_sweep = 0.0

    def __len__(self) -> int:
        """How many keys hold state (expired keys go at the next sweep)."""
        return len(self._values)

    def _sweep(self) -> None:
        now = time.monotonic()
        if now >= self._next_sweep:
            self._values = {key: entry for key, entry in self._values.items() if entry[1] > now}
            self._next_sweep = now + self.SWEEP_EVERY_S

    def _current(self, key: str) -> str | None:
        entry = self._values.get(key)
        if entry is None:
            return None
        value, expires = entry
        if expires <= time.monotonic():
            del self._values[key]
            return None
        return value

    def _set(self, key: str, value: str, ttl_ms: int) -> None:
        self._values[key] = (value, time.monotonic() + ttl_ms / 1000)

    def acquire(self, key: str, token: str, ttl_ms: int) -> LeaseOutcome:
        with self._lock:
            self._sweep()
            current = self._current(key)
            if current is None:
                self._set(key, LEASE + token, ttl_ms)
            return _outcome(current, token)

    def complete(self, key: str, token: str, ttl_ms: int) -> bool:
        with self._lock:
            held = self._current(key) == LEASE + token
            self._set(key, DONE + token, ttl_ms)
            return held

    def release(self, key: str, token: str) -> bool:
        with self._lock:
            if self._current(key) != LEASE + token:
                return False
            del self._values[key]
            return True
