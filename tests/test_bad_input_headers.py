"""Bad input, part 3: CR, LF and NUL cannot inject mail headers, whichever way they come in.

Each case goes through the real delivery path: ``engine.enroll``, ``delivery.render_action``
and ``delivery.send_message`` with the real ``sendgrid`` client pointed at the SendGrid
stand-in. A line break from a contact field, the sender's name or address, the recipient's
address, a header value or a category ends with the enrollment refused, the render failed
or the message ``failed`` with a clear error, and the stand-in receives nothing at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from outreach_actors.dev.standin import SendGridStandIn
from outreach_actors.domain import engine
from outreach_actors.domain import mail as delivery
from outreach_actors.domain.plans import PlanError
from outreach_actors.domain.store import models
from outreach_actors.domain.store.db import is_postgresql
from outreach_actors.domain.store.models import (
    Enrollment,
    OutboundMessage,
    ScheduledAction,
    SenderIdentity,
)
from outreach_actors.providers.sendgrid.client import SendGridClient
from outreach_actors.settings import Settings, configure

from .conftest import make_settings
from .factories import load_plan, make_tenant
from .test_bad_input import fuzz

PLAN = """
name: headers
start: intro
categories: [outreach]
nodes:
  intro:
    type: email
    subject: "Hi {{ contact.first_name }}"
    body: "<p>Hello {{ contact.first_name }}</p>"
    transitions:
      - {on: click, to: done}
  done: {type: exit}
"""
# The ways a line can be broken in a header; NUL ends a C string in some mail software.
BREAKS = ["\r\n", "\n", "\r", "\x00"]
INJECTION = "Bcc: victim@example.com"


@pytest.fixture
def db(any_db, data_dir) -> Iterator[Settings]:
    """Tables on SQLite and PostgreSQL; yields the settings for them."""
    current = make_settings(data_dir, secret_key="headers-secret")
    configure(current)
    models.bind(any_db)
    yield current
    configure(None)


def skip_unstorable(brk: str) -> None:
    """PostgreSQL refuses NUL in text columns: no sender row can hold one there."""
    if brk == "\x00" and is_postgresql(models.database_proxy.obj):
        pytest.skip("PostgreSQL cannot store NUL in a text column, so this row cannot exist")


def deliver(settings: Settings, sendgrid_client: SendGridClient, email: str = "ada@example.com",
            **fields: Any) -> tuple[Enrollment, ScheduledAction, OutboundMessage | None]:
    """Enroll one contact, render its first email and send it, as the actors would."""
    enrollment = engine.enroll("acme", email, "headers", fields=fields or {"first_name": "Ada"})
    action = ScheduledAction.get(ScheduledAction.enrollment == enrollment.id,
                                 ScheduledAction.kind == ScheduledAction.SEND)
    message_id = delivery.render_action(action.id, settings=settings)
    if message_id is not None:
        delivery.send_message(message_id, sendgrid_client)
    message = OutboundMessage.get_or_none(OutboundMessage.id == message_id) if message_id else None
    return (Enrollment.get_by_id(enrollment.id), ScheduledAction.get_by_id(action.id), message)


def assert_send_refused(message: OutboundMessage | None, field: str, standin: SendGridStandIn,
                        enrollment: Enrollment) -> None:
    assert message is not None
    assert message.status == OutboundMessage.FAILED
    assert message.error.startswith(field) and "line break or NUL" in message.error
    assert enrollment.status == Enrollment.FAILED
    assert standin.requests == []


def test_a_clean_contact_reaches_the_stand_in(db, standin, sendgrid_client) -> None:
    # The control: the same path with clean input sends, so the refusals below are real.
    make_tenant("acme")
    load_plan(PLAN)

    enrollment, _, message = deliver(db, sendgrid_client)

    assert message.status == OutboundMessage.SENT
    [accepted] = standin.messages
    assert accepted.body["subject"] == "Hi Ada"


@pytest.mark.parametrize("brk", [*BREAKS, "\u2028", "\x85", "\x0b"])
def test_a_line_break_in_a_contact_field_fails_the_render_of_the_subject(
    db, standin, sendgrid_client, brk: str
) -> None:
    make_tenant("acme")
    load_plan(PLAN)

    enrollment, action, message = deliver(db, sendgrid_client, first_name=f"Ada{brk}{INJECTION}")

    assert message is None and OutboundMessage.select().count() == 0
    assert action.status == ScheduledAction.FAILED
    assert "subject" in action.result and "line break or NUL" in action.result
    assert enrollment.status == Enrollment.FAILED
    assert standin.requests == []


@pytest.mark.parametrize("brk", BREAKS)
def test_a_line_break_in_the_sender_name_fails_the_message(db, standin, sendgrid_client, brk: str) -> None:
    skip_unstorable(brk)
    make_tenant("acme")
    SenderIdentity.update(name=f"Acme{brk}{INJECTION}").execute()
    load_plan(PLAN)

    enrollment, _, message = deliver(db, sendgrid_client)

    assert_send_refused(message, "from_name", standin, enrollment)


@pytest.mark.parametrize("brk", BREAKS)
def test_a_line_break_in_the_sender_address_fails_the_message(
    db, standin, sendgrid_client, brk: str
) -> None:
    # The CLI refuses such an address; a row written by other means must not get through.
    skip_unstorable(brk)
    make_tenant("acme", sender=f"sales@acme.test{brk}{INJECTION}")
    load_plan(PLAN)

    enrollment, _, message = deliver(db, sendgrid_client)

    assert_send_refused(message, "from_email", standin, enrollment)


@pytest.mark.parametrize("brk", BREAKS)
def test_a_line_break_in_the_recipient_address_refuses_the_enrollment(
    db, standin, sendgrid_client, brk: str
) -> None:
    make_tenant("acme")
    load_plan(PLAN)

    with pytest.raises(engine.EnrollmentError, match="not a valid email address"):
        deliver(db, sendgrid_client, email=f"ada@example.com{brk}{INJECTION}")

    assert models.Contact.select().count() == 0 and Enrollment.select().count() == 0
    assert standin.requests == []


@pytest.mark.parametrize("brk", BREAKS)
def test_a_line_break_in_the_public_url_is_refused_at_start(brk: str, data_dir) -> None:
    # The List-Unsubscribe header carries the public URL: a bad one stops the process
    # at start instead of failing every send.
    with pytest.raises(ValidationError, match="public_base_url"):
        make_settings(data_dir, public_base_url=f"https://hooks.acme.test/{brk}{INJECTION}")


@pytest.mark.parametrize("brk", BREAKS)
@pytest.mark.parametrize("where", ["plan", "node"])
def test_a_line_break_in_a_category_is_refused_when_the_plan_is_loaded(
    db, standin, sendgrid_client, brk: str, where: str
) -> None:
    make_tenant("acme")
    evil = f"spring{brk}{INJECTION}"
    text = PLAN.replace("categories: [outreach]", f"categories: [outreach, {evil!r}]")
    if where == "node":
        text = PLAN.replace("    type: email\n", f"    type: email\n    categories: [{evil!r}]\n")
    with pytest.raises(PlanError, match="categories"):
        load_plan(text.replace("'", '"'))
    assert standin.requests == []


def test_a_lone_surrogate_in_a_contact_field_fails_the_render_cleanly(db, standin, sendgrid_client) -> None:
    make_tenant("acme")
    load_plan(PLAN)

    enrollment, action, message = deliver(db, sendgrid_client, first_name="Ada\ud800")

    assert message is None and action.status == ScheduledAction.FAILED
    assert standin.requests == []


def test_a_nul_in_a_contact_field_rendered_into_the_body_fails_or_sends_cleanly(
    db, standin, sendgrid_client, request
) -> None:
    make_tenant("acme")
    load_plan(PLAN.replace('"Hi {{ contact.first_name }}"', '"Hi"'))

    enrollment, action, message = deliver(db, sendgrid_client, first_name="Ada\x00")

    # Either way it is settled: sent (the NUL is in the HTML body, not in a header) or failed.
    assert action.status in {ScheduledAction.DONE, ScheduledAction.FAILED}
    assert message is None or message.status in {OutboundMessage.SENT, OutboundMessage.FAILED}


# -- enrolling contacts with random data ----------------------------------------------------

ODD_TEXT = st.text(max_size=12) | st.sampled_from(
    ["\x00", "\ud800", "\r\n", "x" * 300, "Europe/Paris", "../../etc/passwd", "UTC", ""]
)


@fuzz(60)
@given(
    local=ODD_TEXT, domain=st.sampled_from(["example.com", "exa mple.com", "x" * 300 + ".com", ""])
    | ODD_TEXT,
    fields=st.dictionaries(ODD_TEXT, ODD_TEXT | st.integers() | st.none(), max_size=4),
    timezone=st.none() | ODD_TEXT,
)
def test_enrolling_random_contacts_enrolls_or_refuses_with_an_enrollment_error(
    db, local: str, domain: str, fields: dict, timezone: str | None
) -> None:
    make_tenant("acme")
    if not models.Plan.select().exists():
        load_plan(PLAN)
    try:
        enrollment = engine.enroll("acme", f"{local}@{domain}", "headers", fields=fields,
                                   timezone=timezone)
    except engine.EnrollmentError:
        return
    assert Enrollment.get_by_id(enrollment.id).contact.email == f"{local}@{domain}".strip().lower()
