"""The reply address ``reply+TOKEN@<inbound domain>``: TOKEN names our message and is
authenticated (HMAC over the message and its tenant) with the unsubscribe links' secrets.

Base32 in lower case, because mail systems may fold the local part's case; 26 bytes
(16 of message id, 10 of MAC) make 42 characters, well inside a 64-character local part.
A token made with a fallback secret still reads, as unsubscribe links do.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import uuid
from functools import lru_cache

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from outreach_actors.domain.unsubscribe import token_secrets
from outreach_actors.settings import Settings

#: The local part before the token: ``reply+TOKEN@``.
REPLY_PREFIX = "reply+"
# Separates these MACs from anything else keyed by the same secrets.
TOKEN_SALT = b"outreach-reply"
MAC_BYTES = 10
MESSAGE_ID_PREFIX = "msg_"
_TOKEN = re.compile(r"reply\+([a-z2-7]{42})@", re.IGNORECASE)


def make_reply_token(settings: Settings, tenant_id: str, message_id: str) -> str | None:
    """The token of one of our messages; None for a message id not made by new_message_id."""
    try:
        raw = uuid.UUID(hex=message_id.removeprefix(MESSAGE_ID_PREFIX)).bytes
    except ValueError:
        return None
    mac = _mac(token_secrets(settings)[0], tenant_id, raw)
    # Base32's padding ("=") is left out of the address and put back when it is read.
    return base64.b32encode(raw + mac).decode().rstrip("=").lower()


def reply_address(settings: Settings, tenant_id: str, message_id: str) -> str | None:
    """``reply+TOKEN@<inbound domain>``, or None without an inbound domain."""
    if not settings.inbound_domain:
        return None
    token = make_reply_token(settings, tenant_id, message_id)
    return f"{REPLY_PREFIX}{token}@{settings.inbound_domain}" if token else None


def tokens_in(text: str) -> list[str]:
    """The tokens of every reply address in ``text`` (an address list, headers)."""
    return list(dict.fromkeys(match.lower() for match in _TOKEN.findall(text or "")))


def _decoded(token: str) -> bytes | None:
    try:
        return base64.b32decode(token.upper() + "=" * (-len(token) % 8))
    except ValueError:
        return None


def message_id_of(token: str) -> str | None:
    """The message a token claims, unverified (verify with token_is_valid)."""
    if (raw := _decoded(token)) is None:
        return None
    return MESSAGE_ID_PREFIX + raw[:16].hex() if len(raw) == 16 + MAC_BYTES else None


def token_is_valid(settings: Settings, token: str, tenant_id: str) -> bool:
    """Whether ``token`` was made by us, for its message and ``tenant_id``."""
    if (raw := _decoded(token)) is None:
        return False
    message, mac = raw[:16], raw[16:]
    return any(hmac.compare_digest(mac, _mac(secret, tenant_id, message))
               for secret in token_secrets(settings))


def _mac(secret: str, tenant_id: str, message: bytes) -> bytes:
    return hmac.new(_key(secret), tenant_id.encode() + b"\0" + message,
                    hashlib.sha256).digest()[:MAC_BYTES]


@lru_cache(maxsize=8)
def _key(secret: str) -> bytes:
    # Derived, as for unsubscribe links: the secret is used for nothing else as it is.
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=TOKEN_SALT, info=b"hmac",
                ).derive(secret.encode())
