"""Thin Dramatiq actors: each loads ids, calls the domain, and lets middleware rule."""

from . import periodic, pipeline, webhook  # noqa: F401
