"""One email's way out: render it (``render``), hand its send the order it needs
(``send_order``), send it once (``send``), and settle a send whose answer was lost
(``ambiguous``). ``outgoing`` is what a provider is handed and answers."""

from outreach_actors.domain.mail.outgoing import OutgoingEmail, SendOutcome
from outreach_actors.domain.mail.render import (
    RenderedBatch,
    email_context,
    render_action,
    render_for_send,
    render_for_send_many,
    renderer_for,
)
from outreach_actors.domain.mail.send import RetryableSendError, SendResult, send_message
from outreach_actors.domain.mail.send_order import (
    SEND_ORDER_FRESH_FOR,
    SendScope,
    make_send_order,
    order_message_id,
    send_scope,
)

__all__ = ["SEND_ORDER_FRESH_FOR", "OutgoingEmail", "RenderedBatch", "RetryableSendError",
           "SendOutcome", "SendResult", "SendScope", "email_context", "order_message_id",
           "make_send_order", "render_action", "render_for_send", "render_for_send_many",
           "renderer_for", "send_message", "send_scope"]
