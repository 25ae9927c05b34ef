"""The ``outreach`` command (``outreach = outreach_actors.cli:main``): commands only, the logic lives below."""

from outreach_actors.cli.commands import main

__all__ = ["main"]
