"""Replies end to end on the real stack: a worker on Redis or RabbitMQ, PostgreSQL, our
WSGI endpoint over HTTP, and the SendGrid stand-in sending the campaign and receiving
the forward; the post arrives twice, and every actor then runs again."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIRequestHandler, make_server

import dramatiq
import pytest

from outreach_actors.dev.inbound_posts import inbound_form, post_inbound
from outreach_actors.dev.standin import SendGridStandIn
from outreach_actors.domain import dispatch, engine
from outreach_actors.domain.store.models import (
    Enrollment,
    InboundPost,
    MessageEvent,
    OutboundMessage,
    ScheduledAction,
)
from outreach_actors.web.app import ThreadingWSGIServer, make_app
from outreach_actors.worker.actors.mail import enqueue_actions
from outreach_actors.worker.actors.replies import forward_reply, ingest_inbound_post

from .conftest import POSTGRES_URL, STANDIN_API_KEY, install_broker, make_settings, wait_until
from .factories import load_plan, make_tenant
from .test_replies import INBOUND_DOMAIN, KEYS, PLAN, sample


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.mark.parametrize("broker_name", ["redis_broker", "rabbitmq_broker"])
def test_a_reply_posted_twice_ends_the_sequence_and_is_forwarded_once(
        request, postgres_db, data_dir, broker_name) -> None:
    broker = request.getfixturevalue(broker_name)
    with SendGridStandIn(api_key=STANDIN_API_KEY) as standin:
        settings = make_settings(
            data_dir, database_url=POSTGRES_URL, sendgrid_api_host=standin.host,
            inbound_domain=INBOUND_DOMAIN, sendgrid_inbound_public_key=KEYS.public_key)
        server = make_server("127.0.0.1", 0, make_app(settings), server_class=ThreadingWSGIServer,
                             handler_class=_Quiet)
        install_broker(broker)  # make_app built the settings' broker: use the fixture's
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_port}/webhooks/sendgrid/inbound"
        worker = dramatiq.Worker(broker, worker_timeout=50, worker_threads=4)
        worker.start()
        try:
            # Given Ada, enrolled, whose intro went out
            make_tenant()
            load_plan(PLAN)
            enrollment = engine.enroll("acme", "ada@example.com", "outreach",
                                       fields={"first_name": "Ada"})
            dispatch.dispatch_due_actions(enqueue_actions, settings=settings)
            wait_until(lambda: len(standin.messages) == 1, timeout=20)
            wait_until(lambda: OutboundMessage.get().status == "sent", timeout=10)
            intro = OutboundMessage.get()
            # When her answer is posted, and posted again
            body = inbound_form(sample("gmail_reply.eml", intro), raw=True)
            assert post_inbound(url, body, private_key_pem=KEYS.private_key_pem) == 200
            assert post_inbound(url, body.replace(b"192.0.2.25", b"192.0.2.26"),
                                private_key_pem=KEYS.private_key_pem) == 200
            # Then the sequence ends and a person gets her reply, once
            wait_until(lambda: Enrollment.get_by_id(enrollment.id).status == "converted", 20)
            wait_until(lambda: len(standin.messages) == 2, timeout=20)
            broker.join("webhooks", timeout=20_000)
            worker.join()
            # And every actor run again changes nothing
            posts = [post.id for post in InboundPost.select()]
            for post_id in posts:
                ingest_inbound_post(post_id)
                forward_reply(post_id)
        finally:
            worker.stop()
            server.shutdown()
            server.server_close()
        assert [p.status for p in InboundPost.select().order_by(InboundPost.id)] == [
            "processed", "duplicate"]
        assert len(standin.messages) == 2
        forward = standin.messages[1]
        assert forward.recipients()[0][0] == "sales@acme.test"
        assert forward.body["reply_to"] == {"email": "ada@example.com"}
        assert MessageEvent.select().where(MessageEvent.type == "replied").count() == 1
        assert ScheduledAction.select().where(
            ScheduledAction.status.in_(ScheduledAction.OPEN_STATUSES)).count() == 0
