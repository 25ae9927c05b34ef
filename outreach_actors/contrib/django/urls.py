"""The outreach URLs; mount with ``path("", include("outreach_actors.contrib.django.urls"))``."""

from django.urls import path

from outreach_actors.contrib.django import views

app_name = "outreach"

urlpatterns = [
    path("webhooks/sendgrid", views.sendgrid_webhook, name="sendgrid_webhook"),
    path("webhooks/sendgrid/inbound", views.sendgrid_inbound, name="sendgrid_inbound"),
    path("unsubscribe/<str:token>", views.unsubscribe, name="unsubscribe"),
    path("events", views.host_events, name="host_events"),
]
