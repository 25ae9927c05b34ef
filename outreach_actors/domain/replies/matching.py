"""Find the email of ours a reply answers: by its reply+TOKEN address, else by its
In-Reply-To and References against our Message-IDs."""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message

from outreach_actors.domain.mail.reply_address import message_id_of, token_is_valid, tokens_in
from outreach_actors.domain.mail.threading import MESSAGE_ID_HEADER, OUR_MESSAGE_ID
from outreach_actors.domain.store.models import OutboundMessage
from outreach_actors.settings import Settings


@dataclass(frozen=True)
class Match:
    """Our email a reply answers (None when nothing matched), and how, or why not."""

    message: OutboundMessage | None
    how: str


def find_message(settings: Settings, recipients: list[str], reply: Message,
                 returned: Message | None = None) -> Match:
    """Our email that ``reply`` (to ``recipients``) answers, or, for a DSN, the one it
    ``returned``; Match(None, why) when none is ours."""
    problems: list[str] = []
    addresses = list(recipients)
    if returned is not None:
        addresses += [str(returned.get("reply-to", "")), str(returned.get("from", ""))]
    for token in tokens_in(" ".join(addresses)):
        message_id = message_id_of(token)
        message = _message(message_id) if message_id else None
        if message is None:
            problems.append(f"reply token names message {message_id or '(unreadable)'}, "
                            "which is not in this database (purged?)")
        elif token_is_valid(settings, token, message.tenant_id):
            return Match(message, "token")
        else:
            problems.append(f"reply token for message {message_id} is forged or was made "
                            "with a secret no longer configured")
    references: list[str] = []
    for source in (returned, reply):
        if source is None:
            continue
        for name in ("message-id",) if source is returned else ("in-reply-to", "references"):
            references += OUR_MESSAGE_ID.findall(" ".join(str(v) for v in source.get_all(name, [])))
    for candidate in reversed(list(dict.fromkeys(references))):
        message = _message(candidate)
        if message is not None and (message.headers or {}).get(MESSAGE_ID_HEADER, "").startswith(
                f"<{candidate}@"):
            return Match(message, "references")
        if message is None:
            problems.append(f"In-Reply-To/References name message {candidate}, which is not in "
                            "this database (purged?)")
    if not problems:
        problems.append("no reply token and no Message-ID of ours in In-Reply-To/References")
    return Match(None, "; ".join(dict.fromkeys(problems)))


def _message(message_id: str) -> OutboundMessage | None:
    # Not the rendered html and text: a reply needs only who, where and what subject.
    return (OutboundMessage.select(
        OutboundMessage.id, OutboundMessage.tenant, OutboundMessage.enrollment,
        OutboundMessage.node, OutboundMessage.action, OutboundMessage.to_email,
        OutboundMessage.from_email, OutboundMessage.subject, OutboundMessage.headers,
        OutboundMessage.status,
    ).where(OutboundMessage.id == message_id).first())
