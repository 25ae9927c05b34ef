"""Sentry: the real SDK, initialised before the broker, reporting to a local HTTP server.

The worker runs in a subprocess configured only through OUTREACH_* variables, as a
deployment would be. The server receives the SDK's envelopes over HTTP.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import textwrap
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("sentry_sdk")

WORKER = textwrap.dedent(
    """
    import sentry_sdk, dramatiq
    import outreach_actors  # Sentry is initialised before the broker is built
    from outreach_actors.domain import engine
    from outreach_actors.domain.store import models
    from outreach_actors.worker.actors.mail import fire_timeout, render
    from outreach_actors.domain.plans import validate_plan

    # Render processes start from this file: only the main program runs the work.
    if __name__ == "__main__":
        assert sentry_sdk.is_initialized()
        models.create_schema(models.database_proxy.obj)
        models.Tenant.create(id="acme")
        plan = validate_plan('''
        name: drip
        start: pause
        nodes:
          pause: {type: wait, transitions: [{on: elapsed, after: PT1H, to: done}]}
          done: {type: exit}
        ''')
        models.Plan.create(tenant="acme", name="drip", definition=plan.to_definition())
        enrollment = engine.enroll("acme", "ada@example.com", "drip")
        timer = models.ScheduledAction.get()
        # A send action for a tenant with no sender identity: it fails for real, permanently.
        broken = models.ScheduledAction.create(
            enrollment=enrollment, node="pause", kind="send", run_at=timer.run_at, dedupe_key="x")
        worker = dramatiq.Worker(outreach_actors.broker, worker_timeout=50)
        worker.start()
        render.send_with_options(args=(broken.id,), max_retries=0)
        try:
            outreach_actors.broker.join("render")
        except Exception:
            pass
        # Only then the timer: run beside the render, it could move the enrollment first
        # and the render would be skipped (moved on) instead of failing.
        fire_timeout.send(timer.id)
        fire_timeout.send(timer.id)  # a duplicate: skipped, not an error
        outreach_actors.broker.join("timeouts")
        worker.join()
        worker.stop()
        sentry_sdk.flush(timeout=5)
        print("worker done")
    """
)


class _Envelopes(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        lines = body.split(b"\n")
        for header, payload in zip(lines[1::2], lines[2::2], strict=False):
            if json.loads(header).get("type") == "event":
                self.received.append(json.loads(payload))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_errors_reach_sentry_tagged_and_duplicates_do_not(tmp_path: Path) -> None:
    _Envelopes.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Envelopes)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OUTREACH_")}
    env.update({
        "OUTREACH_SENTRY_DSN": f"http://publickey@127.0.0.1:{server.server_port}/1",
        "OUTREACH_BROKER_URL": "stub://",
        "OUTREACH_DATA_DIR": str(tmp_path / "var"),
    })
    try:
        result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                                text=True, timeout=60)
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    # Then exactly one event arrived: the real error, with the ids of its work.
    [event] = _Envelopes.received
    assert event["level"] == "error"
    assert "has no sender identity" in event["logentry"]["formatted"]
    assert event["contexts"]["dramatiq"]["data"]["actor_name"] == "render"
    tags = event["tags"]
    assert tags["outreach.tenant"] == "acme"
    assert tags["outreach.plan"] == "drip"
    assert tags["outreach.node"] == "pause"
    assert tags["outreach.action"] == str(event["contexts"]["dramatiq"]["data"]["args"][0])
    assert "ada@example.com" not in json.dumps(tags)


SENDING_WORKER = textwrap.dedent(
    """
    import sentry_sdk, dramatiq
    import outreach_actors
    from outreach_actors.domain import engine
    from outreach_actors.domain.store import models
    from outreach_actors.worker.actors.mail import render, send
    from outreach_actors.domain.plans import validate_plan

    # Render processes start from this file: only the main program runs the work.
    if __name__ == "__main__":
        models.create_schema(models.database_proxy.obj)
        models.Tenant.create(id="acme")
        models.SenderIdentity.create(tenant="acme", email="sales@acme.test", verified=True)
        plan = validate_plan('''
        name: hello
        start: intro
        nodes:
          intro: {type: email, subject: "Hi", body: "<p>Hello there</p>",
                  transitions: [{on: click, to: done}]}
          done: {type: exit}
        ''')
        models.Plan.create(tenant="acme", name="hello", definition=plan.to_definition())
        engine.enroll("acme", "ada@example.com", "hello")
        action = models.ScheduledAction.get()
        worker = dramatiq.Worker(outreach_actors.broker, worker_timeout=50)
        worker.start()
        dramatiq.pipeline([render.message(action.id),
                           send.message_with_options(min_backoff=10, max_backoff=20)]).run()
        outreach_actors.broker.join("render")
        outreach_actors.broker.join("send")
        worker.join()
        worker.stop()
        sentry_sdk.flush(timeout=5)
        print(models.OutboundMessage.get().status)
    """
)


def test_a_retried_send_is_no_sentry_error_and_its_final_failure_carries_no_address(
        tmp_path: Path) -> None:
    from outreach_actors.dev.standin import SendGridStandIn

    _Envelopes.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Envelopes)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    script = tmp_path / "worker.py"
    script.write_text(SENDING_WORKER)
    with SendGridStandIn(api_key="SG.sentry-test") as standin:
        # SendGrid answers 500 (retried), then 400 (permanent: the send fails for good)
        standin.fail_next(500)
        standin.fail_next(400, body={"errors": [{"message": "bad from", "field": "from"}]})
        env = {k: v for k, v in os.environ.items() if not k.startswith("OUTREACH_")}
        env.update({
            "OUTREACH_SENTRY_DSN": f"http://publickey@127.0.0.1:{server.server_port}/1",
            "OUTREACH_BROKER_URL": "stub://",
            "OUTREACH_DATA_DIR": str(tmp_path / "var"),
            "OUTREACH_SENDGRID_API_KEY": "SG.sentry-test",
            "OUTREACH_SENDGRID_API_HOST": standin.host,
        })
        try:
            result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                                    text=True, timeout=60)
        finally:
            server.shutdown()
        assert len(standin.requests) == 2
    assert result.returncode == 0 and result.stdout.strip().endswith("failed"), result.stderr
    # The 500 was retried without an error event or a traceback in the log.
    assert "Traceback" not in result.stderr
    assert "will be retried" in result.stderr
    # Then one event: the permanent failure, tagged with the plan and the action,
    # and nothing in it names the recipient (no frame's local variables).
    [event] = _Envelopes.received
    assert "failed permanently" in event["logentry"]["formatted"]
    assert event["tags"]["outreach.plan"] == "hello"
    assert event["tags"]["outreach.action"].isdigit()
    assert "ada@example.com" not in json.dumps(event)
