"""The unsubscribe page: ``/unsubscribe/<token>`` shows a confirmation form (GET) and
unsubscribes on POST, the form's and RFC 8058's one-click request alike."""

from __future__ import annotations

import html
import logging

from outreach_actors.domain.unsubscribe import (
    InvalidUnsubscribeToken,
    UnsubscribeToken,
    apply_unsubscribe,
    read_token,
    secret_problems,
    tenant_exists,
)
from outreach_actors.settings import Settings
from outreach_actors.web.http import PAGE_HEADERS, Reply, database_connection
from outreach_actors.worker.actors.webhooks import apply_unsubscribe as apply_unsubscribe_actor

logger = logging.getLogger(__name__)

HTML = "text/html; charset=utf-8"


class UnsubscribePage:
    """Answers ``/unsubscribe/<token>``: GET shows a confirmation form, POST unsubscribes.

    A GET changes nothing, because mail scanners follow links; the POST is both
    the form's and RFC 8058's one-click request (``List-Unsubscribe=One-Click``).
    No page names the address: scanners and whoever the mail was forwarded to see them.

    Parameters:
      settings(Settings): ``secret_key`` that signed the tokens.
    """

    def __init__(self, settings: Settings) -> None:
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        self.settings = settings
        # Refused at start where the links reach real recipients (endpoints.activate).
        for problem in secret_problems(settings):
            self.logger.warning("%s", problem)

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
                "Unsubscribe the address this email was sent to from these emails?"
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
            "The address this email was sent to will get no more of these emails.",
        )

    def _tenant_gone(self, request: UnsubscribeToken) -> bool:
        """Whether the tenant the link was mailed for was deleted. A page that only asks
        does not fail with the database: unknown, the form is shown."""
        try:
            with database_connection():
                return not tenant_exists(request.tenant_id)
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


def enqueue_unsubscribe(token: str) -> None:
    """Hand an unsubscribe to the ``apply_unsubscribe`` actor."""
    apply_unsubscribe_actor.send(token)


def _page(status: int, title: str, body_html: str) -> Reply:
    return Reply(
        status,
        "<!doctype html><html><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width">'
        f"<title>{html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1><div>{body_html}</div></body></html>\n",
        HTML,
        PAGE_HEADERS,
    )


_LIST_GONE = _page(404, "Link expired", "This list no longer exists.")
