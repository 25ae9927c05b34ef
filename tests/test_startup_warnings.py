"""Workers say at start what would make their mail wrong though every send succeeds, and do
not start at all when the unsubscribe links of their mail could be forged."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import dramatiq
import pytest

from outreach_actors.domain.unsubscribe import DEVELOPMENT_SECRET
from outreach_actors.worker.broker import make_broker
from outreach_actors.worker.middleware.startup import ConfigurationChecks

from .conftest import make_settings

REAL_SENDGRID = {"sendgrid_api_key": "SG.live-key", "sendgrid_api_host": "https://api.sendgrid.com",
                 "public_base_url": "https://hooks.acme.test"}
# The secrets an attacker tries first: the public default, nothing, a short word, a pattern.
FORGEABLE = {
    "the public default": {"secret_key": DEVELOPMENT_SECRET},
    "an empty secret": {"secret_key": ""},
    "a 3-letter secret": {"secret_key": "abc"},
    "a repeated pattern": {"secret_key": "Secret-key-1234" * 3},
    "the default among the fallbacks": {"secret_key_fallbacks": [DEVELOPMENT_SECRET]},
}


def warnings_at_boot(caplog, settings) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        ConfigurationChecks(settings).before_worker_boot(dramatiq.get_broker(), None)
    return [record.getMessage() for record in caplog.records]


def test_mail_to_real_sendgrid_with_local_links_is_warned_of(data_dir, caplog) -> None:
    warnings = warnings_at_boot(caplog, make_settings(
        data_dir, sendgrid_api_host="https://api.sendgrid.com", public_base_url="http://localhost:8000"))
    assert warnings == [
        "unsubscribe links point at http://localhost:8000, which recipients cannot reach: set "
        "OUTREACH_PUBLIC_BASE_URL to where the unsubscribe endpoint is served",
    ]
    assert warnings_at_boot(caplog, make_settings(
        data_dir, sendgrid_api_host="https://api.sendgrid.com",
        public_base_url="https://hooks.acme.test")) == []


def test_a_stand_in_on_this_host_needs_no_public_links_nor_a_secret(data_dir, caplog) -> None:
    # Tests and the demo: the stand-in mails no one.
    assert warnings_at_boot(caplog, make_settings(
        data_dir, sendgrid_api_host="http://127.0.0.1:8625", public_base_url="http://localhost:8000",
        secret_key=DEVELOPMENT_SECRET)) == []


@pytest.mark.parametrize("weak", FORGEABLE.values(), ids=FORGEABLE.keys())
def test_a_worker_mailing_real_recipients_with_a_forgeable_secret_does_not_start(
        data_dir, weak) -> None:
    broker = make_broker(make_settings(data_dir, **REAL_SENDGRID, **weak))
    worker = dramatiq.Worker(broker, worker_threads=1)
    try:
        with pytest.raises(SystemExit) as refused:
            worker.start()
    finally:
        worker.stop()
        broker.close()
    message = str(refused.value.code)
    setting = "OUTREACH_SECRET_KEY_FALLBACKS" if "secret_key_fallbacks" in weak else "OUTREACH_SECRET_KEY"
    assert f"{setting} " in message and "forge" in message
    assert "outreach secret generate" in message or "remove it" in message
    assert worker.workers == []  # refused before any thread could take a message


@pytest.mark.parametrize("development", [
    {"sendgrid_api_host": "http://127.0.0.1:8625"},  # a stand-in on this host
    {"sendgrid_api_key": None},  # no SendGrid key: nothing is mailed
], ids=["stand-in", "no key"])
def test_a_development_worker_starts_with_the_default_secret(data_dir, development) -> None:
    broker = make_broker(make_settings(data_dir, secret_key=DEVELOPMENT_SECRET, **development))
    worker = dramatiq.Worker(broker, worker_threads=1)
    try:
        worker.start()
        assert len(worker.workers) == 1
    finally:
        worker.stop()
        broker.close()


def test_dramatiq_outreach_actors_refuses_the_default_secret_in_one_line(data_dir) -> None:
    # What an operator runs: `dramatiq outreach_actors` with a key but no OUTREACH_SECRET_KEY.
    env = {key: value for key, value in os.environ.items() if not key.startswith("OUTREACH_")}
    env.update({"OUTREACH_BROKER_URL": "stub://", "OUTREACH_DATA_DIR": str(data_dir),
                "OUTREACH_SENDGRID_API_KEY": "SG.live-key",
                "OUTREACH_PUBLIC_BASE_URL": "https://hooks.acme.test"})
    command = [sys.executable, "-m", "dramatiq", "outreach_actors", "-p", "1", "-t", "1"]
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("the worker started and kept running with the public default secret")
    assert result.returncode != 0
    assert "OUTREACH_SECRET_KEY is the development default" in result.stderr
    assert "outreach secret generate" in result.stderr
    assert "Traceback" not in result.stderr
