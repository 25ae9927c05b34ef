"""Checks that refuse one step of a template before it runs when the text it would build
passes the output limit, or its work the render's share.

Why before: padding, a join, a format, a repeat or a replacement is one C call, which
builds its whole result (gigabytes, in a second) before any check after it can act. Each
check estimates the result from its inputs (sizes, widths, counts) without building it.
They stop the tricks foreseen; the render process's own limits (``isolation``) hold for
the rest.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable, Iterable, Mapping
from string import Formatter
from typing import Any

from jinja2.filters import make_attrgetter
from jinja2.sandbox import MAX_RANGE
from jinja2.utils import Namespace, generate_lorem_ipsum

from outreach_actors.domain.headers import LINE_BREAK
from outreach_actors.domain.rendering.limits import (
    MAX_INTEGER_BITS,
    MAX_OUTPUT_CHARS,
    RenderError,
)

#: Copies one step may make of what it has built so far (a ``|sum`` of lists copies its
#: running total at each item, ``|wordwrap`` the rest of a long word at each line): the
#: work is quadratic, without any value growing past the output limit.
MAX_QUADRATIC_COPIES = 50_000_000
#: Paragraphs, and words in a paragraph, that ``lipsum()`` may make: a placeholder's worth.
MAX_LIPSUM_PARAGRAPHS = 100
MAX_LIPSUM_WORDS = 1_000

# What templates can build that prints as the text of everything it holds.
STRUCTURES = (list, tuple, set, frozenset, dict, Namespace,
              type({}.keys()), type({}.values()), type({}.items()))


def _too_long(what: str) -> RenderError:
    return RenderError(f"{what} would build more than {MAX_OUTPUT_CHARS:,} characters "
                       "(the output limit)")


class TextMeasure:
    """Adds up about how many characters values print as (``str()``; JSON or pprint
    with an ``indent``), without building the text, and stops soon past the output limit.

    A structure may hold one value many times (``[[0] * 2000000] * 300``): each value is
    measured once, and counted each time it prints, as it does.
    """

    def __init__(self, *, indent: int = 0, total: int = 0) -> None:
        self.indent, self.total = indent, total
        # By id, with the value itself, so that no id is reused for another value meanwhile.
        self._measured: dict[int, tuple[Any, int]] = {}

    def add(self, value: Any) -> bool:
        """Count ``value`` printed on its own (a string as itself); True once past the limit."""
        self.total += len(value) if isinstance(value, str) else self._size(value, 1)
        return self.total > MAX_OUTPUT_CHARS

    def _size(self, value: Any, depth: int) -> int:
        if isinstance(value, str | bytes):
            return len(value) + 3  # quotes, and b for bytes
        if isinstance(value, bool | float | complex) or value is None:
            return 25
        if isinstance(value, int):
            return value.bit_length() // 3 + 2
        if not isinstance(value, STRUCTURES):
            return 40  # prints its repr, which is short: a loop, a macro, a range
        if isinstance(value, Namespace):
            value = value._Namespace__attrs  # what its repr prints
        if len(value) * 3 > MAX_OUTPUT_CHARS:
            return MAX_OUTPUT_CHARS + 1  # each item prints at least one character and ", "
        known = self._measured.get(id(value))
        if known is not None:
            return known[1]
        self._measured[id(value)] = (value, 0)  # a structure that holds itself prints [...]
        step = 2 + (self.indent * depth + 1 if self.indent else 0)  # ", " or a new line
        total = 2
        if isinstance(value, dict):
            for key, item in value.items():
                total += self._size(key, depth + 1) + self._size(item, depth + 1) + step
                if total > MAX_OUTPUT_CHARS:
                    break
        else:
            for item in value:
                total += self._size(item, depth + 1) + step
                if total > MAX_OUTPUT_CHARS:
                    break
        self._measured[id(value)] = (value, total)
        return total


def check_text_size(value: Any, what: str, *, indent: int = 0) -> None:
    """Refuse turning ``value`` into text when the text would pass the output limit."""
    if TextMeasure(indent=indent).add(value):
        raise _too_long(what)


def check_joined(items: Iterable[Any], separator: str | bytes, what: str) -> None:
    """Refuse joining ``items`` with ``separator`` when the result would pass the limit."""
    measure = TextMeasure()
    for count, item in enumerate(items):
        measure.total += len(separator) if count else 0
        if measure.add(item):
            raise _too_long(what)


def check_width(width: Any, what: str) -> None:
    """Refuse padding to ``width`` when it passes the output limit."""
    if isinstance(width, int) and width > MAX_OUTPUT_CHARS:
        raise RenderError(f"{what}({width:,}) would pass the output limit of "
                          f"{MAX_OUTPUT_CHARS:,} characters")
    if isinstance(width, str) and len(width) > MAX_OUTPUT_CHARS:
        raise RenderError(f"{what} was given a width string longer than the output limit")


# A printf-style field: %(key)-08.3f, %*s, %%. A key is read up to 100 characters (a
# longer one is not measured) so that the scan stays linear in the template.
_PRINTF_FIELD = re.compile(
    r"%(?:\((?P<key>[^)]{0,100})\))?[-#0 +]*(?P<width>\*|\d+)?(?:\.(?P<precision>\*|\d+))?"
    r"[hlL]?(?P<kind>.?)", re.DOTALL)


def check_printf(template: str | bytes, values: Any) -> None:
    """Refuse ``template % values`` when its result would pass the output limit: each
    field's width and precision (a ``*`` takes them from the values), and the text of
    the value it prints."""
    if isinstance(template, bytes):
        template = template.decode("latin-1")
    args = values if isinstance(values, tuple) else (values,)
    measure, position = TextMeasure(total=len(template)), 0
    for field in _PRINTF_FIELD.finditer(template):
        if field["kind"] == "%":
            continue
        for part in (field["width"], field["precision"]):
            if part == "*":
                star = args[position] if position < len(args) else 0
                position += 1
                measure.total += abs(star) if isinstance(star, int) else 0
            elif part:
                measure.total += int(part) if len(part) <= 9 else MAX_OUTPUT_CHARS + 1
        if field["key"] is not None and isinstance(values, Mapping):
            value = values.get(field["key"])
        else:
            value = args[position] if position < len(args) else None
            position += 1
        if measure.add(value):
            raise _too_long("a %-format")
    if measure.total > MAX_OUTPUT_CHARS:
        raise _too_long("a %-format")


def _spec_width(spec: str) -> int:
    """An upper bound of the width and precision a format spec such as ``>10.3f`` pads to."""
    runs = re.findall(r"\d+", spec)
    return sum(int(run) if len(run) <= 9 else MAX_OUTPUT_CHARS + 1 for run in runs)


class BoundedFormatting(Formatter):
    """``str.format`` with each field checked before it is built: the width and precision
    of its spec as resolved (``'{:{}}'.format(x, '1000000000')`` takes them from an
    argument), and the text built so far (``'{0}{0}'.format(s)`` doubles ``s``)."""

    _built = 0

    def vformat(self, format_string: str, args: Any, kwargs: Any) -> str:
        self._built = len(format_string)
        return super().vformat(format_string, args, kwargs)

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion is not None:  # !r, !s, !a build the value's text
            check_text_size(value, "a str.format")
        return super().convert_field(value, conversion)

    def format_field(self, value: Any, format_spec: str) -> Any:
        if TextMeasure(total=self._built + _spec_width(format_spec)).add(value):
            raise _too_long("a str.format")
        text = super().format_field(value, format_spec)
        self._built += len(text)
        return text


def check_power(base: Any, exponent: Any) -> None:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0 and abs(base) > 1:
        if exponent * math.log2(abs(base)) > MAX_INTEGER_BITS:
            raise RenderError(f"{base} ** {exponent} is too large to compute in a template")


def check_product(left: Any, right: Any) -> None:
    if isinstance(left, int) and isinstance(right, int):
        if left.bit_length() + right.bit_length() > MAX_INTEGER_BITS:
            raise RenderError("a multiplication result is too large to compute in a template")
        return
    count, sequence = (left, right) if isinstance(left, int) else (right, left)
    if isinstance(count, int) and isinstance(sequence, str | bytes | list | tuple):
        if len(sequence) * count > MAX_OUTPUT_CHARS:
            raise RenderError(
                f"repeating a value {count:,} times would pass the output limit of "
                f"{MAX_OUTPUT_CHARS:,} characters"
            )


def check_sum(left: Any, right: Any) -> None:
    if isinstance(left, str | bytes | list | tuple) and isinstance(right, str | bytes | list | tuple):
        if len(left) + len(right) > MAX_OUTPUT_CHARS:
            raise RenderError(f"adding two values would pass the output limit of "
                              f"{MAX_OUTPUT_CHARS:,} characters")


def check_replace(text: str | bytes, old: Any = "", new: Any = "", count: Any = None,
                  **_: Any) -> None:
    if not (isinstance(old, type(text)) and isinstance(new, type(text))) or len(new) <= len(old):
        return  # replace refuses other types itself; a shorter result cannot grow
    times = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        times = min(times, count)
    if len(text) + times * (len(new) - len(old)) > MAX_OUTPUT_CHARS:
        raise RenderError(f"a replacement would pass the output limit of {MAX_OUTPUT_CHARS:,} characters")


# -- methods of str (and bytes), checked by the sandbox's call() ---------------------------
# Each takes the method's owner and arguments; returns the arguments to call it with when
# it had to read them (an iterator), else None.

def _padding(name: str) -> Callable[..., None]:
    def check(text: Any, width: Any = 0, *_: Any, **__: Any) -> None:
        check_width(width, f"str.{name}")
    return check


def _expandtabs(text: str | bytes, tabsize: Any = 8, **_: Any) -> None:
    tab = "\t" if isinstance(text, str) else b"\t"
    if isinstance(tabsize, int) and len(text) + text.count(tab) * max(tabsize, 0) > MAX_OUTPUT_CHARS:
        raise _too_long(f"str.expandtabs({tabsize:,})")


def _translate(text: str | bytes, table: Any = None, *_: Any, **__: Any) -> None:
    if not isinstance(text, str):
        return  # a bytes table maps one byte to one byte
    if isinstance(table, dict) and len(table) <= 256:
        grows = sum(text.count(chr(key)) * (len(new) - 1) for key, new in table.items()
                    if isinstance(key, int) and 0 <= key < 0x110000 and isinstance(new, str))
    else:
        values = table.values() if isinstance(table, dict) else table
        if not isinstance(values, Iterable) or isinstance(values, str):
            return  # a string table maps one character to one
        longest = max((len(new) for new in values if isinstance(new, str)), default=1)
        grows = len(text) * (longest - 1)
    if len(text) + grows > MAX_OUTPUT_CHARS:
        raise _too_long("str.translate")


def _join(separator: str | bytes, iterable: Any = (), *_: Any, **__: Any) -> tuple:
    items = list(iterable)
    check_joined(items, separator, "str.join")
    return (items,)


STR_METHOD_GUARDS: dict[str, Callable[..., tuple | None]] = {
    **{name: _padding(name) for name in ("center", "ljust", "rjust", "zfill")},
    "expandtabs": _expandtabs,
    "translate": _translate,
    "join": _join,
    "replace": check_replace,
}


# -- filters: each guard takes the environment, then the filter's own arguments; returns
# the value to filter when it had to read it (an iterator), else None -------------------

def _guard_format(environment: Any, value: Any, *args: Any, **kwargs: Any) -> None:
    check_printf(str(value), kwargs or args)  # |format is printf-style


def _guard_replace(environment: Any, s: Any, old: Any = "", new: Any = "",
                   count: Any = None) -> None:
    check_replace(str(s), old, new, count)


def _guard_center(environment: Any, value: Any, width: Any = 80) -> None:
    check_width(width, "|center")


def _guard_indent(environment: Any, s: Any, width: Any = 4, first: Any = False,
                  blank: Any = False) -> None:
    text = str(s)
    pad = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
    lines = len(LINE_BREAK.findall(text)) + 1  # |indent indents each line splitlines() makes
    if len(text) + max(pad, 0) * lines > MAX_OUTPUT_CHARS:
        raise _too_long(f"|indent over {lines:,} lines")


def _guard_join(environment: Any, value: Any, d: Any = "", attribute: Any = None) -> list:
    items = list(value)
    shown = items if attribute is None else map(make_attrgetter(environment, attribute), items)
    check_joined(shown, str(d), "|join")
    return items


def _guard_tojson(environment: Any, value: Any, indent: Any = None) -> None:
    width = len(indent) if isinstance(indent, str) else indent if isinstance(indent, int) else 0
    check_text_size(value, "|tojson", indent=max(width, 0))


def _guard_pprint(environment: Any, value: Any) -> None:
    check_text_size(value, "|pprint", indent=1)


def _guard_wordwrap(environment: Any, s: Any, width: Any = 79, break_long_words: Any = True,
                    wrapstring: Any = None, break_on_hyphens: Any = True) -> None:
    if not isinstance(width, int) or width <= 0:
        return  # textwrap refuses it
    text = str(s)
    words = text.split()
    longest = max(map(len, words), default=0)
    # textwrap cuts a long word one line at a time, copying the rest of it each time.
    if break_long_words and longest > width and longest * longest // (2 * width) > MAX_QUADRATIC_COPIES:
        raise RenderError(f"|wordwrap({width}) would cut a {longest:,}-character word into "
                          f"{longest // width:,} lines, too much work for a template")
    separator = environment.newline_sequence if wrapstring is None else str(wrapstring)
    lines = len(words) + len(text) // width + 1
    if len(text) + lines * len(separator) > MAX_OUTPUT_CHARS:
        raise _too_long("|wordwrap")


def _guard_urlize(environment: Any, value: Any, trim_url_limit: Any = None, nofollow: Any = False,
                  target: Any = None, rel: Any = None, extra_schemes: Any = None) -> None:
    text = str(value)
    added = sum(len(str(extra)) for extra in (target, rel) if extra)
    if added and len(text) + (len(text.split()) + 1) * added > MAX_OUTPUT_CHARS:
        raise _too_long("|urlize")


def _guard_sum(environment: Any, iterable: Any, attribute: Any = None, start: Any = 0) -> list:
    items = list(iterable)
    if isinstance(start, list | tuple | str | bytes):
        # Adding sequences copies the running total at each item.
        values = items if attribute is None else map(make_attrgetter(environment, attribute), items)
        running, copies = len(start), 0
        for value in values:
            running += len(value) if isinstance(value, list | tuple | str | bytes) else 1
            copies += running
            if running > MAX_OUTPUT_CHARS or copies > MAX_QUADRATIC_COPIES:
                raise RenderError("|sum of these sequences would pass the output limit or "
                                  "take too much work for a template; use |join or a loop")
    return items


def _guard_batch(environment: Any, value: Any, linecount: Any = 1, fill_with: Any = None) -> None:
    if fill_with is not None and isinstance(linecount, int) and linecount > MAX_OUTPUT_CHARS:
        raise _too_long(f"|batch({linecount:,}) with a fill")


def _guard_slice(environment: Any, value: Any, slices: Any = 1, fill_with: Any = None) -> None:
    if isinstance(slices, int) and slices > MAX_RANGE:
        raise RenderError(f"|slice({slices:,}) makes more than {MAX_RANGE:,} slices")


FILTER_GUARDS: dict[str, Callable[..., Any]] = {
    "format": _guard_format,
    "replace": _guard_replace,
    "center": _guard_center,
    "indent": _guard_indent,
    "join": _guard_join,
    "tojson": _guard_tojson,
    "pprint": _guard_pprint,
    "wordwrap": _guard_wordwrap,
    "urlize": _guard_urlize,
    "sum": _guard_sum,
    "batch": _guard_batch,
    "slice": _guard_slice,
}

#: Filters that take a structure without printing it (the others turn their input into
#: text, and are refused a structure whose text would pass the output limit).
READ_STRUCTURES = frozenset({
    "attr", "batch", "count", "d", "default", "dictsort", "first", "groupby", "items", "join",
    "last", "length", "list", "map", "max", "min", "pprint", "random", "reject", "rejectattr",
    "reverse", "select", "selectattr", "slice", "sort", "sum", "tojson", "unique",
})

_LIPSUM = inspect.signature(generate_lorem_ipsum)


def bounded_lipsum(lipsum: Callable[..., Any]) -> Callable[..., Any]:
    """Jinja's ``lipsum(n, html, min, max)``, refused past a placeholder's worth of
    paragraphs and words: it loops over every word before any output limit can act."""
    def lipsum_within_bounds(*args: Any, **kwargs: Any) -> Any:
        asked = _LIPSUM.bind(*args, **kwargs)
        asked.apply_defaults()
        for name, limit in (("n", MAX_LIPSUM_PARAGRAPHS), ("min", MAX_LIPSUM_WORDS),
                            ("max", MAX_LIPSUM_WORDS)):
            count = asked.arguments[name]
            if isinstance(count, int | float) and count > limit:
                raise RenderError(f"lipsum({name}={count:,}) asks for more than {limit:,} "
                                  f"{'paragraphs' if name == 'n' else 'words a paragraph'}")
        return lipsum(*args, **kwargs)

    return lipsum_within_bounds
