"""Find the email of ours a reply answers: by its reply+TOKEN address, else by its
In-Reply-To and References against our Message-IDs."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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


@dataclass(frozen=True)
class Named:
    """What a reply names of ours: its reply tokens, each with the message it claims
    (unverified), and our Message-IDs in its references, the most recent last."""

    tokens: list[tuple[str, str | None]]
    references: list[str]

    @property
    def message_ids(self) -> list[str]:
        """Every message id named, for reading them all at once."""
        return list(dict.fromkeys([*(m for _, m in self.tokens if m), *self.references]))


def named(recipients: list[str], reply: Message, returned: Message | None = None) -> Named:
    """What ``reply`` (to ``recipients``) names of ours; for a DSN, also the email it
    ``returned``."""
    addresses = list(recipients)
    if returned is not None:
        addresses += [str(returned.get("reply-to", "")), str(returned.get("from", ""))]
    tokens = [(token, message_id_of(token)) for token in tokens_in(" ".join(addresses))]
    references: list[str] = []
    for source in (returned, reply):
        if source is None:
            continue
        for name in ("message-id",) if source is returned else ("in-reply-to", "references"):
            references += OUR_MESSAGE_ID.findall(" ".join(str(v) for v in source.get_all(name, [])))
    return Named(tokens, list(dict.fromkeys(references)))


def find_message(settings: Settings, recipients: list[str], reply: Message,
                 returned: Message | None = None,
                 messages: Mapping[str, OutboundMessage] | None = None) -> Match:
    """Our email that ``reply`` (to ``recipients``) answers, or, for a DSN, the one it
    ``returned``; Match(None, why) when none is ours. ``messages``: the emails it names,
    read beforehand (load_messages), for many replies at once."""
    found = named(recipients, reply, returned)
    if messages is None:
        messages = load_messages(found.message_ids)
    problems: list[str] = []
    for token, message_id in found.tokens:
        message = messages.get(message_id) if message_id else None
        if message is None:
            problems.append(f"reply token names message {message_id or '(unreadable)'}, "
                            "which is not in this database (purged?)")
        elif token_is_valid(settings, token, message.tenant_id):
            return Match(message, "token")
        else:
            problems.append(f"reply token for message {message_id} is forged or was made "
                            "with a secret no longer configured")
    for candidate in reversed(found.references):
        message = messages.get(candidate)
        if message is not None and (message.headers or {}).get(MESSAGE_ID_HEADER, "").startswith(
                f"<{candidate}@"):
            return Match(message, "references")
        if message is None:
            problems.append(f"In-Reply-To/References name message {candidate}, which is not in "
                            "this database (purged?)")
    if not problems:
        problems.append("no reply token and no Message-ID of ours in In-Reply-To/References")
    return Match(None, "; ".join(dict.fromkeys(problems)))


def load_messages(message_ids: Iterable[str]) -> dict[str, OutboundMessage]:
    """Our emails of these ids (those that exist), in one read."""
    ids = sorted(set(message_ids))
    if not ids:
        return {}
    # Not the rendered html and text: a reply needs only who, where and what subject.
    return {message.id: message for message in OutboundMessage.select(
        OutboundMessage.id, OutboundMessage.tenant, OutboundMessage.enrollment,
        OutboundMessage.node, OutboundMessage.action, OutboundMessage.to_email,
        OutboundMessage.from_email, OutboundMessage.from_name, OutboundMessage.subject,
        OutboundMessage.headers, OutboundMessage.status,
    ).where(OutboundMessage.id.in_(ids))}
