"""Render and send one email: the domain behind the render and send actors.

Both steps are safe to run twice. Rendering stores the OutboundMessage under the
send action's dedupe key (a replay finds the row); sending claims the message
``rendered -> sending`` before calling SendGrid (a replay finds the claim taken).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from outreach_actors.domain import engine
from outreach_actors.domain.addresses import address_key
from outreach_actors.domain.metrics import count
from outreach_actors.domain.observability import tag
from outreach_actors.domain.rendering import RenderError, TemplateRenderer
from outreach_actors.domain.store import keys
from outreach_actors.domain.store.db import is_postgresql, prepare
from outreach_actors.domain.store.models import (
    Contact,
    Enrollment,
    OutboundMessage,
    ScheduledAction,
    SenderIdentity,
    Tenant,
    database_proxy,
    insert_statements,
    new_message_id,
    utcnow,
    write_transaction,
)
from outreach_actors.domain.stored_plans import plan_for_id
from outreach_actors.domain.suppressions import is_suppressed, suppressed_sql
from outreach_actors.domain.unsubscribe import unsubscribe_url
from outreach_actors.providers.sendgrid.client import OutgoingEmail, SendOutcome
from outreach_actors.settings import Settings, get_settings

logger = logging.getLogger(__name__)


class RetryableSendError(Exception):
    """SendGrid refused for now (429, 5xx, network): Dramatiq retries with backoff."""

    def __init__(self, message_id: str, outcome: SendOutcome) -> None:
        self.outcome = outcome
        super().__init__(
            f"send of message {message_id} will be retried: {outcome.status_code} {outcome.error}"
        )


@lru_cache(maxsize=8)
def renderer_for(templates_dir: Path) -> TemplateRenderer:
    return TemplateRenderer(templates_dir)


class _SendAction(NamedTuple):
    """What rendering needs of a send action, its enrollment, contact, tenant and plan."""

    action_id: int
    kind: str
    status: str
    dedupe_key: str
    node: str
    visit_version: int
    enrollment_id: int
    enrollment_status: str
    current_node: str
    enrollment_version: int
    plan_id: int
    tenant_id: str
    contact_email: str
    contact_fields: dict | None
    contact_timezone: str | None
    tenant_name: str
    plan_version: int
    tenant_rate_limits: str | None  # the tenant's rate-limit overrides, as stored
    sender_email: str | None  # the tenant's first sender, verified ones first
    sender_name: str | None
    sender_rate_limits: str | None


# Fixed SQL, not Peewee queries, for the statements that every email runs (the
# render's read and write, the send's rate-limit read, claim and write): Peewee spent
# 0.07 to 1.9 ms of CPU building each of them, more than the database takes to run
# them, and the email path is CPU-bound. Plain SQL that SQLite and PostgreSQL both
# accept, ``{p}`` standing for the database's placeholder; the tests run it on both
# (tests/test_delivery_statements.py also pins the statement count per email).
_STATEMENTS: dict[tuple[str, str], str] = {}


def _statement(template: str, *, prepared: bool = True) -> str:
    """``template`` for the bound database (its placeholder style), built once, and
    run as a prepared statement where the database prepares (see db.py), unless not
    ``prepared``."""
    database = database_proxy.obj
    key = (template, database.param)
    statement = _STATEMENTS.get(key)
    if statement is None:
        statement = _STATEMENTS[key] = template.strip().replace("{p}", database.param)
    return prepare(database, statement) if prepared else statement

# The send actions, each with its enrollment, contact, tenant and plan version, and
# the tenant's first sender identity (verified ones first), as _SendAction; with the
# rate-limit overrides of both, which the send order carries (see send_order). The
# sender is looked up once and joined by id. Unprepared (SQLite, or PostgreSQL
# behind PgBouncer), PostgreSQL plans this in 0.43 ms and runs it in 0.07 ms; the
# form before it, with the tenant and each of the sender's columns as a scalar
# subquery of its own, took 0.45 and 0.12 ms (EXPLAIN ANALYZE, medians over 300
# send actions of the benchmark database). ``{ids}`` stands for the batch's ids (see
# _ids_condition).
_LOAD_SEND_ACTIONS = """
SELECT a.id, a.kind, a.status, a.dedupe_key, a.node, a.visit_version, a.enrollment_id,
       e.status, e.current_node, e.version, e.plan_id, e.tenant_id,
       c.email, c.fields, c.timezone,
       t.name, (SELECT p.version FROM plan AS p WHERE p.id = e.plan_id), t.rate_limits,
       s.email, s.name, s.rate_limits
FROM scheduled_action AS a
JOIN enrollment AS e ON e.id = a.enrollment_id
JOIN contact AS c ON c.id = e.contact_id
JOIN tenant AS t ON t.id = e.tenant_id
LEFT JOIN sender_identity AS s ON s.id = (
    SELECT f.id FROM sender_identity AS f WHERE f.tenant_id = e.tenant_id
    ORDER BY f.verified DESC, f.id LIMIT 1)
WHERE a.id {ids}
"""


# The rendered messages, as OutboundMessage.insert would write them (the columns left
# out are null until the send); ``{rows}`` stands for one ``(...)`` of placeholders
# per message. A message whose dedupe key is taken (another render of its action
# stored it first) is left out, and RETURNING says which actions were stored.
_MESSAGE_COLUMNS = """outbound_message (id, tenant_id, enrollment_id, action_id, node, dedupe_key,
    status, to_email, from_email, from_name, subject, html, text, categories, headers, attempts,
    created_at)"""
_MESSAGE_ROW = "(" + ", ".join(["{p}"] * 17) + ")"
_MESSAGE_KEY_COLUMN = 5  # dedupe_key, in the order of _MESSAGE_COLUMNS
_INSERT_MESSAGES = ("INSERT INTO " + _MESSAGE_COLUMNS + " VALUES {rows} "
                    "ON CONFLICT (dedupe_key) DO NOTHING RETURNING action_id")

# A send action marked done with its message, as ScheduledAction.finish would.
_FINISH_RENDERED = """
UPDATE scheduled_action SET status = {p}, result = {p}, finished_at = {p}, message_id = {p}
WHERE id = {p}
"""

# On PostgreSQL the messages and their actions in one autocommitted statement (a
# data-modifying CTE, which SQLite lacks), whatever the batch's size: one round trip
# and one commit instead of a transaction per email. Measured one email at a time
# (benchmarks/inprocess.py), the CTE took an email from 2.9 to 2.3 ms of CPU and 5.1
# to 4.3 ms of wall time, against BEGIN, INSERT, UPDATE, COMMIT.
_RENDER_IN_ONE = (
    "WITH m AS (INSERT INTO " + _MESSAGE_COLUMNS + " VALUES {rows} "
    "ON CONFLICT (dedupe_key) DO NOTHING RETURNING id, action_id) "
    "UPDATE scheduled_action SET status = {p}, result = {p}, finished_at = {p}, "
    "message_id = m.id FROM m WHERE scheduled_action.id = m.action_id "
    "RETURNING scheduled_action.id"
)

# The message marked sent; on PostgreSQL the node's timers are inserted by the same
# statement (``WITH sent AS (this) INSERT ...``), for the reasons above.
_MARK_SENT = """
UPDATE outbound_message SET status = {p}, sent_at = {p}, error = NULL, provider_message_id = {p}
WHERE id = {p}
"""


def _one_statement_writes() -> bool:
    """Whether the bound database runs data-modifying CTEs (PostgreSQL; SQLite does not)."""
    return is_postgresql(database_proxy.obj)


def _ids_condition(action_ids: Sequence[int]) -> tuple[str, list]:
    """``{ids}`` of _LOAD_SEND_ACTIONS for ``action_ids``, and its parameters: on
    PostgreSQL one array parameter, so that one prepared statement serves every batch
    size; on SQLite, which has no arrays, a placeholder per id."""
    if is_postgresql(database_proxy.obj):
        return "= ANY({p})", [list(action_ids)]
    return "IN (" + ", ".join(["{p}"] * len(action_ids)) + ")", list(action_ids)


def _load_send_actions(action_ids: Sequence[int]) -> dict[int, _SendAction]:
    """One statement: each action joined to everything its email needs, narrow columns
    only, and the tenant's first sender (what a plan without ``sender`` mails from);
    by action id, and without the ids that are no action."""
    condition, params = _ids_condition(action_ids)
    rows = database_proxy.execute_sql(
        _statement(_LOAD_SEND_ACTIONS.replace("{ids}", condition)), params).fetchall()
    return {facts.action_id: facts._replace(
                contact_fields=Contact.fields.python_value(facts.contact_fields))
            for facts in map(_SendAction._make, rows)}


def _sender_for(facts: _SendAction,
                plan_sender: str | None) -> tuple[str, str, dict | None] | None:
    """(email, name, rate-limit overrides) of the identity the email goes out from:
    the plan's sender, or the tenant's first one (verified first); None if there is
    none."""
    if facts.sender_email is None:
        return None  # the tenant has no sender at all
    if not plan_sender or facts.sender_email == plan_sender.lower():
        return (facts.sender_email, facts.sender_name,
                SenderIdentity.rate_limits.python_value(facts.sender_rate_limits))
    row = (
        SenderIdentity.select(SenderIdentity.email, SenderIdentity.name,
                              SenderIdentity.rate_limits)
        .where(SenderIdentity.tenant == facts.tenant_id,
               SenderIdentity.email == plan_sender.lower())
        .tuples()
        .first()
    )
    return row


def _message_id_for(message_key: str) -> str | None:
    return (
        OutboundMessage.select(OutboundMessage.id)
        .where(OutboundMessage.dedupe_key == message_key)
        .scalar()
    )


_FINISHED = frozenset({ScheduledAction.CANCELLED, ScheduledAction.SKIPPED, ScheduledAction.DONE,
                       ScheduledAction.FAILED})


# --- the send order: what a render hands its send -----------------------------------

# How long the rate-limit facts read by a render serve its send. A send follows its
# render within a second or so; one that waited longer (a backlog, a rate-limit
# deferral, a retry) reads them again, so that a changed override reaches it.
SEND_ORDER_FRESH_FOR = timedelta(seconds=30)


class SendScope(NamedTuple):
    """Whom one send counts against: what its rate limits are built from."""

    tenant: str
    sender: str
    recipient_domain: str
    tenant_overrides: dict
    sender_overrides: dict

    @classmethod
    def of(cls, tenant: str, sender: str, to_email: str, tenant_overrides: dict | None,
           sender_overrides: dict | None) -> SendScope:
        """The scope of a send from ``sender`` to ``to_email`` (overrides decoded;
        None for none)."""
        return cls(tenant, sender, to_email.rsplit("@", 1)[-1], tenant_overrides or {},
                   sender_overrides or {})


def send_order(message_id: str, scope: SendScope, rendered_at: datetime) -> dict:
    """What a render hands its send: the message id and whom the send counts
    against, so that the send's rate limits need no read of their own (the render
    read it all already). JSON, as it travels in a broker message."""
    return {"message_id": message_id, "scope": scope._asdict(),
            "rendered_at": rendered_at.isoformat()}


def order_message_id(order: dict | str | None) -> str | None:
    """The message id of a send order; a bare message id (what the reconciler enqueues,
    and earlier versions piped) is its own."""
    return order.get("message_id") if isinstance(order, dict) else order


# The message's status, tenant, sender and recipient, and the rate-limit overrides
# of its tenant and (when it is one) its sender identity: scalar subqueries rather
# than joins, which PostgreSQL plans in 0.04 ms, not 0.09.
_SEND_SCOPE = """
SELECT m.status, m.tenant_id, m.from_email, m.to_email,
    (SELECT t.rate_limits FROM tenant AS t WHERE t.id = m.tenant_id),
    (SELECT s.rate_limits FROM sender_identity AS s
     WHERE s.tenant_id = m.tenant_id AND s.email = m.from_email)
FROM outbound_message AS m
WHERE m.id = {p}
"""


def send_scope(order: dict | str | None, *, now: datetime | None = None) -> SendScope | None:
    """Whom the send of ``order`` counts against; None when nothing will be sent.

    A fresh order (rendered less than SEND_ORDER_FRESH_FOR ago) says so itself.
    Otherwise one narrow read of the message, which also finds a message that is no
    longer ``rendered``: nothing will be sent, so the send takes no slot. (A fresh
    order's message is not looked at: a duplicate of its send, were it to get past
    the idempotency lease, would take one slot and then find the claim taken.)
    """
    if isinstance(order, dict):
        scope = _fresh_scope(order, now or utcnow())
        if scope is not None:
            return scope
    message_id = order_message_id(order)
    if message_id is None:
        return None
    row = database_proxy.execute_sql(_statement(_SEND_SCOPE), (message_id,)).fetchone()
    if row is None or row[0] != OutboundMessage.RENDERED:
        return None
    _, tenant_id, from_email, to_email, tenant_overrides, sender_overrides = row
    return SendScope.of(tenant_id, from_email, to_email,
                        Tenant.rate_limits.python_value(tenant_overrides),
                        SenderIdentity.rate_limits.python_value(sender_overrides))


def _fresh_scope(order: dict, now: datetime) -> SendScope | None:
    """The scope an order carries, if it is fresh and well formed (else None: read it)."""
    try:
        scope = SendScope(**order["scope"])
        # A clock behind the render's (another host) counts as fresh for as long.
        age = abs(now - datetime.fromisoformat(order["rendered_at"]))
    except (KeyError, TypeError, ValueError):
        return None  # not an order this version wrote: read the message instead
    return scope if age < SEND_ORDER_FRESH_FOR else None


# --- render ----------------------------------------------------------------------------

def render_action(action_id: int, *, settings: Settings | None = None,
                  now: datetime | None = None) -> str | None:
    """Render the email of a send action and store it; returns the message id to send
    (see render_for_send)."""
    return order_message_id(render_for_send(action_id, settings=settings, now=now))


def render_for_send(action_id: int, *, settings: Settings | None = None,
                    now: datetime | None = None) -> dict | str | None:
    """Render the email of a send action and store it; returns what to send: the send
    order of the new message (see send_order), or the id of the message an earlier
    render stored.

    Returns None when there is nothing to send: the action was cancelled, or the
    enrollment left the node before the action ran. A batch of one (see
    render_for_send_many), whose error is raised.
    """
    batch = render_for_send_many([action_id], settings=settings, now=now)
    if action_id in batch.raised:
        raise batch.raised[action_id]
    return batch.orders[action_id]


@dataclass(frozen=True)
class RenderedBatch:
    """What render_for_send_many did with each action of a batch."""

    #: What to send for each action, in the batch's order: as render_for_send returns.
    orders: dict[int, dict | str | None]
    #: The actions whose render raised (not a RenderError, which fails the send as
    #: the README says, but a fault), each with its error; nothing of theirs is stored.
    raised: dict[int, Exception]


class _Rendered(NamedTuple):
    """An email rendered, not yet stored: its row (_MESSAGE_COLUMNS) and its send order."""

    row: tuple
    order: dict


def render_for_send_many(action_ids: Sequence[int], *, settings: Settings | None = None,
                         now: datetime | None = None) -> RenderedBatch:
    """Render the emails of send actions and store them (see render_for_send).

    In the usual case one joined read for the whole batch, then one write of every
    message with its action marked done: one statement on PostgreSQL, a transaction
    on SQLite. The message of an earlier render is looked for only when an action has
    finished (its message is stored atomically with the finish) or when the write
    finds it there (two renders of the action raced). An action whose render raises is
    left out of the write and reported, so that one contact's fault does not hold
    back the others.
    """
    settings = settings or get_settings()
    now = now or utcnow()
    action_ids = list(dict.fromkeys(action_ids))
    facts = _load_send_actions(action_ids) if action_ids else {}
    orders: dict[int, dict | str | None] = {}
    raised: dict[int, Exception] = {}
    rendered: dict[int, _Rendered] = {}
    for action_id in action_ids:
        try:
            outcome = _render_one(action_id, facts.get(action_id), settings, now)
        except Exception as exc:  # reported to the caller, which decides
            raised[action_id] = exc
            continue
        if isinstance(outcome, _Rendered):
            rendered[action_id] = outcome
        else:
            orders[action_id] = outcome
    orders.update(_store_rendered(rendered, now))
    return RenderedBatch({action_id: orders[action_id] for action_id in action_ids
                          if action_id in orders}, raised)


def _render_one(action_id: int, facts: _SendAction | None, settings: Settings,
                now: datetime) -> _Rendered | str | None:
    """The email of one send action, rendered; or, when there is nothing new to store,
    what render_for_send returns for it (an earlier render's message id, or None)."""
    if facts is None or facts.kind != ScheduledAction.SEND:
        logger.warning("Render of action=%s skipped: no such send action", action_id)
        return None
    message_key = keys.message_key(facts.dedupe_key)
    if facts.status in _FINISHED:
        existing = _message_id_for(message_key)
        if existing is not None:
            logger.info("Render of action=%s is a replay; message=%s exists", action_id, existing)
            return existing
        logger.info("Render of action=%s skipped: action is %s", action_id, facts.status)
        return None
    if (facts.enrollment_status != Enrollment.ACTIVE or facts.current_node != facts.node
            or facts.enrollment_version != facts.visit_version):
        ScheduledAction.finish(action_id, ScheduledAction.SKIPPED, "enrollment moved on", now=now)
        return None

    plan = plan_for_id(facts.plan_id)
    tag(action=action_id, enrollment=facts.enrollment_id, tenant=facts.tenant_id, plan=plan.name,
        node=facts.node)
    node = plan.node(facts.node)
    sender = _sender_for(facts, plan.sender)
    if sender is None:
        problem = (
            f"tenant {facts.tenant_id!r} has no sender identity"
            + (f" {plan.sender!r}" if plan.sender else "")
            + "; add one with `outreach sender add EMAIL --tenant TENANT --verified`"
        )
        _fail_render(action_id, facts.enrollment_id, problem, now)
        return None
    sender_email, sender_name, sender_overrides = sender

    message_id = new_message_id()
    unsubscribe = unsubscribe_url(settings, facts.tenant_id, facts.contact_email, message_id)
    context = email_context(
        fields=facts.contact_fields, email=facts.contact_email, timezone=facts.contact_timezone,
        tenant_id=facts.tenant_id, tenant_name=facts.tenant_name, plan_name=plan.name,
        plan_version=facts.plan_version, node=facts.node, unsubscribe=unsubscribe)
    try:
        rendered = renderer_for(Path(settings.templates_dir)).render_email(
            subject=node.subject or "", template=node.template, body=node.body, context=context,
        )
    except RenderError as exc:
        _fail_render(action_id, facts.enrollment_id, str(exc), now)
        return None
    if problem := _unstorable(rendered.subject, rendered.html, rendered.text):
        _fail_render(action_id, facts.enrollment_id, f"node {facts.node!r}: {problem}", now)
        return None

    row = (
        message_id, facts.tenant_id, facts.enrollment_id, action_id, facts.node,
        message_key, OutboundMessage.RENDERED, facts.contact_email, sender_email,
        sender_name or "", rendered.subject, rendered.html, rendered.text,
        OutboundMessage.categories.db_value(plan.categories_of(facts.node)),
        OutboundMessage.headers.db_value({
            "List-Unsubscribe": f"<{unsubscribe}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        }),
        0, now,
    )
    return _Rendered(row, send_order(message_id, SendScope.of(
        facts.tenant_id, sender_email, facts.contact_email,
        Tenant.rate_limits.python_value(facts.tenant_rate_limits), sender_overrides,
    ), now))


def _store_rendered(rendered: dict[int, _Rendered],
                    now: datetime) -> dict[int, dict | str | None]:
    """Store rendered messages, each action marked done with its message; returns what
    to send for each action: its send order, or the message another render of the
    action stored first."""
    if not rendered:
        return {}
    rows = ", ".join([_MESSAGE_ROW] * len(rendered))
    params = [value for email in rendered.values() for value in email.row]
    if _one_statement_writes():
        # Prepared for one email (a trickle of sends, the single render): a text per
        # batch size would keep a plan of some 8 kB a row in every connection, and a
        # batch shares its one parse and plan anyway.
        stored = {action_id for (action_id,) in database_proxy.execute_sql(
            _statement(_RENDER_IN_ONE.replace("{rows}", rows), prepared=len(rendered) == 1),
            [*params, ScheduledAction.DONE, "rendered", now]).fetchall()}
    else:
        with database_proxy.atomic():
            stored = {action_id for (action_id,) in database_proxy.execute_sql(
                _statement(_INSERT_MESSAGES.replace("{rows}", rows)), params).fetchall()}
            for action_id in stored:
                database_proxy.execute_sql(_statement(_FINISH_RENDERED), (
                    ScheduledAction.DONE, "rendered", now,
                    order_message_id(rendered[action_id].order), action_id))
    outcomes: dict[int, dict | str | None] = {}
    for action_id, email in rendered.items():
        if action_id in stored:
            # At debug: the send logs each email's outcome once, at info, by message id.
            logger.debug("Rendered message=%s action=%s", order_message_id(email.order), action_id)
            outcomes[action_id] = email.order
        else:
            # Two renders of the action raced: the other one stored its message first.
            outcomes[action_id] = _message_id_for(email.row[_MESSAGE_KEY_COLUMN])
    return outcomes


def email_context(*, fields: dict | None, email: str, timezone: str | None, tenant_id: str,
                  tenant_name: str | None, plan_name: str, plan_version: int, node: str,
                  unsubscribe: str) -> dict:
    """What a template sees (README, "Templates"); the send's and the preview's."""
    return {
        "contact": {**(fields or {}), "email": email, "timezone": timezone},
        "tenant": {"id": tenant_id, "name": tenant_name or tenant_id},
        "plan": {"name": plan_name, "version": plan_version},
        "node": {"name": node},
        "unsubscribe_url": unsubscribe,
    }


def _unstorable(*texts: str) -> str | None:
    """Why rendered text cannot be stored or sent, if it cannot: a contact field may
    carry a NUL (PostgreSQL refuses it) or a lone surrogate (not encodable as UTF-8)."""
    for text in texts:
        if "\x00" in text:
            return "the rendered email contains a NUL character (from a contact field?)"
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return "the rendered email contains text that is not valid Unicode (from a contact field?)"
    return None


def _fail_render(action_id: int, enrollment_id: int, problem: str, now: datetime) -> None:
    logger.error("Render of action=%s failed: %s", action_id, problem)
    # Together or not at all: an action marked failed with its enrollment left active
    # (the second write refused, "database is locked" on SQLite) would stay so, as the
    # retry finds the action finished.
    with write_transaction():
        ScheduledAction.finish(action_id, ScheduledAction.FAILED, problem, now=now)
        engine.exit_enrollment(enrollment_id, "send_failed", now=now)


@dataclass(frozen=True)
class SendResult:
    """What happened to one send attempt, for logs, metrics and tests."""

    message_id: str
    status: str  # the message's status afterwards, or "replay"
    detail: str = ""


def claim_for_sending(message_id: str, now: datetime) -> bool:
    """``rendered -> sending``; True if this call took the claim."""
    return _claim(message_id, now) is not None


class _Claimed(NamedTuple):
    """A message just claimed for sending, and what decides whether it may go out."""

    tenant_id: str
    enrollment_id: int | None
    action_id: int | None
    node: str | None
    to_email: str
    from_email: str
    from_name: str
    subject: str
    html: str
    text: str
    categories: list | None
    headers: dict | None
    enrollment_status: str | None  # None: the message has no enrollment
    current_node: str | None
    plan_id: int | None
    action_node: str | None
    visit_version: int | None
    suppressed: bool  # whether an email-channel suppression of to_email exists
    sender_verified: bool | None  # None: from_email is no sender identity of the tenant


# The claim ``rendered -> sending``, returning the message and, read in the same
# statement, whatever decides if it may go out: the enrollment's state, the
# suppression list, the sender identity (see _Claimed; fixed SQL as above).
_SUPPRESSED, _SUPPRESSED_PARAMS = suppressed_sql(
    "outbound_message.tenant_id", "outbound_message.to_email", "{p}")
_CLAIM = """
UPDATE outbound_message SET status = {p}, send_started_at = {p}, attempts = attempts + 1, error = NULL
WHERE id = {p} AND status = {p}
RETURNING tenant_id, enrollment_id, action_id, node, to_email, from_email, from_name,
    subject, html, text, categories, headers,
    (SELECT e.status FROM enrollment AS e WHERE e.id = outbound_message.enrollment_id),
    (SELECT e.current_node FROM enrollment AS e WHERE e.id = outbound_message.enrollment_id),
    (SELECT e.plan_id FROM enrollment AS e WHERE e.id = outbound_message.enrollment_id),
    (SELECT a.node FROM scheduled_action AS a WHERE a.id = outbound_message.action_id),
    (SELECT a.visit_version FROM scheduled_action AS a WHERE a.id = outbound_message.action_id),
    """ + _SUPPRESSED + """,
    (SELECT s.verified FROM sender_identity AS s
     WHERE s.tenant_id = outbound_message.tenant_id AND s.email = outbound_message.from_email)
"""


def _claim(message_id: str, now: datetime) -> _Claimed | None:
    """``rendered -> sending`` in one statement that also returns the message and the
    checks made before the provider call: the enrollment's state, the suppression
    list and the sender identity, each read as the claim is taken."""
    row = database_proxy.execute_sql(
        _statement(_CLAIM),
        (OutboundMessage.SENDING, now, message_id, OutboundMessage.RENDERED, *_SUPPRESSED_PARAMS),
    ).fetchone()
    if row is None:
        return None
    claimed = _Claimed(*row)
    return claimed._replace(
        categories=OutboundMessage.categories.python_value(claimed.categories),
        headers=OutboundMessage.headers.python_value(claimed.headers),
        suppressed=bool(claimed.suppressed),
        sender_verified=None if claimed.sender_verified is None else bool(claimed.sender_verified),
    )


def _mark_sent(message_id: str, provider_message_id: str | None, timers: list[dict],
               now: datetime) -> None:
    """The message marked sent and its node's ``timers`` inserted (existing ones left
    alone), atomically: one statement on PostgreSQL, a transaction on SQLite."""
    mark = (_statement(_MARK_SENT), [OutboundMessage.SENT, now, provider_message_id, message_id])
    inserts = list(insert_statements(ScheduledAction, timers, ignore_conflicts=True))
    if not inserts:
        database_proxy.execute_sql(*mark)
    elif _one_statement_writes() and len(inserts) == 1:
        (insert, params), = inserts
        # As many texts as a node has distinct timer counts: few, so prepared too.
        sent_and_timers = prepare(database_proxy.obj, f"WITH sent AS ({mark[0]}) {insert}")
        database_proxy.execute_sql(sent_and_timers, [*mark[1], *params])
    else:
        with database_proxy.atomic():
            database_proxy.execute_sql(*mark)
            for insert, params in inserts:
                database_proxy.execute_sql(insert, params)


def _set_status(message_id: str, status: str, **values) -> None:
    OutboundMessage.update(status=status, **values).where(OutboundMessage.id == message_id).execute()


def send_message(message_id: str, client, *, now: datetime | None = None,
                 final_attempt: bool = False) -> SendResult:
    """Send one message and count its outcome (see _send_message)."""
    try:
        result = _send_message(message_id, client, now=now, final_attempt=final_attempt)
    except RetryableSendError:
        count("outreach_emails_total", outcome="retry")
        raise
    if result.status != "replay":
        count("outreach_emails_total", outcome=result.status)
    return result


def _send_message(message_id: str, client, *, now: datetime | None = None,
                  final_attempt: bool = False) -> SendResult:
    """Send one rendered message through ``client`` (a SendGridClient) exactly once.

    Raises RetryableSendError for 429/5xx/network failures (the message goes back to
    ``rendered`` so the retry can claim it), unless ``final_attempt``, when it is
    recorded as failed instead.

    In the usual case the claim, which also returns the row and the checks, before
    the provider call; after a 202, the message marked sent and the node's timers:
    one statement on PostgreSQL, a transaction of two on SQLite (see _mark_sent).
    """
    now = now or utcnow()
    claimed = _claim(message_id, now)
    if claimed is None:
        state = (
            OutboundMessage.select(OutboundMessage.status)
            .where(OutboundMessage.id == message_id)
            .scalar()
        ) or "missing"
        logger.info("Send of message=%s skipped: already %s", message_id, state)
        return SendResult(message_id, "replay", state)
    tag(message=message_id, tenant=claimed.tenant_id, node=claimed.node,
        enrollment=claimed.enrollment_id, action=claimed.action_id,
        plan=(lambda: plan_for_id(claimed.plan_id).name) if claimed.plan_id else None)
    if claimed.enrollment_status is not None and (
        claimed.enrollment_status != Enrollment.ACTIVE or claimed.current_node != claimed.node
    ):
        _set_status(message_id, OutboundMessage.CANCELLED, error="enrollment moved on before sending")
        return SendResult(message_id, OutboundMessage.CANCELLED, "enrollment moved on")
    # Suppressions win: checked again right before the provider call, by the claim
    # itself (an address stored other than normalized is looked up on its own).
    suppressed = (
        claimed.suppressed if claimed.to_email == address_key(claimed.to_email)
        else is_suppressed(claimed.tenant_id, claimed.to_email)
    )
    if suppressed:
        with write_transaction():  # together, as in _fail
            _set_status(message_id, OutboundMessage.SUPPRESSED, error="address is suppressed")
            if claimed.enrollment_id is not None:
                engine.exit_enrollment(claimed.enrollment_id, "suppressed", now=now)
        logger.info("Send of message=%s skipped: recipient suppressed", message_id)
        return SendResult(message_id, OutboundMessage.SUPPRESSED)
    if not claimed.sender_verified:
        return _fail(message_id, claimed.enrollment_id,
                     f"sender {claimed.from_email} is not a verified sender identity", now)

    outcome = client.send(
        OutgoingEmail(
            message_id=message_id, tenant=claimed.tenant_id, to_email=claimed.to_email,
            from_email=claimed.from_email, from_name=claimed.from_name, subject=claimed.subject,
            html=claimed.html, text=claimed.text, categories=list(claimed.categories or []),
            headers=dict(claimed.headers or {}),
            custom_args={"outreach_message_id": message_id, "outreach_tenant": claimed.tenant_id},
        )
    )
    if outcome.kind == "sent":
        # The timers engine.after_send would insert; the action's node and visit and
        # the enrollment's plan were returned by the claim.
        timers = engine.timers_after_send(
            message_id, claimed.enrollment_id, claimed.action_id, now, node=claimed.action_node,
            visit_version=claimed.visit_version, plan_id=claimed.plan_id)
        _mark_sent(message_id, outcome.provider_message_id, timers, now)
        logger.info("Sent message=%s provider_id=%s", message_id, outcome.provider_message_id)
        return SendResult(message_id, OutboundMessage.SENT)
    if outcome.kind == "ambiguous":
        _set_status(message_id, OutboundMessage.AMBIGUOUS, error=outcome.error)
        logger.warning("Send of message=%s is ambiguous: %s", message_id, outcome.error)
        return SendResult(message_id, OutboundMessage.AMBIGUOUS, outcome.error or "")
    if outcome.kind == "retry" and not final_attempt:
        _set_status(message_id, OutboundMessage.RENDERED, error=outcome.error)
        raise RetryableSendError(message_id, outcome)
    return _fail(message_id, claimed.enrollment_id,
                 f"{outcome.status_code or ''} {outcome.error or ''}".strip(), now)


def _fail(message_id: str, enrollment_id: int | None, problem: str, now: datetime) -> SendResult:
    # Together or not at all (see _fail_render): a retry finds the claim taken.
    with write_transaction():
        _set_status(message_id, OutboundMessage.FAILED, error=problem)
        if enrollment_id is not None:
            engine.exit_enrollment(enrollment_id, "send_failed", now=now)
    logger.error("Send of message=%s failed permanently: %s", message_id, problem)
    return SendResult(message_id, OutboundMessage.FAILED, problem)
