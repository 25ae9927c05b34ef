"""Plan parsing and validation: pure, no I/O beyond an optional template checker.

A plan is YAML or JSON (see DESIGN.md). :func:`validate_plan` reports every fault
at once, each with the path where it sits (``nodes.bump.transitions[0].after``),
so a user fixes a plan in one pass. Nothing is enrolled into a plan that fails.
"""

from __future__ import annotations

import json
import re
import reprlib
from collections import Counter
from collections.abc import Callable, Hashable, Mapping
from datetime import time, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import isodate
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
)
from pydantic_core import PydanticSerializationError

from outreach_actors.domain import routing, splits
from outreach_actors.domain.addresses import normalized_address
from outreach_actors.domain.plan_events import host_event_errors
from outreach_actors.domain.vocabulary import (
    EVENT_ALIASES,
    TIMEOUT_EVENTS,
    host_event_name_problem,
)
from outreach_actors.settings import parse_duration

# Plans are written by people; a plan this large is a mistake or an attack.
MAX_PLAN_BYTES = 1_000_000
MAX_NODES = 500
# The longest `after` a transition may wait.
MAX_AFTER = timedelta(days=3650)
# The validation context key of a stored plan read back (plan_from_definition).
STORED = "stored"
# The validation context key of the host events the plan declares (``events:``).
HOST_EVENTS = "host_events"

WEEKDAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_WEEKDAY_NAMES = {name: name[:3] for name in
                  ["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]}
# A send window's start or end: H:MM or HH:MM, seconds optional.
_TIME_OF_DAY = re.compile(r"(\d{1,2}):(\d{2})(?::(\d{2}))?")

TemplateChecker = Callable[..., list[str]]

# Values echoed in errors are cut short: a YAML alias bomb or deep nesting has a huge repr.
_ECHO = reprlib.Repr()
_ECHO.maxlevel, _ECHO.maxlist, _ECHO.maxdict = 2, 4, 4


class PlanError(ValueError):
    """A plan is invalid; ``errors`` lists every fault with its path."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("invalid plan:\n" + "\n".join(f"  {error}" for error in errors))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Transition(_Strict):
    on: str
    to: str
    after: timedelta | None = None
    # A condition on the host event's properties or the contact's fields (conditions.py).
    if_: str | None = Field(default=None, alias="if")

    @field_validator("on")
    @classmethod
    def _known_event(cls, value: str, info: ValidationInfo) -> str:
        return _known_event(value, info)

    @field_validator("after", mode="before")
    @classmethod
    def _iso_duration(cls, value: Any, info: ValidationInfo) -> timedelta | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise ValueError(f"expected an ISO-8601 duration such as PT72H, got {_ECHO.repr(value)}")
        after = parse_duration(value)
        if after > MAX_AFTER and not _stored(info):
            # Past this a timer is no plan; far past it, send time + after overflows a datetime.
            raise ValueError(f"{_ECHO.repr(value)} is longer than {MAX_AFTER.days} days")
        return after

    @field_serializer("after")
    def _iso_after(self, after: timedelta | None) -> str | None:
        # Stored plans are read back with parse_duration: pydantic would write 365 days
        # and more as years ("P1Y"), which it refuses; isodate writes days ("P400D").
        return None if after is None else isodate.duration_isoformat(after)


def _known_event(value: str, info: ValidationInfo) -> str:
    """The normalized event a plan's ``on`` names: a built-in one or a declared host event."""
    if value in EVENT_ALIASES:
        return EVENT_ALIASES[value]
    if value in (info.context or {}).get(HOST_EVENTS, ()):
        return value
    known = ", ".join(sorted(EVENT_ALIASES))
    raise ValueError(f"unknown event {value!r}; known events: {known}; a host event "
                     "(track) must be declared in the plan's `events:` list")


class Goal(_Strict):
    """Reaching it ends the enrollment, from any node, as converted (goals.py)."""

    on: str
    if_: str | None = Field(default=None, alias="if")

    @field_validator("on")
    @classmethod
    def _known_event(cls, value: str, info: ValidationInfo) -> str:
        return _known_event(value, info)


class SendWindow(_Strict):
    days: list[str] = Field(default_factory=lambda: list(WEEKDAYS))
    start: time = time(0, 0)
    end: time = time(23, 59, 59)
    # Used when a contact has no timezone of its own.
    timezone: str = "UTC"

    @field_validator("days")
    @classmethod
    def _weekdays(cls, value: list[str]) -> list[str]:
        days = [_WEEKDAY_NAMES.get(day.lower(), day.lower()) for day in value]
        unknown = [day for day, short in zip(value, days, strict=True) if short not in WEEKDAYS]
        if unknown:
            raise ValueError(f"unknown weekday(s) {unknown}; use mon, tue, wed, thu, fri, sat, sun")
        if not days:
            raise ValueError("a send window needs at least one day")
        return days

    @field_validator("start", "end", mode="before")
    @classmethod
    def _wall_clock(cls, value: Any) -> time:
        # Read here, not by pydantic, which takes a number as seconds and "09:00+02:00"
        # as a time with an offset, and refuses "9:00". A time is wall-clock: the
        # contact's time zone applies.
        if isinstance(value, time) and value.tzinfo is None:
            return value
        if isinstance(value, str) and (match := _TIME_OF_DAY.fullmatch(value.strip())):
            hour, minute, second = (int(part or 0) for part in match.groups())
            if hour < 24 and minute < 60 and second < 60:
                return time(hour, minute, second)
            if (hour, minute, second) == (24, 0, 0):
                raise ValueError('a day ends at "23:59:59", not "24:00" (a window ends inside its day)')
        raise ValueError(f"expected a time of day such as \"09:00\" or \"17:30\" (no offset: the "
                         f"contact's time zone applies), got {_ECHO.repr(value)}")

    @field_validator("timezone")
    @classmethod
    def _iana_zone(cls, value: str) -> str:
        if iana_zone(value) is None:
            raise ValueError(f"{value!r} is not an IANA time zone such as Europe/Paris")
        return value


def iana_zone(name: object) -> ZoneInfo | None:
    """The IANA time zone ``name`` names, or None (not text, unknown, or a name too
    long for a path, which zoneinfo reports as an OSError)."""
    if not isinstance(name, str):
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def _sendgrid_categories(value: list[str]) -> list[str]:
    """SendGrid's rules for categories, checked when the plan is loaded, not at each send."""
    if len(value) > MAX_CATEGORIES:
        raise ValueError(f"SendGrid takes at most {MAX_CATEGORIES} categories per email")
    for category in value:
        if not category or len(category) > 255 or not category.isprintable():
            raise ValueError(f"category {category!r:.60} must be 1 to 255 printable characters")
    return value


Categories = Annotated[list[str], AfterValidator(_sendgrid_categories)]
MAX_CATEGORIES = 10


def _number(value: Any) -> Any:
    # pydantic reads true as 1: a weight or a holdout written `true` is a mistake.
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    return value


Number = Annotated[float, BeforeValidator(_number)]


class Arm(_Strict):
    """One arm of a split node: its share of the contacts and where they go."""

    to: str
    # Relative to the other arms' weights; bounded so that their sum stays exact.
    weight: Number = Field(gt=0, le=splits.MAX_WEIGHT, allow_inf_nan=False)
    # What stats and the visit call the arm; its target by default.
    name: Name | None = None
def _asm_group(value: int) -> int:
    # SendGrid's unsubscribe group ids are positive integers (asm.group_id).
    if isinstance(value, bool) or value < 1:
        raise ValueError(f"an unsubscribe group is a positive SendGrid group id, got {value!r}")
    return value


AsmGroup = Annotated[int, AfterValidator(_asm_group)]


class Branch(_Strict):
    """One branch of a branch node: taken when its condition holds (conditions.py)."""

    if_: str = Field(alias="if")
    to: str


class Node(_Strict):
    type: Literal["email", "wait", "exit", "split", "branch"]
    subject: str | None = None
    template: str | None = None
    body: str | None = None
    categories: Categories = Field(default_factory=list)
    transitions: list[Transition] = Field(default_factory=list)
    # Split nodes (see domain/splits.py): None elsewhere, so other nodes store no trace.
    arms: list[Arm] | None = None
    holdout: Number | None = Field(default=None, ge=0, le=splits.MAX_HOLDOUT, allow_inf_nan=False)
    # Sending policy of an email node (README, "Sending policy"): its own send window
    # over the plan's, whether it counts against the tenant's frequency caps (false
    # for mail the contact asked for), and its SendGrid unsubscribe group.
    send_window: SendWindow | None = None
    frequency_cap: bool = True
    asm_group: AsmGroup | None = None
    # Answer the enrollment's previous email: In-Reply-To, References, "Re: <subject>".
    thread: bool = False
    # Branch nodes (see domain/branches.py): None elsewhere, as a split's fields.
    branches: list[Branch] | None = None
    default: str | None = None


def _stored(info: ValidationInfo) -> bool:
    """Whether a stored plan is being read back (see plan_from_definition)."""
    return bool(info.context and info.context.get(STORED))


def _printable_name(value: str, info: ValidationInfo) -> str:
    # Names end up in database keys (enrollment and dedupe keys, at most 255
    # characters with the ids around them) and in logs: no control characters.
    if _stored(info):
        return value
    if not value or len(value) > MAX_NAME_LENGTH or not value.isprintable():
        raise ValueError(f"name {_ECHO.repr(value)} must be 1 to {MAX_NAME_LENGTH} printable characters")
    if value != value.strip():
        # Nobody types them back: `--plan padded` would not find ' padded '.
        raise ValueError(f"name {_ECHO.repr(value)} starts or ends with a space")
    return value


Name = Annotated[str, AfterValidator(_printable_name)]
MAX_NAME_LENGTH = 128


def _sender_address(value: str, info: ValidationInfo) -> str:
    # Which sender identity mails the plan: matched against the tenant's at send time,
    # where a malformed one would only show as "no sender". Checked by the rule the
    # identities themselves are stored by.
    if _stored(info):
        return value.strip().lower()
    try:
        return normalized_address(value)
    except ValueError:
        raise ValueError(f"{_ECHO.repr(value)} is not an email address") from None


SenderAddress = Annotated[str, AfterValidator(_sender_address)]


class PlanSpec(_Strict):
    name: Name
    start: str
    nodes: dict[Name, Node]
    send_window: SendWindow | None = None
    sender: SenderAddress | None = None
    categories: Categories = Field(default_factory=list)
    allow_reentry: bool = False
    description: str = ""
    events: list[str] = Field(default_factory=list)
    goals: list[Goal] = Field(default_factory=list)
    # The SendGrid unsubscribe group of the plan's emails (a node may name its own).
    asm_group: AsmGroup | None = None

    def window_of(self, node_name: str) -> SendWindow | None:
        """The send window of a node's email: its own, else the plan's."""
        node = self.nodes.get(node_name)
        return (node.send_window if node is not None and node.send_window else None) \
            or self.send_window

    def asm_group_of(self, node_name: str) -> int | None:
        """The unsubscribe group of a node's email: its own, else the plan's."""
        node = self.nodes.get(node_name)
        return (node.asm_group if node is not None and node.asm_group else None) or self.asm_group
    # A reply ends the enrollment from any node, unless the node routes `replied`.
    stop_on_reply: bool = True

    def node(self, name: str) -> Node:
        return self.nodes[name]

    def categories_of(self, node_name: str) -> list[str]:
        """The categories an email of the node carries: the plan's, then the node's, each
        once (SendGrid refuses a repeated category)."""
        return list(dict.fromkeys([*self.categories, *self.nodes[node_name].categories]))

    def nodes_without_timeout(self) -> list[str]:
        """The email nodes a contact leaves only on an event of the recipient (a click, a
        bounce): who never acts stays there, active, for ever. Legal, rarely meant."""
        return [name for name, node in self.nodes.items()
                if node.type == "email" and not self.timeout_transitions(name)]

    def timeout_transitions(self, node_name: str) -> list[Transition]:
        return [t for t in self.nodes[node_name].transitions if t.on in TIMEOUT_EVENTS]

    def transition_for(self, node_name: str, event: str) -> Transition | None:
        """The first transition of the node taken on this normalized event, if any."""
        for transition in self.nodes[node_name].transitions:
            if transition.on == event:
                return transition
        return None

    def to_definition(self) -> dict[str, Any]:
        return json.loads(self.model_dump_json(exclude_none=True, by_alias=True))


def _format_location(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path or "(plan)"


class _PlanLoader(yaml.SafeLoader):
    """YAML 1.1 reads `on`, `off`, `yes`, `no` as booleans, and plans say `on: click`.

    And PyYAML keeps the last of two equal keys: a second node with the name of
    the first would silently replace it. Here a repeated key is an error.
    """

    # The pure-Python SafeLoader, not libyaml's faster CSafeLoader: that composes nested
    # collections by C recursion with no depth check, and 100,000 opening brackets (a
    # 200 kB body, well under MAX_PLAN_BYTES) crash the process with a segmentation
    # fault. The pure loader raises a RecursionError, reported below.

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} appears twice in one mapping", key_node.start_mark)
            if isinstance(key, Hashable):
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


_BOOL = "tag:yaml.org,2002:bool"
# YAML 1.1 also reads digits joined by colons as base-60 numbers: `end: 17:00` is the
# integer 1020 and `start: 9:30` is 570. A plan means a time or text there, as YAML 1.2
# reads it, so PyYAML's int and float patterns are kept without their base-60 forms.
_BASE_60_FORMS = {
    "tag:yaml.org,2002:int": "|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+",
    "tag:yaml.org,2002:float": "|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\\.[0-9_]*",
}


def _plan_resolver(tag: str, regexp: re.Pattern) -> re.Pattern | None:
    """PyYAML's implicit resolver of ``tag`` as plans use it (None: dropped)."""
    if tag == _BOOL:
        return None
    form = _BASE_60_FORMS.get(tag)
    return regexp if form is None else re.compile(regexp.pattern.replace(form, ""), regexp.flags)


_PlanLoader.yaml_implicit_resolvers = {
    first: [(tag, resolved) for tag, regexp in resolvers
            if (resolved := _plan_resolver(tag, regexp)) is not None]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_PlanLoader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def load_plan_text(text: str | bytes, *, source: str = "plan") -> dict[str, Any]:
    """Parse YAML or JSON text into a mapping, or raise PlanError."""
    if len(text) > MAX_PLAN_BYTES:
        raise PlanError([f"{source}: plan is {len(text):,} bytes; the limit is {MAX_PLAN_BYTES:,}"])
    data = _json_plan(text)
    try:
        # JSON is a subset of YAML 1.2, and safe_load builds only plain data.
        if data is None:
            data = yaml.load(text, Loader=_PlanLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise PlanError([f"{source}: not valid YAML or JSON: {exc}{_yaml_hint(exc)}"]) from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise PlanError([f"{source}: nested too deeply to be a plan"]) from None
    if not isinstance(data, Mapping):
        raise PlanError([f"{source}: a plan must be a mapping with name, start and nodes"])
    return dict(data)


def _json_plan(text: str | bytes) -> Any:
    """The plan read as JSON, or None when it is not JSON (YAML then reads it, and
    names any fault with its line).

    JSON is YAML too, but the pure-Python YAML parser takes seconds over a plan near
    the size limit, and json reads it at once. A repeated key is left to YAML, which
    refuses it.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            return None
    if not text.lstrip().startswith("{"):
        return None
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        return None


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    mapping = dict(pairs)
    if len(mapping) != len(pairs):
        raise ValueError("a key appears twice in one object")
    return mapping


# What PyYAML's messages mean for the mistakes plan authors make.
_YAML_HINTS = [
    ("found character '\\t'", "indent with spaces, not tabs"),
    ("mapping values are not allowed here", 'a value holding ": " (a subject such as "Re: your '
     'trial") must be in quotes'),
    ("expected <block end>, but found", "a value that starts with {{, [ or { (a template such "
     'as "{{ contact.first_name }}, welcome") must be in quotes'),
    ("that cannot start any token", "a value that starts with @, ` or % must be in quotes"),
    ("found undefined alias", "a value that starts with * must be in quotes"),
]


def _yaml_hint(exc: yaml.YAMLError) -> str:
    problem = str(getattr(exc, "problem", "") or "")
    for known, hint in _YAML_HINTS:
        if known in problem:
            return f"\n  hint: {hint}"
    return ""


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _graph_errors(data: Mapping[str, Any], *, stored: bool = False) -> list[str]:
    """Cross-node checks, run on the raw mapping so that they are reported even when
    some fields fail the schema: a user sees every fault in one pass."""
    errors: list[str] = []
    nodes = _mapping(data.get("nodes"))
    start = data.get("start")
    declared_events = declared_host_events(data)
    if isinstance(start, str) and start not in nodes:
        errors.append(f"start: node {start!r} does not exist")
    for name, raw_node in nodes.items():
        node = _mapping(raw_node)
        base = f"nodes.{name}"
        node_type = node.get("type") if isinstance(node.get("type"), str) else None
        transitions = node.get("transitions") or []
        transitions = transitions if isinstance(transitions, list) else []
        events: list[str] = []
        for index, raw_transition in enumerate(transitions):
            transition = _mapping(raw_transition)
            path = f"{base}.transitions[{index}]"
            on = transition.get("on")
            event = EVENT_ALIASES.get(on) if isinstance(on, str) else None
            event = on if event is None and isinstance(on, str) and on in declared_events else event
            target = transition.get("to")
            if isinstance(target, str) and target not in nodes:
                errors.append(f"{path}.to: node {target!r} does not exist")
            if event is None:
                continue  # the schema check reports the unknown event
            if transition.get("if") is None:  # conditional ones may share an event
                events.append(event)
            has_after = transition.get("after") is not None
            if has_after and event not in TIMEOUT_EVENTS:
                errors.append(
                    f"{path}.after: only timeout events ({', '.join(sorted(TIMEOUT_EVENTS))}) "
                    f"take `after`, not {transition.get('on')!r}"
                )
            elif has_after and _parses_to_zero(transition["after"]):
                errors.append(f"{path}.after: must be longer than zero")
            if event == "elapsed" and not has_after:
                errors.append(f"{path}.after: `elapsed` needs a duration, e.g. after: P2D")
            if node_type == "wait" and event != "elapsed" and event not in declared_events:
                errors.append(f"{path}.on: a wait node sends no email; it moves on `elapsed` "
                              "and on host events declared in `events:`")
        for event in sorted(event for event, times in Counter(events).items() if times > 1):
            errors.append(f"{base}.transitions: event {event!r} appears more than once")
        if node_type == "exit" and transitions:
            errors.append(f"{base}.transitions: an exit node has no transitions")
        if node_type in {"email", "wait"} and not transitions:
            article = "an" if node_type == "email" else "a"
            errors.append(f"{base}.transitions: {article} {node_type} node needs a way out (or use type: exit)")
        if node_type == "email":
            if not node.get("subject") and not node.get("thread"):
                errors.append(f"{base}.subject: an email node needs a subject "
                              "(or `thread: true` to answer the previous email as Re: its subject)")
            elif not node.get("subject") and name == start:
                errors.append(f"{base}.subject: the start node has no previous email to thread "
                              "under; give it a subject")
            if (node.get("template") is None) == (node.get("body") is None):
                errors.append(f"{base}: give exactly one of `template` or `body`")
            elif not stored and isinstance(node.get("body"), str) and not node["body"].strip():
                errors.append(f"{base}.body: is empty; an email needs a body")
        elif node_type in {"wait", "exit", *routing.ROUTING_TYPES} and any(node.get(k) for k in ("subject", "template", "body")):
            errors.append(f"{base}: only email nodes take subject, template or body")
        if node_type != "email" and (node.get("send_window") or node.get("asm_group")
                                     or node.get("frequency_cap") is False):
            errors.append(f"{base}: only email nodes take send_window, frequency_cap or asm_group")
        errors += routing.node_errors(base, node, nodes)
    errors += routing.loops(nodes)
    edges = _edges(nodes)
    if isinstance(start, str) and start in nodes:
        reachable = _closure({start}, edges)
        for name in nodes:
            if name not in reachable:
                errors.append(f"nodes.{name}: unreachable from start {start!r}")
    if not stored:
        # Nodes from which no exit can be reached: a contact there stays in the plan for
        # ever, and a loop of timeouts among email nodes mails them for ever.
        leads_to: dict[str, set[str]] = {name: set() for name in nodes}
        for source, targets in edges.items():
            for target in targets:
                leads_to[target].add(source)
        exits = {name for name, node in nodes.items()
                 if _mapping(node).get("type") == "exit" or routing.ends_plan(_mapping(node))}
        ending = _closure(exits, leads_to)
        errors += [f"nodes.{name}.{routing.routes_field(_mapping(node)) or 'transitions'}: no path "
                   "from here reaches an exit node; a contact here would stay in the plan for ever"
                   for name, node in nodes.items()
                   if name not in ending and (_mapping(node).get("transitions") or routing.targets(_mapping(node)))]
    return errors


def _edges(nodes: Mapping[str, Any]) -> dict[str, set[str]]:
    """Each node's transition targets that are nodes of the plan (the raw mapping)."""
    edges: dict[str, set[str]] = {}
    for name, raw_node in nodes.items():
        raw = _mapping(raw_node).get("transitions") or []
        targets = [_mapping(transition).get("to") for transition in (raw if isinstance(raw, list) else [])]
        targets += routing.targets(_mapping(raw_node))
        edges[name] = {target for target in targets if isinstance(target, str) and target in nodes}
    return edges


def _closure(seeds: set[str], edges: Mapping[str, set[str]]) -> set[str]:
    """``seeds`` and every node reached from them along ``edges``."""
    reached, frontier = set(seeds), list(seeds)
    while frontier:
        for target in edges[frontier.pop()] - reached:
            reached.add(target)
            frontier.append(target)
    return reached


def _parses_to_zero(value: Any) -> bool:
    if not isinstance(value, str):
        return False  # the schema check reports it
    try:
        return parse_duration(value) == timedelta(0)
    except ValueError:
        return False  # the schema check reports it


def validate_plan(
    data: Mapping[str, Any] | str | bytes,
    *,
    check_template: TemplateChecker | None = None,
    stored: bool = False,
) -> PlanSpec:
    """Return the PlanSpec, or raise PlanError listing every fault with its path.

    ``check_template(subject=..., template=..., body=...)`` (from rendering) returns
    a list of problems for one email node; without it templates are not checked.
    ``stored``: the plan was validated when it was loaded, perhaps by an earlier
    version (see plan_from_definition).
    """
    if isinstance(data, str | bytes):
        data = load_plan_text(data)
    if not isinstance(data, Mapping):
        raise PlanError(["(plan): a plan must be a mapping with name, start and nodes"])
    nodes = data.get("nodes")
    if isinstance(nodes, Mapping) and len(nodes) > MAX_NODES:
        raise PlanError([f"nodes: {len(nodes):,} nodes; a plan may have at most {MAX_NODES}"])
    plan: PlanSpec | None = None
    errors: list[str] = []
    try:
        plan = PlanSpec.model_validate(
            dict(data), context={STORED: stored, HOST_EVENTS: declared_host_events(data)})
    except ValidationError as exc:
        errors = [_describe(err) for err in exc.errors()]
    definition = None
    if plan is not None:
        try:
            definition = plan.to_definition()
        except PydanticSerializationError:  # YAML's "\ud800" escape gives a lone surrogate
            errors.append("(plan): contains a lone surrogate (an escape such as \\ud800), "
                          "which is not text and cannot be stored; remove it")
    # Judged on the parsed plan when the schema passed: pydantic coerces (bytes to str).
    errors += _graph_errors(data if definition is None else definition, stored=stored)
    if plan is not None and plan.send_window is not None and plan.send_window.start >= plan.send_window.end:
        errors.append("send_window.end: must be later than start")
    if plan is not None and not stored:
        for name, node in plan.nodes.items():
            if node.type == "email" and len(plan.categories_of(name)) > MAX_CATEGORIES:
                errors.append(
                    f"nodes.{name}.categories: with the plan's, its emails would carry "
                    f"{len(plan.categories_of(name))} categories; SendGrid takes at most {MAX_CATEGORIES}")
    if plan is not None and check_template is not None:
        for name, node in plan.nodes.items():
            if node.type != "email" or (node.template is None) == (node.body is None):
                continue
            if not node.subject and not node.thread:
                continue
            source_field = "template" if node.template else "body"
            # A threaded node without subject takes the previous email's, checked there.
            for problem in check_template(subject=node.subject or "Re:", template=node.template,
                                          body=node.body):
                if problem.startswith("subject: "):
                    errors.append(f"nodes.{name}.subject: {problem.removeprefix('subject: ')}")
                else:
                    errors.append(f"nodes.{name}.{source_field}: {problem}")
    if plan is not None:
        errors += host_event_errors(
            plan.events, {name: node.transitions for name, node in plan.nodes.items()}, plan.goals)
    if errors or plan is None:
        raise PlanError(errors)
    return plan


def declared_host_events(data: Mapping[str, Any]) -> frozenset[str]:
    """The host event names a raw plan declares in ``events:`` (the valid ones)."""
    events = data.get("events")
    if not isinstance(events, list):
        return frozenset()
    return frozenset(name for name in events if host_event_name_problem(name) is None)


def _describe(error: Any) -> str:
    # pydantic prefixes messages from our validators with "Value error, ".
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] in {"literal_error", "string_type", "int_type", "bool_type", "time_parsing"}:
        message += f" (got {_ECHO.repr(error['input'])})"
    return f"{_format_location(error['loc'])}: {message}"


def plan_from_definition(definition: Mapping[str, Any]) -> PlanSpec:
    """Rebuild a stored (already validated) plan without re-checking templates.

    Checks added since a plan was loaded are not applied to it (names, the sender's
    form, the longest `after`, a way to an exit): refusing it now would stop every
    contact already in it. What the engine needs (known nodes and events, durations
    it can read) is still checked.
    """
    return validate_plan(definition, stored=True)
