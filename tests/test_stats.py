"""`outreach stats`: the funnel per tenant, plan and node, with what needs an operator."""

from __future__ import annotations

from outreach_actors.domain import engine
from outreach_actors.domain.stats import FUNNEL_COLUMNS, funnel
from outreach_actors.domain.store.models import Enrollment, MessageEvent, OutboundMessage, utcnow

from .factories import load_plan, make_tenant


def message(enrollment: Enrollment, status: str, key: str) -> OutboundMessage:
    return OutboundMessage.create(
        tenant=enrollment.tenant_id, enrollment=enrollment, node="intro", dedupe_key=key,
        status=status, to_email="x@example.com", from_email="sales@acme.test", subject="s",
        html="h", text="t")


def test_each_tenant_has_its_own_funnel_with_what_is_stuck_or_failed(db) -> None:
    # Given the same plan name in two tenants: acme with three contacts (one sent and
    # delivered, one whose send is ambiguous, one failed), globex with one.
    for tenant in ("acme", "globex"):
        make_tenant(tenant)
        load_plan(tenant_id=tenant)
    ada, bob, cy = (engine.enroll("acme", f"{name}@example.com", "onboarding")
                    for name in ("ada", "bob", "cy"))
    engine.enroll("globex", "dee@example.com", "onboarding")
    sent = message(ada, "sent", "a")
    MessageEvent.create(message=sent, type="delivered", event_key="d", occurred_at=utcnow())
    message(bob, "ambiguous", "b")
    engine.exit_enrollment(cy.id, "ambiguous_send")
    Enrollment.update(status=Enrollment.FAILED).where(Enrollment.id == cy.id).execute()

    rows = {(row["tenant"], row["node"]): row for row in funnel(plan_name="onboarding")}

    intro = rows[("acme", "intro")]
    assert {column: intro[column] for column in FUNNEL_COLUMNS} == {
        "entered": 3, "active": 2, "sent": 1, "delivered": 1, "opened": 0, "clicked": 0,
        "bounced": 0, "no_open": 0, "no_click": 0, "exited": 0, "failed": 1, "ambiguous": 1,
        "paused": 0, "converted": 0,
        "replied": 0, "auto_replied": 0, "no_reply": 0,
    }
    assert rows[("globex", "intro")]["entered"] == 1
    assert rows[("globex", "intro")]["active"] == 1
    assert [row["tenant"] for row in funnel(tenant_id="globex")] == ["globex"]


def test_the_table_names_the_tenant_only_when_there_are_several() -> None:
    from outreach_actors.cli.commands import funnel_table

    row = dict.fromkeys(FUNNEL_COLUMNS, 0)
    one = [{"tenant": "acme", "plan": "p", "node": "intro", **row}]
    two = [*one, {"tenant": "globex", "plan": "p", "node": "intro", **row}]
    assert [c.header for c in funnel_table(one).columns][:2] == ["plan", "node"]
    assert [c.header for c in funnel_table(two).columns][:3] == ["tenant", "plan", "node"]


def test_opens_and_clicks_are_counted_as_plans_count_them(db, data_dir) -> None:
    from outreach_actors.settings import configure

    from .conftest import make_settings

    make_tenant("acme")
    load_plan()
    human, machine, unsubscriber = (
        message(engine.enroll("acme", f"{name}@example.com", "onboarding"), "sent", name)
        for name in ("human", "machine", "unsubscriber"))
    for sent, kind, data in [(human, "opened", {"machine_open": False}),
                             (human, "clicked", {"url": "https://acme.test/pricing"}),
                             (machine, "opened", {"machine_open": True}),
                             (unsubscriber, "clicked", {"url": "https://x/unsubscribe/t",
                                                        "unsubscribe_link": True})]:
        MessageEvent.create(message=sent, type=kind, event_key=f"{sent.id}:{kind}",
                            occurred_at=utcnow(), data=data)

    [intro] = [row for row in funnel() if row["node"] == "intro"]
    assert (intro["opened"], intro["clicked"]) == (1, 1)
    configure(make_settings(data_dir, machine_opens_are_engagement=True))
    [intro] = [row for row in funnel() if row["node"] == "intro"]
    assert (intro["opened"], intro["clicked"]) == (2, 1)
