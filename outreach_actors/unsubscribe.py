"""Unsubscribe links: signed tokens, the confirmation page, and RFC 8058 one-click POST.

A token carries the tenant, the address and the message it was mailed in,
signed with ``secret_key`` (itsdangerous), so it cannot be altered or forged. It
does not expire: an unsubscribe link must keep working for as long as the mail
that carries it can be read.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass

from itsdangerous import BadData, URLSafeSerializer

from . import engine
from .models import Tenant, database_proxy
from .settings import Settings
from .suppressions import suppress
from .webhooks import Reply, database_connection

logger = logging.getLogger(__name__)

# Separates these tokens from anything else signed with the same secret.
TOKEN_SALT = "outreach-unsubscribe"
DEVELOPMENT_SECRET = Settings.model_fields["secret_key"].default
HTML = "text/html; charset=utf-8"


class InvalidUnsubscribeToken(ValueError):
    """A token that was altered, truncated or signed with another secret."""


@dataclass(frozen=True)
class UnsubscribeToken:
    tenant_id: str
    email: str
    message_id: str


def make_token(settings: Settings, tenant_id: str, email: str, message_id: str) -> str:
    return _serializer(settings).dumps([tenant_id, email.strip().lower(), message_id])


def read_token(settings: Settings, token: str) -> UnsubscribeToken:
    """The token's content; raises InvalidUnsubscribeToken if it is not one of ours."""
    try:
        tenant_id, email, message_id = _serializer(settings).loads(token)
    except (BadData, TypeError, ValueError):
        raise InvalidUnsubscribeToken("this unsubscribe link is not valid") from None
    if not all(isinstance(part, str) for part in (tenant_id, email, message_id)):
        raise InvalidUnsubscribeToken("this unsubscribe link is not valid")
    return UnsubscribeToken(tenant_id, email, message_id)


def unsubscribe_url(settings: Settings, tenant_id: str, email: str, message_id: str) -> str:
    """The link (and List-Unsubscribe target) for one email."""
    token = make_token(settings, tenant_id, email, message_id)
    return f"{settings.public_base_url.rstrip('/')}/unsubscribe/{token}"


class UnsubscribePage:
    """Answers ``/unsubscribe/<token>``: GET shows a confirmation form, POST unsubscribes.

    A GET changes nothing, because mail scanners follow links; the POST is both
    the form's and RFC 8058's one-click request (``List-Unsubscribe=One-Click``).

    Parameters:
      settings(Settings): ``secret_key`` that signed the tokens.
    """

    def __init__(self, settings: Settings) -> None:
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.settings = settings
        if settings.secret_key == DEVELOPMENT_SECRET:
            self.logger.warning(
                "OUTREACH_SECRET_KEY is the development default: anyone can forge "
                "unsubscribe links; set a long random secret in production"
            )

    def respond(self, method: str, token: str) -> Reply:
        try:
            request = read_token(self.settings, token)
        except InvalidUnsubscribeToken as exc:
            return _page(400, "Invalid link", f"{exc}. Use the link from the email itself.")
        if method in {"GET", "HEAD"}:  # HEAD: link checkers; the host sends no body
            if self._tenant_gone(request):
                return _LIST_GONE
            return _page(
                200, "Unsubscribe",
                f"Unsubscribe <strong>{html.escape(request.email)}</strong> from these emails?"
                '<form method="post"><input type="hidden" name="List-Unsubscribe" '
                'value="One-Click"><button type="submit">Unsubscribe</button></form>',
            )
        if method != "POST":
            return _page(405, "Method not allowed", "Use the link from the email.")
        try:
            with database_connection():
                applied = apply_unsubscribe(request)
        except Exception:
            self.logger.exception("Unsubscribe failed for message=%s", request.message_id)
            applied = self._queue(token, request)
            if applied is None:
                return _page(503, "Try again", "We could not record this now; please try again.")
        if not applied:
            return _LIST_GONE
        return _page(
            200, "Unsubscribed",
            f"<strong>{html.escape(request.email)}</strong> will get no more of these emails.",
        )

    def _tenant_gone(self, request: UnsubscribeToken) -> bool:
        """Whether the tenant the link was mailed for was deleted. A page that only asks
        does not fail with the database: unknown, the form is shown."""
        try:
            with database_connection():
                return not Tenant.select().where(Tenant.id == request.tenant_id).exists()
        except Exception:
            self.logger.warning("Could not look up the tenant of an unsubscribe link (message=%s)",
                                request.message_id, exc_info=True)
            return False

    def _queue(self, token: str, request: UnsubscribeToken) -> bool | None:
        # Mailbox providers do not retry a one-click POST that failed: with the database
        # down, the workers apply it once it is back (True), if the broker takes it.
        try:
            enqueue_unsubscribe(token)
        except Exception:
            self.logger.exception("Could not queue the unsubscribe of message=%s either",
                                  request.message_id)
            return None
        self.logger.warning("Queued the unsubscribe of message=%s for the workers: the "
                            "database is unavailable", request.message_id)
        return True


def apply_unsubscribe(request: UnsubscribeToken) -> bool:
    """Suppress the address for the tenant and end its active enrollments; False when
    the tenant no longer exists. Running it twice changes nothing more."""
    if not Tenant.select().where(Tenant.id == request.tenant_id).exists():
        return False
    with database_proxy.atomic():
        suppress(request.tenant_id, request.email, "unsubscribed", f"one-click:{request.message_id}")
        exited = engine.exit_contact_enrollments(request.tenant_id, request.email, "unsubscribed")
    logger.info("Unsubscribed via link tenant=%s message=%s enrollments_exited=%d",
                request.tenant_id, request.message_id, exited)
    return True


def enqueue_unsubscribe(token: str) -> None:
    """Hand an unsubscribe to the ``apply_unsubscribe`` actor."""
    # Imported here: the actors import this module.
    from .actors.webhook import apply_unsubscribe as apply_unsubscribe_actor

    apply_unsubscribe_actor.send(token)


def _serializer(settings: Settings) -> URLSafeSerializer:
    # itsdangerous signs with the last key of a list and accepts every one.
    return URLSafeSerializer([*settings.secret_key_fallbacks, settings.secret_key], salt=TOKEN_SALT)


def _page(status: int, title: str, body_html: str) -> Reply:
    return Reply(
        status,
        "<!doctype html><html><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width">'
        f"<title>{html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1><div>{body_html}</div></body></html>\n",
        HTML,
    )


_LIST_GONE = _page(404, "Link expired", "This list no longer exists.")
