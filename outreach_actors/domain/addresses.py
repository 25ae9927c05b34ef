"""The one address rule: how contacts, sender identities and suppressions are stored and
looked up, and the form SendGrid must receive (pure)."""

from __future__ import annotations

import re

# RFC 5321: no longer path fits a mail transaction.
MAX_ADDRESS_LENGTH = 254

# The email-validator library is not a dependency of this project, so the check is
# written here and is deliberately strict: an RFC 5322 dot-atom local part in ASCII, at
# most 64 characters, and a domain of at least two LDH labels whose last label is not
# numeric. SendGrid refuses Unicode in addresses ("501 Recipient syntax error"), so a
# non-ASCII domain is sent in its IDNA (punycode) form and a non-ASCII local part is
# refused. Quoted local parts and address literals ([192.0.2.1]) are refused too:
# SendGrid does not send to address literals, and neither belongs in an outreach list.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL_PART = re.compile(rf"{_ATOM}(?:\.{_ATOM})*\Z")
_DOMAIN_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")


def sendable_address(value: str) -> str:
    """``value`` as SendGrid must receive it (domain in IDNA form); ValueError if
    SendGrid would refuse it."""
    local, at, domain = value.rpartition("@")
    problem = f"{value!r:.300} is not a valid email address"
    if not at or len(value) > MAX_ADDRESS_LENGTH or len(local) > 64 or not _LOCAL_PART.match(local):
        raise ValueError(problem)
    try:
        ascii_domain = domain.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValueError(problem) from None
    labels = ascii_domain.split(".")
    if len(labels) < 2 or labels[-1].isdigit() or not all(map(_DOMAIN_LABEL.match, labels)):
        raise ValueError(problem)
    return f"{local}@{ascii_domain}"


def normalized_address(value: object) -> str:
    """``value`` stripped and lower-cased; ValueError, saying why, if it is no address.

    Not one: text that is not printable (line breaks, NUL, lone surrogates), longer
    than RFC 5321's 254 characters, holding a space or a list separator, or one that
    SendGrid would refuse (sendable_address), so that no contact, sender or
    suppression is stored that no send could use.
    """
    if value is not None and not isinstance(value, str):
        raise ValueError(f"an email address is text, not {type(value).__name__}")
    email = (value or "").strip()
    if (not email or not email.isprintable() or len(email) > MAX_ADDRESS_LENGTH
            or any(ch in email for ch in " ,;<>") or email.count("@") != 1):
        raise ValueError(f"{email!r:.300} is not a valid email address")
    sendable_address(email)
    return address_key(email)


# An address inside free text, such as a provider's error message: anything around one
# "@" up to a space, a bracket, a quote or a list separator (a full stop after it ends
# the sentence). A word is tried from its start only, and once (possessive): linear
# time over a provider's arbitrary text.
_NOT_IN_ADDRESS = r"""\s@<>()\[\],;:"'"""
_ADDRESS_IN_TEXT = re.compile(
    rf"(?<![^{_NOT_IN_ADDRESS}])[^{_NOT_IN_ADDRESS}]++"
    rf"@[^{_NOT_IN_ADDRESS}.]++(?:\.[^{_NOT_IN_ADDRESS}.]++)*+")
#: What redact_addresses puts where an address was.
REDACTED_ADDRESS = "[address]"


def redact_addresses(text: str) -> str:
    """``text`` with each email address in it replaced by ``[address]``: what a provider
    says goes to logs and error trackers, which must not collect recipients' addresses."""
    return _ADDRESS_IN_TEXT.sub(REDACTED_ADDRESS, text)


def address_key(value: str) -> str:
    """The form an address is stored and looked up by: stripped and lower-cased. It
    refuses nothing, for lookups of what a provider or a link reports; what is stored
    new goes through normalized_address, which returns the same form."""
    return value.strip().lower()
