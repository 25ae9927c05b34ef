"""Plan validation: every fault reported at once, each with its path."""

from __future__ import annotations

import json
from datetime import time, timedelta
from time import monotonic

import isodate
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from outreach_actors.domain.plans import (
    MAX_AFTER,
    MAX_PLAN_BYTES,
    PlanError,
    plan_from_definition,
    validate_plan,
)

VALID = """
name: onboarding
start: intro
send_window: {days: [mon, tue, wed, thu, fri], start: "09:00", end: "17:00"}
nodes:
  intro:
    type: email
    subject: "Welcome, {{ contact.first_name }}"
    body: "<p>Hello</p>"
    transitions:
      - {on: click, to: thanks}
      - {on: no_open, after: PT72H, to: bump}
      - {on: bounce, to: stop}
  bump:
    type: email
    subject: "Did you see this?"
    body: "<p>Hi</p>"
    transitions:
      - {on: no_click, after: PT24H, to: pause}
  pause:
    type: wait
    transitions:
      - {on: elapsed, after: P2D, to: stop}
  thanks: {type: exit}
  stop: {type: exit}
"""


def errors_of(text: str, **kwargs) -> list[str]:
    with pytest.raises(PlanError) as info:
        validate_plan(text, **kwargs)
    return info.value.errors


def test_valid_yaml_plan_is_accepted_with_normalized_events() -> None:
    plan = validate_plan(VALID)
    assert plan.start == "intro"
    assert [t.on for t in plan.nodes["intro"].transitions] == ["clicked", "no_open", "bounced"]
    assert plan.transition_for("intro", "clicked").to == "thanks"
    assert plan.nodes["intro"].transitions[1].after.total_seconds() == 72 * 3600


def test_the_same_plan_as_json_is_accepted() -> None:
    import yaml

    data = yaml.safe_load(VALID.replace("{on:", "{'on':").replace(" on:", " 'on':"))
    as_json = json.dumps(data)
    assert validate_plan(as_json).name == "onboarding"


def test_an_omitted_after_on_no_open_is_allowed_and_uses_the_default() -> None:
    plan = validate_plan(VALID.replace("{on: no_open, after: PT72H, to: bump}", "{on: no_open, to: bump}"))
    assert plan.nodes["intro"].transitions[1].after is None


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("type: wait", "type: rocket"), "nodes.pause.type: Input should be 'email', 'wait', 'exit', 'split' or 'branch'"),
        (("start: intro", "start: nowhere"), "start: node 'nowhere' does not exist"),
        (("to: thanks}", "to: thank_you}"), "nodes.intro.transitions[0].to: node 'thank_you' does not exist"),
        (("{on: bounce,", "{on: exploded,"), "nodes.intro.transitions[2].on: unknown event 'exploded'"),
        (("after: PT72H", "after: soon"), "nodes.intro.transitions[1].after: 'soon' is not an ISO-8601 duration"),
        (("after: PT72H", "after: -PT1H"), "nodes.intro.transitions[1].after: '-PT1H' is negative"),
        (("after: PT72H", "after: PT0S"), "nodes.intro.transitions[1].after: must be longer than zero"),
        (("{on: click, to: thanks}", "{on: click, after: PT1H, to: thanks}"),
         "nodes.intro.transitions[0].after: only timeout events"),
        (("      - {on: elapsed, after: P2D, to: stop}", "      - {on: elapsed, to: stop}"),
         "nodes.pause.transitions[0].after: `elapsed` needs a duration"),
        (("      - {on: elapsed, after: P2D, to: stop}", "      - {on: no_open, after: P2D, to: stop}"),
         "nodes.pause.transitions[0].on: a wait node sends no email"),
        (("      - {on: no_click, after: PT24H, to: pause}", "      - {on: no_click, after: PT24H, to: stop}"),
         "nodes.pause: unreachable from start 'intro'"),
        (("    transitions:\n      - {on: elapsed, after: P2D, to: stop}", "    transitions: []"),
         "nodes.pause.transitions: a wait node needs a way out"),
        (('subject: "Did you see this?"', 'subject: ""'), "nodes.bump.subject: an email node needs a subject"),
        (('body: "<p>Hi</p>"', 'template: bump.html.j2\n    body: "<p>Hi</p>"'),
         "nodes.bump: give exactly one of `template` or `body`"),
        (("days: [mon, tue", "days: [monday, funday, tue"), "send_window.days: unknown weekday(s) ['funday']"),
        (('end: "17:00"', 'end: "08:00"'), "send_window.end: must be later than start"),
        (("stop: {type: exit}", "stop: {type: exit, colour: red}"), "nodes.stop.colour: Extra inputs are not permitted"),
        (("    type: email\n    subject: \"Did", "    type: email\n    categories: [\"a\\r\\nb\"]\n    subject: \"Did"),
         "nodes.bump.categories: category 'a\\r\\nb' must be 1 to 255 printable characters"),
        (("start: intro\n", "start: intro\ncategories: [a, b, c, d, e, f, g, h, i, j, k]\n"),
         "categories: SendGrid takes at most 10 categories per email"),
        (("after: P2D", "after: P3651D"), "nodes.pause.transitions[0].after: 'P3651D' is longer than 3650 days"),
        (("name: onboarding", 'name: "on\\tboarding"'),
         "name: name 'on\\tboarding' must be 1 to 128 printable characters"),
        (("  thanks: {type: exit}", "  thanks: {type: exit}\n  " + "n" * 129 + ": {type: exit}"),
         "nodes." + "n" * 129 + ".[key]: name 'nnnnnnnnnnnn"),
        (("after: P2D, to: stop}", "after: P2D, to: pause}"),
         "nodes.pause.transitions: no path from here reaches an exit node"),
        (("days: [mon, tue", "days: [mondays, tue"), "send_window.days: unknown weekday(s) ['mondays']"),
        (("start: intro\n", 'start: intro\nsender: "sales@acme.com\\r\\nBcc: x@evil.com"\n'),
         "sender: 'sales@acme.c"),
        (("start: intro\n", "start: intro\nsender: sales\n"), "sender: 'sales' is not an email address"),
        (('start: "09:00"', "start: 9"), 'send_window.start: expected a time of day such as "09:00"'),
        (("name: onboarding", 'name: " onboarding "'), "name: name ' onboarding ' starts or ends with a space"),
        (('body: "<p>Hi</p>"', 'body: "  "'), "nodes.bump.body: is empty; an email needs a body"),
        (('end: "17:00"', 'end: "17:00+02:00"'),
         "send_window.end: expected a time of day such as \"09:00\" or \"17:30\" (no offset: the "
         "contact's time zone applies), got '17:00+02:00'"),
        (('end: "17:00"', "end: 24:00"), 'send_window.end: a day ends at "23:59:59", not "24:00"'),
        (('start: "09:00"', "start: 9:5"), "send_window.start: expected a time of day"),
    ],
)
def test_each_fault_is_reported_with_its_path(change: tuple[str, str], expected: str) -> None:
    old, new = change
    assert old in VALID
    errors = errors_of(VALID.replace(old, new))
    assert any(error.startswith(expected) for error in errors), errors


@pytest.mark.parametrize(
    ("written", "read"),
    [
        ('start: "09:00", end: "17:00"', (time(9), time(17))),
        # Unquoted, YAML 1.1 reads these as base-60 numbers (17:00 is 1020) and the plan
        # was refused with a message about offsets.
        ("start: 09:00, end: 17:00", (time(9), time(17))),
        ("start: 9:30, end: 17:45:30", (time(9, 30), time(17, 45, 30))),
        ('start: "8:00", end: "8:01"', (time(8), time(8, 1))),
    ],
)
def test_send_window_times_are_read_as_people_write_them(written: str, read: tuple[time, time]) -> None:
    plan = validate_plan(VALID.replace('start: "09:00", end: "17:00"', written))
    assert (plan.send_window.start, plan.send_window.end) == read
    assert plan_from_definition(plan.to_definition()).send_window == plan.send_window


def test_an_email_carries_the_plan_and_node_categories_each_once() -> None:
    text = (VALID.replace("start: intro\n", "start: intro\ncategories: [onboarding, a, b, c, d, e]\n")
            .replace('    subject: "Did', "    categories: [onboarding, e, f, g, h, i]\n    subject: \"Did"))
    plan = validate_plan(text)  # ten distinct categories: within SendGrid's limit
    assert plan.categories_of("bump") == ["onboarding", "a", "b", "c", "d", "e", "f", "g", "h", "i"]
    assert plan.categories_of("intro") == ["onboarding", "a", "b", "c", "d", "e"]


def test_the_plan_and_node_categories_together_must_fit_sendgrid() -> None:
    text = (VALID.replace("start: intro\n", "start: intro\ncategories: [a, b, c, d, e, f]\n")
            .replace('    subject: "Did', "    categories: [a, g, h, i, j, k]\n    subject: \"Did"))
    assert errors_of(text) == ["nodes.bump.categories: with the plan's, its emails would carry 11 "
                               "categories; SendGrid takes at most 10"]


@pytest.mark.parametrize(("change", "hint"), [
    (('subject: "Did you see this?"', "subject: Re: did you see this?"), 'a value holding ": "'),
    (('subject: "Welcome, {{ contact.first_name }}"', "subject: {{ contact.first_name }}, welcome"),
     "a value that starts with {{, [ or {"),
    (("    type: wait", "\ttype: wait"), "indent with spaces, not tabs"),
    (('subject: "Did you see this?"', "subject: @you"), "a value that starts with @"),
])
def test_yaml_mistakes_people_make_get_a_hint(change: tuple[str, str], hint: str) -> None:
    old, new = change
    assert old in VALID
    [error] = errors_of(VALID.replace(old, new))
    assert error.startswith("plan: not valid YAML or JSON") and f"hint: {hint}" in error


def test_colon_separated_digits_stay_text_in_a_plan() -> None:
    plan = validate_plan(VALID.replace('subject: "Did you see this?"', "subject: 10:30"))
    assert plan.node("bump").subject == "10:30"


def test_all_errors_are_reported_at_once() -> None:
    broken = (
        VALID.replace("to: thanks}", "to: thank_you}")
        .replace("after: PT72H", "after: soon")
        .replace("type: wait", "type: rocket")
        .replace("start: intro", "start: intro")
    )
    errors = errors_of(broken)
    assert len(errors) >= 3
    assert any("thank_you" in e for e in errors)
    assert any("soon" in e for e in errors)
    assert any("rocket" in e for e in errors)


def test_malformed_documents_are_clear_errors() -> None:
    assert errors_of("name: [unclosed")[0].startswith("plan: not valid YAML or JSON")
    assert errors_of("- just\n- a list")[0].startswith("plan: a plan must be a mapping")
    assert "nodes: Field required" in errors_of("name: x\nstart: a\n")


def test_absurd_sizes_are_refused() -> None:
    nodes = {f"n{i}": {"type": "exit"} for i in range(10_000)}
    errors = errors_of(json.dumps({"name": "big", "start": "n0", "nodes": nodes}))
    assert errors == ["nodes: 10,000 nodes; a plan may have at most 500"]
    assert "limit is 1,000,000" in errors_of("x" * 2_000_000)[0]


def test_template_checker_problems_carry_the_node_path() -> None:
    def checker(*, subject, template, body):
        return ["unexpected '}'"] if "Hi" in (body or "") else []

    assert errors_of(VALID, check_template=checker) == ["nodes.bump.body: unexpected '}'"]


@settings(max_examples=200)
@given(st.timedeltas(min_value=timedelta(seconds=1), max_value=MAX_AFTER))
def test_a_stored_plan_reads_back_as_the_same_plan(after: timedelta) -> None:
    # Stored plans are read back: 365 days and more once came back as "P1Y", refused.
    plan = validate_plan(VALID.replace("after: P2D", f"after: {isodate.duration_isoformat(after)}"))
    assert plan.nodes["pause"].transitions[0].after == after
    assert validate_plan(json.loads(json.dumps(plan.to_definition()))) == plan


def test_the_plan_sender_is_kept_lower_case() -> None:
    plan = validate_plan(VALID.replace("start: intro\n", "start: intro\nsender: Sales@Acme.com\n"))
    assert plan.sender == "sales@acme.com"


def test_a_stored_plan_is_read_back_without_checks_added_since_it_was_loaded() -> None:
    # Loaded by an earlier version: a long node name, a bare sender, an `after` over the
    # limit, and a wait node that loops on itself. Refusing it now would stop every
    # contact already in it; loading it anew is refused.
    long_name = "n" * 200
    stored = {"name": "old", "start": "a", "sender": "Sales", "nodes": {
        "a": {"type": "wait", "transitions": [{"on": "elapsed", "after": "P4000D", "to": long_name}]},
        long_name: {"type": "wait", "transitions": [{"on": "elapsed", "after": "P1D", "to": long_name}]},
    }}
    assert len(errors_of(json.dumps(stored))) == 5  # name, sender, after, and no exit from either node
    plan = plan_from_definition(stored)
    assert plan.sender == "sales" and plan.nodes["a"].transitions[0].after == timedelta(days=4000)
    # What the engine needs is still checked.
    stored["nodes"]["a"]["transitions"][0]["on"] = "exploded"
    with pytest.raises(PlanError, match="unknown event 'exploded'"):
        plan_from_definition(stored)


def test_a_plan_near_the_size_limit_with_30000_transitions_is_judged_within_seconds() -> None:
    # One node's transitions repeat four events 7,500 times each (the duplicate check
    # once counted each event against the whole list), written as JSON near 1 MB.
    events = ["click", "open", "bounce", "delivered"]
    transitions = [{"on": events[i % len(events)], "to": "stop"} for i in range(30_000)]
    text = json.dumps({"name": "big", "start": "intro", "nodes": {
        "intro": {"type": "email", "subject": "Hi", "body": "<p>Hi</p>", "transitions": transitions},
        "stop": {"type": "exit"}}})
    assert 900_000 < len(text) <= MAX_PLAN_BYTES
    started = monotonic()

    with pytest.raises(PlanError) as refused:
        validate_plan(text)

    assert monotonic() - started < 3  # a generous bound: it takes well under a second
    assert refused.value.errors == [
        f"nodes.intro.transitions: event {event!r} appears more than once"
        for event in ["bounced", "clicked", "delivered", "opened"]]
