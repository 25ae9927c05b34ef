"""What the domain hands a mail provider and what it hears back: one rendered email, and
the outcome of one attempt to send it (``providers.sendgrid`` speaks these)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

#: ``sent`` (keep the provider id), ``retry`` (nothing was accepted; ask again),
#: ``permanent`` (asking again cannot help), ``ambiguous`` (the answer was lost).
OutcomeKind = Literal["sent", "retry", "permanent", "ambiguous"]


@dataclass(frozen=True)
class OutgoingEmail:
    """One rendered email to one recipient, ready to hand to SendGrid."""

    message_id: str
    tenant: str
    to_email: str
    from_email: str
    from_name: str | None
    subject: str
    html: str | None
    text: str | None
    categories: list[str] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    custom_args: dict[str, str] = field(default_factory=dict)
    #: The SendGrid unsubscribe group (``asm.group_id``) the plan or node names, if any.
    asm_group: int | None = None
    reply_to: str | None = None
    #: (file name, MIME type, content) of each attachment: a forward's original email.
    attachments: tuple[tuple[str, str, bytes], ...] = ()


#: Where render keeps an email's Reply-To among its stored headers; SendGrid takes it
#: as ``reply_to``, not as a header.
REPLY_TO_HEADER = "Reply-To"


@dataclass(frozen=True)
class SendOutcome:
    """What one send attempt came to; ``error`` is the provider's own message when it gave one."""

    kind: OutcomeKind
    provider_message_id: str | None = None
    status_code: int | None = None
    error: str | None = None
    retry_after_s: float | None = None
