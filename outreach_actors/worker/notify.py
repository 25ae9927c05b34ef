"""Send a host notification to the host's own actor (OUTREACH_NOTIFY_ACTOR), on our broker.

The setting names the actor by its import path (``myapp.tasks.on_outreach_event``):
imported here, the actor gives its queue and name. So the outreach workers import the
host's tasks module (``dramatiq outreach_actors myapp.tasks``), which also keeps a
worker from taking a message of a queue it has no actor for. The Dramatiq message id
is the notification's stable id.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from typing import Any

import dramatiq

from outreach_actors.settings import SettingsError, get_settings


@lru_cache(maxsize=8)
def host_actor(path: str) -> tuple[str, str]:
    """(queue name, actor name) of the actor at import ``path``; SettingsError if none."""
    module_name, _, attribute = path.rpartition(".")
    try:
        actor = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError, ValueError) as exc:
        raise SettingsError(f"OUTREACH_NOTIFY_ACTOR={path!r} cannot be imported: {exc}") from None
    if not isinstance(actor, dramatiq.Actor):
        raise SettingsError(f"OUTREACH_NOTIFY_ACTOR={path!r} is not a Dramatiq actor "
                            "(decorate the function with @dramatiq.actor)")
    return actor.queue_name, actor.actor_name


def send_to_host(notification_id: str, payload: dict[str, Any]) -> None:
    """Enqueue one notification for the host's actor."""
    queue_name, actor_name = host_actor(get_settings().notify_actor or "")
    dramatiq.get_broker().enqueue(dramatiq.Message(
        queue_name=queue_name, actor_name=actor_name, args=(payload,), kwargs={}, options={},
        message_id=notification_id))
