"""Render the email of a send action and store it, once: the domain behind the render
actors. A replay finds the message stored under the action's dedupe key."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

from outreach_actors.domain import control, engine
from outreach_actors.domain.mail.outgoing import REPLY_TO_HEADER
from outreach_actors.domain.mail.reply_address import reply_address
from outreach_actors.domain.mail.send_order import SendScope, make_send_order, order_message_id
from outreach_actors.domain.mail.threading import (
    MESSAGE_ID_HEADER,
    our_message_id,
    previous_email,
    reply_subject,
    thread_headers,
)
from outreach_actors.domain.observability import tag
from outreach_actors.domain.plans import PlanSpec
from outreach_actors.domain.rendering import (
    IsolatedRenderer,
    RenderedEmail,
    RenderError,
    RenderLimits,
)
from outreach_actors.domain.store import keys
from outreach_actors.domain.store.models import (
    Contact,
    Enrollment,
    OutboundMessage,
    ScheduledAction,
    SenderIdentity,
    Tenant,
    database_proxy,
    new_message_id,
    utcnow,
    write_transaction,
)
from outreach_actors.domain.store.statements import ids_condition, one_statement_writes, statement
from outreach_actors.domain.stored_plans import plan_for_id
from outreach_actors.domain.unsubscribe import unsubscribe_url
from outreach_actors.settings import Settings, get_settings

logger = logging.getLogger(__name__)


def renderer_for(templates_dir: str | Path, settings: Settings | None = None) -> IsolatedRenderer:
    """The renderer of the templates in ``templates_dir``: each render and check runs in
    a render process, held to the settings' limits (see rendering.isolation)."""
    limits = RenderLimits.from_settings(settings or get_settings())
    # Found by the directory as given (and the current one, if it is relative), not
    # resolved: the renderer resolves it once, when it is made; resolving (a system
    # call per part of the path) at every render cost more than the rest of finding it.
    relative_to = None if os.path.isabs(templates_dir) else os.getcwd()
    return _renderer(os.fspath(templates_dir), relative_to, limits)


@lru_cache(maxsize=8)
def _renderer(templates_dir: str, relative_to: str | None, limits: RenderLimits) -> IsolatedRenderer:
    return IsolatedRenderer(Path(relative_to or "", templates_dir), limits)


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
    sender_first_sent_at: object  # the sender's first send (see sending_days), as stored


# The send actions, each with its enrollment, contact, tenant and plan version, and
# the tenant's first sender identity (verified ones first), as _SendAction; with the
# rate-limit overrides of both, which the send order carries (see send_order). The
# sender is looked up once and joined by id, not column by column in subqueries,
# which PostgreSQL runs slower. ``{ids}`` stands for the batch's ids (see
# statements.ids_condition).
_LOAD_SEND_ACTIONS = """
SELECT a.id, a.kind, a.status, a.dedupe_key, a.node, a.visit_version, a.enrollment_id,
       e.status, e.current_node, e.version, e.plan_id, e.tenant_id,
       c.email, c.fields, c.timezone,
       t.name, (SELECT p.version FROM plan AS p WHERE p.id = e.plan_id), t.rate_limits,
       s.email, s.name, s.rate_limits, s.first_sent_at
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
# and one commit instead of a transaction per email (BEGIN, INSERT, UPDATE, COMMIT).
_RENDER_IN_ONE = (
    "WITH m AS (INSERT INTO " + _MESSAGE_COLUMNS + " VALUES {rows} "
    "ON CONFLICT (dedupe_key) DO NOTHING RETURNING id, action_id) "
    "UPDATE scheduled_action SET status = {p}, result = {p}, finished_at = {p}, "
    "message_id = m.id FROM m WHERE scheduled_action.id = m.action_id "
    "RETURNING scheduled_action.id"
)

def _load_send_actions(action_ids: Sequence[int]) -> dict[int, _SendAction]:
    """One statement: each action joined to everything its email needs, narrow columns
    only, and the tenant's first sender (what a plan without ``sender`` mails from);
    by action id, and without the ids that are no action."""
    condition, params = ids_condition(action_ids)
    rows = database_proxy.execute_sql(
        statement(_LOAD_SEND_ACTIONS.replace("{ids}", condition)), params).fetchall()
    return {facts.action_id: facts._replace(
                contact_fields=Contact.fields.python_value(facts.contact_fields))
            for facts in map(_SendAction._make, rows)}


def _sender_for(facts: _SendAction,
                plan_sender: str | None) -> tuple[str, str, dict | None, object] | None:
    """(email, name, rate-limit overrides, first send) of the identity the email goes
    out from: the plan's sender, or the tenant's first one (verified first); None if
    there is none."""
    if facts.sender_email is None:
        return None  # the tenant has no sender at all
    if not plan_sender or facts.sender_email == plan_sender.lower():
        return (facts.sender_email, facts.sender_name,
                SenderIdentity.rate_limits.python_value(facts.sender_rate_limits),
                SenderIdentity.first_sent_at.python_value(facts.sender_first_sent_at))
    row = (
        SenderIdentity.select(SenderIdentity.email, SenderIdentity.name,
                              SenderIdentity.rate_limits, SenderIdentity.first_sent_at)
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
    #: The actions not rendered for lack of time (see render_for_send_many's budget),
    #: in the batch's order; nothing of theirs is stored.
    deferred: list[int] = field(default_factory=list)


class _Rendered(NamedTuple):
    """An email rendered, not yet stored: its row (_MESSAGE_COLUMNS) and its send order."""

    row: tuple
    order: dict


def render_for_send_many(action_ids: Sequence[int], *, settings: Settings | None = None,
                         now: datetime | None = None,
                         budget_seconds: float | None = None) -> RenderedBatch:
    """Render the emails of send actions and store them (see render_for_send).

    In the usual case one joined read for the whole batch, then one write of every
    message with its action marked done: one statement on PostgreSQL, a transaction
    on SQLite. The message of an earlier render is looked for only when an action has
    finished (its message is stored atomically with the finish) or when the write
    finds it there (two renders of the action raced). An action whose render raises is
    left out of the write and reported, so that one contact's fault does not hold
    back the others. With ``budget_seconds``, the renders that would start after that
    long are left for another call (RenderedBatch.deferred; see render_emails).
    """
    settings = settings or get_settings()
    now = now or utcnow()
    action_ids = list(dict.fromkeys(action_ids))
    facts = _load_send_actions(action_ids) if action_ids else {}
    orders: dict[int, dict | str | None] = {}
    raised: dict[int, Exception] = {}
    rendered: dict[int, _Rendered] = {}
    pending: dict[int, _Pending] = {}
    for action_id in action_ids:
        try:
            prepared = _prepare_one(action_id, facts.get(action_id), settings, now)
        except Exception as exc:  # reported to the caller, which decides
            raised[action_id] = exc
            continue
        if isinstance(prepared, _Pending):
            pending[action_id] = prepared
        else:
            orders[action_id] = prepared
    # The batch's emails go to a render process together (see IsolatedRenderer.render_emails).
    try:
        emails = renderer_for(settings.templates_dir, settings).render_emails(
            [prepared.email for prepared in pending.values()],
            budget_seconds=budget_seconds) if pending else []
    except Exception as exc:  # render processes could not be had: each action alone
        raised.update(dict.fromkeys(pending, exc))
        pending, emails = {}, []
    deferred = list(pending)[len(emails):]
    for (action_id, prepared), email in zip(pending.items(), emails, strict=False):
        try:
            outcome = _finish_one(prepared, email, now)
        except Exception as exc:
            raised[action_id] = exc
            continue
        if outcome is None:
            orders[action_id] = None
        else:
            rendered[action_id] = outcome
    orders.update(_store_rendered(rendered, now))
    return RenderedBatch({action_id: orders[action_id] for action_id in action_ids
                          if action_id in orders}, raised, deferred)


class _Pending(NamedTuple):
    """A send action's email ready to render: render_email's keywords, and what its row
    and send order are made of besides."""

    action_id: int
    facts: _SendAction
    plan: PlanSpec
    message_id: str
    sender: tuple
    unsubscribe: str
    identity: dict
    previous: OutboundMessage | None
    email: dict


def _prepare_one(action_id: int, facts: _SendAction | None, settings: Settings,
                 now: datetime) -> _Pending | str | None:
    """The email of one send action, ready to render; or, when there is nothing new to
    store, what render_for_send returns for it (an earlier render's message id, or None)."""
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
    if (facts.enrollment_status == Enrollment.PAUSED and facts.current_node == facts.node
            and facts.enrollment_version == facts.visit_version):
        control.hold_actions([action_id])  # rendered when the enrollment is resumed
        logger.info("Render of action=%s held: enrollment paused", action_id)
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
    sender_email, sender_name, sender_overrides, sender_first_sent = sender

    message_id = new_message_id()
    unsubscribe = unsubscribe_url(settings, facts.tenant_id, facts.contact_email, message_id)
    context = email_context(
        fields=facts.contact_fields, email=facts.contact_email, timezone=facts.contact_timezone,
        tenant_id=facts.tenant_id, tenant_name=facts.tenant_name, plan_name=plan.name,
        plan_version=facts.plan_version, node=facts.node, unsubscribe=unsubscribe)
    identity = {MESSAGE_ID_HEADER: our_message_id(message_id, sender_email)}
    if reply_to := reply_address(settings, facts.tenant_id, message_id):
        identity[REPLY_TO_HEADER] = reply_to
    previous = previous_email(facts.enrollment_id) if node.thread else None
    if previous is not None:
        identity.update(thread_headers(previous))
    elif node.thread and not node.subject:
        _fail_render(action_id, facts.enrollment_id, f"node {facts.node!r}: thread: true and no "
                     "subject, but the enrollment has no earlier email to answer", now)
        return None
    return _Pending(action_id, facts, plan, message_id, sender, unsubscribe, identity, previous,
                    {"subject": node.subject or "Re:", "template": node.template,
                     "body": node.body, "context": context})


def _finish_one(prepared: _Pending, rendered: RenderedEmail | RenderError,
                now: datetime) -> _Rendered | None:
    """The rendered email's row and send order; None when its render failed (recorded)."""
    action_id, facts, plan, message_id, sender, unsubscribe, identity, previous, _ = prepared
    sender_email, sender_name, sender_overrides, sender_first_sent = sender
    node = plan.node(facts.node)
    if isinstance(rendered, RenderError):
        _fail_render(action_id, facts.enrollment_id, str(rendered), now)
        return None
    if previous is not None and not node.subject:
        rendered = replace(rendered, subject=reply_subject(previous.subject))
    if problem := _unstorable(rendered.subject, rendered.html, rendered.text):
        _fail_render(action_id, facts.enrollment_id, f"node {facts.node!r}: {problem}", now)
        return None

    row = (
        message_id, facts.tenant_id, facts.enrollment_id, action_id, facts.node,
        keys.message_key(facts.dedupe_key), OutboundMessage.RENDERED, facts.contact_email, sender_email,
        sender_name or "", rendered.subject, rendered.html, rendered.text,
        OutboundMessage.categories.db_value(plan.categories_of(facts.node)),
        OutboundMessage.headers.db_value({
            "List-Unsubscribe": f"<{unsubscribe}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            **identity,
        }),
        0, now,
    )
    return _Rendered(row, make_send_order(message_id, SendScope.of(
        facts.tenant_id, sender_email, facts.contact_email,
        Tenant.rate_limits.python_value(facts.tenant_rate_limits), sender_overrides,
        frequency_capped=node.frequency_cap, sender_first_sent=sender_first_sent,
        plan=plan.name, window=plan.window_of(facts.node), timezone=facts.contact_timezone,
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
    if one_statement_writes():
        # Prepared for one email (a trickle of sends, the single render): a text per
        # batch size would keep a plan of some 8 kB a row in every connection, and a
        # batch shares its one parse and plan anyway.
        stored = {action_id for (action_id,) in database_proxy.execute_sql(
            statement(_RENDER_IN_ONE.replace("{rows}", rows), prepared=len(rendered) == 1),
            [*params, ScheduledAction.DONE, "rendered", now]).fetchall()}
    else:
        with database_proxy.atomic():
            stored = {action_id for (action_id,) in database_proxy.execute_sql(
                statement(_INSERT_MESSAGES.replace("{rows}", rows)), params).fetchall()}
            for action_id in stored:
                database_proxy.execute_sql(statement(_FINISH_RENDERED), (
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


