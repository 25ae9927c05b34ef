"""What SendGrid Inbound Parse would post for an email: the multipart/form-data body in
either form (raw MIME, or SendGrid's parsed fields with ``charsets``), signed as
SendGrid signs it, and posted (:func:`post_inbound`)."""

from __future__ import annotations

import datetime
import json
import time
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from email.utils import getaddresses
from urllib.error import HTTPError
from urllib.request import Request, urlopen

from sendgrid.helpers.eventwebhook.eventwebhook_header import EventWebhookHeader

from outreach_actors.dev.webhook_events import sign_webhook

#: The boundary SendGrid's own samples use.
BOUNDARY = "xYzZY"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def inbound_form(email: bytes, *, raw: bool = True, charset: str = "utf-8") -> bytes:
    """The body SendGrid posts for ``email``: its MIME in field ``email`` (``raw``), or
    its parsed fields, text fields encoded in ``charset`` as ``charsets`` says."""
    message = BytesParser(policy=policy.default).parsebytes(email)
    envelope = {"to": [address for _, address in getaddresses(
                    [str(v) for v in message.get_all("to", [])])],
                "from": str(message.get("from", ""))}
    fields: list[tuple[str, bytes, str | None, str | None]] = [
        ("dkim", b"{@example.com : pass}", None, None),
    ]
    if raw:
        fields.append(("email", email, None, None))
        charsets = {"to": "UTF-8", "subject": "UTF-8", "from": "UTF-8"}
    else:
        head = email.split(b"\r\n\r\n", 1)[0] if b"\r\n\r\n" in email else email.split(b"\n\n", 1)[0]
        fields.append(("headers", head + b"\n", None, None))
        charsets = {"headers": "UTF-8", "to": "UTF-8", "subject": "UTF-8", "from": "UTF-8"}
        for subtype in ("plain", "html"):
            part = message.get_body(preferencelist=(subtype,))
            if part is not None:
                name = "text" if subtype == "plain" else "html"
                fields.append((name, part.get_content().encode(charset, "replace"), None, None))
                charsets[name] = charset
        attachments = list(message.iter_attachments()) if message.is_multipart() else []
        for number, part in enumerate(attachments, start=1):
            fields.append((f"attachment{number}", part_bytes(part),
                           part.get_filename() or f"attachment{number}", part.get_content_type()))
        fields.append(("attachments", str(len(attachments)).encode(), None, None))
    fields += [
        ("to", ", ".join(envelope["to"]).encode(), None, None),
        ("from", envelope["from"].encode(), None, None),
        ("subject", str(message.get("subject", "")).encode(), None, None),
        ("sender_ip", b"192.0.2.25", None, None),
        ("envelope", json.dumps(envelope).encode(), None, None),
        ("charsets", json.dumps(charsets).encode(), None, None),
        ("SPF", b"pass", None, None),
    ]
    return _form(fields)


def part_bytes(part: EmailMessage) -> bytes:
    """A MIME part's content as SendGrid posts it: transfer encoding undone; an attached
    message or a DSN's report (which the parser reads into parts) as the bytes it was."""
    payload = part.get_payload(decode=True)
    if payload is None and isinstance(inner := part.get_payload(), list):
        return b"".join(block.as_bytes() for block in inner)
    return payload or b""


def _form(fields: list[tuple[str, bytes, str | None, str | None]]) -> bytes:
    chunks = []
    for name, value, filename, content_type in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n"
        if content_type:
            head += f"Content-Type: {content_type}\r\n"
        chunks.append(head.encode() + b"\r\n" + value + b"\r\n")
    return b"".join(chunks) + f"--{BOUNDARY}--\r\n".encode()


def inbound_headers(body: bytes, private_key_pem: str | None,
                    timestamp: int | None = None) -> dict[str, str]:
    """The headers of SendGrid's post of ``body``: signed under a security policy with
    ``private_key_pem``, as the Event Webhook is, or unsigned with None."""
    headers = {"Content-Type": CONTENT_TYPE, "User-Agent": "Sendlib/1.0 mx.sendgrid.net"}
    if private_key_pem is not None:
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        headers[EventWebhookHeader.SIGNATURE] = sign_webhook(body, stamp, private_key_pem)
        headers[EventWebhookHeader.TIMESTAMP] = stamp
    return headers


def post_inbound(url: str, body: bytes, *, private_key_pem: str | None,
                 timeout_s: float = 30.0) -> int:
    """POST one Inbound Parse body to ``url`` as SendGrid does; the HTTP status."""
    request = Request(url, data=body, method="POST",
                      headers=inbound_headers(body, private_key_pem))
    try:
        with urlopen(request, timeout=timeout_s) as answer:
            return answer.status
    except HTTPError as exc:
        return exc.code


#: What a simulated recipient writes back, by persona (dev/simulation.py).
REPLY_TEXT = {
    "replier": ("Re: {subject}", "Yes, let's talk. Thursday at 3pm works for me.", {}),
    "vacationer": ("Automatic reply: {subject}",
                   "I am out of the office until {back:%B %d, %Y} with limited access to email.",
                   {"Auto-Submitted": "auto-replied", "X-Auto-Response-Suppress": "All"}),
}


def simulated_reply(persona: str, *, sender: str, reply_to: str, subject: str,
                    message_id: str | None, number: int) -> bytes:
    """The email a ``replier`` or ``vacationer`` sends back to one of our emails."""
    subject_format, text, headers = REPLY_TEXT[persona]
    reply = EmailMessage()
    reply["From"] = sender
    reply["To"] = reply_to
    reply["Subject"] = subject_format.format(subject=subject)
    reply["Message-ID"] = f"<sim-{persona}-{number}@example.com>"
    if message_id:
        reply["In-Reply-To"] = reply["References"] = message_id
    for name, value in headers.items():
        reply[name] = value
    back = datetime.date.today() + datetime.timedelta(days=14)
    reply.set_content(text.format(back=back) + f"\n\nOn an earlier day, <{reply_to}> wrote:\n"
                      f"> {subject}\n")
    return reply.as_bytes(policy=policy.SMTP)
