"""The chaos run, bounded: a campaign under kills, Redis and PostgreSQL restarts and SendGrid faults keeps every invariant.

Real parts: the embedded Redis server (append-only) as the broker, or RabbitMQ
beside it; a PostgreSQL server of the run's own, crashed and started once; two
``dramatiq outreach_actors`` processes killed with SIGKILL and restarted, the
real ``sendgrid`` client against the stand-in, signed webhook batches posted
twice and out of order; the host's purchases POSTed to /events twice and out of
order, replies and out-of-office answers posted twice to Inbound Parse, a
plan-wide and a per-enrollment pause, a migration mid-run, a split, a
goal, notifications to a recording actor (see ``outreach_actors/dev/chaos.py``).
About 40 s each.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from pathlib import Path

from outreach_actors.dev.audit import audit_campaign
from outreach_actors.dev.chaos import ChaosConfig, ChaosReport, run_chaos
from outreach_actors.dev.postgres_server import find_postgres_bin
from outreach_actors.dev.standin import AcceptedMessage, SendGridStandIn
from outreach_actors.domain import dispatch, engine, ingest
from outreach_actors.domain.mail import ambiguous
from outreach_actors.domain.plans import validate_plan
from outreach_actors.domain.store.models import (
    Enrollment,
    MessageEvent,
    OutboundMessage,
    ScheduledAction,
    WebhookDelivery,
    utcnow,
)
from outreach_actors.domain.suppressions import suppress
from outreach_actors.settings import configure
from outreach_actors.worker.actors.mail import requeue_send, send

from .conftest import (
    RABBITMQ_URL,
    make_settings,
    rabbitmq_exclusive,
    require_rabbitmq,
    service_unavailable,
)
from .factories import load_plan, make_tenant


def chaos_config(tmp_path: Path, **overrides) -> ChaosConfig:
    """The bounded run: a few hundred contacts, on a PostgreSQL server of its own (the
    run restarts it) beside the suite's."""
    if find_postgres_bin() is None:
        service_unavailable("PostgreSQL server binaries", "no initdb or pg_ctl")
    values = dict(data_dir=tmp_path, enrollments=200, suppressed=4, seed=11,
                  # Room for a loaded machine: a run ends as soon as every contact has.
                  time_limit_s=150, drain_limit_s=60)
    return ChaosConfig(**{**values, **overrides})


def assert_every_invariant_held(report: ChaosReport) -> None:
    summary = "\n".join(report.lines())
    print(summary)
    # Then every fault happened
    faults = report.faults
    assert faults.worker_kills >= 2 and faults.worker_restarts == faults.worker_kills, summary
    assert faults.redis_restarts == 1 and faults.postgres_restarts == 1, summary
    assert faults.sends_answered_500 and faults.sends_answered_429, summary
    assert faults.connections_dropped, summary
    assert faults.duplicate_batches and faults.out_of_order_batches, summary
    # and every flow ran: purchases POSTed twice, out of order, some refused while
    # PostgreSQL was down; the plan paused and resumed, enrollments paused and migrated
    assert faults.events_posts_refused and faults.events_pairs_out_of_order, summary
    assert faults.plan_pauses == 1 and faults.enrollments_paused, summary
    assert faults.enrollments_migrated, summary
    flows = report.audit.flows
    assert flows["converted"] and flows["split_visits"] and flows["notifications_received"], summary
    assert flows["replied"] and flows["inbound_auto_replied"] and faults.inbound_posts, summary
    # and every dropped connection became an ambiguous send settled per the policy
    assert report.audit.ambiguous["total"] >= faults.connections_dropped, summary
    # and no invariant broke: one email per (enrollment, node), every timer fired
    # once or closed by a transition, every accepted event stored once, every
    # contact at a terminal node, no suppressed address mailed; no contact mailed after
    # its reply, its goal or while paused, every reply stored and read once, no split arm reassigned, every notification received
    # once, every purchase stored once
    assert report.violations() == dict.fromkeys(report.violations(), 0), summary
    finished = report.audit.enrollments.get("completed", 0) + flows["converted"]
    assert finished > 0.9 * report.config.enrollments, summary


def test_a_campaign_under_faults_keeps_every_invariant(tmp_path: Path) -> None:
    # Given a few hundred contacts in a three-email-node plan with timers of seconds,
    # When they go through it while workers are killed every 3-8 s, Redis is killed
    # once and restarted on its append-only file, PostgreSQL crashes once and comes
    # back, SendGrid fails ~10% of sends with 500/429 and drops ~2% of connections
    # after accepting, and every webhook batch arrives twice, out of order
    report = run_chaos(chaos_config(tmp_path))
    # Then every invariant held (and every fault happened)
    assert_every_invariant_held(report)


def test_a_campaign_on_rabbitmq_under_faults_keeps_every_invariant(tmp_path: Path) -> None:
    # Given the same campaign with RabbitMQ as the broker (limiter and lease state in
    # Redis, as documented), under the same faults: Redis restarted is then the state
    require_rabbitmq()
    with rabbitmq_exclusive():
        report = run_chaos(chaos_config(tmp_path, broker="rabbitmq", rabbitmq_url=RABBITMQ_URL))
    # Then every invariant held there too
    assert_every_invariant_held(report)


def test_an_event_stored_while_a_send_looked_in_flight_confirms_it(settings) -> None:
    # The chaos run found this: a worker killed between SendGrid's 202 and its commit
    # leaves the message `sending`; SendGrid's events arrive and are stored, but
    # only an `ambiguous` message is resolved by an event; the reconciler then
    # marked it ambiguous and, with no new event to come, the policy failed it.
    make_tenant()
    load_plan()
    enrollment = engine.enroll("acme", "ada@example.com", "onboarding")
    action = ScheduledAction.get(ScheduledAction.enrollment == enrollment)
    started = utcnow() - timedelta(hours=2)
    message = OutboundMessage.create(
        tenant="acme", enrollment=enrollment, action=action, node="intro", dedupe_key="k",
        status="sending", to_email="ada@example.com", from_email="sales@acme.test",
        subject="s", html="h", text="t", send_started_at=started,
    )
    # Given SendGrid's `processed` event, stored while the message was still sending
    processed_at = started + timedelta(seconds=1)
    MessageEvent.create(message=message, tenant="acme", type="queued", provider_event="processed",
                        event_key="sg:processed-1", occurred_at=processed_at)
    ingest.handle_message_event(message.id, "queued", processed_at)
    # When the reconciler finds the send cut short
    assert dispatch.reconcile_stuck_messages(lambda _: None, settings=settings) == (0, 1)
    # Then the stored event confirms it at once (not when the ambiguous window ends):
    # sent, its timer started, the contact goes on; the policy has nothing to settle.
    assert ambiguous.settle_ambiguous_sends(lambda _: None, settings=settings) == 0
    assert OutboundMessage.get_by_id(message.id).status == "sent"
    assert Enrollment.get_by_id(enrollment.id).status == "active"
    timers = ScheduledAction.select().where(ScheduledAction.kind == ScheduledAction.TIMEOUT)
    assert [(timer.node, timer.event) for timer in timers] == [("intro", "no_open")]


def test_a_resend_is_not_skipped_by_a_replay_of_the_send_it_repeats(data_dir, sqlite_db, stub_broker,
                                                                    stub_worker) -> None:
    # The same cause under the `resend` policy: a second delivery of a send cut short
    # by a kill found it `sending` and left it marked done, which skipped the resend.
    with SendGridStandIn(api_key="SG.test-key") as standin:
        settings = make_settings(data_dir, sendgrid_api_host=standin.host,
                                 ambiguous_send_policy="resend")
        configure(settings)
        try:
            make_tenant()
            load_plan()
            enrollment = engine.enroll("acme", "ada@example.com", "onboarding")
            action = ScheduledAction.get(ScheduledAction.enrollment == enrollment)
            message = OutboundMessage.create(
                tenant="acme", enrollment=enrollment, action=action, node="intro",
                dedupe_key="k", status="sending", to_email="ada@example.com",
                from_email="sales@acme.test", subject="s", html="<p>h</p>", text="h",
                send_started_at=utcnow() - timedelta(hours=2),
            )
            # Given a worker killed while sending, and a second delivery that found it sending
            send.send(message.id)
            stub_broker.join(send.queue_name)
            stub_worker.join()
            # When the send is found cut short and the policy resends it
            dispatch.reconcile_stuck_messages(lambda _: None, settings=settings)
            assert ambiguous.settle_ambiguous_sends(requeue_send, settings=settings) == 1
            stub_broker.join(send.queue_name)
            stub_worker.join()
        finally:
            configure(None)
        # Then it is sent
        assert OutboundMessage.get_by_id(message.id).status == "sent"
        assert [m.custom_args["outreach_message_id"] for m in standin.messages] == [message.id]


def _message(message_id: str, enrollment: Enrollment, status: str, **values) -> OutboundMessage:
    return OutboundMessage.create(
        id=message_id, tenant="acme", enrollment=enrollment, node="intro",
        dedupe_key=message_id, status=status, to_email=enrollment.contact.email,
        from_email="sales@acme.test", subject="s", html="h", text="t",
        send_started_at=utcnow(), **values,
    )


def _accepted(message: OutboundMessage) -> AcceptedMessage:
    body = {"personalizations": [{"to": [{"email": message.to_email}]}],
            "custom_args": {"outreach_message_id": message.id}}
    return AcceptedMessage("X-" + message.id, body, {}, 0.0)


def test_the_audit_counts_each_kind_of_breach(settings) -> None:
    # The chaos run passes only if its audit finds nothing: here, one breach of each kind.
    make_tenant()
    load_plan()
    ada, bob, carol, dave, eve = (
        engine.enroll("acme", f"{name}@example.com", "onboarding")
        for name in ("ada", "bob", "carol", "dave", "eve")
    )
    # Given ada's intro accepted twice by SendGrid, with its no_open timer never run
    to_ada = _message("m-ada", ada, "sent")
    ScheduledAction.create(enrollment=ada, node="intro", kind="timeout", event="no_open",
                           message=to_ada, run_at=utcnow(), dedupe_key="t-ada")
    # and carol's intro sent without the timer it should have started
    to_carol = _message("m-carol", carol, "sent")
    # and bob's send still ambiguous
    _message("m-bob", bob, "ambiguous")
    # and dave's send failed by the policy although its `processed` event had been processed
    to_dave = _message("m-dave", dave, "failed",
                       error="ambiguous send not confirmed by any provider event")
    delivery = WebhookDelivery.create(body=b"[]", status="processed",
                                      processed_at=utcnow() - timedelta(minutes=1))
    MessageEvent.create(message=to_dave, tenant="acme", type="queued", event_key="sg:d1",
                        occurred_at=utcnow(), delivery=delivery)
    engine.exit_enrollment(dave.id, "ambiguous_send")
    # and eve, suppressed before she was enrolled, mailed
    suppress("acme", "eve@example.com", "manual")
    to_eve = _message("m-eve", eve, "suppressed")
    # and two events accepted by our endpoint, one of them never stored
    MessageEvent.create(message=to_ada, tenant="acme", type="delivered", event_key="sg:e1",
                        occurred_at=utcnow())
    accepted_events = Counter({"e1": 2, "e2": 1, "d1": 1})

    audit = audit_campaign([_accepted(to_ada), _accepted(to_ada), _accepted(to_carol),
                            _accepted(to_eve)], accepted_events, {"eve@example.com"})

    # Then each breach is counted once (the flows are not audited without their record)
    assert {name: value for name, value in audit.violations().items() if value} == {
        "duplicate_sends": 1, "lost_timers": 2, "lost_events": 1, "not_terminal": 4,
        "suppressed_mailed": 1, "ambiguous_unresolved": 1, "ambiguous_misapplied": 1,
    }
    assert audit.timers == {"total": 1, "lost_never_started": 1, "lost_pending": 1}
    # and the report says what each contact still active waits for
    [ada_line] = [line for line in audit.lines() if f"enrollment={ada.id} " in line]
    assert ada_line.startswith("still active: ") and "timeout:no_open@intro/v" in ada_line
    assert "intro sent" in ada_line


def test_the_audit_counts_each_kind_of_flow_breach(settings) -> None:
    # The flows' invariants, one breach of each kind (SQLite: the goal's commit time is
    # its event's processed_at; the mails failed after SendGrid took them, so no timers).
    from outreach_actors.dev.audit import FlowRecord
    from outreach_actors.dev.chaos import PLAN
    from outreach_actors.dev.chaos_flows import PauseWindow
    from outreach_actors.dev.chaos_notify import ReceivedNotification
    from outreach_actors.domain import splits
    from outreach_actors.domain.store.models import (
        HostEvent,
        NodeVisit,
        Notification,
        database_proxy,
    )

    database_proxy.obj.create_tables([ReceivedNotification])
    make_tenant()
    load_plan(PLAN)
    ada, bob, carol = (engine.enroll("acme", f"{name}@example.com", "chaos")
                       for name in ("ada", "bob", "carol"))
    t0 = utcnow()
    # Given ada converted on a purchase, then mailed on a claim made after it
    Enrollment.update(status="converted", exit_reason="goal:purchased").where(
        Enrollment.id == ada.id).execute()
    HostEvent.create(tenant="acme", email="ada@example.com", name="purchased",
                     event_key="acme:purchase:ada", occurred_at=t0, status="processed",
                     processed_at=t0)
    to_ada = _message("m-ada", ada, "failed")
    OutboundMessage.update(send_started_at=t0 + timedelta(seconds=1)).where(
        OutboundMessage.id == to_ada.id).execute()
    # and bob sent down the arm the stable assignment did not choose
    node = validate_plan(PLAN).node("pick")
    chosen = splits.choose_route(splits.assignment_point("acme", "bob@example.com", "chaos", 1,
                                                         "pick"), node)
    NodeVisit.create(enrollment=bob, node="pick", version=1, route="b" if chosen == "a" else "a")
    # and carol's send claimed while the plan was paused
    to_carol = _message("m-carol", carol, "failed")
    window = PauseWindow(t0 + timedelta(seconds=2), t0 + timedelta(seconds=4))
    OutboundMessage.update(send_started_at=t0 + timedelta(seconds=3)).where(
        OutboundMessage.id == to_carol.id).execute()
    # and ada's goal notification never received, one about carol sent twice and received twice
    Notification.create(id="ntf_1", tenant="acme", type="goal_reached", dedupe_key="g:1",
                        payload={"id": "ntf_1", "enrollment_id": ada.id})
    Notification.create(id="ntf_2", tenant="acme", type="exited", dedupe_key="e:3",
                        payload={"id": "ntf_2", "enrollment_id": carol.id}, attempts=2)
    for _ in range(2):
        ReceivedNotification.create(notification_id="ntf_2", type="exited")
    # and two purchases accepted, one never stored, the other answered "stored" twice
    record = FlowRecord(tenant="acme", host_event_ids={"purchase:ada", "purchase:dave"},
                        host_events_stored_answers=Counter({"purchase:ada": 2}),
                        plan_pauses=[window])

    audit = audit_campaign([_accepted(to_ada), _accepted(to_carol)], Counter(), set(), record)

    # Then each breach is counted once
    assert {name: value for name, value in audit.violations().items() if value} == {
        "not_terminal": 2, "mailed_after_goal": 1, "arms_reassigned": 1,
        "notifications_lost": 1, "notifications_doubled": 1, "mailed_while_paused": 1,
        "host_events_lost": 1, "host_events_stored_twice": 1,
    }
