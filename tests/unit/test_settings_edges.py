"""Settings at their edges: each numeric setting and plan value at its bounds, the defaults,
an empty broker URL or task name, the Redis URL options and what a refusal may quote, and
`redact_url`'s odd URLs.

Found untested by mutation testing of chores/core/settings.py (stop 55)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from chores.core.settings import MAX_INT64, Plan, Settings

YEAR = 366 * 24 * 3600
WEEK = 7 * 24 * 3600

# (field, lowest taken, highest taken, just below refused, just above refused); None: no bound
BOUNDS = [
    ("mongo_timeout_ms", 1, 999_999_999, 0, 1_000_000_000),
    ("batch_size", 1, 100_000, 0, 100_001),
    ("lookback_seconds", 0, YEAR, -0.5, YEAR + 0.5),
    ("future_skew_seconds", 0, YEAR, -0.5, YEAR + 0.5),
    ("max_tokens_per_run", 1, 10**15, 0, 10**15 + 1),
    ("pending_idle_seconds", 3600, 10 * YEAR, 3599.5, 10 * YEAR + 0.5),
    ("grace_days", 0, 366, -0.5, 366.5),
    ("default_token_limit", 0, 2**63 - 1, -1, 2**63),
    ("default_spend_limit_micros", 0, 2**63 - 1, -1, 2**63),
    ("default_soft_ratio", 0.5, 1, 0, 1.5),
    ("default_grace_tokens", 0, 2**63 - 1, -1, 2**63),
    ("quota_max_staleness_seconds", 0.5, YEAR, 0, YEAR + 0.5),
    ("quota_cache_ttl_seconds", 1, WEEK, 0, WEEK + 1),
    ("meter_every_seconds", 0.5, 24 * 3600, 0, 24 * 3600 + 0.5),
    ("task_soft_time_limit", 1, None, 0, None),
    ("task_time_limit", 1, None, 0, None),
    ("lock_ttl_seconds", 1, WEEK, 0, WEEK + 1),
]


@pytest.mark.parametrize(("field", "lowest", "highest", "below", "above"), BOUNDS)
def test_each_numeric_setting_takes_its_bounds_and_refuses_just_past_them(
    field, lowest, highest, below, above
):
    for value in (lowest, highest):
        if value is not None:
            assert getattr(Settings(**{field: value}), field) == value
    for value in (below, above):
        if value is not None:
            with pytest.raises(ValidationError):
                Settings(**{field: value})


PLAN_BOUNDS = [
    ("token_limit", 0, MAX_INT64, -1, MAX_INT64 + 1),
    ("spend_limit_micros", 0, MAX_INT64, -1, MAX_INT64 + 1),
    ("soft_ratio", 0.5, 1, 0, 1.5),
    ("grace_tokens", 0, MAX_INT64, -1, MAX_INT64 + 1),
]


@pytest.mark.parametrize(("field", "lowest", "highest", "below", "above"), PLAN_BOUNDS)
def test_a_plan_takes_its_bounds_and_refuses_just_past_them(field, lowest, highest, below, above):
    for value in (lowest, highest):
        assert getattr(Plan(**{field: value}), field) == value
    for value in (below, above):
        with pytest.raises(ValidationError):
            Plan(**{field: value})


def test_max_int64_is_the_largest_integer_mongodb_stores():
    assert MAX_INT64 == 9_223_372_036_854_775_807


def test_an_empty_userinfo_leaves_the_host_and_its_port_shown():
    """`scheme://@host`: the credentials (before the last `@`) are empty; what follows is the
    host, shown as written, not taken for a `user:password` without a host."""
    from chores.core.settings import redact_url

    assert redact_url("mongodb://@db.example:abc/main") == "mongodb://@db.example:abc/main"


def test_an_empty_broker_url_is_refused_not_taken_for_no_redis(monkeypatch):
    """REDIS_URL= is no Redis; CELERY_BROKER_URL= has no such meaning: the broker is
    required (the beat's and the per-org locks live there)."""
    monkeypatch.setenv("CELERY_BROKER_URL", "")
    with pytest.raises(ValidationError, match="the broker's Redis URL is required"):
        Settings()


def test_a_harmless_option_before_the_last_at_leaves_the_host_shown():
    """Only a credential option's value may own the `@` that follows it: the certificate
    file option is harmless (by name), so what follows the `@` is the host, shown."""
    from chores.core.settings import redact_url

    url = "mongodb://u:pw@h/db?tlsCertificateKeyFile=/etc/k.pem@db.example/main"
    assert redact_url(url) == "mongodb://u:***@db.example/main"


def test_a_parsers_key_error_adds_no_detail():
    """kombu's KeyError is a bare key name: nothing of it is passed on."""
    from chores.core.settings import _parser_detail

    assert _parser_detail(KeyError("password"), "redis://cache:6379/0?password=pw") == ""


@pytest.mark.parametrize("names", [[], [""], ["ai", ""]])
def test_no_task_names_or_an_empty_one_is_refused(names):
    with pytest.raises(ValidationError, match="AI_TASK_NAMES must list at least one non-empty"):
        Settings(ai_task_names=names)


@pytest.mark.parametrize(
    ("option", "taken"),
    [
        ("socket_timeout=0", False),
        ("socket_timeout=0.5", True),
        ("socket_connect_timeout=0", False),
        ("socket_connect_timeout=0.5", True),
        ("health_check_interval=0", True),
        ("health_check_interval=-1", False),
    ],
)
def test_a_redis_url_timeout_is_taken_exactly_from_its_least(option, taken):
    """A timeout must be above 0, a health-check interval 0 or more (0: never checked)."""
    url = f"redis://cache:6379/0?{option}"
    if taken:
        assert Settings(redis_url=url).redis_url == url
    else:
        with pytest.raises(ValidationError, match="must be a number of seconds"):
            Settings(redis_url=url)


def test_of_two_options_set_in_code_the_first_by_name_is_said():
    with pytest.raises(ValidationError, match="redis-py's option 'retry' is set in code"):
        Settings(redis_url="redis://cache/0?retry=3&socket_type=1")


def test_get_settings_caches_one_instance_per_process():
    from chores import get_settings

    get_settings.cache_clear()
    try:
        assert get_settings() is get_settings()
    finally:
        get_settings.cache_clear()


@pytest.mark.parametrize(
    ("message", "url"),
    [
        ("bad value s3cretpw here", "redis://:s3cretpw@cache:6379/0"),  # the password
        ("bad value tok3n", "redis://cache:6379/0?client_name=tok3n"),  # an option's value
        ("bad value a%40b", "redis://cache:6379/0?client_name=a%2540b"),  # a decoded value
        ("cannot use a@b", "redis://cache:6379/0"),  # an `@`: a userinfo quoted
    ],
)
def test_a_redis_py_message_quoting_the_url_is_not_shown(message, url):
    from chores.core.settings import _option_problem

    said = _option_problem(ValueError(message), url)
    assert said == (
        "redis-py cannot use its options: (its message is not shown: it quotes the URL) "
        "(ValueError)"
    )


def test_the_defaults_are_the_documented_ones():
    settings = Settings()
    assert settings.max_tokens_per_run == 1_000_000_000
    assert settings.default_grace_tokens == 0


def test_a_type_error_that_names_no_option_is_passed_on_as_said():
    from chores.core.settings import _option_problem

    said = _option_problem(TypeError("unsupported operand"), "redis://cache:6379/0")
    assert said == "redis-py cannot use its options: unsupported operand (TypeError)"


def test_a_db_option_leaves_the_path_to_redis_py():
    url = "redis://cache:6379/x?db=2"
    assert Settings(redis_url=url).redis_url == url


def test_an_at_in_the_path_hides_all_before_it():
    from chores.core.settings import redact_url

    assert redact_url("mongodb://host/db@h2") == "mongodb://***@h2"


# Found untested by mutation testing (stop 58).


def test_the_values_env_example_gives_are_the_defaults(monkeypatch):
    """`.env.example`: "the values here are the defaults unless a comment says otherwise"
    (none does); a copy of it changes nothing."""
    from pathlib import Path

    from dotenv import dotenv_values

    example = Path(__file__).resolve().parents[2] / ".env.example"
    fields = {name.upper(): name for name in Settings.model_fields}
    given = {fields[name] for name in dotenv_values(example) if name in fields}
    assert {"mongo_timeout_ms", "batch_size", "quota_cache_ttl_seconds"} <= given
    for name in fields:
        monkeypatch.delenv(name, raising=False)
    from_example = Settings(_env_file=example)  # type: ignore[call-arg]
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert {f: getattr(from_example, f) for f in given} == {f: getattr(defaults, f) for f in given}


def test_a_settings_file_the_process_may_not_read_is_said_so(tmp_path, monkeypatch):
    """Not "not UTF-8": the system's reason (here, as for another user's file of mode
    600)."""
    from pathlib import Path

    from chores import get_settings
    from chores.core.exceptions import ConfigError

    (tmp_path / ".env").write_text("BATCH_SIZE=10\n")
    monkeypatch.chdir(tmp_path)
    read_text = Path.read_text

    def refused(path: Path, *args: object, **kwargs: object) -> str:
        if path.name == ".env":
            raise PermissionError(13, "Permission denied", str(path))
        return read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refused)
    get_settings.cache_clear()
    try:
        with pytest.raises(ConfigError) as said:
            get_settings()
    finally:
        get_settings.cache_clear()
    assert str(said.value) == "cannot read the settings file .env: Permission denied"


def test_only_the_broker_is_told_that_celery_takes_no_password_option():
    """redis-py takes `?password=` (REDIS_URL, a Redis result backend); the hint to put
    the password before the '@' is the broker's alone."""
    with pytest.raises(ValidationError) as broker:
        Settings(celery_broker_url="redis://cache:6379/0?password=pw")
    assert "(Celery takes no password option: put it before the '@')" in str(broker.value)
    with pytest.raises(ValidationError) as locks:
        Settings(redis_url="redis://:pw@cache:noport/0")
    assert "not a Redis URL" in str(locks.value)
    assert "Celery takes no password option" not in str(locks.value)
