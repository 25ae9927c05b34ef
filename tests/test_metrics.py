"""Metrics: our counters count real effects; Dramatiq's exporter is added on request."""

from __future__ import annotations

from dramatiq.middleware.prometheus import Prometheus
from prometheus_client import REGISTRY

from outreach_actors.dev.standin import SendGridStandIn
from outreach_actors.domain import engine
from outreach_actors.domain import mail as delivery
from outreach_actors.domain.suppressions import suppress
from outreach_actors.providers.sendgrid.client import SendGridClient
from outreach_actors.worker.broker import make_broker

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


def test_a_worker_started_with_metrics_exports_ours_and_dramatiqs(tmp_path) -> None:
    # As an operator runs it: `dramatiq outreach_actors` with OUTREACH_METRICS_ENABLED;
    # Dramatiq's exporter adds up its worker processes through a shared directory.
    import os
    import subprocess
    import sys
    import urllib.request

    from outreach_actors.dev.ports import free_port

    from .conftest import wait_until

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTREACH_")}
    env.update({"OUTREACH_METRICS_ENABLED": "true", "OUTREACH_DATA_DIR": str(tmp_path / "var"),
                "dramatiq_prom_port": str(port), "dramatiq_prom_host": "127.0.0.1",
                "dramatiq_prom_db": str(tmp_path / "prom")})
    # Two deliveries of one render: the second is a duplicate, which we count.
    send_twice = ("import outreach_actors; from outreach_actors.worker.actors.mail import render; "
                  "render.send(-1); render.send(-1)")
    subprocess.run([sys.executable, "-c", send_twice], env=env, check=True, timeout=60)
    worker = subprocess.Popen([sys.executable, "-m", "dramatiq", "outreach_actors", "-p", "1",
                               "-t", "1"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)

    def scrape() -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as page:
                return page.read().decode()
        except OSError:
            return ""

    try:
        wait_until(lambda: 'outreach_idempotency_duplicates_total{outcome="done"}' in scrape(),
                   timeout=60)
        exported = scrape()
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        subprocess.run([sys.executable, "-m", "outreach_actors.cli", "broker", "stop"], env=env,
                       timeout=60, capture_output=True)
    assert 'dramatiq_messages_total{actor_name="render",queue_name="render"} 2.0' in exported
    assert 'outreach_idempotency_duplicates_total{outcome="done"} 1.0' in exported


# In a fresh process: the race is over the first use, which imports prometheus_client.
FIRST_USE_BY_EIGHT_THREADS = """
import threading
from outreach_actors.domain.metrics import count, metric

barrier, errors = threading.Barrier(8), []

def send_outcome():
    barrier.wait()
    try:
        count("outreach_emails_total", outcome="sent")
    except Exception as exc:
        errors.append(repr(exc))

threads = [threading.Thread(target=send_outcome) for _ in range(8)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print(errors, metric("outreach_emails_total").labels(outcome="sent")._value.get())
"""


def test_threads_counting_for_the_first_time_at_once_create_one_metric() -> None:
    import subprocess
    import sys

    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", FIRST_USE_BY_EIGHT_THREADS],
                              capture_output=True, text=True, timeout=60, check=True)
        assert done.stdout.split() == ["[]", "8.0"], done.stdout + done.stderr
