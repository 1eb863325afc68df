from __future__ import annotations

import pytest

from coursepipe.settings import INGRESS_SECRETS, MAX_DAYS, MAX_HOURS, ConfigError, Settings


def test_defaults_are_the_embedded_mode_and_secrets_have_none():
    s = Settings.from_env({})
    assert s.database_url == "sqlite:///coursepipe.db"
    assert s.redis_url is None and s.stripe_webhook_secret is None and s.admin_token is None
    assert s.low_seat_threshold == 3 and s.reminder_window_days == 7 and s.reminders_enabled is False
    assert s.port == 8000


def test_missing_secret_names_the_variable():
    env = {"STRIPE_WEBHOOK_SECRET": "whsec_x", "ADMIN_TOKEN": "t"}
    with pytest.raises(ConfigError, match="^PLATFORM_WEBHOOK_SECRET is required but not set$"):
        Settings.from_env(env).require(*INGRESS_SECRETS)


@pytest.mark.parametrize("name,value", [("LOW_SEAT_THRESHOLD", "lots"), ("REMINDERS_ENABLED", "perhaps"),
                                        ("PORT", "0"), ("REMINDER_WINDOW_DAYS", "-1")])
def test_malformed_values_are_refused_with_the_name(name, value):
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


@pytest.mark.parametrize("name,minimum,maximum", [
    ("LOW_SEAT_THRESHOLD", 0, 10_000), ("REMINDER_WINDOW_DAYS", 1, MAX_DAYS), ("PORT", 1, 65_535),
    ("RETENTION_DAYS", 1, MAX_DAYS), ("WAIT_HORIZON_HOURS", 1, MAX_HOURS), ("ADMIN_SESSION_HOURS", 1, MAX_HOURS),
    ("TRUSTED_PROXIES", 0, 10)])
def test_every_number_is_bounded_and_one_beyond_is_refused_naming_the_variable_and_its_range(name, minimum, maximum):
    """Before: no maximum, so RETENTION_DAYS=999999 made every retention run an OverflowError and PORT=99999
    listened on 34463."""
    assert getattr(Settings.from_env({name: str(maximum)}), name.lower()) == maximum
    assert getattr(Settings.from_env({name: str(minimum)}), name.lower()) == minimum
    for beyond in (maximum + 1, minimum - 1):
        with pytest.raises(ConfigError, match=f"^{name} must be between {minimum} and {maximum}, got {beyond}$"):
            Settings.from_env({name: str(beyond)})


def test_typed_values():
    s = Settings.from_env({"LOW_SEAT_THRESHOLD": "5", "REMINDERS_ENABLED": "true",
                           "ADMIN_ALERT_EMAILS": "a@x.test, b@x.test,", "REDIS_URL": "redis://h:6379/0"})
    assert s.low_seat_threshold == 5 and s.reminders_enabled is True
    assert s.admin_alert_emails == ("a@x.test", "b@x.test") and s.redis_url == "redis://h:6379/0"


@pytest.mark.parametrize("value", ["localhost:6379", "http://h:6379/0", "redis://:hunter2@h:port/0",
                                   "redis://h:6379/0?socket_timeout=soon"])
def test_a_redis_url_redis_cannot_read_is_refused_naming_the_variable_not_its_password(value):
    with pytest.raises(ConfigError, match="^REDIS_URL is not a Redis URL: ") as err:
        Settings.from_env({"REDIS_URL": value})
    assert "hunter2" not in str(err.value)


def test_the_redis_url_forms_redis_reads_are_accepted():
    for value in ("redis://h:6379/0", "rediss://:secret@h:6380/1", "unix:///run/redis.sock"):
        assert Settings.from_env({"REDIS_URL": value}).redis_url == value


STRONG = {"STRIPE_WEBHOOK_SECRET": "whsec_" + "0123456789abcdef" * 3, "PLATFORM_WEBHOOK_SECRET": "p0-" + "a1b2c3d4" * 4,
          "ADMIN_TOKEN": "Zq8-xW3_kP0mR7tY2vB9nL4cJ6"}


@pytest.mark.parametrize("name,value", [("ADMIN_TOKEN", "a"), ("STRIPE_WEBHOOK_SECRET", "b"),
                                        ("PLATFORM_WEBHOOK_SECRET", "c"), ("ADMIN_TOKEN", "x" * 40),
                                        ("PLATFORM_WEBHOOK_SECRET", "abcabcabcabcabcabcabcabcabc"),
                                        ("SESSION_SECRET", "short")])
def test_a_weak_secret_stops_startup_naming_the_variable(name, value):
    with pytest.raises(ConfigError, match=f"^{name} is too weak: use at least 24 random characters"):
        Settings.from_env({**STRONG, name: value}).require(*INGRESS_SECRETS)


def test_strong_secrets_and_the_generated_ones_pass():
    import secrets

    Settings.from_env(STRONG).require(*INGRESS_SECRETS)
    # what `make run` writes into .env.local
    Settings.from_env({"STRIPE_WEBHOOK_SECRET": f"whsec_{secrets.token_hex(24)}",
                       "PLATFORM_WEBHOOK_SECRET": secrets.token_hex(24), "ADMIN_TOKEN": secrets.token_urlsafe(24),
                       "SESSION_SECRET": secrets.token_urlsafe(32)}).require(*INGRESS_SECRETS)


def test_serve_binds_loopback_unless_host_is_set():
    assert Settings.from_env({}).host == "127.0.0.1"
    assert Settings.from_env({"HOST": "0.0.0.0"}).host == "0.0.0.0"
def test_wait_horizon_and_public_url():
    assert Settings.from_env({}).wait_horizon_hours == 72 and Settings.from_env({}).public_url is None
    s = Settings.from_env({"WAIT_HORIZON_HOURS": "24", "PUBLIC_URL": " https://pipe.example.com/ "})
    assert s.wait_horizon_hours == 24 and s.public_url == "https://pipe.example.com"
    with pytest.raises(ConfigError, match="WAIT_HORIZON_HOURS"):
        Settings.from_env({"WAIT_HORIZON_HOURS": "0"})
