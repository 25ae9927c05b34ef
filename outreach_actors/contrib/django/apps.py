"""The Django app config: reads ``settings.OUTREACH`` at start and when a test overrides it."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed

from outreach_actors.contrib import Endpoints, activate, host_settings
from outreach_actors.settings import SettingsError

SETTING = "OUTREACH"


class OutreachConfig(AppConfig):
    name = "outreach_actors.contrib.django"
    label = "outreach_actors"
    verbose_name = "Outreach"
    default = True

    endpoints: Endpoints

    def ready(self) -> None:
        self.configure_from_django()
        setting_changed.connect(self._on_setting_changed, dispatch_uid="outreach_actors.settings")

    def configure_from_django(self) -> None:
        from django.conf import settings

        config = getattr(settings, SETTING, None) or {}
        if not isinstance(config, dict):
            raise ImproperlyConfigured(f"settings.{SETTING} must be a dict of outreach settings")
        try:
            self.endpoints = activate(host_settings(config, prefixed=False))
        except SettingsError as exc:
            raise ImproperlyConfigured(f"settings.{SETTING}: {exc}") from exc

    def _on_setting_changed(self, *, setting: str, **kwargs: Any) -> None:
        if setting == SETTING:
            self.configure_from_django()
