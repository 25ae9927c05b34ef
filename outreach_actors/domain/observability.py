"""Error reporting: Sentry tags with the ids of what is being worked on."""

from __future__ import annotations

import sys
from typing import Any


def tag(**ids: Any) -> None:
    """Tag the current Sentry scope (one per Dramatiq message) with tenant/plan/node/... ids.

    A no-op unless sentry-sdk was imported and initialised: the domain stays free
    of any hard dependency on it. A value may be a callable, called only then (a
    name that could take a read to find).
    """
    sentry_sdk = sys.modules.get("sentry_sdk")
    if sentry_sdk is None or not sentry_sdk.is_initialized():
        return
    for name, value in ids.items():
        if callable(value):
            value = value()
        if value is not None:
            sentry_sdk.set_tag(f"outreach.{name}", str(value))
