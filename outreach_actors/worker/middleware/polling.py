"""How often a worker looks for work: often on the queues a reaction waits on, seldom on the others."""

from __future__ import annotations

from collections.abc import Iterable

import dramatiq
from dramatiq.common import dq_name

#: The queue of the actors that fire timers.
TIMER_QUEUE = "timeouts"
#: The queues an event's reaction passes through: the webhook is normalized, the
#: follow-up rendered, then sent.
WEBHOOK_QUEUE = "webhooks"
RENDER_QUEUE = "render"
SEND_QUEUE = "send"
#: The queues polled promptly: a timer comes due in the timer queue's delay queue and
#: fires from the timer queue; an event's follow-up waits on each reaction queue in
#: turn, so a second's idle poll there made a click's thanks email 1.4-1.9 s late (p99,
#: benchmarks/reactions.py). Their delay queues (retries, rate-limit deferrals) wait
#: longer anyway and stay at the idle interval.
PROMPT_QUEUES = (TIMER_QUEUE, dq_name(TIMER_QUEUE), WEBHOOK_QUEUE, RENDER_QUEUE, SEND_QUEUE)


class WorkerPolling(dramatiq.Middleware):
    """Middleware that sets how long each of a worker's consumers waits on an empty queue.

    Dramatiq gives every consumer one interval, the worker timeout (1 s, or
    ``dramatiq_worker_timeout``): how long a consumer of an empty queue waits
    before it looks again, and so also how late it releases a delayed message
    whose time came. The queues in ``prompt_queues`` (the timers) get
    ``prompt_interval_ms``, or timers would fire up to two intervals late and an
    event's reaction would wait an interval at each queue it passes. Every
    other queue, and the worker threads' own wait for work, get ``interval_ms``:
    each look wakes a thread that must take the worker process's GIL from the
    threads running actors. With every queue at 100 ms two idle worker
    processes looked some 370 times a second, 0.21 cores of Python, and under
    load benchmarks/pipeline.py put through about 15% fewer emails, and as many
    fewer no-op chains, a second. A busy queue is not affected: its consumer
    fetches again as soon as it has room.

    Set before the consumers start, so it applies to ``dramatiq outreach_actors``
    without flags.

    Parameters:
      interval_ms(int): the interval of every queue but the prompt ones.
      prompt_queues(Iterable[str]): exact queue names (a delay queue is named on its own).
      prompt_interval_ms(int): the interval of the prompt queues.
    """

    def __init__(self, *, interval_ms: int, prompt_queues: Iterable[str] = (),
                 prompt_interval_ms: int | None = None) -> None:
        self.interval_ms = interval_ms
        self.prompt_queues = frozenset(prompt_queues)
        self.prompt_interval_ms = interval_ms if prompt_interval_ms is None else prompt_interval_ms

    def interval_for(self, queue_name: str) -> int:
        """The interval of one queue (``name`` or a delay queue ``name.DQ``), in ms."""
        if queue_name in self.prompt_queues:
            return self.prompt_interval_ms
        return self.interval_ms

    def before_worker_boot(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        worker.worker_timeout = self.interval_ms

    def after_consumer_thread_boot(self, broker: dramatiq.Broker, thread) -> None:
        # Read by the consumer's run loop each time it (re)connects to the broker.
        thread.worker_timeout = self.interval_for(thread.queue_name)
