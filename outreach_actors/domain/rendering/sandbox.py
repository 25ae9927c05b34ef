"""The Jinja2 sandbox tenant templates run in, and the bounds it holds them to: size,
output, loop turns, and the single C calls that would build a huge value at once."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from pathlib import Path, PurePosixPath
from typing import Any

from jinja2 import (
    FileSystemLoader,
    TemplateNotFound,
    nodes,
)
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.runtime import LoopContext
from jinja2.sandbox import ImmutableSandboxedEnvironment

MAX_TEMPLATE_BYTES = 1024 * 1024
MAX_OUTPUT_CHARS = 2 * 1024 * 1024
# Integers above 4096 bits (about 1,200 digits) have no place in an email; Python refuses
# to print ints over 4,300 digits anyway.
MAX_INTEGER_BITS = 4096

_SIZE_ADVICE = (
    f"over the limit of {MAX_TEMPLATE_BYTES:,} bytes (1 MiB); "
    "link to large content such as images instead of embedding it"
)


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


class GuardedLoader(FileSystemLoader):
    """A FileSystemLoader that also refuses symlinks out of the directory and oversized files."""

    def get_source(
        self, environment: Any, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        check_template_file(Path(self.searchpath[0]), template)
        return super().get_source(environment, template)


class SandboxedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with ``**`` and ``*`` refused when the result would be huge.

    Why: the sandbox's other guards (MAX_RANGE, our output limit) act between template
    steps, but ``10 ** (10 ** 10)`` or ``"x" * 10**10`` is one C call that takes minutes
    of CPU or all memory before anything can stop it. Intercepting the operators also
    stops Jinja from folding them as constants at compile time, so checking such a
    template does not hang. For the same reason the calls that pad to a width
    (``'x'.center(10**9)``, ``|center``, ``|indent``, a format spec such as
    ``{:>999999999}`` or ``%999999999s``) are refused when the width passes the output
    limit.

    Values that double at each turn of a loop (``{% set ns.s = ns.s ~ ns.s %}``, with
    ``+`` or ``|replace`` too) pass any memory in about thirty steps, each one C call:
    a concatenation, a sum or a replacement whose result would pass the output limit
    is refused before it is built.

    Private names (``_x``) are refused outright: Jinja falls back from ``obj.x`` to
    ``obj['x']``, which turned ``dict.__globals__`` into ``dict['__globals__']``.
    """

    intercepted_binops = frozenset({"**", "*", "%", "+"})

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.code_generator_class = _GuardedCodeGenerator
        self.filters[LOOP_BUDGET_FILTER] = _counted_turns
        # Jinja's lipsum(n) has no bound: a million paragraphs is a minute of CPU
        # before the output limit can act. Keep it, with a cap a placeholder needs.
        lipsum = self.globals["lipsum"]
        self.globals["lipsum"] = lambda n=5, *args, **kwargs: lipsum(
            _bounded_count(n, MAX_LIPSUM_PARAGRAPHS), *args, **kwargs)

        # Filters do not go through call(): the padding ones are guarded here.
        for name in _WIDTH_FILTERS:
            self.filters[name] = _width_guarded(self.filters[name])
        self.filters["format"] = _format_guarded(self.filters["format"])
        self.filters["replace"] = _replace_guarded(self.filters["replace"])

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            _check_power(left, right)
        elif operator == "*":
            _check_product(left, right)
        elif operator == "+":
            _check_sum(left, right)
        elif isinstance(left, str):
            _check_format_widths(left)
        return super().call_binop(context, operator, left, right)

    def limited_concat(self, parts: tuple[Any, ...], join: Callable[[Any], str]) -> str:
        """``a ~ b``, refused when the result would pass the output limit (see
        _GuardedCodeGenerator)."""
        if sum(len(part) for part in parts if isinstance(part, str)) > MAX_OUTPUT_CHARS:
            raise RenderError(f"joining text with ~ would pass the output limit of "
                              f"{MAX_OUTPUT_CHARS:,} characters")
        return join(parts)

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(attribute, str) and attribute.startswith("_"):
            return self.unsafe_undefined(obj, attribute)
        return super().getattr(obj, attribute)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        # (Jinja's own signature: a template may pass keywords named self or context.)
        name = getattr(__obj, "__name__", "")
        if isinstance(__obj, LoopContext) and args:
            # loop(children) in a `recursive` loop: its turns count against the budget too.
            args = (_counted_turns(args[0]), *args[1:])
        owner = getattr(__obj, "__self__", None)
        if name in _WIDTH_METHODS and isinstance(owner, str):
            _check_width(args[0] if args else kwargs.get("width"), f"str.{name}")
        elif name == "replace" and isinstance(owner, str):
            _check_replace(owner, *args, **kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        # The sandbox hands str.format and format_map to its own formatter; check first.
        owner = getattr(value, "__self__", None)
        if not isinstance(owner, str) or getattr(value, "__name__", "") not in {
                "format", "format_map"}:
            return super().wrap_str_format(value)
        _check_format_widths(owner)
        formatter = super().wrap_str_format(value)
        if formatter is None or not _NESTED_FORMAT_WIDTH.search(owner):
            return formatter

        def checked(*args: Any, **kwargs: Any) -> str:
            # '{:>{w}}'.format(x, w=10**9): the width comes in as an argument.
            for arg in (*args, *kwargs.values()):
                for width in (arg.values() if isinstance(arg, Mapping) else [arg]):
                    _check_width(width, "a format width")
            return formatter(*args, **kwargs)

        return checked


# Calls whose output grows with a width argument, which one C call would fill.
_WIDTH_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})
_WIDTH_FILTERS = ("center", "indent")
# A width or precision of 8 digits or more in a str.format or printf-style spec.
_NESTED_FORMAT_WIDTH = re.compile(r"\{[^{}]*:[^{}]*\{")
_HUGE_FORMAT_WIDTH = re.compile(r"\{[^{}]*:[^{}]*\d{8,}[^{}]*\}|%[-#0 +]*(?:\d{8,}|\*?\.\d{8,})")


def _check_width(width: Any, what: str) -> None:
    if isinstance(width, int) and width > MAX_OUTPUT_CHARS:
        raise RenderError(f"{what}({width:,}) would pass the output limit of "
                          f"{MAX_OUTPUT_CHARS:,} characters")
    if isinstance(width, str) and len(width) > MAX_OUTPUT_CHARS:
        raise RenderError(f"{what} was given a width string longer than the output limit")


def _check_format_widths(template: str) -> None:
    if _HUGE_FORMAT_WIDTH.search(template):
        raise RenderError("a format width would pass the output limit of "
                          f"{MAX_OUTPUT_CHARS:,} characters")


def _width_guarded(jinja_filter: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(jinja_filter)
    def guarded(value: Any, *args: Any, **kwargs: Any) -> Any:
        # center(value, width) and indent(value, width)
        _check_width(args[0] if args else kwargs.get("width"), f"|{jinja_filter.__name__[3:]}")
        return jinja_filter(value, *args, **kwargs)

    return guarded


def _format_guarded(jinja_filter: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(jinja_filter)
    def guarded(value: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(value, str):
            _check_format_widths(value)
        return jinja_filter(value, *args, **kwargs)

    return guarded


def _replace_guarded(jinja_filter: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(jinja_filter)
    def guarded(eval_ctx: Any, value: Any, old: Any, new: Any, count: Any = None) -> Any:
        _check_replace(str(value), old, new, count)
        return jinja_filter(eval_ctx, value, old, new, count)

    return guarded


def _check_replace(text: str, old: Any = "", new: Any = "", count: Any = None, **_: Any) -> None:
    if not isinstance(old, str) or not isinstance(new, str) or len(new) <= len(old):
        return  # str.replace refuses other types itself; a shorter result cannot grow
    times = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        times = min(times, count)
    if len(text) + times * (len(new) - len(old)) > MAX_OUTPUT_CHARS:
        raise RenderError(f"a replacement would pass the output limit of {MAX_OUTPUT_CHARS:,} characters")


def _check_sum(left: Any, right: Any) -> None:
    if isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
        if len(left) + len(right) > MAX_OUTPUT_CHARS:
            raise RenderError(f"adding two values would pass the output limit of "
                              f"{MAX_OUTPUT_CHARS:,} characters")


class _GuardedCodeGenerator(CodeGenerator):
    """Compiles ``a ~ b`` to a call that checks the result's size first, and every
    ``{% for %}`` to count its turns against the render's loop budget.

    Jinja compiles ``~`` to a join of its operands, not to a binary operator, so the
    sandbox's call_binop never sees it. Loops that print nothing never reach the
    output limit: three nested ``range(100000)`` loops run for days, holding a worker
    thread (and Dramatiq retries a timed-out message).
    """

    def visit_Template(self, node: nodes.Template, frame: Frame | None = None) -> None:
        for loop in node.find_all(nodes.For):
            loop.iter = nodes.Filter(loop.iter, LOOP_BUDGET_FILTER, [], [], None, None,
                                     lineno=loop.iter.lineno)
        super().visit_Template(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.limited_concat((")
        for operand in node.nodes:
            self.visit(operand, frame)
            self.write(", ")
        self.write("), ")
        if frame.eval_ctx.volatile:
            self.write("(markup_join if context.eval_ctx.volatile else str_join)")
        else:
            self.write("markup_join" if frame.eval_ctx.autoescape else "str_join")
        self.write(")")


# Turns of all the loops of one render together. An email's loops take a few hundred.
# The budget bounds how long a bad template holds a worker thread (loops that
# recurse, ``loop(...)``, cost the most per turn).
MAX_LOOP_TURNS = 250_000
LOOP_BUDGET_FILTER = "outreach_loop_budget"
loop_turns: ContextVar[list[int]] = ContextVar("outreach_loop_turns")


def _counted_turns(iterable: Any) -> Any:
    turns = loop_turns.get(None)
    return iterable if turns is None else _counting(iterable, turns)


def _counting(iterable: Any, turns: list[int]) -> Iterator[Any]:
    for item in iterable:
        turns[0] += 1
        if turns[0] > MAX_LOOP_TURNS:
            raise RenderError(f"the template's loops passed {MAX_LOOP_TURNS:,} turns")
        yield item


MAX_LIPSUM_PARAGRAPHS = 100


def _bounded_count(n: Any, limit: int) -> Any:
    if isinstance(n, int) and n > limit:
        raise SecurityError(f"lipsum({n}) asks for more than {limit} paragraphs")
    return n


def _check_power(base: Any, exponent: Any) -> None:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        if exponent * math.log2(abs(base)) > MAX_INTEGER_BITS:
            raise RenderError(f"{base} ** {exponent} is too large to compute in a template")


def _check_product(left: Any, right: Any) -> None:
    if isinstance(left, int) and isinstance(right, int):
        if left.bit_length() + right.bit_length() > MAX_INTEGER_BITS:
            raise RenderError("a multiplication result is too large to compute in a template")
        return
    count, sequence = (left, right) if isinstance(left, int) else (right, left)
    if isinstance(count, int) and isinstance(sequence, str | list | tuple):
        if len(sequence) * count > MAX_OUTPUT_CHARS:
            raise RenderError(
                f"repeating a value {count:,} times would pass the output limit of "
                f"{MAX_OUTPUT_CHARS:,} characters"
            )


def check_template_file(root: Path, name: str) -> None:
    """Raise RenderError or TemplateNotFound, saying why, if a template file cannot be used."""
    if "\x00" in name:  # the file system refuses it with a bare ValueError
        raise RenderError(f"template name {name!r} contains a NUL character")
    pure, path = PurePosixPath(name), (root / name).resolve()
    if pure.is_absolute() or ".." in pure.parts or not path.is_relative_to(root.resolve()):
        raise RenderError(
            f"template {name!r} points outside the templates directory {root}; "
            "give a path relative to it"
        )
    if not path.is_file():
        raise TemplateNotFound(name, f"template {name!r} not found in {root}")
    size = path.stat().st_size
    if size > MAX_TEMPLATE_BYTES:
        raise RenderError(f"template {name!r} is too large: {size:,} bytes, {_SIZE_ADVICE}")


def source_too_large(source: str) -> str | None:
    size = len(source.encode("utf-8"))
    if size > MAX_TEMPLATE_BYTES:
        return f"too large: {size:,} bytes, {_SIZE_ADVICE}"
    return None


def none_as_empty(value: Any) -> Any:
    return "" if value is None else value


