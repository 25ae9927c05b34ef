"""A SendGrid stand-in for tests and the demo: a local HTTP server that speaks the v3 mail/send API.

The real ``sendgrid`` client reaches it through its configurable host
(``OUTREACH_SENDGRID_API_HOST=server.host``). It checks the API key and the body
as SendGrid does, answers 202 with an ``X-Message-Id``, records every accepted
mail, and can be told to fail (given statuses, a seeded failure rate, a delay, or
accepting a mail and then dropping the connection: the ambiguous case).
``dev.webhook_events`` builds the Event Webhook events SendGrid would report for an
accepted mail and posts them signed as SendGrid signs them.

Run it alone with ``python -m outreach_actors.testing --port 8025``; another
process reads what it accepted with ``GET /_standin/messages``.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import random
import re
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

logger = logging.getLogger(__name__)

MAIL_SEND_PATH = "/v3/mail/send"
MESSAGES_PATH = "/_standin/messages"
# SendGrid refuses a mail/send request larger than 30 MB, attachments included.
MAX_BODY_BYTES = 30 * 1024 * 1024
MAX_RECIPIENTS = 1000
MAX_PERSONALIZATIONS = 1000
MAX_CATEGORIES = 10
MAX_CUSTOM_ARGS_BYTES = 10_000
RESERVED_HEADERS = frozenset({
    "x-sg-id", "x-sg-eid", "received", "dkim-signature", "content-type",
    "content-transfer-encoding", "to", "from", "subject", "reply-to", "cc", "bcc",
})
_HELP = "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html"
# SendGrid's own address check is lenient: something@something.tld, no spaces.
_ADDRESS = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s.]+\Z")
_LINE_BREAK = re.compile(r"[\r\n]")

_PERSONALIZATIONS_REQUIRED = (
    "The personalizations field is required and must have at least one personalization."
)
_TO_REQUIRED = (
    "The to array is required for all personalization objects, and must have at least one "
    "email object with a valid email address."
)
_FROM_REQUIRED = (
    "The from object must be provided for every email send. It is an object that requires "
    "the email parameter, but may also contain a name parameter."
)
_SUBJECT_REQUIRED = (
    "The subject is required. You can get around this requirement if you use a template "
    "with a subject defined or if every personalization has a subject defined."
)
_CONTENT_REQUIRED = (
    "Unless a valid template_id is provided, the content parameter is required. There must "
    "be at least one defined content block. We typically suggest both text/plain and "
    "text/html blocks are included, but only one block is required."
)
_BAD_KEY = "The provided authorization grant is invalid, expired, or revoked"


def _error(field_name: str | None, message: str) -> dict[str, str | None]:
    anchor = re.sub(r"\.\d+", "", field_name) if field_name else None
    return {"message": message, "field": field_name, "help": f"{_HELP}#message.{anchor}" if anchor else None}


def error_body(message: str, field_name: str | None = None) -> dict[str, Any]:
    """A body in SendGrid's error shape: ``{"errors": [{"message", "field", "help"}]}``."""
    return {"errors": [_error(field_name, message)]}


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower()
    except ValueError:
        return f"error {status}"


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return {float: "number", str: "string", list: "array", dict: "object"}.get(type(value), "unknown")


def _wrong_type(expected: str, value: Any) -> str:
    return f"Invalid type. Expected: {expected}, given: {_json_type(value)}."


def _address_errors(value: Any, path: str, what: str = "") -> list[dict[str, str | None]]:
    """Errors for an ``{"email", "name"}`` object at ``path``."""
    if not isinstance(value, dict):
        return [_error(path, _wrong_type("object", value))]
    email = value.get("email")
    if not isinstance(email, str) or not _ADDRESS.match(email):
        message = f"The {what} email does not contain a valid address." if what else "Does not contain a valid address."
        return [_error(f"{path}.email", message)]
    return []


def _string_map_errors(value: Any, path: str, *, headers: bool = False) -> list[dict[str, str | None]]:
    """Errors for ``custom_args`` or ``headers``: an object of string values."""
    if value is None:
        return []
    if not isinstance(value, dict):
        return [_error(path, _wrong_type("object", value))]
    errors = []
    for key, item in value.items():
        if not isinstance(item, str):
            errors.append(_error(f"{path}.{key}", _wrong_type("string", item)))
        elif headers and (_LINE_BREAK.search(key) or _LINE_BREAK.search(item)):
            # A stand-in that let these through would hide a client open to header injection.
            errors.append(_error(f"{path}.{key}", "Header names and values may not contain CR or LF."))
        elif headers and key.lower() in RESERVED_HEADERS:
            errors.append(_error(f"{path}.{key}", f"The header {key} is reserved and cannot be set."))
    if not headers and len(json.dumps(value).encode()) >= MAX_CUSTOM_ARGS_BYTES:
        errors.append(_error(path, "The custom_args total size must be less than 10000 bytes."))
    return errors


def _personalization_errors(index: int, item: Any) -> tuple[list[dict[str, str | None]], int]:
    """Errors for one personalization, and how many recipients it names."""
    path = f"personalizations.{index}"
    if not isinstance(item, dict):
        return [_error(path, _wrong_type("object", item))], 0
    errors: list[dict[str, str | None]] = []
    if not isinstance(item.get("to"), list) or not item["to"]:
        errors.append(_error(f"{path}.to", _TO_REQUIRED))
    seen: set[str] = set()
    count = 0
    for kind in ("to", "cc", "bcc"):
        recipients = item.get(kind)
        if recipients is None:
            continue
        if not isinstance(recipients, list):
            errors.append(_error(f"{path}.{kind}", _wrong_type("array", recipients)))
            continue
        count += len(recipients)
        for position, recipient in enumerate(recipients):
            problems = _address_errors(recipient, f"{path}.{kind}.{position}")
            errors += problems
            if problems:
                continue
            email = recipient["email"].lower()
            if email in seen:
                errors.append(_error(path, (
                    "Each email address in the personalization block should be unique between "
                    f"to, cc, and bcc. We found the first duplicate instance of [{recipient['email']}] "
                    f"in the {path}.{kind} field."
                )))
            seen.add(email)
    if "subject" in item and not isinstance(item["subject"], str):
        errors.append(_error(f"{path}.subject", _wrong_type("string", item["subject"])))
    errors += _string_map_errors(item.get("custom_args"), f"{path}.custom_args")
    errors += _string_map_errors(item.get("headers"), f"{path}.headers", headers=True)
    return errors, count


def _content_errors(content: Any, has_template: bool) -> list[dict[str, str | None]]:
    if content is None or content == []:
        return [] if has_template else [_error("content", _CONTENT_REQUIRED)]
    if not isinstance(content, list):
        return [_error("content", _wrong_type("array", content))]
    errors = []
    for index, block in enumerate(content):
        if not isinstance(block, dict):
            errors.append(_error(f"content.{index}", _wrong_type("object", block)))
            continue
        for key in ("type", "value"):
            if not isinstance(block.get(key), str) or not block[key]:
                errors.append(_error(
                    f"content.{index}.{key}", f"The content {key} must be a string at least one character in length."
                ))
    types = [block.get("type") for block in content if isinstance(block, dict)]
    if "text/plain" in types and types[0] != "text/plain":
        errors.append(_error("content", (
            "If present, text/plain content must be first, followed by text/html, "
            "followed by any other content."
        )))
    return errors


def _category_errors(categories: Any) -> list[dict[str, str | None]]:
    if categories is None:
        return []
    if not isinstance(categories, list):
        return [_error("categories", _wrong_type("array", categories))]
    errors = []
    if len(categories) > MAX_CATEGORIES:
        errors.append(_error("categories", f"You may not have more than {MAX_CATEGORIES} categories per request."))
    for index, category in enumerate(categories):
        if not isinstance(category, str) or not category or len(category) > 255:
            errors.append(_error(f"categories.{index}", "A category must be a string of 1 to 255 characters."))
    return errors


def mail_send_errors(payload: Any) -> list[dict[str, str | None]]:
    """SendGrid's validation of a v3 mail/send body: the list of errors, empty when it is valid."""
    if not isinstance(payload, dict):
        return [_error(None, _wrong_type("object", payload))]
    has_template = bool(payload.get("template_id"))
    errors: list[dict[str, str | None]] = []
    personalizations = payload.get("personalizations")
    if not isinstance(personalizations, list) or not personalizations:
        errors.append(_error("personalizations", _PERSONALIZATIONS_REQUIRED))
        personalizations = []
    elif len(personalizations) > MAX_PERSONALIZATIONS:
        errors.append(_error("personalizations", (
            f"The personalization block is limited to {MAX_PERSONALIZATIONS} personalizations per API "
            f"request. You have provided {len(personalizations)} personalizations. Please consider "
            "splitting this into multiple requests and resending your request."
        )))
    recipients = 0
    for index, item in enumerate(personalizations):
        problems, count = _personalization_errors(index, item)
        errors += problems
        recipients += count
    if recipients > MAX_RECIPIENTS:
        errors.append(_error("personalizations", (
            f"There is a limit of {MAX_RECIPIENTS} total recipients (to + cc + bcc) per request."
        )))
    sender = payload.get("from")
    if not isinstance(sender, dict) or "email" not in sender:
        errors.append(_error("from.email", _FROM_REQUIRED))
    else:
        errors += _address_errors(sender, "from", "from")
    if payload.get("reply_to") is not None:
        errors += _address_errors(payload["reply_to"], "reply_to", "reply_to")
    subject = payload.get("subject")
    if subject is not None and not isinstance(subject, str):
        errors.append(_error("subject", _wrong_type("string", subject)))
    every_personalization_has_subject = bool(personalizations) and all(
        isinstance(item, dict) and isinstance(item.get("subject"), str) and item["subject"]
        for item in personalizations
    )
    if not has_template and not (isinstance(subject, str) and subject) and not every_personalization_has_subject:
        errors.append(_error("subject", _SUBJECT_REQUIRED))
    errors += _content_errors(payload.get("content"), has_template)
    errors += _category_errors(payload.get("categories"))
    errors += _string_map_errors(payload.get("custom_args"), "custom_args")
    errors += _string_map_errors(payload.get("headers"), "headers", headers=True)
    errors += _asm_errors(payload.get("asm"))
    return errors


def _asm_errors(asm: Any) -> list[dict[str, str | None]]:
    """SendGrid's checks of ``asm``: an unsubscribe group id (an integer), and at most 25
    groups to display on the preference page."""
    if asm is None:
        return []
    if not isinstance(asm, dict):
        return [_error("asm", _wrong_type("object", asm))]
    group_id = asm.get("group_id")
    if isinstance(group_id, bool) or not isinstance(group_id, int):
        return [_error("asm.group_id", "The asm.group_id must be an integer.")]
    shown = asm.get("groups_to_display", [])
    if not isinstance(shown, list) or len(shown) > 25 or not all(
            isinstance(group, int) and not isinstance(group, bool) for group in shown):
        return [_error("asm.groups_to_display",
                       "The asm.groups_to_display must be an array of at most 25 integers.")]
    return []


def new_message_id() -> str:
    """An id in the shape of SendGrid's X-Message-Id: 22 URL-safe characters."""
    return base64.urlsafe_b64encode(secrets.token_bytes(16)).rstrip(b"=").decode()


@dataclass(frozen=True)
class AcceptedMessage:
    """One mail the stand-in accepted: the parsed JSON body, the request headers (lower-case names)."""

    x_message_id: str
    body: dict[str, Any]
    headers: dict[str, str]
    received_at: float

    def recipients(self) -> list[tuple[str, dict[str, str]]]:
        """Each ``to`` address with the custom_args SendGrid reports for it (personalization wins)."""
        message_args = self.body.get("custom_args") or {}
        return [
            (recipient["email"], {**message_args, **(personalization.get("custom_args") or {})})
            for personalization in self.body["personalizations"]
            for recipient in personalization["to"]
        ]

    @property
    def custom_args(self) -> dict[str, str]:
        """The custom_args of the first recipient (the only one, for this project's mail)."""
        return self.recipients()[0][1]


@dataclass(frozen=True)
class ReceivedRequest:
    """Any POST the stand-in received, and the status it answered (None: dropped unanswered)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int | None


@dataclass(frozen=True)
class _Reply:
    status: int
    body: dict[str, Any] | str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False


def _shut_down(connection: socket.socket) -> None:
    """End a client connection at once, both ways (the client may already have gone)."""
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Server(ThreadingHTTPServer):
    # Threads, so a delayed answer does not hold up other clients; daemon threads, so
    # stopping never waits on a handler that is still sleeping out a delay.
    daemon_threads = True
    # socketserver listens with a backlog of 5, which a burst of new connections
    # (every worker thread at start; a client that connects per request) can
    # overflow into a connection reset, which reads as an ambiguous send; servers
    # listen with far more.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], standin: SendGridStandIn) -> None:
        self.standin = standin
        # Connections stay open between requests (HTTP/1.1 keep-alive, as SendGrid's
        # do); these are closed when the stand-in stops, so that a client holding one
        # sees the server gone instead of a handler still answering.
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        self.standin._count_connection()
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def close_open_connections(self) -> None:
        with self._open_lock:
            connections, self._open = self._open, set()
        for connection in connections:
            _shut_down(connection)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hung up (a test's short timeout) is expected here, not a failure.
        logger.debug("Stand-in connection from %s ended with an error", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "nginx"
    sys_version = ""
    # An idle kept connection is closed after this long, and its thread ends.
    timeout = 60

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("Stand-in: " + format, *args)

    def do_GET(self) -> None:
        if self.path.split("?")[0] != MESSAGES_PATH:
            self._answer(_Reply(404, error_body("resource not found")))
            return
        messages = [asdict(message) for message in self.server.standin.messages]
        self._answer(_Reply(200, {"messages": messages}))

    def do_POST(self) -> None:
        standin = self.server.standin
        headers = {name.lower(): value for name, value in self.headers.items()}
        try:
            body = self._read_body(standin.max_body_bytes)
        except ValueError:
            reply = _Reply(400, error_body("The Content-Length header is not a valid length."))
            body = b""
        else:
            if self.path.split("?")[0] == MAIL_SEND_PATH:
                reply = standin._mail_send(headers, body)
            else:
                reply = _Reply(404, error_body("resource not found"))
        standin._record_request(ReceivedRequest(
            "POST", self.path, headers, body, None if reply.drop else reply.status
        ))
        if standin.delay > 0:
            standin._stopping.wait(standin.delay)
        if reply.drop:
            self._drop()
        else:
            self._answer(reply)

    def _read_body(self, limit: int) -> bytes:
        # Read the whole body even past the limit: answering before the client has written
        # it all would break its pipe, and it would see a network error instead of a 413.
        remaining = int(self.headers.get("Content-Length") or 0)
        if remaining < 0:
            raise ValueError("negative Content-Length")
        kept = bytearray()
        while remaining > 0:
            chunk = self.rfile.read(min(remaining, 1 << 16))
            if not chunk:
                break
            if len(kept) <= limit:
                kept += chunk
            remaining -= len(chunk)
        return bytes(kept)

    def _answer(self, reply: _Reply) -> None:
        if isinstance(reply.body, str):
            payload, content_type = reply.body.encode(), "text/html"
        elif reply.body is not None:
            payload, content_type = json.dumps(reply.body).encode(), "application/json"
        else:
            payload, content_type = b"", None
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        if self.close_connection:  # the client asked to close: say so, as HTTP/1.1 servers do
            self.send_header("Connection", "close")
        self.end_headers()
        if payload:  # a 202 has no body: no empty write
            self.wfile.write(payload)

    def _drop(self) -> None:
        self.close_connection = True
        _shut_down(self.connection)


class SendGridStandIn:
    """A real HTTP server on 127.0.0.1 answering ``POST /v3/mail/send`` as SendGrid does.

    The standard library's ThreadingHTTPServer is used on purpose: it needs no extra
    dependency, runs on real sockets that the real client reaches, and lets a handler
    close a connection without answering, which the ambiguous case needs and which
    web frameworks hide.

    Parameters:
      api_key(str|None): When set, any other Bearer key gets SendGrid's 401.
      port(int): 0 picks a free port.
      failure_rate(float): Share of mail/send requests answered with a status drawn from
        ``failure_statuses`` by a random generator seeded with ``seed``.
      delay(float): Seconds to wait before answering (after accepting).
      drop_rate(float): Share of accepted mails whose connection is closed unanswered.
      max_body_bytes(int): Larger requests get 413, as SendGrid's 30 MB limit.
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        port: int = 0,
        failure_rate: float = 0.0,
        failure_statuses: Sequence[int] = (500, 429),
        seed: int = 0,
        delay: float = 0.0,
        drop_rate: float = 0.0,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.api_key = api_key
        self.port = port
        self.max_body_bytes = max_body_bytes
        self._defaults = (failure_rate, tuple(failure_statuses), seed, delay, drop_rate)
        self._lock = threading.Lock()
        self._accepted = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.reset()

    def reset(self) -> None:
        """Forget what was received and every planned failure; back to the constructor's settings."""
        with self._lock:
            (self.failure_rate, self.failure_statuses, seed, self.delay, self.drop_rate) = self._defaults
            self._random = random.Random(seed)
            self._messages: list[AcceptedMessage] = []
            self._requests: list[ReceivedRequest] = []
            self._planned: list[_Reply] = []
            self._drops_planned = 0
            self._connections = 0

    def start(self) -> SendGridStandIn:
        """Bind and serve in a background thread; returns self."""
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server(("127.0.0.1", self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
            name=f"sendgrid-standin-{self.port}", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket; handlers still sleeping out a delay are woken."""
        if self._server is None:
            return
        self._stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._server.close_open_connections()
        if self._thread is not None:
            self._thread.join()
        self._server = self._thread = None

    def __enter__(self) -> SendGridStandIn:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def connections(self) -> int:
        """TCP connections accepted since the last reset (a client that keeps its
        connection open makes one for many requests)."""
        with self._lock:
            return self._connections

    def close_connections(self) -> None:
        """Close every open client connection, as a server timing out idle ones does."""
        if self._server is not None:
            self._server.close_open_connections()

    def _count_connection(self) -> None:
        with self._lock:
            self._connections += 1

    @property
    def host(self) -> str:
        """Base URL to give the sendgrid client (``OUTREACH_SENDGRID_API_HOST``)."""
        if self._server is None:
            raise RuntimeError("the SendGrid stand-in is not started; use `with SendGridStandIn() as server:`")
        return f"http://127.0.0.1:{self.port}"

    @property
    def messages(self) -> list[AcceptedMessage]:
        """The mails accepted so far, oldest first (a copy)."""
        with self._lock:
            return list(self._messages)

    @property
    def requests(self) -> list[ReceivedRequest]:
        """Every POST received so far, accepted or not, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[AcceptedMessage]:
        """Block until at least ``count`` mails were accepted; TimeoutError after ``timeout`` seconds."""
        with self._accepted:
            if not self._accepted.wait_for(lambda: len(self._messages) >= count, timeout):
                raise TimeoutError(
                    f"the SendGrid stand-in accepted {len(self._messages)} mails in {timeout}s, expected {count}"
                )
            return list(self._messages)

    def fail_next(
        self,
        status: int,
        count: int = 1,
        body: dict[str, Any] | str | None = None,
        retry_after: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer the next ``count`` mail/send requests with ``status`` (before any other check).

        ``body`` defaults to a SendGrid error; ``retry_after`` sets a Retry-After header.
        """
        reply_headers = dict(headers or {})
        if retry_after is not None:
            reply_headers["Retry-After"] = str(retry_after)
        if body is None:
            body = error_body(_BAD_KEY if status == 401 else _phrase(status))
        with self._lock:
            self._planned += [_Reply(status, body, reply_headers)] * count

    def drop_next(self, count: int = 1) -> None:
        """Accept the next ``count`` valid mails, then close their connections without answering."""
        with self._lock:
            self._drops_planned += count

    def _record_request(self, request: ReceivedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _mail_send(self, headers: dict[str, str], raw: bytes) -> _Reply:
        with self._lock:
            if self._planned:
                return self._planned.pop(0)
            if self.failure_rate and self._random.random() < self.failure_rate:
                status = self._random.choice(self.failure_statuses)
                return _Reply(status, error_body(_phrase(status)))
        scheme, _, key = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return _Reply(401, error_body("authorization required"))
        if self.api_key is not None and key.strip() != self.api_key:
            return _Reply(401, error_body(_BAD_KEY))
        if len(raw) > self.max_body_bytes:
            return _Reply(413, error_body(
                f"The request is too large; mail/send accepts at most {self.max_body_bytes} bytes."
            ))
        if not headers.get("content-type", "").startswith("application/json"):
            return _Reply(415, error_body("Content-Type should be application/json."))
        try:
            payload = json.loads(raw)
        except ValueError:
            return _Reply(400, error_body("The request body is not valid JSON."))
        errors = mail_send_errors(payload)
        if errors:
            return _Reply(400, {"errors": errors})
        return self._accept(payload, headers)

    def _accept(self, payload: dict[str, Any], headers: dict[str, str]) -> _Reply:
        message = AcceptedMessage(new_message_id(), payload, headers, time.time())
        with self._accepted:
            self._messages.append(message)
            self._accepted.notify_all()
            drop = self._drops_planned > 0 or (bool(self.drop_rate) and self._random.random() < self.drop_rate)
            if drop and self._drops_planned > 0:
                self._drops_planned -= 1
        if logger.isEnabledFor(logging.INFO):  # the arguments cost more than the check
            logger.info(
                "Accepted %s for %s (%s)", message.x_message_id,
                ", ".join(email for email, _ in message.recipients()), message.custom_args,
            )
        return _Reply(202, None, {"X-Message-Id": message.x_message_id}, drop=drop)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m outreach_actors.testing``: serve until interrupted, logging each accepted mail."""
    parser = argparse.ArgumentParser(prog="python -m outreach_actors.testing", description=main.__doc__)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--api-key", default=None, help="refuse other API keys with 401")
    parser.add_argument("--failure-rate", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--drop-rate", type=float, default=0.0)
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    # SIGTERM ends the process through SystemExit, so the server closes its socket.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    standin = SendGridStandIn(
        api_key=options.api_key, port=options.port, failure_rate=options.failure_rate,
        seed=options.seed, delay=options.delay, drop_rate=options.drop_rate,
    )
    with standin:
        print(f"SendGrid stand-in listening on {standin.host}", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass

