"""What every endpoint shares, whatever framework hosts it: the framework-neutral
``Reply``, and one database connection per request."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from outreach_actors.domain.store.models import database_proxy

# How long a client told "later" (503) is asked to wait before it tries again.
RETRY_AFTER_S = 30


@dataclass(frozen=True)
class Reply:
    """A framework-neutral HTTP answer."""

    status: int
    body: str
    content_type: str = "text/plain; charset=utf-8"

    def headers(self) -> dict[str, str]:
        """Its headers but the length: the type and, on a 503, when to try again."""
        headers = {"Content-Type": self.content_type}
        if self.status == 503:
            headers["Retry-After"] = str(RETRY_AFTER_S)
        return headers


@contextmanager
def database_connection() -> Iterator[None]:
    """Hold a connection for one request; close it after only if this opened it.

    A pooled PostgreSQL connection left open in a short-lived request thread
    would never go back to the pool.
    """
    opened = database_proxy.is_closed()
    if opened:
        database_proxy.connect()
    try:
        yield
    finally:
        if opened:
            database_proxy.close()
