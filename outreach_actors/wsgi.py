"""``gunicorn outreach_actors.wsgi:application``: the standalone app (``web.app``) for WSGI
servers, built when the server looks ``application`` up, with the environment's settings."""

from typing import Any

from outreach_actors.web import app as _app


def __getattr__(name: str) -> Any:
    return getattr(_app, name)
