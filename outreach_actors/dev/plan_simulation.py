"""Run a plan against the real engine on a throwaway database and a virtual clock.

What a team runs in CI before a plan change mails anyone::

    from outreach_actors.testing import simulate

    result = simulate("plans/onboarding.yaml", {"email": "ada@example.com", "first_name": "Ada"},
                      events=["at +1h opened", "at +2h clicked"])
    assert result.path == ["intro", "thanks"]
    assert result.emails[0].subject == "Welcome, Ada"

The contact is enrolled, and every step runs through the code the workers run: the
engine's moves, the dispatcher claiming due actions, the render (the real renderer,
in its render processes), the send (claim, suppression re-check, timers), the timers
firing, and SendGrid's Event Webhook bodies stored and normalized by ingest. Only
two things differ: time is virtual (the clock jumps to each timer's due time, so two
days pass at once) and the provider is a recorder: each email is built as the
SendGrid client builds its request and kept, and nothing is ever sent to SendGrid.
The database is SQLite in memory, bound only while a scenario runs.
"""

from __future__ import annotations

import calendar
import json
import re
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from outreach_actors.dev.standin import AcceptedMessage
from outreach_actors.dev.standin import new_message_id as new_x_message_id
from outreach_actors.dev.webhook_events import EVENT_KINDS, events_for, webhook_body
from outreach_actors.domain import dispatch, engine, ingest, timers
from outreach_actors.domain.goals import GOAL_REASON_PREFIX
from outreach_actors.domain.host_events import TrackError, track
from outreach_actors.domain.mail import (
    order_message_id,
    render_for_send_many,
    renderer_for,
    send_message,
)
from outreach_actors.domain.mail.outgoing import OutgoingEmail, SendOutcome
from outreach_actors.domain.plans import PlanSpec, validate_plan
from outreach_actors.domain.store import models
from outreach_actors.domain.store.by_id import row_by_id, rows_by_id
from outreach_actors.domain.store.db import sqlite_database
from outreach_actors.domain.store.models import (
    Enrollment,
    NodeVisit,
    OutboundMessage,
    ScheduledAction,
    SenderIdentity,
    Tenant,
)
from outreach_actors.domain.store.statements import model_rows, statement
from outreach_actors.providers.sendgrid.client import InvalidEmail, build_mail
from outreach_actors.providers.sendgrid.events import EVENT_TYPES, parse_sendgrid_batch
from outreach_actors.settings import Settings, get_settings

#: Where virtual time starts: a Monday, 09:00 UTC (inside the usual send windows).
DEFAULT_START = datetime(2030, 1, 7, 9, 0)
#: The step that only lets time pass.
NOTHING = "nothing"
#: A scenario that runs more actions than this is a plan that loops (timers that
#: mail for ever); the simulation stops it with an error instead of hanging.
MAX_ACTIONS = 1_000

# A step: "[at +DURATION] EVENT [PROPERTIES]". Durations: 30s, 15m, 1h, 2d, 1w, or ISO-8601
# (PT1H); properties (of a host event) a JSON object.
_STEP = re.compile(r"\s*(?:at\s+\+\s*(?P<offset>\S+)\s+)?(?P<event>[A-Za-z][A-Za-z0-9_.:-]*)"
                   r"(?:\s+(?P<properties>\{.*\}))?\s*", re.DOTALL)
_SHORT_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
# The SendGrid event kind a step's name stands for: SendGrid's own names (and the
# helper kinds machine_open and blocked), or the project's normalized names.
_KIND_OF = {**{kind: kind for kind in EVENT_KINDS},
            **{normalized: kind for kind, normalized in EVENT_TYPES.items()
               if normalized not in EVENT_KINDS and kind in EVENT_KINDS
               and kind != "group_unsubscribe"}}


# When the next pending action is due (fixed SQL: this runs after every step).
_NEXT_DUE = "SELECT MIN(run_at) FROM scheduled_action WHERE status = ?"
# The nodes an enrollment entered, in order, and each one's route (fixed SQL: see
# domain/store/statements.py; each scenario reads it).
_PATH = "SELECT node, route FROM node_visit WHERE enrollment_id = {p} ORDER BY version"


class SimulationError(ValueError):
    """A script or plan the simulation cannot run; the message says which step and why."""


@dataclass(frozen=True)
class SimulatedEmail:
    """One email the plan sent (rendered by the real renderer, never mailed)."""

    node: str
    subject: str
    text: str
    html: str
    to_email: str
    from_email: str
    sent_at: datetime  # virtual time
    #: The request body the SendGrid client would have posted (its v3 JSON).
    request: dict[str, Any] = field(repr=False, default_factory=dict)


@dataclass(frozen=True)
class SimulationResult:
    """Where one contact went: the path, the routes taken, the emails, how it ended."""

    contact: str
    #: The nodes entered, in order (a node entered twice appears twice).
    path: list[str]
    #: The route taken at each routing node entered, by node (a split's arm, or "holdout").
    routes: dict[str, str]
    emails: list[SimulatedEmail]
    #: active, completed, exited, failed, or converted (a goal reached: see ``goal``).
    status: str
    exit_reason: str | None
    #: The node the contact is at when the script ended.
    node: str
    #: Virtual time when the contact was enrolled, and when the script ended.
    started_at: datetime
    ended_at: datetime

    @property
    def converted(self) -> bool:
        """Whether the contact reached one of the plan's goals."""
        return self.status == Enrollment.CONVERTED

    @property
    def goal(self) -> str | None:
        """The event of the goal the contact reached (``purchased``), if it reached one."""
        return self.exit_reason.removeprefix(GOAL_REASON_PREFIX) if self.converted and \
            self.exit_reason else None

    def email(self, node: str) -> SimulatedEmail:
        """The (first) email sent from ``node``; KeyError naming what was sent if none."""
        for email in self.emails:
            if email.node == node:
                return email
        raise KeyError(f"no email was sent from node {node!r}; sent from: "
                       f"{[email.node for email in self.emails]}")


class RecordingProvider:
    """Stands where the SendGrid client stands: builds each request as the client does
    (so what SendGrid would refuse is refused here too), keeps it, answers 202."""

    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.accepted: dict[str, tuple[OutgoingEmail, AcceptedMessage]] = {}

    def send(self, email: OutgoingEmail) -> SendOutcome:
        try:
            request = build_mail(email).get()
        except InvalidEmail as exc:
            return SendOutcome("permanent", error=str(exc))
        accepted = AcceptedMessage(new_x_message_id(), request, {}, _epoch(self.clock.now))
        self.accepted[email.message_id] = (email, accepted)
        return SendOutcome("sent", provider_message_id=accepted.x_message_id, status_code=202)


@dataclass
class VirtualClock:
    """The time every domain module reads (models.set_clock) while a scenario runs."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now


def parse_step(step: str, host_events: Collection[str] = ()) -> Step:
    """``"at +2d opened"`` -> (2 days, "opened", None); ``"clicked"`` -> (None, "clicked",
    None); ``'at +1d purchased {"amount": 120}'`` -> (1 day, "purchased", {"amount": 120})
    when ``purchased`` is one of the plan's ``host_events``."""
    match = _STEP.fullmatch(step) if isinstance(step, str) else None
    if match is None:
        raise SimulationError(f"step {step!r}: expected '[at +DURATION] EVENT', e.g. 'at +1h "
                              "opened', 'at +2d nothing' or 'at +1d purchased {\"amount\": 120}'")
    offset = None if match["offset"] is None else _duration(step, match["offset"])
    if match["event"] in host_events:  # the plan's own names, case and all
        return Step(offset, match["event"], _properties(step, match["properties"]))
    event = match["event"].lower()
    if event != NOTHING and event not in _KIND_OF:
        raise SimulationError(f"step {step!r}: unknown event {match['event']!r}; known: "
                              f"{', '.join(sorted([NOTHING, *_KIND_OF, *host_events]))}")
    if match["properties"] is not None:
        raise SimulationError(f"step {step!r}: only a host event (the plan's `events:`) "
                              "takes properties")
    return Step(offset, event, None)


class Step(NamedTuple):
    """One parsed step: when (after the enrollment; None: at once), what, and the
    properties of a host event (None for SendGrid's events)."""

    offset: timedelta | None
    event: str
    properties: dict[str, Any] | None


def _properties(step: str, text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        properties = json.loads(text)
    except ValueError as exc:
        raise SimulationError(f"step {step!r}: the properties are not JSON: {exc}") from None
    if not isinstance(properties, dict):
        raise SimulationError(f"step {step!r}: the properties are a JSON object")
    return properties


def _duration(step: str, text: str) -> timedelta:
    if short := _SHORT_DURATION.fullmatch(text.lower()):
        return timedelta(**{_UNITS[short[2]]: float(short[1])})
    from outreach_actors.settings import parse_duration

    try:
        return parse_duration(text)
    except ValueError:
        raise SimulationError(f"step {step!r}: {text!r} is no duration; use 30m, 1h, 2d, "
                              "1w or ISO-8601 such as PT1H") from None


def _epoch(moment: datetime) -> int:
    return calendar.timegm(moment.utctimetuple())


def _plan_of(plan: PlanSpec | Mapping[str, Any] | str | Path, settings: Settings) -> PlanSpec:
    """The plan, validated as `outreach plan load` validates it (templates included)."""
    if isinstance(plan, PlanSpec):
        return plan
    if isinstance(plan, Path) or (isinstance(plan, str) and "\n" not in plan
                                  and plan.endswith((".yaml", ".yml", ".json"))):
        plan = Path(plan).read_bytes()
    checker = renderer_for(Path(settings.templates_dir), settings).check_template
    return validate_plan(plan, check_template=checker)


class PlanSimulator:
    """One plan, ready to run scenarios: its own in-memory database with the plan loaded.

    Parameters:
      plan: a PlanSpec, a mapping, YAML/JSON text, or the path of a plan file.
      templates_dir: where ``template:`` files are found (default: the settings').
      start: the virtual time each scenario starts at (default DEFAULT_START).
      settings: the settings to run with (default: the process's); the timeouts,
        render limits and templates come from them.
      tenant, plan_version: the tenant id and version the plan is stored under. A split
        assigns arms by tenant, address, plan name and version: give production's to
        see the arm production gives a contact.

    Reuse one simulator for many scenarios (a module-scoped fixture): each run starts
    from an empty set of contacts, and setting up the database is the costly part.
    """

    sender = "sender@simulation.test"

    def __init__(self, plan: PlanSpec | Mapping[str, Any] | str | Path, *,
                 templates_dir: str | Path | None = None, start: datetime = DEFAULT_START,
                 settings: Settings | None = None, tenant: str = "simulation",
                 plan_version: int = 1) -> None:
        settings = settings or get_settings()
        if templates_dir is not None:
            settings = settings.model_copy(update={"templates_dir": Path(templates_dir)})
        # Due means due now: the dispatcher's horizon would run timers early.
        self.settings = settings.model_copy(update={"dispatch_horizon": timedelta(0)})
        self.plan = _plan_of(plan, self.settings)
        self.start = start
        self.tenant = tenant
        self.database = sqlite_database(":memory:")
        # An in-memory database lives as long as its connection: held open until close()
        # (create_schema's connection context would close it otherwise). One thread only.
        self._connection = self.database.connection_context()
        self._connection.__enter__()
        with self._bound():
            models.create_schema(self.database)
            Tenant.create(id=self.tenant, name="Simulation")
            # The plan's own sender, if it names one: the render looks for it.
            SenderIdentity.create(tenant=self.tenant, email=self.plan.sender or self.sender,
                                  name="Simulation", verified=True)
            models.Plan.create(tenant=self.tenant, name=self.plan.name, version=plan_version,
                               definition=self.plan.to_definition())

    def close(self) -> None:
        self._connection.__exit__(None, None, None)

    def __enter__(self) -> PlanSimulator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def _bound(self, clock: VirtualClock | None = None) -> Iterator[None]:
        """This database bound and ``clock`` set, for the block; what was there before after."""
        previous = models.database_proxy.obj
        previous_clock = models.set_clock(clock)
        models.bind(self.database)
        try:
            yield
        finally:
            models.set_clock(previous_clock)
            models.bind(previous)

    def run(self, contact: str | Mapping[str, Any], events: Sequence[str] = (), *,
            until: timedelta | None = None) -> SimulationResult:
        """Enroll ``contact`` (an address, or a mapping with ``email``, its fields and
        perhaps ``timezone``) and play ``events`` (steps such as ``"at +1h opened"``:
        at that virtual time after the enrollment, the event on the last email sent;
        ``nothing`` only lets time pass). Timers due by the last step (or by ``until``
        after the enrollment, when later) fire in order. Returns where the contact went.
        """
        email, fields, timezone = _contact_parts(contact)
        steps = [parse_step(step, self.plan.events) for step in events]
        clock = VirtualClock(self.start)
        provider = RecordingProvider(clock)
        with self._bound(clock):
            self._clear()
            try:
                enrollment = engine.enroll(self.tenant, email, self.plan.name, fields=fields,
                                           timezone=timezone, now=clock.now)
            except engine.EnrollmentError as exc:
                raise SimulationError(f"contact {email!r:.80}: {exc}") from None
            self._advance(clock, clock.now, provider)
            for step, (offset, event, properties) in zip(events, steps, strict=True):
                at = clock.now if offset is None else self.start + offset
                if at < clock.now:
                    raise SimulationError(f"step {step!r} is earlier than the step before it "
                                          f"(+{clock.now - self.start}); steps go forward in time")
                self._advance(clock, at, provider)
                if properties is not None:  # the host app's track(), as it calls it
                    try:
                        track(self.tenant, email, event, properties, now=clock.now)
                    except TrackError as exc:
                        raise SimulationError(f"step {step!r}: {exc}") from None
                    self._advance(clock, clock.now, provider)
                elif event != NOTHING:
                    self._report(event, step, provider, clock)
                    self._advance(clock, clock.now, provider)
            if until is not None and self.start + until > clock.now:
                self._advance(clock, self.start + until, provider)
            return self._result(enrollment.id, email, provider, clock)

    def _clear(self) -> None:
        """Forget the contacts of earlier runs (the plan, tenant and sender stay)."""
        keep = {Tenant, SenderIdentity, models.Plan}
        for model in reversed(models.ALL_MODELS):
            if model not in keep:
                self.database.execute_sql(f'DELETE FROM "{model._meta.table_name}"')

    def _advance(self, clock: VirtualClock, until: datetime, provider: RecordingProvider) -> None:
        """Run every action due by ``until``, each at its own due time, as the dispatcher
        and the workers would; then leave the clock at ``until``."""
        for _ in range(MAX_ACTIONS):
            due = ScheduledAction.run_at.python_value(self.database.execute_sql(
                _NEXT_DUE, (ScheduledAction.PENDING,)).fetchone()[0])
            if due is None or due > until:
                clock.now = max(clock.now, until)
                return
            clock.now = max(clock.now, due)
            dispatch.dispatch_due_actions(lambda claimed: self._work(claimed, provider),
                                          settings=self.settings)
        raise SimulationError(f"more than {MAX_ACTIONS} actions ran by "
                              f"+{clock.now - self.start}: does the plan loop?")

    def _work(self, claimed: list[tuple[ScheduledAction, int]], provider: RecordingProvider) -> None:
        """What the workers do with claimed actions (worker.actors.mail): render then send
        each email, fire the timers."""
        sends = [action.id for action, _ in claimed if action.kind == ScheduledAction.SEND]
        timeouts = [action.id for action, _ in claimed if action.kind != ScheduledAction.SEND]
        if sends:
            batch = render_for_send_many(sends, settings=self.settings)
            if batch.raised:
                action_id, error = next(iter(batch.raised.items()))
                raise SimulationError(f"rendering send action {action_id} failed: {error}") from error
            for order in batch.orders.values():
                if (message_id := order_message_id(order)) is not None:
                    send_message(message_id, provider)
        if timeouts:
            timers.fire_timeouts(timeouts)

    def _report(self, event: str, step: str, provider: RecordingProvider, clock: VirtualClock) -> None:
        """SendGrid's Event Webhook reporting ``event`` on the last email sent: the body
        stored and normalized as the webhook receiver and its worker do."""
        if not provider.accepted:
            raise SimulationError(f"step {step!r}: no email has been sent yet "
                                  f"(at +{clock.now - self.start}), so nothing can be {event}")
        _, accepted = list(provider.accepted.values())[-1]
        body = webhook_body(events_for(accepted, _KIND_OF[event], timestamp=_epoch(clock.now)))
        delivery_id = ingest.store_delivery(body, {}, received_at=clock.now)
        ingest.normalize_delivery(delivery_id, parse_batch=parse_sendgrid_batch,
                                  settings=self.settings)

    def _result(self, enrollment_id: int, email: str, provider: RecordingProvider,
                clock: VirtualClock) -> SimulationResult:
        visits = model_rows(NodeVisit, statement(_PATH), (enrollment_id,))
        enrollment = row_by_id(Enrollment, enrollment_id, Enrollment.status,
                               Enrollment.exit_reason, Enrollment.current_node)
        # Not the rendered parts: the recorder kept what was sent.
        sent = {message.id: message for message in rows_by_id(
                    OutboundMessage, list(provider.accepted), OutboundMessage.id,
                    OutboundMessage.node, OutboundMessage.status, OutboundMessage.sent_at)
                if message.status == OutboundMessage.SENT}
        emails = [
            SimulatedEmail(node=sent[message_id].node, subject=outgoing.subject,
                           text=outgoing.text or "", html=outgoing.html or "",
                           to_email=outgoing.to_email, from_email=outgoing.from_email,
                           sent_at=sent[message_id].sent_at, request=accepted.body)
            for message_id, (outgoing, accepted) in provider.accepted.items() if message_id in sent
        ]
        return SimulationResult(
            contact=email, path=[visit.node for visit in visits],
            routes={visit.node: visit.route for visit in visits if visit.route is not None},
            emails=emails, status=enrollment.status, exit_reason=enrollment.exit_reason,
            node=enrollment.current_node, started_at=self.start, ended_at=clock.now)


def _contact_parts(contact: str | Mapping[str, Any]) -> tuple[str, dict[str, Any], str | None]:
    if isinstance(contact, str):
        return contact, {}, None
    if not isinstance(contact, Mapping) or not isinstance(contact.get("email"), str):
        raise SimulationError(f"a contact is an address or a mapping with `email`, not {contact!r:.80}")
    fields = {key: value for key, value in contact.items() if key not in {"email", "timezone"}}
    return contact["email"], fields, contact.get("timezone")


def simulate(plan: PlanSpec | Mapping[str, Any] | str | Path, contact: str | Mapping[str, Any],
             events: Sequence[str] = (), *, until: timedelta | None = None,
             **options: Any) -> SimulationResult:
    """Run one scenario on a fresh PlanSimulator (``options`` go to it); see
    PlanSimulator.run. For many scenarios of one plan, keep a PlanSimulator."""
    with PlanSimulator(plan, **options) as simulator:
        return simulator.run(contact, events, until=until)


def run_script(plan: PlanSpec | Mapping[str, Any] | str | Path, script: Mapping[str, Any], *,
               templates_dir: str | Path | None = None) -> Iterable[tuple[SimulationResult, list[str]]]:
    """Run a script (``outreach plan test``): ``contacts``, each with ``email``, optional
    ``fields``, ``timezone``, ``events`` (steps), ``until`` (a duration) and ``expect``
    (``path``, ``status``, ``exit_reason``, ``converted``, ``routes``, ``subjects``);
    yields each result with the expectations it failed."""
    contacts = script.get("contacts") if isinstance(script, Mapping) else None
    if not isinstance(contacts, list) or not contacts:
        raise SimulationError("a script is a mapping with `contacts`: a list of "
                              "{email, fields, events, expect}")
    with PlanSimulator(plan, templates_dir=templates_dir) as simulator:
        for index, entry in enumerate(contacts):
            if not isinstance(entry, Mapping):
                raise SimulationError(f"contacts[{index}]: expected a mapping with `email`")
            for key, kind, called in (("fields", Mapping, "mapping"), ("expect", Mapping, "mapping"),
                                      ("events", list, "list of steps")):
                if entry.get(key) is not None and not isinstance(entry[key], kind):
                    raise SimulationError(f"contacts[{index}].{key}: expected a {called}")
            contact = {**(entry.get("fields") or {}), "email": entry.get("email")}
            if entry.get("timezone"):
                contact["timezone"] = entry["timezone"]
            until = _duration(f"contacts[{index}].until", str(entry["until"])) if entry.get("until") else None
            result = simulator.run(contact, entry.get("events") or [], until=until)
            yield result, _unmet(result, entry.get("expect") or {})


def _unmet(result: SimulationResult, expect: Mapping[str, Any]) -> list[str]:
    actual = {"path": result.path, "status": result.status, "routes": result.routes,
              "subjects": [email.subject for email in result.emails],
              "exit_reason": result.exit_reason, "converted": result.converted}
    unknown = sorted(set(expect) - set(actual))
    problems = [f"expect.{key}: unknown; expect takes {', '.join(actual)}" for key in unknown]
    return problems + [f"expected {key} {value!r}, got {actual[key]!r}"
                       for key, value in expect.items() if key in actual and actual[key] != value]
