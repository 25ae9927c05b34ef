"""The standalone WSGI app behind ``outreach serve``, for deployments with neither Flask nor Django.

``make_app(settings)`` builds it; ``serve(host, port)`` runs it on waitress, with
timeouts and bounded connections and threads; ``gunicorn outreach_actors.wsgi:application``
runs it under another server with settings from the environment. It is written on
plain WSGI so that the standalone endpoint needs no web framework installed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from functools import lru_cache
from http import HTTPStatus
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import waitress
from waitress.server import BaseWSGIServer, MultiSocketServer

from outreach_actors.settings import Settings, get_settings
from outreach_actors.web.endpoints import (
    INBOUND_PATH,
    UNSUBSCRIBE_PATH,
    WEBHOOK_PATH,
    Endpoints,
    activate,
)
from outreach_actors.web.events import EVENTS_PATH, EventsReceiver
from outreach_actors.web.http import Reply
from outreach_actors.web.webhooks import SendGridWebhookReceiver

logger = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

#: Requests ``serve`` handles at once; more wait, queued, for a free thread.
DEFAULT_THREADS = 8
#: Connections ``serve`` holds open at once; more wait in the listen backlog.
DEFAULT_CONNECTION_LIMIT = 500
#: Seconds a connection may stay silent (idle, or a request sent too slowly) before
#: ``serve`` closes it.
DEFAULT_IDLE_TIMEOUT_S = 30


class OutreachWSGI:
    """Routes ``POST /webhooks/sendgrid``, ``POST /webhooks/sendgrid/inbound``,
    ``POST /events`` and ``GET|POST /unsubscribe/<token>``."""

    def __init__(self, endpoints: Endpoints) -> None:
        self.endpoints = endpoints

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        reply = self.route(environ)
        body = reply.body.encode("utf-8")
        start_response(
            f"{reply.status} {HTTPStatus(reply.status).phrase}",
            [*reply.headers().items(), ("Content-Length", str(len(body)))],
        )
        # A HEAD answer has GET's headers and no body (the WSGI server does not strip it).
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]

    def route(self, environ: dict[str, Any]) -> Reply:
        path = environ.get("PATH_INFO", "")
        method = environ.get("REQUEST_METHOD", "GET")
        receiver = {WEBHOOK_PATH: self.endpoints.webhook, INBOUND_PATH: self.endpoints.inbound,
                    EVENTS_PATH: self.endpoints.events}.get(path)
        if receiver is not None:
            if method != "POST":
                return Reply(405, "Use POST.\n")
            return self._webhook(environ, receiver)
        token = path.removeprefix(UNSUBSCRIBE_PATH)
        if path.startswith(UNSUBSCRIBE_PATH) and token and "/" not in token:
            return self.endpoints.unsubscribe.respond(method, token)
        return Reply(404, "Not found.\n")

    def _webhook(self, environ: dict[str, Any],
                 receiver: SendGridWebhookReceiver | EventsReceiver) -> Reply:
        try:
            length = int(environ.get("CONTENT_LENGTH") or "")
        except ValueError:
            length = None
        stream = environ["wsgi.input"]
        if length is None and not environ.get("wsgi.input_terminated"):
            # Without a length, reading a plain WSGI input would wait for a close that never comes.
            return Reply(411, "A Content-Length header is required.\n")
        read = stream.read if length is None else _bounded(stream.read, length)
        headers = {
            key[5:].replace("_", "-").title(): value
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        if environ.get("CONTENT_TYPE"):  # WSGI keeps it out of the HTTP_ keys
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        return receiver.receive(headers, read, length)


def make_app(settings: Settings | None = None) -> OutreachWSGI:
    """The WSGI app for these settings (default: the environment's)."""
    return OutreachWSGI(activate(settings or get_settings()))


@lru_cache(maxsize=1)
def _default_app() -> OutreachWSGI:
    return make_app()


def __getattr__(name: str) -> Any:
    """``application``, the app for WSGI servers (``outreach_actors.wsgi:application``):
    built when the server looks it up at start, not when this module is imported
    (which must do no I/O), nor on the first request: so a bad setting (a verification
    key that is no key) stops the server at start, with the SettingsError naming it,
    rather than answering every request with a 500."""
    if name == "application":
        return _default_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """One thread per request, so a slow client does not hold up SendGrid's next POST.

    For in-process servers of tests and dev tools only: it has no timeouts and no bound
    on its threads, so ``serve`` does not use it.
    """

    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    """Access lines through logging, not stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        logger.info("%s " + format, self.address_string(), *args)


def serve(
    host: str,
    port: int,
    app: OutreachWSGI | None = None,
    *,
    threads: int = DEFAULT_THREADS,
    connection_limit: int = DEFAULT_CONNECTION_LIMIT,
    idle_timeout_s: int = DEFAULT_IDLE_TIMEOUT_S,
) -> None:
    """Serve ``app`` (default: the one for the environment's settings) until
    interrupted (``outreach serve``). Raises OSError when it cannot listen there."""
    server = http_server(host, port, app or make_app(), threads=threads,
                         connection_limit=connection_limit, idle_timeout_s=idle_timeout_s)
    logger.info("Serving webhooks and unsubscribe links on http://%s:%d", host, port)
    try:
        server.run()
    finally:
        server.close()


def http_server(
    host: str,
    port: int,
    app: OutreachWSGI,
    *,
    threads: int = DEFAULT_THREADS,
    connection_limit: int = DEFAULT_CONNECTION_LIMIT,
    idle_timeout_s: int = DEFAULT_IDLE_TIMEOUT_S,
) -> BaseWSGIServer | MultiSocketServer:
    """The waitress server ``serve`` runs, listening but not yet running (``.run()``).

    Waitress reads a whole request before a thread takes it, so a silent or slow client
    holds a connection, never a thread, and only until ``idle_timeout_s`` has passed.
    """
    try:
        return waitress.create_server(
            app, host=host, port=port, threads=threads,
            connection_limit=connection_limit, channel_timeout=idle_timeout_s,
            # Silent connections are looked for every half timeout (whole seconds, at least 1).
            cleanup_interval=max(1, idle_timeout_s // 2),
            # Longer bodies are refused (413) before they are read, as the receiver would.
            max_request_body_size=max(app.endpoints.settings.webhook_max_body_bytes,
                                      app.endpoints.settings.inbound_max_body_bytes) + 1,
            # select() cannot watch a descriptor numbered 1024 or more.
            asyncore_use_poll=True,
        )
    except ValueError as exc:  # waitress's word for a host it cannot resolve
        raise OSError(str(exc)) from None


def _bounded(read: Callable[[int], bytes], length: int) -> Callable[[int], bytes]:
    """A reader that stops at Content-Length instead of waiting on the socket."""
    remaining = length

    def read_bounded(size: int) -> bytes:
        nonlocal remaining
        if remaining <= 0:
            return b""
        chunk = read(min(size, remaining))
        remaining -= len(chunk)
        return chunk

    return read_bounded
