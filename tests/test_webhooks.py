"""The webhook receiver and the standalone WSGI app: signatures, replay window, size, storage.

Requests are signed the way SendGrid signs them, base64(ECDSA-P256-SHA256(timestamp +
body)), with the sample's private key or keys made here.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import threading
import time
import urllib.error
import urllib.request
from datetime import timedelta
from wsgiref.util import setup_testing_defaults

import dramatiq
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from outreach_actors.domain.store import models
from outreach_actors.domain.store.db import database_from_url
from outreach_actors.domain.store.models import MessageEvent, Suppression, WebhookDelivery
from outreach_actors.domain.unsubscribe import (
    InvalidUnsubscribeToken,
    UnsubscribeToken,
    make_token,
    read_token,
    unsubscribe_url,
)
from outreach_actors.settings import SettingsError, configure
from outreach_actors.web.app import http_server, make_app
from outreach_actors.web.webhooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SendGridWebhookReceiver,
)
from outreach_actors.worker.actors.webhooks import normalize_webhook
from outreach_actors.worker.runtime import rebind_actors

from .conftest import make_settings
from .factories import make_tenant, normalize_delivery
from .test_events import SAMPLE_BODY, SAMPLES

SIGNED_SAMPLE = json.loads((SAMPLES / "sendgrid_signed_request.json").read_text())
SAMPLE_KEY = serialization.load_pem_private_key(
    SIGNED_SAMPLE["private_key_pem"].encode(), password=None
)
TEN_YEARS = timedelta(days=3650)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def public_key_of(private_key: ec.EllipticCurvePrivateKey) -> str:
    """The key as SendGrid shows it: base64 DER, no PEM armour."""
    der = private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


def signed_headers(private_key: ec.EllipticCurvePrivateKey, body: bytes,
                   timestamp: int | None = None) -> dict[str, str]:
    timestamp = int(time.time()) if timestamp is None else timestamp
    signature = private_key.sign(str(timestamp).encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        SIGNATURE_HEADER: base64.b64encode(signature).decode(),
        TIMESTAMP_HEADER: str(timestamp),
        "Content-Type": "application/json",
    }


def post(receiver: SendGridWebhookReceiver, body: bytes, headers: dict[str, str],
         content_length: int | None = -1):
    length = len(body) if content_length == -1 else content_length
    return receiver.receive(headers, io.BytesIO(body).read, length)


@pytest.fixture
def webhooks_queue(stub_broker):
    """The stub broker's queue that the receiver enqueues deliveries on."""
    rebind_actors(stub_broker, [normalize_webhook])
    stub_broker.declare_queue(normalize_webhook.queue_name)
    return stub_broker.queues[normalize_webhook.queue_name]


@pytest.fixture
def host_runtime():
    """Undo what a host app's start (``activate``) did to the process: broker and database."""
    broker = dramatiq.get_broker()
    actors = {*broker.actors.values(), normalize_webhook}
    bindings = {actor: actor.broker for actor in actors}
    database = models.database_proxy.obj
    yield
    if models.database_proxy.obj is not database:
        models.database_proxy.obj.close()
        models.bind(database)
    dramatiq.set_broker(broker)
    for actor, bound in bindings.items():
        actor.broker = bound


def activated(app):
    """The app, with the webhook actor on the broker its start installed.

    Until the actors package imports the webhook actor, it is not among the
    actors that ``activate`` moves, so the test moves it.
    """
    rebind_actors(dramatiq.get_broker(), [normalize_webhook])
    return app


@pytest.fixture
def key():
    return new_key()


@pytest.fixture
def receiver(settings, data_dir, key):
    current = make_settings(data_dir, sendgrid_webhook_public_key=public_key_of(key))
    configure(current)
    return SendGridWebhookReceiver(current)


def test_the_signed_sample_is_stored_raw_and_enqueued(settings, data_dir, webhooks_queue) -> None:
    # The sample was signed in 2025: a wide replay window lets its timestamp through.
    current = make_settings(data_dir, sendgrid_webhook_public_key=SIGNED_SAMPLE["public_key"],
                            webhook_replay_window=TEN_YEARS)
    reply = post(SendGridWebhookReceiver(current), SAMPLE_BODY, SIGNED_SAMPLE["headers"])
    assert reply.status == 200
    delivery = WebhookDelivery.get()
    assert bytes(delivery.body) == SAMPLE_BODY
    assert delivery.status == "received"
    assert delivery.headers[TIMESTAMP_HEADER.lower()] == SIGNED_SAMPLE["headers"][TIMESTAMP_HEADER]
    [message] = webhooks_queue.queue
    assert json.loads(message)["args"] == [delivery.id]


def test_a_signed_body_that_is_not_json_is_stored_and_fails_normalization(
    receiver, key, webhooks_queue
) -> None:
    # Given a verified request whose body does not parse: it is kept, not refused.
    body = b'[{"event": "open", "email": '
    assert post(receiver, body, signed_headers(key, body)).status == 200
    delivery = WebhookDelivery.get()
    assert bytes(delivery.body) == body
    assert normalize_delivery(delivery.id).status == "failed"
    assert "not valid JSON" in WebhookDelivery.get_by_id(delivery.id).error


def test_posted_events_reach_the_database_through_the_actor(
    receiver, key, webhooks_queue, stub_broker
) -> None:
    body = json.dumps([{"event": "account_status_change", "timestamp": 1763790280,
                        "sg_event_id": "acct-1", "type": "compliance_suspend"}]).encode()
    worker = dramatiq.Worker(stub_broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        assert post(receiver, body, signed_headers(key, body)).status == 200
        stub_broker.join(normalize_webhook.queue_name)
        worker.join()
    finally:
        worker.stop()
    assert WebhookDelivery.get().status == "processed"
    assert MessageEvent.get().event_key == "sg:acct-1"


def test_a_signed_event_whose_tenant_is_a_list_is_refused_and_moves_no_one(
    receiver, key, webhooks_queue
) -> None:
    # Given Ada, a contact of globex, and a signed batch about her message that names
    # its tenant as ["acme"]: read as no tenant at all, it would skip the tenant check.
    from outreach_actors.domain import engine

    from .factories import load_plan
    from .test_ingest import make_message

    make_tenant("acme")
    make_tenant("globex", sender="sales@globex.test")
    load_plan(tenant_id="globex")
    enrollment = engine.enroll("globex", "ada@example.com", "onboarding")
    make_message("MSG-G", "ada@example.com", tenant="globex", enrollment=enrollment, node="intro")
    base = {"email": "ada@example.com", "timestamp": int(time.time()),
            "outreach_message_id": "MSG-G", "outreach_tenant": ["acme"]}
    body = json.dumps([{**base, "event": "spamreport", "sg_event_id": "listed-report"},
                       {**base, "event": "click", "sg_event_id": "listed-click",
                        "url": "https://example.com/start"}]).encode()
    assert post(receiver, body, signed_headers(key, body)).status == 200
    delivery = WebhookDelivery.get()

    result = normalize_delivery(delivery.id)

    assert (result.status, result.stored, result.refused) == ("processed", 0, 2)
    assert MessageEvent.select().count() == 0 and Suppression.select().count() == 0
    ada = models.Enrollment.get_by_id(enrollment.id)
    assert (ada.status, ada.current_node) == ("active", "intro")
    error = WebhookDelivery.get_by_id(delivery.id).error
    assert "listed-report: refused, its outreach_tenant is an array" in error
    assert bytes(WebhookDelivery.get_by_id(delivery.id).body) == body  # kept as received


def test_the_signed_sample_is_stale_under_the_default_window(settings, data_dir) -> None:
    current = make_settings(data_dir, sendgrid_webhook_public_key=SIGNED_SAMPLE["public_key"])
    reply = post(SendGridWebhookReceiver(current), SAMPLE_BODY, SIGNED_SAMPLE["headers"])
    assert reply.status == 403 and "replay window" in reply.body
    assert WebhookDelivery.select().count() == 0


def test_a_request_signed_now_with_our_key_is_accepted(receiver, key, webhooks_queue) -> None:
    reply = post(receiver, SAMPLE_BODY, signed_headers(key, SAMPLE_BODY))
    assert reply.status == 200
    assert WebhookDelivery.select().count() == 1 and len(webhooks_queue.queue) == 1


def test_the_sample_key_signs_new_requests_too(settings, data_dir, webhooks_queue) -> None:
    current = make_settings(data_dir, sendgrid_webhook_public_key=SIGNED_SAMPLE["public_key"])
    reply = post(SendGridWebhookReceiver(current), b"[]", signed_headers(SAMPLE_KEY, b"[]"))
    assert reply.status == 200


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda h, b: (h, b + b" "), "signature does not match"),
        (lambda h, b: ({**h, SIGNATURE_HEADER: "not base64!"}, b), "signature does not match"),
        (lambda h, b: ({**h, SIGNATURE_HEADER: "QUJD"}, b), "signature does not match"),
        (lambda h, b: ({**h, SIGNATURE_HEADER: "abc"}, b), "signature does not match"),  # padding
        (lambda h, b: ({**h, TIMESTAMP_HEADER: str(int(h[TIMESTAMP_HEADER]) + 1)}, b),
         "signature does not match"),
        (lambda h, b: ({**h, TIMESTAMP_HEADER: "yesterday"}, b), "not a Unix time"),
        (lambda h, b: ({k: v for k, v in h.items() if k != SIGNATURE_HEADER}, b), "are required"),
        (lambda h, b: ({k: v for k, v in h.items() if k != TIMESTAMP_HEADER}, b), "are required"),
        (lambda h, b: (h, b"\xff" + b), "does not match"),
    ],
)
def test_bad_signatures_get_403_and_store_nothing(receiver, key, tamper, reason) -> None:
    headers, body = tamper(signed_headers(key, SAMPLE_BODY), SAMPLE_BODY)
    reply = post(receiver, body, headers)
    assert reply.status == 403 and reason in reply.body
    assert WebhookDelivery.select().count() == 0


def test_a_request_signed_with_another_key_gets_403(receiver) -> None:
    reply = post(receiver, SAMPLE_BODY, signed_headers(new_key(), SAMPLE_BODY))
    assert reply.status == 403


@pytest.mark.parametrize("skew", [-11 * 60, 11 * 60])
def test_timestamps_outside_the_replay_window_get_403(receiver, key, skew: int) -> None:
    headers = signed_headers(key, SAMPLE_BODY, int(time.time()) + skew)
    reply = post(receiver, SAMPLE_BODY, headers)
    assert reply.status == 403 and "replay window" in reply.body


def test_the_replay_window_is_a_setting(settings, data_dir, key, webhooks_queue) -> None:
    current = make_settings(data_dir, sendgrid_webhook_public_key=public_key_of(key),
                            webhook_replay_window=timedelta(minutes=30))
    headers = signed_headers(key, SAMPLE_BODY, int(time.time()) - 20 * 60)
    assert post(SendGridWebhookReceiver(current), SAMPLE_BODY, headers).status == 200


def test_oversized_bodies_get_413_by_length_or_by_content(settings, data_dir, key) -> None:
    current = make_settings(data_dir, sendgrid_webhook_public_key=public_key_of(key),
                            webhook_max_body_bytes=100)
    receiver = SendGridWebhookReceiver(current)
    body = b"[" + b" " * 200 + b"]"
    headers = signed_headers(key, body)
    assert post(receiver, body, headers).status == 413
    # A client that does not say its length (or lies) is cut off after the limit.
    assert post(receiver, body, headers, content_length=None).status == 413
    assert post(receiver, body, headers, content_length=10).status == 413
    assert WebhookDelivery.select().count() == 0


def test_without_a_key_webhooks_are_refused_unless_unsigned_is_allowed(
    settings, data_dir, webhooks_queue, caplog
) -> None:
    with caplog.at_level(logging.WARNING):
        refusing = SendGridWebhookReceiver(make_settings(data_dir))
    assert "every SendGrid webhook is refused" in caplog.text
    assert post(refusing, SAMPLE_BODY, {}).status == 403
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        unsigned = SendGridWebhookReceiver(
            make_settings(data_dir, sendgrid_webhook_allow_unsigned=True)
        )
    assert "Unsigned webhooks accepted" in caplog.text
    assert post(unsigned, SAMPLE_BODY, {}).status == 200
    assert WebhookDelivery.select().count() == 1


def test_a_bad_public_key_fails_at_start(data_dir) -> None:
    with pytest.raises(SettingsError, match="OUTREACH_SENDGRID_WEBHOOK_PUBLIC_KEY"):
        SendGridWebhookReceiver(make_settings(data_dir, sendgrid_webhook_public_key="bm9wZQ=="))


def test_a_pem_armoured_public_key_is_accepted(settings, data_dir, key, webhooks_queue) -> None:
    armoured = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    receiver = SendGridWebhookReceiver(
        make_settings(data_dir, sendgrid_webhook_public_key=armoured)
    )
    assert post(receiver, b"[]", signed_headers(key, b"[]")).status == 200


def test_credentials_are_not_stored_with_the_headers(receiver, key, webhooks_queue) -> None:
    headers = {**signed_headers(key, b"[]"), "Authorization": "Bearer secret"}
    post(receiver, b"[]", headers)
    stored = WebhookDelivery.get().headers
    assert "authorization" not in stored and stored["content-type"] == "application/json"


def test_a_database_outage_answers_503_so_sendgrid_retries(
    receiver, key, data_dir, host_runtime
) -> None:
    # Given a database nobody listens on: storing fails, and the answer says "later".
    models.bind(database_from_url("postgresql://postgres@127.0.0.1:1/none",
                                  make_settings(data_dir)))
    reply = post(receiver, SAMPLE_BODY, signed_headers(key, SAMPLE_BODY))
    assert reply.status == 503
    assert reply.headers()["Retry-After"] == "30"


def test_the_wsgi_app_says_when_to_retry_a_503(data_dir, key, host_runtime) -> None:
    from werkzeug.test import Client

    app = activated(make_app(make_settings(
        data_dir, database_url="postgresql://postgres@127.0.0.1:1/none",
        sendgrid_webhook_public_key=public_key_of(key))))
    response = Client(app).post("/webhooks/sendgrid", data=SAMPLE_BODY,
                                headers=signed_headers(key, SAMPLE_BODY))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "30"
    assert response.headers["Content-Length"] == str(len(response.data))


def test_enrolling_while_the_database_is_down_says_so_to_the_host_app(data_dir, host_runtime) -> None:
    from outreach_actors.contrib import OutreachUnavailable, enroll

    models.bind(database_from_url("postgresql://postgres@127.0.0.1:1/none",
                                  make_settings(data_dir)))
    with pytest.raises(OutreachUnavailable, match="cannot be reached"):
        enroll("acme", "ada@example.com", "onboarding")


# --- the standalone WSGI app ------------------------------------------------------------------

def call(app, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None):
    environ: dict = {"REQUEST_METHOD": method, "PATH_INFO": path,
                     "CONTENT_LENGTH": str(len(body)), "wsgi.input": io.BytesIO(body)}
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    setup_testing_defaults(environ)
    status: list[str] = []
    chunks = app(environ, lambda s, h: status.append(s))
    return int(status[0].split()[0]), b"".join(chunks).decode()


@pytest.fixture
def wsgi_app(settings, data_dir, key, host_runtime):
    return activated(make_app(make_settings(data_dir, sendgrid_webhook_public_key=public_key_of(key))))


def test_wsgi_app_routes_the_webhook(wsgi_app, key) -> None:
    status, _ = call(wsgi_app, "POST", "/webhooks/sendgrid", SAMPLE_BODY,
                     signed_headers(key, SAMPLE_BODY))
    assert status == 200 and WebhookDelivery.select().count() == 1
    assert call(wsgi_app, "GET", "/webhooks/sendgrid")[0] == 405
    assert call(wsgi_app, "POST", "/webhooks/sendgrid", SAMPLE_BODY, {})[0] == 403
    assert call(wsgi_app, "GET", "/elsewhere")[0] == 404


def test_wsgi_app_serves_unsubscribe_links(wsgi_app) -> None:
    make_tenant("acme")
    token = make_token(wsgi_app.endpoints.settings, "acme", "Ada@Example.com", "MSG-1")
    status, page = call(wsgi_app, "GET", f"/unsubscribe/{token}")
    assert status == 200 and 'method="post"' in page and "this email was sent to" in page
    assert Suppression.select().count() == 0  # a GET (a link scanner) changes nothing
    assert call(wsgi_app, "HEAD", f"/unsubscribe/{token}") == (200, "")  # a link checker
    assert Suppression.select().count() == 0
    status, page = call(wsgi_app, "POST", f"/unsubscribe/{token}", b"List-Unsubscribe=One-Click")
    assert status == 200 and "no more" in page
    assert Suppression.get().source == "one-click:MSG-1"
    assert call(wsgi_app, "POST", f"/unsubscribe/{token}x")[0] == 400


def assert_private_page(headers) -> None:
    """What every unsubscribe page carries: never cached, never sent on as a referrer (its
    URL holds the token), never framed, its type never guessed."""
    assert headers["Cache-Control"] == "no-store"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_no_unsubscribe_page_shows_the_address_or_can_be_cached_framed_or_referred(
        wsgi_app) -> None:
    from werkzeug.test import Client

    # A link scanner, or whoever the mail was forwarded to, opens the link.
    make_tenant("acme")
    settings = wsgi_app.endpoints.settings
    token = make_token(settings, "acme", "Ada.Lovelace@Example.com", "MSG-1")
    gone = make_token(settings, "gone", "Ada.Lovelace@Example.com", "MSG-1")
    client = Client(wsgi_app)
    answers = {
        "form": client.get(f"/unsubscribe/{token}"),
        "head": client.head(f"/unsubscribe/{token}"),
        "done": client.post(f"/unsubscribe/{token}", data=b"List-Unsubscribe=One-Click"),
        "list gone": client.get(f"/unsubscribe/{gone}"),
        "bad link": client.get(f"/unsubscribe/{token}x"),
        "bad method": client.put(f"/unsubscribe/{token}"),
    }
    assert {name: answer.status_code for name, answer in answers.items()} == {
        "form": 200, "head": 200, "done": 200, "list gone": 404, "bad link": 400, "bad method": 405}
    for name, answer in answers.items():
        assert "lovelace" not in answer.get_data(as_text=True).lower(), name
        assert_private_page(answer.headers)


def test_a_link_of_a_deleted_tenant_says_the_list_is_gone(wsgi_app) -> None:
    token = make_token(wsgi_app.endpoints.settings, "gone", "ada@example.com", "MSG-1")
    for method in ("GET", "POST"):
        status, page = call(wsgi_app, method, f"/unsubscribe/{token}")
        assert status == 404 and "no longer exists" in page and 'method="post"' not in page
    assert Suppression.select().count() == 0


def test_the_unsubscribe_form_is_shown_while_the_database_is_down(data_dir, host_runtime) -> None:
    from outreach_actors.web.unsubscribe import UnsubscribePage

    current = make_settings(data_dir, secret_key="s1")
    models.bind(database_from_url("postgresql://postgres@127.0.0.1:1/none", current))
    reply = UnsubscribePage(current).respond(
        "GET", make_token(current, "acme", "ada@example.com", "MSG-1"))
    assert reply.status == 200 and 'method="post"' in reply.body


def test_outreach_serve_answers_over_http(settings, data_dir, key, host_runtime) -> None:
    app = activated(make_app(
        make_settings(data_dir, sendgrid_webhook_public_key=public_key_of(key))
    ))
    server = http_server("127.0.0.1", 0, app)  # what `outreach serve` runs
    threading.Thread(target=server.run, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.effective_port}/webhooks/sendgrid"
        request = urllib.request.Request(url, data=SAMPLE_BODY,
                                         headers=signed_headers(key, SAMPLE_BODY))
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(url, data=b"[]"), timeout=5)
        assert refused.value.code == 403
    finally:
        server.close()
    assert WebhookDelivery.select().count() == 1


# --- unsubscribe tokens ---------------------------------------------------------------------

def test_unsubscribe_tokens_round_trip_and_resist_tampering(data_dir) -> None:
    current = make_settings(data_dir, secret_key="s1", public_base_url="https://hooks.acme.test/")
    url = unsubscribe_url(current, "acme", "Ada@Example.com", "MSG-1")
    assert url.startswith("https://hooks.acme.test/unsubscribe/")
    token = url.rsplit("/", 1)[1]
    request = read_token(current, token)
    assert (request.tenant_id, request.email, request.message_id) == (
        "acme", "ada@example.com", "MSG-1"
    )
    for bad in [token[:-2], token + "x", "", "garbage.token"]:
        with pytest.raises(InvalidUnsubscribeToken):
            read_token(current, bad)
    with pytest.raises(InvalidUnsubscribeToken):
        read_token(make_settings(data_dir, secret_key="s2"), token)


def test_the_address_cannot_be_read_from_the_link(data_dir) -> None:
    current = make_settings(data_dir, secret_key="s1")
    token = make_token(current, "acme", "ada.lovelace@example.com", "MSG-1")
    decoded = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    assert b"lovelace" not in decoded and b"acme" not in decoded
    assert "=" not in token and "/" not in token and "+" not in token


def test_links_of_earlier_versions_signed_not_encrypted_keep_working(data_dir) -> None:
    from itsdangerous import URLSafeSerializer

    from outreach_actors.domain.unsubscribe import TOKEN_SALT
    from outreach_actors.settings import settings_from_mapping

    # What make_token wrote before tokens were encrypted, with the secret since rotated.
    old_link = URLSafeSerializer("old-secret", salt=TOKEN_SALT).dumps(
        ["acme", "ada@example.com", "MSG-1"])
    rotated = settings_from_mapping({"OUTREACH_SECRET_KEY": "new-secret",
                                     "OUTREACH_SECRET_KEY_FALLBACKS": "old-secret"})
    assert read_token(rotated, old_link) == UnsubscribeToken("acme", "ada@example.com", "MSG-1")
    with pytest.raises(InvalidUnsubscribeToken):
        read_token(make_settings(data_dir, secret_key="new-secret"), old_link)
    forged = URLSafeSerializer("old-secret", salt="another-salt").dumps(["acme", "x@y.z", "M"])
    with pytest.raises(InvalidUnsubscribeToken):
        read_token(rotated, forged)


def test_links_signed_before_a_secret_rotation_keep_working(data_dir) -> None:
    from outreach_actors.settings import settings_from_mapping

    before = make_settings(data_dir, secret_key="old-secret")
    old_link = make_token(before, "acme", "ada@example.com", "MSG-1")
    rotated = settings_from_mapping({"OUTREACH_SECRET_KEY": "new-secret",
                                     "OUTREACH_SECRET_KEY_FALLBACKS": "older-secret, old-secret"})
    assert rotated.secret_key_fallbacks == ["older-secret", "old-secret"]
    assert read_token(rotated, old_link).email == "ada@example.com"
    # New links are signed with the new secret only: the old one alone refuses them.
    new_link = make_token(rotated, "acme", "bob@example.com", "MSG-2")
    assert read_token(make_settings(data_dir, secret_key="new-secret"), new_link).email == (
        "bob@example.com")
    with pytest.raises(InvalidUnsubscribeToken):
        read_token(before, new_link)
    # Once the old secret is dropped from the fallbacks, its links stop working.
    with pytest.raises(InvalidUnsubscribeToken):
        read_token(make_settings(data_dir, secret_key="new-secret"), old_link)


def test_an_unsubscribe_while_the_database_is_down_is_queued_then_applied(
        settings, sqlite_db, stub_broker, host_runtime) -> None:
    # Mailbox providers do not retry a one-click POST: it must not be lost to an outage.
    from outreach_actors.domain.suppressions import is_suppressed
    from outreach_actors.web.unsubscribe import UnsubscribePage
    from outreach_actors.worker.actors.webhooks import apply_unsubscribe

    make_tenant("acme")
    token = make_token(settings, "acme", "Ada@Example.com", "MSG-1")
    page = UnsubscribePage(settings)
    # Given the database down
    models.bind(database_from_url("postgresql://postgres@127.0.0.1:1/none", settings))
    reply = page.respond("POST", token)
    # Then the page says it is done, and the workers hold it
    assert reply.status == 200 and "no more" in reply.body
    [queued] = stub_broker.queues["webhooks"].queue
    assert json.loads(queued)["actor_name"] == "apply_unsubscribe"
    # When the database is back, the worker applies it (twice changes nothing more)
    models.bind(sqlite_db)
    apply_unsubscribe(*json.loads(queued)["args"])
    apply_unsubscribe(*json.loads(queued)["args"])
    assert is_suppressed("acme", "ada@example.com")
    assert Suppression.select().count() == 1


def test_an_unsubscribe_that_neither_the_database_nor_the_broker_takes_gets_503(
        settings, host_runtime) -> None:
    from outreach_actors.web.unsubscribe import UnsubscribePage
    from outreach_actors.worker.actors.webhooks import apply_unsubscribe
    from outreach_actors.worker.broker import make_broker

    token = make_token(settings, "acme", "ada@example.com", "MSG-1")
    rebind_actors(make_broker(make_settings(settings.data_dir, broker_url="redis://127.0.0.1:1/0")),
                  [apply_unsubscribe])
    models.bind(database_from_url("postgresql://postgres@127.0.0.1:1/none", settings))
    reply = UnsubscribePage(settings).respond("POST", token)
    assert reply.status == 503 and reply.headers()["Retry-After"] == "30"
