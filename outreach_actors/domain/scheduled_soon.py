"""Actions a unit of work schedules due within the dispatch horizon: noted as they are
written, so that they are enqueued as soon as the work has committed
(``dispatch.dispatch_after_commit``) instead of at the dispatcher's next poll."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from typing import Any

from outreach_actors.domain.store.models import utcnow
from outreach_actors.settings import get_settings

# The dedupe keys noted by the current unit of work; None outside one (nothing noted).
_noted: ContextVar[list[str] | None] = ContextVar("outreach_scheduled_soon", default=None)


def note_scheduled(rows: Iterable[Mapping[str, Any]]) -> None:
    """Note the ScheduledAction rows (as inserted: ``dedupe_key``, ``run_at``) due within
    the horizon. By dedupe key: inserts that leave existing rows alone return no ids."""
    noted = _noted.get()
    if noted is None:
        return
    horizon = utcnow() + get_settings().dispatch_horizon
    noted.extend(row["dedupe_key"] for row in rows if row["run_at"] <= horizon)


def start_noting() -> object:
    """Begin a unit of work; returns the token that ``stop_noting`` takes."""
    return _noted.set([])


def stop_noting(token: object) -> list[str]:
    """End the unit of work begun with ``token``: the dedupe keys it noted."""
    noted = _noted.get() or []
    _noted.reset(token)  # type: ignore[arg-type]
    return noted
