"""Unsubscribe groups: a plan's or node's ``asm_group`` goes out as SendGrid's ``asm.group_id``
(the stand-in checks and records it), and a group's unsubscribes keep applying per group."""

from __future__ import annotations

from pathlib import Path

import pytest

from outreach_actors.dev.standin import mail_send_errors
from outreach_actors.domain import engine
from outreach_actors.domain import mail as delivery
from outreach_actors.domain.store.models import Enrollment, OutboundMessage, ScheduledAction
from outreach_actors.domain.suppressions import group_channel, suppress
from outreach_actors.providers.sendgrid.client import SendGridClient

from .conftest import STANDIN_API_KEY
from .factories import load_plan, make_tenant

WINDOWED_PLAN = (Path(__file__).parent / "samples" / "windowed_plan.yaml").read_text()


@pytest.fixture
def client(db, standin) -> SendGridClient:
    make_tenant()
    load_plan(WINDOWED_PLAN)
    return SendGridClient(STANDIN_API_KEY, standin.host, 5)


def send_node(email: str, node: str, client: SendGridClient) -> str:
    enrollment = engine.enroll("acme", email, "breakup")
    if node != "intro":
        Enrollment.update(current_node=node).where(Enrollment.id == enrollment.id).execute()
        ScheduledAction.update(node=node).where(ScheduledAction.enrollment == enrollment).execute()
    action = ScheduledAction.get(ScheduledAction.enrollment == enrollment)
    return delivery.send_message(delivery.render_action(action.id), client).status


def test_the_plans_group_and_a_nodes_own_group_go_out_as_asm(client, standin) -> None:
    assert send_node("ada@example.com", "intro", client) == "sent"
    assert send_node("bob@example.com", "breakup", client) == "sent"
    assert [mail.body["asm"] for mail in standin.messages] == [{"group_id": 4242},
                                                               {"group_id": 777}]


def test_a_group_unsubscribe_holds_that_groups_mail_only(client, standin) -> None:
    # Ada unsubscribed from group 777 (as a group_unsubscribe event records it)
    suppress("acme", "ada@example.com", "group_unsubscribed", channel=group_channel(777))
    # Then the plan's group (4242) still reaches her, the break-up email (777) does not.
    assert send_node("ada@example.com", "intro", client) == "sent"
    engine.exit_contact_enrollments("acme", "ada@example.com", "test")
    load_plan(WINDOWED_PLAN.replace("name: breakup", "name: breakup2"))
    enrollment = engine.enroll("acme", "ada@example.com", "breakup2")
    Enrollment.update(current_node="breakup").where(Enrollment.id == enrollment.id).execute()
    ScheduledAction.update(node="breakup").where(ScheduledAction.enrollment == enrollment).execute()
    action = ScheduledAction.get(ScheduledAction.enrollment == enrollment)
    message_id = delivery.render_action(action.id)
    assert delivery.send_message(message_id, client).status == OutboundMessage.SUPPRESSED
    assert len(standin.messages) == 1


@pytest.mark.parametrize(("asm", "field"), [
    ({"group_id": "12"}, "asm.group_id"),
    ({}, "asm.group_id"),
    ({"group_id": 12, "groups_to_display": list(range(26))}, "asm.groups_to_display"),
    ([12], "asm"),
])
def test_the_standin_refuses_an_asm_sendgrid_refuses(asm, field: str) -> None:
    body = {"personalizations": [{"to": [{"email": "a@example.com"}]}],
            "from": {"email": "b@example.com"}, "subject": "s",
            "content": [{"type": "text/plain", "value": "x"}], "asm": asm}
    assert [error["field"] for error in mail_send_errors(body)] == [field]
    assert mail_send_errors({**body, "asm": {"group_id": 12, "groups_to_display": [12]}}) == []
