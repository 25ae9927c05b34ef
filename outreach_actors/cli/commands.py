"""The ``outreach`` command: set up, load plans, enroll, inspect, operate."""

from __future__ import annotations

import csv
import json
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import click
from peewee import fn as peewee_fn
from rich.console import Console
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

from outreach_actors.cli.paging import Page, page_of, paging_options
from outreach_actors.domain.store import models
from outreach_actors.settings import SettingsError, get_settings
from outreach_actors.web.app import (
    DEFAULT_CONNECTION_LIMIT,
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_THREADS,
)

# Tables are wide; when output is not a terminal (CI logs, pipes) do not squeeze them to 80.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, soft_wrap=True)  # errors stay on one line, greppable


def _fail(message: str) -> None:
    err_console.print(_labelled("error:", "red", message))
    raise SystemExit(1)


# Data (names, fields, addresses, errors) goes to the consoles as Text, never as a str:
# Rich reads a str as markup and :emoji: codes, so "[/bold]" in a contact field would
# crash a command and "[link=...]" would show what no recipient gets.
def _labelled(label: str, style: str, message: str) -> Text:
    """Our ``label`` in ``style``, then ``message`` shown literally."""
    return Text.assemble((label, style), " ", message)


def _cells(*values: object) -> list[Text]:
    """A table row's cells, each shown literally."""
    return [Text(str(value)) for value in values]


def _print_page(table: Table, page: Page, noun: str) -> None:
    """A page of a list: its table, then the line saying how many more there are."""
    console.print(table)
    if footer := page.footer(noun):
        console.print(Text(footer, style="dim"))


def _database():
    from outreach_actors.domain.store.db import database_from_url

    settings = get_settings()
    database = database_from_url(settings.database_url, settings)
    models.bind(database)
    return database


def _open_database():
    """Bind and check the schema; a clear message if `db init` was not run."""
    database = _database()
    database.connect(reuse_if_open=True)
    if not database.table_exists("enrollment"):
        _fail("the database has no outreach tables yet; run `outreach db init` first")
    return database


class _Commands(click.Group):
    """The command group; a database that is down, missing or refusing a value ends
    a command with one line saying so, not a traceback."""

    def invoke(self, ctx: click.Context):
        import peewee

        try:
            return super().invoke(ctx)
        except peewee.OperationalError as exc:
            _fail(f"cannot use the database {_describe_database()}: {_first_line(exc)}")
        except peewee.DatabaseError as exc:
            _fail(f"the database {_describe_database()} refused: {_first_line(exc)}")
        except SettingsError as exc:  # one the command itself looks at (a webhook key)
            _fail(str(exc))


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _tenant_id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    # What the tenant table's key holds: checked here, not refused by the database.
    if value is not None and not (0 < len(value) <= TENANT_ID_LENGTH and value.isprintable()):
        raise click.BadParameter(f"a tenant id is 1 to {TENANT_ID_LENGTH} printable characters")
    return value


TENANT_ID_LENGTH = models.Tenant.id.max_length


def _tenant_option(*, required: bool = True, help: str | None = None):
    return click.option("--tenant", required=required, default=None, callback=_tenant_id,
                        help=help)


def _read_csv_rows(path: Path) -> list[list[str]]:
    """The rows of a UTF-8 CSV file (a BOM is skipped); a clear error if it cannot be read.

    Separated by commas, or by the semicolons (or tabs) of spreadsheets saved in
    locales whose decimal mark is the comma: read off the header line.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            header = handle.readline()
            delimiter = next((mark for mark in ";\t" if mark in header and "," not in header), ",")
            handle.seek(0)  # the codec skips the BOM again
            return list(csv.reader(handle, delimiter=delimiter))
    except OSError as exc:
        _fail(f"cannot read {path}: {exc.strerror}")
    except UnicodeDecodeError as exc:
        _fail(f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 CSV")
    except csv.Error as exc:
        _fail(f"{path} is not a CSV file: {exc}")


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Reactive email outreach campaigns on Dramatiq actors."""


# --- db ----------------------------------------------------------------------------

@main.group()
def db() -> None:
    """Create or upgrade the database schema."""


@db.command("init")
def db_init() -> None:
    """Create or upgrade the schema (safe to run any number of times)."""
    database = _database()
    models.create_schema(database)
    console.print(Text(f"database ready: {_describe_database()}"))


def _describe_database() -> str:
    settings = get_settings()
    if settings.database_url:
        return settings.database_url.split("@")[-1]
    return str(settings.sqlite_path.resolve())


# --- plans -------------------------------------------------------------------------

def _renderer():
    from outreach_actors.domain.mail import renderer_for

    return renderer_for(Path(get_settings().templates_dir))


def _read_plan(path: Path):
    from outreach_actors.domain.plans import PlanError, validate_plan

    try:
        text = path.read_bytes()
    except OSError as exc:
        _fail(f"cannot read {path}: {exc.strerror}")
    try:
        parsed = validate_plan(text, check_template=_renderer().check_template)
    except PlanError as exc:
        err_console.print(Text(f"{path}: {len(exc.errors)} error(s)", style="red"))
        for error in exc.errors:
            err_console.print(Text(f"  {error}"))
        raise SystemExit(1) from None
    _warn_of_hidden_unsubscribe_links(parsed)
    for name in parsed.nodes_without_timeout():
        err_console.print(_labelled(
            "warning:", "yellow", f"nodes.{name}: contacts who never act on its email stay "
            "there for ever; add a timeout (no_open, no_click or elapsed with `after`)"))
    return parsed


def _warn_of_hidden_unsubscribe_links(parsed) -> None:
    """A warning, not an error: the List-Unsubscribe header works in every large
    mailbox, but the law (CAN-SPAM, the ePrivacy rules) wants a visible way out."""
    renderer = _renderer()
    for name, node in parsed.nodes.items():
        if node.type == "email" and not renderer.shows_unsubscribe_link(
                template=node.template, body=node.body):
            err_console.print(_labelled(
                "warning:", "yellow", f"nodes.{name}: its email shows no unsubscribe link "
                "(only the List-Unsubscribe header carries one); add {{ unsubscribe_url }}"))


@main.group()
def plan() -> None:
    """Validate, load and list campaign plans."""


@plan.command("validate")
@click.argument("file", type=click.Path(path_type=Path))
def plan_validate(file: Path) -> None:
    """Check a plan (YAML or JSON) and its templates; prints "ok" or every error."""
    _read_plan(file)
    console.print("ok")


@plan.command("load")
@click.argument("file", type=click.Path(path_type=Path))
@_tenant_option(help="Tenant id; created if new.")
def plan_load(file: Path, tenant: str) -> None:
    """Validate a plan and store it as the tenant's next version."""
    from outreach_actors.domain.stored_plans import sender_problem, store_plan

    parsed = _read_plan(file)
    _open_database()
    version = store_plan(tenant, parsed)
    console.print(Text(f"loaded plan {parsed.name!r} version {version} for tenant {tenant!r}"))
    if problem := sender_problem(tenant, parsed.sender):
        err_console.print(_labelled("warning:", "yellow", problem))


@plan.command("list")
@_tenant_option(required=False)
@paging_options
def plan_list(tenant: str | None, limit: int, offset: int) -> None:
    """List stored plans and their versions."""
    _open_database()
    query = models.Plan.select().order_by(models.Plan.tenant, models.Plan.name, models.Plan.version)
    if tenant:
        query = query.where(models.Plan.tenant == tenant)
    page = page_of(query, limit=limit, offset=offset)
    table = Table("tenant", "plan", "version", "nodes", "enrollments")
    for row in page.rows:
        table.add_row(*_cells(row.tenant_id, row.name, row.version, len(row.definition["nodes"]),
                              row.enrollments.count()))
    _print_page(table, page, "plans")


# --- senders -----------------------------------------------------------------------

@main.group()
def tenant() -> None:
    """Name tenants (what templates show as tenant.name) and list them."""


@tenant.command("name")
@click.argument("tenant_id", callback=_tenant_id)
@click.argument("name")
def tenant_name(tenant_id: str, name: str) -> None:
    """Set the display name of TENANT_ID (created if new; it starts as its id)."""
    name = name.strip()
    if not name or not name.isprintable() or len(name) > models.Tenant.name.max_length:
        _fail(f"a tenant name is 1 to {models.Tenant.name.max_length} printable characters")
    _open_database()
    row, created = models.Tenant.get_or_create(id=tenant_id, defaults={"name": name})
    if not created:
        models.Tenant.update(name=name).where(models.Tenant.id == tenant_id).execute()
    console.print(Text(f"tenant {tenant_id}: {name}"))


@tenant.command("list")
@paging_options
def tenant_list(limit: int, offset: int) -> None:
    """List tenants and their names."""
    _open_database()
    page = page_of(models.Tenant.select().order_by(models.Tenant.id), limit=limit, offset=offset)
    table = Table("tenant", "name")
    for row in page.rows:
        table.add_row(*_cells(row.id, row.name))
    _print_page(table, page, "tenants")


@main.group()
def sender() -> None:
    """Manage sender identities (the From addresses SendGrid has verified)."""


@sender.command("add")
@click.argument("email")
@_tenant_option()
@click.option("--name", default="", help="Display name.")
@click.option("--verified/--unverified", default=False,
              help="Whether SendGrid has verified this sender; unverified senders never send.")
def sender_add(email: str, tenant: str, name: str, verified: bool) -> None:
    """Add or update a sender identity."""
    from outreach_actors.domain.engine import EnrollmentError, normalize_email
    from outreach_actors.domain.headers import breaks_header

    _open_database()
    try:
        address = normalize_email(email)
    except EnrollmentError as exc:
        _fail(str(exc))
    if breaks_header(name):
        _fail("--name: a sender name goes into the From header, which is one line; remove its "
              "line breaks (CR, LF, VT, FF, NEL, U+2028, U+2029) and NUL characters")
    models.Tenant.get_or_create(id=tenant, defaults={"name": tenant})
    identity, created = models.SenderIdentity.get_or_create(
        tenant=tenant, email=address, defaults={"name": name, "verified": verified})
    if not created:
        identity.name, identity.verified = name or identity.name, verified
        identity.save()
    console.print(Text(f"sender {address} for {tenant}: {'verified' if verified else 'unverified'}"))


# --- enroll ------------------------------------------------------------------------

@main.command()
@click.option("--plan", "plan_name", required=True)
@_tenant_option()
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), required=True,
              help="CSV with an `email` column; `timezone` and any other columns become fields.")
def enroll(plan_name: str, tenant: str, csv_path: Path) -> None:
    """Enroll every row of a CSV file; bad rows are reported with their line and skipped."""
    import hashlib

    from outreach_actors.domain.engine import EnrollmentError
    from outreach_actors.domain.enroll_many import ContactRow, enroll_many

    _open_database()
    lines = _read_csv_rows(csv_path)
    # Spreadsheets write "Email" and pad cells: the two columns read here are matched
    # whatever their case, and every name and value is stripped.
    header = [name.strip() for name in lines[0]] if lines else []
    header = [name.lower() if name.lower() in {"email", "timezone"} else name for name in header]
    if lines and "email" not in header:
        _fail(f"{csv_path}: no `email` column (columns: {', '.join(header)})")
    if len(set(header)) != len(header):
        repeated = sorted({name for name in header if header.count(name) > 1})
        _fail(f"{csv_path}: column(s) {', '.join(repeated)} appear more than once")
    # Line numbers as an editor shows them (line 1 is the header); blank lines are skipped.
    rows = [(line, cells) for line, cells in enumerate(lines[1:], start=2) if cells]
    skipped: list[tuple[int, str]] = []  # rows that are no contact at all, by line

    def contact_rows(advance) -> Iterator[ContactRow]:
        for line, cells in rows:
            advance()
            if len(cells) > len(header):  # the extra cells have no column: they would be lost
                skipped.append((line, f"{len(cells)} cells for {len(header)} columns"))
                continue
            cells = [cell.strip() for cell in cells]
            row = dict(zip(header, cells + [""] * (len(header) - len(cells)), strict=True))
            fields = {k: v for k, v in row.items() if k and k not in {"email", "timezone"}}
            yield ContactRow(line, row["email"], fields, row.get("timezone") or None)

    # The file's digest keys the enrollments of a plan that allows re-entry: enrolling
    # the same file again (after a crash halfway) enrolls no one twice.
    import_key = hashlib.sha256(csv_path.read_bytes()).hexdigest()[:16]
    with Progress(console=err_console, transient=True) as progress:
        task = progress.add_task("enrolling", total=len(rows))
        try:
            result = enroll_many(tenant, plan_name,
                                 contact_rows(lambda: progress.advance(task)),
                                 import_key=import_key)
        except EnrollmentError as exc:
            _fail(str(exc))
    enrolled = result.enrolled
    problems = [f"line {line}: {reason}" for line, reason in sorted(skipped + result.problems)]
    for problem in problems:
        err_console.print(_labelled("skipped", "yellow", problem))
    console.print(f"enrolled {enrolled} of {len(rows)} rows; {len(problems)} skipped")
    if problems and not enrolled:
        raise SystemExit(1)


# --- preview and stats ---------------------------------------------------------------

@main.command()
@click.option("--plan", "plan_name", required=True)
@_tenant_option()
@click.option("--node", required=True)
@click.option("--contact", "email", required=True)
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Where to write the HTML (default: ./preview-<node>.html).")
def preview(plan_name: str, tenant: str, node: str, email: str, out: Path | None) -> None:
    """Render one node for one contact: subject and text here, the HTML to a file."""
    from outreach_actors.domain.engine import EnrollmentError, latest_plan
    from outreach_actors.domain.mail import email_context, renderer_for
    from outreach_actors.domain.rendering import RenderError
    from outreach_actors.domain.stored_plans import plan_for
    from outreach_actors.domain.unsubscribe import unsubscribe_url

    _open_database()
    try:
        row = latest_plan(tenant, plan_name)
    except EnrollmentError as exc:
        _fail(str(exc))
    parsed = plan_for(row)
    if node not in parsed.nodes or parsed.nodes[node].type != "email":
        emails = [n for n, spec in parsed.nodes.items() if spec.type == "email"]
        _fail(f"plan {plan_name!r} has no email node {node!r}; email nodes: {', '.join(emails)}")
    contact = models.Contact.get_or_none(models.Contact.tenant == tenant,
                                         models.Contact.email == email.lower())
    if contact is None:
        console.print(Text(f"{email} is not a contact of {tenant}: rendered with no fields",
                           style="yellow"))
    settings = get_settings()
    spec = parsed.nodes[node]
    try:
        rendered = renderer_for(Path(settings.templates_dir), settings).render_email(
            subject=spec.subject or "", template=spec.template, body=spec.body,
            context=email_context(
                fields=contact.fields if contact else None, email=email.lower(),
                timezone=contact.timezone if contact else None, tenant_id=tenant,
                tenant_name=row.tenant.name, plan_name=parsed.name, plan_version=row.version,
                node=node,
                # A throwaway secret: a preview's link must not unsubscribe anyone.
                unsubscribe=unsubscribe_url(settings.model_copy(update={
                    "secret_key": secrets.token_urlsafe(32), "secret_key_fallbacks": []}),
                    tenant, email.lower(), "preview"),
            ),
        )
    except RenderError as exc:
        _fail(str(exc))
    out = out or Path(f"preview-{node}.html")
    try:
        out.write_text(rendered.html, encoding="utf-8")
    except OSError as exc:
        _fail(f"cannot write {out}: {exc.strerror}")
    console.print(_labelled("Subject:", "bold", rendered.subject))
    console.print(Text(rendered.text))
    console.print(Text(f"HTML written to {out}"))


@main.command()
@click.option("--plan", "plan_name", default=None)
@_tenant_option(required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def stats(plan_name: str | None, tenant: str | None, as_json: bool) -> None:
    """A funnel per node: entered, active, sent, delivered, opened, clicked, bounced,
    no_open, no_click, exited, failed, ambiguous (sends no provider event confirmed yet)."""
    from outreach_actors.domain.stats import funnel
    from outreach_actors.domain.store.counters import fold_counts

    database = _open_database()
    fold_counts(database)  # the workers do it each minute; none may be running
    rows = funnel(plan_name=plan_name, tenant_id=tenant)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    console.print(funnel_table(rows))


@main.command()
@click.option("--plan", "plan_name", default=None)
@_tenant_option(required=False)
@paging_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def failures(plan_name: str | None, tenant: str | None, limit: int, offset: int,
             as_json: bool) -> None:
    """Contacts whose enrollment failed, newest first, with why (the `failed` of stats)."""
    from outreach_actors.domain.stats import count_failures
    from outreach_actors.domain.stats import failures as failed_enrollments

    _open_database()
    rows = failed_enrollments(plan_name=plan_name, tenant_id=tenant, limit=limit, offset=offset)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    page = Page.of(rows, limit=limit, offset=offset,
                   count=lambda: count_failures(plan_name=plan_name, tenant_id=tenant))
    if not rows and not offset:
        console.print("no failed enrollments")
        return
    keys = ["at", "tenant", "plan", "node", "contact"] if len({r["tenant"] for r in rows}) > 1 \
        else ["at", "plan", "node", "contact"]
    table = Table(*keys, "reason")
    for row in rows:
        table.add_row(*_cells(*(row[key] for key in keys), row["reason"]))
    _print_page(table, page, "failed enrollments")


def funnel_table(rows: list[dict]) -> Table:
    from outreach_actors.domain.stats import FUNNEL_COLUMNS

    # One tenant (the usual case, and the demo's): its name on every row is noise.
    keys = ["tenant", "plan", "node"] if len({row["tenant"] for row in rows}) > 1 else ["plan", "node"]
    table = Table(*keys, *FUNNEL_COLUMNS)
    for row in rows:
        table.add_row(*_cells(*(row[key] for key in keys), *(row[c] for c in FUNNEL_COLUMNS)))
    return table


# --- suppressions ------------------------------------------------------------------

@main.group()
def suppressions() -> None:
    """List, add, remove and import suppressed addresses."""


@suppressions.command("list")
@_tenant_option(required=False)
@paging_options
def suppressions_list(tenant: str | None, limit: int, offset: int) -> None:
    """Suppressed addresses, oldest first."""
    _open_database()
    query = models.Suppression.select().order_by(models.Suppression.created_at,
                                                 models.Suppression.id)
    if tenant:
        query = query.where(models.Suppression.tenant == tenant)
    page = page_of(query, limit=limit, offset=offset)
    table = Table("tenant", "channel", "address", "reason", "source", "since")
    for row in page.rows:
        table.add_row(*_cells(row.tenant_id, row.channel, row.value, row.reason, row.source or "",
                              row.created_at.isoformat(timespec="seconds")))
    _print_page(table, page, "suppressions")


@suppressions.command("add")
@click.argument("email")
@_tenant_option()
@click.option("--reason", default="manual")
def suppressions_add(email: str, tenant: str, reason: str) -> None:
    from outreach_actors.domain.engine import EnrollmentError, normalize_email
    from outreach_actors.domain.suppressions import suppress

    try:
        address = normalize_email(email)
    except EnrollmentError as exc:
        _fail(str(exc))
    _open_database()
    models.Tenant.get_or_create(id=tenant, defaults={"name": tenant})
    suppress(tenant, address, reason[:255], "manual")
    console.print(Text(f"suppressed {address} for {tenant}"))


@suppressions.command("remove")
@click.argument("email")
@_tenant_option()
def suppressions_remove(email: str, tenant: str) -> None:
    from outreach_actors.domain.addresses import address_key
    from outreach_actors.domain.suppressions import lift

    _open_database()
    if lift(tenant, email):
        console.print(Text(f"removed the suppression of {address_key(email)} for {tenant}"))
    else:
        console.print(Text(f"{address_key(email)} was not suppressed for {tenant}; nothing removed"))


@suppressions.command("import")
@click.argument("csv_path", type=click.Path(path_type=Path))
@_tenant_option()
@click.option("--reason", default="import")
def suppressions_import(csv_path: Path, tenant: str, reason: str) -> None:
    """Import addresses from a CSV with an `email` column (or one address per line)."""
    from outreach_actors.domain.engine import EnrollmentError, normalize_email
    from outreach_actors.domain.suppressions import suppress

    lines = _read_csv_rows(csv_path)
    _open_database()
    models.Tenant.get_or_create(id=tenant, defaults={"name": tenant})
    header = [cell.strip().lower() for cell in lines[0]] if lines else []
    column = header.index("email") if "email" in header else 0
    start = 1 if "email" in header else 0
    imported, problems = 0, []
    for number, cells in enumerate(lines[start:], start=start + 1):
        try:
            suppress(tenant, normalize_email(cells[column] if cells else ""), reason[:255], "import")
            imported += 1
        except (EnrollmentError, IndexError) as exc:
            problems.append(f"line {number}: {exc}")
    for problem in problems:
        err_console.print(_labelled("skipped", "yellow", problem))
    console.print(f"imported {imported} suppression(s); {len(problems)} skipped")


# --- webhooks, serve, broker ---------------------------------------------------------

@main.group()
def webhooks() -> None:
    """Inspect and replay stored webhook deliveries."""


@webhooks.command("replay")
@click.argument("delivery_id", type=int)
def webhooks_replay(delivery_id: int) -> None:
    """Normalize a stored delivery again (after fixing what made it fail)."""
    from outreach_actors.domain.ingest import replay_delivery
    from outreach_actors.worker.actors.webhooks import enqueue_delivery

    _open_database()
    if models.WebhookDelivery.get_or_none(models.WebhookDelivery.id == delivery_id) is None:
        _fail(f"no webhook delivery {delivery_id}")
    replay_delivery(delivery_id, enqueue_delivery)
    console.print(f"delivery {delivery_id} queued for normalization again")


@webhooks.command("list")
@click.option("--status", default=None,
              type=click.Choice(["received", "processed", "failed"]))
@paging_options
def webhooks_list(status: str | None, limit: int, offset: int) -> None:
    """The newest deliveries (`webhooks show ID` has one in full)."""
    _open_database()
    delivery = models.WebhookDelivery
    # The body's size, not the body: a page of deliveries stays small whatever they hold.
    query = delivery.select(delivery.id, delivery.received_at, delivery.status, delivery.error,
                            peewee_fn.LENGTH(delivery.body).alias("size")
                            ).order_by(delivery.id.desc())
    if status:
        query = query.where(delivery.status == status)
    page = page_of(query, limit=limit, offset=offset)
    table = Table("id", "received", "status", "bytes", "error")
    for row in page.rows:
        table.add_row(*_cells(row.id, row.received_at.isoformat(timespec="seconds"), row.status,
                              row.size, (row.error or "")[:80]))
    _print_page(table, page, "deliveries")


@webhooks.command("show")
@click.argument("delivery_id", type=int)
@click.option("--body", "raw_body", is_flag=True, help="Print the raw body as received, only.")
def webhooks_show(delivery_id: int, raw_body: bool) -> None:
    """One delivery in full: its state, whole error, headers and events stored."""
    _open_database()
    row = models.WebhookDelivery.get_or_none(models.WebhookDelivery.id == delivery_id)
    if row is None:
        _fail(f"no webhook delivery {delivery_id}")
    if raw_body:
        click.echo(bytes(row.body), nl=False)
        return
    events = models.MessageEvent.select().where(models.MessageEvent.delivery == delivery_id).count()
    for label, value in [
        ("id", row.id), ("received", row.received_at.isoformat(timespec="seconds")),
        ("status", row.status), ("attempts", row.attempts),
        ("processed", row.processed_at.isoformat(timespec="seconds") if row.processed_at else ""),
        ("bytes", len(row.body)), ("events stored", events),
        ("headers", json.dumps(row.headers, sort_keys=True)), ("error", row.error or ""),
    ]:
        console.print(Text(f"{label}: {value}"), soft_wrap=True)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535))
@click.option("--threads", default=DEFAULT_THREADS, show_default=True,
              type=click.IntRange(1, 1000),
              help="Requests handled at once; more wait for a free thread.")
@click.option("--connection-limit", default=DEFAULT_CONNECTION_LIMIT,
              show_default=True, type=click.IntRange(1, 100_000),
              help="Connections held open at once; more wait to be accepted.")
@click.option("--idle-timeout", default=DEFAULT_IDLE_TIMEOUT_S,
              show_default=True, type=click.IntRange(1, 3600),
              help="Seconds a connection may stay silent before it is closed.")
def serve(host: str, port: int, threads: int, connection_limit: int, idle_timeout: int) -> None:
    """Serve the webhook and unsubscribe endpoints (standalone WSGI app, on waitress)."""
    from outreach_actors.web.app import make_app
    from outreach_actors.web.app import serve as serve_wsgi

    _open_database()
    app = make_app()  # a bad setting ends the command here, before "serving"
    console.print(f"serving POST /webhooks/sendgrid and /unsubscribe/<token> on http://{host}:{port}")
    try:
        serve_wsgi(host, port, app, threads=threads, connection_limit=connection_limit,
                   idle_timeout_s=idle_timeout)
    except KeyboardInterrupt:
        pass
    except OSError as exc:  # the port is taken, or the host is not this machine's
        _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")


@main.group()
def secret() -> None:
    """Secrets for OUTREACH_SECRET_KEY."""


@secret.command("generate")
def secret_generate() -> None:
    """Print a new random secret for OUTREACH_SECRET_KEY (64 URL-safe characters)."""
    click.echo(secrets.token_urlsafe(48))


@main.group()
def broker() -> None:
    """Manage the embedded Redis broker."""


@broker.command("stop")
def broker_stop() -> None:
    """Stop the embedded Redis server cleanly (its queue is kept on disk)."""
    from outreach_actors.worker.embedded import stop_embedded_redis

    settings = get_settings()
    if settings.broker_url:
        _fail("OUTREACH_BROKER_URL is set: there is no embedded broker to stop")
    if stop_embedded_redis(settings.data_dir):
        console.print(Text(f"stopped the embedded Redis in {settings.data_dir}"))
    else:
        console.print("the embedded Redis was not running")


@broker.command("status")
def broker_status() -> None:
    """Say whether the embedded Redis server is running."""
    from outreach_actors.worker.embedded import EmbeddedRedis

    server = EmbeddedRedis(get_settings().data_dir)
    state = "running" if server.is_running() else "stopped"
    console.print(Text(f"embedded Redis {state} ({server.socket_path})"))


@main.command()
@click.option("--contacts", default=300, show_default=True, type=click.IntRange(1, 5000))
@click.option("--workers", default=2, show_default=True, type=click.IntRange(1, 8))
@click.option("--timeout", "timeout_s", default=120, show_default=True, type=int,
              help="Give up (and exit non-zero) after this many seconds.")
def demo(contacts: int, workers: int, timeout_s: int) -> None:
    """Run a whole campaign locally: workers, the SendGrid stand-in, simulated engagement."""
    from outreach_actors.dev.demo import run_demo

    raise SystemExit(run_demo(contacts=contacts, workers=workers, timeout_s=timeout_s,
                              console=console, funnel_table=funnel_table))

