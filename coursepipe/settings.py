"""Settings read once from the environment, typed and checked at start-up."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Mapping

DEFAULT_DATABASE_URL = "sqlite:///coursepipe.db"
from tasks.bookings.alerts import DEFAULT_LOW_SEAT_THRESHOLD
DEFAULT_REMINDER_WINDOW_DAYS = 7
DEFAULT_PORT = 8000
DEFAULT_HOST = "127.0.0.1"
# a secret shorter, or made of fewer different characters, is refused at start-up (`make run`'s
# generated ones have 32 to 54 characters)
MIN_SECRET_LENGTH = 24
MIN_SECRET_DISTINCT = 8


def too_weak(secret: str) -> bool:
    """A secret the processes refuse to start with: shorter than MIN_SECRET_LENGTH, or too few distinct characters."""
    return len(secret) < MIN_SECRET_LENGTH or len(set(secret)) < MIN_SECRET_DISTINCT
DEFAULT_RETENTION_DAYS = 400
DEFAULT_WAIT_HORIZON_HOURS = 72
DEFAULT_ADMIN_SESSION_HOURS = 8
# bounds of the number settings. A day or hour setting is added to or taken from now (the retention cut-off,
# the reminder and wait horizons, a session's end): 100 years keeps that a date every job can compute.
MAX_DAYS = 36_500
MAX_HOURS = MAX_DAYS * 24
MAX_PORT = 65_535
MAX_LOW_SEAT_THRESHOLD = 10_000
MAX_TRUSTED_PROXIES = 10
COOKIE_SECURE_CHOICES = ("auto", "true", "false")


class ConfigError(Exception):
    """Raised when the environment is missing a required value or holds a malformed one."""


def _bool(name: str, raw: str | None, default: bool) -> bool:
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def _int(name: str, raw: str | None, default: int, *, minimum: int, maximum: int) -> int:
    """An integer setting within its bounds: one beyond them is refused here, naming the variable, rather
    than failing later in whatever uses it (a date out of range, a port wrapped round)."""
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def _choice(name: str, raw: str | None, choices: tuple[str, ...], default: str) -> str:
    if raw is None or raw == "":
        return default
    value = raw.strip().lower()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return value


def _opt(raw: str | None) -> str | None:
    return raw if raw else None


def checked_redis_url(raw: str | None) -> str | None:
    """REDIS_URL, checked as redis-py reads it (the broker, the scheduler's leader lock and the doctor all do):
    a URL it cannot read is a ConfigError at start-up, not a ValueError wherever Redis is first reached."""
    if not raw:
        return None
    from redis.connection import parse_url

    try:
        parse_url(raw)
    except ValueError as exc:  # its messages never repeat the URL, which may hold a password
        raise ConfigError(f"REDIS_URL is not a Redis URL: {exc} (e.g. redis://localhost:6379/0)") from None
    return raw


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    redis_url: str | None = None
    redis_namespace: str = "coursepipe"
    stripe_webhook_secret: str | None = None
    stripe_api_key: str | None = None
    stripe_api_base: str | None = None
    platform_webhook_secret: str | None = None
    platform_callback_url: str | None = None
    admin_token: str | None = None
    session_secret: str | None = None
    read_api_tokens: tuple[str, ...] = field(default_factory=tuple)  # READ_API_TOKEN, comma-separated
    smtp_url: str | None = None
    mail_from: str = "coursepipe@localhost"
    admin_alert_emails: tuple[str, ...] = field(default_factory=tuple)
    low_seat_threshold: int = DEFAULT_LOW_SEAT_THRESHOLD
    reminders_enabled: bool = False
    reminder_window_days: int = DEFAULT_REMINDER_WINDOW_DAYS
    port: int = DEFAULT_PORT
    host: str = DEFAULT_HOST
    retention_days: int = DEFAULT_RETENTION_DAYS
    wait_horizon_hours: int = DEFAULT_WAIT_HORIZON_HOURS
    public_url: str | None = None  # where Stripe and the platform reach this service, e.g. https://pipe.example.com
    admin_session_hours: int = DEFAULT_ADMIN_SESSION_HOURS
    cookie_secure: str = "auto"  # auto: Secure when the request came over TLS
    trusted_proxies: int = 0  # proxies in front whose X-Forwarded-For names the client (the rate limit's key)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env
        emails = tuple(e.strip() for e in env.get("ADMIN_ALERT_EMAILS", "").split(",") if e.strip())
        # several read tokens at once: add the new one, move the clients over, then drop the old one
        read_tokens = tuple(t.strip() for t in env.get("READ_API_TOKEN", "").split(",") if t.strip())
        if env.get("ADMIN_TOKEN") and env["ADMIN_TOKEN"] in read_tokens:
            raise ConfigError("READ_API_TOKEN must not contain ADMIN_TOKEN (a read token cannot be the admin's)")
        return cls(
            database_url=env.get("DATABASE_URL") or DEFAULT_DATABASE_URL,
            redis_url=checked_redis_url(env.get("REDIS_URL")),
            redis_namespace=env.get("REDIS_NAMESPACE") or "coursepipe",
            stripe_webhook_secret=_opt(env.get("STRIPE_WEBHOOK_SECRET")),
            stripe_api_key=_opt(env.get("STRIPE_API_KEY")),
            stripe_api_base=_opt(env.get("STRIPE_API_BASE")),
            platform_webhook_secret=_opt(env.get("PLATFORM_WEBHOOK_SECRET")),
            platform_callback_url=_opt(env.get("PLATFORM_CALLBACK_URL")),
            admin_token=_opt(env.get("ADMIN_TOKEN")),
            session_secret=_opt(env.get("SESSION_SECRET")),
            read_api_tokens=read_tokens,
            smtp_url=_opt(env.get("SMTP_URL")),
            mail_from=env.get("MAIL_FROM") or "coursepipe@localhost",
            admin_alert_emails=emails,
            low_seat_threshold=_int("LOW_SEAT_THRESHOLD", env.get("LOW_SEAT_THRESHOLD"), DEFAULT_LOW_SEAT_THRESHOLD,
                                    minimum=0, maximum=MAX_LOW_SEAT_THRESHOLD),
            reminders_enabled=_bool("REMINDERS_ENABLED", env.get("REMINDERS_ENABLED"), False),
            reminder_window_days=_int("REMINDER_WINDOW_DAYS", env.get("REMINDER_WINDOW_DAYS"),
                                      DEFAULT_REMINDER_WINDOW_DAYS, minimum=1, maximum=MAX_DAYS),
            port=_int("PORT", env.get("PORT"), DEFAULT_PORT, minimum=1, maximum=MAX_PORT),
            host=env.get("HOST") or DEFAULT_HOST,
            retention_days=_int("RETENTION_DAYS", env.get("RETENTION_DAYS"), DEFAULT_RETENTION_DAYS, minimum=1,
                                maximum=MAX_DAYS),
            public_url=_opt((env.get("PUBLIC_URL") or "").strip().rstrip("/")),
            wait_horizon_hours=_int("WAIT_HORIZON_HOURS", env.get("WAIT_HORIZON_HOURS"), DEFAULT_WAIT_HORIZON_HOURS,
                                    minimum=1, maximum=MAX_HOURS),
            admin_session_hours=_int("ADMIN_SESSION_HOURS", env.get("ADMIN_SESSION_HOURS"),
                                     DEFAULT_ADMIN_SESSION_HOURS, minimum=1, maximum=MAX_HOURS),
            cookie_secure=_choice("COOKIE_SECURE", env.get("COOKIE_SECURE"), COOKIE_SECURE_CHOICES, "auto"),
            trusted_proxies=_int("TRUSTED_PROXIES", env.get("TRUSTED_PROXIES"), 0, minimum=0,
                                 maximum=MAX_TRUSTED_PROXIES),
        )

    def require(self, *names: str) -> "Settings":
        """Check that each named secret is set and strong enough; raise naming the first variable that is not."""
        for name in names:
            if not getattr(self, name.lower()):
                raise ConfigError(f"{name} is required but not set")
        for name, value in self.start_up_secrets(*names):
            if value and too_weak(value):
                raise ConfigError(f"{name} is too weak: use at least {MIN_SECRET_LENGTH} random characters "
                                  f"(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        return self

    def start_up_secrets(self, *required: str) -> list[tuple[str, str | None]]:
        """Every secret `require(*required)` holds to `too_weak`, as (variable, value): the required ones,
        SESSION_SECRET (None when unset) and each read token. `coursepipe doctor` checks the same list."""
        # a read token too: every route answers a guess of one (403 to the right one), outside /admin and /v1
        # without the failed-login limit, so only its length keeps guessing out of reach
        checked = [(name, getattr(self, name.lower())) for name in (*required, "SESSION_SECRET")]
        checked += [("READ_API_TOKEN", token) for token in self.read_api_tokens]
        return checked

    def with_(self, **changes) -> "Settings":
        return replace(self, **changes)

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


# Which secrets each process refuses to start without.
INGRESS_SECRETS = ("STRIPE_WEBHOOK_SECRET", "PLATFORM_WEBHOOK_SECRET", "ADMIN_TOKEN")
