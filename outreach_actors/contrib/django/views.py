"""Django views for the SendGrid Event Webhook, Inbound Parse and the unsubscribe link."""

from __future__ import annotations

from django.apps import apps
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods, require_POST

from outreach_actors.contrib.django.apps import OutreachConfig
from outreach_actors.web.http import Reply
from outreach_actors.web.webhooks import SendGridWebhookReceiver


@csrf_exempt  # SendGrid signs its requests; it cannot send a CSRF token
@require_POST
def sendgrid_webhook(request: HttpRequest) -> HttpResponse:
    return _receive(request, _config().endpoints.webhook)


@csrf_exempt  # SendGrid signs its requests; it cannot send a CSRF token
@require_POST
def sendgrid_inbound(request: HttpRequest) -> HttpResponse:
    return _receive(request, _config().endpoints.inbound)


def _receive(request: HttpRequest, receiver: SendGridWebhookReceiver) -> HttpResponse:
    return _response(receiver.receive(dict(request.headers), request.read,
                                      _content_length(request)))


@csrf_exempt  # signed with OUTREACH_EVENTS_SECRET by the host's other services
@require_POST
def host_events(request: HttpRequest) -> HttpResponse:
    reply = _config().endpoints.events.receive(
        dict(request.headers), request.read, _content_length(request)
    )
    return _response(reply)


@csrf_exempt  # RFC 8058 one-click POSTs come from mail providers, without a token
@require_http_methods(["GET", "HEAD", "POST"])
def unsubscribe(request: HttpRequest, token: str) -> HttpResponse:
    return _response(_config().endpoints.unsubscribe.respond(request.method or "GET", token))


def _config() -> OutreachConfig:
    return apps.get_app_config(OutreachConfig.label)


def _content_length(request: HttpRequest) -> int | None:
    try:
        return int(request.META.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None


def _response(reply: Reply) -> HttpResponse:
    return HttpResponse(reply.body, status=reply.status, headers=reply.headers())
