"""The README's Flask snippet, run as written: a second signup, a bad address, a retried
order and a database that is down each get an answer, never a 500."""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from pathlib import Path

import pytest

from outreach_actors.domain.store.models import Enrollment, HostEvent

from .factories import load_plan, make_tenant
from .test_readme import section
from .test_webhooks import activated, host_runtime  # noqa: F401  (a fixture)

pytestmark = pytest.mark.usefixtures("host_runtime")


def readme_flask_app(data_dir, database_url: str):
    """The README's Flask snippet, with its three config lines pointed at the test's services."""
    source = re.search(r"Flask \(every documented error.*?```python\n(.*?)```",
                       section("Django and Flask"), re.DOTALL).group(1)
    config = "\n".join(f'app.config["{key}"] = {value!r}' for key, value in {
        "OUTREACH_DATABASE_URL": database_url, "OUTREACH_BROKER_URL": "stub://",
        "OUTREACH_DATA_DIR": str(data_dir), "OUTREACH_SENDGRID_WEBHOOK_ALLOW_UNSIGNED": True,
    }.items())
    source, replaced = re.subn(r'(app\.config\[.*\n)+', config + "\n", source, count=1)
    assert replaced == 1
    namespace: dict = {"__name__": "readme_snippet"}
    exec(compile(source, "README.md (Flask)", "exec"), namespace)  # noqa: S102 (our own README)
    return activated(namespace["app"])


@pytest.fixture
def client(settings, data_dir):
    make_tenant()
    load_plan()
    load_plan((Path(__file__).parent / "samples" / "plans" / "trial.yaml").read_text())
    return readme_flask_app(data_dir, f"sqlite:///{data_dir / 'outreach.db'}").test_client()


def test_a_second_signup_is_welcome_and_enrolls_once(client) -> None:
    for _ in range(2):
        response = client.post("/signup", data={"email": "ada@example.com", "name": "Ada"})
        assert (response.status_code, response.text) == (200, "welcome")
    assert Enrollment.select().count() == 1


@pytest.mark.parametrize("form", [{"email": "not an address"}, {}, {"email": "a@b.c\r\nBcc: x"}])
def test_a_bad_signup_is_a_400_saying_why(client, form) -> None:
    response = client.post("/signup", data=form)
    assert response.status_code == 400 and response.text.startswith("cannot sign you up")


def test_an_order_retried_is_recorded_once_and_a_bad_one_is_a_400(client) -> None:
    client.post("/signup", data={"email": "ada@example.com"})
    order = {"email": "ada@example.com", "amount": "120", "order_id": "o-1"}
    assert [client.post("/orders", data=order).status_code for _ in range(2)] == [200, 200]
    assert HostEvent.select().count() == 1
    assert client.post("/orders", data={**order, "amount": "lots"}).status_code == 400
    assert client.post("/orders", data={"email": "nobody"}).status_code == 400


def test_a_signup_while_the_database_is_down_is_a_503(settings, data_dir) -> None:
    client = readme_flask_app(data_dir, "postgresql://postgres@127.0.0.1:1/none").test_client()
    assert client.post("/signup", data={"email": "ada@example.com"}).status_code == 503
    assert client.post("/orders", data={"email": "ada@example.com"}).status_code == 503


def test_the_readme_plan_with_host_events_is_valid() -> None:
    from outreach_actors.domain.plans import validate_plan

    text = re.search(r"```yaml\n(.*?)```", section("Host events, goals and control"),
                     re.DOTALL).group(1)
    plan = validate_plan(text)
    assert plan.events == ["purchased", "booked_meeting"] and plan.goals[0].if_


def test_the_readme_curl_example_works_as_written(settings, data_dir) -> None:
    from outreach_actors.domain import engine
    from outreach_actors.web.app import http_server, make_app

    make_tenant()
    load_plan((Path(__file__).parent / "samples" / "plans" / "trial.yaml").read_text())
    engine.enroll("acme", "ada@example.com", "trial")
    secret = "readme-curl-secret"
    app = make_app(settings.model_copy(update={"events_secret": secret}))
    server = http_server("127.0.0.1", 0, app)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    script = re.search(r"```sh\n(.*?)```", section("Host events, goals and control"),
                       re.DOTALL).group(1)
    script = script.replace("http://localhost:8000", f"http://127.0.0.1:{server.effective_port}")
    try:
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True,
                                text=True, timeout=30,
                                env={**os.environ, "OUTREACH_EVENTS_SECRET": secret})
    finally:
        server.close()
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"results": [
        {"event_key": "acme:order-1001", "stored": True, "moved": 1}]}
    assert Enrollment.get().status == "converted"
