"""A tenant's template cannot starve other tenants (issue #19): each bomb fails its own
email with a RenderError naming the node, within seconds, and the process that renders
for everyone does not grow.

Each attack of the issue is written as the attack: checked as `outreach plan validate`
checks it, then rendered as a worker renders it. The sandbox's guards stop the tricks
foreseen (their message says which); the render processes' memory, CPU and wall-clock
limits stop what gets past them.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import dramatiq
import psutil
import pytest
import yaml

from outreach_actors.domain import dispatch, engine
from outreach_actors.domain.mail import email_context
from outreach_actors.domain.plans import PlanError, validate_plan
from outreach_actors.domain.rendering import (
    IsolatedRenderer,
    RenderError,
    RenderLimits,
    TemplateRenderer,
    html_to_text,
)
from outreach_actors.domain.store.models import Enrollment, OutboundMessage, ScheduledAction
from outreach_actors.settings import configure

from .conftest import make_settings, recipients
from .factories import THREE_NODE_PLAN, load_plan, make_tenant

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "templates"
SAMPLES = Path(__file__).resolve().parent / "samples"
# Smaller than the defaults (256 MiB, 5 s, 30 s), so that the bombs meet them sooner.
LIMITS = RenderLimits(memory_bytes=128 * 2**20, cpu_seconds=2, timeout_seconds=20, processes=2)
# What the process that renders for everyone may grow by while a bomb goes off.
PARENT_GROWTH_MB = 200


@pytest.fixture(scope="module")
def renderer() -> IsolatedRenderer:
    return IsolatedRenderer(TEMPLATES, LIMITS)


def context(node: str = "bomb", first_name: str = "Ada") -> dict:
    return email_context(fields={"first_name": first_name}, email="ada@example.com",
                         timezone=None, tenant_id="evil", tenant_name="Evil", plan_name="bombs",
                         plan_version=1, node=node, unsubscribe="https://example.com/u/token")


def plan_with(body: str) -> dict:
    return {"name": "bombs", "start": "bomb", "nodes": {
        "bomb": {"type": "email", "subject": "Hi", "body": body,
                 "transitions": [{"on": "no_open", "after": "PT1H", "to": "done"}]},
        "done": {"type": "exit"}}}


@contextmanager
def held_to(*, seconds: float, megabytes: int = PARENT_GROWTH_MB) -> Iterator[None]:
    """The block ends within ``seconds``, and this process's resident memory (sampled
    every 5 ms) grows by less than ``megabytes`` meanwhile."""
    this = psutil.Process()
    before = peak = this.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.005):
            peak = max(peak, this.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        yield
    finally:
        elapsed = time.monotonic() - started
        done.set()
        sampler.join()
    peak = max(peak, this.memory_info().rss)
    assert elapsed < seconds, f"took {elapsed:.1f} s"
    assert peak - before < megabytes * 2**20, f"grew by {(peak - before) / 2**20:.0f} MB"


# name: (body, what the error says, whether checking the plan refuses it already: a bomb
# built from constants alone fails every render, so `plan validate` renders it, bounded)
ATTACKS = {
    # Memory: one C call that builds gigabytes before any check after it could act.
    "printf width from an argument": (
        "{{ '%*s' % (1000000000, 'x') }}", "a %-format would build more than", True),
    "format width from a string argument": (
        "{{ '{:{}}'.format('x', '1000000000') }}", "a str.format would build more than", True),
    "three hundred printf widths": (
        "{{ ('%9999999s' * 300) % (('x',) * 300) }}", "a %-format would build more than", True),
    "join filter": ("{{ (['x' * 2000000] * 1000)|join }}", r"\|join would build", True),
    "str.join": ("{{ ''.join(['x' * 2000000] * 1000) }}", "str.join would build", True),
    "str.translate": ("{{ ('x' * 2000000).translate({120: 'y' * 1000}) }}",
                      "str.translate would build", True),
    "expandtabs on many tabs": ("{{ ('\\t' * 2000000).expandtabs(1000) }}",
                                r"str.expandtabs\(1,000\) would build", True),
    "indent over many lines": ("{{ ('x\\n' * 1000000)|indent(1000) }}",
                               r"\|indent over 1,000,001 lines would build", True),
    "tojson with a huge indent": ("{{ ([0] * 1000)|tojson(2000000) }}",
                                  r"\|tojson would build", True),
    "a list repeated by reference": ("{{ [[0] * 2000000] * 300 }}",
                                     "printing this value would build", True),
    "lipsum with huge paragraphs": ("{{ lipsum(1, false, 3e7, 3e7 + 1) }}",
                                    "asks for more than 1,000 words a paragraph", False),
    "doubling through |join": (
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
        "{% set ns.s = [ns.s, ns.s]|join %}{% endfor %}{{ ns.s|length }}",
        r"\|join would build", False),
    "doubling through %": (
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
        "{% set ns.s = '%s%s' % (ns.s, ns.s) %}{% endfor %}{{ ns.s|length }}",
        "a %-format would build", False),
    "doubling through str.format": (
        "{% set ns = namespace(s='x') %}{% for i in range(40) %}"
        "{% set ns.s = '{0}{0}'.format(ns.s) %}{% endfor %}{{ ns.s|length }}",
        "a str.format would build", False),
    # CPU: work that the loop budget did not count, and that prints nothing.
    "a macro that calls itself twice": (
        "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
        "{{ f(40) }}", "passed the budget of 250,000 turns", False),
    "sum of lists": ("{{ ([[0] * 20] * 100000)|sum(start=[]) }}",
                     r"\|sum of these sequences", True),
    "lipsum's word count": ("{{ lipsum(100, false, 100000, 100001) }}",
                            "asks for more than 1,000 words a paragraph", False),
    "wordwrap of a 2 MB word": ("{{ ('x' * 2000000)|wordwrap(1) }}",
                                r"\|wordwrap\(1\) would cut a 2,000,000-character word", True),
    # What Jinja folded while compiling: `plan validate` took 2.9 GB, then a traceback.
    "the short compile-time bomb": ("{{ '%*s'|format(1000000000,'x') }}",
                                    "a %-format would build more than", True),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("body", "says", "refused_by_check"), ATTACKS.values(), ids=ATTACKS)
def test_a_bomb_fails_its_own_email_within_seconds_and_the_renderer_does_not_grow(
        renderer: IsolatedRenderer, body: str, says: str, refused_by_check: bool) -> None:
    with held_to(seconds=10):
        # When the plan is checked, as `outreach plan validate` checks it
        try:
            validate_plan(plan_with(body), check_template=renderer.check_template)
            problems = []
        except PlanError as exc:
            problems = exc.errors
        # and when its email is rendered, as a worker renders it
        with pytest.raises(RenderError) as refused:
            renderer.render_email(subject="Hi", template=None, body=body, context=context())

    # Then the render failed with the bound it passed, naming the node and the body
    assert (refused.value.node, refused.value.field) == ("bomb", "body")
    assert re.search(says, str(refused.value)), refused.value
    # and a bomb made of constants alone was refused by the check already, with its path
    if refused_by_check:
        assert len(problems) == 1 and problems[0].startswith("nodes.bomb.body: line 1: ")
        assert re.search(says, problems[0]), problems
    else:
        assert problems == []


# Every filter and call the guards wrap, used within the bounds: the same output as Jinja's.
EVERYDAY = (
    "{{ contact.tags|join(', ') }}|{{ contact.n|join(',', attribute='v') }}|"
    "{{ contact.n|sum(attribute='v') }}|{{ [[1], [2]]|sum(start=[]) }}|"
    "{{ contact.tags|map('upper')|join }}|{{ [1, 2, 3]|select('odd')|list }}|"
    "{% filter upper %}ab{% endfilter %}|{{ {'a': [1]}|tojson(1) }}|{{ '{:>4}'.format('x') }}|"
    "{{ 'ab cd'|wordwrap(2) }}|{{ 'a\\nb'|indent(2) }}|{{ lipsum(1, false, 3, 4)|wordcount > 0 }}|"
    "{% macro m(x) %}[{{ x }}]{% endmacro %}{% macro w() %}<{{ caller() }}>{% endmacro %}"
    "{{ m(1) }}{% call w() %}c{% endcall %}|{{ [1, 2, 3, 4]|batch(3, 0)|list }}|"
    "{{ [1, 2, 3]|slice(2)|list }}|{{ 'a' ~ contact.tags }}|{{ '%s-%05.1f' % ('a', 3.14159) }}|"
    "{{ '<b>'|e }}|{{ {'a': 1}|pprint }}|{{ 'x'.center(3) }}|{{ '\\ta'.expandtabs(2) }}|"
    "{{ 'ab'.translate({97: 'zz'}) }}|{{ '-'.join(['a', 'b']) }}|{{ [3, 1, 2]|sort|first }}|"
    "{{ 'abc'|reverse }}|{{ (1, 2)|string }}|{{ contact.tags }}"
)
EVERYDAY_HTML = (
    "x, &lt;y&gt;|1,2|3|[1, 2]|X&lt;Y&gt;|[1, 3]|AB|{\n \"a\": [\n  1\n ]\n}|   x|ab\ncd|a\n  b|"
    "True|[1]<c>|[[1, 2, 3], [4, 0, 0]]|[[1, 2], [3]]|a[&#39;x&#39;, &#39;&lt;y&gt;&#39;]|a-003.1|"
    "&lt;b&gt;|{&#39;a&#39;: 1}| x |  a|zzb|a-b|1|cba|(1, 2)|[&#39;x&#39;, &#39;&lt;y&gt;&#39;]"
)


def test_templates_within_the_bounds_render_as_jinja_renders_them(
        renderer: IsolatedRenderer) -> None:
    every_day = context()
    every_day["contact"].update(tags=["x", "<y>"], n=[{"v": 1}, {"v": 2}])
    for each in (TemplateRenderer(TEMPLATES), renderer):
        email = each.render_email(subject="Hi {{ contact.tags|join(' ') }}", template=None,
                                  body=EVERYDAY, context=every_day)
        assert (email.subject, email.html) == ("Hi x <y>", EVERYDAY_HTML)


def test_compiling_the_short_bomb_builds_nothing() -> None:
    import tracemalloc

    body = "{{ '%*s'|format(1000000000,'x') }}"
    autoescape_block = "{% autoescape ('%*s'|format(1000000000,'x')) %}x{% endautoescape %}"
    in_process = TemplateRenderer(TEMPLATES)
    tracemalloc.start()
    try:
        with held_to(seconds=2, megabytes=50):
            # Checking in this process compiles (and finds the names of) the templates
            problems = in_process.check_template(subject=body, template=None, body=body)
            problems += in_process.check_template(subject="Hi", template=None,
                                                  body=autoescape_block)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Then nothing was evaluated: a few MB at most (the bomb wants a gigabyte)
    assert problems == []
    assert peak < 20 * 2**20, f"{peak / 2**20:.0f} MB allocated"


def test_filters_run_when_the_template_renders_never_while_it_compiles(monkeypatch) -> None:
    # Given a filter that notes each call, in a renderer's sandbox
    import jinja2.defaults

    calls: list[str] = []

    def noting(value: str) -> str:
        calls.append(value)
        return value.upper()

    monkeypatch.setitem(jinja2.defaults.DEFAULT_FILTERS, "upper", noting)
    in_process = TemplateRenderer(TEMPLATES)
    body = ("{{ 'a'|upper }}{% if 'b'|upper %}{% endif %}{% set c = 'c'|upper %}"
            "{% autoescape ('d'|upper == 'D') %}{% endautoescape %}")
    # When a template that applies it to constants is checked (compiled, its names found)
    assert in_process.check_template(subject="{{ 'e'|upper }}", template=None, body=body) == []
    # Then it was not called; when the template renders, it is, once a use
    assert calls == []
    in_process.render_email(subject="{{ 'e'|upper }}", template=None, body=body, context=context())
    assert sorted(calls) == ["a", "b", "c", "d", "e"]


def test_plan_validate_refuses_the_short_bomb_with_its_path_and_no_traceback(tmp_path) -> None:
    # The `outreach` command in a process of its own, as a user runs it
    command = [sys.executable, "-m", "outreach_actors.cli", "plan", "validate",
               str(SAMPLES / "bomb_plan.yaml")]
    env = {"OUTREACH_DATA_DIR": str(tmp_path), "OUTREACH_TEMPLATES_DIR": str(TEMPLATES),
           "PATH": "/usr/bin:/bin"}
    peak = 0
    started = time.monotonic()
    with psutil.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                      text=True) as cli:
        while cli.poll() is None:
            try:
                peak = max(peak, cli.memory_info().rss)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.01)
        output = cli.stdout.read() + cli.stderr.read()
    elapsed = time.monotonic() - started
    # Then it says what is wrong and where, and exits 1, within seconds and in little memory
    # (the time includes starting the render processes, which import the package)
    assert cli.returncode == 1, output
    assert "nodes.bomb.body: line 1: a %-format would build more than 2,097,152 characters" \
        in output
    assert "Traceback" not in output and "MemoryError" not in output
    assert elapsed < 30, f"took {elapsed:.1f} s"
    assert peak < 300 * 2**20, f"used {peak / 2**20:.0f} MB"


# -- past the guards: the render process's own limits ------------------------------------

HOARDER = yaml.safe_load((SAMPLES / "hoarding_plan.yaml").read_text())["nodes"]["intro"]["body"]
# Allowed steps only, and too many of them: sorting a 100,000-item list again and again.
GRINDER = ("{% set big = range(100000)|list %}{% for i in range(400) %}{% for j in range(400) %}"
           "{% if big|sort|first %}{% endif %}{% endfor %}{% endfor %}")


@pytest.mark.timeout(60)
def test_a_template_that_passes_the_guards_but_hoards_memory_fails_at_the_memory_limit(
        renderer: IsolatedRenderer) -> None:
    with held_to(seconds=10), pytest.raises(RenderError) as refused:
        renderer.render_email(subject="Hi", template=None, body=HOARDER, context=context())

    assert (refused.value.node, refused.value.field, refused.value.line) == ("bomb", "body", 1)
    assert "needed more than 128 MiB of memory (OUTREACH_RENDER_MEMORY_LIMIT)" in str(refused.value)


@pytest.mark.timeout(60)
def test_a_template_that_only_does_allowed_work_but_too_much_fails_at_the_cpu_limit(
        renderer: IsolatedRenderer) -> None:
    with held_to(seconds=15), pytest.raises(RenderError) as refused:
        renderer.render_email(subject="Hi", template=None, body=GRINDER, context=context())

    assert (refused.value.node, refused.value.field) == ("bomb", "body")
    assert "used more than 2 s of CPU time (OUTREACH_RENDER_CPU_LIMIT)" in str(refused.value)


@pytest.mark.timeout(60)
def test_a_render_past_the_wall_clock_limit_is_stopped() -> None:
    patient = IsolatedRenderer(TEMPLATES, RenderLimits(memory_bytes=128 * 2**20, cpu_seconds=60,
                                                       timeout_seconds=1, processes=1))
    with held_to(seconds=10), pytest.raises(RenderError) as refused:
        patient.render_email(subject="Hi", template=None, body=GRINDER, context=context())

    assert (refused.value.node, refused.value.field) == ("bomb", "body")
    assert "took longer than 1 s (OUTREACH_RENDER_TIMEOUT)" in str(refused.value)
    # and the next email renders, in a fresh render process
    assert patient.render_email(subject="Hi {{ contact.first_name }}", template=None,
                                body="<p>ok</p>", context=context()).subject == "Hi Ada"


@pytest.mark.timeout(120)
def test_bombs_among_ordinary_emails_from_many_threads_fail_alone(
        renderer: IsolatedRenderer) -> None:
    # Given forty ordinary emails and three bombs (one for each bound) rendered at once
    bombs = {7: ATTACKS["join filter"][0], 19: HOARDER, 31: GRINDER}
    body = "<ol><li>{{ contact.first_name }}</li><li>{{ node.name }}</li></ol>"

    def render(index: int) -> str:
        try:
            email = renderer.render_email(
                subject="Hi {{ contact.first_name }}", template=None,
                body=bombs.get(index, body), context=context(f"n{index}", f"Contact {index}"))
        except RenderError as exc:
            return f"failed: {exc.node}"
        return email.text

    with held_to(seconds=60), ThreadPoolExecutor(max_workers=8) as threads:
        outcomes = list(threads.map(render, range(43)))
    # Then each bomb failed its own email, and every other email is right
    assert outcomes == [f"failed: n{index}" if index in bombs else
                        f"1. Contact {index}\n2. n{index}" for index in range(43)]


@pytest.mark.timeout(120)
def test_a_batch_fails_each_bomb_alone_as_a_render_of_its_own_would(
        renderer: IsolatedRenderer) -> None:
    # Given ordinary emails with a bomb for each bound among them, rendered as one batch
    bombs = {1: ATTACKS["join filter"][0], 3: HOARDER, 5: GRINDER}
    body = "<ol><li>{{ contact.first_name }}</li><li>{{ node.name }}</li></ol>"
    emails = [{"subject": "Hi {{ contact.first_name }}", "template": None,
               "body": bombs.get(index, body), "context": context(f"n{index}", f"Contact {index}")}
              for index in range(8)]

    with held_to(seconds=60):
        outcomes = renderer.render_emails(emails)

    # Then each bomb failed its own email with the error a render of its own raises
    for index, outcome in enumerate(outcomes):
        if index in bombs:
            with pytest.raises(RenderError) as alone:
                renderer.render_email(**emails[index])
            assert isinstance(outcome, RenderError)
            assert (str(outcome), outcome.node, outcome.field) == (
                str(alone.value), alone.value.node, alone.value.field)
        else:
            assert outcome.text == f"1. Contact {index}\n2. n{index}"


def test_a_batch_out_of_time_renders_what_it_started_and_leaves_the_rest(
        renderer: IsolatedRenderer) -> None:
    # Given three emails rendered as one batch, with no time to spare
    emails = [{"subject": "Hi {{ contact.first_name }}", "template": None,
               "body": "<p>{{ node.name }}</p>", "context": context(f"n{index}")}
              for index in range(3)]

    out_of_time = renderer.render_emails(emails, budget_seconds=0)
    with_time = renderer.render_emails(emails, budget_seconds=60)

    # Then the first was rendered all the same (a batch always gets somewhere), and no
    # other was started; with time to spare, all three were
    assert [email.text for email in out_of_time] == ["n0"]
    assert [email.text for email in with_time] == ["n0", "n1", "n2"]


@pytest.mark.timeout(60)
def test_a_render_of_a_batch_past_the_wall_clock_limit_is_stopped_alone() -> None:
    patient = IsolatedRenderer(TEMPLATES, RenderLimits(memory_bytes=128 * 2**20, cpu_seconds=60,
                                                       timeout_seconds=1, processes=1))
    emails = [{"subject": "Hi {{ contact.first_name }}", "template": None, "body": body,
               "context": context()} for body in ("<p>a</p>", GRINDER, "<p>b</p>")]

    with held_to(seconds=10):
        first, grinder, last = patient.render_emails(emails)

    assert isinstance(grinder, RenderError)
    assert "took longer than 1 s (OUTREACH_RENDER_TIMEOUT)" in str(grinder)
    assert (first.text, last.text) == ("a", "b")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("limits", "error"), [
    (LIMITS, "used more than 2 s of CPU time (OUTREACH_RENDER_CPU_LIMIT)"),
    (RenderLimits(memory_bytes=128 * 2**20, cpu_seconds=60, timeout_seconds=1, processes=1),
     "took longer than 1 s (OUTREACH_RENDER_TIMEOUT)"),
], ids=["cpu", "wall-clock"])
def test_a_bomb_in_a_batch_is_run_once_and_the_emails_around_it_render(
        limits: RenderLimits, error: str, monkeypatch) -> None:
    from outreach_actors.domain.rendering import isolation

    # Given a batch with a bomb between ordinary emails, and every job a render process
    # is handed written down
    bodies = ["<p>a</p>", GRINDER, "<p>b</p>", "<p>c</p>"]
    emails = [{"subject": "Hi", "template": None, "body": body, "context": context(f"n{index}")}
              for index, body in enumerate(bodies)]
    handed: list[list[str]] = []
    run = isolation._RenderProcess.run

    def written_down(process, job: tuple, timeout_seconds: float) -> tuple:
        handed.append([email["body"] for email in job[2]] if job[0] == "render_many"
                      else [job[2]["body"]])
        return run(process, job, timeout_seconds)

    monkeypatch.setattr(isolation._RenderProcess, "run", written_down)

    outcomes = IsolatedRenderer(TEMPLATES, limits).render_emails(emails)

    # Then the bomb failed its own email at its bound, the others rendered, and the bomb
    # was run once: its batch's answers were lost with the process, not its bound
    assert [outcome.node if isinstance(outcome, RenderError) else outcome.text
            for outcome in outcomes] == ["a", "n1", "b", "c"]
    assert error in str(outcomes[1]) and outcomes[1].field == "body"
    assert sum(job.count(GRINDER) for job in handed) == 1, handed


def test_a_render_process_that_cannot_start_is_a_fault_and_fails_no_enrollment(
        settings, monkeypatch) -> None:
    from outreach_actors.domain.mail import render_for_send
    from outreach_actors.domain.rendering import RenderProcessError, isolation

    # Given a contact due an email, and render processes that never say they are ready
    make_tenant()
    load_plan()
    enrollment = engine.enroll("acme", "ada@example.com", "onboarding", fields={"first_name": "Ada"})
    # (its pipe never has the word: a timeout of 0 raced the process, which could be
    # quicker to say it than this one to look, on a loaded machine)
    monkeypatch.setattr(isolation.Connection, "poll", lambda connection, timeout=0.0: False)
    unstarted = settings.model_copy(update={"render_memory_limit": 99 * 2**20})  # a pool of its own
    action = ScheduledAction.get(ScheduledAction.enrollment == enrollment.id)

    # When its email is rendered
    with pytest.raises(RenderProcessError, match="a render process did not start"):
        render_for_send(action.id, settings=unstarted)
    # Then the fault is raised for a retry, and neither the action nor the enrollment failed
    assert ScheduledAction.get_by_id(action.id).status != "failed"
    assert Enrollment.get_by_id(enrollment.id).status == "active"


@pytest.mark.timeout(60)
def test_the_text_part_numbers_a_long_list_in_linear_time() -> None:
    # 2,000 items took 17 s when each was numbered by counting the items before it
    html = "<ol start='3'>" + "<li>x</li>" * 50_000 + "</ol><ul><li>y</li></ul>"
    started = time.monotonic()
    text = html_to_text(html)
    assert time.monotonic() - started < 10
    lines = [line for line in text.splitlines() if line]
    assert (lines[0], lines[-2], lines[-1]) == ("3. x", "50002. x", "* y")


# -- a real worker: one tenant's bomb beside another tenant's email ------------------------

@pytest.mark.timeout(120)
def test_a_tenants_bomb_fails_alone_and_the_other_tenants_email_in_its_batch_is_sent(
        any_broker, worker, sqlite_db, data_dir, standin) -> None:
    from outreach_actors.worker.actors.mail import enqueue_actions

    batches: list[list[int]] = []

    class SeenBatches(dramatiq.Middleware):
        def before_process_message(self, broker, message) -> None:
            if message.actor_name == "render_batch":
                batches.append(message.args[0])

    any_broker.add_middleware(SeenBatches())
    configure(make_settings(data_dir, sendgrid_api_host=standin.host))
    try:
        # Given a tenant whose template hoards memory, and another with an ordinary one,
        # each with a contact whose first email is due now (the bomb's first)
        make_tenant("evil", sender="hi@evil.test")
        load_plan((SAMPLES / "hoarding_plan.yaml").read_text(), tenant_id="evil")
        make_tenant("good", sender="hi@good.test")
        load_plan(THREE_NODE_PLAN, tenant_id="good")
        bomb = engine.enroll("evil", "target@example.com", "hoarding")
        ordinary = engine.enroll("good", "ada@example.com", "onboarding",
                                 fields={"first_name": "Ada"})

        # When the dispatcher hands them to the workers
        started = time.monotonic()
        dispatch.dispatch_due_actions(enqueue_actions)
        # (the stand-in accepts the mail a moment before the worker records it sent)
        while not (recipients(standin) and Enrollment.get_by_id(bomb.id).status != "active"
                   and OutboundMessage.get(OutboundMessage.enrollment == ordinary.id).status
                   == "sent"):
            assert time.monotonic() - started < 30, "the email was not sent within 30 s"
            time.sleep(0.05)
    finally:
        configure(None)

    # Then both were rendered by one message, the ordinary email was sent
    assert [sorted(batch) for batch in batches] == [sorted(
        action.id for action in ScheduledAction.select().where(ScheduledAction.kind == "send"))]
    assert recipients(standin) == ["ada@example.com"]
    assert OutboundMessage.get(OutboundMessage.enrollment == ordinary.id).status == "sent"
    # and the bomb's enrollment failed with the node and the bound named
    failed = Enrollment.get_by_id(bomb.id)
    assert (failed.status, failed.exit_reason) == ("failed", "send_failed")
    action = ScheduledAction.get(ScheduledAction.enrollment == bomb.id)
    assert action.status == "failed"
    assert action.result.startswith("node 'intro', body, line 1: the template needed more than "
                                    "256 MiB of memory"), action.result
