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


@plan.command("migrate")
@click.option("--plan", "plan_name", required=True)
@_tenant_option()
@click.option("--to-version", required=True, type=click.IntRange(1))
@click.option("--map", "mappings", multiple=True, metavar="OLD=NEW",
              help="Move contacts at node OLD to node NEW (repeatable); by name otherwise.")
@click.option("--apply", is_flag=True, help="Make the moves (default: a dry run that counts them).")
def plan_migrate(plan_name: str, tenant: str, to_version: int, mappings: tuple[str, ...],
                 apply: bool) -> None:
    """Move a plan's enrollments in flight to another of its versions, node by node."""
    from outreach_actors.domain.migrate import MigrationError, migrate

    mapping: dict[str, str] = {}
    for item in mappings:
        old, sep, new = item.partition("=")
        if not sep or not old or not new:
            raise click.BadParameter(f"{item!r} is not OLD=NEW", param_hint="--map")
        mapping[old] = new
    _open_database()
    try:
        result = migrate(tenant, plan_name, to_version, mapping=mapping, apply=apply)
    except MigrationError as exc:
        _fail(str(exc))
    table = Table("from version", "from node", "to node", "contacts")
    for (version, from_node, to_node), count in sorted(result.moves.items()):
        table.add_row(*_cells(version, from_node, to_node, count))
    console.print(table)
    if apply:
        console.print(Text(f"migrated {result.moved} of {result.total} enrollment(s) to version "
                           f"{to_version}"))
    else:
        console.print(Text(f"dry run: {result.total} enrollment(s) would move; add --apply"))


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


@plan.command("test")
@click.argument("file", type=click.Path(path_type=Path))
@click.argument("script", type=click.Path(path_type=Path))
def plan_test(file: Path, script: Path) -> None:
    """Run a plan against a script of contacts and events on a virtual clock (nothing is
    mailed; see README, "Testing plans"); prints the path per contact, and fails when an
    `expect` is not met."""
    import yaml

    from outreach_actors.dev.plan_simulation import SimulationError, run_script

    parsed = _read_plan(file)
    try:
        steps = yaml.safe_load(script.read_text(encoding="utf-8"))
    except OSError as exc:
        _fail(f"cannot read {script}: {exc.strerror}")
    except yaml.YAMLError as exc:
        _fail(f"{script}: not valid YAML: {exc}")
    failed = 0
    try:
        for result, unmet in run_script(parsed, steps):
            routes = "".join(f"  [{node}: {route}]" for node, route in result.routes.items())
            console.print(Text(f"{result.contact}: {' -> '.join(result.path)} "
                               f"({result.status}){routes}"))
            for email in result.emails:
                console.print(Text(f"  +{email.sent_at - result.started_at} {email.node}: "
                                   f"{email.subject}"))
            for problem in unmet:
                err_console.print(_labelled("  failed:", "red", problem))
            failed += bool(unmet)
    except SimulationError as exc:
        _fail(f"{script}: {exc}")
    if failed:
        _fail(f"{failed} contact(s) did not take the expected path")


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
@click.option("--forward-replies-to", "forward_to", default=None, metavar="ADDRESS",
              help="Where people's replies to this sender's mail are forwarded "
                   "(default: the sender's own address).")
def sender_add(email: str, tenant: str, name: str, verified: bool,
               forward_to: str | None) -> None:
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
    if forward_to is not None:
        try:
            forward_to = normalize_email(forward_to)
        except EnrollmentError as exc:
            _fail(f"--forward-replies-to: {exc}")
    models.Tenant.get_or_create(id=tenant, defaults={"name": tenant})
    identity, created = models.SenderIdentity.get_or_create(
        tenant=tenant, email=address,
        defaults={"name": name, "verified": verified, "forward_replies_to": forward_to})
    if not created:
        identity.name, identity.verified = name or identity.name, verified
        identity.forward_replies_to = forward_to or identity.forward_replies_to
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
@click.option("--experiments", is_flag=True,
              help="Each split's arms side by side, with p-values and 95% intervals against the first arm.")
def stats(plan_name: str | None, tenant: str | None, as_json: bool, experiments: bool) -> None:
    """A funnel per node: entered, active, sent, delivered, opened, clicked, bounced,
    no_open, no_click, exited, failed, ambiguous (sends no provider event confirmed yet),
    paused, converted (reached a goal after last being there); then per plan: enrolled,
    converted and the conversion rate (JSON: plan_enrolled, plan_converted, conversion_rate)."""
    from outreach_actors.domain.stats import funnel
    from outreach_actors.domain.store.counters import fold_counts

    database = _open_database()
    if experiments:
        _print_experiments(plan_name, tenant, as_json)
        return
    fold_counts(database)  # the workers do it each minute; none may be running
    rows = funnel(plan_name=plan_name, tenant_id=tenant)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    console.print(funnel_table(rows))
    for row in {(row["tenant"], row["plan"]): row for row in rows}.values():
        console.print(f"{row['plan']}: {row['plan_enrolled']} enrolled, {row['plan_converted']} "
                      f"converted ({row['conversion_rate']:.1%})", markup=False)
    print_sending_policy(tenant)


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
    print_sending_policy(tenant)
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


def _print_experiments(plan_name: str | None, tenant: str | None, as_json: bool) -> None:
    from outreach_actors.domain.experiments import experiment_results

    results = experiment_results(plan_name=plan_name, tenant_id=tenant)
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    if not results:
        console.print("no split nodes" + (f" in plan {plan_name!r}" if plan_name else ""))
        return
    for result in results:
        console.print(experiment_table(result))


def experiment_table(result: dict) -> Table:
    """One split's arms as rows: each count with its rate, and under every arm after the
    first its difference from the first arm (95% interval, percentage points) and p."""
    columns = result["columns"]
    table = Table("arm", "entered", *columns,
                  title=f"{result['plan']} / {result['node']} (tenant {result['tenant']})")
    for row in result["arms"]:
        table.add_row(*_cells(row["arm"], row["entered"], *(
            f"{row['counts'][c]} ({row['rates'][c]:.1%})" if row["rates"][c] is not None else "0"
            for c in columns)))
        if versus := row.get("versus_first"):
            table.add_row(*_cells(f"  vs {result['arms'][0]['arm']}", "", *(
                f"{v['difference'] * 100:+.1f}pp [{v['ci_low'] * 100:+.1f}, {v['ci_high'] * 100:+.1f}]"
                f" p={v['p_value']:.3g}" if (v := versus.get(c)) else "" for c in columns)))
    return table


def funnel_table(rows: list[dict]) -> Table:
    from outreach_actors.domain.stats import FUNNEL_COLUMNS

    # One tenant (the usual case, and the demo's): its name on every row is noise.
    keys = ["tenant", "plan", "node"] if len({row["tenant"] for row in rows}) > 1 else ["plan", "node"]
    # A column that is 0 on every row says nothing and would not fit a terminal: the
    # funnel has a column per outcome (`--json` keeps them all).
    columns = [column for column in FUNNEL_COLUMNS
               if column in ALWAYS_SHOWN or any(row[column] for row in rows)]
    table = Table(*keys, *columns)
    for row in rows:
        table.add_row(*_cells(*(row[key] for key in keys), *(row[c] for c in columns)))
    return table


#: The funnel's columns shown even when every row has 0 there.
ALWAYS_SHOWN = frozenset({"entered", "active", "sent"})


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
@click.option("--dashboard", is_flag=True,
              help="Also serve the dashboard under /outreach/, to OUTREACH_DASHBOARD_USERS only.")
def serve(host: str, port: int, threads: int, connection_limit: int, idle_timeout: int,
          dashboard: bool) -> None:
    """Serve the webhook, inbound, events and unsubscribe endpoints (standalone WSGI app, on waitress)."""
    from outreach_actors.web.app import make_app
    from outreach_actors.web.app import serve as serve_wsgi

    _open_database()
    app = make_app()  # a bad setting ends the command here, before "serving"
    console.print(f"serving POST /webhooks/sendgrid, /webhooks/sendgrid/inbound, /events and "
                  f"/unsubscribe/<token> on http://{host}:{port}")
    if dashboard:
        from outreach_actors.web.dashboard.wsgi import DASHBOARD_PREFIX, DashboardWSGI

        try:
            app = DashboardWSGI(app)
        except SettingsError as exc:
            _fail(str(exc))
        console.print(f"serving the dashboard on http://{host}:{port}{DASHBOARD_PREFIX}/")
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
@click.option("--dashboard", is_flag=True,
              help="Keep serving the dashboard after the campaign, until Ctrl-C.")
def demo(contacts: int, workers: int, timeout_s: int, dashboard: bool) -> None:
    """Run a whole campaign locally: workers, the SendGrid stand-in, simulated engagement."""
    from outreach_actors.dev.demo import run_demo

    raise SystemExit(run_demo(contacts=contacts, workers=workers, timeout_s=timeout_s,
                              console=console, funnel_table=funnel_table,
                              keep_dashboard=dashboard))



# --- host events and control of one contact ---------------------------------------

@main.command()
@click.argument("email")
@click.argument("event")
@_tenant_option()
@click.option("--properties", default=None, help='The event\'s properties as JSON, e.g. \'{"amount": 120}\'.')
@click.option("--event-id", default=None, help="Your id for the event: sent twice, it is stored once.")
@click.option("--occurred-at", default=None, help="When it happened (ISO-8601); default now.")
def track(email: str, event: str, tenant: str, properties: str | None, event_id: str | None,
          occurred_at: str | None) -> None:
    """Report a host event (purchased, booked_meeting...) for a contact: plans that
    declare it move the contact or reach their goal."""
    from outreach_actors.domain.host_events import TrackError
    from outreach_actors.domain.host_events import track as track_event

    try:
        values = None if properties is None else json.loads(properties)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--properties") from None
    _open_database()
    try:
        result = track_event(tenant, email, event, values, event_id=event_id, occurred_at=occurred_at)
    except TrackError as exc:
        _fail(str(exc))
    if not result.stored:
        console.print(Text(f"event {result.event_key} was stored before: nothing done again"))
    else:
        console.print(Text(f"stored {event} for {email}; moved {result.moved} enrollment(s)"))


# --- dashboard -------------------------------------------------------------------

@main.group()
def dashboard() -> None:
    """The dashboard's users (`outreach serve --dashboard`)."""


@dashboard.command("hash-password")
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True,
              help="The password to hash (prompted for when not given).")
def dashboard_hash_password(password: str) -> None:
    """Print a hash for OUTREACH_DASHBOARD_USERS=user:HASH."""
    from outreach_actors.web.dashboard.access import hash_password

    if not password:
        _fail("an empty password protects nothing")
    click.echo(hash_password(password))


@main.command()
@click.argument("email")
@_tenant_option()
@click.option("--plan", "plan_name", default=None, help="Only this plan (default: every plan).")
def unenroll(email: str, tenant: str, plan_name: str | None) -> None:
    """End a contact's enrollments (in one plan, or every plan of the tenant)."""
    from outreach_actors.domain.control import unenroll as unenroll_contact

    _open_database()
    ended = unenroll_contact(tenant, email, plan_name)
    console.print(Text(f"unenrolled {email} from {ended} enrollment(s)"))


def _control(action: str, email: str, tenant: str, plan_name: str) -> None:
    from outreach_actors.domain import control

    _open_database()
    try:
        changed = getattr(control, action)(tenant, email, plan_name)
    except control.ControlError as exc:
        _fail(str(exc))
    done = "paused" if action == "pause" else "resumed"
    console.print(Text(f"{done} {email} in {plan_name}" if changed
                       else f"{email} was already {done if action == 'pause' else 'active'} "
                            f"in {plan_name}"))


@main.command()
@click.argument("email")
@_tenant_option()
@click.option("--plan", "plan_name", required=True)
def pause(email: str, tenant: str, plan_name: str) -> None:
    """Pause one contact's enrollment: no email and no timer until it is resumed."""
    _control("pause", email, tenant, plan_name)


@main.command()
@click.argument("email")
@_tenant_option()
@click.option("--plan", "plan_name", required=True)
def resume(email: str, tenant: str, plan_name: str) -> None:
    """Resume a paused enrollment: overdue timers fire in order, an overdue send waits
    for the next send window."""
    _control("resume", email, tenant, plan_name)


@main.command()
@click.argument("email")
@click.option("--plan", "plan_name", default=None, help="Only the enrollments in this plan.")
@click.option("--tenant", default=None, help="Only this tenant's contact.")
def explain(email: str, plan_name: str | None, tenant: str | None) -> None:
    """Why a contact got (or did not get) each email: the dashboard's timeline."""
    from outreach_actors.domain.timeline import contact_timeline, find_contacts

    _open_database()
    contacts = find_contacts(email, tenant_ids=[tenant] if tenant else None)
    if not contacts:
        _fail(f"no contact {email}" + (f" in tenant {tenant}" if tenant else ""))
    for contact in contacts:
        timeline = contact_timeline(contact.id)
        console.print(Text(f"contact {contact.id} {contact.email} (tenant {contact.tenant_id})",
                           style="bold"))
        for entry in timeline.suppressions:
            console.print(Text(f"  {entry.at:%Y-%m-%d %H:%M:%S}  {entry.what}: {entry.why}"))
        sections = [section for section in timeline.enrollments
                    if plan_name is None or section.plan.name == plan_name]
        if not sections:
            console.print("  not enrolled" + (f" in {plan_name}" if plan_name else ""))
        for section in sections:
            enrollment = section.enrollment
            console.print(Text(f"  enrollment {enrollment.id} in {section.plan.name} "
                               f"v{section.plan.version}: {enrollment.status} at "
                               f"{enrollment.current_node}"))
            table = Table("when", "what", "why")
            for entry in section.entries:
                what = entry.what + (" (synthetic)" if entry.synthetic else "")
                table.add_row(*_cells(f"{entry.at:%Y-%m-%d %H:%M:%S}", what, entry.why))
            console.print(table)


# --- sending policy: daily caps, warm-up, frequency caps, blackouts, pauses ------------

def _operator() -> str:
    """Who runs the command, for the record of a pause or a resume."""
    import getpass
    import socket

    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except (KeyError, OSError):  # no user name in a bare container
        return "cli"


def _frequency_cap(text: str) -> list:
    """``1/P2D`` (at most one email per two days) as [1, "P2D"], checked."""
    count, _, period = text.partition("/")
    if not count.strip().isdigit() or not period.strip():
        raise click.BadParameter(f"{text!r} is not COUNT/DURATION such as 1/P2D or 3/P7D")
    return [int(count), period.strip()]


def _save_limits(model, row, limits: dict, allowed: frozenset, owner: str) -> None:
    from outreach_actors.worker.limiters import check_overrides

    try:
        check_overrides(limits, allowed=allowed, owner=owner)
    except ValueError as exc:
        _fail(str(exc))
    model.update(rate_limits=limits).where(model.id == row.id).execute()


@tenant.command("set")
@click.argument("tenant_id", callback=_tenant_id)
@click.option("--sender-per-day", type=click.IntRange(1), default=None,
              help="Daily cap of each of the tenant's sender identities (their own beats it).")
@click.option("--frequency-cap", "frequency_caps", multiple=True, metavar="COUNT/DURATION",
              help="At most COUNT emails per contact per DURATION across all plans, e.g. "
                   "1/P2D; repeat for several (1/P2D and 3/P7D).")
@click.option("--no-frequency-cap", is_flag=True, help="Remove the frequency caps.")
@click.option("--clear", "cleared", multiple=True, metavar="KEY",
              help="Remove one override (sender_per_day, tenant_per_hour, ...).")
def tenant_set(tenant_id: str, sender_per_day: int | None, frequency_caps: tuple[str, ...],
               no_frequency_cap: bool, cleared: tuple[str, ...]) -> None:
    """Set TENANT_ID's sending policy: daily cap per sender, frequency caps per contact."""
    from outreach_actors.worker.limiters import FREQUENCY_CAPS, TENANT_SETTINGS

    _open_database()
    row = models.Tenant.get_or_none(models.Tenant.id == tenant_id)
    if row is None:
        _fail(f"no tenant {tenant_id!r}; see `outreach tenant list`")
    limits = dict(row.rate_limits or {})
    for key in cleared:
        limits.pop(key, None)
    if sender_per_day is not None:
        limits["sender_per_day"] = sender_per_day
    if no_frequency_cap:
        limits.pop(FREQUENCY_CAPS, None)
    if frequency_caps:
        try:
            limits[FREQUENCY_CAPS] = [_frequency_cap(cap) for cap in frequency_caps]
        except click.BadParameter as exc:
            _fail(f"--frequency-cap: {exc.message}")
    _save_limits(models.Tenant, row, limits, TENANT_SETTINGS, f"tenant {tenant_id!r}")
    console.print(Text(f"tenant {tenant_id}: {json.dumps(limits, sort_keys=True)}"))


@tenant.command("blackout")
@click.argument("tenant_id", callback=_tenant_id)
@click.argument("first_day", required=False, type=click.DateTime(["%Y-%m-%d"]))
@click.argument("last_day", required=False, type=click.DateTime(["%Y-%m-%d"]))
@click.option("--list", "listing", is_flag=True, help="List the tenant's blackout dates.")
@click.option("--remove", is_flag=True, help="Lift the blackout FIRST_DAY [LAST_DAY].")
def tenant_blackout(tenant_id: str, first_day, last_day, listing: bool, remove: bool) -> None:
    """Hold every send of TENANT_ID from FIRST_DAY to LAST_DAY (inclusive; one day if
    LAST_DAY is left out), in each contact's time zone; --list, --remove."""
    from outreach_actors.domain.blackouts import add_blackout, list_blackouts, remove_blackout

    _open_database()
    if listing or first_day is None:
        table = Table("first day", "last day")
        for first, last in list_blackouts(tenant_id):
            table.add_row(*_cells(first, last))
        console.print(table)
        return
    first, last = first_day.date(), (last_day or first_day).date()
    if remove:
        if not remove_blackout(tenant_id, first, last):
            _fail(f"tenant {tenant_id!r} has no blackout {first} .. {last}; see --list")
        console.print(Text(f"lifted the blackout {first} .. {last} of {tenant_id}"))
        return
    try:
        added = add_blackout(tenant_id, first, last)
    except (ValueError, LookupError) as exc:
        _fail(str(exc).strip("'\""))
    console.print(Text(f"{'blackout' if added else 'already a blackout'}: {first} .. {last} "
                       f"for {tenant_id} (in each contact's time zone)"))


@sender.command("set")
@click.argument("email")
@_tenant_option()
@click.option("--per-day", type=click.IntRange(1), default=None,
              help="Daily cap of this identity (a day in its --timezone).")
@click.option("--warmup-start", type=click.IntRange(1), default=None,
              help="Warm-up: what it may send on the day of its first send.")
@click.option("--warmup-growth", default=None, metavar="PERCENT",
              help="Warm-up: how much more each later day, e.g. 15%.")
@click.option("--no-warmup", is_flag=True, help="End the warm-up.")
@click.option("--timezone", "zone", default=None,
              help="The IANA zone its days are counted in (default UTC).")
def sender_set(email: str, tenant: str, per_day: int | None, warmup_start: int | None,
               warmup_growth: str | None, no_warmup: bool, zone: str | None) -> None:
    """Set a sender identity's daily cap, warm-up ramp and time zone."""
    from outreach_actors.domain.sending_days import parse_growth
    from outreach_actors.worker.limiters import SENDER_SETTINGS

    _open_database()
    row = models.SenderIdentity.get_or_none(models.SenderIdentity.tenant == tenant,
                                            models.SenderIdentity.email == email.strip().lower())
    if row is None:
        _fail(f"tenant {tenant!r} has no sender identity {email!r}; add it with "
              "`outreach sender add`")
    limits = dict(row.rate_limits or {})
    if per_day is not None:
        limits["sender_per_day"] = per_day
    if no_warmup:
        limits.pop("warmup_start", None)
        limits.pop("warmup_growth", None)
    if warmup_start is not None:
        limits["warmup_start"] = warmup_start
    if warmup_growth is not None:
        try:
            limits["warmup_growth"] = parse_growth(warmup_growth)
        except ValueError as exc:
            _fail(f"--warmup-growth: {exc}")
    if zone is not None:
        limits["timezone"] = zone
    _save_limits(models.SenderIdentity, row, limits, SENDER_SETTINGS, f"sender {row.email!r}")
    console.print(Text(f"sender {row.email} for {tenant}: {json.dumps(limits, sort_keys=True)}"))


def _pause_command(action, label: str, *args, **kwargs) -> None:
    from outreach_actors.domain.pauses import PauseError

    _open_database()
    try:
        change = action(*args, **kwargs)
    except PauseError as exc:
        _fail(str(exc))
    console.print(Text(f"{label}" if change.changed else f"{label} already"))


@plan.command("pause")
@click.argument("name")
@_tenant_option()
@click.option("--reason", default="", help="Why, for the record.")
def plan_pause(name: str, tenant: str, reason: str) -> None:
    """Hold every send and timer of plan NAME until `outreach plan resume`."""
    from outreach_actors.domain.pauses import pause_plan

    _pause_command(pause_plan, f"plan {name!r} paused", tenant, name, reason=reason,
                   by=_operator())


@plan.command("resume")
@click.argument("name")
@_tenant_option()
def plan_resume(name: str, tenant: str) -> None:
    """Lift a pause of plan NAME (by hand or automatic): overdue sends go out in each
    contact's next send window, within the rate limits; due timers fire in order."""
    from outreach_actors.domain.pauses import resume_plan

    _pause_command(resume_plan, f"plan {name!r} resumed", tenant, name, by=_operator())


@sender.command("pause")
@click.argument("email")
@_tenant_option()
@click.option("--reason", default="", help="Why, for the record.")
def sender_pause(email: str, tenant: str, reason: str) -> None:
    """Hold every send from sender identity EMAIL until `outreach sender resume`."""
    from outreach_actors.domain.pauses import pause_sender

    _pause_command(pause_sender, f"sender {email} paused", tenant, email, reason=reason,
                   by=_operator())


@sender.command("resume")
@click.argument("email")
@_tenant_option()
def sender_resume(email: str, tenant: str) -> None:
    """Lift a pause of sender identity EMAIL (by hand or automatic)."""
    from outreach_actors.domain.pauses import resume_sender

    _pause_command(resume_sender, f"sender {email} resumed", tenant, email, by=_operator())


def print_sending_policy(tenant: str | None) -> None:
    """The pauses in force and each capped sender's day, after stats and failures."""
    from outreach_actors.domain.sending_status import pause_rows, sender_days

    pauses = pause_rows(tenant)
    for pause in pauses:
        err_console.print(_labelled("paused:", "red", (
            f"{pause['kind']} {pause['name']} of {pause['tenant']} since {pause['since']} "
            f"by {pause['by'] or '?'}: {pause['reason'] or 'no reason given'} "
            f"(lift it with `outreach {pause['kind']} resume`)")))
    days = sender_days(tenant)
    if days:
        table = Table("sender", "day", "cap today", "warm-up day", "sent today")
        for row in days:
            table.add_row(*_cells(row["sender"], row["day"], row["cap_today"] or "-",
                                  row["warmup_day"] or "-", row["sent_today"]))
        console.print(table)


# --- replies -------------------------------------------------------------------------

@main.group()
def replies() -> None:
    """Inspect and replay stored Inbound Parse posts (replies to our mail)."""


@replies.command("list")
@click.option("--status", default=None, type=click.Choice(
    ["received", "processed", "failed", "unmatched", "ignored", "duplicate"]))
@paging_options
def replies_list(status: str | None, limit: int, offset: int) -> None:
    """The newest posts (`replies show ID` has one in full)."""
    _open_database()
    # Every column but the raw body: a page must not read megabytes of mail.
    query = (models.InboundPost.select(*(field for field in models.InboundPost._meta.sorted_fields
                                         if field is not models.InboundPost.body))
             .order_by(models.InboundPost.id.desc()))
    if status:
        query = query.where(models.InboundPost.status == status)
    rows = list(query.limit(limit).offset(offset))
    page = Page.of(rows, limit=limit, offset=offset, count=query.count)
    table = Table("id", "received", "status", "kind", "from", "message", "forward", "note")
    for row in rows:
        table.add_row(*_cells(row.id, row.received_at.isoformat(timespec="seconds"), row.status,
                              row.kind or "", row.from_email or "", row.message_id or "",
                              row.forward_status or "", (row.note or "")[:60]))
    _print_page(table, page, "inbound posts")


@replies.command("show")
@click.argument("post_id", type=int)
@click.option("--body", "raw_body", is_flag=True, help="Print the raw post as received, only.")
def replies_show(post_id: int, raw_body: bool) -> None:
    """One post in full: its state, note, headers, reply and forward."""
    _open_database()
    row = models.InboundPost.get_or_none(models.InboundPost.id == post_id)
    if row is None:
        _fail(f"no inbound post {post_id}")
    if raw_body:
        click.echo(bytes(row.body), nl=False)
        return
    for label, value in [
        ("id", row.id), ("received", row.received_at.isoformat(timespec="seconds")),
        ("status", row.status), ("kind", row.kind or ""), ("attempts", row.attempts),
        ("from", row.from_email or ""), ("subject", row.subject or ""),
        ("tenant", row.tenant or ""), ("message", row.message_id or ""),
        ("forward", f"{row.forward_status or ''} {row.forward_to or ''} "
                    f"{row.forward_error or ''}".strip()),
        ("bytes", len(row.body)), ("headers", json.dumps(row.headers, sort_keys=True)),
        ("note", row.note or ""),
    ]:
        console.print(Text(f"{label}: {value}"), soft_wrap=True)


@replies.command("replay")
@click.argument("post_id", type=int)
def replies_replay(post_id: int) -> None:
    """Read a stored post again (after fixing what made it fail); it acts at most once."""
    from outreach_actors.domain.replies.ingest import replay_post
    from outreach_actors.worker.actors.replies import enqueue_inbound_post

    _open_database()
    try:
        replay_post(post_id, enqueue_inbound_post)
    except LookupError as exc:
        _fail(str(exc))
    console.print(f"inbound post {post_id} queued to be read again")
