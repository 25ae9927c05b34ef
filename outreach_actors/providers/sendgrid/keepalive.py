"""HTTP requests to one provider host over a connection each thread keeps open.

The ``sendgrid`` package sends through python_http_client, which builds a new urllib
opener (reading the proxy environment) and opens a new connection for every request,
with ``Connection: close``: against api.sendgrid.com that is a TCP and TLS handshake
per email, two or three round trips before the first byte of the request. This
module keeps one connection per worker thread instead. It is written on the standard
library's http.client rather than a pool such as urllib3 because the send must know
*where* a failure happened: before the whole request was written (SendGrid never had
it: safe to ask again) or after (it may have been accepted: sending again could
deliver twice). urllib3 reports both as one ``ProtocolError``.
"""

from __future__ import annotations

import http.client
import select
import ssl
import threading
import time
from email.message import Message
from typing import NamedTuple
from urllib.parse import urlsplit

# A kept connection idle longer than this is closed and a new one opened. Servers
# close idle connections on their own schedule (60 s and more is usual); reusing one
# at the moment the server closes it would lose the answer to a request it never
# read, which counts as ambiguous. Staying well under their timeout avoids the race.
DEFAULT_MAX_IDLE_S = 15.0


class RequestNotSent(Exception):
    """Connecting or writing the request failed: the server never had all of it."""


class HTTPAnswer(NamedTuple):
    status: int
    headers: Message
    body: bytes


class _Kept(NamedTuple):
    connection: http.client.HTTPConnection
    last_used: float


class KeptAliveConnections:
    """Sends requests to ``base_url``, keeping one open connection per calling thread.

    Parameters:
      base_url(str): ``http://`` or ``https://`` and a host, with an optional port.
      timeout_s(float): Seconds to connect, and then for each read of the answer.
      max_idle_s(float): A connection unused for longer is replaced before use.
    """

    def __init__(self, base_url: str, timeout_s: float, *,
                 max_idle_s: float = DEFAULT_MAX_IDLE_S) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(f"{base_url!r} must be an http(s) URL such as https://api.sendgrid.com")
        self.scheme = parts.scheme
        self.hostname = parts.hostname
        self.port = parts.port
        self.base_path = parts.path.rstrip("/")
        self.timeout_s = timeout_s
        self.max_idle_s = max_idle_s
        self._ssl_context = ssl.create_default_context() if self.scheme == "https" else None
        self._local = threading.local()

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> HTTPAnswer:
        """POST ``body`` to ``path`` and read the whole answer.

        Raises RequestNotSent when connecting or writing failed; any other OSError or
        http.client.HTTPException means the request was written and the answer lost.
        """
        connection = self._connection()
        try:
            connection.request("POST", self.base_path + path, body=body, headers=headers)
        except (OSError, http.client.HTTPException) as exc:
            self.discard()
            raise RequestNotSent(f"{type(exc).__name__}: {exc}") from exc
        try:
            response = connection.getresponse()
            answer = HTTPAnswer(response.status, response.msg, response.read())
        except BaseException:
            self.discard()
            raise
        if response.will_close:
            self.discard()
        else:
            self._local.kept = _Kept(connection, time.monotonic())
        return answer

    def discard(self) -> None:
        """Close this thread's connection, if it has one; the next request opens another."""
        kept: _Kept | None = getattr(self._local, "kept", None)
        self._local.kept = None
        if kept is not None:
            kept.connection.close()

    def _connection(self) -> http.client.HTTPConnection:
        kept: _Kept | None = getattr(self._local, "kept", None)
        if kept is not None:
            if time.monotonic() - kept.last_used <= self.max_idle_s and _still_open(kept.connection):
                return kept.connection
            self.discard()
        if self._ssl_context is not None:
            return http.client.HTTPSConnection(
                self.hostname, self.port, timeout=self.timeout_s, context=self._ssl_context)
        return http.client.HTTPConnection(self.hostname, self.port, timeout=self.timeout_s)


def _still_open(connection: http.client.HTTPConnection) -> bool:
    """Whether an idle kept connection can carry a request: a socket that is readable
    while no request is out has been closed by the server (or sent something it should
    not have); either way it is not reused."""
    sock = connection.sock
    if sock is None:
        return False
    try:
        if hasattr(select, "poll"):  # select() refuses descriptors past 1023
            poller = select.poll()
            poller.register(sock, select.POLLIN)
            return not poller.poll(0)
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable
