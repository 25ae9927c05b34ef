"""outreach_actors: reactive email outreach campaigns on Dramatiq actors.

``dramatiq outreach_actors`` and ``periodiq outreach_actors`` import this package:
it reads the settings, starts Sentry (if configured) before building the broker,
installs the broker with its middleware, binds the database and declares every
actor. Building the broker does no I/O; the embedded Redis starts on first use.
"""

from outreach_actors.settings import SettingsError as _SettingsError
from outreach_actors.worker.runtime import setup as _setup

try:
    broker = _setup()
except _SettingsError as _exc:
    # A bad OUTREACH_* value stops every entry point at start, naming the variable.
    raise SystemExit(f"outreach_actors: {_exc}") from None

from outreach_actors.worker import actors  # noqa: E402,F401  (declares every actor on `broker`)

__all__ = ["broker"]
