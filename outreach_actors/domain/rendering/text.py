"""The plain-text part of an email, derived from its HTML."""

from __future__ import annotations

import re
from typing import Any

import html_text
import lxml.etree

_BLANK_LINES = re.compile(r"\n{3,}")

_NOT_XML_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
# What lxml's Cleaner, which html-text's extract_text runs first, would change in a
# way the text shows: comments and processing instructions, which it drops as done
# here, and the elements it drops with or without their content. A tree with none of
# these is laid out without the Cleaner, the same text for less CPU: the Cleaner is a
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
_LIST_START = re.compile(r"\s*(-?\d{1,9})\s*")


def html_to_text(html: str) -> str:
    """Return a plain-text version of an HTML email, links kept as ``[text](url)``.

    html-text (lxml underneath) lays out the blocks; the links, list markers and
    hidden parts are settled on the tree first. Not a table-aware converter: email
    layouts use tables only to place their content, which the text lays out flush left.
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
    numbers = _item_numbers(tree)
    for item in _LIST_ITEMS(tree):
        number = numbers.get(item)
        item.text = ("* " if number is None else f"{number}. ") + (item.text or "")
    for comment in _COMMENTS(tree):
        if comment.getparent() is not None:
            comment.drop_tree()
    nothing_to_clean = not _CLEANED_ELEMENTS(tree)
    text = html_text.etree_to_text(tree) if nothing_to_clean else html_text.extract_text(tree)
    lines = "\n".join(line.strip() for line in text.splitlines())
    return _BLANK_LINES.sub("\n\n", lines).strip()


def _item_numbers(tree: Any) -> dict[Any, int]:
    """The number of each item of a numbered list (``<ol start>`` counts from there); the
    other items are bulleted. One pass over each list's children: linear in the HTML."""
    numbers = {}
    for numbered in tree.iter("ol"):
        start = _LIST_START.fullmatch(numbered.get("start", "1"))
        number = int(start.group(1)) if start else 1
        for child in numbered:
            if child.tag == "li":
                numbers[child] = number
                number += 1
    return numbers


def _as_markdown_link(link: Any) -> None:
    """Write ``<a href="url"><b>a</b> text</a>`` as ``[a text](url)`` in the tree; a
    linked image by its alt text, a link that reads as its own URL as the URL alone."""
    href = link.get("href")
    label = " ".join(link.text_content().split()) or " ".join(
        alt for image in link.iter("img") if (alt := " ".join((image.get("alt") or "").split())))
    for child in list(link):
        link.remove(child)  # the label holds their text, and their tails
    link.text = label if label in {href, href.removeprefix("mailto:")} else f"[{label}]({href})"


