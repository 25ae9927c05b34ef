"""The dashboard's pages, whatever hosts them: a request in, a ``Reply`` out.

Flask, Django and the standalone server each turn their request into a
``DashboardRequest`` (having checked who asks) and send back the ``Reply``. Pages are
server-rendered Jinja2 (autoescaped) with one stylesheet shipped in the package: no
script, no CDN. Every change (replay, suppression add and remove) is a POST carrying a
CSRF token; addresses travel in POST bodies, never in URLs, so access logs stay clean.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from http import HTTPStatus
from pathlib import Path
from types import MappingProxyType
from typing import Any

import jinja2
import peewee

from outreach_actors.domain import browse, stats, suppressions, timeline
from outreach_actors.domain.addresses import normalized_address
from outreach_actors.domain.ingest import replay_delivery
from outreach_actors.domain.plans import PlanError, validate_plan
from outreach_actors.domain.preview import PreviewError, preview_node
from outreach_actors.domain.store.models import (
    Contact,
    OutboundMessage,
    Plan,
    Suppression,
    Tenant,
    WebhookDelivery,
)
from outreach_actors.domain.stored_plans import plan_for, sender_problem
from outreach_actors.settings import Settings
from outreach_actors.web.dashboard.access import (
    CSRF_COOKIE,
    CSRF_FIELD,
    csrf_token,
    csrf_token_matches,
    new_csrf_secret,
)
from outreach_actors.web.dashboard.graph import draw_plan
from outreach_actors.web.http import PAGE_HEADERS, Reply, database_connection
from outreach_actors.worker.limiters import default_limits

HERE = Path(__file__).resolve().parent

#: The page headers, with the package's own stylesheet allowed (no script at all).
DASHBOARD_HEADERS = MappingProxyType({
    **PAGE_HEADERS,
    "Content-Security-Policy": ("default-src 'none'; style-src 'self'; img-src 'self'; "
                                "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
})
HTML = "text/html; charset=utf-8"
#: The largest id an id column holds (PostgreSQL's integer).
MAX_ROW_ID = 2**31 - 1
#: The longest form body a dashboard POST may have (a few fields).
MAX_FORM_BYTES = 64 * 1024


class BadRequest(Exception):
    """A request the dashboard refuses: its status and the sentence shown."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class DashboardRequest:
    """A request to the dashboard: ``path`` below its mount point, which is ``base``;
    ``tenants``, the tenants whose data the user may see (None: every tenant)."""

    method: str
    path: str
    base: str = ""
    query: Mapping[str, str] = field(default_factory=dict)
    form: Mapping[str, str] = field(default_factory=dict)
    cookies: Mapping[str, str] = field(default_factory=dict)
    tenants: frozenset[str] | None = None


Handler = Callable[["_RequestContext", re.Match], Reply]


class Dashboard:
    """Routes a DashboardRequest to its page; ``enqueue_delivery`` queues a replayed
    webhook delivery for normalization (the webhooks actor, in a worker)."""

    def __init__(self, settings: Settings, enqueue_delivery: Callable[[int], Any]) -> None:
        self.settings = settings
        self.enqueue_delivery = enqueue_delivery
        self.templates = jinja2.Environment(
            loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=True,
            undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
        self.stylesheet = (HERE / "static" / "dashboard.css").read_text()
        self.routes: list[tuple[str, re.Pattern, Handler]] = [
            (method, re.compile(pattern + r"\Z"), handler) for method, pattern, handler in [
                ("GET", r"/", self.plans_page),
                ("GET", r"/static/dashboard\.css", self.css),
                ("GET", r"/plans/(\d+)", self.plan_page),
                ("GET", r"/contacts", self.contacts_page),
                ("POST", r"/contacts", self.contacts_page),
                ("GET", r"/contacts/(\d+)", self.timeline_page),
                ("GET", r"/messages/([A-Za-z0-9_.~-]{1,64})", self.message_page),
                ("GET", r"/failures", self.failures_page),
                ("GET", r"/webhooks", self.webhooks_page),
                ("GET", r"/webhooks/(\d+)", self.webhook_page),
                ("POST", r"/webhooks/(\d+)/replay", self.replay),
                ("GET", r"/suppressions", self.suppressions_page),
                ("POST", r"/suppressions", self.suppressions_page),
                ("POST", r"/suppressions/add", self.add_suppression),
                ("POST", r"/suppressions/(\d+)/remove", self.remove_suppression),
                ("GET", r"/senders", self.senders_page),
            ]
        ]

    # --- the request cycle --------------------------------------------------------

    def handle(self, request: DashboardRequest) -> Reply:
        """The reply to one request: a page, a redirect after a change, or a clear
        4xx page; never a traceback."""
        csrf_secret = request.cookies.get(CSRF_COOKIE) or ""
        new_secret = None
        if not re.fullmatch(r"[A-Za-z0-9_-]{32,64}", csrf_secret):
            csrf_secret = new_secret = new_csrf_secret()
        context = _RequestContext(request, csrf_token(self.settings.secret_key, csrf_secret))
        try:
            reply = self._route(request, csrf_secret, context)
        except BadRequest as exc:
            reply = self._page("error.html", context, status=exc.status,
                               title=HTTPStatus(exc.status).phrase, message=str(exc))
        except (peewee.OperationalError, peewee.InterfaceError):
            reply = self._page("error.html", context, status=503, title="Unavailable",
                               message="The outreach database cannot be reached; try again shortly.")
        if new_secret is None:
            return reply
        cookie = (f"{CSRF_COOKIE}={new_secret}; Path={request.base or '/'}; HttpOnly; "
                  "SameSite=Strict")
        return Reply(reply.status, reply.body, reply.content_type,
                     {**reply.extra_headers, "Set-Cookie": cookie})

    def _route(self, request: DashboardRequest, csrf_secret: str,
               context: _RequestContext) -> Reply:
        path = request.path or "/"
        allowed = []
        for method, pattern, handler in self.routes:
            match = pattern.match(path)
            if match is None:
                continue
            allowed.append(method)
            if method == request.method or (method == "GET" and request.method == "HEAD"):
                if method == "POST" and not csrf_token_matches(
                        self.settings.secret_key, csrf_secret, request.form.get(CSRF_FIELD)):
                    raise BadRequest(403, "This form's CSRF token is missing or wrong: reload "
                                          "the page and submit it again.")
                with database_connection():
                    return handler(context, match)
        if allowed:
            raise BadRequest(405, f"Use {' or '.join(sorted(set(allowed)))} here.")
        raise BadRequest(404, f"There is no dashboard page at {path[:200]}.")

    def _page(self, template: str, context: _RequestContext, *, status: int = 200,
              **values: Any) -> Reply:
        body = self.templates.get_template(template).render(
            url=context.url, csrf_field=CSRF_FIELD, csrf_token=context.csrf_token,
            request=context.request, **values)
        return Reply(status, body, HTML, DASHBOARD_HEADERS)

    def _redirect(self, context: _RequestContext, path: str) -> Reply:
        return Reply(303, "", HTML, {**DASHBOARD_HEADERS, "Location": context.url(path)})

    # --- pages ----------------------------------------------------------------------

    def css(self, request: _RequestContext, match: re.Match) -> Reply:
        return Reply(200, self.stylesheet, "text/css; charset=utf-8",
                     {"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"})

    def plans_page(self, request: _RequestContext, match: re.Match) -> Reply:
        return self._page("plans.html", request,
                          page=browse.plans(_page_number(request), tenant_ids=request.tenants))

    def plan_page(self, request: _RequestContext, match: re.Match) -> Reply:
        plan = Plan.get_or_none(Plan.id == _row_id(match[1]))
        plan = _found(plan, "plan", match[1], request, plan and plan.tenant_id)
        since, until = _day(request, "since"), _day(request, "until")
        if since and until and until < since:
            raise BadRequest(400, "The period's end (until) is before its start (since).")
        until_end = until + timedelta(days=1) if until and until < datetime(9999, 12, 31) else None
        rows = stats.funnel(plan_name=plan.name, tenant_id=plan.tenant_id, version=plan.version,
                            since=since, until=until_end)
        counts = {row["node"]: row for row in rows}
        node_lines = {node: [f"{column} {counts[node][column]}" for column in stats.FUNNEL_COLUMNS
                             if counts[node][column]]
                      for node in counts}
        moves = stats.transition_counts(plan.id, since=since, until=until_end)
        drawn = draw_plan(plan.definition, node_lines, moves)
        preview = preview_error = None
        contact_id = request.query.get("contact", "").strip()
        node = request.query.get("node", "")
        if contact_id:
            if not contact_id.isdigit():
                raise BadRequest(400, "contact must be a contact's id (a whole number).")
            contact = Contact.get_or_none(Contact.id == _row_id(contact_id))
            contact = _found(contact, "contact", contact_id, request, contact and contact.tenant_id)
            try:
                preview = preview_node(plan, node, contact, self.settings)
            except PreviewError as exc:
                preview_error = str(exc)
        # Here, not at import: scipy loads for a plan page, not for every dashboard process.
        from outreach_actors.domain.experiments import experiment_results

        return self._page(
            "plan.html", request, plan=plan, drawn=drawn, columns=stats.FUNNEL_COLUMNS,
            experiments=experiment_results(plan_name=plan.name, tenant_id=plan.tenant_id),
            counts=[counts.get(name) or {"node": name} for name in plan.definition.get("nodes", {})],
            since=since, until=until, problems=_plan_problems(plan),
            versions=Plan.select(Plan.id, Plan.version).where(
                Plan.tenant == plan.tenant_id, Plan.name == plan.name).order_by(Plan.version),
            email_nodes=[name for name, spec in plan.definition.get("nodes", {}).items()
                         if spec.get("type") == "email"],
            preview=preview, preview_error=preview_error, preview_node=node,
            preview_contact=contact_id)

    def contacts_page(self, request: _RequestContext, match: re.Match) -> Reply:
        query = request.form.get("q", "") if request.method == "POST" else ""
        found = timeline.find_contacts(query, tenant_ids=request.tenants) if query else []
        return self._page("contacts.html", request, query=query, contacts=found,
                          searched=bool(query.strip()))

    def timeline_page(self, request: _RequestContext, match: re.Match) -> Reply:
        found = timeline.contact_timeline(_row_id(match[1]))
        found = _found(found, "contact", match[1], request, found and found.contact.tenant_id)
        return self._page("timeline.html", request, timeline=found)

    def message_page(self, request: _RequestContext, match: re.Match) -> Reply:
        message = OutboundMessage.get_or_none(OutboundMessage.id == match[1])
        message = _found(message, "message", match[1], request, message and message.tenant_id)
        return self._page("message.html", request, message=message)

    def failures_page(self, request: _RequestContext, match: re.Match) -> Reply:
        number = _page_number(request)
        rows = stats.failures(limit=browse.PAGE_SIZE + 1, offset=(number - 1) * browse.PAGE_SIZE,
                              tenant_ids=None if request.tenants is None else list(request.tenants))
        page = browse.Page(rows[:browse.PAGE_SIZE], number, len(rows) > browse.PAGE_SIZE)
        return self._page("failures.html", request, page=page)

    def webhooks_page(self, request: _RequestContext, match: re.Match) -> Reply:
        _every_tenant(request)
        status = request.query.get("status") or None
        known = (WebhookDelivery.RECEIVED, WebhookDelivery.PROCESSED, WebhookDelivery.FAILED)
        if status is not None and status not in known:
            raise BadRequest(400, f"status must be one of {', '.join(known)}.")
        page = browse.deliveries(_page_number(request), status=status)
        return self._page("webhooks.html", request, page=page, state=status, statuses=known)

    def webhook_page(self, request: _RequestContext, match: re.Match) -> Reply:
        _every_tenant(request)
        delivery = _found(WebhookDelivery.get_or_none(WebhookDelivery.id == _row_id(match[1])),
                          "webhook delivery", match[1])
        body = bytes(delivery.body).decode("utf-8", errors="replace")
        return self._page("webhook.html", request, delivery=delivery, body=body,
                          replayed=request.query.get("replayed") == "1")

    def replay(self, request: _RequestContext, match: re.Match) -> Reply:
        _every_tenant(request)
        try:
            replay_delivery(_row_id(match[1]), self.enqueue_delivery)
        except LookupError:
            raise BadRequest(404, f"There is no webhook delivery {match[1]}.") from None
        return self._redirect(request, f"/webhooks/{match[1]}?replayed=1")

    def suppressions_page(self, request: _RequestContext, match: re.Match) -> Reply:
        address = request.form.get("q", "") if request.method == "POST" else ""
        return self._page("suppressions.html", request, query=address,
                          tenants=browse.tenant_ids(request.tenants),
                          page=browse.suppressions(_page_number(request), address=address,
                                                   tenant_ids=request.tenants),
                          done=request.query.get("done", ""))

    def add_suppression(self, request: _RequestContext, match: re.Match) -> Reply:
        tenant_id = request.form.get("tenant", "")
        if Tenant.get_or_none(Tenant.id == tenant_id) is None or not request.may_see(tenant_id):
            raise BadRequest(400, "Choose one of the tenants to suppress the address for.")
        try:
            address = normalized_address(request.form.get("address", ""))
        except ValueError as exc:
            raise BadRequest(400, f"Not an address: {exc}") from None
        reason = request.form.get("reason", "").strip() or "manual"
        if len(reason) > 100 or not reason.isprintable():
            raise BadRequest(400, "The reason must be at most 100 printable characters.")
        added = suppressions.suppress(tenant_id, address, reason, source="dashboard")
        return self._redirect(request, f"/suppressions?done={'added' if added else 'already'}")

    def remove_suppression(self, request: _RequestContext, match: re.Match) -> Reply:
        row = Suppression.get_or_none(Suppression.id == _row_id(match[1]))
        row = _found(row, "suppression", match[1], request, row and row.tenant_id)
        suppressions.lift(row.tenant_id, row.value, row.channel)
        return self._redirect(request, "/suppressions?done=removed")

    def senders_page(self, request: _RequestContext, match: re.Match) -> Reply:
        page = browse.senders(_page_number(request), tenant_ids=request.tenants)
        limits = {
            sender.id: [(f"{limit.scope} per {'minute' if limit.period_ms == 60_000 else 'hour'}",
                         limit.limit)
                        for limit in default_limits(
                            self.settings, tenant=sender.tenant_id, sender=sender.email,
                            recipient_domain="example.com",
                            tenant_overrides=sender.tenant.rate_limits,
                            sender_overrides=sender.rate_limits)]
            for sender in page.rows
        }
        return self._page("senders.html", request, page=page, limits=limits)


@dataclass(frozen=True)
class _RequestContext:
    """A request as its page sees it: with the CSRF token its forms carry."""

    request: DashboardRequest
    csrf_token: str

    @property
    def method(self) -> str:
        return self.request.method

    @property
    def query(self) -> Mapping[str, str]:
        return self.request.query

    @property
    def form(self) -> Mapping[str, str]:
        return self.request.form

    @property
    def tenants(self) -> frozenset[str] | None:
        return self.request.tenants

    def may_see(self, tenant_id: str) -> bool:
        return self.request.tenants is None or tenant_id in self.request.tenants

    def url(self, path: str) -> str:
        """The URL of a dashboard path, under the mount point."""
        return self.request.base.rstrip("/") + path


def _found(row: Any, what: str, row_id: str, request: _RequestContext | None = None,
           tenant_id: str | None = None) -> Any:
    """The row, or 404: also when it is of a tenant the user may not see (whether it
    exists is not said)."""
    if row is None or (request is not None and not request.may_see(tenant_id or "")):
        raise BadRequest(404, f"There is no {what} {row_id[:64]}.")
    return row


def _every_tenant(request: _RequestContext) -> None:
    """Refuse a user limited to some tenants: a webhook delivery carries the events of
    any tenant."""
    if request.tenants is not None:
        raise BadRequest(403, "Webhook deliveries carry every tenant's events: only a user "
                              "who may see every tenant sees them.")


def _row_id(digits: str) -> int:
    """A row id from a URL; 404 past what an id column holds (the database would refuse
    to compare)."""
    if len(digits) > 10 or int(digits) > MAX_ROW_ID:
        raise BadRequest(404, f"There is no row {digits[:64]}.")
    return int(digits)


def _page_number(request: _RequestContext) -> int:
    value = request.query.get("page", "1")
    if not value.isdigit() or not 1 <= int(value) <= 100_000:
        raise BadRequest(400, "page must be a whole number from 1 to 100000.")
    return int(value)


def _day(request: _RequestContext, name: str) -> datetime | None:
    value = request.query.get(name, "").strip()
    if not value:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise BadRequest(400, f"{name} must be a day such as 2026-01-31.") from None
    return datetime(day.year, day.month, day.day)


def _plan_problems(plan: Plan) -> list[str]:
    """What today's checks find in a stored plan version (it passed those of its day),
    and what would make its sends fail."""
    problems: list[str] = []
    try:
        validate_plan(plan.definition)
    except PlanError as exc:
        problems += exc.errors
    spec = plan_for(plan)
    problems += [f"nodes.{name}: an email node with no timeout: a contact who never acts stays "
                 "there, active, for ever" for name in spec.nodes_without_timeout()]
    if any(node.type == "email" for node in spec.nodes.values()):
        problem = sender_problem(plan.tenant_id, spec.sender)
        if problem:
            problems.append(problem)
    return problems
