"""A plan's email node rendered for one chosen contact, as its send would render it,
without storing or sending anything: what an operator checks before enrolling."""

from __future__ import annotations

from outreach_actors.domain.mail.render import email_context, renderer_for
from outreach_actors.domain.rendering import RenderedEmail, RenderError, RenderProcessError
from outreach_actors.domain.store.models import Contact, Plan
from outreach_actors.domain.stored_plans import plan_for
from outreach_actors.domain.unsubscribe import unsubscribe_url
from outreach_actors.settings import Settings

#: The message id a preview's unsubscribe link is made for: no message has it.
PREVIEW_MESSAGE_ID = "msg_preview"


class PreviewError(ValueError):
    """The node cannot be previewed (not an email node, or its render failed): says why."""


def preview_node(plan: Plan, node_name: str, contact: Contact, settings: Settings) -> RenderedEmail:
    """Render ``node_name`` of ``plan`` for ``contact`` (of the plan's tenant)."""
    spec = plan_for(plan)
    node = spec.nodes.get(node_name)
    if node is None or node.type != "email" or not node.subject:
        raise PreviewError(f"{node_name!r} is not an email node of {plan.name} v{plan.version}")
    if contact.tenant_id != plan.tenant_id:
        raise PreviewError(f"contact {contact.id} is not of tenant {plan.tenant_id!r}")
    context = email_context(
        fields=contact.fields, email=contact.email, timezone=contact.timezone,
        tenant_id=plan.tenant_id, tenant_name=None, plan_name=plan.name,
        plan_version=plan.version, node=node_name,
        unsubscribe=unsubscribe_url(settings, plan.tenant_id, contact.email, PREVIEW_MESSAGE_ID))
    try:
        return renderer_for(settings.templates_dir, settings).render_email(
            subject=node.subject, template=node.template, body=node.body, context=context)
    except (RenderError, RenderProcessError) as exc:
        raise PreviewError(str(exc)) from None
