"""The standalone WSGI app behind ``outreach serve``, for deployments with neither Flask nor Django.

``make_app(settings)`` builds it; ``serve(host, port)`` runs it on the standard
library's threaded server; ``gunicorn outreach_actors.wsgi:application`` runs it
under a production server with settings from the environment. It is written on
plain WSGI so that the standalone endpoint needs no web framework installed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from functools import lru_cache
from http import HTTPStatus
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from outreach_actors.settings import Settings, get_settings
from outreach_actors.web.endpoints import UNSUBSCRIBE_PATH, WEBHOOK_PATH, Endpoints, activate
from outreach_actors.web.http import Reply

logger = logging.getLogger(__name__)

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class OutreachWSGI:
    """Routes ``POST /webhooks/sendgrid`` and ``GET|POST /unsubscribe/<token>``."""

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
        if path == WEBHOOK_PATH:
            if method != "POST":
                return Reply(405, "Use POST.\n")
            return self._webhook(environ)
        token = path.removeprefix(UNSUBSCRIBE_PATH)
        if path.startswith(UNSUBSCRIBE_PATH) and token and "/" not in token:
            return self.endpoints.unsubscribe.respond(method, token)
        return Reply(404, "Not found.\n")

    def _webhook(self, environ: dict[str, Any]) -> Reply:
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
        return self.endpoints.webhook.receive(headers, read, length)


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
    """One thread per request, so a slow client does not hold up SendGrid's next POST."""

    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    """Access lines through logging, not stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        logger.info("%s " + format, self.address_string(), *args)


def serve(host: str, port: int, app: OutreachWSGI | None = None) -> None:
    """Serve ``app`` (default: the one for the environment's settings) until
    interrupted (``outreach serve --host --port``)."""
    app = app or make_app()
    with make_server(host, port, app, ThreadingWSGIServer, QuietHandler) as server:
        logger.info("Serving webhooks and unsubscribe links on http://%s:%d", host, port)
        server.serve_forever()


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
