"""A secret anyone could guess stops the endpoints that honour unsubscribe links from starting
wherever the links reach real recipients; development keeps the default.

Each test is an attack: a link forged offline with a secret the attacker can guess (the public
default, an empty or short one, one left among the fallbacks) to unsubscribe another tenant's
address. The workers' side is in ``test_startup_warnings``.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

import pytest
from click.testing import CliRunner

from outreach_actors.cli.commands import main
from outreach_actors.domain.store.models import Suppression
from outreach_actors.domain.unsubscribe import (
    DEVELOPMENT_SECRET,
    make_token,
    read_token,
    secret_problems,
    secret_weakness,
)
from outreach_actors.settings import SettingsError, get_settings, settings_from_mapping
from outreach_actors.web.app import make_app

from .conftest import make_settings
from .factories import make_tenant
from .test_startup_warnings import FORGEABLE, REAL_SENDGRID
from .test_webhooks import activated, call, host_runtime  # noqa: F401  (host_runtime is a fixture)

pytestmark = pytest.mark.usefixtures("host_runtime")


@pytest.mark.parametrize("weak", FORGEABLE.values(), ids=FORGEABLE.keys())
def test_a_link_forged_with_a_guessable_secret_finds_no_endpoint_to_honour_it(
        settings, data_dir, weak) -> None:
    victim = make_settings(data_dir, **REAL_SENDGRID, **weak)
    guessed = weak.get("secret_key_fallbacks", [weak.get("secret_key")])[0]
    forged = make_token(make_settings(data_dir, secret_key=guessed), "other-tenant",
                        "ceo@victim.test", "any")
    assert read_token(victim, forged).email == "ceo@victim.test"  # the link itself is good
    make_tenant("other-tenant")
    with pytest.raises(SettingsError) as refused:
        app = make_app(victim)  # `outreach serve`, the Flask extension, the Django app
        call(activated(app), "POST", f"/unsubscribe/{forged}")
    setting = "OUTREACH_SECRET_KEY_FALLBACKS" if "secret_key_fallbacks" in weak else "OUTREACH_SECRET_KEY"
    assert str(refused.value).startswith(f"{setting} ")
    assert "outreach secret generate" in str(refused.value) or "remove it" in str(refused.value)
    assert Suppression.select().count() == 0
    assert get_settings() is settings  # refused before anything was switched over


def test_outreach_serve_with_the_default_secret_stops_before_serving(sqlite_db, data_dir) -> None:
    # The review's set-up: a public HTTPS base URL and a SendGrid key, no OUTREACH_SECRET_KEY.
    env = {key: value for key, value in os.environ.items() if not key.startswith("OUTREACH_")}
    env.update({"OUTREACH_BROKER_URL": "stub://", "OUTREACH_DATA_DIR": str(data_dir),
                "OUTREACH_DATABASE_URL": f"sqlite:///{data_dir / 'outreach.db'}",
                "OUTREACH_SENDGRID_API_KEY": "SG.live-key",
                "OUTREACH_PUBLIC_BASE_URL": "https://hooks.acme.test"})
    command = [sys.executable, "-m", "outreach_actors.cli", "serve", "--port", "0"]
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("outreach serve served with the public default secret")
    assert result.returncode == 1
    assert "error: OUTREACH_SECRET_KEY is the development default" in result.stderr
    assert "outreach secret generate" in result.stderr
    assert "serving" not in result.stdout and "Traceback" not in result.stderr


@pytest.mark.parametrize("development", [
    {"sendgrid_api_host": "http://127.0.0.1:8625"},  # a stand-in on this host (tests, the demo)
    {"sendgrid_api_key": None},  # no SendGrid key: nothing is mailed
], ids=["stand-in", "no key"])
def test_development_endpoints_start_with_the_default_secret(settings, data_dir, development) -> None:
    app = activated(make_app(make_settings(data_dir, secret_key=DEVELOPMENT_SECRET, **development)))
    assert call(app, "GET", "/unsubscribe/not-a-token")[0] == 400


def test_outreach_secret_generate_prints_a_secret_production_starts_with(settings, data_dir) -> None:
    printed = [CliRunner().invoke(main, ["secret", "generate"]) for _ in range(2)]
    assert all(result.exit_code == 0 for result in printed)
    first, second = (result.output.strip() for result in printed)
    assert first != second and len(first) >= 64 and secret_weakness(first) is None
    production = settings_from_mapping({
        "OUTREACH_SECRET_KEY": first, "OUTREACH_SENDGRID_API_KEY": "SG.live-key",
        "OUTREACH_DATA_DIR": str(data_dir), "OUTREACH_BROKER_URL": "stub://",
        "OUTREACH_DATABASE_URL": f"sqlite:///{data_dir / 'outreach.db'}",
        "OUTREACH_PUBLIC_BASE_URL": "https://hooks.acme.test",
    })
    app = activated(make_app(production))
    assert call(app, "GET", "/unsubscribe/not-a-token")[0] == 400


@pytest.mark.parametrize("secret", [
    secrets.token_urlsafe(32), secrets.token_urlsafe(48), secrets.token_hex(16),
    secrets.token_hex(32),
], ids=["token_urlsafe(32)", "token_urlsafe(48)", "token_hex(16)", "token_hex(32)"])
def test_random_secrets_of_32_bytes_or_more_pass(secret) -> None:
    assert secret_weakness(secret) is None


@pytest.mark.parametrize("secret, why", [
    ("", "is empty"),
    ("abc", "is 3 bytes long, fewer than the 32 needed"),
    (secrets.token_hex(15), "is 30 bytes long, fewer than the 32 needed"),
    ("0110" * 10, "has only 2 different characters, fewer than 8"),
    ("Secret-key-1234" * 3, "repeats a pattern"),
    (DEVELOPMENT_SECRET * 2, "repeats a pattern"),
    (DEVELOPMENT_SECRET, "is the development default, which is public"),
], ids=["empty", "3 letters", "30 bytes", "2 characters", "a pattern", "default twice", "default"])
def test_short_or_patterned_secrets_are_refused_saying_why(secret, why) -> None:
    assert secret_weakness(secret) == why


def test_every_weak_secret_is_named_and_the_secret_itself_never_is(data_dir) -> None:
    current = make_settings(data_dir, secret_key="hunter2",
                            secret_key_fallbacks=[secrets.token_urlsafe(32), DEVELOPMENT_SECRET])
    problems = secret_problems(current)
    assert [problem.split(":")[0] for problem in problems] == [
        "OUTREACH_SECRET_KEY is 7 bytes long, fewer than the 32 needed",
        "OUTREACH_SECRET_KEY_FALLBACKS entry 2 is the development default, which is public",
    ]
    assert not any("hunter2" in problem for problem in problems)
