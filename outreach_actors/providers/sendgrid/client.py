"""Build SendGrid v3 mail from an OutgoingEmail, send it, and say what happened.

The send actor calls :meth:`SendGridClient.send` and acts on the :class:`SendOutcome`:
``sent`` (keep the provider id), ``retry`` (nothing was accepted; ask again, after
``retry_after_s`` when given), ``permanent`` (asking again cannot help) or
``ambiguous`` (the request went out and the answer was lost: SendGrid may have
accepted it, so sending again could deliver twice; reconcile through the webhook
events, which carry our ``outreach_message_id``). No Dramatiq here.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import re
import time
from email.message import Message
from email.utils import parsedate_to_datetime
from functools import lru_cache
from urllib.parse import urlsplit

import sendgrid
from sendgrid.helpers.mail import (
    Asm,
    Attachment,
    Category,
    CustomArg,
    Disposition,
    FileContent,
    FileName,
    FileType,
    From,
    GroupId,
    Header,
    HtmlContent,
    Mail,
    PlainTextContent,
    ReplyTo,
    Subject,
    To,
)
from sendgrid.helpers.mail.exceptions import ApiKeyIncludedException

from outreach_actors.domain.addresses import redact_addresses, sendable_address
from outreach_actors.domain.headers import breaks_header
from outreach_actors.domain.mail.outgoing import OutgoingEmail, SendOutcome
from outreach_actors.domain.vocabulary import MESSAGE_ID_ARG, TENANT_ARG
from outreach_actors.providers.sendgrid.keepalive import KeptAliveConnections, RequestNotSent
from outreach_actors.settings import Settings, SettingsError

logger = logging.getLogger(__name__)

# Headers SendGrid writes itself and refuses in `headers` (v3 mail/send reference).
RESERVED_HEADERS = frozenset({
    "x-sg-id", "x-sg-eid", "received", "dkim-signature", "content-type",
    "content-transfer-encoding", "to", "from", "subject", "reply-to", "cc", "bcc",
})
# SendGrid's documented limits; checked here so the error names our field, not theirs.
MAX_CATEGORIES = 10
MAX_CATEGORY_LENGTH = 255
MAX_CUSTOM_ARGS_BYTES = 10_000

# Statuses worth asking again besides 5xx: SendGrid's rate limit and a timeout at its edge.
_RETRY_STATUSES = frozenset({408, 429})
_MAX_ERROR_CHARS = 500


class InvalidEmail(ValueError):
    """An OutgoingEmail that SendGrid must not be asked to send; the message names the field."""

    def __init__(self, field_name: str, problem: str) -> None:
        super().__init__(f"{field_name}: {problem}")
        self.field = field_name


# RFC 5322 field names: printable ASCII except the colon.
_HEADER_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]+\Z")


def _refuse_line_breaks(value: str, field_name: str) -> None:
    if breaks_header(value):
        raise InvalidEmail(
            field_name, "contains a line break or NUL character, which could inject mail headers"
        )


def validate_address(value: object, field_name: str = "address") -> str:
    """``value`` as SendGrid must receive it (domain in IDNA form); InvalidEmail if it is no address."""
    if not isinstance(value, str) or not value:
        raise InvalidEmail(field_name, "is empty; an email address is required")
    _refuse_line_breaks(value, field_name)
    try:
        return sendable_address(value)
    except ValueError as exc:
        raise InvalidEmail(field_name, str(exc)) from None


def _custom_args(email: OutgoingEmail) -> dict[str, str]:
    for name in ("message_id", "tenant"):
        value = getattr(email, name)
        if not isinstance(value, str) or not value:
            raise InvalidEmail(name, "is empty; events are matched to the email by it")
    ours = {MESSAGE_ID_ARG: email.message_id, TENANT_ARG: email.tenant}
    args = dict(email.custom_args)
    for key, value in args.items():
        if not isinstance(key, str) or not key:
            raise InvalidEmail("custom_args", f"has an empty or non-text key {key!r}")
        if not isinstance(value, str):
            raise InvalidEmail(
                f"custom_args.{key}", f"must be text, got {type(value).__name__}; SendGrid refuses others"
            )
        if key in ours and value != ours[key]:
            raise InvalidEmail(
                f"custom_args.{key}", f"is {value!r} but this email is {ours[key]!r}; leave it out"
            )
    args.update(ours)
    if len(json.dumps(args).encode()) >= MAX_CUSTOM_ARGS_BYTES:
        raise InvalidEmail("custom_args", f"must be smaller than {MAX_CUSTOM_ARGS_BYTES} bytes in all")
    return args


def _check_headers(headers: dict[str, str]) -> None:
    for name, value in headers.items():
        label = f"headers[{name!r}]"
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            raise InvalidEmail(label, "is not a valid header name (printable ASCII, no colon)")
        if name.lower() in RESERVED_HEADERS:
            raise InvalidEmail(label, "is set by SendGrid itself and cannot be given")
        if not isinstance(value, str):
            raise InvalidEmail(label, f"must be text, got {type(value).__name__}")
        _refuse_line_breaks(value, label)


def _check_categories(categories: list[str]) -> None:
    if len(categories) > MAX_CATEGORIES:
        raise InvalidEmail("categories", f"has {len(categories)} entries; SendGrid allows {MAX_CATEGORIES}")
    for index, category in enumerate(categories):
        label = f"categories[{index}]"
        if not isinstance(category, str) or not category:
            raise InvalidEmail(label, "must be non-empty text")
        if len(category) > MAX_CATEGORY_LENGTH:
            raise InvalidEmail(label, f"is longer than {MAX_CATEGORY_LENGTH} characters")
        _refuse_line_breaks(category, label)


def _content(
    kind: type[PlainTextContent] | type[HtmlContent], value: str | None, field_name: str
) -> PlainTextContent | HtmlContent | None:
    if not value:
        return None
    try:
        return kind(value)
    except ApiKeyIncludedException:
        # The sendgrid helpers refuse a body that starts like an API key (SG.xxx.yyy).
        raise InvalidEmail(
            field_name, "starts with what looks like a SendGrid API key (SG.xxx.yyy); remove it"
        ) from None


def build_mail(email: OutgoingEmail) -> Mail:
    """Build the SendGrid Mail for ``email``, refusing anything SendGrid would reject or that could inject headers."""
    to_email = validate_address(email.to_email, "to_email")
    from_email = validate_address(email.from_email, "from_email")
    if email.from_name:
        _refuse_line_breaks(email.from_name, "from_name")
    if not isinstance(email.subject, str) or not email.subject.strip():
        raise InvalidEmail("subject", "is empty; SendGrid requires a subject")
    _refuse_line_breaks(email.subject, "subject")
    if not email.html and not email.text:
        raise InvalidEmail("html", "is empty and so is text; an email needs a body")
    _check_headers(email.headers)
    _check_categories(email.categories)
    custom_args = _custom_args(email)
    mail = Mail(
        from_email=From(from_email, email.from_name or None),
        to_emails=To(to_email),
        subject=Subject(email.subject),
        plain_text_content=_content(PlainTextContent, email.text, "text"),
        html_content=_content(HtmlContent, email.html, "html"),
    )
    # Mail.add_category inserts at the front (sendgrid 6.12's _ensure_append): added last
    # to first, they go out in the plan's order.
    for category in reversed(email.categories):
        mail.add_category(Category(category))
    for name, value in email.headers.items():
        mail.add_header(Header(name, value))
    if email.reply_to:
        mail.reply_to = ReplyTo(validate_address(email.reply_to, "reply_to"))
    for file_name, file_type, content in email.attachments:
        mail.add_attachment(Attachment(
            FileContent(base64.b64encode(content).decode()), FileName(file_name),
            FileType(file_type), Disposition("attachment")))
    for key, value in custom_args.items():
        mail.add_custom_arg(CustomArg(key, value))
    if email.asm_group is not None:
        # SendGrid's own unsubscribe links and preference page then name this group.
        mail.asm = Asm(GroupId(email.asm_group))
    return mail


def provider_error_text(status: int, body: bytes | str | None) -> str:
    """SendGrid's error messages from a response body (``field: message; ...``), or the raw
    text; with any email address in them redacted, since they are logged and stored."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else (body or "")
    try:
        errors = json.loads(text)["errors"]
        messages = [
            f"{error['field']}: {error['message']}" if error.get("field") else str(error["message"])
            for error in errors
        ]
    except (ValueError, KeyError, TypeError):
        messages = []
    if messages:
        return redact_addresses("; ".join(messages))
    return redact_addresses(text.strip())[:_MAX_ERROR_CHARS] or f"HTTP {status} with no message"


def retry_after_seconds(headers: Message, now: float | None = None) -> float | None:
    """The wait a 429/5xx asks for: ``Retry-After`` (seconds or HTTP date), else ``X-RateLimit-Reset``."""
    now = time.time() if now is None else now
    retry_after = headers.get("Retry-After")
    if retry_after:
        try:
            return max(0.0, float(retry_after))
        except ValueError:
            pass
        try:
            return max(0.0, parsedate_to_datetime(retry_after).timestamp() - now)
        except (TypeError, ValueError):
            pass
    reset = headers.get("X-RateLimit-Reset")
    if reset:
        try:
            return max(0.0, float(reset) - now)
        except ValueError:
            pass
    return None


def outcome_for_response(status: int, headers: Message, body: bytes | str | None) -> SendOutcome:
    """Classify an HTTP answer from mail/send: 2xx sent, 408/429/5xx retry, other 4xx permanent."""
    if 200 <= status < 300:
        return SendOutcome("sent", provider_message_id=headers.get("X-Message-Id"), status_code=status)
    if status in _RETRY_STATUSES or status >= 500:
        return SendOutcome(
            "retry",
            status_code=status,
            error=provider_error_text(status, body),
            retry_after_s=retry_after_seconds(headers),
        )
    return SendOutcome("permanent", status_code=status, error=provider_error_text(status, body))


class SendGridClient:
    """Sends OutgoingEmail through SendGrid's v3 mail/send and classifies every result.

    Parameters:
      api_key(str): The SendGrid API key.
      host(str): Base URL of the API; a :class:`~outreach_actors.dev.standin.SendGridStandIn`'s
        ``.host`` in tests.
      timeout_s(float): Seconds to wait to connect and then for the answer.
    """

    def __init__(self, api_key: str, host: str = "https://api.sendgrid.com", timeout_s: float = 10.0) -> None:
        if not api_key:
            raise ValueError("a SendGrid API key is required; set OUTREACH_SENDGRID_API_KEY")
        parts = urlsplit(host)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ValueError(f"SendGrid host {host!r} must be an http(s) URL such as https://api.sendgrid.com")
        if timeout_s <= 0:
            raise ValueError(f"SendGrid timeout must be positive, got {timeout_s}")
        self.host = host.rstrip("/")
        self.timeout_s = timeout_s
        self.logger = logging.getLogger(f"{__name__}.{type(self).__name__}")
        # The sendgrid package builds the mail (helpers.mail) and the request: its
        # client, built for this host, holds the headers (the key, its User-Agent)
        # and the path. Only the transport differs: its python_http_client opens a
        # connection per request; see providers/keepalive.py for why and how.
        self._api = sendgrid.SendGridAPIClient(api_key, host=self.host)
        self._mail_send_path = self._api.client.mail.send._build_url(None)[len(self.host):]
        self._headers = {**self._api.client.request_headers, "Content-Type": "application/json"}
        self._connections = KeptAliveConnections(self.host, timeout_s)

    def close(self) -> None:
        """Close the calling thread's kept connection (others close with their threads)."""
        self._connections.discard()

    def send(self, email: OutgoingEmail) -> SendOutcome:
        """Send one email; never raises for SendGrid's answer or the network, returns a SendOutcome."""
        try:
            mail = build_mail(email)
        except InvalidEmail as exc:
            self.logger.warning("Refused to send message %s: %s", email.message_id, exc)
            return SendOutcome("permanent", error=str(exc))
        try:
            answer = self._connections.post(
                self._mail_send_path, json.dumps(mail.get()).encode("utf-8"), self._headers)
        except RequestNotSent as exc:
            # Connecting or writing the request failed, so SendGrid never had the whole
            # request: asking again cannot send twice.
            outcome = SendOutcome("retry", error=f"could not reach SendGrid at {self.host}: {exc}")
        except (http.client.HTTPException, OSError) as exc:
            # The request was written and the answer was lost (connection dropped, read
            # timed out): SendGrid may have accepted it, so a resend could deliver twice.
            outcome = SendOutcome(
                "ambiguous", error=f"SendGrid did not answer after the request was sent: {exc!r}"
            )
        else:
            outcome = outcome_for_response(answer.status, answer.headers, answer.body)
        # At debug: the send actor logs every outcome once, with what it did about it.
        self.logger.debug(
            "Message %s: %s (HTTP %s, provider id %s)",
            email.message_id, outcome.kind, outcome.status_code, outcome.provider_message_id,
        )
        return outcome


def sendgrid_client_from_settings(settings: Settings) -> SendGridClient:
    """The SendGridClient for the configured key, host and timeout: one per process and
    configuration, since each keeps its connections open for the threads that send."""
    if not settings.sendgrid_api_key:
        raise SettingsError(
            "OUTREACH_SENDGRID_API_KEY is not set; sending email needs a SendGrid API key"
        )
    return _client(settings.sendgrid_api_key, settings.sendgrid_api_host,
                   settings.sendgrid_timeout.total_seconds())


@lru_cache(maxsize=4)
def _client(api_key: str, host: str, timeout_s: float) -> SendGridClient:
    try:
        return SendGridClient(api_key, host=host, timeout_s=timeout_s)
    except ValueError as exc:
        raise SettingsError(f"invalid SendGrid configuration: {exc}") from None
