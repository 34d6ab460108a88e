"""A bad setting is one line naming the variable, its value and what is expected."""

from __future__ import annotations

import functools

import mongomock
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from chores import get_settings
from chores.cli import main
from chores.core.settings import Settings

from support import invoke_with_env


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("BATCH_SIZE", "0", "BATCH_SIZE='0': Input should be greater than or equal to 1"),
        ("AI_TASK_NAMES", "ai", "AI_TASK_NAMES must be a JSON list"),
        # bytes that are not UTF-8, as Python reads them from the environment: no query to
        # the server could encode them
        ("AI_TASK_NAMES", '["ai", "x\udcff"]', "AI_TASK_NAMES must be UTF-8 text"),
        ("MONGO_DB", "x\udcff", "MONGO_DB='x\\udcff': Value error, must be UTF-8 text"),
        (  # accepted, then a traceback writing a decision's mirror, after the plan (review)
            "REDIS_URL",
            "redis://:pa\udcffss@cache:6379/0",
            "REDIS_URL='redis://:***@cache:6379/0': Value error, must be UTF-8 text",
        ),
        ("GRACE_DAYS", "abc", "GRACE_DAYS='abc': Input should be a valid number"),
        ("QUOTA_FAIL_OPEN", "maybe", "QUOTA_FAIL_OPEN='maybe': Input should be a valid boolean"),
        ("MONGO_TIMEOUT_MS", "-1", "MONGO_TIMEOUT_MS='-1': Input should be greater than 0"),
        (  # review: pymongo's refusal read "MONGO_URL ... is not a valid MongoDB URL"
            "MONGO_TIMEOUT_MS",
            "1000000000",
            "MONGO_TIMEOUT_MS='1000000000': Input should be less than 1000000000",
        ),
        (
            "FUTURE_SKEW_SECONDS",
            "1e12",
            "FUTURE_SKEW_SECONDS='1e12': Input should be less than or equal to 31622400",
        ),
        ("GRACE_DAYS", "inf", "GRACE_DAYS='inf': Input should be a finite number"),
        ("GRACE_DAYS", "1e308", "GRACE_DAYS='1e308': Input should be less than or equal to 366"),
        ("METER_EVERY_SECONDS", "inf", "METER_EVERY_SECONDS='inf': Input should be a finite"),
        ("LOOKBACK_SECONDS", "nan", "LOOKBACK_SECONDS='nan': Input should be a finite number"),
        (
            "PENDING_IDLE_SECONDS",
            "60",
            "PENDING_IDLE_SECONDS='60': Input should be greater than or equal to 3600",
        ),
        ("QUOTA_MAX_STALENESS_SECONDS", "inf", "Input should be a finite number"),
        (
            "REDIS_URL",
            "notaurl",
            "REDIS_URL <not shown: not a scheme:// URL>: Value error, not a Redis URL",
        ),
        (
            "REDIS_URL",
            "redis://:pw@cache:noport/0",
            "REDIS_URL='redis://:***@cache:noport/0': Value error, not a Redis URL: Port",
        ),
        (  # redis-py dropped `/2x` and used database 0, the broker's (review)
            "REDIS_URL",
            "redis://:pw@cache:6379/2x",
            "REDIS_URL='redis://:***@cache:6379/2x': Value error, not a Redis URL: what "
            "follows the host's '/' is not a database number",
        ),
        (  # an unencoded '/' in a password: nothing of it is quoted
            "CELERY_RESULT_BACKEND",
            "redis://:p/w@cache/0",
            "CELERY_RESULT_BACKEND='redis://:***@cache/0': Value error, not a Redis URL: redis://",
        ),
        (  # review: Celery took it, beat's redis-py then failed at start (a traceback)
            "CELERY_BROKER_URL",
            "rediss://:pw@cache:6380/0?ssl_cert_reqs=CERT_OPTIONAL",
            "CELERY_BROKER_URL='rediss://:***@cache:6380/0?ssl_cert_reqs=CERT_OPTIONAL': Value "
            "error, ssl_cert_reqs must be none, optional or required, as redis-py reads it "
            "(beat and REDIS_URL use it), not 'CERT_OPTIONAL'",
        ),
        (
            "REDIS_URL",
            "rediss://cache:6380/0?ssl_cert_reqs=CERT_REQUIRED",
            "Value error, ssl_cert_reqs must be none, optional or required",
        ),
        (
            "CELERY_BROKER_URL",
            "redis://127.0.0.1:6379/0?socket_timeout=abc",
            "Value error, not a Redis URL: Invalid value for 'socket_timeout'",
        ),
        (  # outside hunt: parsed, then a TypeError traceback at every run's first command
            "REDIS_URL",
            "redis://:pw@cache:6379/3?socket_timout=5",
            "REDIS_URL='redis://:***@cache:6379/3?socket_timout=5': Value error, redis-py takes "
            "no option 'socket_timout' (check its spelling)",
        ),
        (  # ... and the worker's traceback at start
            "CELERY_BROKER_URL",
            "redis://cache:6379/0?foo=bar",
            "Value error, redis-py takes no option 'foo'",
        ),
        ("REDIS_URL", "unix:///run/redis.sock?db=2&sokcet=1", "takes no option 'sokcet'"),
        (  # review: a value redis-py refuses while building its connection, a traceback
            "REDIS_URL",
            "redis://cache:6379/0?protocol=4",
            "redis-py cannot use its options: protocol must be either 2 or 3 (ConnectionError)",
        ),
        (  # review: built, then a traceback at every run's first command
            "REDIS_URL",
            "redis://cache:6379/0?socket_timeout=-5",
            "socket_timeout must be a number of seconds above 0, not -5.0",
        ),
        ("REDIS_URL", "redis://cache/0?retry=3", "redis-py's option 'retry' is set in code"),
        ("REDIS_URL", "redis://cache/0?encoding=latin-9", "encoding 'latin-9' is not one Python"),
        (  # a result backend's options, as Celery's backend hands them to redis-py
            "CELERY_RESULT_BACKEND",
            "redis://cache:6379/1?socket_timout=3",
            "CELERY_RESULT_BACKEND='redis://cache:6379/1?socket_timout=3': Value error, redis-py "
            "takes no option 'socket_timout'",
        ),
        (  # review: a KeyError traceback from kombu on every command
            "CELERY_BROKER_URL",
            "unix:///run/redis.sock",
            "Celery's broker connection cannot use it ('No such transport: unix')",
        ),
        (  # review: redis-py takes it, Celery's broker connection not: the worker's traceback
            "CELERY_BROKER_URL",
            "redis://cache:6379/0?socket_timeout=5",
            "Celery's broker connection takes no option 'socket_timeout' in its URL",
        ),
        (  # outside hunt: taken, then every lock refused by Redis (no org ever metered)
            "LOCK_TTL_SECONDS",
            "99999999999999999999999",
            "LOCK_TTL_SECONDS='99999999999999999999999': Input should be less than or equal to "
            "604800",
        ),
        ("QUOTA_CACHE_TTL_SECONDS", "604801", "Input should be less than or equal to 604800"),
        (
            "DEFAULT_TOKEN_LIMIT",
            "99999999999999999999",
            "Input should be less than or equal to 9223372036854775807",
        ),
        # names MongoDB refuses: one line before any output, not a database error after it
        ("TASKS_COLLECTION", "", "TASKS_COLLECTION='': Value error, must not be empty"),
        ("FINDINGS_COLLECTION", "a$b", "FINDINGS_COLLECTION='a$b': Value error, must not contain"),
        ("TASKS_COLLECTION", "system.x", "must not start with 'system.'"),
        ("BILLING_PREFIX", "$x", "BILLING_PREFIX='$x': Value error, must not contain '$'"),
        ("MONGO_DB", "my.db", "MONGO_DB='my.db': Value error, must not contain '.'"),
        ("MONGO_DB", "", "MONGO_DB='': Value error, must not be empty"),
        ("AI_TASK_NAMES", '["ai", "a\\u0000i"]', "AI_TASK_NAMES must not contain a NUL"),
        (  # outside hunt: `AI_TASK_NAMES='5'`, as if the whole value were 5
            "AI_TASK_NAMES",
            '["ai", 5]',
            "AI_TASK_NAMES[1]=5: Input should be a valid string",
        ),
    ],
)
@pytest.mark.parametrize("command", [["status"], ["quota", "check", "--org", "acme"]])
def test_a_bad_setting_is_one_line_and_exit_1(monkeypatch, variable, value, says, command):
    monkeypatch.setenv(variable, value)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, command)
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1, result.output
    assert says in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "pw@" not in result.output  # a password in a URL is never shown


@pytest.mark.parametrize("url", ["mongodb://u:pw@h:99999/x", "mongodb://u:pw@h:abc/x"])
def test_a_malformed_mongo_url_is_one_line_and_exit_1(monkeypatch, url):
    """(`quota check` answers `unknown` by its fail-open policy instead: issue 18 item 5.)"""
    monkeypatch.setenv("MONGO_URL", url)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["status"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1
    assert (
        result.output.strip()
        == f"Error: MONGO_URL {url.replace(':pw@', ':***@')} is not a valid MongoDB URL"
    )


def test_a_secret_setting_is_redacted_in_its_error(monkeypatch):
    monkeypatch.setenv("REDIS_URL", "redis://:hunter2@cache:6379/0")
    monkeypatch.setenv("BATCH_SIZE", "0")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["status"])
    finally:
        get_settings.cache_clear()
    assert "hunter2" not in result.output and result.exit_code == 1


def test_a_result_backend_of_another_kind_is_celerys_to_check():
    from chores.core.settings import Settings

    for url in ("redis+socket:///tmp/redis.sock", "rpc://", "db+sqlite:///results.db"):
        assert Settings(celery_result_backend=url).celery_result_backend == url


@pytest.mark.parametrize(
    ("field", "url"),
    [
        ("redis_url", "redis://:pw@cache:6379/2?socket_timeout=5&health_check_interval=0"),
        ("redis_url", "redis://cache/0?socket_connect_timeout=1.5&client_name=chore&protocol=3"),
        ("redis_url", "unix:///run/redis.sock?db=2&password=pw&encoding=utf-8"),
        ("celery_broker_url", "rediss://:pw@cache:6380/0?ssl_cert_reqs=required"),
        ("celery_broker_url", "rediss://cache:6380/0?ssl_cert_reqs=none&ssl_check_hostname=false"),
        ("celery_result_backend", "redis+socket:///run/redis.sock"),
        # outside hunt: refused as redis-py reads it, though Celery's backend reads it itself
        ("celery_result_backend", "rediss://:pw@cache:6380/1?ssl_cert_reqs=CERT_NONE"),
    ],
)
def test_the_redis_urls_a_deployment_writes_are_taken(field, url):
    """The checks of a Redis URL's options refuse what its clients cannot use, not these."""
    assert getattr(Settings(**{field: url}), field) == url


def test_an_empty_optional_redis_url_is_no_redis(monkeypatch):
    from chores.core.settings import Settings

    monkeypatch.setenv("REDIS_URL", "")
    monkeypatch.setenv("CELERY_RESULT_BACKEND", "")
    settings = Settings()
    assert (settings.redis_url, settings.celery_result_backend) == (None, None)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"\xff\xfeMONGO_URL=x\n", "Error: cannot read the settings file .env: not UTF-8"),
        (
            b'BATCH_SIZE=10\nMONGO_URL="file://s.json\n',
            "Error: .env line 2 cannot be parsed (an unclosed quote?)",
        ),
    ],
)
def test_a_settings_file_that_cannot_be_read_is_one_line(tmp_path, monkeypatch, content, says):
    """Not silently skipped: a skipped line would leave its setting (here the database
    to bill) at its default."""
    (tmp_path / ".env").write_bytes(content)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["status"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1 and result.output.startswith(says), result.output
    assert len(result.output.strip().splitlines()) == 1


def test_the_billing_prefix_may_be_empty():
    from chores.core.settings import Settings

    assert Settings(billing_prefix="").collection("ledger") == "ledger"


@pytest.mark.parametrize(
    ("env", "says"),
    [
        (
            {"BILLING_PREFIX": "x_", "TASKS_COLLECTION": "x_runs"},
            "TASKS_COLLECTION='x_runs' is the name of the billing collection 'runs'",
        ),
        (
            {"BILLING_PREFIX": "", "FINDINGS_COLLECTION": "ledger"},
            "FINDINGS_COLLECTION='ledger' is the name of the billing collection 'ledger'",
        ),
        (
            {"TASKS_COLLECTION": "billing_ledger", "MONGO_URL": "mongodb://u:pw@h/"},
            "TASKS_COLLECTION='billing_ledger' is the name of the billing collection 'ledger'",
        ),
    ],
)
def test_a_billing_collection_named_like_a_source_collection_is_refused(monkeypatch, env, says):
    """The chore would write its run records (or ledger) into the platform's collection,
    which it only reads (SPEC §1): refused at start, one line, nothing written."""
    result = invoke_with_env(monkeypatch, ["run", "--org", "acme"], **env)
    assert result.exit_code == 1, result.output
    assert f"Error: invalid setting: {says} (BILLING_PREFIX=" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "pw@" not in result.output


def test_every_billing_collection_is_kept_apart_from_the_source():
    """`Collections` opens only the names the check covers."""
    from chores.core.db import Collections
    from chores.core.settings import BILLING_COLLECTIONS

    opened = {
        name
        for name, value in vars(Collections).items()
        if isinstance(value, functools.cached_property) and name not in ("tasks", "findings")
    }
    assert opened == set(BILLING_COLLECTIONS)
    db = mongomock.MongoClient()["main"]
    collections = Collections.of(db, Settings(mongo_url="mongomock://x"))
    assert {getattr(collections, name).name for name in opened} == {
        f"billing_{name}" for name in BILLING_COLLECTIONS
    }


@pytest.mark.parametrize(
    ("url", "says"),
    [
        (
            "mongodb://u:pw@nohost.invalid/?x=1",
            "MONGO_URL mongodb://u:***@nohost.invalid/?x=1: an option pymongo does not know",
        ),
        (  # outside review: pymongo's "... camelCase version of one? Refer to docstring."
            "mongodb://u:pw@nohost.invalid/?retryWrite=true",
            "would ignore (check its spelling); did you mean retrywrites",
        ),
        (
            "mongodb://u:pw@nohost.invalid/?retryWrites=maybe",
            "The value of retrywrites must be 'true' or 'false'",
        ),
        ("mongodb://nohost.invalid/?tlsCertificateKeyFilePassword=pw&x=1", "=***&x=1"),
        ("mongodb://nohost.invalid/?compressors=zlb", "?compressors=zlb: Unsupported compressor"),
        (  # outside hunt: pymongo quoted a piece of the value, `pwB`, which was shown
            "mongodb://nohost.invalid/?authMechanism=MONGODB-AWS"
            "&authMechanismProperties=AWS_SESSION_TOKEN:pwA,pwB:x",
            "authMechanismProperties=***: *** is not a supported auth mechanism property",
        ),
        (  # review: a password touching letters in pymongo's message was shown
            "mongodb://u:pw@nohost.invalid/?authMechanism=MONGODB-AWS"
            "&authMechanismProperties=AWS_SESSION_TOKEN:x,pwx+y:z",
            "authMechanismProperties=***: *** is not a supported auth mechanism property",
        ),
        (  # review: pymongo reads a `+` as a space; the piece `Zh Ek1pw` was shown
            "mongodb://nohost.invalid/?authMechanism=MONGODB-AWS"
            "&authMechanismProperties=AWS_SESSION_TOKEN:IQoJb3+Jp,Zh+Ek1pw:x",
            "authMechanismProperties=***: *** is not a supported auth mechanism property",
        ),
        (  # a property name is no secret: a misspelt one is named
            "mongodb://nohost.invalid/?authMechanism=MONGODB-AWS"
            "&authMechanismProperties=aws_session_token:pwXYZ",
            ": aws_session_token is not a supported auth mechanism property",
        ),
        (  # review: options separated by `;`, as pymongo reads them: a piece was shown
            "mongodb://u:pw@nohost.invalid/?authSource=admin"
            ";authMechanismProperties=AWS_SESSION_TOKEN:FQoG,pwSecret:more",
            ";authMechanismProperties=***: *** is not a supported auth mechanism property",
        ),
        (  # review: a one-letter credential hid that letter everywhere ("Th*** valu***")
            "mongodb://nohost.invalid/?tlsCertificateKeyFilePassword=e&maxPoolSize=x",
            "=***&maxPoolSize=x: The value of maxpoolsize must be an integer",
        ),
        (  # outside hunt: "ma***poolsize", every `x` of the message hidden
            "mongodb://u:pw@nohost.invalid/?maxPoolSize=x",
            "?maxPoolSize=x: The value of maxpoolsize must be an integer",
        ),
    ],
)
def test_an_option_pymongo_would_ignore_is_one_line_and_exit_1(monkeypatch, url, says):
    """Not a warning with a site-packages path above a connection error: pymongo would
    have gone on without the option."""
    monkeypatch.setenv("MONGO_URL", url)
    monkeypatch.setenv("MONGO_TIMEOUT_MS", "300")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["invoice", "show", "--org", "acme"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1 and says in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and "pw" not in result.output


@pytest.mark.parametrize(
    "url",
    [
        "mongodb://u:pw@docs.cluster-abc.us-east-1.docdb.amazonaws.com:1/",  # DocumentDB
        "mongodb://u:pw@nohost.invalid/?compressors=snappy,zlib",  # snappy not installed
    ],
)
def test_a_pymongo_notice_is_no_setting_error(monkeypatch, url):
    """pymongo's notices (a DocumentDB or CosmosDB host, a compressor whose library is not
    installed: it falls back to the next) drop no option: the command goes on (here, to
    find no server)."""
    monkeypatch.setenv("MONGO_URL", url)
    monkeypatch.setenv("MONGO_TIMEOUT_MS", "300")
    get_settings.cache_clear()
    try:
        with pytest.warns(UserWarning):  # shown as pymongo shows it
            result = CliRunner().invoke(main, ["invoice", "show", "--org", "acme"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("Error: cannot reach MongoDB at")


def test_a_directory_named_env_is_not_a_settings_file(tmp_path, monkeypatch):
    """A virtualenv named .env (`python -m venv .env`): pydantic-settings skips it too."""
    (tmp_path / ".env").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MONGO_URL", "mongomock://env-dir")
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(main, ["quota", "check", "--org", "acme"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0 and "no quota decision yet" in result.output, result.output


@pytest.mark.parametrize("field", ["tasks_collection", "findings_collection", "billing_prefix"])
def test_a_collection_name_holding_a_nul_is_refused(field):
    """S2: NUL reaches a name only from a .env file (no environment variable holds one);
    pymongo would refuse it at the first access, after a command's first output."""
    with pytest.raises(ValidationError, match="must not contain NUL"):
        Settings(**{field: "tasks\0x"})


@pytest.mark.parametrize("written", ["none", "None", "NULL", "", " none "])
@pytest.mark.parametrize("variable", ["DEFAULT_TOKEN_LIMIT", "DEFAULT_SPEND_LIMIT_MICROS"])
def test_a_default_limit_written_none_is_no_limit(monkeypatch, variable, written):
    """The docs give the default of both as "none", and `plan set --token-limit none` takes
    the word: the variable takes it too (outside hunt: `invalid setting`, exit 1)."""
    monkeypatch.setenv(variable, written)
    assert getattr(Settings(), variable.lower()) is None
    monkeypatch.setenv(variable, "1000")
    assert getattr(Settings(), variable.lower()) == 1000


@pytest.mark.parametrize("written", ["", " "])
def test_an_empty_registry_path_is_the_shipped_registry(monkeypatch, written):
    """Outside hunt: `REGISTRY_PATH=` (set, empty: a .env line left blank, a compose
    `${REGISTRY_PATH}`) stopped every command that prices, "Cannot load the model registry .:
    unknown file type '(none)'" (an empty path is the working directory). Empty is unset, as
    `REDIS_URL=` is no Redis and `DEFAULT_TOKEN_LIMIT=` no limit."""
    monkeypatch.setenv("REGISTRY_PATH", written)
    assert Settings().registry_path is None
    validated = invoke_with_env(monkeypatch, ["registry", "validate"], MONGO_URL="mongomock://x")
    assert validated.exit_code == 0, validated.output
    assert validated.output.startswith("shipped registry: valid, version ")
    metered = invoke_with_env(monkeypatch, ["run", "--org", "acme", "--dry-run"])
    assert metered.exit_code == 0, metered.output
