"""SendGrid event normalization: the tables, the dedupe key, and bad input that never raises."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outreach_actors.domain.vocabulary import MalformedBatch
from outreach_actors.providers.sendgrid.events import (
    event_key_for,
    normalize_sendgrid_event,
    parse_sendgrid_batch,
    provider_message_id_for,
)

SAMPLES = Path(__file__).resolve().parent / "samples"
SAMPLE_BODY = (SAMPLES / "sendgrid_events.json").read_bytes()
SAMPLE_EVENTS = json.loads(SAMPLE_BODY)


def sample(event: str, **match) -> dict:
    return next(
        raw for raw in SAMPLE_EVENTS
        if raw["event"] == event and all(raw.get(k) == v for k, v in match.items())
    )


@pytest.mark.parametrize(
    ("provider_event", "expected"),
    [
        ("processed", "queued"), ("deferred", "deferred"), ("delivered", "delivered"),
        ("bounce", "bounced"), ("dropped", "rejected"), ("open", "opened"),
        ("click", "clicked"), ("spamreport", "complained"), ("unsubscribe", "unsubscribed"),
        ("group_unsubscribe", "unsubscribed"), ("group_resubscribe", "subscribed"),
        ("account_status_change", "unknown"),
    ],
)
def test_every_sample_event_type_maps_to_the_vocabulary(provider_event: str, expected: str) -> None:
    event = normalize_sendgrid_event(sample(provider_event))
    assert event.type == expected
    assert event.provider_event == provider_event


def test_sample_batch_parses_into_one_event_per_element_with_our_ids() -> None:
    events, errors = parse_sendgrid_batch(SAMPLE_BODY)
    assert errors == []
    assert len(events) == len(SAMPLE_EVENTS)
    first = events[0]
    assert first.message_id == "MSG-1" and first.tenant == "acme"
    assert first.email == "ada@example.com"
    assert first.occurred_at == datetime(2025, 11, 22, 5, 40, 0)  # 1763790000, naive UTC
    assert first.raw is SAMPLE_EVENTS[0] or first.raw == SAMPLE_EVENTS[0]


def test_bounce_type_bounce_is_hard_and_blocked_is_soft_with_classification() -> None:
    hard = normalize_sendgrid_event(sample("bounce", type="bounce"))
    soft = normalize_sendgrid_event(sample("bounce", type="blocked"))
    assert hard.data["bounce_type"] == "hard"
    assert hard.data["classification"] == "Invalid Address"
    assert hard.data["reason"] == "500 unknown recipient"
    assert soft.data["bounce_type"] == "soft"
    assert soft.data["classification"] == "Technical"


def test_bounce_without_type_is_hard_and_an_unknown_type_is_soft() -> None:
    assert normalize_sendgrid_event({"event": "bounce"}).data["bounce_type"] == "hard"
    unknown_type = normalize_sendgrid_event({"event": "bounce", "type": "new"})
    assert unknown_type.data["bounce_type"] == "soft"


@pytest.mark.parametrize(
    ("reason", "expected"),
    [
        ("Bounced Address", "bounced"), ("Invalid", "invalid"),
        ("Spam Reporting Address", "complained"), ("Unsubscribed Address", "unsubscribed"),
        ("Something new", "other"), (None, "other"),
    ],
)
def test_dropped_keeps_its_reason_and_maps_it(reason, expected: str) -> None:
    event = normalize_sendgrid_event({"event": "dropped", "reason": reason})
    assert event.type == "rejected"
    assert event.data["reject_reason"] == expected
    assert event.data.get("reason") == reason


def test_machine_opens_are_flagged_and_human_opens_are_not() -> None:
    machine = normalize_sendgrid_event(sample("open", sg_machine_open=True))
    human = normalize_sendgrid_event(sample("open", sg_machine_open=False))
    assert machine.data["machine_open"] is True
    assert human.data["machine_open"] is False
    assert normalize_sendgrid_event({"event": "open"}).data["machine_open"] is False


def test_click_keeps_its_url_and_group_events_their_group() -> None:
    assert normalize_sendgrid_event(sample("click")).data["url"] == (
        "https://example.com/pricing?utm_source=outreach"
    )
    assert normalize_sendgrid_event(sample("group_unsubscribe")).data["asm_group_id"] == 42
    assert normalize_sendgrid_event(sample("group_resubscribe")).data["asm_group_id"] == 42
    assert "asm_group_id" not in normalize_sendgrid_event(sample("unsubscribe")).data


def test_unknown_event_is_kept_as_unknown_with_its_name() -> None:
    event = normalize_sendgrid_event(sample("account_status_change"))
    assert event.type == "unknown"
    assert event.provider_event == "account_status_change"
    assert event.data["type"] == "compliance_suspend"
    assert event.message_id is None and event.tenant is None


def test_custom_args_other_than_ours_are_kept_as_metadata() -> None:
    event = normalize_sendgrid_event({**sample("delivered"), "campaign": "spring"})
    assert event.data["metadata"] == {"campaign": "spring"}
    assert "metadata" not in normalize_sendgrid_event(sample("delivered")).data


def test_event_key_is_the_sg_event_id() -> None:
    assert normalize_sendgrid_event(sample("processed")).event_key == "sg:rbtnWrG1DVDGGGFHFyun0A=="


def test_event_key_without_sg_event_id_is_a_stable_hash_of_the_event() -> None:
    raw = sample("unsubscribe")
    assert "sg_event_id" not in raw
    reordered = dict(reversed(list(raw.items())))
    key = event_key_for(raw)
    assert key.startswith("sg-sha256:")
    assert event_key_for(reordered) == key
    assert event_key_for({**raw, "timestamp": raw["timestamp"] + 1}) != key


def test_x_message_id_is_the_sg_message_id_before_filter() -> None:
    assert provider_message_id_for("W86EgYT6SQKk0lRflfLRsA.filterdrecv-p3las1-5bf99c48d.0") == (
        "W86EgYT6SQKk0lRflfLRsA"
    )
    assert provider_message_id_for(sample("processed")["sg_message_id"]) == "14c5d75ce93.dfd.64b469"
    assert provider_message_id_for("plainid") == "plainid"
    assert provider_message_id_for(None) is None


def test_emails_are_lower_cased_and_bad_timestamps_are_none() -> None:
    event = normalize_sendgrid_event({"event": "delivered", "email": " Ada@Example.COM ",
                                      "timestamp": "not a time"})
    assert event.email == "ada@example.com"
    assert event.occurred_at is None
    assert normalize_sendgrid_event({"timestamp": "1763790000"}).occurred_at == datetime(
        2025, 11, 22, 5, 40, 0
    )
    assert normalize_sendgrid_event({"timestamp": 10**30}).occurred_at is None


def test_an_empty_event_is_unknown_and_keyed_by_hash() -> None:
    event = normalize_sendgrid_event({})
    assert event.type == "unknown"
    assert event.event_key.startswith("sg-sha256:")
    assert event.email is None and event.occurred_at is None


def test_elements_that_are_not_objects_are_reported_not_dropped() -> None:
    body = json.dumps([sample("delivered"), "oops", 3, None, [1]]).encode()
    events, errors = parse_sendgrid_batch(body)
    assert [event.type for event in events] == ["delivered"]
    assert errors == [
        "event 1: expected a JSON object, got a string",
        "event 2: expected a JSON object, got a number",
        "event 3: expected a JSON object, got null",
        "event 4: expected a JSON object, got an array",
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[{", "not valid JSON"),
        (b"\xff\xfe[]", "not UTF-8"),
        (b'{"event": "open"}', "JSON dict, not an array"),
        (b"", "not valid JSON"),
    ],
)
def test_a_body_that_is_not_an_array_is_a_clear_error(body: bytes, message: str) -> None:
    with pytest.raises(MalformedBatch, match=message):
        parse_sendgrid_batch(body)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=10,
)
known_keys = st.sampled_from(
    ["event", "email", "timestamp", "sg_event_id", "sg_message_id", "type", "reason",
     "category", "sg_machine_open", "asm_group_id", "outreach_message_id", "outreach_tenant"]
)


@given(st.dictionaries(known_keys | st.text(max_size=8), json_values, max_size=12))
def test_normalization_never_raises_on_any_json_object(raw: dict) -> None:
    event = normalize_sendgrid_event(raw)
    assert event.event_key
    assert event.type in {"queued", "deferred", "delivered", "bounced", "rejected", "opened",
                          "clicked", "complained", "unsubscribed", "subscribed", "unknown"}


@pytest.mark.parametrize(("asm_group_id", "expected"), [
    (42, {"asm_group_id": 42}),
    ("42", {"asm_group_id": 42}),
    (True, {"invalid_asm_group_id": "true"}),
    ({"a": 1}, {"invalid_asm_group_id": '{"a": 1}'}),
    ("9" * 300, {"invalid_asm_group_id": '"' + "9" * 199}),
    ("4\u00002", {"invalid_asm_group_id": '"4\\u00002"'}),
])
def test_a_group_id_is_an_integer_or_kept_aside_as_invalid(asm_group_id, expected) -> None:
    event = normalize_sendgrid_event({"event": "group_unsubscribe", "asm_group_id": asm_group_id})
    groups = {k: v for k, v in event.data.items() if k in {"asm_group_id", "invalid_asm_group_id"}}
    assert groups == expected
