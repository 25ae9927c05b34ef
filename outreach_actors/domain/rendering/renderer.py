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
from collections.abc import Callable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import (
    StrictUndefined,
    Template,
    TemplateError,
    TemplateNotFound,
    TemplateSyntaxError,
    UndefinedError,
    meta,
    nodes,
)

from outreach_actors.domain.headers import breaks_header
from outreach_actors.domain.rendering.limits import MAX_OUTPUT_CHARS, RenderError, loop_turns
from outreach_actors.domain.rendering.sandbox import (
    GuardedLoader,
    SandboxedEnvironment,
    finalize_output,
    source_too_large,
)
from outreach_actors.domain.rendering.text import html_to_text

CONTEXT_NAMES = frozenset({"contact", "tenant", "plan", "node", "unsubscribe_url"})

@dataclass(frozen=True, slots=True)
class RenderedEmail:
    """The rendered parts of one email."""

    subject: str
    html: str
    text: str


class TemplateRenderer:
    """Renders and checks email templates kept in ``templates_dir``."""

    def __init__(self, templates_dir: Path) -> None:
        self.templates_dir = Path(templates_dir).resolve()
        loader = GuardedLoader(self.templates_dir)
        options: dict[str, Any] = {
            "loader": loader,
            "undefined": StrictUndefined,
            "finalize": finalize_output,
        }
        # Every body is HTML (the text part is derived from it), so a body is always
        # escaped, whatever its file extension; a subject is a header, never HTML.
        self._html_env = SandboxedEnvironment(autoescape=True, **options)
        self._subject_env = SandboxedEnvironment(autoescape=False, **options)
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
        on_part: Callable[[str], None] | None = None,
    ) -> RenderedEmail:
        """Render one email, or raise RenderError naming the node, field and line at fault.

        ``on_part`` is told each part as its render starts (``subject``, ``template`` or
        ``body``, then ``text part``): what a render process that dies names.
        """
        node = node_of(context)
        started = on_part or _ignore
        if (template is None) == (body is None):
            raise RenderError("give exactly one of template or body", node=node)
        # Files are size-checked by the loader; inline sources here, before compiling them.
        for field, source in (("subject", subject), ("body", body)):
            if source is not None and (too_large := source_too_large(source)):
                raise RenderError(too_large, node=node, field=field)
        started("subject")
        rendered_subject = self._render(
            lambda: self._compile_subject(subject), context, node=node, field="subject"
        ).strip()
        if breaks_header(rendered_subject):
            raise RenderError(
                "the rendered subject contains a line break or NUL (from a template value "
                "or a contact field); a subject must be one line",
                node=node,
                field="subject",
            )
        if not rendered_subject:
            raise RenderError("the rendered subject is empty", node=node, field="subject")
        started("template" if template is not None else "body")
        if template is not None:
            html = self._render(
                lambda: self._html_env.get_template(template), context, node=node, field="template",
                own=template,
            )
        else:
            html = self._render(lambda: self._compile_html(body), context, node=node, field="body")
        started("text part")
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
        budget = loop_turns.set([0])
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
            loop_turns.reset(budget)

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
        if breaks_header(subject.strip()):
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
        env: SandboxedEnvironment,
        source: str,
        *,
        seen: set[str],
        nested: bool,
        name: str | None = None,
    ) -> list[str]:
        if too_large := source_too_large(source):
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

    def check_bounds(self, *, subject: str, template: str | None, body: str | None) -> list[str]:
        """What the subject and the template or body compute from constants alone (what
        Jinja would fold at compile time) that passes a render's bound, and so fails
        every render that reaches it; in check_template's form.

        This runs template code: call it only where a render's bounds hold (the render
        processes of ``isolation`` do).
        """
        problems = [f"subject: {problem}"
                    for problem in _constant_problems(self._subject_env, subject)]
        source = body
        if template is not None:
            try:
                source = self._html_env.loader.get_source(self._html_env, template)[0]
            except Exception:
                source = None  # check_template says why
        if source is not None:
            problems += _constant_problems(self._html_env, source)
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


def _constant_problems(env: SandboxedEnvironment, source: str) -> list[str]:
    """The expressions of ``source`` that name no variable, rendered together (one
    template, so that checking a large one stays cheap): the first that passes a bound,
    with its line."""
    try:
        ast = env.parse(source)
    except Exception:
        return []  # check_template reports it
    outputs = [nodes.Output([expression], lineno=expression.lineno) for expression in
               sorted(_constant_expressions(ast), key=lambda expression: expression.lineno)]
    if not outputs:
        return []
    budget = loop_turns.set([0])
    try:
        _join_limited(env.from_string(nodes.Template(outputs, lineno=1)).generate({}))
    except (RenderError, MemoryError) as exc:  # a bound: the guards', the budget's, memory
        line = _template_place(exc, "", Path())[1]
        reason = exc.reason if isinstance(exc, RenderError) else (
            "needs more memory than a render may take")
        return [f"line {line}: {reason}" if line else reason]
    except Exception:
        return []  # a fault (1/0, say), which the render reports: it hides the rest
    finally:
        loop_turns.reset(budget)
    return []


# Expressions that cannot stand on their own in ``{{ }}``, or compute nothing.
_NOT_STANDALONE = (nodes.Const, nodes.TemplateData, nodes.Slice, nodes.ContextReference,
                   nodes.DerivedContextReference, nodes.EnvironmentAttribute,
                   nodes.ExtensionAttribute, nodes.ImportedName, nodes.InternalName)


def _constant_expressions(ast: nodes.Template) -> Iterator[nodes.Expr]:
    """The largest expressions that name no variable (nor global, filter block or
    macro), and so compute the same at every render."""
    pending: list[nodes.Node] = [ast]
    while pending:
        node = pending.pop()
        if (isinstance(node, nodes.Expr) and not isinstance(node, _NOT_STANDALONE)
                and not isinstance(node, nodes.Name)
                and not (isinstance(node, nodes.Filter) and node.node is None)
                and next(node.find_all(nodes.Name), None) is None
                and not any(isinstance(found, nodes.Filter) and found.node is None
                            for found in node.find_all(nodes.Filter))):
            yield node
        else:
            pending.extend(node.iter_child_nodes())


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


def node_of(context: Mapping[str, Any]) -> str | None:
    """The name of the node a render context is for."""
    node = context.get("node")
    return node.get("name") if isinstance(node, Mapping) else None


def _ignore(part: str) -> None:
    pass


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
