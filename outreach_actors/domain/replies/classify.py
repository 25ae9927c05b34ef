"""Tell what came back: a person's reply, an auto-reply (with its return date), a
delivery status notification (a bounce) or a request to be removed.

The tables are class-level, as django-anymail keeps its providers' (one place to read
and extend). Quoted text is cut by email-reply-parser (GitHub's rules, English
"On ... wrote:" and Outlook's "From:/Sent:" blocks); it knows no other language's quote
header, so the German, French and Spanish ones are cut here first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from email.message import EmailMessage, Message
from email.parser import HeaderParser

import html_text
from email_reply_parser import EmailReplyParser

from outreach_actors.domain.vocabulary import EventType

#: The most words a reply may have and still be only a request to be removed.
MAX_UNSUBSCRIBE_WORDS = 12
#: The most text read from a reply's body (the rest is quoted history or attachments).
MAX_BODY_CHARS = 200_000
#: What the quote cutter reads: a writer's new text is at the top, and its regular
#: expressions cost in the length of the quoted history beneath.
MAX_REPLY_CHARS = 4_000


@dataclass(frozen=True)
class Classification:
    """What a reply is: ``kind`` is an event type (replied, auto_replied, bounced,
    unsubscribed) and ``data`` what the event keeps (bounce_type, status, return_date)."""

    kind: str
    data: dict = field(default_factory=dict)
    #: A DSN's report of the email it bounces: its headers, for matching.
    returned: Message | None = None


class AutoReplyHeaders:
    """Headers that mark an automatic answer, each with the values that do (None: any)."""

    #: RFC 3834: anything but ``no``.
    AUTO_SUBMITTED = "auto-submitted"
    #: name -> values that mark an auto-reply (lower case; None: the header's presence).
    MARKERS: dict[str, frozenset[str] | None] = {
        "x-autoreply": None,
        "x-autorespond": None,
        "x-autoresponder": None,
        "precedence": frozenset({"auto_reply", "bulk", "junk"}),
        # Exchange and Outlook out-of-office answers.
        "x-ms-exchange-inbox-rules-loop": None,
        "x-auto-response-suppress": frozenset({"all", "oof", "autoreply"}),
    }


class AutoReplySubjects:
    """Out-of-office subjects, for auto-replies no header marks (EN, DE, FR, ES)."""

    PATTERN = re.compile(
        r"^\s*(?:"
        r"out of (?:the )?office|automatic reply|auto[- ]?reply|autoreply|away from (?:the )?office"
        r"|on vacation|on holiday|abwesenheitsnotiz|automatische antwort|abwesend|außer haus"
        r"|nicht im büro|absence du bureau|réponse automatique|absent|en congés?"
        r"|respuesta automática|fuera de la oficina|ausente|de vacaciones"
        r")\b", re.IGNORECASE)


class UnsubscribeRequests:
    """Phrases that ask to be removed (EN, DE, FR, ES), in a short reply."""

    PATTERN = re.compile(
        r"\b(?:unsubscribe|remove me|take me off|stop (?:e-?mailing|sending|contacting)"
        r"|abmelden|austragen|entfernen sie mich|keine (?:e-?mails|mails) mehr"
        r"|désabonner|desabonner|désinscri|desinscri|retirez[- ]moi|supprimez[- ]moi"
        r"|darme de baja|dar de baja|d[eé]n de baja|elim[ií]n(?:ame|eme|arme)|no me escrib"
        r")", re.IGNORECASE)


class QuoteHeaders:
    """Lines that open the quoted history in replies written in German, French and Spanish
    (English ones are email-reply-parser's)."""

    PATTERN = re.compile(
        r"^(?:Am .{0,200}schrieb.{0,200}:|Le .{0,200}a écrit\s*:|El .{0,200}escribió\s*:"
        r"|-----\s*(?:Original Message|Ursprüngliche Nachricht|Message d'origine"
        r"|Mensaje original)\s*-----)\s*$", re.MULTILINE)


class ReturnDates:
    """The date an auto-reply says its writer is back: after a phrase of return, in one
    of the numeric forms or an English month name."""

    MONTHS = {name: number for number, names in enumerate([
        ("january", "jan", "januar", "janvier", "enero"), ("february", "feb", "februar", "février", "febrero"),
        ("march", "mar", "märz", "mars", "marzo"), ("april", "apr", "avril", "abril"),
        ("may", "mai", "mayo"), ("june", "jun", "juni", "juin", "junio"),
        ("july", "jul", "juli", "juillet", "julio"), ("august", "aug", "août", "agosto"),
        ("september", "sep", "sept", "septembre", "septiembre"),
        ("october", "oct", "oktober", "octobre", "octubre"),
        ("november", "nov", "novembre", "noviembre"),
        ("december", "dec", "dezember", "décembre", "diciembre"),
    ], start=1) for name in names}
    PHRASE = re.compile(
        r"(?:until|back on|back|returning(?: on)?|return(?: on)?|bis(?: zum)?|ab dem|zurück am"
        r"|jusqu'au|jusqu’au|de retour le|retour le|hasta el|hasta|regreso el|vuelvo el)\s+"
        r"(?:(?:mon|tues|wednes|thurs|fri|satur|sun)day,?\s+|(?:montag|dienstag|mittwoch"
        r"|donnerstag|freitag),?\s+)?(?P<date>[^\n]{4,40})", re.IGNORECASE)
    ISO = re.compile(r"(\d{4})-(\d{1,2})-(\d{1,2})")
    DAY_FIRST = re.compile(r"(\d{1,2})[./](\d{1,2})[./](\d{2,4})")
    DAY_MONTH = re.compile(r"(\d{1,2})\.?\s+(?:de\s+)?([^\W\d_]+)\.?,?\s+(?:de\s+)?(\d{4})")
    MONTH_DAY = re.compile(r"([^\W\d_]+)\.?\s+(\d{1,2})(?:st|nd|rd|th)?,?\s+(\d{4})")


def classify(message: EmailMessage) -> Classification:
    """What ``message`` is (see Classification)."""
    if message.get_content_type() == "multipart/report" and (
            str(message.get_param("report-type", "")).lower() == "delivery-status"):
        if (bounce := _delivery_status(message)) is not None:
            return bounce
    if _auto_reply_header(message) or AutoReplySubjects.PATTERN.search(str(message["subject"] or "")):
        text = body_text(message)
        found = return_date(text)
        return Classification(EventType.AUTO_REPLIED,
                              {"return_date": found.isoformat()} if found else {})
    new_text = reply_text(message)
    words = new_text.split()
    if words and len(words) <= MAX_UNSUBSCRIBE_WORDS and UnsubscribeRequests.PATTERN.search(new_text):
        return Classification(EventType.UNSUBSCRIBED, {"reply_unsubscribe": True})
    return Classification(EventType.REPLIED)


def _auto_reply_header(message: Message) -> bool:
    submitted = str(message.get(AutoReplyHeaders.AUTO_SUBMITTED, "")).strip().lower()
    if submitted and submitted != "no":
        return True
    for name, values in AutoReplyHeaders.MARKERS.items():
        value = message.get(name)
        if value is not None and (values is None or str(value).strip().lower() in values):
            return True
    return False


def _delivery_status(message: EmailMessage) -> Classification | None:
    """The bounce a DSN reports: 5.x.x hard, 4.x.x soft; None when it states no status."""
    status = action = recipient = None
    returned = None
    for part in message.walk():
        kind = part.get_content_type()
        if kind == "message/delivery-status":
            for block in part.get_payload():
                status = status or block.get("status")
                action = action or block.get("action")
                recipient = recipient or block.get("final-recipient")
        elif kind in {"text/rfc822-headers", "message/rfc822"} and returned is None:
            payload = part.get_payload()
            if isinstance(payload, list) and payload:
                returned = payload[0]
            elif isinstance(payload, str):
                returned = HeaderParser().parsestr(payload)
    code = str(status or "").strip().split(" ")[0]
    if not re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", code) or code.startswith("2"):
        return None
    data = {"bounce_type": "hard" if code.startswith("5") else "soft", "status": code,
            "reason": f"{action or 'failed'} {code}".strip()}
    if recipient:
        data["recipient"] = str(recipient).split(";")[-1].strip()[:255]
    return Classification(EventType.BOUNCED, data, returned)


def body_text(message: EmailMessage) -> str:
    """The message's text: its text/plain part, else its HTML as text."""
    for preference in (("plain",), ("html",)):
        part = message.get_body(preferencelist=preference)
        if part is None:
            continue
        try:
            content = part.get_content()
        except (LookupError, UnicodeError, ValueError):
            content = (part.get_payload(decode=True) or b"").decode("utf-8", "replace")
        if not isinstance(content, str):
            continue
        content = content[:MAX_BODY_CHARS]
        return content if preference == ("plain",) else html_text.extract_text(content)
    return ""


def reply_text(message: EmailMessage) -> str:
    """What the writer wrote, without the quoted history."""
    text = body_text(message)[:MAX_REPLY_CHARS]
    if match := QuoteHeaders.PATTERN.search(text):
        text = text[:match.start()]
    return EmailReplyParser.parse_reply(text).strip()


def return_date(text: str) -> date | None:
    """The date an auto-reply says its writer is back, if one reads."""
    for found in ReturnDates.PHRASE.finditer(text[:20_000]):
        if (parsed := _date(found.group("date"))) is not None:
            return parsed
    return None


def _date(text: str) -> date | None:
    candidates = []
    if match := ReturnDates.ISO.search(text):
        candidates.append((int(match[1]), int(match[2]), int(match[3])))
    if match := ReturnDates.DAY_FIRST.search(text):
        year = int(match[3]) + (2000 if len(match[3]) == 2 else 0)
        candidates.append((year, int(match[2]), int(match[1])))
    if (match := ReturnDates.DAY_MONTH.search(text)) and match[2].lower() in ReturnDates.MONTHS:
        candidates.append((int(match[3]), ReturnDates.MONTHS[match[2].lower()], int(match[1])))
    if (match := ReturnDates.MONTH_DAY.search(text)) and match[1].lower() in ReturnDates.MONTHS:
        candidates.append((int(match[3]), ReturnDates.MONTHS[match[1].lower()], int(match[2])))
    for year, month, day in candidates:
        try:
            return date(year, month, day)
        except ValueError:
            continue
    return None
