"""Metrics: our counters count real effects; Dramatiq's exporter is added on request."""

from __future__ import annotations

from dramatiq.middleware.prometheus import Prometheus
from prometheus_client import REGISTRY

from outreach_actors import delivery, engine
from outreach_actors.broker import make_broker
from outreach_actors.providers.sendgrid import SendGridClient
from outreach_actors.suppressions import suppress
from outreach_actors.testing import SendGridStandIn

from .conftest import make_settings
from .factories import load_plan, make_tenant


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_sends_and_suppressions_are_counted(settings) -> None:
    make_tenant()
    load_plan()
    engine.enroll("acme", "ada@example.com", "onboarding", fields={"first_name": "Ada"})
    engine.enroll("acme", "bob@example.com", "onboarding", fields={"first_name": "Bob"})
    sent_before = sample("outreach_emails_total", outcome="sent")
    suppressed_before = sample("outreach_emails_total", outcome="suppressed")
    with SendGridStandIn() as standin:
        client = SendGridClient("SG.key", standin.host, 5)
        ids = [delivery.render_action(action_id) for action_id in (1, 2)]
        suppress("acme", "BOB@example.com", "manual", "test")
        for message_id in ids:
            delivery.send_message(message_id, client)
        delivery.send_message(ids[0], client)  # a replay is not an email
    assert sample("outreach_emails_total", outcome="sent") == sent_before + 1
    assert sample("outreach_emails_total", outcome="suppressed") == suppressed_before + 1
    assert sample("outreach_suppressions_total", reason="manual") >= 1


def test_dramatiq_exporter_is_added_when_metrics_are_enabled(data_dir) -> None:
    plain = make_broker(make_settings(data_dir))
    exported = make_broker(make_settings(data_dir, metrics_enabled=True))
    assert not any(isinstance(m, Prometheus) for m in plain.middleware)
    assert any(isinstance(m, Prometheus) for m in exported.middleware)
