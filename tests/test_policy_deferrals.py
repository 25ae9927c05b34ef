"""The send actor under the sending policy, on the stub broker and on real Redis: a send past
the sender's daily cap or the contact's frequency cap is deferred (no retry burned, never
dropped, a refused send not counted); a node that opted out of the frequency caps goes."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from outreach_actors.domain import engine
from outreach_actors.domain import mail as delivery
from outreach_actors.domain.store.models import (
    OutboundMessage,
    ScheduledAction,
    SenderIdentity,
    Tenant,
)
from outreach_actors.settings import configure
from outreach_actors.worker.actors.mail import send
from tests.test_ratelimit import EnqueueRecorder

from .conftest import make_settings, wait_until
from .factories import load_plan, make_tenant

RECEIPT_PLAN = """
name: receipts
start: receipt
nodes:
  receipt:
    type: email
    subject: "Your receipt"
    body: "<p>Thanks</p>"
    frequency_cap: false
    transitions: [{on: no_open, after: P1D, to: stop}]
  stop: {type: exit}
"""


@pytest.fixture(params=["stub", "redis"])
def policy_broker(request, db, data_dir, standin):
    configure(make_settings(data_dir, sendgrid_api_host=standin.host))
    broker = request.getfixturevalue(f"{request.param}_broker")
    recorder = EnqueueRecorder()
    broker.add_middleware(recorder)
    broker.recorder = recorder
    import dramatiq

    worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=4)
    worker.start()
    yield broker
    worker.stop()


def order_for(email: str, plan: str) -> dict:
    enrollment = engine.enroll("acme", email, plan, fields={"first_name": "Ada"})
    action = ScheduledAction.get(ScheduledAction.enrollment == enrollment,
                                 ScheduledAction.kind == ScheduledAction.SEND)
    return delivery.render_for_send(action.id)


def deferrals(scope: str) -> float:
    return REGISTRY.get_sample_value("outreach_ratelimit_deferrals_total", {"scope": scope}) or 0


def test_past_the_daily_cap_a_send_waits_for_tomorrow_using_no_retry(policy_broker,
                                                                     standin) -> None:
    make_tenant()
    load_plan()
    SenderIdentity.update(rate_limits={"sender_per_day": 2}).execute()
    before = deferrals("sender_day")
    orders = [order_for(f"c{n}@example.com", "onboarding") for n in range(3)]
    for order in orders:
        send.send(order)
    def statuses() -> list[str]:
        return sorted(OutboundMessage.get_by_id(o["message_id"]).status for o in orders)

    wait_until(lambda: statuses() == ["rendered", "sent", "sent"]
               and policy_broker.recorder.deferrals)
    # Two went, the third waits in the broker (until midnight, UTC being the sender's
    # zone, at most max_deferral at a time), still rendered.
    assert len(standin.messages) == 2
    assert all(0 < delay <= 600_000 for _, delay in policy_broker.recorder.deferrals)
    assert deferrals("sender_day") > before
    # Not a failure: no retry used, no error recorded.
    waiting = OutboundMessage.get(OutboundMessage.status == "rendered")
    assert waiting.attempts == 0 and waiting.error is None


def test_a_frequency_cap_holds_across_plans_but_not_a_node_that_opted_out(policy_broker,
                                                                          standin) -> None:
    make_tenant()
    load_plan()
    load_plan(RECEIPT_PLAN)
    Tenant.update(rate_limits={"frequency_caps": [[1, "P2D"]]}).execute()
    before = deferrals("contact")
    capped = order_for("ada@example.com", "onboarding")
    send.send(capped)
    wait_until(lambda: OutboundMessage.get_by_id(capped["message_id"]).status == "sent")
    # The same contact, another plan that counts: deferred by the contact's cap ...
    from .factories import THREE_NODE_PLAN

    load_plan(THREE_NODE_PLAN.replace("name: onboarding", "name: nurture"))
    second = order_for("ada@example.com", "nurture")
    send.send(second)
    wait_until(lambda: deferrals("contact") > before)
    # ... while her receipt, which opted out, goes at once.
    receipt = order_for("ada@example.com", "receipts")
    send.send(receipt)
    wait_until(lambda: OutboundMessage.get_by_id(receipt["message_id"]).status == "sent")
    assert OutboundMessage.get_by_id(second["message_id"]).status == "rendered"
    # Another contact is not held by Ada's cap.
    other = order_for("bob@example.com", "nurture")
    send.send(other)
    wait_until(lambda: OutboundMessage.get_by_id(other["message_id"]).status == "sent")
    assert len(standin.messages) == 3
