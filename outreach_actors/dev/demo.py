"""``outreach demo``: a whole campaign on this machine, with no configuration.

It uses what a production deployment uses (the embedded Redis broker, SQLite, real
``dramatiq`` and ``periodiq`` processes, the webhook endpoints) with two stand-ins
for the outside world: the SendGrid stand-in accepts mail, and simulated
recipients click, open, ignore or bounce through signed Event Webhook batches, or
reply and answer out of office through signed Inbound Parse posts; and one clicker in
two "purchases": the demo posts it to ``POST /events``, as a host app would, and the
plan's goal ends that contact's campaign as converted.
The sample plan's durations are compressed: one day becomes two seconds.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from outreach_actors.dev.ports import free_port
from outreach_actors.domain.plans import validate_plan
from outreach_actors.domain.store import models
from outreach_actors.settings import Settings, get_settings, parse_duration

DEMO_TENANT = "demo"
DEMO_SENDER = "hello@demo.outreach.test"
DEMO_API_KEY = "SG.demo-key"
# One day of plan time lasts this long in the demo.
SECONDS_PER_DAY = 2.0
PERSONA_MIX = [("clicker", 3), ("opener", 2), ("ignorer", 2), ("bouncer", 1), ("replier", 1),
               ("vacationer", 1)]
# Where the demo's replies are addressed (reply+TOKEN@): posted straight to the endpoint.
DEMO_INBOUND_DOMAIN = "replies.demo.outreach.test"
FIRST_NAMES = ["Ada", "Grace", "Alan", "Barbara", "Edsger", "Frances", "Ken", "Radia", "Tim", "Sophie"]
TIMEZONES = ["Europe/Paris", "America/New_York", "Asia/Tokyo", "UTC", None]
SAMPLE_PLAN = "onboarding.yaml"


def compress(duration: str) -> str:
    seconds = parse_duration(duration).total_seconds() / 86_400 * SECONDS_PER_DAY
    return f"PT{max(seconds, 0.5):.1f}S"


def demo_plan_definition(templates_dir: Path) -> dict:
    """The sample plan with its timers compressed and no send window (it is a demo)."""
    from outreach_actors.domain.mail import renderer_for

    plan = validate_plan((templates_dir / SAMPLE_PLAN).read_text(),
                         check_template=renderer_for(templates_dir).check_template)
    definition = plan.to_definition()
    definition.pop("send_window", None)
    for node in definition["nodes"].values():
        for transition in node.get("transitions", []):
            if "after" in transition:
                transition["after"] = compress(_iso(plan_duration=transition["after"]))
    return definition


def _iso(plan_duration: str | float) -> str:
    # model_dump_json writes timedeltas as ISO-8601 already; accept seconds too.
    if isinstance(plan_duration, int | float):
        return f"PT{plan_duration}S"
    return plan_duration


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 (stdlib signature)
        pass


def _default_templates_dir() -> Path:
    configured = Path(get_settings().templates_dir)
    if (configured / SAMPLE_PLAN).exists():
        return configured.resolve()
    # Installed from a checkout: the repository's templates/ sits beside the package.
    return (Path(__file__).resolve().parents[2] / "templates").resolve()


def _counts() -> dict[str, int]:
    Enrollment, Message, Event = models.Enrollment, models.OutboundMessage, models.MessageEvent
    return {
        "enrolled": Enrollment.select().count(),
        "finished": Enrollment.select().where(Enrollment.status != Enrollment.ACTIVE).count(),
        "sent": Message.select().where(Message.status == Message.SENT).count(),
        "events": Event.select().where(Event.synthetic == False).count(),  # noqa: E712
        "synthetic": Event.select().where(Event.synthetic == True).count(),  # noqa: E712
        "suppressed": models.Suppression.select().count(),
        "converted": Enrollment.select().where(Enrollment.status == Enrollment.CONVERTED).count(),
        "forwarded": models.InboundPost.select().where(
            models.InboundPost.forward_status == models.InboundPost.FORWARD_SENT).count(),
    }


def _progress_table(counts: dict[str, int], elapsed: float, accepted: int) -> Table:
    table = Table(title=f"outreach demo, {elapsed:4.1f}s", show_header=True)
    for column in ("enrolled", "finished", "emails accepted", "events", "synthetic", "suppressed"):
        table.add_column(column, justify="right")
    table.add_row(str(counts["enrolled"]), str(counts["finished"]), str(accepted),
                  str(counts["events"]), str(counts["synthetic"]), str(counts["suppressed"]))
    return table


# A terminal closed (SIGHUP) or a `kill` (SIGTERM) would end Python at once, skipping
# the cleanup below and leaving the workers, periodiq and the embedded Redis running;
# the next demo's broker would then feed those orphans, which still mail the old
# stand-in. These signals end the demo through that cleanup instead, with the status
# a shell reports for them (128 + the signal's number).
TERMINATING_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP")
                            if hasattr(signal, name))


def _exit_through_cleanup(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _stop_leftovers(pids_file: Path) -> None:
    """Stop what a demo killed outright (SIGKILL, the OOM killer) left running: its
    workers and periodiq would feed on the next demo's broker and mail a stand-in
    that is gone. Each was started in a process group of its own, named in the file."""
    try:
        groups = [int(word) for word in pids_file.read_text().split()]
    except (OSError, ValueError):
        return
    groups = [group for group in groups if _runs_our_package(group)]
    for each in (signal.SIGTERM, signal.SIGKILL):
        for group in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, each)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and any(_runs_our_package(group) for group in groups):
            time.sleep(0.2)
    pids_file.unlink(missing_ok=True)


def _runs_our_package(pid: int) -> bool:
    # The pid may belong to another program by now: only ours is stopped.
    try:
        # -ww: unlimited width, else ps cuts the line at $COLUMNS (set under pytest-xdist)
        command = subprocess.run(["ps", "-ww", "-p", str(pid), "-o", "command="],
                                 capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "outreach_actors" in command


def _handle_termination() -> dict[int, object]:
    """Route the terminating signals through the cleanup; returns the handlers they had."""
    if threading.current_thread() is not threading.main_thread():
        return {}  # only the main thread may set handlers (and receives the signals)
    handlers = {each: signal.signal(each, _exit_through_cleanup) for each in TERMINATING_SIGNALS}
    # A process started in the background inherits SIGINT ignored, and Python then leaves
    # it so: the demo says "until Ctrl-C", so Ctrl-C must reach it wherever it was started.
    handlers[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    return handlers


def run_demo(*, contacts: int, workers: int, timeout_s: int, console: Console,
             funnel_table: Callable[[list[dict]], Any], keep_dashboard: bool = False) -> int:
    """Run the demo; returns the exit status (0 when every contact finished the plan).
    ``funnel_table`` draws the funnel as ``outreach stats`` does (the CLI passes its own).
    The dashboard is served while it runs (its URL and a one-time password printed
    first) and, with ``keep_dashboard``, after it until Ctrl-C.

    SIGTERM and SIGHUP stop it as Ctrl-C does, cleaning up first, then raise
    SystemExit(128 + the signal's number).
    """
    from outreach_actors.dev.simulation import EngagementSimulator
    from outreach_actors.dev.standin import SendGridStandIn
    from outreach_actors.dev.webhook_events import generate_webhook_keys
    from outreach_actors.web.app import ThreadingWSGIServer, make_app
    from outreach_actors.web.dashboard.access import hash_password
    from outreach_actors.web.dashboard.wsgi import DASHBOARD_PREFIX, DashboardWSGI
    from outreach_actors.worker import runtime
    from outreach_actors.worker.embedded import stop_embedded_redis

    base = get_settings()
    data_dir = (Path(base.data_dir) / "demo").resolve()
    pids_file = data_dir.with_name("demo.pids")  # beside the data dir, which each run deletes
    templates_dir = _default_templates_dir()
    _stop_leftovers(pids_file)
    stop_embedded_redis(data_dir) if data_dir.exists() else None
    shutil.rmtree(data_dir, ignore_errors=True)  # a second run starts clean
    data_dir.mkdir(parents=True)

    keys = generate_webhook_keys()
    secret_key = secrets.token_urlsafe(32)
    events_secret = secrets.token_urlsafe(32)
    dashboard_password = secrets.token_urlsafe(12)  # this run's only: printed, never stored
    standin = SendGridStandIn(api_key=DEMO_API_KEY).start()
    port = free_port()
    environment = {
        "OUTREACH_DATA_DIR": str(data_dir),
        "OUTREACH_TEMPLATES_DIR": str(templates_dir),
        "OUTREACH_SENDGRID_API_KEY": DEMO_API_KEY,
        "OUTREACH_SENDGRID_API_HOST": standin.host,
        "OUTREACH_SENDGRID_WEBHOOK_PUBLIC_KEY": keys.public_key,
        "OUTREACH_SENDGRID_INBOUND_PUBLIC_KEY": keys.public_key,
        "OUTREACH_INBOUND_DOMAIN": DEMO_INBOUND_DOMAIN,
        "OUTREACH_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
        "OUTREACH_SECRET_KEY": secret_key,
        "OUTREACH_EVENTS_SECRET": events_secret,
        "OUTREACH_DISPATCH_INTERVAL": "PT0.5S",
        # Days pass in seconds here: a second of waiting on an empty queue would show.
        "OUTREACH_WORKER_IDLE_POLL_INTERVAL": "PT0.1S",
        "OUTREACH_NO_OPEN_TIMEOUT": compress("PT72H"),
        "OUTREACH_NO_CLICK_TIMEOUT": compress("PT24H"),
        # The demo sends hundreds of emails in seconds; real limits would stretch it to hours.
        "OUTREACH_RATELIMIT_SENDER_PER_MINUTE": "100000",
        "OUTREACH_RATELIMIT_SENDER_PER_HOUR": "1000000",
        "OUTREACH_RATELIMIT_TENANT_PER_HOUR": "1000000",
        "OUTREACH_RATELIMIT_DOMAIN_PER_HOUR": "1000000",
        "OUTREACH_RATELIMIT_GLOBAL_PER_HOUR": "1000000",
    }
    settings = Settings(
        data_dir=data_dir, templates_dir=templates_dir, sendgrid_api_key=DEMO_API_KEY,
        sendgrid_api_host=standin.host, sendgrid_webhook_public_key=keys.public_key,
        sendgrid_inbound_public_key=keys.public_key, inbound_domain=DEMO_INBOUND_DOMAIN,
        public_base_url=f"http://127.0.0.1:{port}", dispatch_interval=timedelta(seconds=0.5),
        secret_key=secret_key, events_secret=events_secret,
        dashboard_users=f"demo:{hash_password(dashboard_password)}",
    )
    processes: list[subprocess.Popen] = []
    server = None
    simulator = None
    status = 1
    log_path = data_dir / "workers.log"
    previous_handlers = _handle_termination()
    try:
        runtime.install(settings)
        database = models.database_proxy.obj
        models.create_schema(database)
        _seed(contacts, templates_dir)

        server = make_server("127.0.0.1", port, DashboardWSGI(make_app(settings)),
                             server_class=ThreadingWSGIServer, handler_class=_QuietHandler)
        threading.Thread(target=server.serve_forever, name="webhooks", daemon=True).start()
        console.print(Text(f"dashboard: http://127.0.0.1:{port}{DASHBOARD_PREFIX}/  "
                           f"(user demo, password {dashboard_password}, this run only)"))

        child_env = {k: v for k, v in os.environ.items() if not k.startswith("OUTREACH_")}
        child_env.update(environment)
        log = log_path.open("ab")
        for command in (
            ["-m", "dramatiq", "outreach_actors", "-p", str(workers), "-t", "4"],
            ["-c", "import sys; from periodiq import entrypoint; "
             "sys.argv[0] = 'periodiq'; sys.exit(entrypoint())", "outreach_actors"],
        ):
            processes.append(subprocess.Popen(
                [sys.executable, *command], env=child_env, stdout=log,
                stderr=subprocess.STDOUT, cwd=data_dir, start_new_session=True))
            # Named as soon as it runs: a SIGKILL between two starts leaves none unnamed.
            pids_file.write_text("".join(f"{process.pid}\n" for process in processes))

        from outreach_actors.worker.actors.periodic import dispatch_due

        dispatch_due.send()  # start dispatching now rather than at periodiq's next minute
        simulator = EngagementSimulator(
            standin, f"http://127.0.0.1:{port}/webhooks/sendgrid", keys.private_key_pem,
            inbound_url=f"http://127.0.0.1:{port}/webhooks/sendgrid/inbound").start()
        buyers = DemoPurchases(f"http://127.0.0.1:{port}/events", events_secret)
        started = time.monotonic()
        with Live(console=console, refresh_per_second=4) as live:
            while True:
                buyers.purchase_after(standin.messages)
                counts = _counts()
                elapsed = time.monotonic() - started
                live.update(_progress_table(counts, elapsed, len(standin.messages)))
                if counts["finished"] == counts["enrolled"]:
                    status = 0
                    break
                if elapsed > timeout_s:
                    break
                for process in processes:
                    if _exited(process):  # left unreaped: the cleanup sweeps its group
                        raise RuntimeError(f"a worker process exited early; see {log_path}")
                if int(elapsed) % 50 == 49:
                    dispatch_due.send()  # keep the dispatcher going between periodiq ticks
                time.sleep(0.25)
        console.print()
        _summary(console, counts, len(standin.messages), simulator, data_dir, elapsed, funnel_table)
        if status:
            # Paths and errors are data: shown as Text, never read as Rich markup.
            console.print(Text.assemble((f"not every contact finished within {timeout_s}s", "red"),
                                        f"; worker log: {log_path}"))
        if keep_dashboard:
            simulator.halt()
            _stop_processes(processes)
            processes.clear()
            console.print(Text(f"serving the dashboard on http://127.0.0.1:{port}"
                               f"{DASHBOARD_PREFIX}/ until Ctrl-C"))
            with contextlib.suppress(KeyboardInterrupt):
                while True:
                    time.sleep(1)
    except Exception as exc:  # the demo must always clean up and say what went wrong
        console.print(Text.assemble(("demo failed:", "red"), f" {exc}"))
        status = 1
    finally:
        for each in previous_handlers:  # a signal now must not cut the cleanup short
            signal.signal(each, signal.SIG_IGN)
        if simulator is not None:
            simulator.halt()
        _stop_processes(processes)
        pids_file.unlink(missing_ok=True)
        if server is not None:
            server.shutdown()
            server.server_close()
        standin.stop()
        models.database_proxy.obj.close() if models.database_proxy.obj else None
        stop_embedded_redis(data_dir)
        for each, handler in previous_handlers.items():
            signal.signal(each, signal.SIG_DFL if handler is None else handler)
    return status


class DemoPurchases:
    """One clicker in two buys once their first email has gone out: posted, signed, to
    ``POST /events`` as a host app would (``event_id`` makes a repeat harmless)."""

    def __init__(self, url: str, secret: str) -> None:
        self.url, self.secret = url, secret
        self.bought: set[str] = set()

    def purchase_after(self, accepted: list) -> None:
        import json
        import urllib.request

        from outreach_actors.web.events import sign_events

        buyers = sorted({email for message in list(accepted) for email, _ in message.recipients()
                         if _buys(email)} - self.bought)
        if not buyers:
            return
        body = json.dumps([{"tenant": DEMO_TENANT, "email": email, "event": "purchased",
                            "event_id": f"order-{email}", "properties": {"amount": 49}}
                           for email in buyers]).encode()
        at = int(time.time())
        request = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "X-Outreach-Timestamp": str(at),
            "X-Outreach-Signature": sign_events(self.secret, body, at)})
        try:
            with urllib.request.urlopen(request, timeout=10):
                self.bought.update(buyers)
        except OSError:
            pass  # posted again on the next turn


def _buys(email: str) -> bool:
    persona, _, number = email.partition("@")[0].partition("-")
    return persona == "clicker" and number.isdigit() and int(number) % 2 == 0


def _seed(contacts: int, templates_dir: Path) -> None:
    from outreach_actors.domain.engine import enroll

    models.Tenant.create(id=DEMO_TENANT, name="Demo Inc.")
    # A new sender warming up (README, "Sending policy"), its first day's allowance
    # roomy enough for the whole demo: `outreach stats` shows its cap for today.
    models.SenderIdentity.create(tenant=DEMO_TENANT, email=DEMO_SENDER, name="Demo Team",
                                 verified=True, rate_limits={
                                     "sender_per_day": 100 * contacts,
                                     "warmup_start": 5 * contacts, "warmup_growth": 0.15})
    definition = demo_plan_definition(templates_dir)
    models.Plan.create(tenant=DEMO_TENANT, name=definition["name"], version=1,
                       definition=definition)
    personas = [name for name, weight in PERSONA_MIX for _ in range(weight)]
    with models.database_proxy.atomic():
        for index in range(contacts):
            persona = personas[index % len(personas)]
            enroll(DEMO_TENANT, f"{persona}-{index}@example.com", definition["name"],
                   fields={"first_name": FIRST_NAMES[index % len(FIRST_NAMES)], "persona": persona},
                   timezone=TIMEZONES[index % len(TIMEZONES)])


def _stop_processes(processes: list[subprocess.Popen]) -> None:
    """Stop the workers and periodiq (SIGTERM, SIGKILL after 20 s), then anything left
    in their process groups: a process they started that outlived them would still
    take the broker's messages."""
    # Until a process is reaped its pid, and so its group's id, cannot be taken by
    # another program: each is waited for without reaping (WNOWAIT) until its group is
    # swept, where Popen.poll() and wait() would reap it.
    unreaped = [process for process in processes if process.returncode is None]
    for process in unreaped:
        os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not all(_exited(process) for process in unreaped):
        time.sleep(0.1)
    for process in unreaped:
        if not _exited(process):
            os.kill(process.pid, signal.SIGKILL)
        os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
        with contextlib.suppress(ProcessLookupError):  # nothing left in the group
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _exited(process: subprocess.Popen) -> bool:
    return process.returncode is not None or os.waitid(
        os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _summary(console: Console, counts: dict[str, int], accepted: int, simulator, data_dir: Path,
             elapsed: float, funnel_table: Callable[[list[dict]], Any]) -> None:
    from outreach_actors.domain.sending_status import sender_days
    from outreach_actors.domain.stats import funnel

    console.print(funnel_table(funnel()))
    console.print(
        f"{counts['enrolled']} contacts, {counts['finished']} finished in {elapsed:.1f}s; "
        f"{counts['sent']} emails sent ({accepted} accepted by the SendGrid stand-in); "
        f"{counts['events']} webhook events stored from {simulator.posted_batches} signed batches; "
        f"{counts['synthetic']} synthetic no_open/no_click/elapsed events; "
        f"{simulator.posted_replies} replies and out-of-office answers posted to the inbound "
        f"endpoint, {counts['forwarded']} forwarded to the sender; "
        f"{counts['suppressed']} addresses suppressed; "
        f"{counts['converted']} converted (reached a goal: a purchase or a reply)."
    )
    for sender in sender_days():
        console.print(Text(
            f"sender {sender['sender']}: warm-up day {sender['warmup_day']}, cap today "
            f"{sender['cap_today']} (of {sender['daily_cap']} a day), sent today "
            f"{sender['sent_today']}"))
    console.print(Text(f"database: {data_dir / 'outreach.db'}  (inspect with "
                       f"OUTREACH_DATA_DIR={data_dir} outreach stats)"))
