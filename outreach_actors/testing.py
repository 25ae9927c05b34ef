"""The public test kit: the SendGrid stand-in and the signed webhooks it reports
(kept in ``dev.standin``), and the plan simulation (``dev.plan_simulation``);
``python -m outreach_actors.testing`` serves the stand-in."""

from outreach_actors.dev.plan_simulation import (
    PlanSimulator,
    SimulatedEmail,
    SimulationError,
    SimulationResult,
    simulate,
)
from outreach_actors.dev.standin import AcceptedMessage, SendGridStandIn, main
from outreach_actors.dev.webhook_events import (
    WebhookKeys,
    emit_events,
    events_for,
    generate_webhook_keys,
    sign_webhook,
    webhook_body,
)

__all__ = ["AcceptedMessage", "PlanSimulator", "SendGridStandIn", "SimulatedEmail",
           "SimulationError", "SimulationResult", "WebhookKeys", "emit_events", "events_for",
           "generate_webhook_keys", "main", "sign_webhook", "simulate", "webhook_body"]

if __name__ == "__main__":
    main()
