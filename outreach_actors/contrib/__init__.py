"""What the Flask, Django and standalone WSGI hosts share: settings, runtime, endpoints, enroll.

A host app configures the package once at start (``activate``): its settings
replace the environment's, the database is bound and the broker rebuilt for
them. Sentry is left to the host app, which initialises it for itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import peewee

from outreach_actors.domain import dispatch, engine
from outreach_actors.domain.engine import AlreadyEnrolled, EnrollmentError
from outreach_actors.domain.enroll_many import ContactRow, EnrollManyResult
from outreach_actors.domain.enroll_many import enroll_many as _enroll_many
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

__all__ = ["UNSUBSCRIBE_PATH", "WEBHOOK_PATH", "AlreadyEnrolled", "ContactRow", "Endpoints",
           "EnrollManyResult", "EnrollmentError", "OutreachUnavailable", "activate", "enroll",
           "enroll_many", "host_settings", "pause_plan", "resume_plan"]


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
) -> Enrollment:
    """Enroll a contact from a host app's view (see ``engine.enroll``).

    Raises AlreadyEnrolled (an EnrollmentError, like the other refusals: an unknown
    plan or tenant, an invalid address), both importable from here; and
    OutreachUnavailable when the database cannot be reached.
    """
    try:
        with database_connection(), dispatch.dispatch_after_commit(enqueue_actions):
            return engine.enroll(tenant_id, email, plan_name, fields=fields, timezone=timezone)
    except peewee.OperationalError as exc:
        raise OutreachUnavailable(f"the outreach database cannot be reached: {exc}") from exc


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
