"""Read one stored Inbound Parse post, in either of SendGrid's forms, as one email.

"POST the raw, full MIME message" on: the form's ``email`` field is the message. Off:
SendGrid sends the parsed parts (``headers``, ``text``, ``html``, ``from``, ``to``,
``envelope``, ``charsets``, ``attachmentN`` files), each in the charset ``charsets``
names; they are put back together into one message, so that everything after this
module reads one ``EmailMessage`` whatever the form.

The form itself is read by the ``multipart`` library; the message by the standard
``email`` package with ``policy.default``.
"""

from __future__ import annotations

import codecs
import io
import json
import re
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage, Message
from email.parser import BytesParser
from email.utils import getaddresses
from typing import NamedTuple

from multipart import MultipartError, MultipartParser, parse_options_header

#: Deeper MIME nesting than this is refused as hostile: no mail client writes it.
MAX_MIME_DEPTH = 40
#: The parsed form's attachments: ``attachment1``, ``attachment2``, ...
ATTACHMENT_FIELD = re.compile(r"attachment\d+")
#: The most parts a form may have (fields and attachments together).
MAX_FORM_PARTS = 1000
#: The charset a field is read in when ``charsets`` names none (SendGrid's default).
DEFAULT_CHARSET = "utf-8"


class UnreadablePost(ValueError):
    """A stored post that is no Inbound Parse form, or whose email cannot be read."""


@dataclass
class ParsedInbound:
    """One email that came back, as read from its post."""

    message: EmailMessage
    #: ``raw`` when SendGrid posted the full MIME message, ``parsed`` otherwise.
    form: str
    #: Every address the mail was for: the envelope's, To, Cc, Delivered-To.
    recipients: list[str] = field(default_factory=list)
    #: What was read around a problem (an unknown charset), kept as the post's note.
    warnings: list[str] = field(default_factory=list)
    #: The message's bytes as SendGrid posted them (raw form only).
    original: bytes | None = None

    @property
    def raw(self) -> bytes:
        """The message as bytes, untouched when SendGrid posted it raw: what a forward
        attaches."""
        return self.original if self.original is not None else self.message.as_bytes(
            policy=policy.SMTP)


def parse_post(body: bytes, content_type: str | None) -> ParsedInbound:
    """The email in an Inbound Parse post; UnreadablePost saying why when there is none."""
    if not content_type or "multipart/form-data" not in content_type.lower():
        raise UnreadablePost(f"not multipart/form-data but {content_type or 'no Content-Type'}")
    fields: dict[str, bytes] = {}
    files: list[FormFile] = []
    for name, filename, part_type, value in _form_parts(body, content_type):
        if filename is not None or ATTACHMENT_FIELD.fullmatch(name):
            files.append(FormFile(filename or name, part_type, value))
        else:
            fields[name] = value
    warnings: list[str] = []
    charsets = _json(fields.get("charsets"), {})
    charsets = charsets if isinstance(charsets, dict) else {}
    if "email" in fields:
        message = _read_message(fields["email"])
        parsed = ParsedInbound(message, "raw", warnings=warnings, original=fields["email"])
    elif "headers" in fields:
        try:
            rebuilt = _rebuild(fields, files, charsets, warnings)
        except (ValueError, TypeError, LookupError, RecursionError) as exc:
            # The email package's word for parts it cannot put together.
            raise UnreadablePost(f"the parsed fields do not make an email: {exc}") from None
        parsed = ParsedInbound(rebuilt, "parsed", warnings=warnings)
    else:
        raise UnreadablePost("the form has neither an `email` field (raw) nor `headers` (parsed)")
    envelope = _json(fields.get("envelope"), {})
    recipients = [*(envelope.get("to") or [] if isinstance(envelope, dict) else [])]
    for name in ("to", "cc", "delivered-to", "x-original-to"):
        recipients += [address for _, address in getaddresses(
            [str(value) for value in parsed.message.get_all(name, [])]) if address]
    if "to" in fields:
        recipients += [address for _, address in getaddresses(
            [_text(fields["to"], charsets.get("to"), "to", warnings)]) if address]
    parsed.recipients = [r for r in dict.fromkeys(recipients) if isinstance(r, str)]
    _check_depth(parsed.message)
    defects = sorted({type(defect).__name__ for part in parsed.message.walk()
                      for defect in part.defects})
    if defects:  # read as well as the email package could: said, not hidden
        warnings.append(f"malformed MIME ({', '.join(defects)})")
    return parsed


class FormFile(NamedTuple):
    """One file of the parsed form (an attachment): its name, MIME type and content."""

    filename: str
    content_type: str
    content: bytes


def _form_parts(body: bytes, content_type: str) -> list[tuple[str, str | None, str, bytes]]:
    """(name, file name, type, content) of each part of the form.

    The ``multipart`` library reads a form in chunks, some six times faster than the
    ``email`` parser's line by line; parts stay in memory up to the body's own limit.
    It wants CRLF line breaks, as SendGrid sends them; a form with bare LFs (SendGrid's
    own sample posts) is read by the ``email`` parser instead.
    """
    boundary = parse_options_header(content_type)[1].get("boundary")
    if not boundary:
        raise UnreadablePost("the form's Content-Type names no boundary")
    try:
        parser = MultipartParser(io.BytesIO(body), boundary, content_length=len(body),
                                 spool_limit=len(body) + 1, memory_limit=2 * len(body) + 1,
                                 part_limit=MAX_FORM_PARTS)
        return [(part.name, part.filename, part.content_type, part.raw) for part in parser]
    except MultipartError as exc:
        problem = exc
    form = BytesParser(policy=policy.compat32).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1", "replace") + b"\n\n" + body)
    if not form.is_multipart() or len(form.get_payload()) > MAX_FORM_PARTS:
        raise UnreadablePost(f"the form cannot be read: {problem}")
    return [(part.get_param("name", "", header="content-disposition"), part.get_filename(),
             part.get_content_type(), part.get_payload(decode=True) or b"")
            for part in form.get_payload()]


def _read_message(raw: bytes) -> EmailMessage:
    try:
        message = BytesParser(policy=policy.default).parsebytes(raw)
    except RecursionError:
        raise UnreadablePost(f"the email is nested deeper than {MAX_MIME_DEPTH} levels") from None
    if not message.keys():
        raise UnreadablePost("the email has no headers")
    return message


def _check_depth(message: Message, depth: int = 0) -> None:
    if depth > MAX_MIME_DEPTH:
        raise UnreadablePost(f"the email is nested deeper than {MAX_MIME_DEPTH} levels")
    if message.is_multipart():
        for part in message.get_payload():
            _check_depth(part, depth + 1)


def _rebuild(fields: dict[str, bytes], files: list[FormFile], charsets: dict,
             warnings: list[str]) -> EmailMessage:
    """One message from the parsed form's headers, bodies and files."""
    headers = _text(fields["headers"], charsets.get("headers"), "headers", warnings)
    message = BytesParser(policy=policy.default).parsebytes(
        headers.strip("\r\n").encode("utf-8", "surrogateescape") + b"\n\n")
    # A DSN keeps its type (its report is read from its parts); the rest is rebuilt.
    report_type = message.get_param("report-type") if (
        message.get_content_type() == "multipart/report") else None
    for name in ("content-type", "content-transfer-encoding", "mime-version"):
        del message[name]
    text = _text(fields.get("text", b""), charsets.get("text"), "text", warnings)
    html = _text(fields.get("html", b""), charsets.get("html"), "html", warnings)
    if text or not html:
        message.set_content(text)
    if html:
        if text:
            message.add_alternative(html, subtype="html")
        else:
            message.set_content(html, subtype="html")
    for file in files:
        payload, content_type = file.content, file.content_type.split(";")[0].strip().lower()
        if content_type.startswith("message/") or content_type == "text/rfc822-headers":
            # Parsed as the part it was: an attached email, a DSN's report.
            if message.get_content_type() != "multipart/mixed":
                message.make_mixed()
            message.attach(BytesParser(policy=policy.default).parsebytes(
                f"Content-Type: {content_type}\n\n".encode() + payload))
        else:
            maintype, _, subtype = content_type.partition("/")
            message.add_attachment(payload, maintype=maintype or "application",
                                   subtype=subtype or "octet-stream", filename=file.filename)
    if isinstance(report_type, str) and message.is_multipart():
        message.set_type("multipart/report")
        message.set_param("report-type", report_type)
    return message


def _text(value: bytes, charset: object, name: str, warnings: list[str]) -> str:
    """A parsed field in the charset SendGrid named for it; utf-8 with replacements, and a
    warning, for a charset Python does not know."""
    wanted = charset if isinstance(charset, str) and charset else DEFAULT_CHARSET
    try:
        codecs.lookup(wanted)
    except LookupError:
        warnings.append(f"field {name!r}: unknown charset {wanted[:40]!r}, read as utf-8")
        wanted = DEFAULT_CHARSET
    return value.decode(wanted, errors="replace")


def _json(value: bytes | None, default: object) -> object:
    try:
        return json.loads(value) if value else default
    except ValueError:
        return default
