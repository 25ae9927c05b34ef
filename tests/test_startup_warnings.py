"""Workers say at start what would make their mail wrong though every send succeeds."""

from __future__ import annotations

import logging

import dramatiq

from outreach_actors.worker.middleware.startup import ConfigurationWarnings

from .conftest import make_settings


def warnings_at_boot(caplog, settings) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        ConfigurationWarnings(settings).before_worker_boot(dramatiq.get_broker(), None)
    return [record.getMessage() for record in caplog.records]


def test_mail_to_real_sendgrid_with_local_links_or_the_development_secret_is_warned_of(
        data_dir, caplog) -> None:
    warnings = warnings_at_boot(caplog, make_settings(
        data_dir, sendgrid_api_host="https://api.sendgrid.com", public_base_url="http://localhost:8000"))
    assert warnings == [
        "unsubscribe links point at http://localhost:8000, which recipients cannot reach: set "
        "OUTREACH_PUBLIC_BASE_URL to where the unsubscribe endpoint is served",
        "OUTREACH_SECRET_KEY is the development default: anyone can forge unsubscribe links; "
        "set a long random secret",
    ]
    assert warnings_at_boot(caplog, make_settings(
        data_dir, sendgrid_api_host="https://api.sendgrid.com",
        public_base_url="https://hooks.acme.test", secret_key="a-long-random-secret")) == []


def test_a_stand_in_on_this_host_needs_no_public_links(data_dir, caplog) -> None:
    # Tests and the demo: the stand-in mails no one.
    assert warnings_at_boot(caplog, make_settings(
        data_dir, sendgrid_api_host="http://127.0.0.1:8625", public_base_url="http://localhost:8000")) == []
