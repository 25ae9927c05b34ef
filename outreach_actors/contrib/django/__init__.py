"""Django integration: add ``"outreach_actors.contrib.django"`` to INSTALLED_APPS.

Configure it with an ``OUTREACH`` dict of setting names (``{"database_url": ...}``)
over the ``OUTREACH_*`` environment, and mount the endpoints with
``path("", include("outreach_actors.contrib.django.urls"))``. A view enrolls a
contact with ``outreach_actors.contrib.enroll``. It does not use django_dramatiq,
whose defaults break on Dramatiq 2.
"""
