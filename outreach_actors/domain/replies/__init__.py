"""Replies that come back through SendGrid Inbound Parse (the address they are sent to
is ``mail.reply_address``): reading a post (``parse``), telling people from machines
(``classify``), finding our email (``matching``), acting on it (``ingest``, ``ending``)
and handing it to a person (``forward``)."""
