"""What the Flask, Django and standalone WSGI hosts share: settings, runtime, endpoints, enroll.

A host app configures the package once at start (``activate``): its settings
replace the environment's, the database is bound and the broker rebuilt for
them. Sentry is left to the host app, which initialises it for itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import peewee

from outreach_actors.domain import control, dispatch, engine, host_events
from outreach_actors.domain.control import ControlError
from outreach_actors.domain.engine import AlreadyEnrolled, EnrollmentError
from outreach_actors.domain.enroll_many import ContactRow, EnrollManyResult
from outreach_actors.domain.enroll_many import enroll_many as _enroll_many
from outreach_actors.domain.host_events import TrackError, TrackResult
from outreach_actors.domain.pauses import PauseChange
from outreach_actors.domain.pauses import pause_plan as _pause_plan
from outreach_actors.domain.pauses import resume_plan as _resume_plan
from outreach_actors.domain.store.models import Enrollment
from outreach_actors.web.endpoints import (
    UNSUBSCRIBE_PATH,
    WEBHOOK_PATH,
    Endpoints,
    activate,
    host_settings,
)
from outreach_actors.web.http import database_connection
from outreach_actors.worker.actors.mail import enqueue_actions

__all__ = ["UNSUBSCRIBE_PATH", "WEBHOOK_PATH", "AlreadyEnrolled", "ContactRow", "ControlError",
           "Endpoints", "EnrollManyResult", "EnrollmentError", "OutreachUnavailable", "PauseChange",
           "TrackError", "TrackResult", "activate", "enroll", "enroll_many", "host_settings",
           "pause", "pause_plan", "resume", "resume_plan", "track", "unenroll"]


class OutreachUnavailable(RuntimeError):
    """The outreach database could not be reached: nothing was enrolled; try again
    later (a view answers 503, or queues the signup)."""


def enroll(
    tenant_id: str,
    email: str,
    plan_name: str,
    *,
    fields: dict[str, Any] | None = None,
    timezone: str | None = None,
    if_enrolled: str = "raise",
) -> Enrollment:
    """Enroll a contact from a host app's view (see ``engine.enroll``).

    Raises AlreadyEnrolled (an EnrollmentError, like the other refusals: an unknown
    plan or tenant, an invalid address), both importable from here, unless
    ``if_enrolled="skip"``, which returns the existing enrollment; and
    OutreachUnavailable when the database cannot be reached.
    """
    with _outreach_database():
        return engine.enroll(tenant_id, email, plan_name, fields=fields, timezone=timezone,
                             if_enrolled=if_enrolled)


@contextmanager
def _outreach_database() -> Iterator[None]:
    """A connection for one call, its new actions enqueued after commit; an unreachable
    database raised as OutreachUnavailable."""
    try:
        with database_connection(), dispatch.dispatch_after_commit(enqueue_actions):
            yield
    except peewee.OperationalError as exc:
        raise OutreachUnavailable(f"the outreach database cannot be reached: {exc}") from exc


def track(tenant_id: str, email: str, event: str, properties: Mapping[str, Any] | None = None,
          *, event_id: str | None = None, occurred_at: datetime | str | None = None) -> TrackResult:
    """Report one of the host's own events (``purchased``...) for a contact: stored once
    per ``event_id`` (a retry stores and moves nothing twice), then each enrollment
    of the contact whose plan listens to it moves or reaches its goal.

    Raises TrackError (nothing stored) for an unknown tenant, an invalid address, event
    name or properties; OutreachUnavailable when the database cannot be reached.
    """
    with _outreach_database():
        return host_events.track(tenant_id, email, event, properties, event_id=event_id,
                                 occurred_at=occurred_at)


def unenroll(tenant_id: str, email: str, plan_name: str | None = None) -> int:
    """End the contact's enrollments in ``plan_name`` (None: every plan of the tenant);
    how many ended (0 if none was left: safe to call twice)."""
    with _outreach_database():
        return control.unenroll(tenant_id, email, plan_name)


def pause(tenant_id: str, email: str, plan_name: str) -> bool:
    """Hold the contact's enrollment in the plan (no email, no timer) until resumed;
    False if it was paused already. ControlError if it has no live enrollment there."""
    with _outreach_database():
        return control.pause(tenant_id, email, plan_name)


def resume(tenant_id: str, email: str, plan_name: str) -> bool:
    """Resume a paused enrollment; False if it was not paused. ControlError if the
    contact has no live enrollment in the plan."""
    with _outreach_database():
        return control.resume(tenant_id, email, plan_name)


def enroll_many(tenant_id: str, plan_name: str, rows: Iterable[ContactRow], *,
                import_key: str | None = None) -> EnrollManyResult:
    """Enroll a list of contacts a batch at a time (see ``domain.enroll_many``): each
    refused row is reported in the result by its ``key``, never raised; the same list
    enrolled again enrolls no one twice. OutreachUnavailable when the database cannot
    be reached (the batches committed before stand; enrolling the list again is safe)."""
    try:
        with database_connection():
            return _enroll_many(tenant_id, plan_name, rows, import_key=import_key)
    except peewee.OperationalError as exc:
        raise OutreachUnavailable(f"the outreach database cannot be reached: {exc}") from exc


def pause_plan(tenant_id: str, plan_name: str, *, reason: str = "", by: str = "") -> PauseChange:
    """Hold every send and timer of the plan until resume_plan; idempotent (``changed``
    says whether it was running). Raises PauseError (a LookupError) for an unknown plan."""
    with database_connection():
        return _pause_plan(tenant_id, plan_name, reason=reason, by=by)


def resume_plan(tenant_id: str, plan_name: str, *, by: str = "") -> PauseChange:
    """Lift the plan's pause: sends that fell due go out in each contact's next send
    window within the rate limits, timers that fell due fire in order; idempotent."""
    with database_connection():
        return _resume_plan(tenant_id, plan_name, by=by)
