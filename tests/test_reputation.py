"""Auto-pause on reputation: a complaint spike, heard through signed Event Webhooks, pauses
the sender and the plan once (an ERROR, a gauge, `outreach stats` and `failures` say so);
a resume by hand lifts it, recorded with who and when."""

from __future__ import annotations

import base64
import io
import logging
import os
import secrets
import subprocess
import sys
import textwrap
import threading
import time
from datetime import timedelta
from http.server import ThreadingHTTPServer

import pytest
from click.testing import CliRunner
from prometheus_client import REGISTRY

from outreach_actors.cli import main
from outreach_actors.dev.webhook_events import generate_webhook_keys, sign_webhook, webhook_body
from outreach_actors.domain.enroll_many import ContactRow, enroll_many
from outreach_actors.domain.reputation import REPUTATION_CHECK, check_reputation
from outreach_actors.domain.store.db import is_postgresql
from outreach_actors.domain.store.models import (
    Enrollment,
    OutboundMessage,
    SendingPause,
    WebhookDelivery,
    insert_rows,
    utcnow,
)
from outreach_actors.settings import configure
from outreach_actors.web.webhooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SendGridWebhookReceiver,
)
from outreach_actors.worker.actors.webhooks import normalize_webhook
from outreach_actors.worker.runtime import rebind_actors

from .conftest import POSTGRES_URL, make_settings
from .factories import load_plan, make_tenant, normalize_delivery

SENDER = "sales@acme.test"


@pytest.fixture
def keys():
    return generate_webhook_keys()


def settings_for(db, data_dir, keys, **overrides):
    """Settings with the webhook key, pointing at the test's database (for the CLI too)."""
    on_postgres = is_postgresql(db)
    return make_settings(data_dir, sendgrid_webhook_public_key=keys.public_key,
                         **({"database_url": POSTGRES_URL} if on_postgres else {}), **overrides)


@pytest.fixture
def sent(db, data_dir, keys, stub_broker) -> list[OutboundMessage]:
    """300 emails of the onboarding plan sent an hour ago, and a receiver for their events."""
    configure(settings_for(db, data_dir, keys))
    rebind_actors(stub_broker, [normalize_webhook])
    make_tenant()
    load_plan()
    enroll_many("acme", "onboarding", [ContactRow(n, f"c{n}@example.com") for n in range(300)])
    an_hour_ago = utcnow() - timedelta(hours=1)
    insert_rows(OutboundMessage, [
        {"id": f"msg_{enrollment.id}", "tenant": "acme", "enrollment": enrollment.id,
         "node": "intro", "dedupe_key": f"test:{enrollment.id}", "status": "sent",
         "to_email": enrollment.contact.email, "from_email": SENDER, "subject": "Hi",
         "html": "<p>Hi</p>", "text": "Hi", "sent_at": an_hour_ago}
        for enrollment in Enrollment.select(Enrollment, Enrollment.contact)])
    return list(OutboundMessage.select())


def post_events(keys, messages: list[OutboundMessage], event: dict) -> None:
    """SendGrid's Event Webhook, signed, one event per message, stored and normalized."""
    body = webhook_body([{
        "email": message.to_email, "timestamp": int(time.time()), **event,
        "sg_event_id": base64.b64encode(secrets.token_bytes(16)).decode(),
        "sg_message_id": f"{message.id}.filter", "outreach_message_id": message.id,
        "outreach_tenant": "acme"} for message in messages])
    stamp = str(int(time.time()))
    headers = {SIGNATURE_HEADER: sign_webhook(body, stamp, keys.private_key_pem),
               TIMESTAMP_HEADER: stamp, "Content-Type": "application/json"}
    from outreach_actors.settings import get_settings

    reply = SendGridWebhookReceiver(get_settings()).receive(headers, io.BytesIO(body).read,
                                                            len(body))
    assert reply.status == 200, reply
    for delivery in WebhookDelivery.select().where(WebhookDelivery.status == "received"):
        normalize_delivery(delivery.id)


def gauge(kind: str, name: str) -> float | None:
    return REGISTRY.get_sample_value("outreach_sending_paused",
                                     {"tenant": "acme", "kind": kind, "name": name})


def test_a_complaint_spike_pauses_the_sender_and_the_plan_once(sent, keys, caplog) -> None:
    # Given 300 sends and no complaint: nothing to pause
    assert check_reputation() == []
    # When three recipients report it as spam (1%, over 0.3%)
    post_events(keys, sent[:3], {"event": "spamreport"})
    with caplog.at_level(logging.ERROR, logger="outreach_actors.domain.reputation"):
        changes = check_reputation()
        again = check_reputation()
    # Then the sender and the plan are paused, once, with the reason
    assert sorted((change.kind, change.name) for change in changes) == [
        ("plan", "onboarding"), ("sender", SENDER)]
    assert again == []
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 2
    assert "complaint rate 1.00% (3 of 300 sends" in errors[0].getMessage()
    pauses = {row.kind: row for row in SendingPause.select()}
    assert pauses["sender"].paused_by == REPUTATION_CHECK
    assert pauses["plan"].reason.startswith("auto: complaint rate 1.00%")
    assert gauge("sender", SENDER) == 1 and gauge("plan", "onboarding") == 1
    # And `outreach stats` and `outreach failures` say so.
    runner = CliRunner()
    for command in (["stats"], ["failures"]):
        result = runner.invoke(main, command)
        assert result.exit_code == 0, result.output
        assert f"paused: sender {SENDER} of acme" in result.output
        assert "paused: plan onboarding of acme" in result.output
        assert "complaint rate 1.00%" in result.output
    # When a person resumes both
    assert runner.invoke(main, ["sender", "resume", SENDER, "--tenant", "acme"]).exit_code == 0
    assert runner.invoke(main, ["plan", "resume", "onboarding", "--tenant", "acme"]).exit_code == 0
    # Then the record says who and when, the gauge drops, and the old complaints do not
    # pause them again: only what is sent after the resume is judged.
    for row in SendingPause.select():
        assert row.resumed_at is not None and "@" in row.resumed_by
    assert check_reputation() == []
    assert gauge("sender", SENDER) == 0 and gauge("plan", "onboarding") == 0


def test_hard_bounces_pause_past_5_percent_soft_ones_do_not(sent, keys) -> None:
    post_events(keys, sent[:30], {"event": "bounce", "type": "blocked", "reason": "full",
                                  "status": "4.2.2"})  # soft: blocked
    assert check_reputation() == []
    post_events(keys, sent[30:46], {"event": "bounce", "type": "bounce",
                                    "reason": "550 no such user", "status": "5.1.1"})
    changes = check_reputation()
    assert {change.kind for change in changes} == {"sender", "plan"}
    assert "hard-bounce rate 5.33% (16 of 300" in SendingPause.get(kind="sender").reason


def test_too_few_sends_to_tell_pause_nothing(sent, keys, db, data_dir) -> None:
    configure(settings_for(db, data_dir, keys, reputation_min_sends=301))
    post_events(keys, sent[:50], {"event": "spamreport"})
    assert check_reputation() == []
    # Sends older than the window do not count either.
    configure(settings_for(db, data_dir, keys, reputation_window=timedelta(minutes=30)))
    assert check_reputation() == []


REPUTATION_WORKER = textwrap.dedent(
    """
    import sentry_sdk, dramatiq
    import outreach_actors  # Sentry is initialised before the broker is built
    from datetime import timedelta
    from outreach_actors.domain.store import models
    from outreach_actors.worker.actors.periodic import check_reputation

    if __name__ == "__main__":
        models.create_schema(models.database_proxy.obj)
        models.Tenant.create(id="acme")
        models.SenderIdentity.create(tenant="acme", email="sales@acme.test", verified=True)
        sent_at = models.utcnow() - timedelta(hours=1)
        models.insert_rows(models.OutboundMessage, [
            {"id": f"m{n}", "tenant": "acme", "dedupe_key": f"k{n}", "status": "sent",
             "to_email": f"c{n}@example.com", "from_email": "sales@acme.test", "subject": "Hi",
             "html": "<p>Hi</p>", "text": "Hi", "sent_at": sent_at} for n in range(250)])
        models.insert_rows(models.MessageEvent, [
            {"message": f"m{n}", "tenant": "acme", "type": "complained", "event_key": f"e{n}",
             "email": f"c{n}@example.com", "occurred_at": sent_at} for n in range(3)])
        worker = dramatiq.Worker(outreach_actors.broker, worker_timeout=50)
        worker.start()
        for _ in range(2):  # two ticks: the second finds the pause made
            check_reputation.send()
            outreach_actors.broker.join("periodic")
        worker.stop()
        sentry_sdk.flush(timeout=5)
        print(models.SendingPause.select().count(), "paused")
    """
)


def test_an_auto_pause_reaches_sentry_once(tmp_path) -> None:
    pytest.importorskip("sentry_sdk")
    from .test_sentry import _Envelopes

    _Envelopes.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Envelopes)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    script = tmp_path / "worker.py"
    script.write_text(REPUTATION_WORKER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTREACH_")}
    env.update({"OUTREACH_SENTRY_DSN": f"http://publickey@127.0.0.1:{server.server_port}/1",
                "OUTREACH_BROKER_URL": "stub://", "OUTREACH_DATA_DIR": str(tmp_path / "var")})
    try:
        result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                                text=True, timeout=60)
    finally:
        server.shutdown()
    assert result.returncode == 0 and result.stdout.strip() == "1 paused", result.stderr
    # The sender (the messages have no plan) was paused once: one event, at ERROR.
    [event] = _Envelopes.received
    assert event["level"] == "error"
    assert "Paused sender 'sales@acme.test'" in event["logentry"]["formatted"]
