"""Flask integration: the ``OutreachFlask`` extension and the blueprint it registers.

    app.config["OUTREACH_SENDGRID_WEBHOOK_PUBLIC_KEY"] = "MFkw..."
    outreach = OutreachFlask(app)          # or OutreachFlask() then .init_app(app)

    @app.post("/signup")
    def signup():
        outreach.enroll("acme", request.form["email"], "onboarding")

Settings are the ``OUTREACH_*`` keys of ``app.config`` over the environment. The
blueprint serves ``POST /webhooks/sendgrid`` and ``GET|POST /unsubscribe/<token>``.
"""

from __future__ import annotations

import io

from flask import Blueprint, Flask, Response, current_app, request

from outreach_actors.contrib import Endpoints, activate, enroll, host_settings
from outreach_actors.web.http import Reply
from outreach_actors.web.webhooks import SendGridWebhookReceiver

EXTENSION = "outreach"

blueprint = Blueprint("outreach", __name__)


class OutreachFlask:
    """Configures the package from ``app.config`` and mounts the outreach blueprint.

    Parameters:
      app(Flask): the app to initialise now; or call ``init_app`` later.
      url_prefix(str): where to mount the endpoints (default: at the root).
    """

    enroll = staticmethod(enroll)

    def __init__(self, app: Flask | None = None, *, url_prefix: str | None = None) -> None:
        self.url_prefix = url_prefix
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        endpoints = activate(host_settings(app.config))
        app.extensions[EXTENSION] = endpoints
        app.register_blueprint(blueprint, url_prefix=self.url_prefix)
        prefix = (self.url_prefix or "").rstrip("/")
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


@blueprint.route("/unsubscribe/<token>", methods=["GET", "POST"])
def unsubscribe(token: str) -> Response:
    return _response(_endpoints().unsubscribe.respond(request.method, token))


def _endpoints() -> Endpoints:
    return current_app.extensions[EXTENSION]


def _response(reply: Reply) -> Response:
    return Response(reply.body, status=reply.status, headers=reply.headers())
