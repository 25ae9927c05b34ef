"""The dashboard in a real browser (headless Chromium through Selenium) against the real
standalone server (waitress) on SQLite and PostgreSQL: log in, read a plan's counts off
its SVG graph, follow a contact's timeline to the raw webhook, replay it, suppress and
lift an address; and refused without credentials or with a forged CSRF token."""

from __future__ import annotations

import base64
import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import pytest
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.expected_conditions import staleness_of
from selenium.webdriver.support.wait import WebDriverWait

from outreach_actors.domain import stats
from outreach_actors.domain.store import models
from outreach_actors.domain.store.models import Plan, Suppression, WebhookDelivery
from outreach_actors.settings import configure
from outreach_actors.web.app import http_server, make_app
from outreach_actors.web.dashboard.access import hash_password
from outreach_actors.web.dashboard.wsgi import DashboardWSGI

from .conftest import POSTGRES_URL, make_settings
from .factories import normalize_delivery
from .test_events import SAMPLE_BODY
from .test_ingest import sample_world, store
from .test_webhooks import host_runtime  # noqa: F401  (a fixture)

pytestmark = pytest.mark.usefixtures("host_runtime")

USER, PASSWORD = "ann", "correct horse battery staple"
# Hashed once: scrypt is slow on purpose.
USERS = f"{USER}:{hash_password(PASSWORD)}"
AUTHORIZATION = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


@contextmanager
def running(app, server=None) -> Iterator[int]:
    """``app`` on waitress in a thread, as ``outreach serve`` runs it (or on ``server(app,
    host=, port=)``, for a host's app); yields its port."""
    server = (server(app, host="127.0.0.1", port=0, threads=4) if server
              else http_server("127.0.0.1", 0, app, threads=4))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield server.effective_port
    finally:
        server.close()


@pytest.fixture
def dashboard(db, data_dir: Path, request) -> Iterator[int]:
    """The standalone server with the dashboard, over a world with the SendGrid sample
    delivery normalized (opens, clicks, a bounce, an unsubscribe) and one that failed."""
    url = POSTGRES_URL if "postgresql" in request.node.callspec.id else f"sqlite:///{data_dir / 'outreach.db'}"
    settings = make_settings(data_dir, database_url=url, dashboard_users=USERS)
    configure(settings)
    sample_world()
    normalize_delivery(store(SAMPLE_BODY))
    normalize_delivery(store(b"this is no JSON"))
    with running(DashboardWSGI(make_app(settings))) as port:
        yield port
    configure(None)


@pytest.fixture
def page(browser, dashboard: int, tmp_path: Path):
    """The browser, logged in (its requests carry the Authorization header), with
    ``open(path)`` and ``shot(name)`` (a screenshot under the test's directory)."""
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": AUTHORIZATION}})
    browser.delete_all_cookies()

    class Page:
        driver = browser

        def open(self, path: str) -> None:
            browser.get(f"http://127.0.0.1:{dashboard}/outreach{path}")

        def shot(self, name: str) -> None:
            path = tmp_path / f"{name}.png"
            browser.save_screenshot(str(path))
            print(f"screenshot: {path}")

        def text(self) -> str:
            return browser.find_element(By.TAG_NAME, "main").text

        def follow(self, element) -> None:
            """Click a link or button and wait for the page it leads to."""
            follow(browser, element)

    yield Page()
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})


def test_a_plans_graph_is_drawn_with_its_counts(page) -> None:
    page.open("/")
    page.follow(page.driver.find_element(By.LINK_TEXT, "onboarding"))
    svg = page.driver.find_element(By.CSS_SELECTOR, "svg.graph")
    page.shot("plan")
    expected = {row["node"]: row for row in stats.funnel(plan_name="onboarding")}
    assert expected["intro"]["clicked"] > 0 and expected["intro"]["opened"] > 0
    for node in ("intro", "thanks", "stop"):
        group = svg.find_element(By.CSS_SELECTOR, f'g.node[data-node="{node}"]')
        shown = {element.get_attribute("data-column"): element.text.split()[-1]
                 for element in group.find_elements(By.CSS_SELECTOR, "text.count")}
        assert shown == {column: str(value) for column, value in expected[node].items()
                         if column in stats.FUNNEL_COLUMNS and value}
    # The clicks of intro moved contacts along its `click` edge, and the label says how many.
    clicked = svg.find_element(By.CSS_SELECTOR, 'g.edge[data-source="intro"][data-target="thanks"]')
    moved = models.NodeVisit.select().where(models.NodeVisit.node == "thanks").count()
    assert clicked.text == f"clicked · {moved}" and moved > 0
    boxes = [(float(r.get_attribute("x")), float(r.get_attribute("y")),
              float(r.get_attribute("width")), float(r.get_attribute("height")))
             for r in svg.find_elements(By.CSS_SELECTOR, "g.node rect")]
    assert len(boxes) == 4 and not any(_overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def test_a_splits_arms_show_side_by_side_on_its_plan_page(page) -> None:
    from outreach_actors.domain import engine
    from outreach_actors.domain.experiments import experiment_results
    from outreach_actors.domain.host_events import track

    from .factories import load_plan

    plan = load_plan((Path(__file__).parent / "samples" / "plans" / "split_goal.yaml").read_text())
    for n in range(30):
        engine.enroll("acme", f"split-{n}@example.com", "goal-test")
    for n in range(6):
        track("acme", f"split-{n}@example.com", "purchased")
    page.open(f"/plans/{plan.id}")
    page.shot("plan-experiment")
    (expected,) = experiment_results(plan_name="goal-test")
    table = page.driver.find_element(By.CSS_SELECTOR, 'table.experiment[data-node="test"]')
    rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert [row.get_attribute("data-arm") for row in rows] == ["a", "b", "holdout"]
    for row, arm in zip(rows, expected["arms"], strict=True):
        assert row.find_element(By.CSS_SELECTOR, 'td[data-column="entered"]').text == str(arm["entered"])
        converted = row.find_element(By.CSS_SELECTOR, 'td[data-column="converted"]').text
        assert converted.startswith(f"{arm['counts']['converted']} (")
    # Each arm's edge out of the split says how many it took, as its row does.
    edge = page.driver.find_element(By.CSS_SELECTOR, 'g.edge[data-source="test"][data-target="short"]')
    assert edge.text.endswith(f"· {expected['arms'][0]['entered']}")
    # The holdout, never mailed, is compared with the first arm on its conversions.
    assert "pp [" in rows[2].find_element(By.CSS_SELECTOR, 'td[data-column="converted"]').text
    assert rows[2].find_element(By.CSS_SELECTOR, 'td[data-column="sent"]').text == "0 (0.0%)"


def follow(browser, element) -> None:
    """Click ``element`` and wait until its page has been replaced by the next one (a
    click returns before the navigation it starts)."""
    old = browser.find_element(By.TAG_NAME, "html")
    element.click()
    WebDriverWait(browser, 10).until(lambda _: _replaced(old))


def _replaced(element) -> bool:
    # Chromium sometimes reports a node of the page just left as "does not belong to
    # the document" rather than as stale: both say the navigation happened.
    try:
        return staleness_of(element)(None)
    except WebDriverException as exc:
        if "does not belong to the document" in str(exc):
            return True
        raise


def _overlap(a, b) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def test_a_contacts_timeline_leads_to_the_raw_webhook_which_replays(page) -> None:
    page.open("/contacts")
    field = page.driver.find_element(By.NAME, "q")
    field.send_keys("  ADA@Example.com ")  # found by its normalized address
    page.follow(page.driver.find_element(By.XPATH, "//button[text()='Find']"))
    page.follow(page.driver.find_element(By.LINK_TEXT, "ada@example.com"))
    assert "/contacts/" in page.driver.current_url and "ada" not in page.driver.current_url
    page.shot("timeline")
    text = page.text()
    assert "enrolled: intro is the start of onboarding v1" in text
    assert "intro moves on clicked to thanks" in text
    page.follow(page.driver.find_element(By.LINK_TEXT, "content"))
    assert "HTML (source)" in page.text() and "ada@example.com" in page.text()
    page.driver.back()
    links = page.driver.find_elements(By.PARTIAL_LINK_TEXT, "webhook ")
    assert links, text
    delivery_id = int(links[0].text.split()[-1])
    page.follow(links[0])
    assert '"ada@example.com"' in page.driver.find_element(By.CSS_SELECTOR, "pre.raw").text
    page.follow(page.driver.find_element(By.XPATH, "//button[text()='Replay']"))
    page.shot("webhook-replayed")
    assert "Queued for normalization again." in page.text()
    assert WebhookDelivery.get_by_id(delivery_id).status == WebhookDelivery.RECEIVED


def test_a_suppression_is_added_and_removed(page) -> None:
    page.open("/suppressions")
    page.driver.find_element(By.NAME, "address").send_keys("New.Person@Example.com")
    page.follow(page.driver.find_element(By.XPATH, "//button[text()='Suppress']"))
    assert "Suppressed." in page.text()
    row = Suppression.get(Suppression.value == "new.person@example.com")
    assert (row.tenant_id, row.source) == ("acme", "dashboard")
    page.driver.find_element(By.NAME, "q").send_keys("new.person@example.com")
    page.follow(page.driver.find_element(By.XPATH, "//button[text()='Search']"))
    page.shot("suppressions")
    page.follow(page.driver.find_element(By.CSS_SELECTOR, "button.remove"))
    assert "Suppression removed." in page.text()
    assert not Suppression.select().where(Suppression.value == "new.person@example.com").exists()


def test_every_page_answers_and_bad_input_gets_a_clear_4xx(page) -> None:
    plan = Plan.get()
    for path, heading in [("/failures", "Failures"), ("/webhooks?status=failed", "Webhook deliveries"),
                          ("/senders", "Senders"), (f"/plans/{plan.id}?since=2020-01-01", "onboarding"),
                          (f"/plans/{plan.id}?until=9999-12-31", "onboarding")]:
        page.open(path)
        page.shot(path.split("?")[0].strip("/").replace("/", "-"))
        assert heading in page.driver.find_element(By.TAG_NAME, "h1").text
    assert "this is no JSON" not in page.text()
    page.open("/webhooks?status=failed")
    assert "failed" in page.text()
    for path, message in [("/plans/99999", "There is no plan 99999."),
                          ("/contacts/99999", "There is no contact 99999."),
                          ("/webhooks?page=-1", "page must be a whole number"),
                          ("/webhooks/99999999999999999999", "There is no row 99999999999999999999."),
                          ("/contacts/4294967296", "There is no row 4294967296."),
                          (f"/plans/{plan.id}?since=yesterday", "since must be a day"),
                          ("/no/such/page", "There is no dashboard page")]:
        page.open(path)
        assert message in page.text(), path


def test_without_credentials_the_dashboard_is_refused(browser, dashboard: int) -> None:
    browser.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {}})
    browser.get(f"http://127.0.0.1:{dashboard}/outreach/")
    # Chromium answers a 401 with its own (headless: empty) login prompt: no page of ours.
    assert not browser.find_elements(By.TAG_NAME, "nav")
    status, body = _request(dashboard, "GET", "/outreach/", authorization="")
    assert status == 401 and "needs a user and password" in body
    wrong = "Basic " + base64.b64encode(f"{USER}:guess".encode()).decode()
    assert _request(dashboard, "GET", "/outreach/", authorization=wrong)[0] == 401
    # Logging in as a person does (credentials given once), the browser keeps them.
    browser.get(f"http://{USER}:{quote(PASSWORD)}@127.0.0.1:{dashboard}/outreach/")
    follow(browser, browser.find_element(By.LINK_TEXT, "Senders"))
    assert browser.find_element(By.TAG_NAME, "h1").text == "Senders"


def test_a_post_without_the_csrf_token_changes_nothing(dashboard: int) -> None:
    status, body = _request(dashboard, "POST", "/outreach/suppressions/add",
                            b"tenant=acme&address=x%40example.com&csrf_token=forged",
                            cookie="outreach_csrf=" + "a" * 43)
    assert status == 403 and "CSRF token is missing or wrong" in body
    assert not Suppression.select().where(Suppression.value == "x@example.com").exists()


def test_hostile_values_are_escaped(page) -> None:
    hostile = "<script>alert(1)</script>"
    contact = models.Contact.get(models.Contact.email == "ada@example.com")
    contact.fields = {"first_name": hostile}
    contact.save()
    models.OutboundMessage.update(subject=f"Hi {hostile}").where(
        models.OutboundMessage.to_email == "ada@example.com").execute()
    delivery_id = store([{"event": "open", "email": "ada@example.com", "note": hostile}])
    for path in (f"/contacts/{contact.id}", f"/webhooks/{delivery_id}"):
        page.open(path)
        # The browser shows the text as it is: it reads it as text, not as markup.
        assert hostile in page.text(), path
        assert not page.driver.find_elements(By.CSS_SELECTOR, "main script")


def _request(port: int, method: str, path: str, body: bytes | None = None, *,
             authorization: str = AUTHORIZATION, cookie: str = "") -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Authorization": authorization, "Content-Type": "application/x-www-form-urlencoded"}
    if cookie:
        headers["Cookie"] = cookie
    connection.request(method, path, body=body, headers=headers)
    response = connection.getresponse()
    return response.status, response.read().decode()
