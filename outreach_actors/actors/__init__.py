"""Thin Dramatiq actors: each loads ids, calls the domain, and lets middleware rule."""

from . import pipeline, webhook  # noqa: F401
