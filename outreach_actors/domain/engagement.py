"""What counts as engagement: which real events move a contact or stop a ``no_open`` /
``no_click`` timer, and whether the one a timer waits for has arrived."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import peewee

from outreach_actors.domain.store.models import MessageEvent
from outreach_actors.domain.vocabulary import (
    AWAITED_ENGAGEMENT,
    MACHINE_OPEN,
    UNSUBSCRIBE_LINK,
    EventType,
)
from outreach_actors.settings import get_settings


def engagement_seen(message_id: str, timeout_event: str) -> bool:
    """Whether the real event a ``no_open``/``no_click`` timer waits for has arrived."""
    return bool(engaged_timers([(message_id, timeout_event)]))


def counts_for_plans(event_type: str, data: dict[str, Any] | None) -> bool:
    """Whether a real event may move a contact or stop a ``no_open``/``no_click`` timer:
    every one but a machine open (unless the settings count those) and a click on our
    own unsubscribe link."""
    data = data or {}
    if event_type == EventType.OPENED and data.get(MACHINE_OPEN):
        return get_settings().machine_opens_are_engagement
    return not (event_type == EventType.CLICKED and data.get(UNSUBSCRIBE_LINK))


def uncounted_events() -> peewee.Expression:
    """The MessageEvent rows counts_for_plans leaves out, as a condition for queries
    that count (stats). The flags are matched in the JSON text ingest stores."""
    uncounted = (MessageEvent.type == EventType.CLICKED) & MessageEvent.data.contains(
        f'"{UNSUBSCRIBE_LINK}": true')
    if not get_settings().machine_opens_are_engagement:
        uncounted |= (MessageEvent.type == EventType.OPENED) & MessageEvent.data.contains(
            f'"{MACHINE_OPEN}": true')
    return uncounted


def engaged_timers(timers: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
    """Of (message id, ``no_open``/``no_click``) pairs, those whose awaited real event
    has arrived; one query for any number. Only engagement counts (counts_for_plans)."""
    timers = set(timers)
    if not timers:
        return set()
    seen: dict[str, set[str]] = defaultdict(set)
    for message_id, event_type, data in MessageEvent.select(
        MessageEvent.message, MessageEvent.type, MessageEvent.data,
    ).where(
        MessageEvent.message.in_(sorted({message_id for message_id, _ in timers})),
        MessageEvent.type.in_(sorted(set().union(*AWAITED_ENGAGEMENT.values()))),
        MessageEvent.synthetic == False,  # noqa: E712 (peewee expression)
    ).tuples():
        if counts_for_plans(event_type, data):
            seen[message_id].add(event_type)
    return {(message_id, event) for message_id, event in timers
            if seen[message_id] & AWAITED_ENGAGEMENT[event]}
