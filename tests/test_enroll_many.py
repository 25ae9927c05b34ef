"""Bulk enrollment: the checks and rows of one enroll each, set-based statements per
batch, every refusal reported by its row, and a re-run enrolling no one twice."""

from __future__ import annotations

import pytest

from outreach_actors.domain import engine
from outreach_actors.domain.engine import EnrollmentError
from outreach_actors.domain.enroll_many import ContactRow, enroll_many
from outreach_actors.domain.store.copy_insert import COPY_MIN_ROWS
from outreach_actors.domain.store.models import Contact, Enrollment, NodeVisit, ScheduledAction

from .conftest import counting
from .factories import THREE_NODE_PLAN, load_plan, make_tenant

REENTRY_PLAN = THREE_NODE_PLAN.replace("name: onboarding", "name: again\nallow_reentry: true")


@pytest.fixture
def acme(db) -> None:
    make_tenant()
    load_plan()


def rows(end: int, start: int = 0) -> list[ContactRow]:
    return [ContactRow(n, f"c{n}@example.com", {"first_name": f"C{n}"}) for n in range(start, end)]


def rows_of(model, *columns) -> list[tuple]:
    return sorted(model.select(*columns).tuples())


def test_each_row_gets_the_rows_one_enroll_writes(acme) -> None:
    engine.enroll("acme", "single@example.com", "onboarding", fields={"first_name": "S"})
    result = enroll_many("acme", "onboarding", [ContactRow(1, "Bulk@Example.com", {"a": "1"},
                                                            "Europe/Paris")])
    assert result.enrolled == 1 and result.problems == []
    single, bulk = (Enrollment.get(Enrollment.contact == Contact.get(email=email))
                    for email in ("single@example.com", "bulk@example.com"))
    for enrollment in (single, bulk):
        assert (enrollment.status, enrollment.current_node, enrollment.version) == (
            "active", "intro", 0)
        assert [(v.node, v.version) for v in enrollment.visits] == [("intro", 0)]
        actions = ScheduledAction.select().where(ScheduledAction.enrollment == enrollment)
        assert [(a.kind, a.node, a.status) for a in actions] == [("send", "intro", "pending")]
    assert ScheduledAction.get(ScheduledAction.enrollment == bulk).dedupe_key == (
        f"send:{bulk.id}:intro:-:0")
    assert bulk.enrollment_key == f"acme:onboarding:{bulk.contact_id}"
    assert (Contact.get(email="bulk@example.com").fields, bulk.contact.timezone) == (
        {"a": "1"}, "Europe/Paris")


def test_bad_rows_are_reported_by_their_key_with_the_reason_enroll_gives(acme) -> None:
    given = [ContactRow(2, "ada@example.com"), ContactRow(3, "not an address"),
             ContactRow(4, "bob@example.com", timezone="Mars/Olympus"),
             ContactRow(5, "ADA@example.com"), ContactRow(6, "cy@example.com", {"x": object()})]
    result = enroll_many("acme", "onboarding", given)
    assert result.enrolled == 1
    assert [key for key, _ in result.problems] == [3, 4, 5, 6]
    for key, reason in result.problems:
        row = given[key - 2]
        with pytest.raises(EnrollmentError) as refused:
            engine.enroll("acme", row.email, "onboarding", fields=row.fields,
                          timezone=row.timezone)
        assert reason == str(refused.value)


def test_the_same_list_enrolled_twice_enrolls_each_contact_once(acme) -> None:
    assert enroll_many("acme", "onboarding", rows(30), batch_size=7).enrolled == 30
    again = enroll_many("acme", "onboarding", rows(30), batch_size=7)
    assert again.enrolled == 0
    assert [key for key, _ in again.problems] == list(range(30))
    assert all("already enrolled" in reason for _, reason in again.problems)
    assert Enrollment.select().count() == 30
    assert ScheduledAction.select().count() == 30 and NodeVisit.select().count() == 30


def test_a_list_written_through_copy_is_enrolled_once_and_its_rerun_refused(acme) -> None:
    # Batches of COPY_MIN_ROWS and more go through COPY on PostgreSQL.
    count = COPY_MIN_ROWS + 50
    assert enroll_many("acme", "onboarding", rows(count), batch_size=count).enrolled == count
    again = enroll_many("acme", "onboarding", rows(count + 1), batch_size=count + 1)
    assert again.enrolled == 1 and [key for key, _ in again.problems] == list(range(count))
    assert rows_of(ScheduledAction, ScheduledAction.enrollment) == rows_of(
        Enrollment, Enrollment.id) == rows_of(NodeVisit, NodeVisit.enrollment)
    assert Contact.get(email="c7@example.com").fields == {"first_name": "C7"}


def test_a_run_cut_short_and_run_again_enrolls_everyone_once(acme) -> None:
    def cut_after(limit: int):
        for row in rows(25):
            if row.key == limit:
                raise RuntimeError("the process was killed")
            yield row

    with pytest.raises(RuntimeError):
        enroll_many("acme", "onboarding", cut_after(17), batch_size=5)
    assert Enrollment.select().count() == 15  # three whole batches committed
    result = enroll_many("acme", "onboarding", rows(25), batch_size=5)
    assert result.enrolled == 10 and len(result.problems) == 15
    assert Enrollment.select().count() == 25
    assert rows_of(ScheduledAction, ScheduledAction.enrollment) == rows_of(
        Enrollment, Enrollment.id)


def test_a_plan_that_allows_reentry_keys_a_list_by_its_import_key(db) -> None:
    make_tenant()
    load_plan(REENTRY_PLAN)
    with pytest.raises(EnrollmentError, match="import_key"):
        enroll_many("acme", "again", rows(3))
    assert enroll_many("acme", "again", rows(3), import_key="file-1").enrolled == 3
    assert enroll_many("acme", "again", rows(3), import_key="file-1").enrolled == 0
    assert enroll_many("acme", "again", rows(3), import_key="file-2").enrolled == 3
    assert Enrollment.select().count() == 6 and Contact.select().count() == 3


def test_fields_of_known_contacts_are_merged_as_enroll_merges_them(acme) -> None:
    engine.upsert_contact("acme", "ada@example.com", {"first_name": "Ada", "tier": "gold"},
                          "Europe/London")
    enroll_many("acme", "onboarding", [ContactRow(1, "ada@example.com", {"tier": "silver"})])
    contact = Contact.get(email="ada@example.com")
    assert (contact.fields, contact.timezone) == ({"first_name": "Ada", "tier": "silver"},
                                                  "Europe/London")


def test_a_batch_costs_the_same_statements_whatever_its_size(acme) -> None:
    enroll_many("acme", "onboarding", rows(2))  # warms the plan cache
    with counting() as small:
        enroll_many("acme", "onboarding", rows(105, start=100))
    with counting() as large:
        enroll_many("acme", "onboarding", rows(500, start=200))
    assert large.kinds == small.kinds
    assert len(large.sql) <= 12


def test_an_unknown_plan_or_tenant_is_refused_before_any_row(acme) -> None:
    with pytest.raises(EnrollmentError, match="no plan named"):
        enroll_many("acme", "nope", rows(2))
    with pytest.raises(EnrollmentError, match="unknown tenant"):
        enroll_many("zed", "onboarding", rows(2))
    assert Enrollment.select().count() == 0


def test_the_readme_example_runs_as_written(acme) -> None:
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    example, = [block for block in re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
                if "enroll_many(" in block]
    exec(compile(example, "README.md", "exec"), {})
    assert Enrollment.select().count() == 1
