"""Prometheus counters and histograms of the engine, created on first use.

Created lazily on purpose: Dramatiq's Prometheus middleware switches
prometheus_client to multiprocess mode when a worker boots, and a metric created
before that (at import) would never reach its exporter.
"""

from __future__ import annotations

import threading
from typing import Any

_DEFINITIONS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "outreach_emails_total": ("Counter", "Send attempts by outcome (sent, failed, suppressed, "
                              "ambiguous, retry, cancelled).", ("outcome",)),
    "outreach_events_total": ("Counter", "Events stored, by normalized type.", ("type", "synthetic")),
    "outreach_suppressions_total": ("Counter", "Addresses suppressed, by reason.", ("reason",)),
    "outreach_timer_lateness_seconds": ("Histogram", "How late timeouts fired (fired_at - run_at).",
                                        ()),
    "outreach_ratelimit_deferrals_total": ("Counter", "Messages put back because a rate limit was "
                                           "full, by the scope that needed the longest wait.",
                                           ("scope",)),
    "outreach_sending_paused": ("Gauge", "1 while a plan's or sender identity's sends are "
                                "paused (by hand or by the reputation check), else 0.",
                                ("tenant", "kind", "name")),
    "outreach_idempotency_duplicates_total": ("Counter", "Deliveries of an effect already in "
                                              "progress (held) or already done (done).",
                                              ("outcome",)),
}


_metrics: dict[str, Any] = {}
# Worker threads count the same outcome at once: two that both created the metric
# would register it twice, and prometheus_client raises DuplicateTimeseries (after
# the email went out). functools.cache does not hold other callers back.
_creating = threading.Lock()


def metric(name: str) -> Any:
    """The Counter, Histogram or Gauge ``name``, created on its first use."""
    found = _metrics.get(name)
    if found is not None:
        return found
    with _creating:
        if name not in _metrics:
            # prometheus_client is imported here, not at the top: it picks in-memory or
            # multiprocess values when first imported, which must be after Dramatiq's
            # middleware has pointed it at the directory its exporter reads
            # (after_process_boot).
            import prometheus_client

            kind, documentation, labels = _DEFINITIONS[name]
            _metrics[name] = getattr(prometheus_client, kind)(name, documentation, labels)
        return _metrics[name]


def count(name: str, amount: float = 1, **labels: str) -> None:
    counter = metric(name)
    (counter.labels(**labels) if labels else counter).inc(amount)


def observe(name: str, value: float) -> None:
    metric(name).observe(value)


def set_gauge(name: str, value: float, /, **labels: str) -> None:
    gauge = metric(name)
    (gauge.labels(**labels) if labels else gauge).set(value)
