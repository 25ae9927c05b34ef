"""Replies through SendGrid Inbound Parse: our identity on each email, the reply address,
the endpoint that stores posts raw, and what each kind of reply does, on real-format
mail from several clients posted twice in both of SendGrid's forms."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import pytest

from outreach_actors.dev.inbound_posts import CONTENT_TYPE, inbound_form, inbound_headers
from outreach_actors.dev.webhook_events import generate_webhook_keys
from outreach_actors.domain import engine, timers
from outreach_actors.domain import mail as delivery
from outreach_actors.domain.mail.reply_address import (
    make_reply_token,
    message_id_of,
    token_is_valid,
)
from outreach_actors.domain.replies import forward
from outreach_actors.domain.replies.ingest import ingest_post, ingest_posts, replay_post
from outreach_actors.domain.stats import funnel
from outreach_actors.domain.store.models import (
    Enrollment,
    InboundPost,
    MessageEvent,
    OutboundMessage,
    ScheduledAction,
    SenderIdentity,
    Suppression,
)
from outreach_actors.settings import configure
from outreach_actors.web.inbound import SendGridInboundReceiver

from .conftest import make_settings
from .factories import load_plan, make_tenant

SAMPLES = Path(__file__).parent / "samples" / "inbound"
PLAN = (SAMPLES / "reply_plan.yaml").read_text()
INBOUND_DOMAIN = "in.acme.test"
KEYS = generate_webhook_keys()


@pytest.fixture
def inbound_settings(db, data_dir, standin):
    """Settings with an inbound domain and an Inbound Parse key, on both databases."""
    current = make_settings(data_dir, inbound_domain=INBOUND_DOMAIN, sendgrid_api_host=standin.host,
                            sendgrid_inbound_public_key=KEYS.public_key)
    configure(current)
    yield current
    configure(None)


@pytest.fixture
def receiver(inbound_settings, monkeypatch):
    """The endpoint's receiver, its enqueue recorded instead of sent to a broker."""
    enqueued: list[int] = []
    monkeypatch.setattr(SendGridInboundReceiver, "enqueue", lambda self, post: enqueued.append(post))
    receiver = SendGridInboundReceiver(inbound_settings)
    receiver.enqueued = enqueued
    return receiver


def send_intro(name: str, sendgrid_client) -> OutboundMessage:
    """``name``'s intro email, rendered and sent through the stand-in."""
    enrollment = engine.enroll("acme", f"{name.lower()}@example.com", "outreach",
                               fields={"first_name": name})
    action = ScheduledAction.get(ScheduledAction.enrollment == enrollment)
    message_id = delivery.render_action(action.id)
    assert delivery.send_message(message_id, sendgrid_client).status == "sent"
    return OutboundMessage.get_by_id(message_id)


@pytest.fixture
def sent(inbound_settings, sendgrid_client) -> OutboundMessage:
    """Ada's intro email, rendered and sent through the stand-in."""
    make_tenant()
    load_plan(PLAN)
    return send_intro("Ada", sendgrid_client)


@pytest.fixture
def three_sent(inbound_settings, sendgrid_client) -> list[OutboundMessage]:
    """The intros of Ada, Grace and Alan, sent."""
    make_tenant()
    load_plan(PLAN)
    return [send_intro(name, sendgrid_client) for name in ("Ada", "Grace", "Alan")]


def sample(name: str, message: OutboundMessage, *, to: str | None = None) -> bytes:
    """A sample email answering ``message``: its reply address and Message-ID put in."""
    return ((SAMPLES / name).read_bytes()
            .replace(b"REPLY_ADDRESS", (to or message.headers["Reply-To"]).encode())
            .replace(b"OUR_MESSAGE_ID", message.headers["Message-ID"].encode()))


def post(receiver: SendGridInboundReceiver, body: bytes, *, signed: bool = True,
         headers: dict[str, str] | None = None):
    headers = headers or inbound_headers(body, KEYS.private_key_pem if signed else None)
    return receiver.receive(headers, io.BytesIO(body).read, len(body))


def post_twice_and_ingest(receiver, email: bytes, raw: bool) -> list[InboundPost]:
    """Post ``email`` as SendGrid would, then again as SendGrid retries it (the same bytes),
    then once more re-encoded (a retry need not be byte for byte); ingest every post
    twice. The posts stored, in order."""
    body = inbound_form(email, raw=raw)
    assert post(receiver, body).status == 200
    assert post(receiver, body).status == 200  # the same bytes: stored once
    variant = body.replace(b"192.0.2.25", b"192.0.2.26")
    assert post(receiver, variant).status == 200
    assert receiver.enqueued == sorted(receiver.enqueued) and len(receiver.enqueued) == 2
    for post_id in receiver.enqueued * 2:
        ingest_post(post_id, enqueue_forward=lambda post_id: None)
    return list(InboundPost.select().order_by(InboundPost.id))


def active_timers(enrollment_id: int) -> int:
    return ScheduledAction.select().where(
        ScheduledAction.enrollment == enrollment_id,
        ScheduledAction.status.in_(ScheduledAction.OPEN_STATUSES)).count()


# --- our identity on every email -----------------------------------------------------

def test_every_email_carries_our_message_id_and_a_reply_address(sent, standin) -> None:
    assert sent.headers["Message-ID"] == f"<{sent.id}@acme.test>"
    token = sent.headers["Reply-To"].removeprefix("reply+").removesuffix(f"@{INBOUND_DOMAIN}")
    assert message_id_of(token) == sent.id
    [mail] = standin.messages
    assert mail.body["reply_to"] == {"email": sent.headers["Reply-To"]}
    assert mail.body["headers"]["Message-ID"] == sent.headers["Message-ID"]
    assert "Reply-To" not in mail.body["headers"]


def test_without_an_inbound_domain_no_reply_address_is_set(db, data_dir) -> None:
    configure(make_settings(data_dir))
    make_tenant()
    load_plan(PLAN)
    enrollment = engine.enroll("acme", "ada@example.com", "outreach", fields={"first_name": "Ada"})
    action = ScheduledAction.get(ScheduledAction.enrollment == enrollment)
    message = OutboundMessage.get_by_id(delivery.render_action(action.id))
    assert "Reply-To" not in message.headers and message.headers["Message-ID"]


def test_a_token_survives_case_folding_and_cannot_be_forged(data_dir) -> None:
    settings = make_settings(data_dir)
    token = make_reply_token(settings, "acme", "msg_" + "ab" * 16)
    assert len(token) == 42 and token == token.lower()
    assert token_is_valid(settings, token.upper(), "acme")
    assert not token_is_valid(settings, token, "globex")  # tied to its tenant
    forged = token[:-1] + ("a" if token[-1] != "a" else "b")
    assert not token_is_valid(settings, forged, "acme")
    # Rotation as for unsubscribe links: a token of the old secret reads while it is a fallback.
    rotated = make_settings(data_dir, secret_key="a-new-secret-8Hq3Ws1Xc6Vb9Nm2Lk4Jp7Gf5",
                            secret_key_fallbacks=[settings.secret_key])
    assert token_is_valid(rotated, token, "acme")
    assert not token_is_valid(make_settings(data_dir, secret_key=rotated.secret_key), token, "acme")


def test_a_threaded_follow_up_answers_the_previous_email(sent, sendgrid_client, standin) -> None:
    # When no reply comes before the intro's no_reply timer
    timer = ScheduledAction.get(ScheduledAction.kind == "timeout")
    assert timer.event == "no_reply"
    timers.fire_timeout(timer.id)
    bump_action = ScheduledAction.get(ScheduledAction.kind == "send", ScheduledAction.node == "bump")
    bump = OutboundMessage.get_by_id(delivery.render_action(bump_action.id))
    # Then the bump answers the intro, in its thread
    assert bump.subject == "Re: Hello Ada"
    assert bump.headers["In-Reply-To"] == sent.headers["Message-ID"]
    assert bump.headers["References"] == sent.headers["Message-ID"]
    assert bump.headers["Message-ID"] != sent.headers["Message-ID"]
    delivery.send_message(bump.id, sendgrid_client)
    assert standin.messages[-1].body["headers"]["In-Reply-To"] == sent.headers["Message-ID"]


# --- what each kind of reply does ------------------------------------------------------

@pytest.mark.parametrize("raw", [True, False], ids=["raw", "parsed"])
@pytest.mark.parametrize("name", ["gmail_reply.eml", "apple_mail_reply.eml"])
def test_a_persons_reply_ends_the_sequence_once(sent, receiver, name, raw) -> None:
    posts = post_twice_and_ingest(receiver, sample(name, sent), raw)
    assert [p.status for p in posts] == ["processed", "duplicate"]
    assert posts[0].kind == "replied" and posts[0].message_id == sent.id
    assert "matched by token" in posts[0].note
    assert posts[0].forward_status == "pending" and posts[1].forward_status is None
    enrollment = Enrollment.get_by_id(sent.enrollment_id)
    assert (enrollment.status, enrollment.exit_reason) == ("converted", "goal:replied")
    assert active_timers(enrollment.id) == 0
    assert MessageEvent.select().where(MessageEvent.type == "replied").count() == 1


def test_a_reply_without_our_token_is_matched_by_its_references(sent, receiver) -> None:
    email = sample("apple_mail_reply.eml", sent, to=f"hello@{INBOUND_DOMAIN}")
    [processed, _] = post_twice_and_ingest(receiver, email, raw=True)
    assert (processed.status, processed.message_id) == ("processed", sent.id)
    assert "matched by references" in processed.note


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "parsed"])
@pytest.mark.parametrize("name, return_date", [("outlook_out_of_office.eml", "2026-12-28"),
                                               ("german_out_of_office.eml", "2027-01-04")])
def test_an_out_of_office_moves_no_one_and_keeps_its_return_date(sent, receiver, name,
                                                                 return_date, raw) -> None:
    [first, _] = post_twice_and_ingest(receiver, sample(name, sent), raw)
    assert (first.status, first.kind, first.forward_status) == ("processed", "auto_replied", None)
    event = MessageEvent.get(MessageEvent.type == "auto_replied")
    assert event.data["return_date"] == return_date
    enrollment = Enrollment.get_by_id(sent.enrollment_id)
    assert (enrollment.status, enrollment.current_node) == ("active", "intro")
    assert active_timers(enrollment.id) == 1  # the no_reply timer still runs


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "parsed"])
def test_a_dsn_bounce_suppresses_the_address(sent, receiver, raw) -> None:
    [first, _] = post_twice_and_ingest(receiver, sample("postfix_dsn.eml", sent), raw)
    assert (first.status, first.kind) == ("processed", "bounced")
    event = MessageEvent.get(MessageEvent.type == "bounced")
    assert (event.data["bounce_type"], event.data["status"]) == ("hard", "5.1.1")
    assert Suppression.get().reason == "bounced"


@pytest.mark.parametrize("raw", [True, False], ids=["raw", "parsed"])
def test_a_reply_asking_to_be_removed_unsubscribes(sent, receiver, raw) -> None:
    [first, _] = post_twice_and_ingest(receiver, sample("spanish_unsubscribe.eml", sent), raw)
    assert (first.status, first.kind, first.forward_status) == ("processed", "unsubscribed", None)
    assert [(s.value, s.reason) for s in Suppression.select()] == [("ada@example.com", "unsubscribed")]
    assert Enrollment.get_by_id(sent.enrollment_id).status == "exited"


@pytest.mark.parametrize("plan_keys, transition, node, status", [
    ("", "      - {on: replied, to: gave_up}\n", "gave_up", "completed"),
    ("stop_on_reply: false\n", "", "intro", "active"),
    # a goal beats the node's own transition, as for every event
    ("goals: [{on: replied}]\n", "      - {on: replied, to: gave_up}\n", "intro", "converted"),
])
def test_a_plan_may_route_a_reply_or_keep_going(inbound_settings, sendgrid_client, receiver,
                                                plan_keys, transition, node, status) -> None:
    make_tenant()
    plan = plan_keys + PLAN.replace("      - {on: no_reply, after: PT1H, to: bump}\n",
                                    "      - {on: no_reply, after: PT1H, to: bump}\n" + transition)
    load_plan(plan)
    enrollment = engine.enroll("acme", "ada@example.com", "outreach", fields={"first_name": "Ada"})
    action = ScheduledAction.get(ScheduledAction.enrollment == enrollment)
    message = OutboundMessage.get_by_id(delivery.render_action(action.id))
    post_twice_and_ingest(receiver, sample("gmail_reply.eml", message), raw=True)
    enrollment = Enrollment.get_by_id(enrollment.id)
    assert (enrollment.current_node, enrollment.status) == (node, status)


def test_a_reply_stops_the_no_reply_timer(sent, receiver) -> None:
    post_twice_and_ingest(receiver, sample("gmail_reply.eml", sent), raw=True)
    timer = ScheduledAction.get(ScheduledAction.kind == "timeout")
    assert timer.status == "cancelled"


def test_the_funnel_counts_replies_and_auto_replies_per_node(sent, receiver) -> None:
    post_twice_and_ingest(receiver, sample("outlook_out_of_office.eml", sent), raw=True)
    receiver.enqueued.clear()
    post_twice_and_ingest(receiver, sample("gmail_reply.eml", sent), raw=True)
    [intro] = [row for row in funnel(plan_name="outreach") if row["node"] == "intro"]
    assert (intro["replied"], intro["auto_replied"], intro["converted"]) == (1, 1, 1)


# --- forwarding ----------------------------------------------------------------------

def test_a_reply_is_forwarded_once_with_the_original_attached(sent, receiver, standin,
                                                              sendgrid_client) -> None:
    SenderIdentity.update(forward_replies_to="owner@acme.test").execute()
    [first, _] = post_twice_and_ingest(receiver, sample("gmail_reply.eml", sent), raw=False)
    for _ in range(2):
        forward.forward_reply(first.id, sendgrid_client)
    forwards = [m for m in standin.messages if m.recipients()[0][0] == "owner@acme.test"]
    assert len(forwards) == 1
    body = forwards[0].body
    assert body["reply_to"] == {"email": "ada@example.com"}
    assert body["subject"] == "Re: Hello Ada"
    [attachment] = body["attachments"]
    assert (attachment["type"], attachment["filename"]) == ("message/rfc822", "reply.eml")
    assert InboundPost.get_by_id(first.id).forward_status == "sent"
    # No plan send: the forward has no enrollment and no node.
    fwd = OutboundMessage.get(OutboundMessage.dedupe_key == forward.forward_key(first.id))
    assert (fwd.enrollment_id, fwd.node, fwd.status) == (None, None, "sent")


def test_our_own_forward_coming_back_is_a_loop_not_a_reply(sent, receiver, standin,
                                                           sendgrid_client) -> None:
    [first, _] = post_twice_and_ingest(receiver, sample("gmail_reply.eml", sent), raw=True)
    forward.forward_reply(first.id, sendgrid_client)
    # The original is attached byte for byte, as SendGrid posted it
    [attachment] = standin.messages[-1].body["attachments"]
    assert base64.b64decode(attachment["content"]) == sample("gmail_reply.eml", sent)
    # The forward's own headers, as its recipient's server would hand it back
    loop = (f"From: Acme Sales <sales@acme.test>\nTo: {sent.headers['Reply-To']}\n"
            f"Subject: Re: Hello Ada\nMessage-ID: <loop-1@acme.test>\n"
            f"{forward.FORWARD_HEADER}: {first.id}\n\nYes, let's talk.\n").encode()
    assert post(receiver, inbound_form(loop)).status == 200
    ingest_post(receiver.enqueued[-1], enqueue_forward=lambda post_id: None)
    looped = InboundPost.get_by_id(receiver.enqueued[-1])
    assert looped.status == "ignored" and "mail loop" in looped.note


# --- bad input: stored with a clear note, never a 500 ------------------------------------

def deeply_nested(depth: int) -> bytes:
    parts = [f"--b{level}\nContent-Type: multipart/mixed; boundary=b{level + 1}\n\n"
             for level in range(depth)]
    return (b"From: x@example.com\nTo: y@in.acme.test\nSubject: nest\n"
            b"Content-Type: multipart/mixed; boundary=b0\n\n" + "".join(parts).encode())


@pytest.mark.parametrize("case, status, note", [
    ("not a form", "failed", "not multipart/form-data"),
    ("malformed MIME", "unmatched", "malformed MIME (CloseBoundaryNotFoundDefect"),
    ("deep nesting", "failed", "nested deeper"),
    ("unknown charset", "processed", "unknown charset"),
    ("forged token", "unmatched", "forged"),
    ("purged message", "unmatched", "not in this database"),
    ("no token at all", "unmatched", "no reply token"),
])
def test_bad_inbound_mail_is_kept_with_a_clear_note(sent, receiver, case, status, note) -> None:
    reply_to = sent.headers["Reply-To"]
    content_type = CONTENT_TYPE
    if case == "not a form":
        body, content_type = b"\x00\xff garbage", "application/octet-stream"
    elif case == "malformed MIME":
        body = inbound_form(b"From: a@example.com\nTo: y@in.acme.test\nSubject: x\n"
                            b"Content-Type: multipart/mixed; boundary=zz\n\n--zz\n"
                            b"Content-Type: text/plain\n\nhello, no closing boundary\n")
    elif case == "deep nesting":
        body = inbound_form(deeply_nested(200))
    elif case == "unknown charset":
        body = inbound_form(sample("gmail_reply.eml", sent), raw=False).replace(
            b'"text": "utf-8"', b'"text": "x-no-such-charset"')
    elif case == "forged token":
        token = reply_to.split("+")[1].split("@")[0]
        forged = reply_to.replace(token, token[:-2] + ("aa" if token[-2:] != "aa" else "bb"))
        body = inbound_form(sample("gmail_reply.eml", sent, to=forged).replace(
            sent.headers["Message-ID"].encode(), b"<other@example.com>"))
    elif case == "purged message":
        body = inbound_form(sample("gmail_reply.eml", sent))
        OutboundMessage.delete().execute()
    else:
        body = inbound_form(sample("gmail_reply.eml", sent, to="y@in.acme.test").replace(
            sent.headers["Message-ID"].encode(), b"<other@example.com>"))
    headers = {**inbound_headers(body, KEYS.private_key_pem), "Content-Type": content_type}
    for _ in range(2):
        assert post(receiver, body, headers=headers).status == 200
    ingest_post(receiver.enqueued[0], enqueue_forward=lambda post_id: None)
    stored = InboundPost.get_by_id(receiver.enqueued[0])
    assert stored.status == status and note in stored.note
    assert bytes(stored.body) == body
    if status != "processed":  # moves no one
        assert Enrollment.get_by_id(sent.enrollment_id).status == "active"


def test_a_failed_post_is_replayed(sent, receiver) -> None:
    body = inbound_form(sample("gmail_reply.eml", sent))
    post(receiver, body)
    [post_id] = receiver.enqueued
    InboundPost.update(headers={"content-type": "text/plain"}).execute()  # as if mangled
    ingest_post(post_id, enqueue_forward=lambda post_id: None)
    assert InboundPost.get_by_id(post_id).status == "failed"
    InboundPost.update(headers={"content-type": CONTENT_TYPE}).execute()
    replay_post(post_id, lambda post_id: ingest_post(post_id, enqueue_forward=lambda p: None))
    assert InboundPost.get_by_id(post_id).status == "processed"
    assert Enrollment.get_by_id(sent.enrollment_id).status == "converted"


def test_unsigned_forged_and_oversized_posts_are_refused(receiver, inbound_settings) -> None:
    body = inbound_form(b"From: a@example.com\nTo: b@in.acme.test\nSubject: x\n\nhello\n")
    assert post(receiver, body, signed=False).status == 403
    forged = {**inbound_headers(body, generate_webhook_keys().private_key_pem)}
    assert post(receiver, body, headers=forged).status == 403
    big = SendGridInboundReceiver(inbound_settings).receive(
        inbound_headers(body, KEYS.private_key_pem), io.BytesIO(b"").read, 30 * 1024 * 1024 + 1)
    assert big.status == 413
    assert InboundPost.select().count() == 0


def unprefixed(headers: dict[str, str]) -> dict[str, str]:
    """``headers`` with the signature in the Event Webhook's names without "Twilio-"."""
    return {name.replace("X-Twilio-Email-", "X-Email-"): value for name, value in headers.items()}


def test_a_post_signed_in_the_unprefixed_headers_is_verified(receiver) -> None:
    body = inbound_form(b"From: a@example.com\nTo: b@in.acme.test\nSubject: x\n\nhello\n")
    signed = unprefixed(inbound_headers(body, KEYS.private_key_pem))
    assert "X-Email-Event-Webhook-Signature" in signed
    assert post(receiver, body, headers=signed).status == 200
    other = inbound_form(b"From: a@example.com\nTo: b@in.acme.test\nSubject: y\n\nhello\n")
    forged = unprefixed(inbound_headers(other, generate_webhook_keys().private_key_pem))
    assert post(receiver, other, headers=forged).status == 403
    # Signed in both pairs, one forged: the one that verifies is enough.
    both = {**inbound_headers(other, KEYS.private_key_pem), **forged}
    assert post(receiver, other, headers=both).status == 200
    assert InboundPost.select().count() == 2


def test_the_sendgrid_sample_posts_are_stored_and_match_nothing(sent, receiver) -> None:
    for name in ["sendgrid_raw_form.txt", "sendgrid_parsed_form.txt",
                 "sendgrid_raw_form_with_attachments.txt"]:
        body = (SAMPLES / name).read_bytes()
        assert post(receiver, body).status == 200
    for post_id in receiver.enqueued:
        assert ingest_post(post_id, enqueue_forward=lambda post_id: None) == "unmatched"
    assert Enrollment.get_by_id(sent.enrollment_id).status == "active"



def test_the_readmes_reply_plan_is_valid() -> None:
    import re

    from outreach_actors.domain.plans import validate_plan
    from outreach_actors.domain.rendering.renderer import TemplateRenderer

    from .test_readme import ROOT, section

    text = re.search(r"```yaml\n(.*?)```", section("Replies (SendGrid Inbound Parse)"),
                     re.DOTALL).group(1)
    plan = validate_plan(text, check_template=TemplateRenderer(ROOT / "templates").check_template)
    assert plan.stop_on_reply and plan.nodes["bump"].thread and not plan.nodes["bump"].subject


def test_a_forward_sendgrid_refuses_for_now_is_retried_and_sent_once(sent, receiver, standin,
                                                                     sendgrid_client) -> None:
    import dramatiq

    from outreach_actors.worker.actors import replies as reply_actors

    [first, _] = post_twice_and_ingest(receiver, sample("gmail_reply.eml", sent), raw=True)
    standin.fail_next(503)
    with pytest.raises(forward.ForwardNotSent):
        forward.forward_reply(first.id, sendgrid_client)
    # The actor hands the refusal to Dramatiq as a Retry: one log line, no traceback.
    standin.fail_next(503)
    with pytest.raises(dramatiq.Retry, match="503"):
        reply_actors.forward_reply.fn(first.id)
    assert forward.forward_reply(first.id, sendgrid_client) == "forwarded"
    assert forward.forward_reply(first.id, sendgrid_client) == "nothing to forward"
    assert [m.recipients()[0][0] for m in standin.messages].count("sales@acme.test") == 1


def test_a_post_whose_enqueue_was_lost_is_enqueued_again_and_old_posts_are_purged(
        sent, receiver, inbound_settings) -> None:
    from datetime import timedelta

    from outreach_actors.domain import ingest, maintenance
    from outreach_actors.domain.store.models import utcnow

    post(receiver, inbound_form(sample("gmail_reply.eml", sent)))
    [post_id] = receiver.enqueued
    later = utcnow() + timedelta(minutes=10)
    found: list[int] = []
    assert ingest.requeue_stale_deliveries(found.append, timedelta(minutes=5), now=later,
                                           model=InboundPost) == 1
    assert found == [post_id]
    assert ingest.requeue_stale_deliveries(found.append, timedelta(minutes=5), now=later,
                                           model=InboundPost) == 0  # once per lease
    ingest_post(post_id, enqueue_forward=lambda post_id: None)
    counts = maintenance.purge_old_data(now=utcnow() + timedelta(days=31))
    assert counts["posts"] == 1 and InboundPost.select().count() == 0


def test_plan_validation_knows_replies_and_threads() -> None:
    from outreach_actors.domain.plans import PlanError, validate_plan

    start_threads = PLAN.replace('    subject: "Hello {{ contact.first_name }}"\n',
                                 "    thread: true\n")
    with pytest.raises(PlanError, match="nodes.intro.subject: the start node has no previous"):
        validate_plan(start_threads)
    no_subject = PLAN.replace("    thread: true\n", "")
    with pytest.raises(PlanError, match="nodes.bump.subject: an email node needs a subject"):
        validate_plan(no_subject)
    with pytest.raises(PlanError, match="only timeout events"):
        validate_plan(PLAN.replace("{on: no_reply, after: PT1H, to: bump}",
                                   "{on: replied, after: PT1H, to: bump}"))
    plan = validate_plan(PLAN.replace("{on: no_reply, after: PT1H, to: bump}",
                                      "{on: no_reply, after: PT1H, to: bump}\n"
                                      "      - {on: reply, to: gave_up}"))
    assert plan.transition_for("intro", "replied").to == "gave_up"


def test_accepting_unsigned_posts_is_logged_loudly(data_dir, caplog) -> None:
    SendGridInboundReceiver(make_settings(data_dir, sendgrid_inbound_allow_unsigned=True))
    assert "Unsigned inbound posts accepted" in caplog.text
    assert "OUTREACH_SENDGRID_INBOUND_ALLOW_UNSIGNED" in caplog.text


def test_a_forward_whose_enqueue_was_lost_is_enqueued_again(sent, receiver) -> None:
    from datetime import timedelta

    from outreach_actors.domain.store.models import utcnow

    [first, _] = post_twice_and_ingest(receiver, sample("gmail_reply.eml", sent), raw=True)
    found: list[int] = []
    later = utcnow() + timedelta(minutes=10)
    assert forward.requeue_pending_forwards(found.append, timedelta(minutes=5), now=later) == 1
    assert forward.requeue_pending_forwards(found.append, timedelta(minutes=5), now=later) == 0
    assert found == [first.id]


def test_an_out_of_office_routed_to_a_wait_node_waits_until_the_return_date(
        inbound_settings, receiver) -> None:
    from datetime import datetime, timedelta

    from outreach_actors.domain.store.models import utcnow

    make_tenant()
    load_plan(PLAN.replace("      - {on: no_reply, after: PT1H, to: bump}\n",
                           "      - {on: no_reply, after: PT1H, to: bump}\n"
                           "      - {on: auto_replied, to: later}\n")
              + "  later:\n    type: wait\n    transitions:\n"
                "      - {on: elapsed, after: PT1H, to: bump}\n")
    enrollment = engine.enroll("acme", "ada@example.com", "outreach", fields={"first_name": "Ada"})
    action = ScheduledAction.get(ScheduledAction.enrollment == enrollment)
    message = OutboundMessage.get_by_id(delivery.render_action(action.id))
    post_twice_and_ingest(receiver, sample("outlook_out_of_office.eml", message), raw=True)
    assert Enrollment.get_by_id(enrollment.id).current_node == "later"
    timer = ScheduledAction.get(ScheduledAction.node == "later")
    # Held until the date the out-of-office gives, unless the node's own wait is longer
    back = datetime(2026, 12, 28)
    own_wait = utcnow() + timedelta(hours=1)
    assert timer.run_at == back if back > own_wait else own_wait - timer.run_at < timedelta(minutes=5)


@pytest.mark.parametrize("charset", ["iso-8859-1", "utf-8", "windows-1252"])
def test_the_parsed_form_is_read_in_the_charsets_sendgrid_names(charset) -> None:
    from outreach_actors.domain.replies.classify import body_text
    from outreach_actors.domain.replies.parse import parse_post

    email = (SAMPLES / "german_out_of_office.eml").read_bytes()
    parsed = parse_post(inbound_form(email, raw=False, charset=charset), CONTENT_TYPE)
    assert parsed.form == "parsed" and not parsed.warnings
    assert "Vielen Dank für Ihre Nachricht" in body_text(parsed.message)
    assert "unregelmäßig" in body_text(parsed.message)


# --- many posts in one run -----------------------------------------------------------

def test_posts_read_in_one_batch_act_once_each_however_often_run(
        three_sent, receiver, standin, sendgrid_client, inbound_settings) -> None:
    ada, grace, alan = three_sent
    OutboundMessage.update(from_name="").where(OutboundMessage.id == grace.id).execute()
    ada_reply = inbound_form(sample("gmail_reply.eml", ada))
    for body in [ada_reply, ada_reply.replace(b"192.0.2.25", b"192.0.2.26"),  # SendGrid again
                 inbound_form(sample("apple_mail_reply.eml", grace)),
                 inbound_form(sample("outlook_out_of_office.eml", alan)),
                 inbound_form(b"From: x@example.com\nTo: y@in.acme.test\nSubject: hi\n\nhello\n")]:
        assert post(receiver, body).status == 200
    garbage = b"\x00\xff garbage"
    assert post(receiver, garbage, headers={**inbound_headers(garbage, KEYS.private_key_pem),
                                            "Content-Type": "text/plain"}).status == 200
    posts = receiver.enqueued
    # One run takes every post that waits, in the order received
    batch = ingest_posts(posts[0])
    expected = dict(zip(posts, ["processed", "duplicate", "processed", "processed", "unmatched",
                                "failed"], strict=True))
    assert batch.statuses == expected
    assert [reply.post_id for reply in batch.forwards] == [posts[0], posts[2]]
    # Every post's own run comes later, and each can run twice: each finds its post done
    for post_id in posts * 2:
        again = ingest_posts(post_id)
        assert (again.statuses, again.forwards) == ({post_id: expected[post_id]}, [])
    for _ in range(2):
        forwarded = forward.forward_replies(batch.forwards, sendgrid_client)
    assert forwarded == {posts[0]: forward.Forwarded("already forwarded"),
                         posts[2]: forward.Forwarded("already forwarded")}
    forwards = [m for m in standin.messages if forward.FORWARD_HEADER in m.body.get("headers", {})]
    assert sorted(m.body["headers"][forward.FORWARD_HEADER] for m in forwards) == sorted(
        [str(posts[0]), str(posts[2])])
    assert [Enrollment.get_by_id(m.enrollment_id).status for m in three_sent] == [
        "converted", "converted", "active"]
    assert [(e.type, e.message_id) for e in MessageEvent.select().where(
        MessageEvent.provider_event == "inbound_parse").order_by(MessageEvent.id)] == [
        ("replied", ada.id), ("replied", grace.id), ("auto_replied", alan.id)]
    assert [InboundPost.get_by_id(p).forward_status for p in posts[:3]] == ["sent", None, "sent"]


def test_a_post_that_fails_its_batch_holds_up_no_other(three_sent, receiver,
                                                      monkeypatch) -> None:
    from outreach_actors.domain.replies import ingest as replies_ingest

    ada, grace, alan = three_sent
    for message in (ada, grace):
        post(receiver, inbound_form(sample("gmail_reply.eml", message).replace(
            b"<CAF=", f"<{message.id}-".encode())))
    ada_post, grace_post = receiver.enqueued
    classify = replies_ingest.classify

    def a_bug_on_graces_reply(message):
        if grace.headers["Reply-To"] in str(message["to"]):
            raise RuntimeError("a bug that this reply finds")
        return classify(message)

    monkeypatch.setattr(replies_ingest, "classify", a_bug_on_graces_reply)
    # Ada's run takes both, fails, and runs hers alone; Grace's waits for its own run
    assert ingest_posts(ada_post).statuses == {ada_post: "processed"}
    assert InboundPost.get_by_id(grace_post).status == "received"
    with pytest.raises(RuntimeError, match="a bug"):  # and that run fails, to be retried
        ingest_posts(grace_post)
    assert "a run failed (RuntimeError('a bug" in InboundPost.get_by_id(grace_post).note
    # From then on no other run takes it into its batch
    post(receiver, inbound_form(sample("gmail_reply.eml", alan)))
    alan_post = receiver.enqueued[-1]
    assert ingest_posts(alan_post).statuses == {alan_post: "processed"}
    monkeypatch.undo()
    assert ingest_posts(grace_post).statuses == {grace_post: "processed"}
    assert [Enrollment.get_by_id(m.enrollment_id).status for m in three_sent] == [
        "converted", "converted", "converted"]


def test_a_big_post_waits_for_its_own_run(three_sent, receiver) -> None:
    from outreach_actors.domain.replies.ingest import BATCH_MAX_POST_BYTES

    ada, grace, _ = three_sent
    big = with_attachments(sample("gmail_reply.eml", grace).replace(b"<CAF=", b"<big-")).replace(
        b"\n\n", b"\nX-Padding: " + b"x" * 70 + (b"\n " + b"x" * 70) * (
            BATCH_MAX_POST_BYTES // 70) + b"\n\n", 1)
    for email in (sample("gmail_reply.eml", ada), big):
        post(receiver, inbound_form(email))
    ada_post, big_post = receiver.enqueued
    assert ingest_posts(ada_post).statuses == {ada_post: "processed"}
    assert ingest_posts(big_post).statuses == {big_post: "processed"}


def test_a_run_leaves_a_post_another_run_holds(three_sent, receiver, db) -> None:
    import threading

    from outreach_actors.domain.store.db import is_postgresql

    for message in three_sent:
        post(receiver, inbound_form(sample("gmail_reply.eml", message).replace(
            b"<CAF=", f"<{message.id}-".encode())))
    first, held, third = receiver.enqueued
    holding, release = threading.Event(), threading.Event()
    postgresql = is_postgresql(db)

    def another_run() -> None:
        # PostgreSQL: it holds its post's row; SQLite: the write lock, the whole database.
        with db.connection_context(), db.atomic() if postgresql else db.atomic("IMMEDIATE"):
            query = InboundPost.select().where(InboundPost.id == held)
            (query.for_update() if postgresql else query).first()
            holding.set()
            release.wait(20)

    other = threading.Thread(target=another_run)
    other.start()
    assert holding.wait(20)
    runs: list = []
    run = threading.Thread(target=lambda: runs.append(ingest_posts(first).statuses))
    try:
        run.start()
        run.join(0.5)
        # PostgreSQL takes the posts no one holds; SQLite waits for the other writer
        assert runs == ([{first: "processed", third: "processed"}] if postgresql else [])
    finally:
        release.set()
        other.join()
        run.join(20)
    if postgresql:
        assert InboundPost.get_by_id(held).status == "received"
    else:
        assert runs == [{first: "processed", held: "processed", third: "processed"}]


def test_a_forward_sendgrid_refuses_in_a_batch_goes_to_its_own_retries(
        three_sent, receiver, standin, sendgrid_client, monkeypatch) -> None:
    from outreach_actors.worker.actors import replies as reply_actors

    for message in three_sent[:2]:
        post(receiver, inbound_form(sample("gmail_reply.eml", message).replace(
            b"<CAF=", f"<{message.id}-".encode())))
    batch = ingest_posts(receiver.enqueued[0])
    handed_on: list[int] = []
    monkeypatch.setattr(reply_actors.forward_reply, "send", handed_on.append)
    standin.fail_next(503)
    reply_actors.forward_now(batch.forwards)  # what the run does once it has committed
    assert handed_on == [receiver.enqueued[0]]
    assert [InboundPost.get_by_id(p).forward_status for p in receiver.enqueued] == [
        "sending", "sent"]
    assert forward.forward_reply(handed_on[0], sendgrid_client) == "forwarded"
    assert forward.forward_reply(handed_on[0], sendgrid_client) == "nothing to forward"
    forwards = [m for m in standin.messages if forward.FORWARD_HEADER in m.body.get("headers", {})]
    assert len(forwards) == 2


# --- reading a reply without the contents of its attachments -------------------------

def with_attachments(email: bytes, *, crlf: bool = False) -> bytes:
    """``email`` with a long quoted history (read whole) and 40 KB of attachments: a
    PDF, an image inside an HTML part beside the text, and an email attached with an
    attachment of its own."""
    from email import policy as email_policy
    from email.message import EmailMessage
    from email.parser import BytesParser

    message = BytesParser(policy=email_policy.default).parsebytes(email)
    text = message.get_body(("plain",))
    text.set_content(text.get_content() + "\n".join(
        f"> line {n} of the earlier conversation" for n in range(400)))
    if not message.is_multipart():
        text = message.get_content()
        message.set_content(text)
        message.add_alternative(f"<p>{text}</p>", subtype="html")
        message.get_body(("html",)).add_related(bytes(range(256)) * 40, maintype="image",
                                                 subtype="png", cid="<logo@example.com>")
    message.add_attachment(bytes(range(256)) * 60, maintype="application", subtype="pdf",
                           filename="proposal.pdf")
    inner = EmailMessage()
    inner["Subject"] = "the earlier thread"
    inner.set_content("see attached")
    inner.add_attachment(bytes(range(256)) * 40, maintype="application", subtype="zip",
                         filename="thread.zip")
    message.add_attachment(inner)
    return message.as_bytes(policy=email_policy.SMTP if crlf else email_policy.default)


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
@pytest.mark.parametrize("name", ["gmail_reply.eml", "apple_mail_reply.eml",
                                  "german_out_of_office.eml", "outlook_out_of_office.eml",
                                  "postfix_dsn.eml", "spanish_unsubscribe.eml"])
def test_a_reply_is_read_without_its_attachments_as_it_reads_with_them(name, crlf) -> None:
    from email import policy as email_policy
    from email.parser import BytesParser

    from outreach_actors.domain.replies.classify import body_text, classify
    from outreach_actors.domain.replies.parse import parse_post, skimmed

    email = with_attachments((SAMPLES / name).read_bytes(), crlf=crlf)
    whole = BytesParser(policy=email_policy.default).parsebytes(email)
    parsed = parse_post(inbound_form(email), CONTENT_TYPE)
    read = parsed.message
    assert len(skimmed(email)) < len(email) - 20_000  # the attachments' contents left out
    assert [(part.get_content_type(), part.get_filename()) for part in read.walk()] == [
        (part.get_content_type(), part.get_filename()) for part in whole.walk()]
    assert list(read.items()) == list(whole.items())
    assert body_text(read) == body_text(whole)
    assert (classify(read).kind, classify(read).data) == (classify(whole).kind,
                                                          classify(whole).data)
    assert [repr(defect) for part in read.walk() for defect in part.defects] == [
        repr(defect) for part in whole.walk() for defect in part.defects]
    attached = [part for part in read.walk() if part.get_filename() == "proposal.pdf"]
    assert attached and attached[0].get_content() == b""
    assert parsed.raw == email  # a forward attaches the email whole


@pytest.mark.parametrize("case", ["bare CR", "no closing delimiter", "header without colon",
                                  "delimiter with text after it"])
def test_mime_the_skim_is_unsure_of_is_read_whole(case) -> None:
    from outreach_actors.domain.replies.parse import skimmed

    attachment = b"Content-Type: application/pdf\nContent-Transfer-Encoding: base64\n\n" + (
        b"QUJD" * 19 + b"\n") * 200
    head = b"From: a@example.com\nSubject: x\nContent-Type: multipart/mixed; boundary=zz\n\n"
    parts = b"--zz\nContent-Type: text/plain\n\nhello\n--zz\n" + attachment + b"--zz--\n"
    assert len(skimmed(head + parts)) < 1000  # well-formed: the attachment is left out
    email = {
        "bare CR": head + parts.replace(b"hello\n", b"hello\r--zz--\n"),
        "no closing delimiter": head + parts.replace(b"--zz--\n", b""),
        "header without colon": head.replace(b"Subject: x\n", b"Subject x\n") + parts,
        "delimiter with text after it": head + parts.replace(b"--zz--\n", b"--zz-- and more\n"),
    }[case]
    assert skimmed(email) == email


def test_a_reply_proves_a_send_whose_answer_was_lost(sent, receiver) -> None:
    OutboundMessage.update(status="ambiguous", provider_message_id=None).execute()
    post_twice_and_ingest(receiver, sample("gmail_reply.eml", sent), raw=True)
    assert OutboundMessage.get_by_id(sent.id).status == "sent"  # never sent again


def test_a_dsn_reporting_a_temporary_failure_is_a_soft_bounce(sent, receiver) -> None:
    email = sample("postfix_dsn.eml", sent).replace(b"Status: 5.1.1", b"Status: 4.2.2")
    [first, _] = post_twice_and_ingest(receiver, email, raw=True)
    event = MessageEvent.get(MessageEvent.type == "bounced")
    assert (event.data["bounce_type"], event.data["status"]) == ("soft", "4.2.2")
    assert Suppression.select().count() == 0  # one soft bounce is under the limit


@pytest.mark.parametrize("subject, text, kind", [
    ("Re: Hello", "Please unsubscribe me.", "unsubscribed"),
    ("Re: Hello", "Remove me from your list", "unsubscribed"),
    ("AW: Hallo", "Bitte melden Sie mich ab. Bitte austragen!", "unsubscribed"),
    ("RE: Bonjour", "Merci de me désabonner de cette liste.", "unsubscribed"),
    ("RE: Hola", "Por favor, darme de baja.", "unsubscribed"),
    ("Re: Hello", "Happy to talk, but please remove me from the newsletter list after our "
                  "call next week, and send the pricing first.", "replied"),
    ("Out of Office: Hello", "I am away.", "auto_replied"),
    ("Abwesenheitsnotiz: Hallo", "Ich bin nicht da.", "auto_replied"),
    ("Réponse automatique : Bonjour", "Je suis absent.", "auto_replied"),
    ("Respuesta automática: Hola", "Estoy fuera.", "auto_replied"),
])
def test_replies_are_classified_in_four_languages(subject, text, kind) -> None:
    from email.message import EmailMessage

    from outreach_actors.domain.replies.classify import classify

    message = EmailMessage()
    message["Subject"], message["From"] = subject, "ada@example.com"
    message.set_content(text)
    assert classify(message).kind == kind
