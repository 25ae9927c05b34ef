"""Invariant 3: nothing received is lost. A webhook body is stored raw before it is
parsed; one that fails to parse, or whose messages are not stored yet, is kept with
its error and can be replayed; an outage gets a clear answer, never a silent drop."""

from __future__ import annotations

import json

import pytest

from outreach_actors.domain import engine, ingest
from outreach_actors.domain.store.models import (
    MessageEvent,
    WebhookDelivery,
)
from outreach_actors.worker.actors.webhooks import (
    enqueue_delivery,
    normalize_webhook,
)
from outreach_actors.worker.runtime import rebind_actors
from tests.test_ingest import make_message, reload, store
from tests.test_webhooks import post, signed_headers

from ..conftest import make_settings
from ..factories import load_plan, make_tenant, normalize_delivery
from ..test_events import SAMPLE_BODY


def test_a_malformed_body_is_kept_with_its_error_and_can_be_replayed(db, stub_broker) -> None:
    rebind_actors(stub_broker, [normalize_webhook])
    delivery_id = store(b'[{"event": "open",')
    result = normalize_delivery(delivery_id)
    delivery = WebhookDelivery.get_by_id(delivery_id)
    assert result.status == delivery.status == "failed"
    assert "not valid JSON" in delivery.error
    assert bytes(delivery.body) == b'[{"event": "open",'
    ingest.replay_delivery(delivery_id, enqueue_delivery)
    assert WebhookDelivery.get_by_id(delivery_id).status == "received"
    [message] = stub_broker.queues["webhooks"].queue
    assert json.loads(message)["args"] == [delivery_id]
    with pytest.raises(LookupError, match="no webhook delivery 999"):
        ingest.replay_delivery(999, enqueue_delivery)


def test_an_event_for_a_message_not_yet_stored_is_retried_then_applied(db) -> None:
    make_tenant("acme")
    load_plan()
    early_click = {"event": "click", "email": "zed@example.com", "timestamp": 1763790500,
                   "sg_event_id": "early-click", "url": "https://example.com/x",
                   "outreach_message_id": "MSG-LATE", "outreach_tenant": "acme"}
    other = {"event": "account_status_change", "timestamp": 1763790501, "sg_event_id": "acct"}
    delivery_id = store([early_click, other])
    with pytest.raises(ingest.MessagesNotYetStored):
        normalize_delivery(delivery_id)
    delivery = WebhookDelivery.get_by_id(delivery_id)
    assert delivery.status == "failed" and "MSG-LATE" in delivery.error
    assert MessageEvent.select().count() == 1  # what could be stored was stored

    # When the send commits its message, the retry stores and applies the click.
    enrollment = engine.enroll("acme", "zed@example.com", "onboarding")
    make_message("MSG-LATE", "zed@example.com", enrollment=enrollment, node="intro")
    result = normalize_delivery(delivery_id)
    assert (result.status, result.stored, result.duplicates) == ("processed", 1, 1)
    assert WebhookDelivery.get_by_id(delivery_id).error is None
    assert reload(enrollment).current_node == "thanks"


def test_a_broker_outage_still_answers_200_and_the_delivery_waits(
    receiver, key, data_dir, host_runtime
) -> None:
    # Given a broker nobody listens on: the body is stored, and the sweep enqueues it later.
    from outreach_actors.worker.broker import make_broker

    broker = make_broker(make_settings(data_dir, broker_url="redis://127.0.0.1:1/0"))
    rebind_actors(broker, [normalize_webhook])
    reply = post(receiver, SAMPLE_BODY, signed_headers(key, SAMPLE_BODY))
    assert reply.status == 200
    assert WebhookDelivery.get().status == "received"
