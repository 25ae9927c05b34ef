"""The dashboard as plain WSGI behind HTTP basic authentication (``outreach serve
--dashboard``), mounted beside the webhook and unsubscribe endpoints."""

from __future__ import annotations

from collections.abc import Iterable
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from typing import Any
from urllib.parse import parse_qsl

from outreach_actors.web.app import OutreachWSGI, StartResponse
from outreach_actors.web.dashboard.access import BasicAuth, parse_users
from outreach_actors.web.dashboard.pages import (
    DASHBOARD_HEADERS,
    HTML,
    MAX_FORM_BYTES,
    Dashboard,
    DashboardRequest,
)
from outreach_actors.web.http import Reply
from outreach_actors.worker.actors.replies import enqueue_inbound_post
from outreach_actors.worker.actors.webhooks import enqueue_delivery

#: Where ``outreach serve --dashboard`` mounts the dashboard.
DASHBOARD_PREFIX = "/outreach"
REALM = "outreach dashboard"


class DashboardWSGI:
    """The endpoints of ``app``, with the dashboard under ``/outreach/`` for the users of
    OUTREACH_DASHBOARD_USERS only (SettingsError, naming it, when it is unset)."""

    def __init__(self, app: OutreachWSGI) -> None:
        self.app = app
        self.endpoints = app.endpoints  # what the server reads its body limit from
        settings = app.endpoints.settings
        self.auth = BasicAuth(parse_users(settings.dashboard_users))
        self.dashboard = Dashboard(settings, enqueue_delivery, enqueue_inbound_post)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path != DASHBOARD_PREFIX and not path.startswith(DASHBOARD_PREFIX + "/"):
            return self.app(environ, start_response)
        if path == DASHBOARD_PREFIX:
            reply = Reply(308, "", HTML, {"Location": DASHBOARD_PREFIX + "/"})
        elif self.auth.user(environ.get("HTTP_AUTHORIZATION")) is None:
            reply = Reply(401, "The dashboard needs a user and password "
                               "(OUTREACH_DASHBOARD_USERS).\n",
                          extra_headers={**DASHBOARD_HEADERS,
                                         "WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'})
        else:
            reply = self._dashboard(environ, path.removeprefix(DASHBOARD_PREFIX))
        body = reply.body.encode("utf-8")
        start_response(f"{reply.status} {HTTPStatus(reply.status).phrase}",
                       [*reply.headers().items(), ("Content-Length", str(len(body)))])
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]

    def _dashboard(self, environ: dict[str, Any], path: str) -> Reply:
        try:
            return self._read_request(environ, path)
        except ValueError:  # more than 100 fields in a query string or form
            return Reply(400, "Too many fields in this request.\n")

    def _read_request(self, environ: dict[str, Any], path: str) -> Reply:
        method = environ.get("REQUEST_METHOD", "GET")
        form: dict[str, str] = {}
        if method == "POST":
            try:
                length = int(environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_FORM_BYTES:
                return Reply(413, "A dashboard form is at most 64 KiB.\n")
            form = _pairs(environ["wsgi.input"].read(length).decode("utf-8", errors="replace"))
        cookies: dict[str, str] = {}
        try:
            cookies = {key: morsel.value for key, morsel in
                       SimpleCookie(environ.get("HTTP_COOKIE", "")).items()}
        except CookieError:
            pass  # a malformed cookie header: as if none came (a new CSRF cookie is set)
        return self.dashboard.handle(DashboardRequest(
            method=method, path=path, base=DASHBOARD_PREFIX,
            query=_pairs(environ.get("QUERY_STRING", "")), form=form, cookies=cookies))


def _pairs(encoded: str) -> dict[str, str]:
    """The first value of each field of a query string or form body."""
    pairs: dict[str, str] = {}
    for key, value in parse_qsl(encoded, keep_blank_values=True, max_num_fields=100):
        pairs.setdefault(key, value)
    return pairs
