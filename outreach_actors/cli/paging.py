"""Paging of the CLI's lists: ``--limit`` and ``--offset`` on every one, and a closing
line saying how many rows are left and how to see the next page."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import click
import peewee

#: Rows a list shows unless --limit says otherwise: a screenful, fast at any table size.
DEFAULT_LIMIT = 50
MAX_LIMIT = 10_000

Command = TypeVar("Command", bound=Callable[..., Any])


def paging_options(command: Command) -> Command:
    """Add ``--limit`` and ``--offset`` to a list command."""
    command = click.option(
        "--offset", default=0, show_default=True, type=click.IntRange(0),
        help="Skip this many rows first (the last line of a page gives the next offset).",
    )(command)
    return click.option(
        "--limit", default=DEFAULT_LIMIT, show_default=True, type=click.IntRange(1, MAX_LIMIT),
        help="Show at most this many rows.",
    )(command)


@dataclass(frozen=True)
class Page:
    """Some rows of a list: those from ``offset`` on, and how many the list holds."""

    rows: Sequence[Any]
    offset: int
    total: int

    @classmethod
    def of(cls, rows: Sequence[Any], *, limit: int, offset: int, count: Callable[[], int]) -> Page:
        """The page of ``rows`` (at most ``limit``, fetched from ``offset``); ``count``
        (the whole list's size) is asked only when the page alone cannot tell it."""
        if len(rows) < limit and (rows or offset == 0):
            return cls(rows, offset, offset + len(rows))
        return cls(rows, offset, count())

    @property
    def remaining(self) -> int:
        return max(0, self.total - self.offset - len(self.rows))

    def footer(self, noun: str) -> str | None:
        """The line under the page: what it shows of how many, and the next offset."""
        if self.remaining:
            return (f"{self.offset + 1:,}-{self.offset + len(self.rows):,} of {self.total:,} "
                    f"{noun}; {self.remaining:,} more: --offset {self.offset + len(self.rows)}")
        if self.offset and not self.rows:
            return f"no {noun} past {self.total:,} (--offset {self.offset})"
        return None


def page_of(query: peewee.ModelSelect, *, limit: int, offset: int) -> Page:
    """One page of an ordered query's rows."""
    rows = list(query.limit(limit).offset(offset))
    return Page.of(rows, limit=limit, offset=offset, count=lambda: query.order_by().count())
