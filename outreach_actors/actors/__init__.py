"""Thin Dramatiq actors: each loads ids, calls the domain, and lets middleware rule."""
