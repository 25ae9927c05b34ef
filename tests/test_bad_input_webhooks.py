"""Bad input, part 2: the webhook endpoint and the ingest of what it stored, under random input.

Requests go to the real WSGI app (``make_app``) with a real key pair, on SQLite and on
PostgreSQL: the status is never a 5xx, a bad signature is a 403 that stores nothing, and
every correctly signed body is stored, whatever it holds. Each stored delivery is then
normalized: only the documented retryable error may escape, and a body that does not
parse stays ``failed`` with its error.
"""

from __future__ import annotations

import io
import json
import time
import tracemalloc
from dataclasses import dataclass
from typing import Any

import dramatiq
import peewee
import pytest
from hypothesis import given
from hypothesis import strategies as st

from outreach_actors.dev.webhook_events import WebhookKeys, generate_webhook_keys, sign_webhook
from outreach_actors.domain import engine, ingest
from outreach_actors.domain.store import models
from outreach_actors.domain.store.models import (
    MessageEvent,
    OutboundMessage,
    Suppression,
    WebhookDelivery,
)
from outreach_actors.domain.unsubscribe import make_token
from outreach_actors.providers.sendgrid.events import SENDGRID_KEYS
from outreach_actors.settings import Settings, configure
from outreach_actors.web.app import OutreachWSGI, make_app
from outreach_actors.web.webhooks import SIGNATURE_HEADER, TIMESTAMP_HEADER
from outreach_actors.worker.actors.webhooks import normalize_webhook
from outreach_actors.worker.runtime import rebind_actors

from .conftest import POSTGRES_URL, make_settings
from .factories import load_plan, make_tenant, normalize_delivery
from .test_bad_input import fuzz

MESSAGE_ID = "msg_fuzz"
REFUSALS = {400, 403, 411, 413}


@dataclass
class Endpoint:
    app: OutreachWSGI
    keys: WebhookKeys
    settings: Settings
    database: str


@pytest.fixture(params=["sqlite", "postgresql"])
def endpoint(request, data_dir):
    """The WSGI app on a fresh database, with one enrolled contact and its sent message.

    The process's broker, database and settings are put back afterwards (``make_app``
    installs its own, as a host app's start does).
    """
    request.getfixturevalue("sqlite_db" if request.param == "sqlite" else "postgres_db")
    url = f"sqlite:///{data_dir / 'outreach.db'}" if request.param == "sqlite" else POSTGRES_URL
    broker, database = dramatiq.get_broker(), models.database_proxy.obj
    actors = {*broker.actors.values(), normalize_webhook}
    bindings = {actor: actor.broker for actor in actors}
    keys = generate_webhook_keys()
    settings = make_settings(data_dir, database_url=url, sendgrid_webhook_public_key=keys.public_key)
    app = make_app(settings)
    rebind_actors(dramatiq.get_broker(), [normalize_webhook])
    make_tenant("acme")
    load_plan()
    enrollment = engine.enroll("acme", "ada@example.com", "onboarding")
    OutboundMessage.create(
        id=MESSAGE_ID, tenant="acme", enrollment=enrollment, node="intro",
        dedupe_key="fuzz:1", status=OutboundMessage.SENT, to_email="ada@example.com",
        from_email="sales@acme.test", subject="s", html="<p>h</p>", text="h",
        provider_message_id="X-FUZZ",
    )
    yield Endpoint(app, keys, settings, request.param)
    bound = models.database_proxy.obj
    bound.close_all() if hasattr(bound, "close_all") else bound.close()
    models.bind(database)
    dramatiq.set_broker(broker)
    for actor, original in bindings.items():
        actor.broker = original
    configure(None)


def call(app: OutreachWSGI, environ: dict[str, Any]) -> tuple[int, str]:
    """One request through the WSGI interface, as a server would make it."""
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/webhooks/sendgrid",
               "SERVER_NAME": "fuzz", "SERVER_PORT": "80", "wsgi.url_scheme": "http",
               "SERVER_PROTOCOL": "HTTP/1.1", **environ}
    statuses: list[str] = []
    chunks = app(environ, lambda status, headers, exc_info=None: statuses.append(status))
    return int(statuses[0].split()[0]), b"".join(chunks).decode()


def http_header(name: str) -> str:
    return "HTTP_" + name.upper().replace("-", "_")


# -- strategies: bodies -------------------------------------------------------------------

# Text SendGrid fields could carry that databases refuse, besides ordinary text.
NASTY_TEXT = st.sampled_from(["\x00", "a\x00b", "\ud800", "x\udfffy", "\u2028", "\r\n", "é",
                              "\ufeff", "x" * 300, "ada@example.com", "ACME", MESSAGE_ID])
JSON_SCALARS = (
    st.none() | st.booleans() | st.integers() | st.sampled_from([10**30, -(10**30), 2**63])
    | st.floats() | st.text(max_size=30) | NASTY_TEXT
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6) | NASTY_TEXT, children, max_size=4),
    max_leaves=10,
)
EVENT_KEYS = st.sampled_from(sorted(SENDGRID_KEYS | {"outreach_message_id", "outreach_tenant"}))
EVENT_NAMES = st.sampled_from(["processed", "deferred", "delivered", "bounce", "dropped", "open",
                               "click", "spamreport", "unsubscribe", "group_unsubscribe",
                               "group_resubscribe", "account_status_change"])


@st.composite
def sendgrid_events(draw: st.DrawFn) -> dict[str, Any]:
    """An event shaped like SendGrid's, any field of any type; often naming our message."""
    event: dict[str, Any] = {"event": draw(EVENT_NAMES | JSON_SCALARS)}
    if draw(st.booleans()):
        event.update(outreach_message_id=MESSAGE_ID, outreach_tenant=draw(
            st.sampled_from(["acme", "other"]) | JSON_SCALARS))
    event.update(draw(st.dictionaries(EVENT_KEYS | st.text(max_size=6), JSON_VALUES, max_size=8)))
    return event


def _json(value: Any) -> bytes:
    # allow_nan: SendGrid would not send NaN, but Python's json reads it, so we must cope.
    return json.dumps(value).encode()


BODIES = (
    st.lists(sendgrid_events(), max_size=6).map(_json)
    | JSON_VALUES.map(_json)
    | st.lists(JSON_VALUES, max_size=5).map(_json)
    | st.binary(max_size=200)
    | st.text(max_size=200).map(str.encode)
    | st.integers(100, 5_000).map(lambda depth: b"[" * depth + b"]" * depth)
    | st.integers(100, 5_000).map(
        lambda depth: b'[{"event": "open", "deep": ' + b"[" * depth + b"]" * depth + b"}]")
)
# Bodies that broke parsing or storing once; each is posted in every run, not left to chance.
ADVERSARIAL_BODIES = {
    "empty": b"", "empty array": b"[]", "object": b"{}", "null": b"null",
    "deep array": b"[" * 100_000, "unclosed deep array": b"[" * 999 + b"]" * 998,
    "5,000-digit number": b"[1" + b"0" * 5_000 + b"]",
    "5,000-digit timestamp": b'[{"timestamp": "' + b"9" * 5_000 + b'"}]',
    "BOM": b"\xef\xbb\xbf[]", "NaN": b"[NaN, Infinity, -Infinity]", "overflow": b"[1e999]",
    "NUL in fields": b'[{"event": "open", "email": "\\u0000", "sg_event_id": "a\\u0000",'
    b' "sg_message_id": "\\u0000", "outreach_message_id": "\\u0000",'
    b' "outreach_tenant": "\\u0000"}]',
    "lone surrogates in fields": b'[{"event": "\\ud800", "email": "\\udfff",'
    b' "sg_event_id": "\\ud800", "sg_message_id": "\\ud800", "outreach_tenant": "\\ud800"}]',
    "UTF-16": "[]".encode("utf-16"), "not UTF-8": b'[{"email": "\xff"}]',
    "mixed elements": b'[{"a": 1}, 2, "x", null, [], true]',
    "long texts": json.dumps([{"event": "bounce", "email": "x" * 10_000, "reason": "y" * 100_000,
                              "outreach_tenant": "t" * 1_000, "sg_event_id": "e" * 1_000,
                              "sg_message_id": "m" * 1_000}]).encode(),
    "our message, long address": json.dumps([
        {"event": kind, "email": "x" * 300 + "@example.com", "outreach_message_id": MESSAGE_ID,
         "outreach_tenant": "acme", "type": "bounce", "reason": "Bounced Address"}
        for kind in ("bounce", "dropped", "spamreport", "unsubscribe")]).encode(),
    "our message, odd groups": json.dumps([
        {"event": kind, "asm_group_id": group, "outreach_message_id": MESSAGE_ID,
         "outreach_tenant": "acme", "email": "ada@example.com", "timestamp": stamp}
        for stamp, group in enumerate([{"id": 1}, "g" * 300, "a\x00b", None, [1, 2], 1.5])
        for kind in ("group_unsubscribe", "group_resubscribe")]).encode(),
}


# -- strategies: headers ------------------------------------------------------------------

@dataclass(frozen=True)
class Signing:
    kind: str  # valid | missing-signature | missing-timestamp | garbage | other-key | stale | tampered
    garbage: str = ""


SIGNINGS = st.one_of(
    st.sampled_from([Signing("valid")] * 3 + [
        Signing("missing-signature"), Signing("missing-timestamp"), Signing("other-key"),
        Signing("stale"), Signing("tampered"), Signing("huge-timestamp"),
    ]),
    # WSGI header values are latin-1 text: anything a client may send.
    st.builds(Signing, st.just("garbage"),
              st.binary(max_size=120).map(lambda raw: raw.decode("latin-1"))),
    st.builds(Signing, st.just("garbage-timestamp"),
              st.text(max_size=30).map(lambda text: text.encode("utf-8").decode("latin-1"))),
)
LENGTHS = st.sampled_from(["exact", "exact", "exact", "missing", "chunked", "garbage",
                           "negative", "shorter", "huge-digits"])
OTHER_KEYS = generate_webhook_keys()


def signed_environ(keys: WebhookKeys, body: bytes, signing: Signing, length: str) -> dict:
    """The environ of one request, and whether it is correctly signed for exactly ``body``."""
    now = str(int(time.time()))
    headers = {"Content-Type": "application/json", "User-Agent": "SendGrid Event API"}
    if signing.kind not in {"missing-signature", "garbage"}:
        timestamp = {"stale": str(int(now) - 3_600), "huge-timestamp": "9" * 400,
                     "garbage-timestamp": signing.garbage}.get(signing.kind, now)
        key = OTHER_KEYS if signing.kind == "other-key" else keys
        signed = body + b" " if signing.kind == "tampered" else body
        headers[SIGNATURE_HEADER] = sign_webhook(signed, timestamp, key.private_key_pem)
        if signing.kind != "missing-timestamp":
            headers[TIMESTAMP_HEADER] = timestamp
    if signing.kind == "garbage":
        headers[SIGNATURE_HEADER], headers[TIMESTAMP_HEADER] = signing.garbage, now
    environ = {http_header(name): value for name, value in headers.items()}
    environ["CONTENT_TYPE"] = headers["Content-Type"]
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = {
        "exact": str(len(body)), "missing": "", "chunked": "", "garbage": "twelve",
        "negative": "-1", "shorter": str(max(len(body) - 1, 0)), "huge-digits": "9" * 5_000,
    }[length]
    if length == "chunked":
        environ["wsgi.input_terminated"] = True
    return environ


def stores_it(signing: Signing, length: str, body: bytes) -> bool:
    """Whether this request is authentic for the body the receiver will read."""
    read_whole_body = length in {"exact", "chunked"} or (
        length in {"shorter", "negative"} and not body
    )
    return signing.kind == "valid" and read_whole_body


def is_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# Known bugs (reported to ingest.py / suppressions.py): on PostgreSQL a value from an event
# about one of our messages that a column refuses (an address over 255 characters, a NUL
# in an ASM group id) raises out of normalize_delivery, and the delivery stays `received`.
KNOWN_POSTGRES_REFUSALS = ("value too long for type character varying",
                           "A string literal cannot contain NUL")


# -- the properties ---------------------------------------------------------------------------

@fuzz(60)
@given(body=BODIES, signing=SIGNINGS, length=LENGTHS)
def test_random_requests_get_no_5xx_bad_signatures_403_and_signed_bodies_are_stored(
    endpoint: Endpoint, body: bytes, signing: Signing, length: str
) -> None:
    before = WebhookDelivery.select().count()

    status, reply = call(endpoint.app, signed_environ(endpoint.keys, body, signing, length))

    stored = WebhookDelivery.select().count() - before
    if stores_it(signing, length, body) and not is_utf8(body) and status == 403:
        # Known gap (reported to webhooks.py): a signed body that is not UTF-8 is refused,
        # because SendGrid's helper verifies text; see the xfail test below.
        assert "not UTF-8" in reply and stored == 0
    elif stores_it(signing, length, body):
        assert (status, stored) == (200, 1), reply
        delivery = WebhookDelivery.select().order_by(WebhookDelivery.id.desc()).get()
        assert bytes(delivery.body) == body
        check_normalization(delivery.id, body)
    else:
        assert status in REFUSALS, f"{status}: {reply}"
        assert stored == 0
        if signing.kind != "valid" and length in {"exact", "chunked"}:
            assert status == 403, reply


def check_normalization(delivery_id: int, body: bytes) -> None:
    """Normalize twice: only the retryable error escapes, and nothing is stored twice."""
    for run in range(2):
        events = MessageEvent.select().count()
        try:
            result = normalize_delivery(delivery_id)
        except ingest.MessagesNotYetStored:
            result = None
        except (peewee.DataError, ValueError) as exc:
            if any(known in str(exc) for known in KNOWN_POSTGRES_REFUSALS):
                pytest.xfail(f"known bug, reported: {exc}")
            raise
        delivery = WebhookDelivery.get_by_id(delivery_id)
        assert delivery.status in {WebhookDelivery.PROCESSED, WebhookDelivery.FAILED}
        assert delivery.attempts == run + 1 or delivery.status == WebhookDelivery.PROCESSED
        if delivery.status == WebhookDelivery.FAILED:
            assert delivery.error, "a failed delivery keeps its error"
        if is_json_array(body) is False:
            assert delivery.status == WebhookDelivery.FAILED
            assert result is not None and result.errors
        if run == 1:
            assert MessageEvent.select().count() == events, "a second run stored events again"


def is_json_array(body: bytes) -> bool | None:
    """Whether the body is a JSON array; None when nesting makes it depend on the stack."""
    try:
        return isinstance(json.loads(body.decode("utf-8")), list)
    except ValueError:
        return False
    except RecursionError:
        return None


@pytest.mark.parametrize("body", [body for body in ADVERSARIAL_BODIES.values() if is_utf8(body)],
                         ids=[name for name, body in ADVERSARIAL_BODIES.items() if is_utf8(body)])
def test_adversarial_signed_bodies_are_stored_and_normalize_cleanly(
    endpoint: Endpoint, body: bytes
) -> None:
    status, reply = call(endpoint.app, signed_environ(endpoint.keys, body, Signing("valid"), "exact"))

    assert status == 200, reply
    delivery = WebhookDelivery.get()
    assert bytes(delivery.body) == body
    check_normalization(delivery.id, body)


@pytest.mark.parametrize("body", [body for body in ADVERSARIAL_BODIES.values() if not is_utf8(body)],
                         ids=[name for name, body in ADVERSARIAL_BODIES.items() if not is_utf8(body)])
def test_a_correctly_signed_body_that_is_not_utf8_is_stored(endpoint: Endpoint, body: bytes) -> None:
    status, reply = call(endpoint.app, signed_environ(endpoint.keys, body, Signing("valid"), "exact"))

    assert status == 200, reply
    check_normalization(WebhookDelivery.get().id, body)


@fuzz(40)
@given(events=st.lists(sendgrid_events(), min_size=1, max_size=8))
def test_signed_batches_of_random_events_about_our_message_never_break_ingest(
    endpoint: Endpoint, events: list[dict[str, Any]]
) -> None:
    # Given events naming a real, sent message of an enrolled contact: suppressions and
    # the engine run on whatever fields they carry.
    body = _json(events)

    status, reply = call(endpoint.app, signed_environ(endpoint.keys, body, Signing("valid"), "exact"))

    assert status == 200, reply
    check_normalization(WebhookDelivery.select().order_by(WebhookDelivery.id.desc()).get().id,
                        body)


@fuzz(40)
@given(token=st.text(max_size=80) | st.binary(max_size=60).map(lambda raw: raw.decode("latin-1")),
       method=st.sampled_from(["GET", "POST", "PUT", "HEAD"]))
def test_random_unsubscribe_tokens_get_no_5xx_and_suppress_no_one(
    endpoint: Endpoint, token: str, method: str
) -> None:
    status, _ = call(endpoint.app, {"REQUEST_METHOD": method, "PATH_INFO": f"/unsubscribe/{token}",
                                    "CONTENT_LENGTH": "0", "wsgi.input": io.BytesIO(b"")})

    assert status in {400, 404, 405}
    assert Suppression.select().count() == 0


def test_a_forged_token_for_a_real_contact_suppresses_no_one(endpoint: Endpoint) -> None:
    forged = make_token(make_settings(endpoint.settings.data_dir, secret_key="not-ours"),
                        "acme", "ada@example.com", MESSAGE_ID)
    status, _ = call(endpoint.app, {"PATH_INFO": f"/unsubscribe/{forged}", "CONTENT_LENGTH": "0",
                                    "wsgi.input": io.BytesIO(b"")})
    assert status == 400 and Suppression.select().count() == 0


# -- absurd sizes -------------------------------------------------------------------------------

class EndlessBody:
    """A request body of ``size`` bytes made on demand, counting what the app reads."""

    def __init__(self, size: int) -> None:
        self.size, self.read_bytes = size, 0

    def read(self, limit: int = -1) -> bytes:
        limit = self.size - self.read_bytes if limit < 0 else limit
        chunk = b"[" * min(limit, self.size - self.read_bytes)
        self.read_bytes += len(chunk)
        return chunk


FIFTY_MB = 50 * 1024 * 1024


def test_a_50_mb_body_is_refused_from_its_content_length_without_reading_it(
    endpoint: Endpoint,
) -> None:
    body = EndlessBody(FIFTY_MB)
    environ = signed_environ(endpoint.keys, b"", Signing("valid"), "exact")
    environ.update({"CONTENT_LENGTH": str(FIFTY_MB), "wsgi.input": body})

    status, reply = call(endpoint.app, environ)

    assert status == 413 and "over the limit" in reply
    assert body.read_bytes == 0
    assert WebhookDelivery.select().count() == 0


def test_a_50_mb_body_without_a_length_is_cut_off_at_the_limit(endpoint: Endpoint) -> None:
    # Given a chunked request (the server says the input ends; no Content-Length)
    body = EndlessBody(FIFTY_MB)
    environ = signed_environ(endpoint.keys, b"", Signing("valid"), "chunked")
    environ["wsgi.input"] = body
    limit = endpoint.settings.webhook_max_body_bytes
    tracemalloc.start()
    started = time.monotonic()
    try:
        status, reply = call(endpoint.app, environ)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert status == 413 and "over the limit" in reply
    # It read one chunk past the limit, not the 50 MB, and held about that much.
    assert limit < body.read_bytes <= limit + 64 * 1024
    assert peak < 3 * limit
    assert time.monotonic() - started < 10
    assert WebhookDelivery.select().count() == 0
