"""Email content from tenant templates: the sandbox (``sandbox``), the plain-text part
(``text``) and the renderer that puts them together (``renderer``)."""

from outreach_actors.domain.rendering.renderer import CONTEXT_NAMES, RenderedEmail, TemplateRenderer
from outreach_actors.domain.rendering.sandbox import (
           MAX_OUTPUT_CHARS,
           MAX_TEMPLATE_BYTES,
           RenderError,
)
from outreach_actors.domain.rendering.text import html_to_text

__all__ = ["CONTEXT_NAMES", "MAX_OUTPUT_CHARS", "MAX_TEMPLATE_BYTES", "RenderError", "RenderedEmail",
           "TemplateRenderer", "html_to_text"]
