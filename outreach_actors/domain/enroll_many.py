"""Enroll a list of contacts at once: the same checks and the same rows as ``engine.enroll``
for each, written a batch at a time with set-based statements, each refusal reported
by its row, and a re-run of the same list enrolling each contact once."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from outreach_actors.domain import engine
from outreach_actors.domain.engine import AlreadyEnrolled, EnrollmentError
from outreach_actors.domain.store.keys import enrollment_key
from outreach_actors.domain.store.models import (
    Contact,
    Enrollment,
    Tenant,
    database_proxy,
    insert_rows,
    utcnow,
)
from outreach_actors.domain.stored_plans import plan_for

logger = logging.getLogger(__name__)

#: Rows written per transaction: large enough that statements, not rows, are few. From
#: 1,000 to 5,000 PostgreSQL's CPU per row fell by 15% (benchmarks/enroll.py: each batch
#: creates its COPY staging tables); a run cut short loses at most one batch, which a
#: re-run enrolls.
DEFAULT_BATCH_SIZE = 5000


@dataclass(frozen=True)
class ContactRow:
    """One contact of a list: its address, fields and time zone as the list gives them;
    ``key`` names the row in reports (a CSV line number, a host's id)."""

    key: Any
    email: str
    fields: Mapping[str, Any] | None = None
    timezone: str | None = None


@dataclass
class EnrollManyResult:
    """What enroll_many did: how many were enrolled, and why each other row was not."""

    enrolled: int = 0
    #: (row key, reason), in the list's order: refused rows and rows already enrolled.
    problems: list[tuple[Any, str]] = field(default_factory=list)


class _Entered(NamedTuple):
    """What entering the start node reads of a new enrollment (no model row needed)."""

    id: int
    contact_id: int
    tenant_id: str
    version: int = 0


@dataclass
class _Valid:
    row: ContactRow
    email: str
    fields: dict[str, Any]
    timezone: str | None


def enroll_many(tenant_id: str, plan_name: str, rows: Iterable[ContactRow], *,
                import_key: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                now: datetime | None = None) -> EnrollManyResult:
    """Enroll every row into the tenant's latest version of the plan.

    Each row is checked as ``engine.enroll`` checks it (address, fields, time zone) and a
    refused row is reported, never raised. A contact already in the plan is reported as
    ``engine.enroll`` would refuse it, so running the same list again (after a crash
    halfway, say) enrolls no one twice. A plan that allows re-entry keys each row's
    enrollment by ``import_key`` and the row's key instead, for the same reason.
    Raises EnrollmentError only for what no row can fix: an unknown tenant or plan.
    """
    if not 1 <= batch_size <= 10_000:
        raise ValueError(f"batch_size must be 1-10000, got {batch_size}")
    now = now or utcnow()
    if not Tenant.select().where(Tenant.id == tenant_id).exists():
        raise EnrollmentError(f"unknown tenant {tenant_id!r}")
    plan_row = engine.latest_plan(tenant_id, plan_name)
    plan = plan_for(plan_row)
    if plan.allow_reentry and import_key is None:
        raise EnrollmentError(f"plan {plan_name!r} allows re-entry: give an import_key, so "
                              "that enrolling the same list again enrolls no one twice")
    result = EnrollManyResult()
    batch: list[ContactRow] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= batch_size:
            _enroll_batch(tenant_id, plan_row, plan, batch, import_key, now, result)
            batch = []
    if batch:
        _enroll_batch(tenant_id, plan_row, plan, batch, import_key, now, result)
    logger.info("Enrolled %d contacts tenant=%s plan=%s (%d rows not enrolled)",
                result.enrolled, tenant_id, plan_name, len(result.problems))
    return result


def _enroll_batch(tenant_id: str, plan_row, plan, batch: list[ContactRow], import_key: str | None,
                  now: datetime, result: EnrollManyResult) -> None:
    problems: dict[int, str] = {}
    valid: dict[int, _Valid] = {}
    first_of: dict[str, int] = {}
    for index, row in enumerate(batch):
        try:
            email, fields, timezone = engine.checked_contact(row.email, row.fields, row.timezone)
        except EnrollmentError as exc:
            problems[index] = str(exc)
            continue
        if email in first_of and not plan.allow_reentry:
            problems[index] = str(AlreadyEnrolled.of(email, plan_row.name))
            continue
        first_of.setdefault(email, index)
        valid[index] = _Valid(row, email, fields, timezone)
    with database_proxy.atomic():
        contacts = _upsert_contacts(tenant_id, valid.values(), now)
        keys = {index: enrollment_key(
                    tenant_id, plan_row.name, contacts[item.email],
                    reentry=f"{import_key}:{item.row.key}" if plan.allow_reentry else None)
                for index, item in valid.items()}
        created = dict(insert_rows(Enrollment, [
            {"tenant": tenant_id, "plan": plan_row.id, "contact": contacts[item.email],
             "enrollment_key": keys[index], "current_node": plan.start, "version": 0,
             "node_entered_at": now, "created_at": now, "updated_at": now}
            for index, item in valid.items()
        ], ignore_conflicts=True, conflict_target="enrollment_key",
            returning=("enrollment_key", "id")))
        new = [index for index in valid if keys[index] in created]
        engine.enter_start([_Entered(created[keys[index]], contacts[valid[index].email],
                                     tenant_id) for index in new], plan, now=now)
    for index in valid:
        if keys[index] not in created:
            problems[index] = str(AlreadyEnrolled.of(valid[index].email, plan_row.name))
    result.enrolled += len(new)
    result.problems.extend((batch[index].key, problems[index]) for index in sorted(problems))


def _upsert_contacts(tenant_id: str, items: Iterable[_Valid], now: datetime) -> dict[str, int]:
    """Each address's contact id: new contacts inserted, existing ones given the new
    fields over their own (and the new time zone, if any), as ``engine.enroll`` does."""
    items = {item.email: item for item in items}  # later duplicates (re-entry) merge in
    if not items:
        return {}
    ids: dict[str, int] = {}
    for email, contact_id, fields, timezone in (
            Contact.select(Contact.email, Contact.id, Contact.fields, Contact.timezone)
            .where(Contact.tenant == tenant_id, Contact.email.in_(list(items))).tuples()):
        ids[email] = contact_id
        item = items[email]
        if item.fields or item.timezone:
            Contact.update(fields={**(fields or {}), **item.fields},
                           timezone=item.timezone or timezone).where(
                Contact.id == contact_id).execute()
    ids.update(insert_rows(Contact, [
        {"tenant": tenant_id, "email": email, "fields": item.fields, "timezone": item.timezone,
         "created_at": now}
        for email, item in items.items() if email not in ids
    ], ignore_conflicts=True, returning=("email", "id")))
    missing = [email for email in items if email not in ids]
    if missing:  # inserted meanwhile by another enroll: theirs stands
        ids.update(Contact.select(Contact.email, Contact.id)
                   .where(Contact.tenant == tenant_id, Contact.email.in_(missing)).tuples())
    return ids
