"""The dashboard's URLs for Django: ``path("outreach/", include("outreach_actors.contrib.django.dashboard"))``.

Staff users only (``is_active`` and ``is_staff``); ``OUTREACH_DASHBOARD_PERMISSION`` in
the Django settings (e.g. ``"outreach_actors.view_dashboard"``, any permission the
project defines) narrows it to the staff who hold that permission. Anonymous visitors are
sent to the login page, as the admin does. ``OUTREACH_DASHBOARD_TENANTS``, a callable
``(request) -> tenant ids or None``, limits a user to those tenants (None: every one).
"""

from __future__ import annotations

from urllib.parse import urlencode

from django.apps import apps
from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import resolve_url
from django.urls import re_path
from django.views.decorators.csrf import csrf_exempt

from outreach_actors.contrib.django.apps import OutreachConfig
from outreach_actors.web.dashboard import Dashboard, DashboardRequest
from outreach_actors.worker.actors.replies import enqueue_inbound_post
from outreach_actors.worker.actors.webhooks import enqueue_delivery

#: The Django setting naming the permission a staff user needs (default: none beyond staff).
PERMISSION_SETTING = "OUTREACH_DASHBOARD_PERMISSION"
#: The Django setting: a callable(request) giving the tenants a user may see (None: all).
TENANTS_SETTING = "OUTREACH_DASHBOARD_TENANTS"

app_name = "outreach_dashboard"


@csrf_exempt  # the dashboard checks its own CSRF token on every POST (see pages.py)
def dashboard(request: HttpRequest, path: str) -> HttpResponse:
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        # As the admin's staff_member_required does (without importing django.contrib.auth,
        # which a project may not install).
        login = resolve_url(settings.LOGIN_URL)
        return HttpResponseRedirect(f"{login}?{urlencode({'next': request.get_full_path()})}")
    permission = getattr(settings, PERMISSION_SETTING, None)
    if not (user.is_active and user.is_staff) or (permission and not user.has_perm(permission)):
        return HttpResponse("You may not see the outreach dashboard.\n", status=403,
                            content_type="text/plain; charset=utf-8")
    base = request.path[:len(request.path) - len(path)].rstrip("/")
    tenants_of = getattr(settings, TENANTS_SETTING, None)
    tenants = tenants_of(request) if tenants_of else None
    reply = _dashboard().handle(DashboardRequest(
        method=request.method or "GET", path="/" + path, base=base,
        query=request.GET.dict(), form=request.POST.dict(), cookies=dict(request.COOKIES),
        tenants=None if tenants is None else frozenset(tenants)))
    headers = reply.headers()
    cookie = headers.pop("Set-Cookie", None)
    response = HttpResponse(reply.body, status=reply.status, headers=headers)
    if cookie:
        response.cookies.load(cookie)  # Django sends (and its test client reads) these
    return response


def _dashboard() -> Dashboard:
    """The app's Dashboard, built again when the app is configured again (a test's
    override_settings of OUTREACH)."""
    config = _config()
    built = getattr(config, "dashboard", None)
    if built is None or built[0] is not config.endpoints:
        built = config.dashboard = (config.endpoints, Dashboard(config.endpoints.settings,
                                                                enqueue_delivery,
                                                                enqueue_inbound_post))
    return built[1]


def _config() -> OutreachConfig:
    return apps.get_app_config(OutreachConfig.label)


urlpatterns = [re_path(r"^(?P<path>.*)$", dashboard, name="page")]
