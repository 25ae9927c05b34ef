"""The `outreach` command, run as a user would: real files, a real database, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from outreach_actors import models
from outreach_actors.cli import main
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
    from outreach_actors.embedded import EmbeddedRedis, ensure_embedded_redis

    ensure_embedded_redis(data_dir)
    configure(make_settings(data_dir, broker_url=None))
    try:
        result = CliRunner().invoke(main, ["broker", "stop"])
    finally:
        configure(None)
    assert result.exit_code == 0 and "stopped the embedded Redis" in result.output
    assert not EmbeddedRedis(data_dir).is_running()
