"""Invariant 4: suppressions win. A send re-checks the suppression list immediately
before calling the provider, so a suppression made after the render still stops it."""

from __future__ import annotations

import pytest

from outreach_actors.domain import mail as delivery
from outreach_actors.domain.store.models import (
    Enrollment,
    OutboundMessage,
)
from outreach_actors.domain.suppressions import suppress
from tests.test_delivery import client_for


@pytest.mark.parametrize("stored_as", ["ada@example.com", "Ada@Example.com"])
def test_a_suppression_made_after_the_render_still_wins(rendered, standin, sendgrid_client,
                                                        stored_as) -> None:
    # An address stored other than lower-cased is looked up on its own, as before.
    OutboundMessage.update(to_email=stored_as).where(OutboundMessage.id == rendered.id).execute()
    suppress("acme", "ADA@example.com", "unsubscribed", "test")
    assert delivery.send_message(rendered.id, sendgrid_client).status == "suppressed"
    assert standin.messages == []
    assert Enrollment.get_by_id(rendered.enrollment_id).exit_reason == "suppressed"


def test_a_suppressed_address_is_skipped_and_its_enrollment_ends(rendered, standin) -> None:
    suppress("acme", "ADA@example.com", "unsubscribed", "test")
    assert delivery.send_message(rendered.id, client_for(standin)).status == "suppressed"
    assert standin.messages == []
    assert Enrollment.get_by_id(rendered.enrollment_id).exit_reason == "suppressed"
