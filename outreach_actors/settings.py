"""One frozen Settings object, read from ``OUTREACH_*`` variables or a host app's config.

Every field maps to an environment variable named ``OUTREACH_`` + the field name in
upper case (``broker_url`` -> ``OUTREACH_BROKER_URL``). Django reads the same keys
from an ``OUTREACH`` dict and Flask from ``app.config`` (``OUTREACH_*`` keys), see
:func:`settings_from_mapping`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import isodate
from pydantic import (
    BaseModel,
    BeforeValidator,
    ByteSize,
    ConfigDict,
    ValidationError,
    field_validator,
)

ENV_PREFIX = "OUTREACH_"
MAX_RENDER_BATCH_SIZE = 1000


class SettingsError(ValueError):
    """A setting has a value that cannot be used; the message names the variable."""


def parse_duration(value: Any) -> timedelta:
    """Parse an ISO-8601 duration (``PT72H``, ``P2D``) into a timedelta.

    Years and months are refused: their length depends on the calendar, and a
    timer must mean the same number of seconds wherever it is computed.
    """
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO-8601 duration such as PT72H, got {value!r}")
    try:
        parsed = isodate.parse_duration(value.strip())
    except (isodate.ISO8601Error, ValueError, OverflowError) as exc:
        raise ValueError(f"{value!r} is not an ISO-8601 duration such as PT72H or P2D") from exc
    if isinstance(parsed, isodate.Duration):
        raise ValueError(f"{value!r} uses years or months; use days (P30D) instead")
    if parsed < timedelta(0):
        raise ValueError(f"{value!r} is negative; a duration must be zero or more")
    return parsed


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]


def parse_key_list(value: Any) -> Any:
    """Keys from the environment, separated by commas (secrets are base64 or hex, no commas)."""
    if isinstance(value, str):
        return [key.strip() for key in value.split(",") if key.strip()]
    return value


KeyList = Annotated[list[str], BeforeValidator(parse_key_list)]


class Settings(BaseModel):
    """Everything the engine can be told, with the defaults that work out of the box."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # Where work and facts live. Unset broker/database URLs mean the embedded default.
    broker_url: str | None = None
    database_url: str | None = None
    data_dir: Path = Path("./var")
    broker_namespace: str = "outreach"
    templates_dir: Path = Path("./templates")

    # SendGrid.
    sendgrid_api_key: str | None = None
    sendgrid_api_host: str = "https://api.sendgrid.com"
    sendgrid_timeout: Duration = timedelta(seconds=10)
    sendgrid_webhook_public_key: str | None = None
    # Accepting unsigned webhooks must be asked for by name; it is logged at start.
    sendgrid_webhook_allow_unsigned: bool = False
    webhook_replay_window: Duration = timedelta(minutes=10)
    webhook_max_body_bytes: int = 10 * 1024 * 1024

    # Public URL of the webhook/unsubscribe app, used to build unsubscribe links.
    public_base_url: str = "http://localhost:8000"
    # Secret for unsubscribe tokens; the default is only fit for local use: workers and
    # endpoints that mail through SendGrid refuse it (unsubscribe.require_unforgeable_links).
    secret_key: str = "outreach-insecure-development-key"
    # Earlier secrets, still accepted for links in mail sent before a rotation (an
    # unsubscribe link must work as long as the mail is read); new links use secret_key.
    secret_key_fallbacks: KeyList = []

    # Export Prometheus metrics from each worker (Dramatiq's middleware, port 9191 by
    # default, with our own counters beside its own); needs the `prometheus` extra.
    metrics_enabled: bool = False

    sentry_dsn: str | None = None
    sentry_environment: str | None = None

    # Default timeouts for transitions that do not give `after`.
    no_open_timeout: Duration = timedelta(hours=72)
    no_click_timeout: Duration = timedelta(hours=24)
    # Whether opens that SendGrid flags as machine opens (Apple MPP, proxies) count
    # as engagement: when false they are stored but do not move contacts.
    machine_opens_are_engagement: bool = False

    # Rate limits, per scope; overridable per tenant and sender in the database.
    ratelimit_sender_per_minute: int = 20
    ratelimit_sender_per_hour: int = 1000
    ratelimit_tenant_per_hour: int = 5000
    ratelimit_domain_per_hour: int = 200
    ratelimit_global_per_hour: int = 20000
    # A deferred send comes back at most this late to look again: delayed messages
    # wait unacked in worker memory, and RabbitMQ drops a consumer that holds one
    # past its consumer_timeout (30 min by default).
    ratelimit_max_deferral: Duration = timedelta(minutes=10)
    # Redis for rate-limit and idempotency state when the broker is not Redis
    # (RabbitMQ); unset means the embedded server, which is shared by one host only.
    state_redis_url: str | None = None
    # Idempotency: a lease outlives a killed worker by at most idempotency_lease; a
    # finished effect is remembered for idempotency_done_ttl; a duplicate that finds
    # the lease held looks again after idempotency_duplicate_delay.
    idempotency_lease: Duration = timedelta(minutes=5)
    idempotency_done_ttl: Duration = timedelta(hours=24)
    idempotency_duplicate_delay: Duration = timedelta(seconds=1)

    # Timers and the dispatcher.
    dispatch_horizon: Duration = timedelta(minutes=1)
    dispatch_interval: Duration = timedelta(seconds=5)
    # As many as a timer batch: the dispatcher hands over what it claimed at once.
    dispatch_batch_size: int = 1000
    # Timers due together are fired by one message, in batches of at most this many
    # (a batch runs the same statements whatever its size, so a larger one costs less
    # per timer); sends due together are rendered by one message, in batches of at
    # most this many (a batch's message, read, write and round trip to a render process
    # are shared by its emails; its emails are sent one message each either way).
    timeout_batch_size: int = 1000
    render_batch_size: int = 100
    # Each render of a tenant's template (and each check of one) runs in a render
    # process of its own, held to these: memory beyond what the process holds as the
    # render starts (bytes, or a size such as 256MiB), CPU time (whole seconds, as the
    # kernel counts them) and wall-clock time; render_processes of them per process.
    render_memory_limit: ByteSize = ByteSize(256 * 1024 * 1024)
    render_cpu_limit: Duration = timedelta(seconds=5)
    render_timeout: Duration = timedelta(seconds=30)
    render_processes: int = 2
    # How long a worker waits on an empty timer queue before it looks again, and so how
    # late a due timer can start; and the same for every other queue, which no
    # deadline needs looked at so often (see middleware.polling for the cost).
    worker_poll_interval: Duration = timedelta(milliseconds=100)
    worker_idle_poll_interval: Duration = timedelta(seconds=1)
    action_lease: Duration = timedelta(minutes=5)
    send_max_retries: int = 8
    # An ambiguous send (the connection dropped after SendGrid may have accepted it)
    # waits this long for a provider event to confirm it; then the policy decides:
    # "fail" records it failed and ends the enrollment (never a second email),
    # "resend" sends it again, logged and counted (for setups that prefer a
    # possible duplicate to a missing email).
    ambiguous_send_window: Duration = timedelta(hours=1)
    ambiguous_send_policy: Literal["fail", "resend"] = "fail"

    # Suppression policy.
    soft_bounce_limit: int = 3
    soft_bounce_window: Duration = timedelta(days=7)

    # Retention of raw webhook deliveries and events.
    retention: Duration = timedelta(days=30)

    # Signs POST /events (HMAC-SHA256, see web/events.py); unset, the endpoint refuses all.
    events_secret: str | None = None
    # The host's Dramatiq actor told of goals, exits, failures, replies and unsubscribes
    # ("myapp.tasks.on_outreach_event"); unset, no notification is written.
    notify_actor: str | None = None
    # Who may open the standalone dashboard (`outreach serve --dashboard`): comma-separated
    # user:hash pairs, hashes from `outreach dashboard hash-password`. Empty: it does not start.
    dashboard_users: str = ""
    # Sending policy: a daily cap per sender identity (unset: none; overridable per
    # tenant and sender), and the reputation auto-pause: over the last
    # reputation_window, once at least reputation_min_sends went out, a sender
    # identity or plan whose complaint or hard-bounce rate passes its threshold is paused.
    ratelimit_sender_per_day: int | None = None
    reputation_window: Duration = timedelta(hours=24)
    reputation_min_sends: int = 200
    reputation_max_complaint_rate: float = 0.003
    reputation_max_hard_bounce_rate: float = 0.05
    # Replies (SendGrid Inbound Parse, domain/replies): the domain whose MX points at
    # mx.sendgrid.net; when set, every email's Reply-To is reply+TOKEN@ this domain.
    inbound_domain: str | None = None
    # The Inbound Parse security policy's public key (base64 DER, as for events).
    sendgrid_inbound_public_key: str | None = None
    # Accepting unsigned inbound posts must be asked for by name; it is logged at start.
    sendgrid_inbound_allow_unsigned: bool = False
    # SendGrid Inbound Parse refuses mail over 30 MB (its whole post): so do we (413).
    inbound_max_body_bytes: int = 30 * 1024 * 1024
    # A no_reply timer without `after` fires this long after the send.
    no_reply_timeout: Duration = timedelta(days=3)

    @field_validator(
        "webhook_max_body_bytes",
        "inbound_max_body_bytes",
        "ratelimit_sender_per_minute",
        "ratelimit_sender_per_hour",
        "ratelimit_tenant_per_hour",
        "ratelimit_domain_per_hour",
        "ratelimit_global_per_hour",
        "reputation_min_sends",
        "dispatch_batch_size",
        "timeout_batch_size",
        "soft_bounce_limit",
        "render_processes",
    )
    @classmethod
    def _positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("must be a positive whole number")
        return value

    @field_validator("render_batch_size")
    @classmethod
    def _storable_batch(cls, value: int) -> int:
        # A batch is stored by one statement of 17 parameters an email: SQLite takes
        # 32,766 parameters a statement, PostgreSQL 65,535.
        if not 1 <= value <= MAX_RENDER_BATCH_SIZE:
            raise ValueError(f"must be a whole number from 1 to {MAX_RENDER_BATCH_SIZE}")
        return value

    @field_validator("render_memory_limit")
    @classmethod
    def _room_to_render(cls, value: ByteSize) -> ByteSize:
        # Below this even an ordinary email fails: the text part's parser needs some.
        if value < 32 * 1024 * 1024:
            raise ValueError("must be at least 32MiB (a size such as 256MiB, or bytes)")
        return value

    @field_validator("render_cpu_limit", "render_timeout")
    @classmethod
    def _some_time(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be a duration above zero, such as PT5S")
        return value

    @field_validator("public_base_url")
    @classmethod
    def _http_base_url(cls, value: str) -> str:
        # It goes into every email's List-Unsubscribe header: a line break would break them all.
        if not value.startswith(("http://", "https://")) or not value.isprintable() or " " in value:
            raise ValueError("must be an http:// or https:// URL, e.g. https://mail.example.com")
        return value.rstrip("/")

    @field_validator("broker_url")
    @classmethod
    def _known_broker_scheme(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if scheme not in {"redis", "rediss", "unix", "amqp", "amqps", "stub"}:
            raise ValueError(
                "must start with redis://, rediss://, unix://, amqp:// or stub:// "
                "(or be unset for the embedded default)"
            )
        return value

    @field_validator("database_url")
    @classmethod
    def _known_database_scheme(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if scheme not in {"sqlite", "postgres", "postgresql"}:
            raise ValueError("must start with sqlite:/// or postgresql:// (or be unset)")
        return value

    @field_validator("ratelimit_sender_per_day")
    @classmethod
    def _positive_or_unset(cls, value: int | None) -> int | None:
        if value is not None and value <= 0:
            raise ValueError("must be a positive whole number, or unset for no daily cap")
        return value

    @field_validator("reputation_max_complaint_rate", "reputation_max_hard_bounce_rate")
    @classmethod
    def _rate(cls, value: float) -> float:
        if not 0 < value <= 1:
            raise ValueError("must be a fraction above 0 and at most 1 (0.003 for 0.3%)")
        return value

    @property
    def sqlite_path(self) -> Path:
        """Where the embedded default keeps its SQLite database."""
        return self.data_dir / "outreach.db"


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def settings_from_mapping(mapping: Mapping[str, Any], *, prefixed: bool = True) -> Settings:
    """Build Settings from ``OUTREACH_*`` keys (``prefixed``) or bare field names.

    Unknown ``OUTREACH_*`` keys are refused so that a typo does not silently fall
    back to a default.
    """
    values: dict[str, Any] = {}
    for key, value in mapping.items():
        if prefixed:
            if not key.startswith(ENV_PREFIX):
                continue
            field = key[len(ENV_PREFIX):].lower()
        else:
            field = key.lower()
        if field in _NOT_SETTINGS:
            continue
        if field not in Settings.model_fields:
            raise SettingsError(f"{env_name(field)} is not a known setting")
        if isinstance(value, str) and value == "" and field in _NULLABLE:
            value = None
        values[field] = value
    try:
        return Settings(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{env_name(str(err['loc'][0]))}: {err['msg']}" if err["loc"] else err["msg"]
            for err in exc.errors()
        )
        raise SettingsError(f"invalid configuration: {problems}") from None


def settings_from_env(environ: Mapping[str, str] | None = None) -> Settings:
    return settings_from_mapping(os.environ if environ is None else environ)


# OUTREACH_* variables that belong to the test suite and tools, not to Settings.
_NOT_SETTINGS = {"require_services", "test_redis_url", "test_rabbitmq_url", "test_database_url"}
_NULLABLE = {
    name
    for name, field in Settings.model_fields.items()
    if field.default is None
}

_current: Settings | None = None


def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    global _current
    if _current is None:
        _current = settings_from_env()
    return _current


def configure(settings: Settings | None) -> None:
    """Replace the process-wide settings (host apps and tests); None re-reads the env."""
    global _current
    _current = settings
