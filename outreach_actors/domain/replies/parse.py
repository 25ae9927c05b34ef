"""Read one stored Inbound Parse post, in either of SendGrid's forms, as one email.

"POST the raw, full MIME message" on: the form's ``email`` field is the message. Off:
SendGrid sends the parsed parts (``headers``, ``text``, ``html``, ``from``, ``to``,
``envelope``, ``charsets``, ``attachmentN`` files), each in the charset ``charsets``
names; they are put back together into one message, so that everything after this
module reads one ``EmailMessage`` whatever the form.

The form itself is read by the ``multipart`` library; the message by the standard
``email`` package with ``policy.default``, each header parsed once (``READ_POLICY``), and
without the contents of its attachments (``skimmed``): what comes after reads headers
and text parts only, and a forward attaches the message's bytes as they were posted.
"""

from __future__ import annotations

import codecs
import functools
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from email import errors, policy
from email.headerregistry import BaseHeader, HeaderRegistry
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
#: Attachments shorter than this are read whole: leaving them out would save little.
SKIM_MIN_BYTES = 8 * 1024
#: The line break that ends a header block, and a CR that is no line break's.
BLANK_LINE, BARE_CR = re.compile(rb"\n\r?\n"), re.compile(rb"\r(?!\n)")
#: Header objects kept for reuse (a reply's own headers, and the parts' common ones).
REMEMBERED_HEADERS = 1024


class RememberedHeaders(HeaderRegistry):
    """``policy.default``'s header objects, each value parsed once.

    The default registry parses a header again on every read, and the parser itself
    reads each part's Content-Type about five times: that was half the CPU of reading
    a reply. Header objects are immutable strings, so one serves every read of the
    same value, in any message.
    """

    def __init__(self) -> None:
        super().__init__()
        self._parsed = functools.lru_cache(maxsize=REMEMBERED_HEADERS)(super().__call__)

    def __call__(self, name: str, value: str) -> BaseHeader:
        return self._parsed(name, value)


#: How every message and header of a post is read.
READ_POLICY = policy.default.clone(header_factory=RememberedHeaders())


class UnreadablePost(ValueError):
    """A stored post that is no Inbound Parse form, or whose email cannot be read."""


@dataclass
class ParsedInbound:
    """One email that came back, as read from its post."""

    #: In the raw form, without the contents of its attachments (see ``skimmed``).
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
        message = BytesParser(policy=READ_POLICY).parsebytes(skimmed(raw))
    except RecursionError:
        raise UnreadablePost(f"the email is nested deeper than {MAX_MIME_DEPTH} levels") from None
    if not message.keys():
        raise UnreadablePost("the email has no headers")
    return message


def skimmed(raw: bytes) -> bytes:
    """``raw`` without the contents of its attachments, for the email parser to read.

    The parser reads every line of every part, and a 100 KB attachment was three
    quarters of a reply's parse, for nothing: classification and matching read
    headers and text parts. The email package parses all or nothing, so this is
    hand-written: it finds the parts by their boundaries as the parser does (a line
    ``--boundary``, optionally ``--`` and blanks after it; the line break before it
    is the delimiter's), and drops the body of each part that is neither multipart,
    text nor message, from its blank line to the next delimiter, keeping its headers.
    What it is not sure of (a bare CR, a header block the parser reads otherwise, a
    multipart without its closing delimiter) it leaves whole, so the parser reads
    that as it always did.
    """
    if BARE_CR.search(raw):  # the parser also ends a line there
        return raw
    dropped: list[tuple[int, int]] = []
    _skim_part(raw, 0, len(raw), dropped, 0)
    if not dropped:
        return raw
    kept, at = [], 0
    for start, end in dropped:
        kept.append(raw[at:start])
        at = end
    kept.append(raw[at:])
    return b"".join(kept)


def _skim_part(raw: bytes, start: int, end: int, dropped: list[tuple[int, int]],
               depth: int) -> None:
    """Add to ``dropped`` the attachment bodies of the part ``raw[start:end]``."""
    blank = _blank_line(raw, start, end)
    if blank is None or depth > MAX_MIME_DEPTH:
        return
    head_stop, body_start = blank
    # Read as the parser reads them (and so parsed once for both: READ_POLICY).
    head = BytesParser(policy=READ_POLICY).parsebytes(raw[start:head_stop], headersonly=True)
    # The parser would not end the headers where we did. (A multipart read headers only
    # has no parts: some Pythons, Debian's 3.11.2 among them, note that as a defect.)
    if any(not isinstance(defect, errors.MultipartInvariantViolationDefect)
           for defect in head.defects):
        return
    maintype = head.get_content_maintype()
    if maintype == "multipart":
        try:  # the parser compares it with lines read as ASCII, surrogates for the rest
            boundary = (head.get_boundary() or "").encode("ascii", "surrogateescape")
        except UnicodeEncodeError:
            return
        for part_start, part_end in _parts(raw, boundary, body_start, end) if boundary else ():
            _skim_part(raw, part_start, part_end, dropped, depth + 1)
    elif maintype not in ("text", "message") and end - body_start >= SKIM_MIN_BYTES:
        dropped.append((body_start, end))


def _blank_line(raw: bytes, start: int, end: int) -> tuple[int, int] | None:
    """(end of the header block, start of the body) of the part ``raw[start:end]``;
    None when it has no headers or no blank line after them."""
    if raw.startswith((b"\n", b"\r\n"), start):
        return None
    found = BLANK_LINE.search(raw, start, end)
    return None if found is None else (found.start() + 1, found.end())


def _parts(raw: bytes, boundary: bytes, start: int, end: int) -> list[tuple[int, int]]:
    """(start, end) of each part of a multipart body ``raw[start:end]``, the line break
    before each delimiter left out; none unless the closing delimiter is there."""
    parts: list[tuple[int, int]] = []
    opened = None
    for line_start, line_end, closing in _delimiters(raw, b"--" + boundary, start, end):
        if opened is not None:
            part_end = line_start - (2 if raw.startswith(b"\r\n", line_start - 2) else 1)
            parts.append((opened, max(opened, part_end)))
        if closing:
            return parts
        opened = line_end
    return []


def _delimiters(raw: bytes, marker: bytes, start: int, end: int) -> Iterator[
        tuple[int, int, bool]]:
    """(start, end after its line break, closing?) of each delimiter line in
    ``raw[start:end]``."""
    at = start
    while (found := raw.find(marker, at, end)) != -1:
        at = found + len(marker)
        if found != start and raw[found - 1] != 0x0A:  # not at the start of a line
            continue
        line_end = raw.find(b"\n", at, end)
        line_end = end if line_end == -1 else line_end + 1
        rest = raw[at:line_end]
        closing = rest.startswith(b"--")
        if (rest[2:] if closing else rest).rstrip(b"\r\n").strip(b" \t"):
            continue  # "--boundary" and more: a line of text, not a delimiter
        yield found, line_end, closing


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
    message = BytesParser(policy=READ_POLICY).parsebytes(
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
            message.attach(BytesParser(policy=READ_POLICY).parsebytes(
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
