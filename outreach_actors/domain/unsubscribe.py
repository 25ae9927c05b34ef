"""Unsubscribe links: encrypted tokens, and what following one does (the page is
``web.unsubscribe``).

A token carries the tenant, the address and the message it was mailed in,
encrypted and authenticated with a key derived from ``secret_key`` (Fernet), so it
cannot be altered or forged, and the address cannot be read from the link: links
end up in proxy and server logs, browser histories and link scanners. It does
not expire: an unsubscribe link must keep working for as long as the mail that
carries it can be read. Links of earlier versions, signed but not encrypted
(itsdangerous), are still accepted.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from itsdangerous import BadData, URLSafeSerializer

from outreach_actors.domain import engine
from outreach_actors.domain.addresses import address_key
from outreach_actors.domain.store.models import Tenant, database_proxy
from outreach_actors.domain.suppressions import suppress
from outreach_actors.settings import Settings

logger = logging.getLogger(__name__)

# Separates these tokens from anything else signed with the same secret.
TOKEN_SALT = "outreach-unsubscribe"
DEVELOPMENT_SECRET = Settings.model_fields["secret_key"].default


class InvalidUnsubscribeToken(ValueError):
    """A token that was altered, truncated or signed with another secret."""


@dataclass(frozen=True)
class UnsubscribeToken:
    tenant_id: str
    email: str
    message_id: str


def make_token(settings: Settings, tenant_id: str, email: str, message_id: str) -> str:
    content = json.dumps([tenant_id, address_key(email), message_id], separators=(",", ":"))
    # Fernet's padding ("=") is left out of the link and put back when it is read.
    return _fernet(*_keys(settings)).encrypt(content.encode()).decode().rstrip("=")


def read_token(settings: Settings, token: str) -> UnsubscribeToken:
    """The token's content; raises InvalidUnsubscribeToken if it is not one of ours."""
    try:
        content = _content(settings, token)
        tenant_id, email, message_id = content
    except (BadData, InvalidToken, TypeError, ValueError):
        raise InvalidUnsubscribeToken("this unsubscribe link is not valid") from None
    if not all(isinstance(part, str) for part in (tenant_id, email, message_id)):
        raise InvalidUnsubscribeToken("this unsubscribe link is not valid")
    return UnsubscribeToken(tenant_id, email, message_id)


def _content(settings: Settings, token: str) -> object:
    """What ``token`` carries, decrypted, or read from a link an earlier version signed."""
    try:
        padded = token + "=" * (-len(token) % 4)
        return json.loads(_fernet(*_keys(settings)).decrypt(padded.encode()))
    except InvalidToken:
        # Signed, not encrypted: itsdangerous raises BadData unless it is one.
        return _serializer(settings).loads(token)


def unsubscribe_url(settings: Settings, tenant_id: str, email: str, message_id: str) -> str:
    """The link (and List-Unsubscribe target) for one email."""
    return unsubscribe_link_prefix(settings) + make_token(settings, tenant_id, email, message_id)


def unsubscribe_link_prefix(settings: Settings) -> str:
    """What every unsubscribe link starts with."""
    return f"{settings.public_base_url.rstrip('/')}/unsubscribe/"


def link_problems(settings: Settings) -> list[str]:
    """What is wrong with the unsubscribe links of mail sent to real SendGrid (none for a
    stand-in on this host, as in tests and the demo)."""
    if _is_local(settings.sendgrid_api_host):
        return []
    problems = []
    if _is_local(settings.public_base_url):
        problems.append(
            f"unsubscribe links point at {settings.public_base_url}, which recipients cannot "
            f"reach: set OUTREACH_PUBLIC_BASE_URL to where the unsubscribe endpoint is served")
    if problem := secret_problem(settings):
        problems.append(problem)
    return problems


def secret_problem(settings: Settings) -> str | None:
    """Why the unsubscribe links of these settings can be forged, if they can."""
    if settings.secret_key == DEVELOPMENT_SECRET:
        return ("OUTREACH_SECRET_KEY is the development default: anyone can forge "
                "unsubscribe links; set a long random secret")
    return None


def _is_local(url: str) -> bool:
    host = (urlsplit(url).hostname or "").lower()
    return host in {"localhost", "::1"} or host.startswith("127.") or host.endswith(".localhost")


def apply_unsubscribe(request: UnsubscribeToken) -> bool:
    """Suppress the address for the tenant and end its active enrollments; False when
    the tenant no longer exists. Running it twice changes nothing more."""
    if not tenant_exists(request.tenant_id):
        return False
    with database_proxy.atomic():
        suppress(request.tenant_id, request.email, "unsubscribed", f"one-click:{request.message_id}")
        exited = engine.exit_contact_enrollments(request.tenant_id, request.email, "unsubscribed")
    logger.info("Unsubscribed via link tenant=%s message=%s enrollments_exited=%d",
                request.tenant_id, request.message_id, exited)
    return True


def tenant_exists(tenant_id: str) -> bool:
    return Tenant.select().where(Tenant.id == tenant_id).exists()


def _keys(settings: Settings) -> tuple[str, ...]:
    """The secrets a token may be made with, the current one first."""
    return (settings.secret_key, *reversed(settings.secret_key_fallbacks))


@lru_cache(maxsize=8)
def _fernet(*secrets: str) -> MultiFernet:
    # MultiFernet encrypts with the first key and decrypts with any. Each Fernet key
    # is derived from its secret (HKDF, salted with TOKEN_SALT): a secret of any
    # length serves, and it is used for nothing else.
    return MultiFernet([
        Fernet(base64.urlsafe_b64encode(HKDF(
            algorithm=hashes.SHA256(), length=32, salt=TOKEN_SALT.encode(), info=b"fernet",
        ).derive(secret.encode())))
        for secret in secrets
    ])


def _serializer(settings: Settings) -> URLSafeSerializer:
    # Links signed before tokens were encrypted. itsdangerous accepts every key of a list.
    return URLSafeSerializer([*settings.secret_key_fallbacks, settings.secret_key], salt=TOKEN_SALT)
