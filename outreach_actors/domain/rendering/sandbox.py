"""The Jinja2 sandbox tenant templates run in: Jinja's immutable sandbox, with every step
that could pass a render's bounds (``limits``) checked first (``guards``)."""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from jinja2 import FileSystemLoader, Template, TemplateNotFound, nodes, pass_context
from jinja2.compiler import CodeGenerator, Frame
from jinja2.runtime import BlockReference, LoopContext, Macro
from jinja2.sandbox import (
    ImmutableSandboxedEnvironment,
    SandboxedEscapeFormatter,
    SandboxedFormatter,
)
from markupsafe import Markup

from outreach_actors.domain.rendering.guards import (
    FILTER_GUARDS,
    READ_STRUCTURES,
    STR_METHOD_GUARDS,
    STRUCTURES,
    BoundedFormatting,
    TextMeasure,
    bounded_lipsum,
    check_power,
    check_printf,
    check_product,
    check_sum,
    check_text_size,
)
from outreach_actors.domain.rendering.limits import (
    MAX_OUTPUT_CHARS,
    MAX_TEMPLATE_BYTES,
    RenderError,
    count_call,
    counted_turns,
)

_SIZE_ADVICE = (
    f"over the limit of {MAX_TEMPLATE_BYTES:,} bytes (1 MiB); "
    "link to large content such as images instead of embedding it"
)


class GuardedLoader(FileSystemLoader):
    """A FileSystemLoader that also refuses symlinks out of the directory and oversized files."""

    def get_source(
        self, environment: Any, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        check_template_file(Path(self.searchpath[0]), template)
        return super().get_source(environment, template)


class SandboxedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox, with each step that could build a huge value checked first.

    Why: the sandbox's own guards (MAX_RANGE) and our output limit act between template
    steps, but ``10 ** (10 ** 10)``, ``"x" * 10**10``, ``'%*s' % (10**9, 'x')`` or a
    join of a thousand 2 MB strings is one C call that takes minutes of CPU or all
    memory before anything can stop it. So the operators ``**``, ``*``, ``+`` and
    ``%``, ``~``, the methods of strings that pad, join, translate or format, every
    filter, printing a value, and the joins of block and macro output are checked
    (``guards``) before they run; every loop turn, macro call and include counts
    against the render's budget of turns (a macro that calls itself twice makes 2**n
    calls and prints nothing).

    Nothing is evaluated while compiling: Jinja folds constant expressions, filters
    included, at compile time (in its optimizer, in the code generator's output and
    ``{% autoescape %}`` handling, and in ``meta.find_undeclared_variables``, which
    runs its own code generator), so checking a plan ran its bombs. Turning the
    optimizer off (``optimized=False``) is not enough on its own; a filter that takes
    the render's context is never folded, so every filter here takes it. The
    intercepted operators are not folded either.

    Private names (``_x``) are refused outright: Jinja falls back from ``obj.x`` to
    ``obj['x']``, which turned ``dict.__globals__`` into ``dict['__globals__']``.
    """

    intercepted_binops = frozenset({"**", "*", "%", "+"})

    def __init__(self, **options: Any) -> None:
        super().__init__(optimized=False, **options)
        self.code_generator_class = _GuardedCodeGenerator
        self.globals["lipsum"] = bounded_lipsum(self.globals["lipsum"])
        self.filters = {name: _at_render_time(name, jinja_filter)
                        for name, jinja_filter in self.filters.items()}
        self.filters[LOOP_BUDGET_FILTER] = counted_turns

    @staticmethod
    def concat(parts: Iterable[str]) -> str:
        """The join of a block's, a macro's or a call block's output (Jinja's
        ``environment.concat``), refused when it would pass the output limit."""
        parts = parts if isinstance(parts, list) else list(parts)
        if sum(map(len, parts)) > MAX_OUTPUT_CHARS:
            raise RenderError(f"a block, macro or call block would build more than "
                              f"{MAX_OUTPUT_CHARS:,} characters (the output limit)")
        return "".join(parts)

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            check_power(left, right)
        elif operator == "*":
            check_product(left, right)
        elif operator == "+":
            check_sum(left, right)
        elif isinstance(left, str | bytes):
            check_printf(left, right)
        return super().call_binop(context, operator, left, right)

    def limited_concat(self, parts: tuple[Any, ...], join: Callable[[Any], str]) -> str:
        """``a ~ b``, refused when the result would pass the output limit (see
        _GuardedCodeGenerator)."""
        measure = TextMeasure()
        if any(measure.add(part) for part in parts):
            raise RenderError(f"joining text with ~ would pass the output limit of "
                              f"{MAX_OUTPUT_CHARS:,} characters")
        return join(parts)

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(attribute, str) and attribute.startswith("_"):
            return self.unsafe_undefined(obj, attribute)
        return super().getattr(obj, attribute)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        # (Jinja's own signature: a template may pass keywords named self or context.)
        if isinstance(__obj, Macro | BlockReference):
            count_call()
        elif isinstance(__obj, LoopContext) and args:
            # loop(children) in a `recursive` loop: its turns count against the budget too.
            args = (counted_turns(args[0]), *args[1:])
        elif isinstance(owner := getattr(__obj, "__self__", None), str | bytes):
            guard = STR_METHOD_GUARDS.get(getattr(__obj, "__name__", ""))
            if guard is not None:
                args = guard(owner, *args, **kwargs) or args
        return super().call(__context, __obj, *args, **kwargs)

    def get_template(self, name: Any, parent: str | None = None,
                     globals: Any = None) -> Template:
        count_call()  # an include, import or extends
        return super().get_template(name, parent, globals)

    def select_template(self, names: Any, parent: str | None = None,
                        globals: Any = None) -> Template:
        count_call()
        return super().select_template(names, parent, globals)

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """Jinja's own, with a formatter that checks each field before it is built (see
        BoundedFormatting): Jinja builds its formatter inside this method."""
        if not isinstance(value, types.MethodType | types.BuiltinMethodType) or (
                value.__name__ not in ("format", "format_map")):
            return None
        template = value.__self__
        if not isinstance(template, str):
            return None
        formatter: SandboxedFormatter = (
            _BoundedEscapeFormatter(self, escape=template.escape)
            if isinstance(template, Markup) else _BoundedFormatter(self))
        is_format_map = value.__name__ == "format_map"

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs:
                    raise TypeError("format_map() takes no keyword arguments")
                if len(args) != 1:
                    raise TypeError(f"format_map() takes exactly one argument ({len(args)} given)")
                kwargs, args = args[0], ()
            return type(template)(formatter.vformat(template, args, kwargs))

        return functools.update_wrapper(wrapper, value)


class _BoundedFormatter(BoundedFormatting, SandboxedFormatter):
    pass


class _BoundedEscapeFormatter(BoundedFormatting, SandboxedEscapeFormatter):
    pass


def _at_render_time(name: str, jinja_filter: Callable[..., Any]) -> Callable[..., Any]:
    """``jinja_filter``, checked by its guard before it runs; refused a structure whose
    text would pass the output limit when it prints its input; and taking the render's
    context, so that Jinja never runs it at compile time (see SandboxedEnvironment)."""
    passes = getattr(getattr(jinja_filter, "jinja_pass_arg", None), "name", None)
    guard = FILTER_GUARDS.get(name)
    prints_input = name not in READ_STRUCTURES

    def guarded(context: Any, value: Any, *args: Any, **kwargs: Any) -> Any:
        if prints_input and isinstance(value, STRUCTURES):
            check_text_size(value, f"|{name}")
        if guard is not None and (read := guard(context.environment, value, *args,
                                                **kwargs)) is not None:
            value = read  # the guard read an iterator: filter what it read
        if passes is None:
            return jinja_filter(value, *args, **kwargs)
        first = {"context": context, "eval_context": context.eval_ctx,
                 "environment": context.environment}[passes]
        return jinja_filter(first, value, *args, **kwargs)

    functools.update_wrapper(guarded, jinja_filter, updated=())
    return pass_context(guarded)


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


LOOP_BUDGET_FILTER = "outreach_loop_budget"


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


def finalize_output(value: Any) -> Any:
    """What ``{{ value }}`` prints: None as nothing, and a structure refused when its
    text would pass the output limit (``str()`` would build it in one C call)."""
    if value is None:
        return ""
    if isinstance(value, STRUCTURES):
        check_text_size(value, "printing this value")
    return value
