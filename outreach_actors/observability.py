"""Error reporting and metrics hooks shared by the actors and middleware."""

from __future__ import annotations

from typing import Any


class Deferred(Exception):
    """Raised to stop processing a message that was put back for later (not an error)."""


def sentry_before_send(event: dict[str, Any], hint: dict[str, Any]) -> dict[str, Any] | None:
    """Drop deferrals and skipped duplicates: they are flow control, not errors."""
    exc_info = hint.get("exc_info")
    if exc_info and isinstance(exc_info[1], Deferred):
        return None
    return event
