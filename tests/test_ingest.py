"""Normalizing stored deliveries: dedupe, tenants, suppressions, the engine, retries, the actor."""

from __future__ import annotations

import json
import logging
from datetime import datetime, timedelta

import dramatiq
import pytest

from outreach_actors.domain import engagement, engine, ingest
from outreach_actors.domain.store import models
from outreach_actors.domain.store.models import (
    Enrollment,
    MessageEvent,
    OutboundMessage,
    Suppression,
    WebhookDelivery,
)
from outreach_actors.domain.suppressions import is_suppressed
from outreach_actors.settings import configure
from outreach_actors.worker.actors.webhooks import (
    WEBHOOK_MAX_RETRIES,
    enqueue_delivery,
    normalize_webhook,
)
from outreach_actors.worker.runtime import rebind_actors

from .conftest import make_settings
from .factories import load_plan, make_tenant, normalize_delivery
from .test_events import SAMPLE_BODY, SAMPLE_EVENTS

ORDER_PLAN = """
name: order
start: intro
nodes:
  intro:
    type: email
    subject: "Hi"
    body: "<p>Hi</p>"
    transitions:
      - {on: click, to: clicked_first}
      - {on: open, to: opened_first}
  clicked_first: {type: exit}
  opened_first: {type: exit}
"""


def make_message(message_id: str, email: str, *, tenant: str = "acme",
                 enrollment: Enrollment | None = None, node: str | None = None,
                 provider_message_id: str | None = None) -> OutboundMessage:
    return OutboundMessage.create(
        id=message_id, tenant=tenant, enrollment=enrollment, node=node,
        dedupe_key=f"test:{message_id}", status=OutboundMessage.SENT, to_email=email,
        from_email="sales@acme.test", subject="s", html="<p>h</p>", text="h",
        provider_message_id=provider_message_id,
    )


def sample_world() -> dict[str, Enrollment]:
    """Tenant acme, every sample recipient enrolled in onboarding, MSG-n sent at intro."""
    make_tenant("acme")
    load_plan()
    enrollments = {}
    for raw in SAMPLE_EVENTS:
        message_id = raw.get("outreach_message_id")
        if message_id and not OutboundMessage.get_or_none(OutboundMessage.id == message_id):
            enrollment = engine.enroll("acme", raw["email"], "onboarding")
            make_message(message_id, raw["email"], enrollment=enrollment, node="intro")
            enrollments[raw["email"]] = enrollment
    return enrollments


def store(body: bytes | list) -> int:
    if isinstance(body, list):
        body = json.dumps(body).encode()
    return WebhookDelivery.create(body=body, headers={}).id


def reload(enrollment: Enrollment) -> Enrollment:
    return Enrollment.get_by_id(enrollment.id)


def test_sample_delivery_stores_every_event_once_with_its_message(db) -> None:
    sample_world()
    result = normalize_delivery(store(SAMPLE_BODY))
    assert (result.status, result.stored, result.duplicates, result.errors) == (
        "processed", len(SAMPLE_EVENTS), 0, []
    )
    types = [e.type for e in MessageEvent.select().where(MessageEvent.message == "MSG-1")
             .order_by(MessageEvent.occurred_at)]
    assert types == ["queued", "deferred", "delivered", "opened", "clicked"]
    unknown = MessageEvent.get(MessageEvent.type == "unknown")
    assert unknown.message_id is None and unknown.provider_event == "account_status_change"
    assert WebhookDelivery.get().status == "processed"


def test_sample_delivery_suppresses_and_moves_contacts(db) -> None:
    enrollments = sample_world()
    normalize_delivery(store(SAMPLE_BODY))
    reasons = {s.value: (s.reason, s.channel) for s in Suppression.select()}
    assert reasons == {
        "bob@example.org": ("bounced", "email"),          # hard bounce
        "dee@example.com": ("rejected:bounced", "email"),  # dropped: Bounced Address
        "eve@example.com": ("complained", "email"),        # spamreport
        "fay@example.com": ("unsubscribed", "email"),      # unsubscribe without sg_event_id
    }  # cy's single soft bounce is under the limit; gus resubscribed to group 42
    assert Suppression.get(Suppression.value == "bob@example.org").source == (
        "sg:6g4ZI7SA-xmRDv57GoPIPw=="
    )
    assert reload(enrollments["ada@example.com"]).current_node == "thanks"  # click
    assert reload(enrollments["bob@example.org"]).current_node == "stop"    # bounce
    assert reload(enrollments["cy@example.net"]).current_node == "stop"     # blocked = bounce
    for email, reason in [("eve@example.com", "complained"), ("fay@example.com", "unsubscribed")]:
        enrollment = reload(enrollments[email])
        assert (enrollment.status, enrollment.exit_reason) == ("exited", reason)
    # gus only left group 42, and came back: still active.
    assert reload(enrollments["gus@example.com"]).status == "active"
    # hal's open was a machine open, which does not count as engagement by default.
    assert reload(enrollments["hal@example.com"]).current_node == "intro"


def test_a_click_on_our_unsubscribe_link_is_kept_but_is_no_engagement(db) -> None:
    from outreach_actors.domain.unsubscribe import unsubscribe_url
    from outreach_actors.settings import get_settings

    make_tenant("acme")
    load_plan(ORDER_PLAN)
    ada = engine.enroll("acme", "ada@example.com", "order")
    make_message("MSG-1", "ada@example.com", enrollment=ada, node="intro")
    click = next(e for e in SAMPLE_EVENTS if e["event"] == "click")
    # SendGrid's click tracking rewrites our link in the HTML like any other.
    link = unsubscribe_url(get_settings(), "acme", "ada@example.com", "MSG-1")
    normalize_delivery(store([{**click, "url": link}]))
    stored = MessageEvent.get(MessageEvent.message == "MSG-1")
    assert (stored.type, stored.data["url"], stored.data["unsubscribe_link"]) == ("clicked", link, True)
    assert reload(ada).current_node == "intro"  # not moved on `click`
    assert not engagement.engaged_timers([("MSG-1", "no_click")])  # its no_click timer still fires
    # A click on any other link of the email is engagement.
    normalize_delivery(store([{**click, "sg_event_id": "other-link"}]))
    assert reload(ada).current_node == "clicked_first"
    assert engagement.engaged_timers([("MSG-1", "no_click")]) == {("MSG-1", "no_click")}


@pytest.mark.parametrize(("reason", "suppressed_for"), [
    ("Bounced Address", "rejected:bounced"),
    ("Invalid", "rejected:invalid"),
    ("Spam Reporting Address", "rejected:complained"),
    ("Unsubscribed Address", "rejected:unsubscribed"),
    ("Recipient List over Package Quota", None),
])
def test_drops_of_addresses_sendgrid_will_not_mail_suppress_them(db, reason, suppressed_for) -> None:
    make_tenant("acme")
    load_plan(ORDER_PLAN)
    make_message("MSG-1", "ada@example.com", enrollment=engine.enroll("acme", "ada@example.com", "order"),
                 node="intro")
    normalize_delivery(store([{
        "email": "ada@example.com", "timestamp": 1763790180, "event": "dropped", "reason": reason,
        "sg_event_id": "drop-1", "outreach_message_id": "MSG-1", "outreach_tenant": "acme"}]))
    assert [s.reason for s in Suppression.select()] == ([suppressed_for] if suppressed_for else [])


def test_a_processed_delivery_is_not_processed_again(db) -> None:
    sample_world()
    delivery_id = store(SAMPLE_BODY)
    normalize_delivery(delivery_id)
    assert normalize_delivery(delivery_id).stored == 0
    assert WebhookDelivery.get_by_id(delivery_id).attempts == 1


def test_a_delivery_that_is_gone_is_reported_missing(db) -> None:
    assert normalize_delivery(404).status == "missing"


def test_duplicates_within_one_batch_are_stored_once(db) -> None:
    sample_world()
    click = next(e for e in SAMPLE_EVENTS if e["event"] == "click")
    result = normalize_delivery(store([click, click, dict(reversed(click.items()))]))
    assert (result.stored, result.duplicates) == (1, 2)


def test_events_without_sg_event_id_dedupe_on_their_hash(db) -> None:
    sample_world()
    unsubscribe = next(e for e in SAMPLE_EVENTS if e["event"] == "unsubscribe")
    assert normalize_delivery(store([unsubscribe])).stored == 1
    assert normalize_delivery(store([unsubscribe])).duplicates == 1
    later = {**unsubscribe, "timestamp": unsubscribe["timestamp"] + 60}  # a different event
    assert normalize_delivery(store([later])).stored == 1
    assert MessageEvent.select().where(MessageEvent.type == "unsubscribed").count() == 2


def test_an_event_naming_another_tenant_is_refused_and_moves_no_one(db) -> None:
    enrollments = sample_world()
    make_tenant("globex", sender="sales@globex.test")
    forged = [{**e, "outreach_tenant": "globex"} for e in SAMPLE_EVENTS
              if e.get("outreach_message_id") in {"MSG-1", "MSG-6"}]
    delivery_id = store(forged)
    result = normalize_delivery(delivery_id)
    assert (result.status, result.stored, result.refused) == ("processed", 0, len(forged))
    assert MessageEvent.select().count() == 0
    assert Suppression.select().count() == 0
    assert reload(enrollments["ada@example.com"]).current_node == "intro"
    assert reload(enrollments["fay@example.com"]).status == "active"
    error = WebhookDelivery.get_by_id(delivery_id).error
    assert "tenant 'globex' does not own message MSG-1" in error


def test_a_spam_report_on_alices_message_naming_bob_suppresses_alice_not_bob(db, caplog) -> None:
    make_tenant("acme")
    load_plan()
    alice = engine.enroll("acme", "alice@example.com", "onboarding")
    bob = engine.enroll("acme", "bob@example.com", "onboarding")
    make_message("MSG-A", "alice@example.com", enrollment=alice, node="intro")
    report = {"event": "spamreport", "email": "Bob@Example.com", "timestamp": 1763790500,
              "sg_event_id": "odd-report", "outreach_message_id": "MSG-A",
              "outreach_tenant": "acme"}

    with caplog.at_level(logging.WARNING, logger="outreach_actors.domain.ingest"):
        result = normalize_delivery(store([report]))

    assert (result.status, result.stored, result.refused) == ("processed", 1, 0)
    # Bob, whom the event names but who never got this message, is untouched.
    assert not is_suppressed("acme", "bob@example.com")
    assert (reload(bob).status, reload(bob).current_node) == ("active", "intro")
    # Alice, the message's recipient, is who the report is about.
    assert [(s.value, s.reason) for s in Suppression.select()] == [
        ("alice@example.com", "complained")]
    assert (reload(alice).status, reload(alice).exit_reason) == ("exited", "complained")
    event = MessageEvent.get(MessageEvent.event_key == "sg:odd-report")
    assert event.data["recipient_mismatch"] is True
    assert event.email == "alice@example.com"
    [warning] = [r for r in caplog.records if "recipient" in r.getMessage()]
    assert warning.levelno == logging.WARNING
    assert "sg:odd-report" in warning.getMessage() and "MSG-A" in warning.getMessage()
    assert "@" not in warning.getMessage()  # ids only, no address


def test_on_the_last_attempt_events_of_messages_this_database_lacks_are_kept_without_them(db) -> None:
    make_tenant("acme")
    stray = {"event": "bounce", "email": "zed@example.com", "timestamp": 1763790500,
             "sg_event_id": "stray-bounce", "outreach_message_id": "MSG-ELSEWHERE",
             "outreach_tenant": "acme"}
    delivery_id = store([stray])
    with pytest.raises(ingest.MessagesNotYetStored):
        normalize_delivery(delivery_id)
    # Purged, or mailed by staging on the same SendGrid account: no retry finds it.
    result = normalize_delivery(delivery_id, last_attempt=True)
    assert (result.status, result.stored) == ("processed", 1)
    event = MessageEvent.get(MessageEvent.event_key == "sg:stray-bounce")
    assert (event.message_id, event.tenant, event.type) == (None, "acme", "bounced")
    delivery = WebhookDelivery.get_by_id(delivery_id)
    assert delivery.status == "processed" and "MSG-ELSEWHERE is not in this database" in delivery.error
    # A hard bounce is about the address, whichever email it came from.
    assert [(s.value, s.reason) for s in Suppression.select()] == [("zed@example.com", "bounced")]


def test_events_of_no_message_here_still_suppress_for_a_tenant_of_ours(db) -> None:
    make_tenant("acme")
    load_plan()
    enrollment = engine.enroll("acme", "eve@example.com", "onboarding")
    complaint = {"event": "spamreport", "email": "Eve@Example.com", "timestamp": 1763790500,
                 "sg_event_id": "old-complaint", "sg_message_id": "purged.filter0001",
                 "outreach_tenant": "acme"}
    foreign = {**complaint, "sg_event_id": "foreign", "email": "bob@example.com",
               "outreach_tenant": "not-ours"}
    opened = {**complaint, "event": "open", "sg_event_id": "old-open", "email": "amy@example.com"}
    normalize_delivery(store([complaint, foreign, opened]))
    assert [(s.tenant_id, s.value, s.reason) for s in Suppression.select()] == [
        ("acme", "eve@example.com", "complained")]
    assert (reload(enrollment).status, reload(enrollment).exit_reason) == ("exited", "complained")
    assert MessageEvent.select().where(MessageEvent.message.is_null()).count() == 3


def test_the_actor_keeps_such_events_when_its_retries_run_out(settings, stub_broker, caplog) -> None:
    rebind_actors(stub_broker, [normalize_webhook])
    make_tenant("acme")
    delivery_id = store([{"event": "open", "email": "zed@example.com", "timestamp": 1763790500,
                          "sg_event_id": "stray-open", "outreach_message_id": "MSG-ELSEWHERE",
                          "outreach_tenant": "acme"}])
    worker = dramatiq.Worker(stub_broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        with caplog.at_level(logging.WARNING):
            # An attempt with retries left is retried, with a WARNING and no traceback.
            normalize_webhook.send_with_options(args=(delivery_id,), retries=WEBHOOK_MAX_RETRIES - 1,
                                                min_backoff=10, max_backoff=20)
            stub_broker.join(normalize_webhook.queue_name)
            worker.join()
    finally:
        worker.stop()
    retried = [r for r in caplog.records if "wait for messages" in r.getMessage()]
    assert len(retried) == 1 and retried[0].exc_info is None
    assert "(attempt 10 of 11)" in retried[0].getMessage()
    assert MessageEvent.get(MessageEvent.event_key == "sg:stray-open").message_id is None
    assert WebhookDelivery.get_by_id(delivery_id).status == "processed"


def test_events_found_by_sg_message_id_when_our_ids_are_missing(db) -> None:
    make_tenant("acme")
    make_message("MSG-X", "ada@example.com", provider_message_id="W86EgYT6SQKk0lRflfLRsA")
    event = {"event": "delivered", "email": "ada@example.com", "timestamp": 1763790000,
             "sg_event_id": "by-sg-id",
             "sg_message_id": "W86EgYT6SQKk0lRflfLRsA.filterdrecv-p3las1-5bf99c48d.0"}
    normalize_delivery(store([event]))
    assert MessageEvent.get().message_id == "MSG-X"
    assert MessageEvent.get().tenant == "acme"


def test_unknown_and_unmatched_events_are_stored_without_a_message(db) -> None:
    event = {"event": "something_new", "email": "x@example.com", "timestamp": 1763790000,
             "sg_message_id": "nothing-we-sent.filter1"}
    result = normalize_delivery(store([event]))
    assert (result.status, result.stored) == ("processed", 1)
    stored = MessageEvent.get()
    assert (stored.type, stored.provider_event, stored.message_id) == (
        "unknown", "something_new", None
    )


def test_elements_that_are_not_events_are_reported_in_the_delivery(db) -> None:
    delivery_id = store([{"event": "processed", "sg_event_id": "ok", "timestamp": 1}, "junk"])
    result = normalize_delivery(delivery_id)
    assert (result.status, result.stored) == ("processed", 1)
    assert "event 1: expected a JSON object, got a string" in WebhookDelivery.get().error


def test_events_of_a_batch_reach_the_engine_in_timestamp_order(db) -> None:
    make_tenant("acme")
    load_plan(ORDER_PLAN)
    enrollment = engine.enroll("acme", "ada@example.com", "order")
    make_message("MSG-O", "ada@example.com", enrollment=enrollment, node="intro")
    base = {"email": "ada@example.com", "outreach_message_id": "MSG-O", "outreach_tenant": "acme"}
    # Listed click first, but the open happened first: the open's transition wins.
    batch = [{**base, "event": "click", "timestamp": 1763790200, "sg_event_id": "c"},
             {**base, "event": "open", "timestamp": 1763790100, "sg_event_id": "o"}]
    normalize_delivery(store(batch))
    assert reload(enrollment).current_node == "opened_first"


def test_a_late_group_unsubscribe_does_not_undo_a_later_resubscribe(db) -> None:
    sample_world()
    unsubscribe = next(e for e in SAMPLE_EVENTS if e["event"] == "group_unsubscribe")
    resubscribe = next(e for e in SAMPLE_EVENTS if e["event"] == "group_resubscribe")
    normalize_delivery(store([resubscribe]))
    normalize_delivery(store([unsubscribe]))  # older, delivered later
    assert not is_suppressed("acme", "gus@example.com", asm_group_id=42)
    normalize_delivery(store([{**unsubscribe, "sg_event_id": "newer",
                                      "timestamp": resubscribe["timestamp"] + 10}]))
    assert is_suppressed("acme", "gus@example.com", asm_group_id=42)
    assert not is_suppressed("acme", "gus@example.com")


def test_soft_bounces_suppress_at_the_configured_limit(db, data_dir) -> None:
    sample_world()
    configure(make_settings(data_dir, soft_bounce_limit=2, soft_bounce_window=timedelta(days=1)))
    blocked = next(e for e in SAMPLE_EVENTS if e.get("type") == "blocked")
    normalize_delivery(store([blocked]))
    assert not is_suppressed("acme", "cy@example.net")
    far = {**blocked, "sg_event_id": "far", "timestamp": blocked["timestamp"] + 2 * 86400}
    normalize_delivery(store([far]))
    assert not is_suppressed("acme", "cy@example.net")  # the first is out of the window
    near = {**blocked, "sg_event_id": "near", "timestamp": far["timestamp"] + 60}
    normalize_delivery(store([near]))
    suppression = Suppression.get(Suppression.value == "cy@example.net")
    assert (suppression.reason, suppression.source) == ("soft_bounce_limit", "sg:near")


def test_machine_opens_move_contacts_when_the_setting_says_they_count(db, data_dir) -> None:
    enrollments = sample_world()
    load_plan(ORDER_PLAN)
    configure(make_settings(data_dir, machine_opens_are_engagement=True))
    hal = engine.enroll("acme", "hal@example.com", "order")
    OutboundMessage.update(enrollment=hal).where(OutboundMessage.id == "MSG-8").execute()
    machine_open = next(e for e in SAMPLE_EVENTS if e.get("sg_machine_open") is True)
    normalize_delivery(store([machine_open]))
    assert reload(hal).current_node == "opened_first"
    assert reload(enrollments["hal@example.com"]).current_node == "intro"


def test_stale_received_deliveries_are_enqueued_again(db, stub_broker) -> None:
    rebind_actors(stub_broker, [normalize_webhook])
    old = store(SAMPLE_BODY)
    WebhookDelivery.update(received_at=datetime(2025, 1, 1)).where(
        WebhookDelivery.id == old).execute()
    store(SAMPLE_BODY)  # fresh: its own enqueue is presumably on its way
    assert ingest.requeue_stale_deliveries(enqueue_delivery, timedelta(minutes=10)) == 1
    [message] = stub_broker.queues["webhooks"].queue
    assert json.loads(message)["args"] == [old]
    # The reconciler runs every minute: a delivery waiting behind a backlog is not
    # enqueued again each time, only once its re-enqueue is itself a lease old.
    assert ingest.requeue_stale_deliveries(enqueue_delivery, timedelta(minutes=10)) == 0
    later = models.utcnow() + timedelta(minutes=11)  # the fresh one is stale by then too
    assert ingest.requeue_stale_deliveries(enqueue_delivery, timedelta(minutes=10), now=later) == 2
    assert ingest.requeue_stale_deliveries(enqueue_delivery, timedelta(minutes=10), now=later) == 0
    assert len(stub_broker.queues["webhooks"].queue) == 3


def test_a_provider_event_resolves_an_ambiguous_send(db) -> None:
    # Given a send whose outcome was unknown (the request timed out)
    make_tenant("acme")
    message = make_message("MSG-A", "ada@example.com")
    OutboundMessage.update(status=OutboundMessage.AMBIGUOUS).where(
        OutboundMessage.id == message.id).execute()
    # When SendGrid reports it processed, then the message counts as sent
    processed = {"event": "processed", "email": "ada@example.com", "timestamp": 1763790000,
                 "sg_event_id": "amb", "sg_message_id": "XAMB.filter1",
                 "outreach_message_id": "MSG-A", "outreach_tenant": "acme"}
    normalize_delivery(store([processed]))
    resolved = OutboundMessage.get_by_id("MSG-A")
    assert (resolved.status, resolved.provider_message_id) == ("sent", "XAMB")


def test_events_the_columns_cannot_hold_do_not_hold_back_their_batch(db) -> None:
    # Given one good hard bounce, and beside it events SendGrid would never send but
    # a broken relay might: a group id of 300 digits, an address of 300 characters,
    # a NUL in a free-text field and in a custom arg's name.
    make_tenant("acme")
    for n, email in enumerate(["ada@example.com", "bob@example.com", "cy@example.com",
                               "dee@example.com"], start=1):
        make_message(f"MSG-{n}", email)
    base = {"timestamp": 1_700_000_000, "outreach_tenant": "acme"}
    batch = [
        {**base, "event": "bounce", "type": "bounce", "email": "ada@example.com",
         "sg_event_id": "good", "outreach_message_id": "MSG-1"},
        {**base, "event": "group_unsubscribe", "asm_group_id": "9" * 300, "email": "bob@example.com",
         "sg_event_id": "long-group", "outreach_message_id": "MSG-2"},
        {**base, "event": "bounce", "type": "bounce", "email": "c" * 300 + "@example.com",
         "sg_event_id": "long-email", "outreach_message_id": "MSG-3"},
        {**base, "event": "open", "useragent": "Mozilla\u0000/5.0", "email": "dee@example.com",
         "sg_event_id": "nul", "outreach_message_id": "MSG-4", "ca\u0000mpaign": "x"},
    ]
    result = normalize_delivery(store(batch))
    # Then every event is stored and acted on, and the delivery is done.
    assert result.status == "processed", result.errors
    assert {e.event_key for e in MessageEvent.select()} == {
        "sg:good", "sg:long-group", "sg:long-email", "sg:nul"}
    assert is_suppressed("acme", "ada@example.com")
    # A group that cannot be one: the unsubscribe is taken for every mail of the tenant
    # (suppressions win); the long address is the message's own recipient.
    assert is_suppressed("acme", "bob@example.com")
    assert is_suppressed("acme", "cy@example.com")
