"""What every endpoint shares, whatever framework hosts it: the framework-neutral
``Reply``, and one database connection per request."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType

from outreach_actors.domain.store.models import database_proxy

# How long a client told "later" (503) is asked to wait before it tries again.
RETRY_AFTER_S = 30

#: What a page shown to a person carries: it answers one person's link, so it is not
#: cached; the link's token is in its URL, so no Referer takes it elsewhere; it cannot
#: be framed (clickjacking), and its type is not guessed.
PAGE_HEADERS = MappingProxyType({
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
})


@dataclass(frozen=True)
class Reply:
    """A framework-neutral HTTP answer."""

    status: int
    body: str
    content_type: str = "text/plain; charset=utf-8"
    extra_headers: Mapping[str, str] = field(default_factory=dict)

    def headers(self) -> dict[str, str]:
        """Its headers but the length: the type, the extra ones and, on a 503, when to
        try again."""
        headers = {"Content-Type": self.content_type, **self.extra_headers}
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
