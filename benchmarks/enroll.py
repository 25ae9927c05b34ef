"""Benchmark of bulk enrollment: rows of a contact list enrolled per second on PostgreSQL.

- enroll_per_s: N rows (100,000; 20,000 with --quick), each an address, two fields and a
  time zone, enrolled by ``enroll_many`` (what ``outreach enroll --csv`` runs) into a
  plan whose first node sends an email: contacts, enrollments, visits and first send
  actions written a batch at a time. Target: 5,000 rows/s.
- The reference, measured in the same run: a plain ``COPY`` of the same rows into a
  scratch table of the same database, what PostgreSQL takes to load the data at all.

Usage: python benchmarks/enroll.py [--quick] [--json]
"""

from __future__ import annotations

import io
import json
import time

import _common

from outreach_actors.domain.enroll_many import ContactRow, enroll_many
from outreach_actors.domain.plans import validate_plan
from outreach_actors.domain.store.models import Enrollment, ScheduledAction

NAMESPACE = "outreach-bench-enroll"
FULL, QUICK = 100_000, 20_000
PLAN = """
name: imported
start: intro
nodes:
  intro:
    type: email
    subject: "Hello {{ contact.first_name }}"
    body: "<p>Hello. {{ unsubscribe_url }}</p>"
    transitions:
      - {on: no_open, after: P3D, to: done}
  done: {type: exit}
"""


def contact_rows(count: int) -> list[ContactRow]:
    return [ContactRow(n, f"contact-{n}@example.com", {"first_name": f"Ada{n}", "company": "Acme"},
                       "Europe/Paris") for n in range(count)]


def copy_per_s(rows: list[ContactRow]) -> float:
    """A plain COPY of the same rows into a scratch table: the database's own floor."""
    connection = _common.models.database_proxy.obj.connection()
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_copy_scratch")
        cursor.execute("CREATE TABLE bench_copy_scratch (email text, fields text, timezone text)")
        buffer = io.StringIO("".join(
            f"{row.email}\t{json.dumps(row.fields)}\t{row.timezone}\n" for row in rows))
        started = time.perf_counter()
        cursor.copy_expert("COPY bench_copy_scratch FROM STDIN", buffer)
        connection.commit()
        elapsed = time.perf_counter() - started
        cursor.execute("DROP TABLE bench_copy_scratch")
        connection.commit()
    return len(rows) / elapsed


def run(quick: bool, database_url: str = _common.DATABASE_URL,
        redis_url: str = _common.REDIS_URL) -> dict[str, dict]:
    count = QUICK if quick else FULL
    _common.ensure_database(database_url)
    _common.install(_common.bench_environment(database_url, redis_url, NAMESPACE))
    database = _common.fresh_schema()
    rows = contact_rows(count)
    try:
        with database.connection_context():
            _common.seed_tenant(validate_plan(PLAN).to_definition())
            started = time.perf_counter()
            result = enroll_many(_common.TENANT, "imported", rows)
            enrolled_per_s = count / (time.perf_counter() - started)
            if result.enrolled != count or result.problems:
                raise RuntimeError(f"{result.enrolled} of {count} enrolled: {result.problems[:3]}")
            if ScheduledAction.select().count() != count or Enrollment.select().count() != count:
                raise RuntimeError("not every enrollment got its first send")
            reference = copy_per_s(rows)
    finally:
        database.close_all()
    return {"enroll_per_s": _common.figure(round(enrolled_per_s), "rows/s", round(reference))}


def main() -> None:
    _common.command_line(run, __doc__, quick_help=f"{QUICK:,} rows, not {FULL:,}")


if __name__ == "__main__":
    main()
