"""Bad input, part 1: plans and templates. Anything gets a clear error, never an exception.

Property-based (hypothesis): near-valid plans made by mutating a valid one, plans built
from random parts, arbitrary YAML/JSON text, and template expressions built from the
names sandbox escapes use. The webhook endpoint is fuzzed in test_bad_input_webhooks.py,
header injection through the delivery path in test_bad_input_headers.py.

Examples per property are small so the three files run in well under a minute; run more
with ``BAD_INPUT_FUZZ_SCALE=20 pytest tests/test_bad_input*.py``.
"""

from __future__ import annotations

import copy
import json
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from outreach_actors.cli.commands import main
from outreach_actors.domain.plans import (
    EVENT_ALIASES,
    MAX_NODES,
    MAX_PLAN_BYTES,
    PlanError,
    PlanSpec,
    load_plan_text,
    plan_from_definition,
    validate_plan,
)
from outreach_actors.domain.rendering import (
    MAX_TEMPLATE_BYTES,
    RenderError,
    TemplateRenderer,
)

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"
RENDERER = TemplateRenderer(TEMPLATES)
SCALE = int(os.environ.get("BAD_INPUT_FUZZ_SCALE", "1"))


def fuzz(examples: int) -> settings:
    """Hypothesis settings for these files: no deadline (CI machines stall), fixtures reused.

    Function-scoped fixtures are shared by the examples of one test on purpose: each
    example checks what it changed (row counts before and after), not absolute state.
    """
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )


def nested(depth: int, leaf: Any = 1) -> Any:
    """``[[[...leaf...]]]``, built without recursion."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def alias_bomb(levels: int) -> list:
    """What a YAML alias bomb loads to: 9**levels leaves, each list shared 9 times."""
    value: list = ["lol"] * 9
    for _ in range(levels):
        value = [value] * 9
    return value


def yaml_alias_bomb(levels: int = 9) -> str:
    lines = ['  a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "junk:\n" + "\n".join(lines) + "\n"


# -- plans: strategies -------------------------------------------------------------------

VALID_PLAN: dict[str, Any] = {
    "name": "fuzz",
    "start": "intro",
    "send_window": {"days": ["mon", "tue", "wed"], "start": "09:00", "end": "17:00",
                    "timezone": "Europe/Paris"},
    "categories": ["fuzz"],
    "nodes": {
        "intro": {
            "type": "email",
            "subject": "Hi {{ contact.first_name }}",
            "body": "<p>Hello {{ contact.first_name | default('there', true) }}</p>",
            "transitions": [
                {"on": "click", "to": "done"},
                {"on": "no_open", "after": "PT72H", "to": "pause"},
                {"on": "bounce", "to": "done"},
            ],
        },
        "pause": {"type": "wait", "transitions": [{"on": "elapsed", "after": "P2D", "to": "done"}]},
        "done": {"type": "exit"},
    },
}
NODE_NAMES = ["intro", "pause", "done", "missing", "", "nodes", "Intro"]
# Values a plan author (or attacker) might put anywhere: near misses of valid ones first.
TOKENS = st.sampled_from([
    *NODE_NAMES, "email", "wait", "exit", "sms", "EMAIL", *EVENT_ALIASES, "CLICK", "opens",
    "PT72H", "P2D", "PT0S", "P0D", "-PT1H", "P1Y", "P1M", "PT1.5H", "P9999999999D",
    "PT99999999999999999999H", "72h", "P", "PT", " ", "mon", "Monday", "funday", "09:00",
    "25:00", "9", "24:00:00", "Europe/Paris", "Mars/Olympus", "../../etc/passwd", "UTC",
    "intro.html.j2", "../secret.j2", "nope.j2", "a\x00b", "{{ contact.first_name }}",
    "{{ ''.__class__.__mro__ }}", "{% if %}", "{{ unknown }}", "{% include 'a\\x00' %}",
    "{{" + "(" * 400 + "1" + ")" * 400 + "}}", "line\r\nBcc: x@example.com", "\ud800", "\ufeff",
    "x" * 300, 10**100, -1, 0, 1e308, float("nan"), float("inf"), True, b"\xff\xfe", b"PT1H",
])
SCALARS = (
    TOKENS | st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
    | st.binary(max_size=8) | st.datetimes() | st.dates() | st.times()
)
KEYS = (
    st.sampled_from(["name", "start", "nodes", "type", "on", "to", "after", "subject", "body",
                     "template", "transitions", "send_window", "days", "timezone",
                     "categories", "sender", "allow_reentry", "description"])
    | st.text(max_size=8) | st.integers() | st.none() | st.booleans()
)
SHALLOW_VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=12,
)
VALUES = SHALLOW_VALUES | st.builds(nested, st.integers(1, 3000)) | st.builds(alias_bomb, st.integers(1, 8))


def _mutate_once(draw: st.DrawFn, container: dict | list, values: st.SearchStrategy) -> None:
    """Walk down to a random dict or list of the plan and replace, delete or add one item."""
    while True:
        keys = list(container) if isinstance(container, dict) else list(range(len(container)))
        inner = [key for key in keys if isinstance(container[key], dict | list)]
        if not inner or not draw(st.booleans()):
            break
        container = container[draw(st.sampled_from(inner))]
    action = draw(st.sampled_from(["replace", "delete", "add"]))
    if isinstance(container, dict):
        if action == "add" or not container:
            container[draw(KEYS)] = draw(values)
        elif action == "delete":
            del container[draw(st.sampled_from(list(container)))]
        else:
            container[draw(st.sampled_from(list(container)))] = draw(values)
    elif action == "add" or not container:
        container.insert(draw(st.integers(0, len(container))), draw(values))
    elif action == "delete":
        del container[draw(st.integers(0, len(container) - 1))]
    else:
        container[draw(st.integers(0, len(container) - 1))] = draw(values)


@st.composite
def mutated_plans(draw: st.DrawFn, values: st.SearchStrategy = VALUES) -> dict[str, Any]:
    plan = copy.deepcopy(VALID_PLAN)
    for _ in range(draw(st.integers(1, 4))):
        _mutate_once(draw, plan, values)
    return plan


def _near(valid: list[str]) -> st.SearchStrategy[Any]:
    return st.sampled_from(valid) | SCALARS


TRANSITIONS = st.fixed_dictionaries(
    {"on": _near(sorted(EVENT_ALIASES)), "to": _near(NODE_NAMES)},
    optional={"after": _near(["PT1H", "P2D", "PT0S"])},
)
NODES = st.fixed_dictionaries(
    {"type": _near(["email", "wait", "exit"])},
    optional={
        "subject": _near(["Hi", "Hi {{ contact.first_name }}"]),
        "body": _near(["<p>x</p>", "{{ contact.email }}"]),
        "template": _near(["intro.html.j2", "bump.html.j2"]),
        "transitions": st.lists(TRANSITIONS, max_size=4) | SCALARS,
        "categories": st.lists(_near(["a", "b"]), max_size=3),
    },
)
# Plans assembled from random parts: these are valid now and then, so both outcomes occur.
BUILT_PLANS = st.fixed_dictionaries(
    {"name": _near(["p"]), "start": _near(NODE_NAMES),
     "nodes": st.dictionaries(_near(NODE_NAMES), NODES, max_size=5)},
    optional={
        "send_window": st.fixed_dictionaries(
            {}, optional={"days": st.lists(_near(["mon", "sun"]), max_size=3),
                          "start": _near(["09:00"]), "end": _near(["17:00"]),
                          "timezone": _near(["UTC", "Europe/Paris"])}),
        "allow_reentry": SCALARS, "sender": SCALARS, "categories": SCALARS,
    },
)


def _dump(value: Any) -> str:
    """YAML for a generated value, else JSON with what JSON cannot hold as text."""
    try:
        return yaml.safe_dump(value, allow_unicode=True)
    except (yaml.YAMLError, RecursionError):
        return json.dumps(value, default=str, skipkeys=True)


@st.composite
def spliced_plan_text(draw: st.DrawFn) -> str:
    """A valid plan's YAML with random text cut into it."""
    text = yaml.safe_dump(VALID_PLAN, sort_keys=False)
    at = draw(st.integers(0, len(text)))
    cut = draw(st.integers(0, 20))
    return text[:at] + draw(st.text(max_size=20)) + text[at + cut:]


PLAN_TEXTS = (
    st.text(max_size=300) | st.binary(max_size=300) | spliced_plan_text()
    # Shallow values only: deep nesting as text is slow to parse and has its own tests below.
    | mutated_plans(SHALLOW_VALUES).map(_dump)
    | BUILT_PLANS.map(_dump)
)


# -- plans: the property --------------------------------------------------------------------

ROOTS = {"(plan)", "plan", *PlanSpec.model_fields}


def starts_with_path(error: str, data: Any) -> bool:
    """Whether an error names where it is: a top-level field (or the plan) then `.`, `[` or `:`."""
    if isinstance(data, str | bytes):
        try:
            data = load_plan_text(data)
        except PlanError:
            data = {}
    roots = ROOTS | ({str(key) for key in data} if isinstance(data, Mapping) else set())
    return error.startswith("[") or any(
        error.startswith(root) and error[len(root):len(root) + 1] in {":", ".", "["}
        for root in roots
    )


def judge(data: Any, **options: Any) -> PlanSpec | None:
    """validate_plan's verdict, checked: a PlanSpec that survives storage, or errors with paths."""
    try:
        plan = validate_plan(data, **options)
    except PlanError as exc:
        assert exc.errors, "a PlanError must list at least one fault"
        for error in exc.errors:
            assert starts_with_path(error, data), f"error without a path: {error!r}"
            # Echoed values are bounded (a YAML alias bomb must not become a 1 GB message).
            assert len(error) < 2_000, f"error of {len(error):,} characters"
        return None
    assert isinstance(plan, PlanSpec)
    # The engine reloads a stored plan from its definition: that must give the same plan.
    assert plan_from_definition(plan.to_definition()) == plan
    return plan


def test_the_valid_plan_that_mutations_start_from_is_valid() -> None:
    assert judge(VALID_PLAN, check_template=RENDERER.check_template) is not None


@fuzz(300)
@given(mutated_plans())
def test_mutated_plans_are_accepted_or_rejected_with_paths(data: dict[str, Any]) -> None:
    judge(data)


@fuzz(150)
@given(BUILT_PLANS)
def test_plans_built_from_random_parts_are_accepted_or_rejected_with_paths(data: dict) -> None:
    judge(data)
    judge(data, check_template=RENDERER.check_template)


@fuzz(150)
@given(mutated_plans())
def test_template_checks_inside_plan_validation_never_raise(data: dict[str, Any]) -> None:
    judge(data, check_template=RENDERER.check_template)


@fuzz(200)
@given(PLAN_TEXTS)
def test_arbitrary_text_is_accepted_or_rejected_with_paths(text: str | bytes) -> None:
    judge(text)


ADVERSARIAL_PLAN_TEXTS = {
    "deep flow sequence": "[" * 100_000,
    "deep flow mapping": "{a: " * 50_000,
    "deep block sequence": "- " * 50_000,
    "deep json": '{"a": ' * 50_000 + "1" + "}" * 50_000,
    "alias bomb, unused": yaml_alias_bomb() + "name: p\nstart: a\nnodes: {a: {type: exit}}\n",
    "alias bomb as description": yaml_alias_bomb() + "description: *a8\nname: p\nstart: a\n",
    "alias bomb as categories": yaml_alias_bomb() + "categories: *a8\nname: p\nstart: a\n",
    "alias bomb as a duration": yaml_alias_bomb()
    + "name: p\nstart: a\nnodes: {a: {type: wait, transitions: [{on: elapsed, to: a, after: *a8}]}}\n",
    "alias bomb as transitions": yaml_alias_bomb()
    + "name: p\nstart: a\nnodes: {a: {type: wait, transitions: *a8}}\n",
    "self-referential alias": "name: &n [*n]\nstart: a\nnodes: {a: {type: exit}}\n",
    "python tag": "!!python/object/apply:os.system ['echo pwned']\n",
    "NUL": "name: p\x00\n",
    "not utf-8": b"name: \xff\xfe\n",
    "unhashable key": "? [a]\n: 1\n",
    "timestamp name": "name: 2001-12-14\nstart: a\nnodes: {a: {type: exit}}\n",
    "overflowing duration": "name: p\nstart: a\nnodes: {a: {type: wait, transitions: "
    "[{on: elapsed, after: P9999999999D, to: a}]}}\n",
    "numeric after": "name: p\nstart: a\nnodes: {a: {type: wait, transitions: "
    "[{on: elapsed, after: 1e400, to: a}]}}\n",
    "surrogate escape": 'name: p\nstart: a\ndescription: "\\ud800"\nnodes: {a: {type: exit}}\n',
    "bytes as the start": "name: p\nstart: !!binary YQ==\nnodes: {b: {type: exit}}\n",
    "time with an offset": "name: p\nstart: a\nsend_window: {start: '09:00+02:00', end: '17:00'}\n"
    "nodes: {a: {type: exit}}\n",
    "time as a number": "name: p\nstart: a\nsend_window: {end: 0}\nnodes: {a: {type: exit}}\n",
    "zone name too long for a path": f"name: p\nstart: a\nsend_window: {{timezone: {'x' * 300}}}\n"
    "nodes: {a: {type: exit}}\n",
    "list as a node type": "name: p\nstart: a\nnodes: {a: {type: [email]}}\n",
}


# Odd but valid: the same small plan, as YAML allows it to be written or encoded.
ODD_VALID_PLAN_TEXTS = {
    "BOM then plan": "\ufeffname: p\nstart: a\nnodes: {a: {type: exit}}\n",
    "utf-16": "name: p\nstart: a\nnodes: {a: {type: exit}}\n".encode("utf-16"),
    "json": '{"name": "p", "start": "a", "nodes": {"a": {"type": "exit"}}}',
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("text", ADVERSARIAL_PLAN_TEXTS.values(), ids=ADVERSARIAL_PLAN_TEXTS)
def test_adversarial_plan_texts_get_clear_errors_quickly(text: str | bytes) -> None:
    started = time.monotonic()

    assert judge(text) is None

    assert time.monotonic() - started < 10


@pytest.mark.parametrize("text", ODD_VALID_PLAN_TEXTS.values(), ids=ODD_VALID_PLAN_TEXTS)
def test_odd_but_valid_plan_texts_are_accepted(text: str | bytes) -> None:
    assert judge(text).name == "p"


def test_a_node_name_used_twice_is_an_error_not_a_silent_replacement() -> None:
    text = (
        "name: p\nstart: a\nnodes:\n"
        "  a: {type: email, subject: First, body: b, transitions: [{on: click, to: b}]}\n"
        "  b: {type: exit}\n"
        "  a: {type: email, subject: Second, body: b, transitions: [{on: click, to: b}]}\n"
    )
    assert judge(text) is None


@pytest.mark.parametrize("depth", [10, 500, 5_000])
def test_deeply_nested_values_in_a_plan_dict_get_clear_errors(depth: int) -> None:
    for field in ("name", "description", "categories", "start"):
        data = {**copy.deepcopy(VALID_PLAN), field: nested(depth)}
        assert judge(data) is None


# -- plans: absurd sizes ------------------------------------------------------------------------

def many_nodes(count: int) -> dict[str, Any]:
    chain = {f"n{i}": {"type": "wait", "transitions": [{"on": "elapsed", "after": "PT1H",
                                                        "to": f"n{i + 1}"}]}
             for i in range(count - 1)}
    return {"name": "huge", "start": "n0", "nodes": {**chain, f"n{count - 1}": {"type": "exit"}}}


def exit_nodes(count: int) -> str:
    """A plan of ``count`` exit nodes as compact YAML: small to parse, so fast to refuse."""
    return "name: huge\nstart: n0\nnodes:\n" + "".join(f" n{i}: {{type: exit}}\n" for i in range(count))


def test_a_plan_of_10000_nodes_is_refused_with_a_clear_error_as_dict_and_as_text() -> None:
    data = many_nodes(10_000)
    text = exit_nodes(10_000)
    assert len(text) < MAX_PLAN_BYTES  # so the node limit, not the size limit, refuses it
    started = time.monotonic()
    for plan in (data, text):
        with pytest.raises(PlanError) as refused:
            validate_plan(plan)
        assert refused.value.errors == [
            f"nodes: 10,000 nodes; a plan may have at most {MAX_NODES}"
        ]
        # The dict is refused before any validation; the text is parsed first (seconds).
        assert time.monotonic() - started < 0.5 or plan is text
    assert judge(many_nodes(MAX_NODES)) is not None  # the limit itself is allowed


def test_plan_text_over_the_size_limit_is_refused_before_parsing() -> None:
    text = "name: p\ndescription: " + "x" * MAX_PLAN_BYTES + "\n"
    started = time.monotonic()

    with pytest.raises(PlanError) as refused:
        validate_plan(text)

    assert refused.value.errors == [
        f"plan: plan is {len(text):,} bytes; the limit is {MAX_PLAN_BYTES:,}"
    ]
    assert time.monotonic() - started < 0.5


# -- plans: the CLI -------------------------------------------------------------------------

@pytest.fixture
def cli(settings, tmp_path: Path):
    """Run ``outreach plan validate`` on text; (exit code, output) with the traceback check."""
    runner = CliRunner()
    path = tmp_path / "plan.yaml"

    def validate(text: str | bytes) -> tuple[int, str]:
        path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
        result = runner.invoke(main, ["plan", "validate", str(path)])
        output = result.output  # stdout and stderr, as a user sees them
        # CliRunner turns an escaped exception into exit code 1 too: look at what ended it.
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            f"{type(result.exception).__name__}: {result.exception}"
        )
        assert "Traceback" not in output
        assert result.exit_code in {0, 1}, output
        # A valid plan: "ok", after a line per warning (an email with no visible
        # unsubscribe link, say).
        lines = output.strip().splitlines()
        valid = lines[-1:] == ["ok"] and all(line.startswith("warning: ") for line in lines[:-1])
        assert (result.exit_code == 0) == valid, output
        return result.exit_code, output

    return validate


@fuzz(100)
@given(PLAN_TEXTS)
def test_cli_validate_says_ok_or_lists_errors_never_a_traceback(cli, text: str | bytes) -> None:
    code, output = cli(text)
    if code == 1:
        assert "error(s)" in output or "error:" in output


def test_cli_validate_on_valid_plans_says_ok(cli) -> None:
    for text in [yaml.safe_dump(VALID_PLAN), *ODD_VALID_PLAN_TEXTS.values()]:
        code, output = cli(text)
        assert code == 0 and output.endswith("ok\n"), output


@pytest.mark.parametrize("text", ADVERSARIAL_PLAN_TEXTS.values(), ids=ADVERSARIAL_PLAN_TEXTS)
def test_cli_validate_on_adversarial_texts_lists_errors(cli, text: str | bytes) -> None:
    code, output = cli(text)
    assert code == 1 and "error(s)" in output


def test_cli_validate_refuses_a_2_mb_file_and_a_10000_node_plan_clearly(cli) -> None:
    code, output = cli("description: " + "x" * 2_000_000)
    assert code == 1 and "the limit is 1,000,000" in output
    code, output = cli(exit_nodes(10_000))
    assert code == 1 and f"at most {MAX_NODES}" in output


# -- templates: the sandbox ----------------------------------------------------------------------

def template_context() -> dict[str, Any]:
    return {
        "contact": {"email": "ada@example.com", "first_name": "Ada", "timezone": None},
        "tenant": {"id": "acme", "name": "Acme"},
        "plan": {"name": "onboarding", "version": 1},
        "node": {"name": "intro"},
        "unsubscribe_url": "https://example.com/u/token",
    }


ROOT_NAMES = ["''", "()", "[]", "{}", "1", "contact", "tenant", "plan", "node",
              "unsubscribe_url", "cycler", "joiner", "namespace", "lipsum", "range", "dict",
              "self", "contact.email", "cycler(1, 2)", "joiner()", "namespace()",
              "(x for x in [1])", "range(3)", "loop"]
DANGEROUS_NAMES = [
    "__class__", "__mro__", "__subclasses__", "__globals__", "__builtins__", "__init__",
    "__dict__", "__base__", "__bases__", "__code__", "__closure__", "__func__", "__self__",
    "__module__", "__getattribute__", "__reduce_ex__", "__call__", "_TemplateReference__context",
    "_Context__self", "_environment", "mro", "func_globals", "func_code", "gi_frame", "gi_code",
    "f_locals", "f_globals", "f_back", "cr_frame", "tb_frame", "environment", "globals",
    "update", "pop", "clear", "append", "setdefault", "format", "format_map", "next", "reset",
    "current", "items", "keys", "__setitem__", "__getitem__", "__len__",
]
# What only an escaped template could print: modules, frames, code, builtins, every class.
LEAK_MARKERS = ["<module", "<frame", "<code object", "__builtins__", "Popen", "<cell",
                "<class 'object'>", "<class 'type'>", "mappingproxy", "<traceback"]
GENERIC_ALIAS = re.compile(r"dict\[[^\]]*\]")


@st.composite
def accessor(draw: st.DrawFn) -> tuple[str, str, str | None]:
    """One step of an attribute chain: its source, its kind, and the name it reads (if any)."""
    name = draw(st.sampled_from(DANGEROUS_NAMES))
    kind = draw(st.sampled_from(["dot", "item", "attr-filter", "call", "index"]))
    source = {"dot": f".{name}", "item": f"[{name!r}]", "attr-filter": f"|attr({name!r})",
              "call": "()", "index": "[0]"}[kind]
    return source, kind, None if kind in {"call", "index"} else name


@st.composite
def escape_attempts(draw: st.DrawFn) -> tuple[str, list[tuple[str, str | None]]]:
    root = draw(st.sampled_from(ROOT_NAMES))
    steps = draw(st.lists(accessor(), min_size=1, max_size=5))
    expression = "(" + root + ")" + "".join(source for source, _, _ in steps)
    wrapper = draw(st.sampled_from([
        "{{{{ {} }}}}", "{{{{ ({})|string }}}}", "{{% for x in {} %}}{{{{ x }}}}{{% endfor %}}",
        "{{% if {} %}}yes{{% endif %}}", "{{% set x = {} %}}{{{{ x }}}}",
        "{{% with x = {} %}}{{{{ x }}}}{{% endwith %}}",
    ]))
    return wrapper.format(expression), [(kind, name) for _, kind, name in steps]


@pytest.mark.timeout(60 * SCALE)
@fuzz(400)
@given(escape_attempts())
def test_sandbox_escape_attempts_fail_cleanly_at_check_or_render(
    attempt: tuple[str, list[tuple[str, str | None]]],
) -> None:
    source, steps = attempt
    private = [(kind, name) for kind, name in steps if name and name.startswith("_")]
    # Checking never raises, and it names private attributes written as `.x` or `['x']`
    # (`|attr()` and names built at run time are for the sandbox to refuse at render).
    problems = RENDERER.check_template(subject=source, template=None, body=source)
    assert isinstance(problems, list)
    if any(kind in {"dot", "item"} for kind, _ in private):
        assert problems, f"{source}: no problem reported"
    for field in ("subject", "body"):
        try:
            rendered = RENDERER.render_email(
                subject=source if field == "subject" else "Hi", template=None,
                body=source if field == "body" else "<p>x</p>", context=template_context(),
            )
        except RenderError as exc:
            assert exc.field == field and exc.node == "intro"
            continue
        # What rendered read no private attribute and shows no interpreter internals. (On
        # the `dict` type Jinja falls back from `.x` to `['x']`: a harmless generic alias,
        # `dict['x']`, left out of the check.)
        raw = rendered.subject + rendered.html
        output = GENERIC_ALIAS.sub("", raw)
        assert output != raw or not any(kind in {"dot", "attr-filter"} for kind, _ in private)
        assert not any(marker in output for marker in LEAK_MARKERS), output[:300]


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__ }}", "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__.os }}", "{{ joiner.__init__.__globals__ }}",
    "{{ namespace.__init__.__globals__ }}", "{{ lipsum.__globals__['os'] }}",
    "{{ self.__init__.__globals__.__builtins__ }}", "{{ contact['__class__'] }}",
    # Jinja falls back from .x to ['x']: on the dict type that gave a generic alias.
    "{% if (dict).__globals__ %}yes{% endif %}",
])
def test_private_names_are_reported_by_check_and_refused_at_render(source: str) -> None:
    problems = RENDERER.check_template(subject="Hi", template=None, body=source)
    assert problems and all("starting with '_'" in problem for problem in problems)
    with pytest.raises(RenderError, match="unsafe|undefined"):
        RENDERER.render_email(subject="Hi", template=None, body=source, context=template_context())


RESOURCE_BOMBS = {
    "huge range": "{% for i in range(10**9) %}x{% endfor %}",
    "huge range as list": "{{ range(10**9)|list }}",
    "huge string repeat": "{{ 'x' * 10**9 }}",
    "huge list repeat": "{{ [0] * 10**9 }}",
    "huge power": "{{ 10 ** (10 ** 10) }}",
    "nested loops to the output limit": "{% for a in range(99999) %}{% for b in range(99) %}"
    "xxxxxxxxxx{% endfor %}{% endfor %}",
    "unbounded recursion": "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
    "deep expression": "{{" + "(" * 2_000 + "1" + ")" * 2_000 + "}}",
    "deep blocks": "{% if 1 %}" * 2_000 + "{% endif %}" * 2_000,
    "NUL in an include": "{% include 'a\\x00b' %}",
    # One C call that pads to a huge width, before any output limit can act.
    "huge str.center": "{{ 'x'.center(10**9) }}",
    "huge str.ljust by keyword": "{{ 'x'.ljust(width=10**9) }}",
    "huge str.zfill": "{{ '1'.zfill(10**9) }}",
    "huge center filter": "{{ 'x'|center(10**9) }}",
    "huge indent filter": "{{ 'x\\ny'|indent(10**9) }}",
    "huge str.format width": "{{ '{:>999999999}'.format('x') }}",
    "huge nested str.format width": "{{ '{:>{w}}'.format('x', w=10**9) }}",
    "huge format_map width": "{{ '{x:>999999999}'.format_map({'x': 1}) }}",
    "huge printf width": "{{ '%999999999s' % 'x' }}",
    "huge printf precision": "{{ '%.999999999f' % 1 }}",
    "huge format filter width": "{{ '%999999999s'|format('x') }}",
    # Values that double at each turn: thirty turns pass any memory, one C call each.
    "doubling with ~": "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
    "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
    "doubling with +": "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
    "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}",
    "doubling a list with +": "{% set ns = namespace(s=[0]) %}{% for i in range(40) %}"
    "{% set ns.s = ns.s + ns.s %}{% endfor %}{{ ns.s|length }}",
    "doubling with |replace": "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
    "{% set ns.s = ns.s|replace('x', 'xx') %}{% endfor %}{{ ns.s|length }}",
    "doubling with str.replace": "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
    "{% set ns.s = ns.s.replace('x', 'xx') %}{% endfor %}{{ ns.s|length }}",
    "one huge replace": "{{ ('x' * 2000000)|replace('x', 'xxxxxxxxxx') }}",
    # Loops that print nothing never reach the output limit: days of CPU, held by a worker.
    "nested silent loops": "{% for a in range(100000) %}{% for b in range(100000) %}"
    "{% for c in range(100000) %}{% endfor %}{% endfor %}{% endfor %}",
    "silent loops in a macro": "{% macro m() %}{% for b in range(100000) %}{% endfor %}{% endmacro %}"
    "{% for a in range(100000) %}{{ m() }}{% endfor %}",
    "a recursive loop fanning out": "{% for x in range(100) recursive %}{% if loop.depth < 5 %}"
    "{{ loop(range(100)) }}{% endif %}{% endfor %}",
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("source", RESOURCE_BOMBS.values(), ids=RESOURCE_BOMBS)
def test_resource_bombs_fail_fast_with_a_render_error(source: str) -> None:
    started = time.monotonic()

    problems = RENDERER.check_template(subject="Hi", template=None, body=source)
    with pytest.raises(RenderError):
        RENDERER.render_email(subject="Hi", template=None, body=source, context=template_context())

    assert isinstance(problems, list)
    # Seconds, not days (each a check and a render); generous, as CI machines are loaded.
    assert time.monotonic() - started < 10


def test_padding_and_formatting_within_the_limit_still_work() -> None:
    body = ("{{ '{:,}'.format(5000000) }}|{{ 'x'.center(5) }}|{{ 'a'|center(3) }}|"
            "{{ '%05d' % 42 }}|{{ 7 % 3 }}|{{ '{:>{w}}'.format('y', w=3) }}|{{ '%s!'|format('hi') }}|"
            "Call 0123456789012 {}")
    rendered = RENDERER.render_email(subject="Hi", template=None, body=body,
                                     context=template_context())
    assert rendered.html == "5,000,000|  x  | a |00042|1|  y|hi!|Call 0123456789012 {}"


def test_loops_within_the_budget_keep_every_feature() -> None:
    body = ("{% for x in [3, 4, 5] %}{{ loop.index }}/{{ loop.length }}{% if loop.last %}!{% endif %}"
            "{% else %}none{% endfor %}|{% for k in [] %}x{% else %}empty{% endfor %}|"
            "{% for a, b in [(1, 2)] %}{{ a }}{{ b }}{% endfor %}|"
            "{% for item in [{'c': [{'c': []}]}] recursive %}[{{ loop(item.c) }}]{% endfor %}|"
            "{% for i in range(300) %}{% for j in range(300) %}{% endfor %}{% endfor %}done")
    rendered = RENDERER.render_email(subject="Hi", template=None, body=body,
                                     context=template_context())
    assert rendered.html == "1/32/33/3!|empty|12|[[]]|done"


def test_joining_adding_and_replacing_within_the_limit_still_work() -> None:
    body = ("{{ 'a' ~ 1 ~ '<b>' }}|{{ 'a' + 'b' }}|{{ 1 + 2 }}|{{ [1] + [2] }}|"
            "{{ 'abc'|replace('b', 'xy') }}|{{ 'abc'.replace('c', 'z') }}|{{ 'aaa'|replace('a', 'bb', 2) }}")
    rendered = RENDERER.render_email(subject="{{ 'Hi' ~ ' ' ~ contact.first_name }}", template=None,
                                     body=body, context=template_context())
    assert rendered.html == "a1&lt;b&gt;|ab|3|[1, 2]|axyc|abz|bbbba"
    assert rendered.subject == "Hi Ada"


@pytest.mark.timeout(5)
def test_a_huge_lipsum_fails_fast() -> None:
    with pytest.raises(RenderError):
        RENDERER.render_email(subject="Hi", template=None, body="{{ lipsum(10**6) }}",
                              context=template_context())


# -- templates: absurd sizes --------------------------------------------------------------------

def test_a_template_over_1_mib_is_refused_by_check_and_at_render(tmp_path: Path) -> None:
    source = "<p>" + "x" * MAX_TEMPLATE_BYTES + "</p>"
    (tmp_path / "big.html.j2").write_text(source)
    renderer = TemplateRenderer(tmp_path)
    for template, body in (("big.html.j2", None), (None, source)):
        [problem] = renderer.check_template(subject="Hi", template=template, body=body)
        assert "too large" in problem and "1,048,576 bytes" in problem
        with pytest.raises(RenderError, match="too large") as refused:
            renderer.render_email(subject="Hi", template=template, body=body,
                                  context=template_context())
        assert refused.value.field == ("template" if template else "body")
    # A subject that size is a template too, and a header: refused the same way.
    assert renderer.check_template(subject=source, template=None, body="x")[0].startswith(
        "subject: too large"
    )
    with pytest.raises(RenderError, match="too large") as refused:
        renderer.render_email(subject=source, template=None, body="x", context=template_context())
    assert refused.value.field == "subject"
