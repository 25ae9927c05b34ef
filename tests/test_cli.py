"""The `outreach` command, run as a user would: real files, a real database, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from outreach_actors.cli.commands import main
from outreach_actors.domain.store import models
from outreach_actors.settings import configure

from .conftest import make_settings
from .factories import THREE_NODE_PLAN

TEMPLATES = Path(__file__).resolve().parent.parent / "templates"


@pytest.fixture
def outreach(data_dir: Path):
    """Invoke the CLI against a fresh SQLite database in the test's data dir."""
    configure(make_settings(data_dir))
    runner = CliRunner()

    def invoke(*args: str, expect: int = 0):
        result = runner.invoke(main, list(args), catch_exceptions=False)
        assert result.exit_code == expect, result.output
        return result

    invoke("db", "init")
    yield invoke
    configure(None)


def test_every_subcommand_has_help() -> None:
    runner = CliRunner()
    for args in (["--help"], ["db", "init", "--help"], ["plan", "validate", "--help"],
                 ["enroll", "--help"], ["preview", "--help"], ["stats", "--help"],
                 ["suppressions", "import", "--help"], ["webhooks", "replay", "--help"],
                 ["replies", "list", "--help"], ["replies", "replay", "--help"],
                 ["serve", "--help"], ["broker", "stop", "--help"], ["demo", "--help"]):
        result = runner.invoke(main, args)
        assert result.exit_code == 0 and "Usage:" in result.output, args


def test_db_init_is_idempotent(outreach) -> None:
    assert "database ready" in outreach("db", "init").output


def test_plan_validate_prints_ok_or_every_error(outreach, tmp_path: Path) -> None:
    assert outreach("plan", "validate", str(TEMPLATES / "onboarding.yaml")).output.strip() == "ok"
    bad = tmp_path / "bad.yaml"
    bad.write_text(THREE_NODE_PLAN.replace("to: thanks}", "to: nowhere}").replace("PT2S", "soon"))
    output = outreach("plan", "validate", str(bad), expect=1).output
    assert "nodes.intro.transitions[0].to: node 'nowhere' does not exist" in output
    assert "nodes.intro.transitions[1].after: 'soon' is not an ISO-8601 duration" in output
    assert "cannot read" in outreach("plan", "validate", str(tmp_path / "missing.yaml"),
                                     expect=1).output


def test_load_enroll_preview_and_stats(outreach, tmp_path: Path) -> None:
    assert "version 1" in outreach("plan", "load", str(TEMPLATES / "onboarding.yaml"),
                                   "--tenant", "acme").output
    assert "version 2" in outreach("plan", "load", str(TEMPLATES / "onboarding.yaml"),
                                   "--tenant", "acme").output
    assert "onboarding" in outreach("plan", "list").output
    outreach("sender", "add", "sales@acme.test", "--tenant", "acme", "--verified")
    contacts = tmp_path / "contacts.csv"
    contacts.write_text(
        "email,first_name,timezone\n"
        "ada@example.com,Ada,Europe/Paris\n"
        "not-an-address,Bad,\n"
        "grace@example.com,Grace,\n"
        "ada@example.com,Ada again,\n"
    )
    output = outreach("enroll", "--plan", "onboarding", "--tenant", "acme", "--csv", str(contacts)).output
    assert "enrolled 2 of 4 rows; 2 skipped" in output
    assert "line 3:" in output and "not a valid email address" in output
    assert "line 5:" in output and "already enrolled" in output
    assert models.Enrollment.select().count() == 2

    html = tmp_path / "intro.html"
    output = outreach("preview", "--plan", "onboarding", "--tenant", "acme", "--node", "intro",
                      "--contact", "ada@example.com", "--out", str(html)).output
    assert "Welcome, Ada" in output
    assert "Ada" in html.read_text()
    # Its unsubscribe link looks real but unsubscribes no one.
    from outreach_actors.domain.unsubscribe import InvalidUnsubscribeToken, read_token
    from outreach_actors.settings import get_settings

    token = html.read_text().split("/unsubscribe/", 1)[1].split('"', 1)[0]
    with pytest.raises(InvalidUnsubscribeToken):
        read_token(get_settings(), token)
    # The tenant's name, as the send renders it; a stranger is said to be one.
    assert "tenant acme: Acme Inc." in outreach("tenant", "name", "acme", "Acme Inc.").output
    assert "Acme Inc." in outreach("tenant", "list").output
    output = outreach("preview", "--plan", "onboarding", "--tenant", "acme", "--node", "intro",
                      "--contact", "nobody@example.com", "--out", str(html)).output
    assert "nobody@example.com is not a contact of acme: rendered with no fields" in output
    assert "Acme Inc." in html.read_text()
    assert "1 to 255 printable" in outreach("tenant", "name", "acme", "\t", expect=1).output
    assert "no email node 'stop'" in outreach(
        "preview", "--plan", "onboarding", "--tenant", "acme", "--node", "stop",
        "--contact", "ada@example.com", expect=1).output

    stats = outreach("stats", "--plan", "onboarding").output
    assert "intro" in stats and "entered" in stats


def test_enroll_reports_a_missing_plan_and_a_missing_email_column(outreach, tmp_path) -> None:
    contacts = tmp_path / "c.csv"
    contacts.write_text("email\nada@example.com\n")
    assert "unknown tenant 'acme'" in outreach("enroll", "--plan", "onboarding", "--tenant",
                                               "acme", "--csv", str(contacts), expect=1).output
    outreach("plan", "load", str(TEMPLATES / "onboarding.yaml"), "--tenant", "acme")
    assert "no plan named 'x'" in outreach("enroll", "--plan", "x", "--tenant", "acme", "--csv",
                                           str(contacts), expect=1).output
    contacts.write_text("address\nada@example.com\n")
    assert "no `email` column" in outreach("enroll", "--plan", "onboarding", "--tenant", "acme",
                                           "--csv", str(contacts), expect=1).output


def test_suppressions_add_list_import_remove(outreach, tmp_path: Path) -> None:
    outreach("suppressions", "add", "Ada@Example.com", "--tenant", "acme")
    listing = tmp_path / "s.csv"
    listing.write_text("email\nbob@example.com\nnot an address\n")
    assert "imported 1 suppression(s); 1 skipped" in outreach(
        "suppressions", "import", str(listing), "--tenant", "acme").output
    output = outreach("suppressions", "list", "--tenant", "acme").output
    assert "ada@example.com" in output and "bob@example.com" in output
    outreach("suppressions", "remove", "ADA@example.com", "--tenant", "acme")
    assert models.Suppression.select().count() == 1


def test_webhooks_replay_requeues_a_stored_delivery(outreach) -> None:
    delivery = models.WebhookDelivery.create(body=b"not json", status="failed", error="bad")
    assert "queued for normalization again" in outreach("webhooks", "replay", str(delivery.id)).output
    assert models.WebhookDelivery.get_by_id(delivery.id).status == "received"
    assert "no webhook delivery 999" in outreach("webhooks", "replay", "999", expect=1).output


def test_webhooks_show_has_one_delivery_in_full(outreach) -> None:
    error = "body is not valid JSON (Expecting value at line 1 column 1); " + "x" * 200
    delivery = models.WebhookDelivery.create(body=b"not json", status="failed", error=error,
                                             headers={"user-agent": "SendGrid Event API"})
    output = outreach("webhooks", "show", str(delivery.id)).output
    assert "status: failed" in output and "events stored: 0" in output
    assert error in output.replace("\n", "")  # the whole error, not 80 characters of it
    assert "SendGrid Event API" in output
    assert outreach("webhooks", "show", str(delivery.id), "--body").output == "not json"
    assert "no webhook delivery 999" in outreach("webhooks", "show", "999", expect=1).output
    for _ in range(3):
        models.WebhookDelivery.create(body=b"[]")
    assert outreach("webhooks", "list", "--limit", "2").output.count("│ received │") == 2


def test_commands_say_when_the_schema_is_missing(data_dir: Path) -> None:
    configure(make_settings(data_dir, database_url=f"sqlite:///{data_dir / 'empty.db'}"))
    try:
        result = CliRunner().invoke(main, ["plan", "list"])
    finally:
        configure(None)
    assert result.exit_code == 1 and "run `outreach db init` first" in result.output


def test_a_bad_setting_stops_the_command_naming_the_variable(tmp_path: Path) -> None:
    env = {**os.environ, "OUTREACH_NO_OPEN_TIMEOUT": "three days"}
    result = subprocess.run([sys.executable, "-m", "outreach_actors.cli", "plan", "list"],
                            env=env, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 1
    assert "OUTREACH_NO_OPEN_TIMEOUT" in result.stderr and "Traceback" not in result.stderr


def test_broker_stop_stops_the_embedded_server(data_dir: Path) -> None:
    from outreach_actors.worker.embedded import EmbeddedRedis, ensure_embedded_redis

    ensure_embedded_redis(data_dir)
    configure(make_settings(data_dir, broker_url=None))
    try:
        result = CliRunner().invoke(main, ["broker", "stop"])
    finally:
        configure(None)
    assert result.exit_code == 0 and "stopped the embedded Redis" in result.output
    assert not EmbeddedRedis(data_dir).is_running()


def test_files_that_cannot_be_read_are_one_line_errors(outreach, tmp_path: Path) -> None:
    outreach("plan", "load", str(TEMPLATES / "onboarding.yaml"), "--tenant", "acme")
    binary = tmp_path / "latin1.csv"
    binary.write_bytes("email\nzoë@example.com\n".encode("latin-1"))
    for args in (["enroll", "--plan", "onboarding", "--tenant", "acme", "--csv"],
                 ["suppressions", "import", "--tenant", "acme"]):
        for path, message in ((tmp_path / "missing.csv", "cannot read"),
                              (tmp_path, "cannot read"),
                              (binary, "is not UTF-8 text")):
            *options, last = args
            command = [*options, last, str(path)] if last == "--csv" else [*args, str(path)]
            output = outreach(*command, expect=1).output
            assert message in output and "Traceback" not in output, (command, output)
    out = tmp_path / "no-such-dir" / "x.html"
    outreach("enroll", "--plan", "onboarding", "--tenant", "acme", "--csv",
             str(_csv(tmp_path, "email\nada@example.com\n")))
    assert "cannot write" in outreach("preview", "--plan", "onboarding", "--tenant", "acme",
                                      "--node", "intro", "--contact", "ada@example.com",
                                      "--out", str(out), expect=1).output


def _csv(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "contacts.csv"
    path.write_text(text)
    return path


def test_enroll_reports_rows_that_do_not_fit_and_refuses_repeated_columns(outreach, tmp_path) -> None:
    outreach("plan", "load", str(TEMPLATES / "onboarding.yaml"), "--tenant", "acme")
    contacts = _csv(tmp_path, "email,first_name,timezone\nada@example.com,Ada\n\n"
                              "bob@example.com,Bob,UTC,extra\ncy@example.com,Cy,Mars/Olympus\n")
    result = outreach("enroll", "--plan", "onboarding", "--tenant", "acme", "--csv", str(contacts))
    assert "enrolled 1 of 3 rows; 2 skipped" in result.output
    assert "line 4: 4 cells for 3 columns" in result.output
    assert "line 5: 'Mars/Olympus' is not an IANA time zone" in result.output
    repeated = _csv(tmp_path, "email,email\nada@example.com,bob@example.com\n")
    assert "column(s) email appear more than once" in outreach(
        "enroll", "--plan", "onboarding", "--tenant", "acme", "--csv", str(repeated), expect=1).output


def test_bad_arguments_are_refused_before_the_database_sees_them(outreach) -> None:
    long_tenant = "t" * 65
    for args in (["plan", "load", str(TEMPLATES / "onboarding.yaml"), "--tenant", long_tenant],
                 ["sender", "add", "a@example.com", "--tenant", long_tenant],
                 ["suppressions", "add", "a@example.com", "--tenant", long_tenant]):
        output = outreach(*args, expect=2).output
        assert "a tenant id is 1 to 64 printable characters" in output, args
    for address in ("a" * 300 + "@example.com", "a@example.com\nBcc: x@example.com"):
        assert "is not a valid email address" in outreach(
            "suppressions", "add", address, "--tenant", "acme", expect=1).output
    assert models.Suppression.select().count() == 0
    assert "nothing removed" in outreach("suppressions", "remove", "a@example.com",
                                         "--tenant", "acme").output
    assert "'bogus' is not one of" in outreach("webhooks", "list", "--status", "bogus",
                                               expect=2).output
    assert "99999 is not in the range 0<=x<=65535" in outreach("serve", "--port", "99999",
                                                             expect=2).output


def test_a_port_in_use_is_a_one_line_error(outreach) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        output = outreach("serve", "--port", str(port), expect=1).output
    assert f"cannot listen on 127.0.0.1:{port}" in output


def test_serve_with_a_webhook_key_that_is_no_key_stops_before_serving(data_dir: Path) -> None:
    configure(make_settings(data_dir, sendgrid_webhook_public_key="not-a-key"))
    try:
        assert CliRunner().invoke(main, ["db", "init"]).exit_code == 0
        result = CliRunner().invoke(main, ["serve", "--port", "0"], catch_exceptions=False)
    finally:
        configure(None)
    assert result.exit_code == 1
    assert "OUTREACH_SENDGRID_WEBHOOK_PUBLIC_KEY" in result.output
    assert "serving" not in result.output and "Traceback" not in result.output


def test_a_wsgi_server_with_a_bad_setting_fails_at_start_not_at_each_request(data_dir: Path) -> None:
    environment = {**os.environ, "OUTREACH_DATA_DIR": str(data_dir), "OUTREACH_BROKER_URL": "stub://",
                   "OUTREACH_DATABASE_URL": f"sqlite:///{data_dir / 'outreach.db'}"}
    # What gunicorn does with outreach_actors.wsgi:application when a worker starts.
    lookup = "import outreach_actors.wsgi as module; print(callable(getattr(module, 'application')))"
    bad = subprocess.run([sys.executable, "-c", lookup], capture_output=True, text=True, timeout=60,
                         env={**environment, "OUTREACH_SENDGRID_WEBHOOK_PUBLIC_KEY": "not-a-key"})
    assert bad.returncode != 0 and "OUTREACH_SENDGRID_WEBHOOK_PUBLIC_KEY" in bad.stderr
    good = subprocess.run([sys.executable, "-c", lookup], capture_output=True, text=True, timeout=60,
                          env={**environment, "OUTREACH_SENDGRID_WEBHOOK_ALLOW_UNSIGNED": "true"})
    assert good.returncode == 0 and good.stdout.strip() == "True", good.stderr


def test_validate_warns_of_an_email_with_no_visible_unsubscribe_link(outreach, tmp_path: Path) -> None:
    plan = tmp_path / "bare.yaml"
    plan.write_text("name: bare\nstart: a\nnodes:\n"
                    "  a: {type: email, subject: Hi, body: '<p>Hi</p>', transitions: [{on: click, to: b}]}\n"
                    "  b: {type: exit}\n")
    output = outreach("plan", "validate", str(plan)).output
    assert "ok" in output and "warning: nodes.a: its email shows no unsubscribe link" in output
    assert "warning: nodes.a: contacts who never act on its email stay there for ever" in output
    assert "warning" not in outreach("plan", "validate", str(TEMPLATES / "onboarding.yaml")).output


def test_loading_a_plan_no_sender_can_send_warns(outreach, tmp_path: Path) -> None:
    plan = TEMPLATES / "onboarding.yaml"
    output = outreach("plan", "load", str(plan), "--tenant", "acme").output
    assert "tenant 'acme' has no sender identity: every send of this plan would fail" in output
    outreach("sender", "add", "sales@acme.test", "--tenant", "acme")
    assert "no verified sender identity" in outreach("plan", "load", str(plan), "--tenant", "acme").output
    outreach("sender", "add", "sales@acme.test", "--tenant", "acme", "--verified")
    assert "warning" not in outreach("plan", "load", str(plan), "--tenant", "acme").output
    named = tmp_path / "named.yaml"
    named.write_text(plan.read_text().replace("name: onboarding", "name: named\nsender: ceo@acme.test"))
    assert "has no sender identity ceo@acme.test" in outreach(
        "plan", "load", str(named), "--tenant", "acme").output


def test_a_spreadsheet_export_is_read_as_meant(outreach, tmp_path: Path) -> None:
    outreach("plan", "load", str(TEMPLATES / "onboarding.yaml"), "--tenant", "acme")
    contacts = tmp_path / "export.csv"
    contacts.write_text(" Email ,first_name, TimeZone\n  ada@example.com ,  Ada , Europe/Paris \n")
    assert "enrolled 1 of 1 rows" in outreach(
        "enroll", "--plan", "onboarding", "--tenant", "acme", "--csv", str(contacts)).output
    contact = models.Contact.get()
    assert (contact.email, contact.fields, contact.timezone) == (
        "ada@example.com", {"first_name": "Ada"}, "Europe/Paris")


def test_a_semicolon_separated_export_is_read_too(outreach, tmp_path: Path) -> None:
    outreach("plan", "load", str(TEMPLATES / "onboarding.yaml"), "--tenant", "acme")
    contacts = tmp_path / "excel-fr.csv"
    contacts.write_text("\ufeffEmail;first_name\nada@example.com;Ada\ngrace@example.com;Grace, RN\n",
                        encoding="utf-8")
    assert "enrolled 2 of 2 rows" in outreach(
        "enroll", "--plan", "onboarding", "--tenant", "acme", "--csv", str(contacts)).output
    assert sorted(c.fields["first_name"] for c in models.Contact.select()) == ["Ada", "Grace, RN"]


def test_failures_lists_failed_contacts_with_why(outreach, standin) -> None:
    import json

    from outreach_actors.domain import engine
    from outreach_actors.domain import mail as delivery
    from outreach_actors.providers.sendgrid.client import SendGridClient

    from .conftest import STANDIN_API_KEY
    from .factories import load_plan, make_tenant

    assert "no failed enrollments" in outreach("failures").output
    make_tenant()
    load_plan()
    # Ada has no first_name, which the intro's subject needs: her render fails.
    for email, fields in [("ada@example.com", None), ("bob@example.com", {"first_name": "Bob"})]:
        enrollment = engine.enroll("acme", email, "onboarding", fields=fields)
        action = models.ScheduledAction.get(models.ScheduledAction.enrollment == enrollment)
        message_id = delivery.render_action(action.id)
    # Bob's send is refused for good.
    standin.fail_next(400, body={"errors": [{"message": "The from address does not match a "
                                                        "verified Sender Identity.", "field": "from"}]})
    delivery.send_message(message_id, SendGridClient(STANDIN_API_KEY, standin.host, 5))
    rows = json.loads(outreach("failures", "--json").output)
    assert [(row["contact"], row["node"]) for row in rows] == [
        ("bob@example.com", "intro"), ("ada@example.com", "intro")]
    assert "does not match a verified Sender Identity" in rows[0]["reason"]
    assert "first_name" in rows[1]["reason"]
    assert "bob@example.com" in outreach("failures", "--plan", "onboarding").output
    assert json.loads(outreach("failures", "--tenant", "other", "--json").output) == []


def test_a_database_nobody_answers_is_a_one_line_error(data_dir: Path) -> None:
    configure(make_settings(data_dir, database_url="postgresql://postgres@127.0.0.1:1/none"))
    try:
        result = CliRunner().invoke(main, ["plan", "list"], catch_exceptions=False)
    finally:
        configure(None)
    assert result.exit_code == 1
    assert "cannot use the database 127.0.0.1:1/none" in result.output
    assert "Traceback" not in result.output


def test_contact_fields_that_look_like_rich_markup_are_previewed_literally(
    outreach, tmp_path: Path
) -> None:
    # Rich reads "[...]" in a str as markup: "[/bold]" crashed the preview, and a link
    # tag showed "Bob" where the recipient gets the whole text.
    outreach("plan", "load", str(TEMPLATES / "onboarding.yaml"), "--tenant", "acme")
    contacts = tmp_path / "markup.csv"
    contacts.write_text("email,first_name\nada@example.com,[/bold]\n"
                        "bob@example.com,[link=https://evil.test/]Bob[/link]\n")
    outreach("enroll", "--plan", "onboarding", "--tenant", "acme", "--csv", str(contacts))

    for email, name in [("ada@example.com", "[/bold]"),
                        ("bob@example.com", "[link=https://evil.test/]Bob[/link]")]:
        output = outreach("preview", "--plan", "onboarding", "--tenant", "acme", "--node", "intro",
                          "--contact", email, "--out", str(tmp_path / "preview.html")).output
        assert f"Subject: Welcome, {name}" in output
        assert f"Hi {name}," in output  # the text part, as sent


def test_a_plan_named_like_rich_markup_is_stored_and_listed_literally(
    outreach, tmp_path: Path
) -> None:
    plan = tmp_path / "odd.yaml"
    plan.write_text((TEMPLATES / "onboarding.yaml").read_text()
                    .replace("name: onboarding", 'name: "[/x]"'))
    assert "loaded plan '[/x]' version 1" in outreach(
        "plan", "load", str(plan), "--tenant", "acme").output
    outreach("plan", "load", str(TEMPLATES / "onboarding.yaml"), "--tenant", "globex")

    listed = outreach("plan", "list").output

    assert "[/x]" in listed and "onboarding" in listed and "globex" in listed
    # An error that quotes it is shown literally too.
    assert "[/y]" in outreach("preview", "--plan", "[/y]", "--tenant", "acme", "--node", "intro",
                              "--contact", "ada@example.com", expect=1).output


def test_a_from_name_with_u2028_is_refused_at_sender_add_and_at_send(outreach, standin) -> None:
    from outreach_actors.domain import engine
    from outreach_actors.domain import mail as delivery
    from outreach_actors.providers.sendgrid.client import SendGridClient

    from .conftest import STANDIN_API_KEY
    from .factories import load_plan, make_tenant

    # The breaks the subject already refused, which a From name let through.
    for brk in ("\u2028", "\x85", "\x0b", "\x0c"):
        output = outreach("sender", "add", "sales@acme.test", "--tenant", "acme", "--verified",
                          "--name", f"Acme{brk}Bcc: victim@example.com", expect=1).output
        assert "--name: a sender name goes into the From header, which is one line" in output
    assert models.SenderIdentity.select().count() == 0
    # A name stored by other means (an older version, the database itself) fails its send.
    make_tenant()
    models.SenderIdentity.update(name="Acme\u2028Bcc: victim@example.com").execute()
    load_plan()
    enrollment = engine.enroll("acme", "ada@example.com", "onboarding", fields={"first_name": "Ada"})
    action = models.ScheduledAction.get(models.ScheduledAction.enrollment == enrollment)
    message_id = delivery.render_action(action.id)

    result = delivery.send_message(message_id, SendGridClient(STANDIN_API_KEY, standin.host, 5))

    assert result.status == "failed"
    assert models.OutboundMessage.get_by_id(message_id).error.startswith(
        "from_name: contains a line break or NUL character")
    assert standin.requests == []


def test_sender_add_names_where_replies_are_forwarded(outreach) -> None:
    outreach("sender", "add", "sales@acme.test", "--tenant", "acme", "--verified",
             "--forward-replies-to", "Owner@Acme.test")
    assert models.SenderIdentity.get().forward_replies_to == "owner@acme.test"
    output = outreach("sender", "add", "sales@acme.test", "--tenant", "acme",
                      "--forward-replies-to", "not an address", expect=1).output
    assert "--forward-replies-to" in output


def test_replies_list_show_and_replay(outreach) -> None:
    post = models.InboundPost.create(body=b"--x--", body_digest="d1", status="failed",
                                     headers={"content-type": "text/plain"},
                                     note="not multipart/form-data but text/plain")
    assert "failed" in outreach("replies", "list").output
    output = outreach("replies", "show", str(post.id)).output
    assert "status: failed" in output and "not multipart/form-data" in output
    assert outreach("replies", "show", str(post.id), "--body").output == "--x--"
    assert "queued to be read again" in outreach("replies", "replay", str(post.id)).output
    assert models.InboundPost.get_by_id(post.id).status == "received"
    assert "no inbound post 999" in outreach("replies", "replay", "999", expect=1).output
    assert "no inbound post 999" in outreach("replies", "show", "999", expect=1).output
def seed_three_of_each_list() -> dict[str, list[str]]:
    """Three rows in every list the CLI has; each list's names, in the order it shows them."""
    from datetime import timedelta

    from outreach_actors.domain.store.models import utcnow

    now = utcnow()
    for n in range(3):
        models.Tenant.create(id=f"tenant{n}", name=f"Tenant {n}")
        plan = models.Plan.create(tenant=f"tenant{n}", name=f"plan{n}", version=1,
                                  definition={"nodes": {"done": {"type": "exit"}}})
        contact = models.Contact.create(tenant=f"tenant{n}", email=f"failed{n}@example.com")
        models.Enrollment.create(tenant=f"tenant{n}", plan=plan, contact=contact,
                                 enrollment_key=f"k{n}", current_node="done", status="failed",
                                 updated_at=now - timedelta(minutes=n))
        models.Suppression.create(tenant=f"tenant{n}", value=f"gone{n}@example.com",
                                  reason="unsubscribe", created_at=now + timedelta(minutes=n))
        models.WebhookDelivery.create(body=b"[]", error=f"delivery-error-{n}")
    return {"plan list": ["plan0", "plan1", "plan2"],
            "tenant list": ["Tenant 0", "Tenant 1", "Tenant 2"],
            "suppressions list": ["gone0@", "gone1@", "gone2@"],
            "failures": ["failed0@", "failed1@", "failed2@"],  # newest first
            "webhooks list": ["delivery-error-2", "delivery-error-1", "delivery-error-0"]}


def test_every_list_pages_with_limit_and_offset_and_says_what_is_left(outreach) -> None:
    for command, names in seed_three_of_each_list().items():
        args = command.split()
        first = outreach(*args, "--limit", "2").output
        assert [name in first for name in names] == [True, True, False], command
        assert "1-2 of 3" in first and "1 more: --offset 2" in first, command
        rest = outreach(*args, "--limit", "2", "--offset", "2").output
        assert [name in rest for name in names] == [False, False, True], command
        assert "more:" not in rest, command
        everything = outreach(*args).output  # the default limit (50) holds them all
        assert all(name in everything for name in names) and "more:" not in everything, command
        assert "past 3" in outreach(*args, "--offset", "5").output, command
        assert "--limit" in outreach(*args, "--help").output, command
