"""Inbound Parse posts on the dashboard, in a real browser on SQLite and PostgreSQL: the
list filtered by state, a post's page (state, kind, matched message, raw body as text),
its Replay (a POST with CSRF that re-reads it as `outreach replies replay` does), and the
link from a reply on the contact's timeline to the post that carried it."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By

from outreach_actors.dev.inbound_posts import CONTENT_TYPE, inbound_form
from outreach_actors.domain.replies.ingest import ingest_post
from outreach_actors.domain.store.models import Contact, Enrollment, InboundPost

from .test_dashboard import _request, dashboard, page  # noqa: F401  (fixtures)
from .test_ingest import make_message
from .test_webhooks import host_runtime  # noqa: F401  (a fixture)

pytestmark = pytest.mark.usefixtures("host_runtime")

SAMPLES = Path(__file__).parent / "samples" / "inbound"
HOSTILE = "<script>alert(1)</script>"


def stored_post(body: bytes) -> int:
    """``body`` stored as the Inbound Parse endpoint stores a post, then read once."""
    post_id = InboundPost.create(body=body, headers={"content-type": CONTENT_TYPE},
                                 body_digest=hashlib.sha256(body).hexdigest()).id
    ingest_post(post_id, enqueue_forward=lambda post_id: None)
    return post_id


@pytest.fixture
def posts(dashboard: int) -> dict[str, int]:  # noqa: F811
    """Ada's reply to an email of ours (processed) and a hostile post no one can read."""
    contact = Contact.get(Contact.email == "ada@example.com")
    enrollment = Enrollment.get(Enrollment.contact == contact)
    message_id = f"msg_{uuid.uuid4().hex}"
    message = make_message(message_id, "ada@example.com", enrollment=enrollment, node="intro")
    message.headers = {"Message-ID": f"<{message_id}@acme.test>"}
    message.save()
    email = ((SAMPLES / "gmail_reply.eml").read_bytes()
             .replace(b"REPLY_ADDRESS", b"sales@acme.test")
             .replace(b"OUR_MESSAGE_ID", f"<{message_id}@acme.test>".encode()))
    return {"reply": stored_post(inbound_form(email)), "hostile": stored_post(HOSTILE.encode()),
            "contact": contact.id, "message": message_id}


def test_inbound_posts_are_listed_opened_and_replayed(page, posts) -> None:  # noqa: F811
    reply = InboundPost.get_by_id(posts["reply"])
    assert (reply.status, reply.kind) == ("processed", "replied")
    page.open("/")
    page.follow(page.driver.find_element(By.LINK_TEXT, "Inbound"))
    page.shot("inbound")
    rows = page.driver.find_elements(By.CSS_SELECTOR, "main tbody tr")
    assert [row.text.split()[0] for row in rows] == [str(posts["hostile"]), str(posts["reply"])]
    page.open("/inbound?status=processed")
    rows = page.driver.find_elements(By.CSS_SELECTOR, "main tbody tr")
    assert len(rows) == 1 and "replied" in rows[0].text
    page.follow(page.driver.find_element(By.LINK_TEXT, str(posts["reply"])))
    page.shot("inbound-post")
    text = page.text()
    assert "processed" in text and "replied" in text and "Re: Hello Ada" in text
    assert "Thursday at 3pm" in page.driver.find_element(By.CSS_SELECTOR, "pre.raw").text
    page.follow(page.driver.find_element(By.LINK_TEXT, posts["message"]))
    assert f"/messages/{posts['message']}" in page.driver.current_url
    page.driver.back()
    page.follow(page.driver.find_element(By.XPATH, "//button[text()='Replay']"))
    page.shot("inbound-replayed")
    assert "Queued to be read again." in page.text()
    assert InboundPost.get_by_id(posts["reply"]).status == InboundPost.RECEIVED
    page.open("/inbound?status=nonsense")
    assert "status must be one of" in page.text()


def test_a_reply_on_the_timeline_links_to_its_inbound_post(page, posts) -> None:  # noqa: F811
    page.open(f"/contacts/{posts['contact']}")
    page.follow(page.driver.find_element(By.LINK_TEXT, f"inbound post {posts['reply']}"))
    assert page.driver.find_element(By.TAG_NAME, "h1").text == f"Inbound post {posts['reply']}"


def test_a_hostile_raw_body_is_shown_as_text(page, posts) -> None:  # noqa: F811
    assert InboundPost.get_by_id(posts["hostile"]).status == InboundPost.FAILED
    page.open(f"/inbound/{posts['hostile']}")
    assert page.driver.find_element(By.CSS_SELECTOR, "pre.raw").text == HOSTILE
    assert not page.driver.find_elements(By.CSS_SELECTOR, "main script")


def test_an_inbound_replay_without_the_csrf_token_changes_nothing(dashboard, posts) -> None:  # noqa: F811
    status, body = _request(dashboard, "POST", f"/outreach/inbound/{posts['hostile']}/replay",
                            b"csrf_token=forged", cookie="outreach_csrf=" + "a" * 43)
    assert status == 403 and "CSRF token is missing or wrong" in body
    assert InboundPost.get_by_id(posts["hostile"]).status == InboundPost.FAILED
