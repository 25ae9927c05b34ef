"""The invariants' tests use fixtures of the modules that test each part in detail."""

from __future__ import annotations

from tests.test_delivery_statements import acme, rendered  # noqa: F401 (fixtures)
from tests.test_dispatch import enrollments  # noqa: F401 (fixtures)
from tests.test_periodic import sent_message  # noqa: F401 (fixtures)
from tests.test_ratelimit import limiter  # noqa: F401 (fixtures)
from tests.test_webhooks import host_runtime, key, receiver  # noqa: F401 (fixtures)
