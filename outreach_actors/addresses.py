"""Email addresses as contacts, sender identities and suppressions are stored (pure)."""

from __future__ import annotations

# RFC 5321: no longer path fits a mail transaction.
MAX_ADDRESS_LENGTH = 254


def normalized_address(value: object) -> str:
    """``value`` stripped and lower-cased; ValueError, saying why, if it is no address.

    Not one: text that is not printable (line breaks, NUL, lone surrogates), longer
    than RFC 5321's 254 characters, holding a space or a list separator, or not one
    local part and one dotted domain.
    """
    if value is not None and not isinstance(value, str):
        raise ValueError(f"an email address is text, not {type(value).__name__}")
    email = (value or "").strip()
    if (not email or not email.isprintable() or len(email) > MAX_ADDRESS_LENGTH
            or any(ch in email for ch in " ,;<>") or email.count("@") != 1):
        raise ValueError(f"{email!r:.300} is not a valid email address")
    local, domain = email.split("@")
    if not local or "." not in domain or domain.startswith(".") or domain.endswith("."):
        raise ValueError(f"{email!r} is not a valid email address")
    return email.lower()
