"""Unsubscribe links: encrypted tokens, and what following one does (the page is
``web.unsubscribe``).

A token carries the tenant, the address and the message it was mailed in,
encrypted and authenticated with a key derived from ``secret_key`` (Fernet), so it
cannot be altered or forged, and the address cannot be read from the link: links
end up in proxy and server logs, browser histories and link scanners. It does
not expire: an unsubscribe link must keep working for as long as the mail that
carries it can be read. Links of earlier versions, signed but not encrypted
(itsdangerous), are still accepted. Mail sent to real recipients needs secrets
nobody can guess (``require_unforgeable_links``).
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
from outreach_actors.settings import Settings, SettingsError, env_name

logger = logging.getLogger(__name__)

# Separates these tokens from anything else signed with the same secret.
TOKEN_SALT = "outreach-unsubscribe"
DEVELOPMENT_SECRET = Settings.model_fields["secret_key"].default
#: The shortest secret, in bytes (UTF-8), that mail sent through SendGrid may use: one
#: link lets anyone test guesses offline, and HKDF makes each guess cheap.
MIN_SECRET_BYTES = 32
#: The fewest different characters such a secret may have.
MIN_SECRET_CHARACTERS = 8
#: The share of its 3-character runs that must differ from each other: less is a pattern.
MIN_SECRET_DISTINCT_RUNS = 0.75


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
    return _fernet(*token_secrets(settings)).encrypt(content.encode()).decode().rstrip("=")


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
        return json.loads(_fernet(*token_secrets(settings)).decrypt(padded.encode()))
    except InvalidToken:
        # Signed, not encrypted: itsdangerous raises BadData unless it is one.
        return _serializer(settings).loads(token)


def unsubscribe_url(settings: Settings, tenant_id: str, email: str, message_id: str) -> str:
    """The link (and List-Unsubscribe target) for one email."""
    return unsubscribe_link_prefix(settings) + make_token(settings, tenant_id, email, message_id)


def unsubscribe_link_prefix(settings: Settings) -> str:
    """What every unsubscribe link starts with."""
    return f"{settings.public_base_url.rstrip('/')}/unsubscribe/"


def mails_real_recipients(settings: Settings) -> bool:
    """Whether these settings send through SendGrid itself: an API key, and an API host
    that is not this machine (a stand-in here, as in tests and the demo, mails no one)."""
    return bool(settings.sendgrid_api_key) and not _is_local(settings.sendgrid_api_host)


def link_problems(settings: Settings) -> list[str]:
    """What is wrong with the unsubscribe links of mail sent to real SendGrid, though every
    send succeeds (a forgeable secret is refused instead, see require_unforgeable_links)."""
    if not mails_real_recipients(settings) or not _is_local(settings.public_base_url):
        return []
    return [f"unsubscribe links point at {settings.public_base_url}, which recipients cannot "
            f"reach: set OUTREACH_PUBLIC_BASE_URL to where the unsubscribe endpoint is served"]


def require_unforgeable_links(settings: Settings) -> None:
    """Raise SettingsError, naming the setting and the fix, when these settings mail real
    recipients with a secret that anyone could forge their unsubscribe links with.

    Workers and the web endpoints call it at start. Development (no API key, or a stand-in
    on this host) may keep the default secret.
    """
    if mails_real_recipients(settings) and (problems := secret_problems(settings)):
        raise SettingsError("; ".join(problems))


def secret_problems(settings: Settings) -> list[str]:
    """Why the unsubscribe links of these settings can be forged: a weak secret_key, or a
    weak secret among the fallbacks (a token made with any of them is accepted)."""
    problems = []
    if weakness := secret_weakness(settings.secret_key):
        problems.append(
            f"{env_name('secret_key')} {weakness}: anyone can forge unsubscribe links that "
            f"unsubscribe any address; set it to what `outreach secret generate` prints")
    for position, fallback in enumerate(settings.secret_key_fallbacks, start=1):
        if weakness := secret_weakness(fallback):
            problems.append(
                f"{env_name('secret_key_fallbacks')} entry {position} {weakness}: links made "
                f"with it can be forged, so it cannot be honoured; remove it from the list")
    return problems


def secret_weakness(secret: str) -> str | None:
    """Why ``secret`` is too weak to make unsubscribe links with, if it is.

    The rule: not the development default (it is public), at least MIN_SECRET_BYTES
    bytes, at least MIN_SECRET_CHARACTERS different characters, and no repeated pattern
    (at least MIN_SECRET_DISTINCT_RUNS of its 3-character runs differ). Random secrets
    pass, hex ones included; ``outreach secret generate`` prints one.
    """
    if secret == DEVELOPMENT_SECRET:
        return "is the development default, which is public"
    if not secret:
        return "is empty"
    size = len(secret.encode())
    if size < MIN_SECRET_BYTES:
        return f"is {size} bytes long, fewer than the {MIN_SECRET_BYTES} needed"
    if (characters := len(set(secret))) < MIN_SECRET_CHARACTERS:
        return f"has only {characters} different characters, fewer than {MIN_SECRET_CHARACTERS}"
    runs = [secret[start:start + 3] for start in range(len(secret) - 2)]
    if len(set(runs)) < MIN_SECRET_DISTINCT_RUNS * len(runs):
        return "repeats a pattern"
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


def token_secrets(settings: Settings) -> tuple[str, ...]:
    """The secrets a token may be made with, the current one first (unsubscribe links
    and reply addresses alike)."""
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
