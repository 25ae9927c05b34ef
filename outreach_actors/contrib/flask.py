"""Flask integration: the ``OutreachFlask`` extension and the blueprint it registers.

    app.config["OUTREACH_SENDGRID_WEBHOOK_PUBLIC_KEY"] = "MFkw..."
    outreach = OutreachFlask(app)          # or OutreachFlask() then .init_app(app)

    @app.post("/signup")
    def signup():
        outreach.enroll("acme", request.form["email"], "onboarding")

Settings are the ``OUTREACH_*`` keys of ``app.config`` over the environment. The
blueprint serves ``POST /webhooks/sendgrid``, ``POST /events`` and ``GET|POST /unsubscribe/<token>``.

``OutreachFlask(app, dashboard=True, authorize=is_admin)`` mounts the dashboard under
``/outreach/`` too; ``authorize(request) -> bool`` says who may see it (it shows
personal data: without ``authorize`` the dashboard refuses to mount).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Collection

from flask import Blueprint, Flask, Request, Response, current_app, request

from outreach_actors.contrib import (
    Endpoints,
    activate,
    enroll,
    host_settings,
    pause,
    resume,
    track,
    unenroll,
)
from outreach_actors.settings import SettingsError
from outreach_actors.web.dashboard import Dashboard, DashboardRequest
from outreach_actors.web.http import Reply
from outreach_actors.web.webhooks import SendGridWebhookReceiver
from outreach_actors.worker.actors.webhooks import enqueue_delivery

EXTENSION = "outreach"
DASHBOARD_EXTENSION = "outreach_dashboard"
#: Where the dashboard is mounted, below the extension's url_prefix.
DASHBOARD_PATH = "/outreach"

blueprint = Blueprint("outreach", __name__)
dashboard_blueprint = Blueprint("outreach_dashboard", __name__)


class OutreachFlask:
    """Configures the package from ``app.config`` and mounts the outreach blueprint.

    Parameters:
      app(Flask): the app to initialise now; or call ``init_app`` later.
      url_prefix(str): where to mount the endpoints (default: at the root).
      dashboard(bool): also mount the dashboard, under ``<url_prefix>/outreach/``.
      authorize(callable): ``authorize(request)``, whether this request may see the
        dashboard: True (every tenant), False, or the ids of the tenants it may see;
        required with ``dashboard=True``.
    """

    enroll = staticmethod(enroll)
    track = staticmethod(track)
    unenroll = staticmethod(unenroll)
    pause = staticmethod(pause)
    resume = staticmethod(resume)

    def __init__(self, app: Flask | None = None, *, url_prefix: str | None = None,
                 dashboard: bool = False,
                 authorize: Callable[[Request], bool | Collection[str]] | None = None) -> None:
        if dashboard and authorize is None:
            raise SettingsError(
                "OutreachFlask(dashboard=True) needs authorize=callable(request) -> bool: the "
                "dashboard shows personal data and is never mounted open")
        self.url_prefix = url_prefix
        self.dashboard = dashboard
        self.authorize = authorize
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        endpoints = activate(host_settings(app.config))
        app.extensions[EXTENSION] = endpoints
        app.register_blueprint(blueprint, url_prefix=self.url_prefix)
        prefix = (self.url_prefix or "").rstrip("/")
        if self.dashboard:
            app.extensions[DASHBOARD_EXTENSION] = (
                Dashboard(endpoints.settings, enqueue_delivery), self.authorize)
            app.register_blueprint(dashboard_blueprint, url_prefix=prefix + DASHBOARD_PATH)
        if prefix and not endpoints.settings.public_base_url.rstrip("/").endswith(prefix):
            # The workers build the links from the setting alone: without the prefix
            # they point at /unsubscribe/..., which this app does not serve.
            app.logger.warning(
                "Outreach endpoints are mounted under %s but OUTREACH_PUBLIC_BASE_URL (%s) "
                "does not end with it: unsubscribe links will not reach them",
                prefix, endpoints.settings.public_base_url)


@blueprint.post("/webhooks/sendgrid")
def sendgrid_webhook() -> Response:
    return _receive(_endpoints().webhook)


@blueprint.post("/webhooks/sendgrid/inbound")
def sendgrid_inbound() -> Response:
    return _receive(_endpoints().inbound)


def _receive(receiver: SendGridWebhookReceiver) -> Response:
    read = request.stream.read
    if request.content_length is not None and request.content_length <= receiver.max_body:
        # Werkzeug keeps a body that was read (a host's before_request that logs it):
        # the stream would be empty, and the signature checked against nothing.
        read = io.BytesIO(request.get_data(cache=True)).read
    # Longer, or of no announced length: the receiver refuses or bounds it as it reads.
    return _response(receiver.receive(dict(request.headers.items()), read, request.content_length))


@blueprint.post("/events")
def host_events() -> Response:
    receiver = _endpoints().events
    read = request.stream.read
    if request.content_length is not None and request.content_length <= receiver.max_body:
        read = io.BytesIO(request.get_data(cache=True)).read  # as for the webhook above
    return _response(receiver.receive(dict(request.headers.items()), read, request.content_length))


@blueprint.route("/unsubscribe/<token>", methods=["GET", "POST"])
def unsubscribe(token: str) -> Response:
    return _response(_endpoints().unsubscribe.respond(request.method, token))


@dashboard_blueprint.route("/", defaults={"path": ""}, methods=["GET", "POST"])
@dashboard_blueprint.route("/<path:path>", methods=["GET", "POST"])
def dashboard(path: str) -> Response:
    pages, authorize = current_app.extensions[DASHBOARD_EXTENSION]
    allowed = authorize(request)
    if not allowed:
        return Response("You may not see the outreach dashboard.\n", status=403,
                        content_type="text/plain; charset=utf-8")
    base = request.script_root + request.path[:len(request.path) - len(path)].rstrip("/")
    return _response(pages.handle(DashboardRequest(
        method=request.method, path="/" + path, base=base,
        query=request.args.to_dict(flat=True), form=request.form.to_dict(flat=True),
        cookies=dict(request.cookies), tenants=_tenants(allowed))))


def _tenants(allowed: object) -> frozenset[str] | None:
    """What ``authorize`` returned, as the tenants the user may see (None: every one)."""
    if allowed is True:
        return None
    if isinstance(allowed, Collection) and not isinstance(allowed, str) and all(
            isinstance(tenant, str) for tenant in allowed):
        return frozenset(allowed)
    raise TypeError(f"OutreachFlask's authorize must return True, False or tenant ids, "
                    f"not {type(allowed).__name__}")


def _endpoints() -> Endpoints:
    return current_app.extensions[EXTENSION]


def _response(reply: Reply) -> Response:
    return Response(reply.body, status=reply.status, headers=reply.headers())
