"""The bounds one render of a tenant template is held to, and RenderError, which says where
a template passed one or failed otherwise."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextvars import ContextVar
from typing import Any

MAX_TEMPLATE_BYTES = 1024 * 1024
MAX_OUTPUT_CHARS = 2 * 1024 * 1024
# Integers above 4096 bits (about 1,200 digits) have no place in an email; Python refuses
# to print ints over 4,300 digits anyway.
MAX_INTEGER_BITS = 4096
# Turns of all the loops of one render together, with every macro call, block call and
# include: an email's take a few hundred. The budget bounds how long a bad template
# holds a worker thread (loops that recurse, ``loop(...)``, cost the most per turn).
MAX_LOOP_TURNS = 250_000
# What a macro call, a block call or an include counts: each costs about as much CPU as
# ten loop turns.
CALL_TURNS = 10


class RenderError(ValueError):
    """A template could not be checked or rendered; the message says where and why."""

    def __init__(
        self,
        reason: str,
        *,
        node: str | None = None,
        field: str | None = None,
        line: int | None = None,
    ) -> None:
        self.reason, self.node, self.field, self.line = reason, node, field, line
        where = [f"node {node!r}"] if node else []
        where += [field] if field else []
        where += [f"line {line}"] if line else []
        super().__init__(f"{', '.join(where)}: {reason}" if where else reason)


# The turns taken so far by the render running in this context (None outside a render).
loop_turns: ContextVar[list[int]] = ContextVar("outreach_loop_turns")


def count_call() -> None:
    """Count a macro call, a block call or an include against the render's budget."""
    turns = loop_turns.get(None)
    if turns is not None:
        turns[0] += CALL_TURNS
        if turns[0] > MAX_LOOP_TURNS:
            raise _over_budget()


def counted_turns(iterable: Iterable[Any]) -> Iterable[Any]:
    """``iterable``, each of its items a turn of the render's budget."""
    turns = loop_turns.get(None)
    return iterable if turns is None else _counting(iterable, turns)


def _counting(iterable: Iterable[Any], turns: list[int]) -> Iterator[Any]:
    for item in iterable:
        turns[0] += 1
        if turns[0] > MAX_LOOP_TURNS:
            raise _over_budget()
        yield item


def _over_budget() -> RenderError:
    return RenderError(f"the template's loops and calls passed the budget of {MAX_LOOP_TURNS:,} "
                       f"turns (a macro call or include counts as {CALL_TURNS})")
