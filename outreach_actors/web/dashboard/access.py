"""Who may open the dashboard and what proves a form came from it: password hashes for
the standalone server's users, HTTP basic authentication, and CSRF tokens."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from functools import lru_cache

from outreach_actors.settings import SettingsError

#: scrypt's cost: about 50 ms and 16 MiB a check, as hashlib's documentation suggests.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
HASH_SCHEME = "scrypt"
#: The cookie that carries a browser's CSRF secret; forms carry a token derived from it.
CSRF_COOKIE = "outreach_csrf"
CSRF_FIELD = "csrf_token"


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """A hash to put in OUTREACH_DASHBOARD_USERS (``outreach dashboard hash-password``)."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    return "$".join([HASH_SCHEME, salt.hex(), digest.hex()])


def password_matches(password: str, hashed: str) -> bool:
    scheme, _, rest = hashed.partition("$")
    salt_hex, _, digest_hex = rest.partition("$")
    try:
        salt, digest = bytes.fromhex(salt_hex), bytes.fromhex(digest_hex)
    except ValueError:
        return False
    if scheme != HASH_SCHEME:
        return False
    computed = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    return hmac.compare_digest(computed, digest)


def parse_users(value: str) -> dict[str, str]:
    """``user:hash,user:hash`` (OUTREACH_DASHBOARD_USERS) as user -> hash; SettingsError
    naming the setting when it is empty or malformed."""
    users: dict[str, str] = {}
    for pair in filter(None, (part.strip() for part in value.split(","))):
        user, _, hashed = pair.partition(":")
        if not user or not hashed.startswith(HASH_SCHEME + "$") or hashed.count("$") != 2:
            raise SettingsError(
                f"OUTREACH_DASHBOARD_USERS: {user or pair[:20]!r} is not user:hash; make a hash "
                "with `outreach dashboard hash-password`")
        users[user] = hashed
    if not users:
        raise SettingsError(
            "the dashboard shows personal data and does not start without users: set "
            "OUTREACH_DASHBOARD_USERS=user:hash (hash from `outreach dashboard hash-password`)")
    return users


class BasicAuth:
    """Checks an ``Authorization: Basic`` header against the configured users.

    The answer for a header is remembered so that each page does not pay for scrypt
    again (the users do not change while the server runs).
    """

    def __init__(self, users: Mapping[str, str]) -> None:
        self.users = dict(users)
        self._check = lru_cache(maxsize=256)(self._password_matches)

    def user(self, header: str | None) -> str | None:
        """The user the header proves, or None."""
        if not header or not header.startswith("Basic "):
            return None
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, _, password = decoded.partition(":")
        if user not in self.users:
            return None
        return user if self._check(user, password) else None

    def _password_matches(self, user: str, password: str) -> bool:
        return password_matches(password, self.users[user])


def new_csrf_secret() -> str:
    return secrets.token_urlsafe(32)


def csrf_token(secret_key: str, csrf_secret: str) -> str:
    """The token a form carries: bound to the browser's cookie and the server's key, so a
    page elsewhere can neither read nor forge it."""
    return hmac.new(secret_key.encode(), b"dashboard-csrf:" + csrf_secret.encode(),
                    hashlib.sha256).hexdigest()


def csrf_token_matches(secret_key: str, csrf_secret: str | None, token: str | None) -> bool:
    if not csrf_secret or not token:
        return False
    return hmac.compare_digest(csrf_token(secret_key, csrf_secret), token)
