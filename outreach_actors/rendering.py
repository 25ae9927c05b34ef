"""Render email subjects and bodies from Jinja2 templates in a sandbox, and check them before use.

Templates get this context: ``contact`` (every field of the contact, plus ``email``
and ``timezone``), ``tenant`` (``id``, ``name``), ``plan`` (``name``, ``version``),
``node`` (``name``) and ``unsubscribe_url``.

A value the template names but the context lacks (``contact.company`` for a contact
without a company, or a typo such as ``contact.frist_name``) is an error for that one
send, never an email with a hole in it: the send records a :class:`RenderError` that
names the node, the field and the line, and the rest of the campaign goes on. A field
that some contacts lack takes a fallback: ``{{ contact.first_name | default("there", true) }}``
(``true`` also covers an empty or null value); a condition on such a field is
written ``{% if contact.company is defined %}``. A value that is present but null
renders as an empty string rather than ``None``.

Bodies are HTML and always autoescaped; the plain-text part is derived from the HTML.
Subjects are plain text (not escaped); surrounding whitespace is trimmed and what is
left must be a single line, so a contact field cannot inject headers.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import html_text
import lxml.etree
from jinja2 import (
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateError,
    TemplateNotFound,
    TemplateSyntaxError,
    UndefinedError,
    meta,
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

CONTEXT_NAMES = frozenset({"contact", "tenant", "plan", "node", "unsubscribe_url"})

# Every character str.splitlines() breaks on, and NUL: a subject must stay one header line.
_LINE_BREAK = re.compile("[\r\n\x00\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_BLANK_LINES = re.compile(r"\n{3,}")
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


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    """The rendered parts of one email."""

    subject: str
    html: str
    text: str


class _GuardedLoader(FileSystemLoader):
    """A FileSystemLoader that also refuses symlinks out of the directory and oversized files."""

    def get_source(
        self, environment: Any, template: str
    ) -> tuple[str, str | None, Callable[[], bool] | None]:
        _check_template_file(Path(self.searchpath[0]), template)
        return super().get_source(environment, template)


class _SandboxedEnvironment(ImmutableSandboxedEnvironment):
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
# The budget bounds how long a bad template holds a worker thread: at a million,
# loops that recurse (``loop(...)``) took 3 s per render on a slow, loaded machine.
MAX_LOOP_TURNS = 250_000
LOOP_BUDGET_FILTER = "outreach_loop_budget"
_loop_turns: ContextVar[list[int]] = ContextVar("outreach_loop_turns")


def _counted_turns(iterable: Any) -> Any:
    turns = _loop_turns.get(None)
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


def _check_template_file(root: Path, name: str) -> None:
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


def _source_too_large(source: str) -> str | None:
    size = len(source.encode("utf-8"))
    if size > MAX_TEMPLATE_BYTES:
        return f"too large: {size:,} bytes, {_SIZE_ADVICE}"
    return None


def _none_as_empty(value: Any) -> Any:
    return "" if value is None else value


_NOT_XML_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
# What lxml's Cleaner, which html-text's extract_text runs first, would change in a
# way the text shows: comments and processing instructions, which it drops as done
# here, and the elements it drops with or without their content. A tree with none of
# these is laid out without the Cleaner, the same text for about a fifth less of this
# function's CPU (216 against 266 µs on the benchmark's email): the Cleaner is a
# sanitizer that also walks the whole tree to strip attributes the text never reads.
_COMMENTS = lxml.etree.XPath("//comment() | //processing-instruction()")
_CLEANED_ELEMENTS = lxml.etree.XPath(
    "//script | //style | //link | //meta | //applet | //param | //frameset | //frame"
    " | //noframes | //iframe | //embed | //layer | //object")
# What a reader of the HTML never sees: the head, and elements hidden inline (the
# preheader most email layouts carry, hidden one way or another, Outlook's own
# mso-hide included) or by the ``hidden`` attribute.
_MAYBE_HIDDEN = lxml.etree.XPath("//head | //*[@hidden] | //*[@style]")
_DISPLAY_NONE = re.compile(
    r"(?:^|;)\s*(?:display\s*:\s*none|visibility\s*:\s*hidden|mso-hide\s*:\s*all"
    r"|opacity\s*:\s*0(?:\.0*)?)\s*(?:!important\s*)?(?:;|$)", re.IGNORECASE)
_LINKS = lxml.etree.XPath("//a[@href]")
_LIST_ITEMS = lxml.etree.XPath("//li")
_EARLIER_ITEMS = lxml.etree.XPath("preceding-sibling::li")
_LIST_START = re.compile(r"\s*(-?\d{1,9})\s*")


def html_to_text(html: str) -> str:
    """Return a plain-text version of an HTML email, links kept as ``[text](url)``.

    html-text (lxml underneath) lays out the blocks; the links, list markers and
    hidden parts are settled on the tree first. Inscriptis, used before, took about
    0.29 ms per email against 0.14 ms, most of the CPU an email spends outside the
    database and the network: it lays out every table as a grid of padded cells,
    which email layouts use only to place their content, and which the flush-left
    lines below undid anyway.
    """
    # Control characters and lone surrogates (from a contact field, say) have no
    # place in text that lxml builds, and the render refuses the latter anyway
    # (delivery._unstorable); the text part must not raise on them.
    html = _NOT_XML_TEXT.sub("", html)
    try:
        tree = html_text.parse_html(html)
    except UnicodeEncodeError:
        tree = html_text.parse_html(html.encode("utf-8", "replace").decode("utf-8"))
    for element in _MAYBE_HIDDEN(tree):
        hidden = element.tag == "head" or element.get("hidden") is not None or bool(
            _DISPLAY_NONE.search(element.get("style", "")))
        if hidden and element.getparent() is not None:  # the root stays, hidden or not
            element.drop_tree()
    for link in _LINKS(tree):
        _as_markdown_link(link)
    for item in _LIST_ITEMS(tree):
        item.text = _list_marker(item) + (item.text or "")
    for comment in _COMMENTS(tree):
        if comment.getparent() is not None:
            comment.drop_tree()
    nothing_to_clean = not _CLEANED_ELEMENTS(tree)
    text = html_text.etree_to_text(tree) if nothing_to_clean else html_text.extract_text(tree)
    lines = "\n".join(line.strip() for line in text.splitlines())
    return _BLANK_LINES.sub("\n\n", lines).strip()


def _list_marker(item: Any) -> str:
    """``* `` in a bulleted list, ``3. `` for the third item of a numbered one."""
    parent = item.getparent()
    if parent is None or parent.tag != "ol":
        return "* "
    start = _LIST_START.fullmatch(parent.get("start", "1"))
    first = int(start.group(1)) if start else 1
    return f"{first + len(_EARLIER_ITEMS(item))}. "


def _as_markdown_link(link: Any) -> None:
    """Write ``<a href="url"><b>a</b> text</a>`` as ``[a text](url)`` in the tree; a
    linked image by its alt text, a link that reads as its own URL as the URL alone."""
    href = link.get("href")
    label = " ".join(link.text_content().split()) or " ".join(
        alt for image in link.iter("img") if (alt := " ".join((image.get("alt") or "").split())))
    for child in list(link):
        link.remove(child)  # the label holds their text, and their tails
    link.text = label if label in {href, href.removeprefix("mailto:")} else f"[{label}]({href})"


class TemplateRenderer:
    """Renders and checks email templates kept in ``templates_dir``."""

    def __init__(self, templates_dir: Path) -> None:
        self.templates_dir = Path(templates_dir).resolve()
        loader = _GuardedLoader(self.templates_dir)
        options: dict[str, Any] = {
            "loader": loader,
            "undefined": StrictUndefined,
            "finalize": _none_as_empty,
        }
        # Every body is HTML (the text part is derived from it), so a body is always
        # escaped, whatever its file extension; a subject is a header, never HTML.
        self._html_env = _SandboxedEnvironment(autoescape=True, **options)
        self._subject_env = _SandboxedEnvironment(autoescape=False, **options)
        # Inline subjects and bodies recur for every contact: compile each once.
        self._compile_html = functools.lru_cache(maxsize=256)(self._html_env.from_string)
        self._compile_subject = functools.lru_cache(maxsize=256)(self._subject_env.from_string)

    def render_email(
        self,
        *,
        subject: str,
        template: str | None,
        body: str | None,
        context: Mapping[str, Any],
    ) -> RenderedEmail:
        """Render one email, or raise RenderError naming the node, field and line at fault."""
        node = _node_name(context)
        if (template is None) == (body is None):
            raise RenderError("give exactly one of template or body", node=node)
        # Files are size-checked by the loader; inline sources here, before compiling them.
        for field, source in (("subject", subject), ("body", body)):
            if source is not None and (too_large := _source_too_large(source)):
                raise RenderError(too_large, node=node, field=field)
        rendered_subject = self._render(
            lambda: self._compile_subject(subject), context, node=node, field="subject"
        ).strip()
        if _LINE_BREAK.search(rendered_subject):
            raise RenderError(
                "the rendered subject contains a line break or NUL (from a template value "
                "or a contact field); a subject must be one line",
                node=node,
                field="subject",
            )
        if not rendered_subject:
            raise RenderError("the rendered subject is empty", node=node, field="subject")
        if template is not None:
            html = self._render(
                lambda: self._html_env.get_template(template), context, node=node, field="template",
                own=template,
            )
        else:
            html = self._render(lambda: self._compile_html(body), context, node=node, field="body")
        return RenderedEmail(subject=rendered_subject, html=html, text=html_to_text(html))

    def _render(
        self,
        load: Callable[[], Template],
        context: Mapping[str, Any],
        *,
        node: str | None,
        field: str,
        own: str | None = None,
    ) -> str:
        """The output of the template ``load`` gives (``own``: its file's name, if any)."""
        budget = _loop_turns.set([0])
        try:
            return _join_limited(load().generate(context))
        except RenderError as exc:  # from our loader or operator guards
            where, line = _template_place(exc, field, self.templates_dir)
            raise RenderError(exc.reason, node=node, field=where, line=exc.line or line) from exc
        except TemplateSyntaxError as exc:
            where = field if exc.name in (None, own) else f"{field}, in {exc.name}"
            raise RenderError(
                exc.message or str(exc), node=node, field=where, line=exc.lineno
            ) from exc
        except Exception as exc:  # template code can raise anything: 1/0, 'a' + 1, ...
            where, line = _template_place(exc, field, self.templates_dir)
            raise RenderError(_describe(exc), node=node, field=where, line=line) from exc
        finally:
            _loop_turns.reset(budget)

    def check_template(self, *, subject: str, template: str | None, body: str | None) -> list[str]:
        """Return what is wrong with an email node's subject and template or body (empty: fine).

        Problems with the subject start with ``subject:``, problems in a template that
        this one includes or extends start with that template's name; the rest are
        about the template file or inline body itself.
        """
        problems = [f"subject: {problem}" for problem in self._check_subject(subject)]
        if (template is None) == (body is None):
            problems.append(
                "give exactly one of template (a file in the templates directory) or body (inline HTML)"
            )
        elif template is not None:
            problems += self._check_file(template, seen={template}, nested=False)
        else:
            problems += self._check_source(self._html_env, body, seen=set(), nested=False)
        return problems

    def _check_subject(self, subject: str) -> list[str]:
        if not subject.strip():
            return ["is empty"]
        problems = self._check_source(self._subject_env, subject, seen=set(), nested=False)
        if _LINE_BREAK.search(subject.strip()):
            problems.append("contains a line break; a subject must be one line")
        return problems

    def _check_file(self, name: str, *, seen: set[str], nested: bool) -> list[str]:
        prefix = f"{name}: " if nested else ""
        try:
            source, _, _ = self._html_env.loader.get_source(self._html_env, name)
        except (RenderError, TemplateNotFound) as exc:
            return [f"{prefix}{exc}"]
        except UnicodeDecodeError:
            return [f"{prefix}template {name!r} is not UTF-8 text"]
        problems = self._check_source(self._html_env, source, seen=seen, nested=nested, name=name)
        return [f"{prefix}{problem}" for problem in problems]

    def _check_source(
        self,
        env: _SandboxedEnvironment,
        source: str,
        *,
        seen: set[str],
        nested: bool,
        name: str | None = None,
    ) -> list[str]:
        if too_large := _source_too_large(source):
            return [too_large]
        try:
            ast = env.parse(source, name=name)
            env.compile(ast, name=name)
        except TemplateSyntaxError as exc:
            return [f"line {exc.lineno}: {exc.message}"]
        except RecursionError:  # Jinja parses and compiles nested expressions recursively
            return ["nested too deeply to check; split the expression or the blocks"]
        problems = _private_attribute_problems(ast)
        if not nested:
            # An included template may use its includer's variables: check names at the top only.
            problems += _unknown_name_problems(ast, known=CONTEXT_NAMES | env.globals.keys())
        for candidates, may_be_missing in _referenced_templates(ast):
            # Jinja uses the first of a list that exists; `ignore missing` may find none.
            found = next((name for name in candidates if self._exists(name)), None)
            if found is None and not may_be_missing:
                found = candidates[0]  # its check says it is not found
            if found is not None and found not in seen:
                seen.add(found)
                problems += self._check_file(found, seen=seen, nested=True)
        return problems

    def shows_unsubscribe_link(self, *, template: str | None, body: str | None) -> bool:
        """Whether the email's HTML uses ``unsubscribe_url`` anywhere: in the template or
        body, or in a template it includes, extends or imports (best effort: a name
        computed at render time is not followed)."""
        pending = [] if template is None else [template]
        seen, source = set(pending), body
        while True:
            try:
                ast = None if source is None else self._html_env.parse(source)
            except Exception:
                ast = None  # its check reports it
            if ast is not None:
                if any(found.name == "unsubscribe_url" for found in ast.find_all(nodes.Name)):
                    return True
                for candidates, _ in _referenced_templates(ast):
                    pending += [name for name in candidates if name not in seen]
                    seen.update(candidates)
            if not pending:
                return False
            try:
                source = self._html_env.loader.get_source(self._html_env, pending.pop())[0]
            except Exception:
                source = None  # missing or unusable: its check reports it

    def _exists(self, name: str) -> bool:
        try:
            self._html_env.loader.get_source(self._html_env, name)
        except TemplateNotFound:
            return False
        except Exception:
            return True  # there, but unusable: its check says why
        return True


def _join_limited(chunks: Iterator[str]) -> str:
    parts, size = [], 0
    for chunk in chunks:
        size += len(chunk)
        if size > MAX_OUTPUT_CHARS:
            # Mail clients clip far earlier (Gmail at about 100 KB); this stops runaway loops.
            raise RenderError(f"the output passed the limit of {MAX_OUTPUT_CHARS:,} characters")
        parts.append(chunk)
    return "".join(parts)


def _private_attribute_problems(ast: nodes.Template) -> list[str]:
    # Best effort: the sandbox refuses these at render time whatever the syntax.
    problems = []
    for found in ast.find_all((nodes.Getattr, nodes.Getitem)):
        attr = found.attr if isinstance(found, nodes.Getattr) else getattr(found.arg, "value", None)
        if isinstance(attr, str) and attr.startswith("_"):
            problems.append(
                f"line {found.lineno}: {attr!r} is not allowed: templates cannot read names starting with '_'"
            )
    return problems


def _referenced_templates(ast: nodes.Template) -> Iterator[tuple[list[str], bool]]:
    """Each template an extends, include or import names (a list: the candidates in
    order), and whether it may be missing (``ignore missing``). Names computed at render
    time are left out: only the render can check them."""
    for node in ast.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        template = node.template
        if isinstance(template, nodes.Const) and isinstance(template.value, str):
            candidates = [template.value]
        elif isinstance(template, nodes.Tuple | nodes.List) and all(
                isinstance(item, nodes.Const) and isinstance(item.value, str) for item in template.items):
            candidates = [item.value for item in template.items]
        else:
            continue
        if candidates:
            yield candidates, isinstance(node, nodes.Include) and node.ignore_missing


def _top_level_names(ast: nodes.Template) -> set[str]:
    """Names a template defines outside its blocks ({% set %}, {% import %}, {% from %},
    {% macro %}). Jinja's find_undeclared_variables takes them for unknown inside the
    blocks of a template that extends another, where the render has them."""
    names: set[str] = set()
    for node in ast.body:
        if isinstance(node, nodes.Assign | nodes.AssignBlock):
            names |= {name.name for name in [node.target, *node.target.find_all(nodes.Name)]
                      if isinstance(name, nodes.Name)}
        elif isinstance(node, nodes.Import):
            names.add(node.target)
        elif isinstance(node, nodes.FromImport):
            names |= {alias if isinstance(alias, str) else alias[-1] for alias in node.names}
        elif isinstance(node, nodes.Macro):
            names.add(node.name)
    return names


def _unknown_name_problems(ast: nodes.Template, *, known: AbstractSet[str]) -> list[str]:
    problems = []
    for unknown in sorted(meta.find_undeclared_variables(ast) - known - _top_level_names(ast)):
        line = next(n.lineno for n in ast.find_all(nodes.Name) if n.name == unknown)
        problems.append(
            f"line {line}: unknown variable {unknown!r}; templates get {', '.join(sorted(CONTEXT_NAMES))}"
        )
    return problems


def _node_name(context: Mapping[str, Any]) -> str | None:
    node = context.get("node")
    return node.get("name") if isinstance(node, Mapping) else None


def _describe(exc: Exception) -> str:
    if isinstance(exc, UndefinedError) and ("dict object" in str(exc) or "is undefined" in str(exc)):
        # A missing key of contact (or tenant, plan, node), or a name: usually a contact
        # field that some contacts lack, or a typo.
        return (
            f"{exc}; check the name, and for a contact field some contacts lack give a "
            'fallback such as {{ contact.nickname | default("there", true) }}'
        )
    if isinstance(exc, MemoryError):
        return "the template needed more memory than is available"
    message = str(exc) or type(exc).__name__
    return message if isinstance(exc, TemplateError) else f"{message} ({type(exc).__name__})"


def _template_place(exc: BaseException, field: str, root: Path) -> tuple[str, int | None]:
    """Where a render error was raised, if Jinja recorded it: ``field``, naming the
    template file (relative to ``root``) when the error is in another one than the
    field's own (one it includes or extends), and the line."""
    files, line, tb = [], None, exc.__traceback__
    while tb is not None:
        # Jinja rewrites the traceback so template frames carry this global, the
        # template's file and its line.
        if "__jinja_exception__" in tb.tb_frame.f_globals:
            files.append(tb.tb_frame.f_code.co_filename)
            line = tb.tb_lineno
        tb = tb.tb_next
    if not files or files[-1] == files[0]:
        return field, line
    path = Path(files[-1])
    return f"{field}, in {path.relative_to(root) if path.is_relative_to(root) else path.name}", line
