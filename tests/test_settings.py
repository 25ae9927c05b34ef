"""Settings: read from OUTREACH_* variables, invalid values named at start."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from outreach_actors.settings import (
    Settings,
    SettingsError,
    settings_from_env,
    settings_from_mapping,
)


def test_defaults_work_with_no_configuration() -> None:
    settings = settings_from_env({})
    assert settings.broker_url is None  # the embedded default
    assert settings.database_url is None
    assert settings.data_dir == Path("./var")
    assert settings.sqlite_path == Path("./var/outreach.db")
    assert settings.no_open_timeout == timedelta(hours=72)
    assert settings.no_click_timeout == timedelta(hours=24)
    assert settings.ratelimit_sender_per_minute == 20


def test_public_variable_names_are_read() -> None:
    env = {
        "OUTREACH_BROKER_URL": "redis://localhost:6379/0",
        "OUTREACH_DATABASE_URL": "postgresql://u@h/db",
        "OUTREACH_DATA_DIR": "/srv/outreach",
        "OUTREACH_SENDGRID_API_KEY": "SG.x",
        "OUTREACH_SENDGRID_API_HOST": "http://127.0.0.1:9999",
        "OUTREACH_SENDGRID_WEBHOOK_PUBLIC_KEY": "MFkw",
        "OUTREACH_SENTRY_DSN": "http://k@127.0.0.1:1/1",
        "OUTREACH_TEMPLATES_DIR": "/srv/templates",
        "OUTREACH_NO_OPEN_TIMEOUT": "PT3S",
        "OUTREACH_RATELIMIT_GLOBAL_PER_HOUR": "100",
        "PATH": "/usr/bin",  # other variables are ignored
    }
    settings = settings_from_env(env)
    assert settings.broker_url == "redis://localhost:6379/0"
    assert settings.database_url == "postgresql://u@h/db"
    assert settings.data_dir == Path("/srv/outreach")
    assert settings.sendgrid_api_host == "http://127.0.0.1:9999"
    assert settings.templates_dir == Path("/srv/templates")
    assert settings.no_open_timeout == timedelta(seconds=3)
    assert settings.ratelimit_global_per_hour == 100


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("OUTREACH_BROKER_URL", "http://localhost"),
        ("OUTREACH_DATABASE_URL", "mysql://localhost/x"),
        ("OUTREACH_NO_OPEN_TIMEOUT", "72 hours"),
        ("OUTREACH_NO_CLICK_TIMEOUT", "P1M"),
        ("OUTREACH_RATELIMIT_SENDER_PER_MINUTE", "0"),
        ("OUTREACH_RATELIMIT_TENANT_PER_HOUR", "lots"),
        ("OUTREACH_SENDGRID_WEBHOOK_ALLOW_UNSIGNED", "perhaps"),
        ("OUTREACH_DISPATCH_BATCH_SIZE", "-5"),
        ("OUTREACH_RENDER_BATCH_SIZE", "0"),
        ("OUTREACH_RENDER_BATCH_SIZE", "5000"),
        ("OUTREACH_PUBLIC_BASE_URL", "https://mail.example.com\r\nX-Evil: 1"),
        ("OUTREACH_PUBLIC_BASE_URL", "mail.example.com"),
    ],
)
def test_invalid_values_fail_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        settings_from_env({variable: value})


def test_unknown_outreach_variable_is_refused() -> None:
    with pytest.raises(SettingsError, match="OUTREACH_NO_OPEN_TIMOUT is not a known setting"):
        settings_from_env({"OUTREACH_NO_OPEN_TIMOUT": "PT1H"})


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValidationError, match="frozen"):
        settings.broker_url = "stub://"  # type: ignore[misc]


def test_django_style_mapping_uses_bare_names() -> None:
    settings = settings_from_mapping({"broker_url": "stub://", "no_open_timeout": "PT1M"}, prefixed=False)
    assert settings.broker_url == "stub://"
    assert settings.no_open_timeout == timedelta(minutes=1)


def test_empty_string_means_unset_for_optional_values() -> None:
    assert settings_from_env({"OUTREACH_BROKER_URL": ""}).broker_url is None
