"""On PostgreSQL the email path's fixed statements run as prepared statements, each
prepared once per connection; a connection that lost them prepares them again, and
a database URL can turn them off (for PgBouncer's transaction mode)."""

from __future__ import annotations

from collections.abc import Iterator

import dramatiq
import pytest

from outreach_actors.domain import engine
from outreach_actors.domain import mail as delivery
from outreach_actors.domain.store import models
from outreach_actors.domain.store.db import PreparingPostgresqlDatabase, database_from_url
from outreach_actors.domain.store.models import OutboundMessage, ScheduledAction
from outreach_actors.settings import SettingsError, configure
from outreach_actors.worker.actors.mail import send_rate_limits

from .conftest import POSTGRES_URL, make_settings, require_postgres, reset_schema
from .factories import load_plan, make_tenant


def bound_postgres(data_dir, url: str) -> Iterator[PreparingPostgresqlDatabase]:
    require_postgres()
    settings = make_settings(data_dir)
    database = database_from_url(url, settings)
    reset_schema(database)
    configure(settings)
    models.bind(database)
    with database.connection_context():
        make_tenant()
        load_plan()
        yield database
    configure(None)
    database.close_all()


@pytest.fixture
def postgres(data_dir) -> Iterator[PreparingPostgresqlDatabase]:
    yield from bound_postgres(data_dir, POSTGRES_URL)


def email(address: str, client) -> str:
    """Render and send one email (its rate-limit read too); returns the message id."""
    enrollment = engine.enroll("acme", address, "onboarding", fields={"first_name": "Ada"})
    action = ScheduledAction.get(ScheduledAction.enrollment == enrollment.id,
                                 ScheduledAction.kind == ScheduledAction.SEND)
    message_id = delivery.render_action(action.id)
    send_rate_limits(dramatiq.Message(queue_name="send", actor_name="send", args=(message_id,),
                                      kwargs={}, options={}))
    assert delivery.send_message(message_id, client).status == "sent"
    return message_id


def executions() -> dict[str, int]:
    """This connection's prepared statements, each with how often it ran."""
    return dict(models.database_proxy.execute_sql(
        "SELECT name, generic_plans + custom_plans FROM pg_prepared_statements").fetchall())


def test_each_fixed_statement_is_prepared_once_and_reused(postgres, standin, sendgrid_client):
    email("ada@example.com", sendgrid_client)
    after_one = executions()
    email("bob@example.com", sendgrid_client)
    after_two = executions()

    # the enrollment's plan read; the render's read and write, the rate-limit read, the
    # claim, sent and its timers
    assert len(after_one) == 6
    assert all(name.startswith("outreach_") for name in after_one)
    assert set(after_two) == set(after_one)
    assert all(after_two[name] == after_one[name] + 1 for name in after_one)
    assert OutboundMessage.select().where(OutboundMessage.status == "sent").count() == 2


def test_statements_dropped_behind_its_back_are_prepared_again(postgres, standin,
                                                                sendgrid_client):
    email("ada@example.com", sendgrid_client)
    models.database_proxy.execute_sql("DEALLOCATE ALL")  # what a pooler's reset does

    email("bob@example.com", sendgrid_client)

    assert len(executions()) == 6
    assert len(standin.messages) == 2


def test_a_statement_dropped_inside_a_transaction_fails_it_and_the_retry_prepares(
        postgres, standin, sendgrid_client):
    message_id = email("ada@example.com", sendgrid_client)
    models.database_proxy.execute_sql("DEALLOCATE ALL")
    facts = (message_id,)

    with pytest.raises(Exception, match="does not exist"):
        with models.database_proxy.atomic():
            send_rate_limits(dramatiq.Message(queue_name="send", actor_name="send", args=facts,
                                              kwargs={}, options={}))

    assert send_rate_limits(dramatiq.Message(queue_name="send", actor_name="send", args=facts,
                                             kwargs={}, options={})) == []  # already sent
    assert len(executions()) == 1


def test_prepared_statements_can_be_turned_off(data_dir, standin, sendgrid_client):
    for _ in bound_postgres(data_dir, POSTGRES_URL + "?prepared_statements=false"):
        email("ada@example.com", sendgrid_client)

        assert executions() == {}
        assert len(standin.messages) == 1


def test_a_bad_prepared_statements_value_is_refused(data_dir):
    with pytest.raises(SettingsError, match="prepared_statements='maybe' must be true or false"):
        database_from_url(POSTGRES_URL + "?prepared_statements=maybe", make_settings(data_dir))


def test_statements_the_session_already_has_are_used(postgres, standin, sendgrid_client):
    email("ada@example.com", sendgrid_client)
    postgres._prepared.clear()  # as if another client had prepared them on this session

    email("bob@example.com", sendgrid_client)

    assert len(executions()) == 6
    assert len(standin.messages) == 2
