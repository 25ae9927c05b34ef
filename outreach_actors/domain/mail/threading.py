"""Our identity in a conversation: each email's own Message-ID, and the headers that
make a ``thread: true`` email answer the enrollment's previous one."""

from __future__ import annotations

import re

from outreach_actors.domain.store.models import OutboundMessage

#: The Message-ID render gives each email: ``<msg_<hex>@<sender's domain>>``.
OUR_MESSAGE_ID = re.compile(r"<(msg_[0-9a-f]{32})@[^<>\s]+>")
MESSAGE_ID_HEADER = "Message-ID"
#: The most References kept: mail clients cut long chains too (RFC 5322 allows it).
MAX_REFERENCES = 10
_REPLY_PREFIX = re.compile(r"^\s*(?:re|aw|sv|antw|rv|réf)\s*:\s*", re.IGNORECASE)


def our_message_id(message_id: str, sender_email: str) -> str:
    """The Message-ID header of one of our emails."""
    return f"<{message_id}@{sender_email.rpartition('@')[2]}>"


def previous_email(enrollment_id: int) -> OutboundMessage | None:
    """The enrollment's last email that carries our Message-ID: what a thread answers."""
    for message in (OutboundMessage.select(OutboundMessage.subject, OutboundMessage.headers)
                    .where(OutboundMessage.enrollment == enrollment_id)
                    .order_by(OutboundMessage.created_at.desc(), OutboundMessage.id.desc())
                    .limit(5)):
        if (message.headers or {}).get(MESSAGE_ID_HEADER):
            return message
    return None


def thread_headers(previous: OutboundMessage) -> dict[str, str]:
    """In-Reply-To and References of an email that answers ``previous``."""
    headers = previous.headers or {}
    parent = headers[MESSAGE_ID_HEADER]
    chain = [*headers.get("References", "").split(), parent][-MAX_REFERENCES:]
    return {"In-Reply-To": parent, "References": " ".join(chain)}


def reply_subject(previous_subject: str) -> str:
    """``Re: <subject>``, without piling up prefixes."""
    return "Re: " + _REPLY_PREFIX.sub("", previous_subject, count=1)
