"""The dashboard: plans drawn and counted, contact timelines, failures, webhook
deliveries, suppressions and senders, as pages any host mounts (see pages.py)."""

from outreach_actors.web.dashboard.pages import Dashboard, DashboardRequest

__all__ = ["Dashboard", "DashboardRequest"]
