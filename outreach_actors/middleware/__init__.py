"""Dramatiq middleware for the rules that cut across actors: rate limits, idempotency."""

from __future__ import annotations

import dramatiq

from ..settings import Settings


def project_middleware(settings: Settings) -> list[dramatiq.Middleware]:
    """The project's own middleware, in the order it must run."""
    return []
