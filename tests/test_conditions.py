"""Conditions: compiled and checked at validation, bounded and never raising at run time."""

from __future__ import annotations

import time

import pytest

from outreach_actors.domain.conditions import ConditionError, compile_condition, evaluate


@pytest.mark.parametrize(("source", "event", "contact", "expected"), [
    ("event.amount >= 100", {"amount": 120}, {}, True),
    ("event.amount >= 100", {"amount": 99.5}, {}, False),
    ("contact.tier == 'enterprise' and event.seats > 10", {"seats": 11}, {"tier": "enterprise"}, True),
    ("contact.tier == 'enterprise'", {}, {}, False),  # a missing field equals nothing
    ("event.plan in ['pro', 'team']", {"plan": "team"}, {}, True),
    ("'vip' in contact.tags", {}, {"tags": ["vip", "beta"]}, True),
    ("event.coupon is defined", {"coupon": "X"}, {}, True),
    ("(event.amount | default(0)) > 5", {}, {}, False),
    ("contact.email.endswith('@acme.test')", {}, {"email": "ada@acme.test"}, True),
    ("event.name | lower == 'ada'", {"name": "ADA"}, {}, True),
    ("event.__class__ is defined", {}, {}, False),  # private attributes do not exist
])
def test_a_condition_reads_the_event_and_the_contact(source, event, contact, expected) -> None:
    assert evaluate(compile_condition(source, "if"), event=event, contact=contact) is expected


@pytest.mark.parametrize(("source", "problem"), [
    ("", "empty"),
    ("event.amount >=", "unexpected"),
    ("amount > 3", "unknown name 'amount'"),
    ("range(10) | length > 3", "unknown name 'range'"),
    ("event | nofilter", "No filter named 'nofilter'"),
    ("event.x }}{{ event.y", "unexpected '}}'"),
    ("x" * 501, "limit is 500"),
    (42, "a condition is text"),
    ("(" * 400 + ")" * 400, ""),
])
def test_a_bad_condition_is_refused_at_validation_with_its_path(source, problem) -> None:
    with pytest.raises(ConditionError, match=f"^goals\\[0\\]\\.if: .*{problem}"):
        compile_condition(source, "goals[0].if")


@pytest.mark.parametrize("source", [
    "'x' * 10 ** 10", "2 ** 100000 > 0", "('%*s' | format(10 ** 9, 'x')) | length > 0",
    "event.amount >= 100", "event.text * 1000000 > ''",
])
def test_a_run_time_failure_or_a_bomb_is_reported_and_false(source) -> None:
    reports: list[str] = []
    started = time.monotonic()
    result = evaluate(compile_condition(source, "if"), event={"text": "y" * 10_000},
                      contact={}, report=reports.append)
    assert result is False and len(reports) == 1 and reports[0].startswith("if: ")
    assert time.monotonic() - started < 1


def test_compiling_runs_nothing() -> None:
    # Jinja folds constants at compile time; the sandbox's operators are not folded.
    started = time.monotonic()
    compile_condition("'x' * 10 ** 10 == ''", "if")
    assert time.monotonic() - started < 1
