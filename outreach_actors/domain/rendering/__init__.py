"""Email content from tenant templates: the bounds of a render (``limits``), the checks
that hold them (``guards``), the sandbox (``sandbox``), the plain-text part (``text``), the
renderer that puts them together (``renderer``) and the render processes that run it
(``isolation``)."""

from outreach_actors.domain.rendering.isolation import (
    IsolatedRenderer,
    RenderLimits,
    RenderProcessError,
    render_pool,
)
from outreach_actors.domain.rendering.limits import (
    MAX_OUTPUT_CHARS,
    MAX_TEMPLATE_BYTES,
    RenderError,
)
from outreach_actors.domain.rendering.renderer import CONTEXT_NAMES, RenderedEmail, TemplateRenderer
from outreach_actors.domain.rendering.text import html_to_text

__all__ = ["CONTEXT_NAMES", "MAX_OUTPUT_CHARS", "MAX_TEMPLATE_BYTES", "IsolatedRenderer",
           "RenderError", "RenderLimits", "RenderProcessError", "RenderedEmail",
           "TemplateRenderer", "html_to_text", "render_pool"]
