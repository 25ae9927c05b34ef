"""Tests for sandboxed template rendering and template checks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from unittest import mock

import html_text
import lxml.etree
import pytest
from hypothesis import given
from hypothesis import strategies as st

from outreach_actors.domain.rendering import (
    MAX_OUTPUT_CHARS,
    MAX_TEMPLATE_BYTES,
    RenderedEmail,
    RenderError,
    TemplateRenderer,
    html_to_text,
)
from outreach_actors.domain.rendering import text as text_part

EXAMPLE_TEMPLATES = Path(__file__).resolve().parents[1] / "templates"


def make_context(**contact: Any) -> dict[str, Any]:
    return {
        "contact": {"email": "ada@example.com", "timezone": "Europe/London", **contact},
        "tenant": {"id": 7, "name": "Acme"},
        "plan": {"name": "onboarding", "version": 3},
        "node": {"name": "intro"},
        "unsubscribe_url": "https://example.com/unsubscribe/tok?a=1&b=2",
    }


@pytest.fixture
def templates_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "templates"
    directory.mkdir()
    return directory


@pytest.fixture
def renderer(templates_dir: Path) -> TemplateRenderer:
    return TemplateRenderer(templates_dir)


def render_body(renderer: TemplateRenderer, body: str, **contact: Any) -> RenderedEmail:
    return renderer.render_email(
        subject="Hello", template=None, body=body, context=make_context(**contact)
    )


# -- escaping and the text part ---------------------------------------------------------


def test_contact_fields_are_escaped_in_inline_html(renderer: TemplateRenderer) -> None:
    email = render_body(
        renderer, "<p>Hi {{ contact.first_name }}</p>", first_name="<script>x</script>"
    )

    assert "&lt;script&gt;x&lt;/script&gt;" in email.html
    assert "<script>" not in email.html


def test_contact_fields_are_escaped_in_template_files_whatever_the_extension(
    renderer: TemplateRenderer, templates_dir: Path
) -> None:
    # Given a body file without an .html extension: bodies are always HTML.
    (templates_dir / "note.txt").write_text("<p>{{ contact.first_name }}</p>")

    email = renderer.render_email(
        subject="Hi",
        template="note.txt",
        body=None,
        context=make_context(first_name='<img src=x onerror="alert(1)">'),
    )

    assert email.html == "<p>&lt;img src=x onerror=&#34;alert(1)&#34;&gt;</p>"


def test_subject_is_not_escaped(renderer: TemplateRenderer) -> None:
    email = renderer.render_email(
        subject="Welcome, {{ contact.first_name }}",
        template=None,
        body="<p>x</p>",
        context=make_context(first_name="Tom & Jerry <3"),
    )

    assert email.subject == "Welcome, Tom & Jerry <3"


@pytest.mark.parametrize(
    "first_name", ["Ada\r\nBcc: all@example.com", "Ada\nX", "Ada\rX", "Ada\x00X", "Ada\u2028X"]
)
def test_subject_line_breaks_from_contact_fields_are_refused(
    renderer: TemplateRenderer, first_name: str
) -> None:
    with pytest.raises(RenderError, match="line break") as caught:
        renderer.render_email(
            subject="Welcome, {{ contact.first_name }}!",
            template=None,
            body="<p>x</p>",
            context=make_context(first_name=first_name),
        )

    assert (caught.value.node, caught.value.field) == ("intro", "subject")
    assert str(caught.value).startswith("node 'intro', subject: ")


def test_subject_surrounding_whitespace_is_trimmed(renderer: TemplateRenderer) -> None:
    email = renderer.render_email(
        subject="  Hi {{ contact.first_name }}\n",
        template=None,
        body="<p>x</p>",
        context=make_context(first_name="Ada\r\n"),
    )

    assert email.subject == "Hi Ada"


def test_subject_that_renders_empty_is_refused(renderer: TemplateRenderer) -> None:
    with pytest.raises(RenderError, match="subject is empty"):
        renderer.render_email(
            subject="{{ contact.first_name }}",
            template=None,
            body="<p>x</p>",
            context=make_context(first_name=""),
        )


def test_text_alternative_keeps_links_as_text_and_url(renderer: TemplateRenderer) -> None:
    email = render_body(
        renderer,
        '<table><tr><td align="center"><h1>Hi {{ contact.first_name }}</h1>'
        '<p>Read <a href="https://example.com/guide?a=1&amp;b=2">the guide</a> today.</p>'
        '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p></td></tr></table>',
        first_name="Ada & Bob",
    )

    assert "Hi Ada & Bob" in email.text
    assert "[the guide](https://example.com/guide?a=1&b=2)" in email.text
    assert "[Unsubscribe](https://example.com/unsubscribe/tok?a=1&b=2)" in email.text
    assert "<" not in email.text
    assert all(line == line.strip() for line in email.text.splitlines())


def test_text_alternative_reads_as_the_html_does() -> None:
    text = html_to_text(
        "<html><head><title>Newsletter</title><style>p {color: red}</style></head><body>"
        '<div style="display: none; max-height: 0">Preheader teaser</div>'
        "<h1>Hello</h1><p>First line<br>second line</p>"
        "<ul><li>apples</li><li>pears</li></ul>"
        '<ol start="3"><li>three</li><li>four</li></ol>'
        "<table><tr><td>Plan</td><td>Price</td></tr><tr><td>Pro</td><td>&euro;9</td></tr></table>"
        '<p hidden>tracking</p><script>alert(1)</script>'
        '<p><a href="https://example.com/x"><b>Bold</b> link</a></p>'
        "</body></html>"
    )

    assert text.splitlines() == [
        "Hello", "", "First line", "second line", "", "* apples", "* pears", "",
        "3. three", "4. four", "", "Plan Price", "Pro €9", "", "[Bold link](https://example.com/x)",
    ]


def test_text_alternative_of_what_email_layouts_do() -> None:
    text = html_to_text(
        '<span style="visibility:hidden; mso-hide:all">Preheader two</span>'
        '<div style="color:#fff;opacity:0;">Preheader three</div>'
        '<div style="opacity:0.5">Half visible</div>'
        '<p><a href="https://acme.test/p"><img src="p.png" alt="Product  photo"></a></p>'
        '<p>See <a href="https://acme.test/x">https://acme.test/x</a>, '
        'or write to <a href="mailto:hi@acme.test">hi@acme.test</a></p>'
    )

    assert text.splitlines() == [
        "Half visible", "", "[Product photo](https://acme.test/p)", "",
        "See https://acme.test/x, or write to hi@acme.test",
    ]


@pytest.mark.parametrize(("html", "text"), [
    ("", ""),
    ("   ", ""),
    ("no markup at all", "no markup at all"),
    ("<p>", ""),
    ("</div></div>", ""),
    ("<<>>", "<<>>"),
    ("a < b & c > d", "a < b & c > d"),
    ('<html style="display:none"><body><p>hi</p></body></html>', "hi"),
    ("<ul><li><ul><li>nested</li></ul></li></ul>", "*\n\n* nested"),
    ('<a href="https://example.com/x"></a>', "[](https://example.com/x)"),
    ('<ol start="--3"><li>a</li></ol><ol start=" 7 "><li>b</li></ol>', "1. a\n\n7. b"),
    ("<p>lone \ud800 surrogate</p>", "lone ? surrogate"),
])
def test_text_alternative_of_odd_html(html: str, text: str) -> None:
    assert html_to_text(html) == text


MARKUP = st.lists(
    st.sampled_from(["<p>", "</p>", "<a href='u'>", "</a>", "<li>", "<ol start='x'>", "<br>",
                     "<head>", "<div style='display:none'>", "<table><tr><td>", "&amp;", "<"])
    | st.text(max_size=8)
).map("".join)


@given(MARKUP)
def test_any_html_has_a_text_part(html: str) -> None:
    text = html_to_text(html)

    assert isinstance(text, str)
    assert all(line == line.strip() for line in text.splitlines())


CLEANED_MARKUP = st.lists(
    st.sampled_from([
        "<p>", "</p>", "<div>", "</div>", "<b>", "</b>", "<li>", "<ol start='3'>", "<br>",
        "<a href='u'>", "</a>", "<head>", "<body>", "<html>", "<title>", "<textarea>", "<img>",
        "<!-- note -->", "<!--[if mso]><p>mso</p><![endif]-->", "<?pi x?>",
        "<script>", "</script>", "<style>", "</style>", "<link rel=x>", "<meta name=x>",
        "<iframe>", "</iframe>", "<object>", "</object>", "<embed>", "<param>", "<applet>",
        "</applet>", "<frameset>", "<frame>", "<noframes>", "</noframes>", "<layer>",
        "<p hidden>", "<span style='display:none'>", "</span>", "&amp;", "<",
    ])
    | st.text(max_size=8)
).map("".join)


def text_through_the_cleaner(html: str) -> str:
    """html_to_text as it was before it skipped lxml's Cleaner: every tree cleaned."""
    nothing, everything = lxml.etree.XPath("/.."), lxml.etree.XPath("//node()")
    with mock.patch.object(text_part, "_COMMENTS", nothing), \
            mock.patch.object(text_part, "_CLEANED_ELEMENTS", everything):
        return html_to_text(html)


@given(CLEANED_MARKUP)
def test_text_without_the_cleaner_is_the_text_with_it(html: str) -> None:
    """html_to_text skips the Cleaner when it would change nothing the text shows."""
    assert html_to_text(html) == text_through_the_cleaner(html)


def test_the_cleaner_is_skipped_for_a_plain_email() -> None:
    html = "<html><head><style>p {}</style></head><body><!-- x --><p>Hi</p></body></html>"
    with mock.patch.object(html_text, "extract_text", side_effect=AssertionError("cleaned")):
        assert html_to_text(html) == "Hi"


# -- missing values and runtime errors --------------------------------------------------


def test_missing_contact_field_is_an_error_naming_node_field_and_line(
    renderer: TemplateRenderer,
) -> None:
    with pytest.raises(RenderError) as caught:
        render_body(renderer, "<p>Hi</p>\n<p>{{ contact.company }}</p>")

    error = caught.value
    assert (error.node, error.field, error.line) == ("intro", "body", 2)
    assert "'company'" in str(error)
    assert "default(" in str(error)


def test_default_filter_covers_missing_empty_and_null_fields(renderer: TemplateRenderer) -> None:
    body = "{{ contact.first_name | default('there', true) }}"

    assert render_body(renderer, body).html == "there"
    assert render_body(renderer, body, first_name="").html == "there"
    assert render_body(renderer, body, first_name=None).html == "there"
    assert render_body(renderer, body, first_name="Ada").html == "Ada"


def test_is_defined_tests_a_field_some_contacts_lack(renderer: TemplateRenderer) -> None:
    body = "{% if contact.company is defined %}at {{ contact.company }}{% else %}-{% endif %}"

    assert render_body(renderer, body).html == "-"
    assert render_body(renderer, body, company="Acme & Co").html == "at Acme &amp; Co"


def test_null_field_renders_empty_not_none(renderer: TemplateRenderer) -> None:
    assert render_body(renderer, "[{{ contact.first_name }}]", first_name=None).html == "[]"


def test_python_errors_in_template_code_become_render_errors_with_the_line(
    renderer: TemplateRenderer,
) -> None:
    with pytest.raises(RenderError, match="division by zero") as caught:
        render_body(renderer, "<p>a</p>\n\n{{ 1 / 0 }}")

    assert caught.value.line == 3


def test_missing_included_template_is_a_render_error(renderer: TemplateRenderer) -> None:
    with pytest.raises(RenderError, match="'footer.html' not found"):
        render_body(renderer, "{% include 'footer.html' %}")


def test_an_error_in_an_included_template_names_that_template(
    renderer: TemplateRenderer, templates_dir: Path
) -> None:
    (templates_dir / "intro.html").write_text("<p>Hi</p>\n{% include 'parts/footer.j2' %}")
    (templates_dir / "parts").mkdir()
    (templates_dir / "parts" / "footer.j2").write_text("<p>\n{{ contact.company }}\n</p>")
    with pytest.raises(RenderError) as error:
        renderer.render_email(subject="Hi", template="intro.html", body=None,
                              context=make_context(first_name="Ada"))
    assert str(error.value).startswith(
        "node 'intro', template, in parts/footer.j2, line 2: 'dict object' has no attribute 'company'")
    (templates_dir / "intro.html").write_text("<p>Hi</p>\n{{ contact.company }}")
    with pytest.raises(RenderError, match="^node 'intro', template, line 2: 'dict object'"):
        renderer.render_email(subject="Hi", template="intro.html", body=None,
                              context=make_context(first_name="Ada"))


def test_the_fallback_hint_is_given_only_for_a_missing_name_or_field(renderer: TemplateRenderer) -> None:
    with pytest.raises(RenderError, match="give a fallback such as"):
        render_body(renderer, "{{ contact.nickname.upper() }}")
    with pytest.raises(RenderError) as error:
        render_body(renderer, "{{ 'text'.strftime('%Y') }}")
    assert "has no attribute 'strftime'" in str(error.value) and "fallback" not in str(error.value)


# -- the sandbox ------------------------------------------------------------------------

PRIVATE_ATTRIBUTE_ESCAPES = [
    "{{ ''.__class__.__mro__ }}",
    "{{ contact.__dict__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ contact['__class__'] }}",
    "{{ self._TemplateReference__context }}",
]
# The immutable sandbox also refuses methods that modify the context.
SANDBOX_ESCAPES = [
    *PRIVATE_ATTRIBUTE_ESCAPES,
    "{{ contact.update({'email': 'evil@example.com'}) }}",
]


@pytest.mark.parametrize("body", SANDBOX_ESCAPES)
def test_sandbox_escapes_fail_cleanly_at_render_time(renderer: TemplateRenderer, body: str) -> None:
    with pytest.raises(RenderError) as caught:
        render_body(renderer, body)

    assert (caught.value.node, caught.value.field) == ("intro", "body")


@pytest.mark.parametrize("body", PRIVATE_ATTRIBUTE_ESCAPES)
def test_private_attributes_are_reported_by_check_template(
    renderer: TemplateRenderer, body: str
) -> None:
    problems = renderer.check_template(subject="Hi", template=None, body=body)

    assert problems
    assert all(p.startswith("line 1: '_") and "starting with '_'" in p for p in problems)


def test_huge_range_fails_cleanly(renderer: TemplateRenderer) -> None:
    with pytest.raises(RenderError, match="MAX_RANGE"):
        render_body(renderer, "{% for i in range(10**9) %}x{% endfor %}")


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    "body",
    [
        "{{ 10 ** (10 ** 10) }}",
        "{{ 10**10**10**10**10 }}",  # Jinja's ** groups left: (((10**10)**10)**10)**10
        "{{ 'x' * 10**10 }}",
        "{{ [1, 2] * 10**9 }}",
        "{{ (10**1000) * (10**1000) * (10**1000) }}",
    ],
)
def test_pathological_arithmetic_fails_fast(renderer: TemplateRenderer, body: str) -> None:
    started = time.monotonic()

    with pytest.raises(RenderError, match="too large|output limit"):
        render_body(renderer, body)
    # Checking it must not hang either: Jinja would fold these constants at compile time.
    assert renderer.check_template(subject="Hi", template=None, body=body) == []

    assert time.monotonic() - started < 2


def test_ordinary_arithmetic_still_works(renderer: TemplateRenderer) -> None:
    assert render_body(renderer, "{{ 2 ** 10 }} {{ 'ab' * 3 }} {{ 6 * 7 }} {{ 2 ** -1 }}").html == (
        "1024 ababab 42 0.5"
    )


def test_output_over_the_limit_is_refused(renderer: TemplateRenderer) -> None:
    loops = MAX_OUTPUT_CHARS // 1000 + 1
    body = "{% for i in range(" + str(loops) + ") %}{{ 'x' * 1000 }}{% endfor %}"

    with pytest.raises(RenderError, match="limit of 2,097,152 characters"):
        render_body(renderer, body)
    assert (
        len(render_body(renderer, body.replace(str(loops), str(loops - 1))).html) < MAX_OUTPUT_CHARS
    )


# -- template files and check_template --------------------------------------------------


def test_check_template_accepts_a_good_template(
    renderer: TemplateRenderer, templates_dir: Path
) -> None:
    (templates_dir / "ok.html.j2").write_text(
        "{% for x in [1] %}{{ loop.index }}{% endfor %}{% set n = 2 %}{{ n }}"
        "{{ contact.email }} {{ tenant.name }} {{ plan.name }} {{ node.name }} {{ unsubscribe_url }}"
        "{{ range(3) | join(',') }}"
    )

    assert (
        renderer.check_template(
            subject="Hi {{ contact.first_name }}", template="ok.html.j2", body=None
        )
        == []
    )


def test_check_template_reports_a_missing_file(
    renderer: TemplateRenderer, templates_dir: Path
) -> None:
    assert renderer.check_template(subject="Hi", template="nope.html.j2", body=None) == [
        f"template 'nope.html.j2' not found in {templates_dir.resolve()}"
    ]


def test_check_template_reports_syntax_errors_with_the_line(
    renderer: TemplateRenderer, templates_dir: Path
) -> None:
    (templates_dir / "broken.html.j2").write_text(
        "<p>one</p>\n<p>two</p>\n{% if contact.email %}\n"
    )

    [problem] = renderer.check_template(subject="Hi", template="broken.html.j2", body=None)

    assert problem.startswith("line 3: Unexpected end of template")
    assert "endif" in problem


def test_check_template_reports_unknown_filters(renderer: TemplateRenderer) -> None:
    assert renderer.check_template(
        subject="Hi", template=None, body="\n{{ contact.email | shout }}"
    ) == ["line 2: No filter named 'shout'."]


def test_check_template_reports_subject_problems_as_subject(renderer: TemplateRenderer) -> None:
    problems = renderer.check_template(
        subject="Hi {{ contact.first_name", template=None, body="<p>x</p>"
    )

    assert len(problems) == 1
    assert problems[0].startswith("subject: line 1: unexpected end of template")
    assert renderer.check_template(subject="Hi\nthere", template=None, body="x") == [
        "subject: contains a line break; a subject must be one line"
    ]
    assert renderer.check_template(subject="  ", template=None, body="x") == ["subject: is empty"]


def test_check_template_reports_unknown_variables(renderer: TemplateRenderer) -> None:
    assert renderer.check_template(
        subject="Hi {{ first_name }}", template=None, body="<p>\n{{ contcat.email }}</p>"
    ) == [
        "subject: line 1: unknown variable 'first_name'; templates get contact, node, plan, tenant, unsubscribe_url",
        "line 2: unknown variable 'contcat'; templates get contact, node, plan, tenant, unsubscribe_url",
    ]


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "sub/../../outside.html"])
def test_paths_outside_the_templates_dir_are_refused(
    renderer: TemplateRenderer, templates_dir: Path, name: str
) -> None:
    (templates_dir / "sub").mkdir()
    (templates_dir.parent / "outside.html").write_text("secret")

    [problem] = renderer.check_template(subject="Hi", template=name, body=None)
    assert "points outside the templates directory" in problem
    with pytest.raises(RenderError, match="points outside the templates directory"):
        renderer.render_email(subject="Hi", template=name, body=None, context=make_context())
    with pytest.raises(RenderError, match="points outside the templates directory"):
        render_body(renderer, "{% include '" + name + "' %}")


def test_symlinks_out_of_the_templates_dir_are_refused(
    renderer: TemplateRenderer, templates_dir: Path
) -> None:
    secret = templates_dir.parent / "secret.txt"
    secret.write_text("password")
    (templates_dir / "link.html").symlink_to(secret)

    [problem] = renderer.check_template(subject="Hi", template="link.html", body=None)
    assert "points outside the templates directory" in problem
    with pytest.raises(RenderError, match="points outside"):
        renderer.render_email(subject="Hi", template="link.html", body=None, context=make_context())


def test_templates_over_the_size_limit_are_refused(
    renderer: TemplateRenderer, templates_dir: Path
) -> None:
    (templates_dir / "big.html").write_text("x" * (MAX_TEMPLATE_BYTES + 1))
    (templates_dir / "fits.html").write_text("x" * MAX_TEMPLATE_BYTES)

    [problem] = renderer.check_template(subject="Hi", template="big.html", body=None)
    assert problem.startswith("template 'big.html' is too large: 1,048,577 bytes")
    assert "1 MiB" in problem
    assert renderer.check_template(subject="Hi", template="fits.html", body=None) == []
    with pytest.raises(RenderError, match="too large"):
        renderer.render_email(subject="Hi", template="big.html", body=None, context=make_context())
    [inline] = renderer.check_template(subject="Hi", template=None, body="é" * MAX_TEMPLATE_BYTES)
    assert inline.startswith("too large: 2,097,152 bytes")


def test_check_template_wants_exactly_one_of_template_and_body(
    renderer: TemplateRenderer, templates_dir: Path
) -> None:
    (templates_dir / "a.html").write_text("a")
    expected = [
        "give exactly one of template (a file in the templates directory) or body (inline HTML)"
    ]

    assert renderer.check_template(subject="Hi", template=None, body=None) == expected
    assert renderer.check_template(subject="Hi", template="a.html", body="b") == expected
    with pytest.raises(RenderError, match="exactly one"):
        renderer.render_email(subject="Hi", template="a.html", body="b", context=make_context())


def test_check_template_follows_includes_and_extends(
    renderer: TemplateRenderer, templates_dir: Path
) -> None:
    (templates_dir / "base.html").write_text(
        "<body>\n{% block content %}{% endblock %}\n{{ x.__class__ }}</body>"
    )
    (templates_dir / "child.html").write_text(
        "{% extends 'base.html' %}{% block content %}{% include 'gone.html' %}{% endblock %}"
    )

    assert renderer.check_template(subject="Hi", template="child.html", body=None) == [
        "base.html: line 3: '__class__' is not allowed: templates cannot read names starting with '_'",
        f"gone.html: template 'gone.html' not found in {templates_dir.resolve()}",
    ]


def test_check_template_accepts_what_renders_in_a_template_that_extends_another(
    renderer: TemplateRenderer, templates_dir: Path
) -> None:
    (templates_dir / "base.html").write_text("<body>{% block content %}{% endblock %}</body>")
    (templates_dir / "macros.j2").write_text(
        "{% macro button(url, label) %}<a href='{{ url }}'>{{ label }}</a>{% endmacro %}")
    (templates_dir / "footer.j2").write_text("<p>Bye {{ contact.first_name }}</p>")
    (templates_dir / "child.html").write_text(
        "{% extends 'base.html' %}{% import 'macros.j2' as m %}"
        "{% from 'macros.j2' import button as b %}{% set cta = 'Go' %}"
        "{% block content %}{{ m.button('/a', cta) }}{{ b('/b', 'Or') }}"
        "{% include 'optional.j2' ignore missing %}{% include ['custom.j2', 'footer.j2'] %}"
        "{% endblock %}")

    # Each of these was refused (unknown variable, template not found), yet renders.
    assert renderer.check_template(subject="Hi", template="child.html", body=None) == []
    rendered = renderer.render_email(subject="Hi", template="child.html", body=None,
                                     context=make_context(first_name="Ada"))
    assert rendered.html == "<body><a href='/a'>Go</a><a href='/b'>Or</a><p>Bye Ada</p></body>"


def test_check_template_reports_a_list_of_includes_none_of_which_exists(
    renderer: TemplateRenderer, templates_dir: Path
) -> None:
    (templates_dir / "child.html").write_text(
        "{% include ['custom.j2', 'fallback.j2'] %}{{ cta }}{% include 'optional.j2' ignore missing %}")

    assert renderer.check_template(subject="Hi", template="child.html", body=None) == [
        "line 1: unknown variable 'cta'; templates get contact, node, plan, tenant, unsubscribe_url",
        f"custom.j2: template 'custom.j2' not found in {templates_dir.resolve()}",
    ]


def test_an_unsubscribe_link_is_found_through_extends_and_includes(
    renderer: TemplateRenderer, templates_dir: Path
) -> None:
    (templates_dir / "base.html").write_text("{% block content %}{% endblock %}{% include 'f.j2' %}")
    (templates_dir / "f.j2").write_text("<a href='{{ unsubscribe_url }}'>Unsubscribe</a>")
    (templates_dir / "child.html").write_text("{% extends 'base.html' %}{% block content %}Hi{% endblock %}")
    (templates_dir / "bare.html").write_text("{% include 'loop.html' %}Hi")
    (templates_dir / "loop.html").write_text("{% include 'bare.html' %}")

    assert renderer.shows_unsubscribe_link(template="child.html", body=None)
    assert renderer.shows_unsubscribe_link(template=None, body="<a href='{{ unsubscribe_url }}'>x</a>")
    assert not renderer.shows_unsubscribe_link(template=None, body="<p>{{ contact.email }}</p>")
    assert not renderer.shows_unsubscribe_link(template="bare.html", body=None)  # a cycle ends
    assert not renderer.shows_unsubscribe_link(template="missing.html", body=None)


def test_check_template_survives_include_cycles(
    renderer: TemplateRenderer, templates_dir: Path
) -> None:
    (templates_dir / "a.html").write_text("{% if false %}{% include 'b.html' %}{% endif %}")
    (templates_dir / "b.html").write_text("{% include 'a.html' %}")

    assert renderer.check_template(subject="Hi", template="a.html", body=None) == []


def test_non_utf8_template_is_reported(renderer: TemplateRenderer, templates_dir: Path) -> None:
    (templates_dir / "latin1.html").write_bytes("café".encode("latin-1"))

    assert renderer.check_template(subject="Hi", template="latin1.html", body=None) == [
        "template 'latin1.html' is not UTF-8 text"
    ]


# -- the example templates --------------------------------------------------------------

DEMO_NODES = [
    (
        "intro",
        "Welcome, {{ contact.first_name }}",
        "intro.html.j2",
        "https://example.com/getting-started",
    ),
    ("bump", "Did you see this?", "bump.html.j2", "https://example.com/getting-started"),
    ("thanks", "Thanks for reading", "thanks.html.j2", "https://example.com/docs"),
]


@pytest.mark.parametrize(("node", "subject", "template", "link"), DEMO_NODES)
def test_example_templates_check_and_render(
    node: str, subject: str, template: str, link: str
) -> None:
    renderer = TemplateRenderer(EXAMPLE_TEMPLATES)
    context = {**make_context(first_name="Ada <Admin>"), "node": {"name": node}}

    assert renderer.check_template(subject=subject, template=template, body=None) == []
    email = renderer.render_email(subject=subject, template=template, body=None, context=context)

    assert email.subject == subject.replace("{{ contact.first_name }}", "Ada <Admin>")
    assert "Ada &lt;Admin&gt;" in email.html
    assert f'href="{link}"' in email.html
    assert 'href="https://example.com/unsubscribe/tok?a=1&amp;b=2"' in email.html
    assert link in email.text
    assert "(https://example.com/unsubscribe/tok?a=1&b=2)" in email.text
    assert "Acme" in email.text


@pytest.mark.parametrize("template", [t for _, _, t, _ in DEMO_NODES])
def test_example_templates_greet_contacts_without_a_first_name(template: str) -> None:
    renderer = TemplateRenderer(EXAMPLE_TEMPLATES)

    email = renderer.render_email(
        subject="Hi", template=template, body=None, context=make_context()
    )

    assert "there" in email.text
