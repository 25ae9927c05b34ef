"""The Flask extension in a real app, driven by Flask's own test client."""

from __future__ import annotations

import pytest
from flask import Flask, jsonify, request

from outreach_actors.contrib.flask import OutreachFlask
from outreach_actors.domain.store.models import Enrollment, Suppression, WebhookDelivery
from outreach_actors.domain.unsubscribe import DEVELOPMENT_SECRET, unsubscribe_url
from outreach_actors.settings import SettingsError, get_settings

from .factories import load_plan, make_tenant
from .test_events import SAMPLE_BODY
from .test_webhooks import (  # noqa: F401  (host_runtime is a fixture)
    activated,
    assert_private_page,
    host_runtime,
    new_key,
    public_key_of,
    signed_headers,
)

# Every test starts a host app, which replaces the process's broker and database binding.
pytestmark = pytest.mark.usefixtures("host_runtime")


def flask_app(data_dir, key, url_prefix: str | None = None, **config) -> Flask:
    app = Flask(__name__)
    app.config.update({
        "OUTREACH_DATABASE_URL": f"sqlite:///{data_dir / 'outreach.db'}",
        "OUTREACH_BROKER_URL": "stub://",
        "OUTREACH_DATA_DIR": str(data_dir),
        "OUTREACH_SENDGRID_WEBHOOK_PUBLIC_KEY": public_key_of(key),
        "OUTREACH_SECRET_KEY": "flask-test-secret",
        "OUTREACH_PUBLIC_BASE_URL": "https://hooks.acme.test",
        **config,
    })
    outreach = OutreachFlask(url_prefix=url_prefix)
    outreach.init_app(app)

    @app.post("/signup")
    def signup():
        enrollment = outreach.enroll("acme", request.form["email"], "onboarding")
        return jsonify(enrollment=enrollment.id, node=enrollment.current_node)

    return activated(app)


@pytest.fixture
def key():
    return new_key()


@pytest.fixture
def app(settings, data_dir, key) -> Flask:
    return flask_app(data_dir, key)


def test_app_config_becomes_the_settings(app) -> None:
    assert get_settings().secret_key == "flask-test-secret"
    assert get_settings().public_base_url == "https://hooks.acme.test"


def test_signed_webhook_is_stored(app, key) -> None:
    response = app.test_client().post(
        "/webhooks/sendgrid", data=SAMPLE_BODY, headers=signed_headers(key, SAMPLE_BODY)
    )
    assert response.status_code == 200
    assert bytes(WebhookDelivery.get().body) == SAMPLE_BODY


def test_a_webhook_whose_body_the_host_app_read_first_is_stored(app, key) -> None:
    seen = []

    @app.before_request
    def log_body():  # as request-logging middleware does
        seen.append(request.get_data())

    response = app.test_client().post(
        "/webhooks/sendgrid", data=SAMPLE_BODY, headers=signed_headers(key, SAMPLE_BODY)
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert seen == [SAMPLE_BODY] and bytes(WebhookDelivery.get().body) == SAMPLE_BODY


def test_unsigned_or_forged_webhook_gets_403_and_get_405(app) -> None:
    client = app.test_client()
    assert client.post("/webhooks/sendgrid", data=SAMPLE_BODY).status_code == 403
    forged = signed_headers(new_key(), SAMPLE_BODY)
    assert client.post("/webhooks/sendgrid", data=SAMPLE_BODY, headers=forged).status_code == 403
    assert client.get("/webhooks/sendgrid").status_code == 405
    assert WebhookDelivery.select().count() == 0


def test_oversized_webhook_gets_413(settings, data_dir, key) -> None:
    app = flask_app(data_dir, key, OUTREACH_WEBHOOK_MAX_BODY_BYTES=64)
    response = app.test_client().post(
        "/webhooks/sendgrid", data=SAMPLE_BODY, headers=signed_headers(key, SAMPLE_BODY)
    )
    assert response.status_code == 413


def test_a_webhook_while_the_database_is_down_gets_503_with_retry_after(data_dir, key) -> None:
    app = flask_app(data_dir, key, OUTREACH_DATABASE_URL="postgresql://postgres@127.0.0.1:1/none")
    response = app.test_client().post(
        "/webhooks/sendgrid", data=SAMPLE_BODY, headers=signed_headers(key, SAMPLE_BODY)
    )
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "30"
    assert response.content_type == "text/plain; charset=utf-8"


def test_unsubscribe_page_and_one_click(app) -> None:
    make_tenant("acme")
    load_plan()
    enrollment = app.test_client().post("/signup", data={"email": "ada@example.com"}).json
    url = unsubscribe_url(get_settings(), "acme", "ada@example.com", "MSG-1")
    path = url.removeprefix("https://hooks.acme.test")
    client = app.test_client()
    page = client.get(path)
    assert page.status_code == 200 and b"<form" in page.data
    head = client.head(path)  # link checkers ask HEAD wherever GET works
    assert head.status_code == 200 and head.data == b""
    assert Suppression.select().count() == 0
    # RFC 8058: the mail provider POSTs List-Unsubscribe=One-Click to the same URL.
    done = client.post(path, data={"List-Unsubscribe": "One-Click"})
    assert done.status_code == 200
    assert Suppression.get().reason == "unsubscribed"
    assert Enrollment.get_by_id(enrollment["enrollment"]).status == "exited"
    assert client.post(path, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert client.get(path[:-3] + "abc").status_code == 400


def test_the_unsubscribe_pages_show_no_address_and_cannot_be_cached_or_framed(app) -> None:
    make_tenant("acme")
    path = unsubscribe_url(get_settings(), "acme", "ada.lovelace@example.com", "MSG-1").removeprefix(
        "https://hooks.acme.test")
    client = app.test_client()
    for answer in (client.get(path), client.head(path),
                   client.post(path, data={"List-Unsubscribe": "One-Click"}), client.get(path + "x")):
        assert "lovelace" not in answer.get_data(as_text=True)
        assert_private_page(answer.headers)


def test_an_app_mailing_through_sendgrid_with_the_default_secret_does_not_start(
        settings, data_dir, key) -> None:
    # Anyone can forge a link with the public default and unsubscribe any tenant's address.
    with pytest.raises(SettingsError, match=r"^OUTREACH_SECRET_KEY is the development default.*"
                                            r"`outreach secret generate`"):
        flask_app(data_dir, key, OUTREACH_SENDGRID_API_KEY="SG.live-key",
                  OUTREACH_SECRET_KEY=DEVELOPMENT_SECRET)


def test_a_view_can_enroll(app) -> None:
    make_tenant("acme")
    load_plan()
    response = app.test_client().post("/signup", data={"email": "Ada@Example.com"})
    assert response.status_code == 200
    assert response.json["node"] == "intro"
    assert Enrollment.get_by_id(response.json["enrollment"]).contact.email == "ada@example.com"


def test_a_mistyped_setting_fails_at_start(settings, data_dir, key) -> None:
    with pytest.raises(SettingsError, match="OUTREACH_SECRET_KYE is not a known setting"):
        flask_app(data_dir, key, OUTREACH_SECRET_KYE="x")


def test_the_blueprint_mounts_under_a_prefix(settings, data_dir, key) -> None:
    app = Flask(__name__)
    app.config.update(OUTREACH_DATABASE_URL=f"sqlite:///{data_dir / 'outreach.db'}",
                      OUTREACH_BROKER_URL="stub://",
                      OUTREACH_SENDGRID_WEBHOOK_PUBLIC_KEY=public_key_of(key))
    OutreachFlask(app, url_prefix="/outreach")
    activated(app)
    response = app.test_client().post(
        "/outreach/webhooks/sendgrid", data=b"[]", headers=signed_headers(key, b"[]")
    )
    assert response.status_code == 200


def test_a_prefix_the_link_base_lacks_is_warned_about(settings, data_dir, key, caplog) -> None:
    # The workers build unsubscribe links from OUTREACH_PUBLIC_BASE_URL alone.
    import logging

    for base, warned in (("https://hooks.acme.test", True), ("https://hooks.acme.test/mail/", False)):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            app = flask_app(data_dir, key, url_prefix="/mail", OUTREACH_PUBLIC_BASE_URL=base)
        assert ("does not end with it" in caplog.text) is warned, base
        assert app.test_client().head("/mail/unsubscribe/x").status_code == 400


def test_host_events_through_the_blueprint_and_the_extension(data_dir, key, settings) -> None:
    import json
    import time

    from outreach_actors.domain.store.models import HostEvent
    from outreach_actors.web.events import sign_events

    app = flask_app(data_dir, key, OUTREACH_EVENTS_SECRET="flask-events")
    make_tenant("acme")
    body = json.dumps([{"tenant": "acme", "email": "ada@example.com", "event": "signed_up"}]).encode()
    at = int(time.time())
    response = app.test_client().post("/events", data=body, content_type="application/json", headers={
        "X-Outreach-Timestamp": str(at), "X-Outreach-Signature": sign_events("flask-events", body, at)})
    assert response.status_code == 200 and response.json["results"][0]["moved"] == 0
    assert app.extensions["outreach"].events is not None
    assert OutreachFlask.track("acme", "ada@example.com", "upgraded").stored
    assert HostEvent.select().count() == 2


def test_a_signed_inbound_parse_post_is_stored(settings, data_dir, key) -> None:
    from outreach_actors.dev.inbound_posts import inbound_headers
    from outreach_actors.domain.store.models import InboundPost

    from .test_replies import KEYS, SAMPLES

    app = flask_app(data_dir, key, OUTREACH_SENDGRID_INBOUND_PUBLIC_KEY=KEYS.public_key)
    body = (SAMPLES / "sendgrid_raw_form.txt").read_bytes()
    client = app.test_client()
    for _ in range(2):  # SendGrid's retry is stored once
        response = client.post("/webhooks/sendgrid/inbound", data=body,
                               headers=inbound_headers(body, KEYS.private_key_pem))
        assert response.status_code == 200
    assert bytes(InboundPost.get().body) == body
    assert client.post("/webhooks/sendgrid/inbound", data=body,
                       headers=inbound_headers(body, None)).status_code == 403
