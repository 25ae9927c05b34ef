"""The one header-value rule: what goes into a mail header (a subject, a From name, a
category, a header of our own) is one line (pure)."""

from __future__ import annotations

import re

#: Every character ``str.splitlines()`` breaks on (CR, LF, VT, FF, the file, group and
#: record separators, NEL, U+2028, U+2029), and NUL: some mail software reads each as
#: the end of a header line, so what follows it could pass for a header of its own.
LINE_BREAK = re.compile("[\r\n\x00\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def breaks_header(value: str) -> bool:
    """Whether ``value`` holds a line break or NUL, and so cannot be a header value."""
    return LINE_BREAK.search(value) is not None
