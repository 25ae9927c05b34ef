"""A delivery's events move their enrollments together (one read, one move per event
type), with every effect once and each enrollment's events applied in order."""

from __future__ import annotations

from pathlib import Path

import peewee
import pytest

from outreach_actors.domain import engine, ingest
from outreach_actors.domain.stats import funnel
from outreach_actors.domain.store.copy_insert import COPY_MIN_ROWS
from outreach_actors.domain.store.models import (
    Enrollment,
    MessageEvent,
    NodeVisit,
    OutboundMessage,
    WebhookDelivery,
)
from outreach_actors.domain.suppressions import is_suppressed

from .factories import load_plan, make_tenant, normalize_delivery
from .test_ingest import make_message, reload, store

PLAN = (Path(__file__).parent / "samples" / "plans" / "open_then_goal.yaml").read_text()
T0 = 1_763_790_000
NAMES = ("ada", "bob", "cy", "dee", "eve", "fay", "gus")


@pytest.fixture
def contacts(db) -> dict[str, Enrollment]:
    """Each of NAMES enrolled in the plan, its intro email MSG-<name> sent."""
    make_tenant("acme")
    load_plan(PLAN)
    enrollments = {}
    for name in NAMES:
        enrollments[name] = engine.enroll("acme", f"{name}@example.com", "engaged")
        make_message(f"MSG-{name}", f"{name}@example.com", enrollment=enrollments[name],
                     node="intro")
    return enrollments


def event(name: str, kind: str, at: int, **extra: object) -> dict:
    return {"event": kind, "email": f"{name}@example.com", "timestamp": T0 + at,
            "sg_event_id": f"{name}-{kind}-{at}", "outreach_message_id": f"MSG-{name}",
            "outreach_tenant": "acme", **extra}


def visited(enrollment: Enrollment) -> list[str]:
    return [visit.node for visit in NodeVisit.select().where(NodeVisit.enrollment == enrollment.id)
            .order_by(NodeVisit.version)]


def test_two_events_of_one_enrollment_in_one_batch_apply_in_the_order_they_happened(
        contacts) -> None:
    # Ada opened, then clicked; Bob clicked, then opened (listed the other way round).
    normalize_delivery(store([
        event("ada", "click", 20), event("ada", "open", 10),
        event("bob", "open", 20), event("bob", "click", 10),
        event("cy", "open", 10),
    ]))
    ada, bob, cy = (reload(contacts[name]) for name in ("ada", "bob", "cy"))
    # Ada's open moved her on, then her click converted her there.
    assert (ada.status, visited(ada)) == ("converted", ["intro", "opened"])
    # Bob's click converted him at intro: his later open moved no one.
    assert (bob.status, visited(bob)) == ("converted", ["intro"])
    assert (cy.status, cy.current_node) == ("active", "opened")


def test_a_batch_run_twice_or_delivered_twice_moves_no_one_twice(contacts) -> None:
    batch = [event(name, "open", n) for n, name in enumerate(NAMES)]
    first = store(batch)
    normalize_delivery(first)
    ingest.replay_delivery(first, lambda delivery_id: None)  # back to received
    again = normalize_delivery(first)
    repeated = normalize_delivery(store(batch))  # the same events in another delivery
    assert (again.stored, again.duplicates) == (0, len(NAMES))
    assert (repeated.stored, repeated.duplicates) == (0, len(NAMES))
    for name in NAMES:
        enrollment = reload(contacts[name])
        assert (enrollment.current_node, enrollment.version) == ("opened", 1), name
        assert visited(enrollment) == ["intro", "opened"], name
    assert MessageEvent.select().count() == len(NAMES)


def test_a_batch_mixing_routed_and_unrouted_events_applies_each_once(contacts) -> None:
    make_message("MSG-loose", "hal@example.com")  # messages of no enrollment
    make_message("MSG-news", "fay@example.com")
    result = normalize_delivery(store([
        event("ada", "open", 1),
        event("bob", "delivered", 2),                         # no transition on it
        event("cy", "click", 3),                               # the goal
        event("dee", "bounce", 4, type="bounce"),              # suppresses, then moves
        event("eve", "open", 5, sg_machine_open=True),         # no engagement
        # Fay unsubscribes from another mail of ours: it ends her enrollment too.
        event("fay", "open", 6), {**event("fay", "unsubscribe", 7), "outreach_message_id": "MSG-news"},
        event("gus", "unsubscribe", 8), event("gus", "open", 9),
        {**event("hal", "open", 10), "outreach_message_id": "MSG-loose"},
    ]))
    assert (result.status, result.stored) == ("processed", 10)
    state = {name: reload(contacts[name]) for name in NAMES}
    assert (state["ada"].status, state["ada"].current_node) == ("active", "opened")
    assert (state["bob"].status, state["bob"].current_node) == ("active", "intro")
    assert state["cy"].status == "converted"
    assert (state["dee"].status, state["dee"].current_node) == ("completed", "stop")
    assert is_suppressed("acme", "dee@example.com")
    assert (state["eve"].status, state["eve"].current_node) == ("active", "intro")
    # Fay's open moved her before her unsubscribe ended her; Gus was gone before his open.
    assert (state["fay"].exit_reason, visited(state["fay"])) == ("unsubscribed", ["intro", "opened"])
    assert (state["gus"].exit_reason, visited(state["gus"])) == ("unsubscribed", ["intro"])
    assert MessageEvent.select().where(MessageEvent.message == "MSG-loose").count() == 1


def test_an_enrollment_another_writer_moved_mid_batch_is_decided_again_and_the_others_move(
        contacts, monkeypatch) -> None:
    move_on_event = engine.move_on_event
    raced = []

    def racing(group, *args, **kwargs):
        if not raced:  # another writer changes Bob between the batch's read and its move
            raced.append(Enrollment.update(version=Enrollment.version + 1)
                         .where(Enrollment.id == contacts["bob"].id).execute())
        return move_on_event(group, *args, **kwargs)

    monkeypatch.setattr(engine, "move_on_event", racing)
    normalize_delivery(store([event(name, "open", n) for n, name in enumerate(("ada", "bob", "cy"))]))
    assert raced == [1]
    for name in ("ada", "bob", "cy"):
        assert visited(reload(contacts[name])) == ["intro", "opened"], name
    # Bob lost the version check once, was read again and moved on the next attempt.
    assert reload(contacts["bob"]).version == 2


def test_a_batch_whose_move_fails_keeps_every_event_for_its_retry(contacts, monkeypatch) -> None:
    move_on_event = engine.move_on_event
    failures = []

    def failing(group, *args, **kwargs):
        if not failures:
            failures.append(len(group))
            raise peewee.OperationalError("deadlock detected")
        return move_on_event(group, *args, **kwargs)

    monkeypatch.setattr(engine, "move_on_event", failing)
    delivery = store([event(name, "open", n) for n, name in enumerate(NAMES)])
    with pytest.raises(peewee.OperationalError):
        normalize_delivery(delivery)
    # Nothing of the batch was kept but the delivery itself, which the retry runs again.
    assert failures == [len(NAMES)]
    assert MessageEvent.select().count() == 0
    assert WebhookDelivery.get_by_id(delivery).status == "received"
    assert all(reload(contacts[name]).current_node == "intro" for name in NAMES)
    result = normalize_delivery(delivery)
    assert (result.status, result.stored) == ("processed", len(NAMES))
    for name in NAMES:
        assert visited(reload(contacts[name])) == ["intro", "opened"], name


def test_an_ambiguous_send_in_a_batch_is_resolved_and_its_contact_moves(contacts) -> None:
    OutboundMessage.update(status=OutboundMessage.AMBIGUOUS).where(
        OutboundMessage.id == "MSG-ada").execute()
    normalize_delivery(store([event("ada", "open", 1), event("bob", "open", 2)]))
    assert OutboundMessage.get_by_id("MSG-ada").status == "sent"
    assert reload(contacts["ada"]).current_node == "opened"
    assert reload(contacts["bob"]).current_node == "opened"


def test_a_delivery_of_sendgrid_size_stores_each_event_once_and_moves_each_contact_once(
        contacts) -> None:
    # SendGrid posts up to thousands of events at once: more than COPY_MIN_ROWS go
    # through COPY on PostgreSQL, with the same conflicts and keys returned.
    batch = [event(name, "deferred", n, response="421 try later", attempt=str(n))
             for name in NAMES for n in range(1, 81)]
    batch += [event(name, "open", 100) for name in NAMES]
    batch.append(batch[0])  # an event twice in one delivery
    assert len(batch) > COPY_MIN_ROWS
    first = normalize_delivery(store(batch))
    again = normalize_delivery(store(batch))  # the same batch delivered twice
    assert (first.status, first.stored, first.duplicates) == ("processed", len(batch) - 1, 1)
    assert (again.stored, again.duplicates) == (0, len(batch))
    assert MessageEvent.select().count() == len(batch) - 1
    for name in NAMES:
        assert visited(reload(contacts[name])) == ["intro", "opened"], name
        deferrals = MessageEvent.select().where(MessageEvent.message == f"MSG-{name}",
                                                MessageEvent.type == "deferred")
        assert sorted(row.data["attempt"] for row in deferrals) == sorted(
            str(n) for n in range(1, 81))
    [intro] = [row for row in funnel() if row["node"] == "intro"]
    assert intro["opened"] == len(NAMES)  # each email's opens count once
