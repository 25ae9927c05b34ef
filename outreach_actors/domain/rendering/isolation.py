"""Renders and checks tenant templates in child processes, each job held to a memory, a CPU
time and a wall-clock bound whatever the template does.

The sandbox's guards refuse the tricks foreseen; these bounds hold for the rest, and a
template that passes one fails its own email (a RenderError naming the node) instead of
taking down its worker, and with it the other emails of its batch. A render process is
handed plain data (the templates directory, the sources, the context) and answers with
the rendered parts or the error.

Render processes are started as multiprocessing starts processes: a program that renders
must guard its main module with ``if __name__ == "__main__":`` (the ``dramatiq``,
``periodiq`` and ``outreach`` commands do).
"""

from __future__ import annotations

import functools
import logging
import math
import multiprocessing
import os
import resource
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from outreach_actors.domain.rendering.limits import RenderError
from outreach_actors.domain.rendering.renderer import RenderedEmail, TemplateRenderer, node_of
from outreach_actors.settings import Settings

logger = logging.getLogger(__name__)

# The part of an email a render was at, as its process records it (see _RenderProcess).
_PARTS = ("", "subject", "template", "body", "text part")


@dataclass(frozen=True)
class RenderLimits:
    """What one render or template check may take, and how many run at once.

    ``memory_bytes``: address space beyond what its render process holds as the job
    starts; ``cpu_seconds``: CPU time, in whole seconds as the kernel counts them;
    ``timeout_seconds``: wall-clock time, for a job starved of CPU or stuck;
    ``processes``: the render processes each process keeps, and so its renders at once.
    """

    memory_bytes: int
    cpu_seconds: int
    timeout_seconds: float
    processes: int

    @classmethod
    def from_settings(cls, settings: Settings) -> RenderLimits:
        return cls(
            memory_bytes=int(settings.render_memory_limit),
            cpu_seconds=max(1, math.ceil(settings.render_cpu_limit.total_seconds())),
            timeout_seconds=settings.render_timeout.total_seconds(),
            processes=settings.render_processes,
        )


class IsolatedRenderer:
    """A TemplateRenderer whose renders and checks run in render processes (see
    RenderPool), each held to ``limits``; its methods are TemplateRenderer's.

    Its check also renders what a template computes from constants alone (see
    TemplateRenderer.check_bounds), which would pass a bound at every render.
    """

    def __init__(self, templates_dir: Path, limits: RenderLimits) -> None:
        self.templates_dir = Path(templates_dir).resolve()
        self.limits = limits
        # What only parses, never runs, a template is asked here.
        self._in_process = TemplateRenderer(self.templates_dir)

    def render_email(self, *, subject: str, template: str | None, body: str | None,
                     context: dict[str, Any]) -> RenderedEmail:
        """Render one email, or raise RenderError naming the node (and the part and line
        when known) at fault, a bound passed included."""
        email = {"subject": subject, "template": template, "body": body, "context": context}
        outcome = render_pool(self.limits).run(("render", str(self.templates_dir), email))
        rendered = _rendered(outcome, context)
        if isinstance(rendered, RenderError):
            raise rendered
        return rendered

    def render_emails(self, emails: Sequence[dict[str, Any]], *,
                      budget_seconds: float | None = None) -> list[RenderedEmail | RenderError]:
        """Render several emails (each given as render_email's keywords), each held to the
        bounds as if alone: its RenderedEmail, or the RenderError render_email would raise.

        They go to one render process as one job, which saves a round trip to it per
        email (its IPC and wake-ups cost it as much CPU as a render). Should one of them
        end the process by passing the CPU or wall-clock bound, it fails with the error
        render_email would raise, without being run again, and the others are rendered
        again (their answers went with the process). Should the process end for no
        clear reason, that one and those after it are rendered again each alone, so
        that only it fails, as render_email says.

        With ``budget_seconds``, no render starts once that much time has passed since
        the call (the first always starts): the answers are then for the emails up to
        there, and the caller renders the rest another time. Each render is bounded, but
        a batch of slow ones would hold its thread for the sum of their bounds.
        """
        deadline = None if budget_seconds is None else time.monotonic() + budget_seconds
        return self._render_emails(list(emails), deadline)

    def _render_emails(self, emails: list[dict[str, Any]],
                       deadline: float | None) -> list[RenderedEmail | RenderError]:
        answers: list[tuple] = []
        if len(emails) > 1:
            outcome = render_pool(self.limits).run(
                ("render_many", str(self.templates_dir), emails,
                 self.limits.timeout_seconds, deadline), jobs=len(emails))
            if outcome[0] == "rendered_many":
                answers = outcome[1]
            elif not outcome[4]:  # stopped by a bound, at email ``at``: it alone fails
                at = outcome[3]
                # Those before it had started within the budget: all are rendered again,
                # or the caller would run the bomb again with the ones left over.
                before = self._render_emails(emails[:at], None)
                failed = _rendered(outcome, emails[at]["context"])
                after = [] if _past(deadline) else self._render_emails(emails[at + 1:], deadline)
                return [*before, failed, *after]
        results: list[RenderedEmail | RenderError] = [
            _rendered(answer, email["context"]) for answer, email in zip(answers, emails, strict=False)]
        for email in emails[len(answers):]:
            if results and _past(deadline):
                break
            try:
                results.append(self.render_email(**email))
            except RenderError as exc:
                results.append(exc)
        return results

    def check_template(self, *, subject: str, template: str | None, body: str | None) -> list[str]:
        """What is wrong with an email node's subject and template or body (empty: fine),
        as TemplateRenderer.check_template says, with the bounds a render would pass."""
        outcome = render_pool(self.limits).run(("check", str(self.templates_dir), {
            "subject": subject, "template": template, "body": body}))
        if outcome[0] == "checked":
            return outcome[1]
        return [f"checking it {outcome[1]}"]

    def shows_unsubscribe_link(self, *, template: str | None, body: str | None) -> bool:
        return self._in_process.shows_unsubscribe_link(template=template, body=body)


def _rendered(outcome: tuple, context: dict[str, Any]) -> RenderedEmail | RenderError:
    """A render job's answer as the email, or the error that fails it."""
    if outcome[0] == "rendered":
        return RenderedEmail(*outcome[1:])
    if outcome[0] == "refused":
        reason, node, field, line = outcome[1:]
        return RenderError(reason, node=node, field=field, line=line)
    reason, part = outcome[1:3]
    return RenderError(reason, node=node_of(context), field=part or None)


class RenderPool:
    """Render processes for one set of limits, started when first needed and kept: each
    runs one job at a time, and one that a job killed, timed out or left short of
    memory is replaced by a fresh one. Safe to share between threads."""

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        self._idle: list[_RenderProcess] = []
        self._started = 0  # processes alive, idle or running a job
        self._lock = threading.Lock()
        self._free = threading.BoundedSemaphore(limits.processes)

    def start(self) -> None:
        """Start the render processes that first uses would start (a worker does it as
        it boots: the first one starts the server they are forked from, which imports
        the package, seconds of CPU that its first email would otherwise wait out)."""
        while True:
            with self._lock:
                if self._started >= self.limits.processes:
                    return
                self._started += 1
            try:
                process = _RenderProcess(self.limits)
            except BaseException:
                with self._lock:
                    self._started -= 1
                raise
            with self._lock:
                self._idle.append(process)

    def run(self, job: tuple, *, jobs: int = 1) -> tuple:
        """The outcome of ``job``: its answer (``rendered``, ``refused``, ``checked``,
        ``rendered_many``) or ``("stopped", why, part, email, unexplained)`` when it
        passed the CPU or time bound or killed its process (``email``: the index of the
        email of a ``render_many`` it was at; ``unexplained``: not clearly by a bound).
        ``jobs``: how many renders ``job`` holds, each allowed the wall-clock bound."""
        with self._free:
            for attempt in (1, 2):
                process = self._take()
                try:
                    outcome, spent = process.run(job, self.limits.timeout_seconds * jobs)
                except _Lost:
                    self._stop(process)  # it died idle: the job never ran
                    continue
                except _Stopped as stopped:
                    self._stop(process)
                    if stopped.unexplained and attempt == 1 and jobs == 1:
                        continue  # not clearly the template's doing: once more
                    return ("stopped", stopped.reason, stopped.part, stopped.email,
                            stopped.unexplained)
                except BaseException:  # an interrupted wait: its answer must not reach another job
                    self._stop(process)
                    raise
                if spent:
                    self._stop(process)
                else:
                    with self._lock:
                        self._idle.append(process)
                return outcome
            raise RenderProcessError("render processes die before they can take a job; look "
                                     "for their exit in this process's log (out of memory?)")

    def _take(self) -> _RenderProcess:
        """An idle process, or a new one (the caller holds a slot, so there is room)."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
            self._started += 1
        try:
            return _RenderProcess(self.limits)
        except BaseException:
            with self._lock:
                self._started -= 1
            raise

    def _stop(self, process: _RenderProcess) -> None:
        process.stop()
        with self._lock:
            self._started -= 1


_pools: dict[RenderLimits, RenderPool] = {}
_pools_lock = threading.Lock()


def render_pool(limits: RenderLimits) -> RenderPool:
    """This process's pool for ``limits``, created on first use."""
    pool = _pools.get(limits)
    if pool is None:
        with _pools_lock:
            pool = _pools.setdefault(limits, RenderPool(limits))
    return pool


# A forked child must not share its parent's render processes: their pipes are the parent's.
os.register_at_fork(after_in_child=_pools.clear)


class RenderProcessError(RuntimeError):
    """A render process could not be started or kept: a fault of the machine or the
    setup, never of a template (the send is retried, the enrollment left as it is)."""


class _Lost(Exception):
    """The render process was gone before it took the job."""


class _Stopped(Exception):
    """The job ended its render process: ``reason`` says why, ``part`` and ``email`` (the
    index in a batch) where it was."""

    def __init__(self, reason: str, part: str, email: int, *, unexplained: bool = False) -> None:
        super().__init__(reason)
        self.reason, self.part, self.email, self.unexplained = reason, part, email, unexplained


class _RenderProcess:
    """One render process and the pipe to it.

    Started with the forkserver method: forked from a small server process that has
    this module (Jinja, lxml) imported, never from this one, whose other threads may
    hold locks that a fork would copy held. It records in shared memory which email of
    a batch and which part of it it is rendering, so that a render it dies of can still
    be placed.
    """

    def __init__(self, limits: RenderLimits) -> None:
        context = multiprocessing.get_context("forkserver")
        # Before its server starts (no effect after): each fork then has them imported.
        context.set_forkserver_preload(["__main__", __name__])
        self.limits = limits
        self._connection, theirs = context.Pipe()
        self._part = context.RawValue("b", 0)
        self._email = context.RawValue("i", 0)
        self._process = context.Process(
            target=serve, args=(theirs, self._part, self._email, limits.memory_bytes,
                                limits.cpu_seconds),
            name="outreach-render", daemon=True)
        try:
            try:
                self._process.start()
            finally:
                theirs.close()  # the process has its own copy
            # Its first word says it is ready: one that dies before is not a template's doing.
            if self._connection.poll(_START_TIMEOUT_S):
                self._connection.recv()
                return
            problem = f"not ready within {_START_TIMEOUT_S} s"
        except Exception as exc:  # multiprocessing raises OSError, RuntimeError, AssertionError
            problem = str(exc) or type(exc).__name__
        self.stop()
        if self._process.exitcode is not None:
            problem += f"; {_exit_description(self._process.exitcode)}"
        raise RenderProcessError(
            f"a render process did not start ({problem}); its error, if any, is in this "
            "process's log. A program that renders must guard its main module with "
            '`if __name__ == "__main__":`')

    def run(self, job: tuple, timeout_seconds: float) -> tuple[tuple, bool]:
        """(the job's answer, whether the process is spent and must be replaced)."""
        self._part.value = self._email.value = 0
        try:
            self._connection.send(job)
        except OSError as exc:
            raise _Lost from exc
        if not self._connection.poll(timeout_seconds):
            raise _Stopped(self._took_too_long(), _PARTS[self._part.value], self._email.value)
        try:
            return self._connection.recv()
        except (EOFError, OSError):
            self._process.join(5)
        part, email, code = _PARTS[self._part.value], self._email.value, self._process.exitcode
        if code == -signal.SIGXCPU:
            raise _Stopped(f"used more than {self.limits.cpu_seconds} s of CPU time "
                           "(OUTREACH_RENDER_CPU_LIMIT); make the template do less work: "
                           "fewer or smaller loops and macro calls", part, email)
        if code == -signal.SIGALRM:  # a render of a batch, past its own wall-clock bound
            raise _Stopped(self._took_too_long(), part, email)
        raise _Stopped(f"ended its render process ({_exit_description(code)}), most likely "
                       f"by needing more than {_mib(self.limits.memory_bytes)} of memory "
                       "(OUTREACH_RENDER_MEMORY_LIMIT); make the template build smaller values",
                       part, email, unexplained=True)

    def _took_too_long(self) -> str:
        return f"took longer than {self.limits.timeout_seconds:g} s (OUTREACH_RENDER_TIMEOUT)"

    def stop(self) -> None:
        if self._process.pid is not None:
            self._process.kill()
            self._process.join(5)
        self._connection.close()


# How long a new render process may take to start (the first one starts the server it
# is forked from, which imports the package).
_START_TIMEOUT_S = 60


def _exit_description(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return f"exit status {code}"


def _past(deadline: float | None) -> bool:
    """Whether a batch's deadline (a time.monotonic() value, or None for none) has come:
    asked in the pool's caller and in the render process alike, since time.monotonic is
    one clock for every process of the machine."""
    return deadline is not None and time.monotonic() >= deadline


def _mib(size: int) -> str:
    return f"{size / 2**20:g} MiB"


# -- in the render process ---------------------------------------------------------------

def serve(connection: Connection, part: Any, email_index: Any, memory_bytes: int,
          cpu_seconds: int) -> None:
    """A render process: run each job the pool sends within the limits and answer it,
    until the pool closes its end of the pipe."""
    # A Ctrl-C at the terminal is for the worker, which then closes the pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Passing the CPU limit ends the process wherever it is, in C code too; no core file.
    signal.signal(signal.SIGXCPU, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGXCPU})
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    hard = {limit: resource.getrlimit(limit)[1] for limit in (resource.RLIMIT_CPU,
                                                             resource.RLIMIT_AS)}
    # Each render of a batch is held to the wall-clock bound here: one that passes it ends
    # the process, and the pool fails it and renders the others again.
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    renderers: dict[str, TemplateRenderer] = {}
    connection.send("ready")
    while True:
        try:
            job = connection.recv()
        except (EOFError, OSError):
            return
        if job[0] != "render_many":
            _limit_job(memory_bytes, cpu_seconds, hard)
            connection.send(_answer(job, renderers, part, memory_bytes))
            continue
        _, templates_dir, emails, timeout_seconds, deadline = job
        answers, spent = [], False
        for index, email in enumerate(emails):
            if answers and _past(deadline):
                break  # out of time: the pool's caller renders the rest another time
            email_index.value = index
            _limit_job(memory_bytes, cpu_seconds, hard)
            signal.setitimer(signal.ITIMER_REAL, timeout_seconds)
            answer, spent = _answer(("render", templates_dir, email), renderers, part,
                                    memory_bytes)
            signal.setitimer(signal.ITIMER_REAL, 0)
            answers.append(answer)
            if spent:
                break  # the rest go to a fresh process, each alone
        connection.send((("rendered_many", answers), spent))


def _limit_job(memory_bytes: int, cpu_seconds: int, hard: dict[int, int]) -> None:
    """Let the next job take ``cpu_seconds`` more CPU and ``memory_bytes`` more address
    space than the process has used so far (both limits count the whole process)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _set_soft_limit(resource.RLIMIT_CPU, math.ceil(usage.ru_utime + usage.ru_stime) + cpu_seconds,
                    hard)
    size = _address_space()
    if size is not None:  # only Linux has /proc (and only Linux enforces RLIMIT_AS)
        _set_soft_limit(resource.RLIMIT_AS, size + memory_bytes, hard)


def _set_soft_limit(limit: int, value: int, hard: dict[int, int]) -> None:
    if hard[limit] != resource.RLIM_INFINITY:
        value = min(value, hard[limit])
    resource.setrlimit(limit, (value, hard[limit]))


def _address_space() -> int | None:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


def _answer(job: tuple, renderers: dict[str, TemplateRenderer], part: Any,
            memory_bytes: int) -> tuple[tuple, bool]:
    kind, templates_dir, fields = job
    renderer = renderers.get(templates_dir)
    if renderer is None:
        renderer = renderers[templates_dir] = TemplateRenderer(Path(templates_dir))
    short_of_memory = (f"needed more than {_mib(memory_bytes)} of memory "
                       "(OUTREACH_RENDER_MEMORY_LIMIT); make the template build smaller values")
    try:
        if kind == "check":
            problems = renderer.check_template(**fields)
            return ("checked", problems or renderer.check_bounds(**fields)), False
        email = renderer.render_email(**fields, on_part=functools.partial(_mark, part))
        return ("rendered", email.subject, email.html, email.text), False
    except RenderError as exc:
        if isinstance(exc.__cause__, MemoryError):
            return ("refused", f"the template {short_of_memory}", exc.node, exc.field,
                    exc.line), True
        return ("refused", exc.reason, exc.node, exc.field, exc.line), False
    except (MemoryError, Exception) as exc:  # in the text part, or in a check
        # MemoryError is an Exception; named for the reader. Anything else is a fault the
        # template's output met (in lxml, say): its email fails, the process is replaced.
        reason = short_of_memory if isinstance(exc, MemoryError) else (
            f"failed: {exc} ({type(exc).__name__})")
        if kind == "check":
            return ("checked", [f"checking it {reason}"]), True
        return ("refused", f"the email {reason}", node_of(fields["context"]),
                _PARTS[part.value] or None, None), True


def _mark(shared: Any, part: str) -> None:
    shared.value = _PARTS.index(part)
