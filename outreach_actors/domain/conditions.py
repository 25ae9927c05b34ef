"""Conditions: the one small sandboxed expression language of plans (``event.amount >= 100``).

A condition is a Jinja2 expression, compiled when the plan is validated and run in
the project's bounded template sandbox (``rendering.sandbox``): the operators that
could build a huge value are checked first, private attributes are refused, and no
global (``range``, ``lipsum``...) exists. It may name two things: ``event`` (the host
event's properties; at a branch node, the event that brought the contact: see
branches.py) and ``contact`` (the contact's fields, with ``email``).

    condition = compile_condition("event.amount >= 100", "nodes.x.transitions[0].if")
    evaluate(condition, event={"amount": 120}, contact={})      # True

A condition that fails while running (a property missing, a comparison of text with a
number) is reported through ``report`` and counts as false: a tenant's data never
raises out of the engine.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import TemplateError, nodes
from jinja2.parser import Parser

from outreach_actors.domain.rendering.sandbox import SandboxedEnvironment

logger = logging.getLogger(__name__)

#: The longest condition source: one line a person writes, not a program.
MAX_CONDITION_CHARS = 500
#: The names a condition may read.
CONDITION_NAMES = frozenset({"event", "contact"})


class ConditionError(ValueError):
    """A condition does not compile or names what it may not; the message says where."""


class _ConditionEnvironment(SandboxedEnvironment):
    """The template sandbox with no globals. A missing field is Jinja's undefined: equal
    to nothing and false (``contact.tier == 'pro'`` is false for a contact without a
    tier); ordering it (``event.amont >= 100``) fails, and is reported."""

    def __init__(self) -> None:
        super().__init__(autoescape=False)
        self.globals.clear()


_ENVIRONMENT = _ConditionEnvironment()


@dataclass(frozen=True)
class Condition:
    """A checked condition: its source, where it sits in the plan, and its compiled form."""

    source: str
    path: str
    _run: Callable[..., Any]


def compile_condition(source: object, path: str) -> Condition:
    """The condition ``source`` compiled and checked; ConditionError, naming ``path``, if not.

    Compiled once per (source, path): plans read back from the database reuse it.
    """
    if not isinstance(source, str):
        raise ConditionError(f"{path}: a condition is text such as \"event.amount >= 100\"")
    return _compiled(source, path)


@lru_cache(maxsize=4096)
def _compiled(source: str, path: str) -> Condition:
    if not source.strip():
        raise ConditionError(f"{path}: the condition is empty")
    if len(source) > MAX_CONDITION_CHARS:
        raise ConditionError(f"{path}: the condition is {len(source)} characters; "
                             f"the limit is {MAX_CONDITION_CHARS}")
    try:
        parser = Parser(_ENVIRONMENT, source, state="variable")
        expression = parser.parse_expression()
        if not parser.stream.eos:
            parser.fail(f"unexpected {parser.stream.current.value!r} after the expression")
        names = {node.name for node in [expression, *expression.find_all(nodes.Name)]
                 if isinstance(node, nodes.Name)}
        unknown = sorted(names - CONDITION_NAMES)
        if unknown:
            raise ConditionError(
                f"{path}: unknown name {unknown[0]!r}; a condition reads only `event` (the "
                "event's properties) and `contact` (the contact's fields)")
        run = _ENVIRONMENT.compile_expression(source, undefined_to_none=False)
    except TemplateError as exc:
        raise ConditionError(f"{path}: {exc.message or exc}") from None
    except RecursionError:
        raise ConditionError(f"{path}: nested too deeply") from None
    return Condition(source, path, run)


def evaluate(condition: Condition, *, event: Mapping[str, Any] | None = None,
             contact: Mapping[str, Any] | None = None,
             report: Callable[[str], None] | None = None) -> bool:
    """Whether ``condition`` holds for this event's properties and contact's fields.

    A failure while running is passed to ``report`` (default: a warning in the log)
    and the condition counts as false; it never raises.
    """
    try:
        return bool(condition._run(event=dict(event or {}), contact=dict(contact or {})))
    except Exception as exc:  # the tenant's expression on the tenant's data: any error is theirs
        problem = f"{condition.path}: {condition.source!r} failed: {type(exc).__name__}: {exc}"
        (report or logger.warning)(problem)
        return False
