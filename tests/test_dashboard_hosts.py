"""The dashboard mounted by each host: Flask (``OutreachFlask(dashboard=True,
authorize=...)``), Django (staff only, a permission setting to narrow it) and ``outreach
serve --dashboard`` (refuses to start without users); in each, a POST needs the CSRF
token of the page it came from."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

import pytest
import waitress
from click.testing import CliRunner
from django.test import Client, override_settings
from django.urls import include, path
from flask import Flask
from selenium.webdriver.common.by import By

from outreach_actors.cli import main
from outreach_actors.contrib.flask import OutreachFlask
from outreach_actors.domain import engine
from outreach_actors.domain.store.models import Plan, Suppression
from outreach_actors.settings import SettingsError
from outreach_actors.web.dashboard.access import hash_password, password_matches

from .factories import load_plan, make_tenant
from .test_dashboard import follow, running
from .test_django import outreach_config, setup_django
from .test_outreach_serve import free_port
from .test_webhooks import host_runtime, new_key  # noqa: F401  (host_runtime is a fixture)

pytestmark = pytest.mark.usefixtures("host_runtime")

urlpatterns = [path("outreach/", include("outreach_actors.contrib.django.dashboard"))]


def csrf_token_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([0-9a-f]+)"', html)[1]


# --- Flask ---------------------------------------------------------------------------

def test_flask_refuses_to_mount_the_dashboard_without_authorize() -> None:
    with pytest.raises(SettingsError, match="authorize"):
        OutreachFlask(dashboard=True)


def flask_dashboard(data_dir, allowed: list, url_prefix: str | None = None) -> Flask:
    app = Flask(__name__)
    app.config.update({"OUTREACH_DATABASE_URL": f"sqlite:///{data_dir / 'outreach.db'}",
                       "OUTREACH_BROKER_URL": "stub://", "OUTREACH_DATA_DIR": str(data_dir)})
    OutreachFlask(app, url_prefix=url_prefix, dashboard=True, authorize=lambda request: allowed[0])
    return app


def test_flask_mount_shows_the_dashboard_to_whom_authorize_allows(settings, data_dir) -> None:
    make_tenant()
    plan = load_plan()
    allowed = [False]
    client = flask_dashboard(data_dir, allowed).test_client()
    assert client.get("/outreach/").status_code == 403
    allowed[0] = True
    response = client.get(f"/outreach/plans/{plan.id}")
    assert response.status_code == 200 and "<svg" in response.text
    assert 'href="/outreach/static/dashboard.css"' in response.text
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    page = client.get("/outreach/suppressions").text
    forged = client.post("/outreach/suppressions/add",
                         data={"tenant": "acme", "address": "a@example.com", "csrf_token": "0" * 64})
    assert forged.status_code == 403
    added = client.post("/outreach/suppressions/add", data={
        "tenant": "acme", "address": "a@example.com", "csrf_token": csrf_token_of(page)})
    assert added.status_code == 303 and added.headers["Location"] == "/outreach/suppressions?done=added"
    assert Suppression.get().source == "dashboard"


def test_flask_mount_follows_the_extensions_url_prefix(settings, data_dir) -> None:
    client = flask_dashboard(data_dir, [True], url_prefix="/hooks").test_client()
    page = client.get("/hooks/outreach/senders")
    assert page.status_code == 200 and 'href="/hooks/outreach/failures"' in page.text


# --- Django --------------------------------------------------------------------------

@dataclass
class User:
    """A user as django.contrib.auth gives one (the host's auth, as this project has none)."""

    is_staff: bool
    permissions: tuple[str, ...] = ()
    is_active: bool = True
    is_authenticated: bool = True

    def has_perm(self, permission: str) -> bool:
        return permission in self.permissions


USERS = {"staff": User(is_staff=True), "member": User(is_staff=False),
         "auditor": User(is_staff=True, permissions=("outreach.view_dashboard",))}


class HeaderUserMiddleware:
    """Sets request.user from the X-Test-User header, as AuthenticationMiddleware would."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.user = USERS.get(request.headers.get("X-Test-User", ""),
                                 User(is_staff=False, is_authenticated=False))
        return self.get_response(request)


@pytest.fixture
def django_client(settings, data_dir):
    setup_django()
    with override_settings(
            OUTREACH=outreach_config(data_dir, new_key()), ROOT_URLCONF=__name__,
            MIDDLEWARE=["django.middleware.csrf.CsrfViewMiddleware",
                        f"{__name__}.HeaderUserMiddleware"]):
        yield Client(enforce_csrf_checks=True)


def test_django_mount_is_for_staff_only(django_client) -> None:
    make_tenant()
    load_plan()
    anonymous = django_client.get("/outreach/")
    assert anonymous.status_code == 302 and anonymous["Location"].startswith("/accounts/login/?next=")
    assert django_client.get("/outreach/", headers={"X-Test-User": "member"}).status_code == 403
    page = django_client.get("/outreach/", headers={"X-Test-User": "staff"})
    assert page.status_code == 200 and "onboarding" in page.content.decode()
    with override_settings(OUTREACH_DASHBOARD_PERMISSION="outreach.view_dashboard"):
        assert django_client.get("/outreach/", headers={"X-Test-User": "staff"}).status_code == 403
        assert django_client.get("/outreach/", headers={"X-Test-User": "auditor"}).status_code == 200


def test_django_mount_checks_its_csrf_token(django_client) -> None:
    make_tenant()
    staff = {"X-Test-User": "staff"}
    page = django_client.get("/outreach/suppressions", headers=staff).content.decode()
    forged = django_client.post("/outreach/suppressions/add", headers=staff, data={
        "tenant": "acme", "address": "b@example.com", "csrf_token": "f" * 64})
    assert forged.status_code == 403 and not Suppression.select().exists()
    added = django_client.post("/outreach/suppressions/add", headers=staff, data={
        "tenant": "acme", "address": "b@example.com", "csrf_token": csrf_token_of(page)})
    assert added.status_code == 303 and Suppression.get().value == "b@example.com"


# --- outreach serve --dashboard --------------------------------------------------------

def test_outreach_serve_refuses_the_dashboard_without_users(sqlite_db, data_dir, monkeypatch) -> None:
    monkeypatch.setenv("OUTREACH_DATABASE_URL", f"sqlite:///{data_dir / 'outreach.db'}")
    monkeypatch.setenv("OUTREACH_DATA_DIR", str(data_dir))
    monkeypatch.delenv("OUTREACH_DASHBOARD_USERS", raising=False)
    result = CliRunner().invoke(main, ["serve", "--dashboard", "--port", "0"])
    assert result.exit_code != 0
    assert "OUTREACH_DASHBOARD_USERS" in result.output
    monkeypatch.setenv("OUTREACH_DASHBOARD_USERS", "ann:plaintext")
    result = CliRunner().invoke(main, ["serve", "--dashboard", "--port", "0"])
    assert result.exit_code != 0 and "hash-password" in result.output


def test_hash_password_makes_a_hash_the_dashboard_accepts() -> None:
    result = CliRunner().invoke(main, ["dashboard", "hash-password", "--password", "s3cret"])
    assert result.exit_code == 0
    hashed = result.output.strip()
    assert password_matches("s3cret", hashed) and not password_matches("guess", hashed)
    assert hashed != hash_password("s3cret")  # salted


def test_explain_prints_the_timeline(settings) -> None:
    make_tenant()
    load_plan()
    engine.enroll("acme", "bob@example.com", "onboarding", fields={"first_name": "[bold]Bob"})
    result = CliRunner().invoke(main, ["explain", " BOB@example.com", "--plan", "onboarding"],
                                terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "enrolled: intro is the start of onboarding v1" in result.output
    assert "send of intro due" in result.output
    missing = CliRunner().invoke(main, ["explain", "nobody@example.com"])
    assert missing.exit_code == 1 and "no contact nobody@example.com" in missing.output


def test_a_user_limited_to_some_tenants_sees_only_theirs(settings, data_dir) -> None:
    for tenant in ("acme", "globex"):
        make_tenant(tenant)
        load_plan(tenant_id=tenant)
    ours = engine.enroll("acme", "ada@example.com", "onboarding").contact_id
    theirs = engine.enroll("globex", "ada@example.com", "onboarding").contact_id
    globex_plan = Plan.get(Plan.tenant == "globex")
    client = flask_dashboard(data_dir, [["acme"]]).test_client()
    plans = client.get("/outreach/").text
    assert "acme" in plans and "globex" not in plans and ">Webhooks<" not in plans
    assert client.get(f"/outreach/plans/{globex_plan.id}").status_code == 404
    assert client.get(f"/outreach/contacts/{ours}").status_code == 200
    assert client.get(f"/outreach/contacts/{theirs}").status_code == 404
    assert client.get("/outreach/webhooks").status_code == 403
    assert client.get("/outreach/inbound").status_code == 403 and ">Inbound<" not in plans
    page = client.get("/outreach/contacts").text
    found = client.post("/outreach/contacts", data={"q": "ada@example.com",
                                                    "csrf_token": csrf_token_of(page)}).text
    assert f"/outreach/contacts/{ours}" in found and f"/outreach/contacts/{theirs}" not in found
    refused = client.post("/outreach/suppressions/add", data={
        "tenant": "globex", "address": "b@example.com", "csrf_token": csrf_token_of(page)})
    assert refused.status_code == 400 and not Suppression.select().exists()


@pytest.mark.parametrize("host", ["flask", "django"])
def test_each_hosts_mount_in_a_browser(host, browser, settings, data_dir, tmp_path) -> None:
    make_tenant()
    load_plan()
    if host == "flask":
        app = flask_dashboard(data_dir, [True])
        browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})
    else:
        from django.core.handlers.wsgi import WSGIHandler

        setup_django()
        overrides = override_settings(
            OUTREACH=outreach_config(data_dir, new_key()), ROOT_URLCONF=__name__,
            MIDDLEWARE=["django.middleware.csrf.CsrfViewMiddleware", f"{__name__}.HeaderUserMiddleware"])
        overrides.enable()
        app = WSGIHandler()
        browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"X-Test-User": "staff"}})
    try:
        with running(app, server=waitress.create_server) as port:
            browser.delete_all_cookies()
            browser.get(f"http://127.0.0.1:{port}/outreach/")
            follow(browser, browser.find_element(By.LINK_TEXT, "onboarding"))
            assert browser.find_elements(By.CSS_SELECTOR, 'svg.graph g.node[data-node="intro"]')
            follow(browser, browser.find_element(By.LINK_TEXT, "Suppressions"))
            browser.find_element(By.NAME, "address").send_keys("someone@example.com")
            follow(browser, browser.find_element(By.XPATH, "//button[text()='Suppress']"))
            browser.save_screenshot(str(tmp_path / f"{host}.png"))
            print(f"screenshot: {tmp_path / f'{host}.png'}")
            assert "Suppressed." in browser.find_element(By.TAG_NAME, "main").text
            assert Suppression.get().value == "someone@example.com"
    finally:
        browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})
        if host == "django":
            overrides.disable()


def test_outreach_serve_dashboard_serves_its_users_only(sqlite_db, data_dir) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OUTREACH_")}
    env.update({"OUTREACH_BROKER_URL": "stub://", "OUTREACH_DATA_DIR": str(data_dir),
                "OUTREACH_DATABASE_URL": f"sqlite:///{data_dir / 'outreach.db'}",
                "OUTREACH_DASHBOARD_USERS": f"ann:{hash_password('pw')}"})
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "outreach_actors.cli", "serve", "--dashboard",
                               "--port", str(port)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/outreach/"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
            except urllib.error.HTTPError as refused:
                assert refused.code == 401 and "Basic" in refused.headers["WWW-Authenticate"]
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline
                time.sleep(0.1)
        token = base64.b64encode(b"ann:pw").decode()
        page = urllib.request.urlopen(urllib.request.Request(
            url, headers={"Authorization": f"Basic {token}"}), timeout=10)
        assert page.status == 200 and "<h1>Plans</h1>" in page.read().decode()
        assert page.headers["X-Frame-Options"] == "DENY"
    finally:
        server.terminate()
        output = server.communicate(timeout=10)[0]
    assert f"serving the dashboard on http://127.0.0.1:{port}/outreach/" in output


def test_a_dashboard_whose_database_is_down_answers_503(settings, data_dir) -> None:
    app = Flask(__name__)
    app.config.update({"OUTREACH_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none",
                       "OUTREACH_BROKER_URL": "stub://", "OUTREACH_DATA_DIR": str(data_dir)})
    OutreachFlask(app, dashboard=True, authorize=lambda request: True)
    response = app.test_client().get("/outreach/")
    assert response.status_code == 503
    assert "The outreach database cannot be reached" in response.text
