"""The Django app in a real configured project, driven by Django's own test client.

Django is configured once for the process, lazily (so collecting this module
changes nothing); each test points ``settings.OUTREACH`` at its own database with
``override_settings``, which the app picks up through ``setting_changed``.
"""

from __future__ import annotations

import django
import pytest
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.http import HttpRequest, JsonResponse
from django.test import Client, override_settings
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt

from outreach_actors.contrib import enroll
from outreach_actors.domain.store.models import Enrollment, Suppression, WebhookDelivery
from outreach_actors.domain.unsubscribe import DEVELOPMENT_SECRET, unsubscribe_url
from outreach_actors.settings import get_settings

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

pytestmark = pytest.mark.usefixtures("host_runtime")
BASE_URL = "https://hooks.acme.test"


@csrf_exempt
def signup(request: HttpRequest) -> JsonResponse:
    enrollment = enroll("acme", request.POST["email"], "onboarding")
    return JsonResponse({"enrollment": enrollment.id, "node": enrollment.current_node})


urlpatterns = [
    path("", include("outreach_actors.contrib.django.urls")),
    path("signup", signup),
]


def setup_django() -> None:
    if django_settings.configured:
        return
    django_settings.configure(
        DEBUG=False,
        SECRET_KEY="django-project-secret",
        ALLOWED_HOSTS=["testserver"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=["outreach_actors.contrib.django"],
        # CSRF on, as in a real project: the outreach views must be exempt.
        MIDDLEWARE=["django.middleware.common.CommonMiddleware",
                    "django.middleware.csrf.CsrfViewMiddleware"],
        DATABASES={},
        OUTREACH={"broker_url": "stub://"},
    )
    django.setup()


@pytest.fixture
def key():
    return new_key()


def outreach_config(data_dir, key, **extra) -> dict:
    return {
        "database_url": f"sqlite:///{data_dir / 'outreach.db'}",
        "broker_url": "stub://",
        "data_dir": str(data_dir),
        "sendgrid_webhook_public_key": public_key_of(key),
        "secret_key": "django-test-secret",
        "public_base_url": BASE_URL,
        **extra,
    }


@pytest.fixture
def client(settings, data_dir, key):
    setup_django()
    with override_settings(OUTREACH=outreach_config(data_dir, key)):
        activated(None)
        yield Client(enforce_csrf_checks=True)


def test_the_outreach_dict_becomes_the_settings(client) -> None:
    assert get_settings().secret_key == "django-test-secret"
    assert get_settings().public_base_url == BASE_URL


def test_signed_webhook_is_stored_without_a_csrf_token(client, key) -> None:
    response = client.post("/webhooks/sendgrid", data=SAMPLE_BODY,
                           content_type="application/json",
                           headers=signed_headers(key, SAMPLE_BODY))
    assert response.status_code == 200
    assert bytes(WebhookDelivery.get().body) == SAMPLE_BODY


def test_forged_stale_or_unsigned_webhooks_get_403_and_get_405(client, key) -> None:
    forged = signed_headers(new_key(), SAMPLE_BODY)
    stale = signed_headers(key, SAMPLE_BODY, timestamp=1763790300)
    for headers in [forged, stale, {}]:
        response = client.post("/webhooks/sendgrid", data=SAMPLE_BODY,
                               content_type="application/json", headers=headers)
        assert response.status_code == 403
    assert client.get("/webhooks/sendgrid").status_code == 405
    assert WebhookDelivery.select().count() == 0


def test_oversized_webhook_gets_413(settings, data_dir, key) -> None:
    setup_django()
    with override_settings(OUTREACH=outreach_config(data_dir, key, webhook_max_body_bytes=64)):
        activated(None)
        response = Client().post("/webhooks/sendgrid", data=SAMPLE_BODY,
                                 content_type="application/json",
                                 headers=signed_headers(key, SAMPLE_BODY))
    assert response.status_code == 413


def test_a_webhook_while_the_database_is_down_gets_503_with_retry_after(settings, data_dir, key) -> None:
    setup_django()
    with override_settings(OUTREACH=outreach_config(data_dir, key, database_url="postgresql://postgres@127.0.0.1:1/none")):
        activated(None)
        response = Client().post("/webhooks/sendgrid", data=SAMPLE_BODY,
                                 content_type="application/json",
                                 headers=signed_headers(key, SAMPLE_BODY))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "30"
    assert response["Content-Type"] == "text/plain; charset=utf-8"


def test_unsubscribe_page_and_one_click(client) -> None:
    make_tenant("acme")
    load_plan()
    enrollment = client.post("/signup", data={"email": "ada@example.com"}).json()
    path_ = unsubscribe_url(get_settings(), "acme", "ada@example.com", "MSG-1").removeprefix(
        BASE_URL
    )
    page = client.get(path_)
    assert page.status_code == 200 and b"<form" in page.content
    assert client.head(path_).status_code == 200  # link checkers ask HEAD wherever GET works
    assert Suppression.select().count() == 0
    done = client.post(path_, data={"List-Unsubscribe": "One-Click"})
    assert done.status_code == 200
    assert Suppression.get().source == "one-click:MSG-1"
    assert Enrollment.get_by_id(enrollment["enrollment"]).status == "exited"
    assert client.get(path_ + "tampered").status_code == 400
    assert client.put(path_).status_code == 405


def test_the_unsubscribe_pages_show_no_address_and_cannot_be_cached_or_framed(client) -> None:
    make_tenant("acme")
    path_ = unsubscribe_url(get_settings(), "acme", "ada.lovelace@example.com", "MSG-1").removeprefix(
        BASE_URL)
    for answer in (client.get(path_), client.head(path_),
                   client.post(path_, data={"List-Unsubscribe": "One-Click"}),
                   client.get(path_ + "x")):
        assert b"lovelace" not in answer.content
        assert_private_page(answer.headers)


def test_a_project_mailing_through_sendgrid_with_the_default_secret_does_not_start(
        settings, data_dir, key) -> None:
    # Anyone can forge a link with the public default and unsubscribe any tenant's address.
    setup_django()
    forgeable = outreach_config(data_dir, key, sendgrid_api_key="SG.live-key",
                                secret_key=DEVELOPMENT_SECRET)
    with pytest.raises(ImproperlyConfigured, match=r"OUTREACH_SECRET_KEY is the development "
                                                   r"default.*`outreach secret generate`"):
        with override_settings(OUTREACH=forgeable):
            pass


def test_a_view_can_enroll(client) -> None:
    make_tenant("acme")
    load_plan()
    response = client.post("/signup", data={"email": "Bob@Example.com"})
    assert response.status_code == 200 and response.json()["node"] == "intro"
    assert Enrollment.get_by_id(response.json()["enrollment"]).contact.email == "bob@example.com"


def test_a_mistyped_setting_is_improperly_configured(settings, data_dir, key) -> None:
    setup_django()
    with pytest.raises(ImproperlyConfigured, match="OUTREACH_SECRET_KYE is not a known setting"):
        with override_settings(OUTREACH={**outreach_config(data_dir, key), "secret_kye": "x"}):
            pass


def test_host_events_are_posted_signed_without_a_csrf_token(settings, data_dir, key) -> None:
    import json
    import time

    from outreach_actors.domain.store.models import HostEvent
    from outreach_actors.web.events import sign_events

    setup_django()
    with override_settings(OUTREACH=outreach_config(data_dir, key, events_secret="dj-secret")):
        activated(None)
        make_tenant("acme")
        body = json.dumps({"tenant": "acme", "email": "ada@example.com", "event": "signed_up",
                           "event_id": "1"}).encode()
        at = int(time.time())
        headers = {"X-Outreach-Timestamp": str(at),
                   "X-Outreach-Signature": sign_events("dj-secret", body, at)}
        client = Client(enforce_csrf_checks=True)
        response = client.post("/events", data=body, content_type="application/json",
                               headers=headers)
        assert response.status_code == 200 and response.json()["results"][0]["stored"]
        assert client.post("/events", data=body, content_type="application/json").status_code == 401
        assert HostEvent.select().count() == 1


def test_the_readme_django_view_answers_every_documented_error(settings, data_dir, key) -> None:
    import re

    from django.test import RequestFactory

    from .test_readme import section

    source = re.search(r"# views\.py\n(.*?)```", section("Django and Flask"), re.DOTALL).group(1)
    namespace: dict = {}
    exec(compile(source, "README.md (Django views.py)", "exec"), namespace)  # noqa: S102
    setup_django()
    with override_settings(OUTREACH=outreach_config(data_dir, key)):
        activated(None)
        make_tenant("acme")
        load_plan()
        factory = RequestFactory()
        answers = [namespace["signup"](factory.post("/signup", {"email": email}))
                   for email in ["ada@example.com", "ada@example.com", "not an address", ""]]
        assert [a.status_code for a in answers] == [200, 200, 400, 400]
        assert Enrollment.select().count() == 1
    with override_settings(OUTREACH=outreach_config(
            data_dir, key, database_url="postgresql://postgres@127.0.0.1:1/none")):
        activated(None)
        assert namespace["signup"](RequestFactory().post(
            "/signup", {"email": "ada@example.com"})).status_code == 503


def test_a_signed_inbound_parse_post_is_stored_without_a_csrf_token(settings, data_dir, key) -> None:
    from outreach_actors.dev.inbound_posts import inbound_headers
    from outreach_actors.domain.store.models import InboundPost

    from .test_replies import KEYS, SAMPLES

    setup_django()
    config = outreach_config(data_dir, key, sendgrid_inbound_public_key=KEYS.public_key)
    with override_settings(OUTREACH=config):
        activated(None)
        body = (SAMPLES / "sendgrid_parsed_form.txt").read_bytes()
        headers = inbound_headers(body, KEYS.private_key_pem)
        response = Client(enforce_csrf_checks=True).generic(
            "POST", "/webhooks/sendgrid/inbound", body,
            content_type=headers.pop("Content-Type"), headers=headers)
        assert response.status_code == 200
        assert bytes(InboundPost.get().body) == body
