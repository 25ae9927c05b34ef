"""Thin Dramatiq actors: each loads ids, calls the domain, and lets middleware rule."""

from outreach_actors.worker.actors import mail, periodic, replies, webhooks  # noqa: F401
