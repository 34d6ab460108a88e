"""The one Settings object: every knob of the chore, read from the environment.

Each field maps to an upper-case environment variable of the same name
(`MONGO_URL`, `AI_TASK_NAMES`, ...). `get_settings()` caches one instance per
process; tests build their own `Settings(...)` and pass it explicitly.
"""

from __future__ import annotations

import codecs
import io
import math
import re
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, parse_qsl, unquote, urlsplit

from dotenv.parser import parse_stream
from kombu import Connection as KombuConnection
from kombu.utils.url import parse_url as kombu_parse_url
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError
from redis import ConnectionPool
from redis.connection import parse_url as parse_redis_url

from chores.core.exceptions import ConfigError
from chores.core.wording import is_utf8

# The chore's own collections, each named BILLING_PREFIX + name (`core.db.Collections`).
BILLING_COLLECTIONS = (
    "ledger",
    "dirty",
    "pending",
    "cursors",
    "anomalies",
    "invoices",
    "plans",
    "quota",
    "quota_events",
    "runs",
    "due",
    "counters",
)

# URL options that carry a credential, by name (lower-cased, percent-decoded, letters and
# digits only): anything naming a password, secret, token, key, signature or credential
# (redis-py's `password`, pymongo's `authMechanismProperties` with an AWS session token,
# `tlsCertificateKeyFilePassword`, `X-Amz-Security-Token`, `api-key`, Azure's `sig`), but
# a few known harmless ones. When in doubt, hidden.
_SECRET_OPTION_NAMES = re.compile(
    r"password|passwd|pwd|pass|secret|token|key|signature|credential|authmechanismproperties|sig"
)
_HARMLESS_OPTIONS = frozenset(
    {"tlscertificatekeyfile", "sslkeyfile", "maxtokens", "tokentype", "passive"}
)
# `?name=value`, `&name=value` or `;name=value`; a value ends at the next option, at
# whitespace or at a quote.
_OPTION = re.compile(r"([?&;])([^=?&;#\s'\"<>]+)=([^&;\s'\"<>]*)")


def is_secret_option(raw_name: str) -> bool:
    """Whether a URL option of this name (as written: any case, `_`, `-`, %-escapes)
    carries a credential."""
    name = re.sub(r"[^a-z0-9]", "", unquote(raw_name).lower())
    return bool(_SECRET_OPTION_NAMES.search(name)) and name not in _HARMLESS_OPTIONS


# In a URL alone (not a sentence that holds one), a value ends only at the next option:
# pymongo takes a quote or a space in one (`?tlsCertificateKeyFilePassword=ab"cd`).
# (pymongo reads the options after the last `?`: one ends a value too.)
_URL_OPTION = re.compile(r"([?&;])([^=?&;#]+)=([^&;?]*)")


def redact_options(text: str, *, pattern: re.Pattern[str] = _OPTION) -> str:
    """`text` with the value of every credential-carrying URL option replaced by `***`."""

    def hide(match: re.Match[str]) -> str:
        if is_secret_option(match.group(2)):
            return f"{match.group(1)}{match.group(2)}=***"
        return match.group()

    return pattern.sub(hide, text)


NO_SCHEME = "<not shown: not a scheme:// URL>"


def redact_url(url: str) -> str:
    """The URL with any password replaced by `***`, safe to print or log.

    Works on every form the chore meets without parsing hosts (no DNS for
    `mongodb+srv://`, no port parsing, which fails on `h1:27017,h2:27017`): the
    credentials are what stands before the last `@` of the part after `://`, and the
    password what follows the first `:` there. A password holding `@`, `:` or `/`
    unescaped is redacted whole; when in doubt more is hidden, never less. Without an
    `@`, a "port" that is not a number (`mongodb://user:s3cret`) is taken for a password.
    Options that carry credentials (`?password=`, `authMechanismProperties=`) are hidden.
    A value with no `scheme://` is not shown at all. When what stands before the last `@`
    ends in a credential option's value (`?password=pa@ss`), that `@` may be the value's:
    what follows it, up to the next option, is hidden too.
    """
    scheme, separator, rest = url.partition("://")
    at = rest.rfind("@")
    if not separator:
        # A host name, or a password pasted in place of the URL (`admin:123456` reads as a
        # host and port): nothing tells them apart, so nothing is shown.
        return NO_SCHEME
    if at < 0:
        authority = re.split(r"[/?]", rest, maxsplit=1)[0]
        ports = [host.rpartition(":")[2] for host in authority.split(",") if ":" in host]
        if any(not port.isdigit() and not port.endswith("]") for port in ports):
            return f"{scheme}://***{rest[len(authority) :]}"  # a user:password, no host
        return redact_options(url, pattern=_URL_OPTION)
    user, colon, _password = rest[:at].partition(":")
    escaped_colon = re.search("%3a", user, flags=re.IGNORECASE)
    if escaped_colon:  # `u%3As3cret`: a password after a `:` written escaped, hidden too
        user, colon = user[: escaped_colon.start()], ":"
    tail = rest[at + 1 :]
    if _ends_in_a_secret_option(rest[:at]):
        tail = re.sub(r"^[^&;?]*", "***", tail, count=1)  # the rest of that value
    if "/" in user or "?" in user:  # not a userinfo: an `@` in the path or options
        return redact_options(f"{scheme}://***@{tail}", pattern=_URL_OPTION)
    return redact_options(f"{scheme}://{user}{':***' if colon else ''}@{tail}", pattern=_URL_OPTION)


def _ends_in_a_secret_option(text: str) -> bool:
    """Whether `text` ends in the value of a credential option (`...?password=pa`): an `@`
    right after it may belong to that value. Options start at a `?`."""
    options = text.partition("?")[2]
    last = re.search(r"(?:^|[&;?])([^=&;#?]+)=[^&;?]*$", options)
    return last is not None and is_secret_option(last.group(1))


def _parser_detail(exc: Exception, url: str) -> str:
    """`: <the parser's message>`, or nothing when it quotes anything that stands where the
    URL's credentials may be (redis-py reads `Pa55` of `user:Pa55?rest@host` as a port)."""
    if isinstance(exc, KeyError):  # a bare key name: no message to pass on
        return ""
    rest = url.partition("://")[2]
    credentials = rest.rpartition("@")[0] or re.split(r"[/?]", rest, maxsplit=1)[0]
    quoted = re.findall(r"'([^']*)'", str(exc))
    if any(text and text in credentials for text in quoted):
        return ""
    return f": {exc}"


def _check_certificate_option(url: str) -> None:
    """`ssl_cert_reqs` as every client of a Redis URL reads it: Celery's and kombu's also
    take `CERT_REQUIRED` and its kin, redis-py (REDIS_URL, beat's celery-redbeat and its
    healthcheck) only these three, and failed on the others once started."""
    for value in parse_qs(urlsplit(url).query).get("ssl_cert_reqs", []):
        if value not in ("none", "optional", "required"):
            raise ValueError(
                "ssl_cert_reqs must be none, optional or required, as redis-py reads it "
                f"(beat and REDIS_URL use it), not {value!r:.40}"
            )


def _check_connection_options(url: str, *, broker: bool) -> None:
    """Every option of a Redis URL is one its clients take: redis-py parses any name
    (`?socket_timout=5`) and any value (`?protocol=4`), then failed with a traceback at the
    first command of every run; Celery's broker connection (kombu) takes none of redis-py's
    socket options (`?socket_timeout=5`), and the worker failed at start. Each client's
    connection object is built, none opened."""
    _check_redis_py_connection(url, lambda: ConnectionPool.from_url(url))
    if broker:
        try:
            KombuConnection(url)
        except TypeError as exc:
            raise ValueError(
                f"Celery's broker connection takes no option {_unknown_option(exc)} in its URL"
            ) from None
        except Exception as exc:  # `unix://`: "No such transport" (a KeyError)
            raise ValueError(f"Celery's broker connection cannot use it ({exc})") from None


def _check_result_backend_options(url: str) -> None:
    """A Redis result backend's options, as Celery's backend reads them (it takes
    `ssl_cert_reqs=CERT_NONE` and its kin, which redis-py alone does not) and hands them to
    redis-py's connection: built, none opened. What the backend itself refuses (a
    `rediss://` without `ssl_cert_reqs`) is said when the service starts
    (`service.config.result_backend_problem`)."""
    from celery import Celery
    from celery.backends.redis import RedisBackend

    try:
        params = dict(RedisBackend(app=Celery(set_as_current=False), url=url).connparams)
    except ValueError:
        return
    _check_redis_py_connection(url, lambda: ConnectionPool(**params))


def _check_redis_py_connection(url: str, pool: Callable[[], ConnectionPool]) -> None:
    """The connection redis-py builds from `url`'s options (through `pool`, as its client
    reads them), none opened, and the values it reads only at the first command."""
    try:
        pool().make_connection()
    except Exception as exc:  # whatever redis-py raises building it, the URL is why
        raise ValueError(_option_problem(exc, url)) from None
    _check_option_values(parse_redis_url(url))


# redis-py options whose value is an object set in code: a URL's text is never one (each
# passed the connection's construction, then failed at the first command).
_CODE_ONLY_OPTIONS = frozenset(
    {
        "cache",
        "cache_config",
        "connection_pool",
        "credential_provider",
        "driver_info",
        "event_dispatcher",
        "redis_connect_func",
        "retry",
        "socket_keepalive_options",
        "socket_type",
    }
)
# Seconds, and the least each may be (a health-check interval of 0 checks never).
_SECONDS_OPTIONS = {"socket_timeout": 0, "socket_connect_timeout": 0, "health_check_interval": -1}


def _check_option_values(options: dict[str, Any]) -> None:
    """The option values redis-py only reads at the first command: a timeout must be a
    finite number above 0 (`?socket_timeout=-5`, `inf`, `nan`), an encoding one Python
    knows, and an option set in code is not given as text."""
    code_only = sorted(_CODE_ONLY_OPTIONS & options.keys())
    if code_only:
        raise ValueError(f"redis-py's option {code_only[0]!r} is set in code, not in a URL")
    for name, above in _SECONDS_OPTIONS.items():
        value = options.get(name)
        if value is not None and not (math.isfinite(value) and value > above):
            least = "0 or more" if above < 0 else "above 0"
            raise ValueError(f"{name} must be a number of seconds {least}, not {value!r}")
    encoding = options.get("encoding")
    if encoding is not None:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ValueError(f"encoding {encoding!r:.40} is not one Python knows") from None


def _option_problem(exc: Exception, url: str) -> str:
    """What redis-py said of a URL's options: an unknown option's name, or its message when
    it quotes nothing of the URL's password or options' values."""
    if isinstance(exc, TypeError) and "keyword argument" in str(exc):
        return f"redis-py takes no option {_unknown_option(exc)} (check its spelling)"
    message = str(exc)
    parts = urlsplit(url)
    values = [value for _, value in parse_qsl(parts.query, keep_blank_values=True)]
    values += [parts.password or "", *(unquote(value) for value in values)]
    if any(value and value in message for value in values) or "@" in message:
        message = "(its message is not shown: it quotes the URL)"
    return f"redis-py cannot use its options: {message} ({type(exc).__name__})"


def _unknown_option(exc: TypeError) -> str:
    unknown = re.search(r"keyword argument '(\w{1,40})'", str(exc))
    return repr(unknown.group(1)) if unknown else "(one of them)"


def _check_database_number(url: str) -> None:
    """The `/db` of a Redis URL is a number, or absent: redis-py drops one it cannot read
    (`/2x`) and connects to database 0, the broker's, without a word."""
    parts = urlsplit(url)
    path = unquote(parts.path).strip("/")
    if "db=" in parts.query:
        return  # `?db=2`: redis-py's own check
    if path and not (path.isascii() and path.isdigit()):
        # Not quoted: with a '/' in the password left unencoded, the "path" is its tail.
        raise ValueError("what follows the host's '/' is not a database number")


MAX_INT64 = 2**63 - 1  # the largest integer MongoDB stores
MAX_TOKENS_CEILING = 10**15  # the largest MAX_TOKENS_PER_RUN
# The longest a Redis key may live here (a lock, a mirrored decision): Redis refuses an
# expiry past 2**63 ms, and a lock held for longer than a week is a worker gone, not a run.
WEEK_SECONDS = 7 * 24 * 3600
REDIS_SCHEMES = frozenset({"redis", "rediss", "unix"})  # what redis-py connects to
DATABASE_NAME_FORBIDDEN = '/\\. "$\0'  # in a MongoDB database name
ENV_FILE = ".env"


class Plan(BaseModel):
    """A quota plan: limits per period (None = no limit), warn ratio, token overdraft."""

    token_limit: int | None = Field(default=None, ge=0, le=MAX_INT64)
    spend_limit_micros: int | None = Field(default=None, ge=0, le=MAX_INT64)
    soft_ratio: float = Field(default=0.8, gt=0, le=1)
    grace_tokens: int = Field(default=0, ge=0, le=MAX_INT64)

    @field_validator("*", mode="before")
    @classmethod
    def _a_number(cls, value: object) -> object:
        """A plan's values are numbers as stored: `true` is no 1-token limit, nor `"5000"`
        a limit (a plan document edited by hand; `plan set` writes numbers). A whole
        float (`1000000.0`, as a shell writes numbers) is the whole number it holds."""
        if isinstance(value, bool | str | bytes):  # a stored binary reads back as bytes
            raise ValueError(f"must be a number, not {type(value).__name__}")
        return value


class Settings(BaseSettings):
    """Configuration of the billing chore (environment variables, upper-case)."""

    # No infinite or NaN durations: each would start the worker and then fail every run.
    model_config = SettingsConfigDict(env_file=ENV_FILE, extra="ignore", allow_inf_nan=False)

    mongo_url: str = "mongodb://localhost:27017"
    mongo_db: str = "main"
    # pymongo refuses a timeout of a billion ms or more (a URL error, said of MONGO_URL).
    mongo_timeout_ms: int = Field(default=5000, gt=0, lt=1_000_000_000)

    tasks_collection: str = "tasks"
    findings_collection: str = "findings"
    billing_prefix: str = "billing_"

    ai_task_names: list[str] = ["ai"]
    registry_path: Path | None = None

    batch_size: int = Field(default=1000, ge=1, le=100_000)
    lookback_seconds: float = Field(default=900.0, ge=0, le=366 * 24 * 3600)
    # At most 366 days: an end time further ahead than that is garbage (rules.LATEST_END).
    future_skew_seconds: float = Field(default=300.0, ge=0, le=366 * 24 * 3600)
    # At most a quadrillion: a million times the default, and 9,000 runners at the ceiling
    # in one invoice before a sum passes the 64 bits MongoDB stores (`InvoiceTooLarge`).
    max_tokens_per_run: int = Field(default=1_000_000_000, ge=1, le=MAX_TOKENS_CEILING)
    # A runner still running (or waiting for its spawn finding) neither written (its stamp)
    # nor billed for this long is re-read once an hour instead of every run (`Batch.is_idle`).
    # At least an hour: a live runner's stamp lags one write, often minutes.
    pending_idle_seconds: float = Field(default=86_400.0, ge=3600, le=10 * 366 * 24 * 3600)
    grace_days: float = Field(default=3.0, ge=0, le=366)  # as finalize_invoices checks

    default_token_limit: int | None = Field(default=None, ge=0, le=MAX_INT64)
    default_spend_limit_micros: int | None = Field(default=None, ge=0, le=MAX_INT64)
    default_soft_ratio: float = Field(default=0.8, gt=0, le=1)
    default_grace_tokens: int = Field(default=0, ge=0, le=MAX_INT64)

    quota_max_staleness_seconds: float = Field(default=900.0, gt=0, le=366 * 24 * 3600)
    quota_fail_open: bool = True
    # A mirrored decision older than this is not used (read from MongoDB instead), so a
    # mirror write that failed leaves a superseded decision answerable this long at most.
    quota_cache_ttl_seconds: int = Field(default=360, gt=0, le=WEEK_SECONDS)
    redis_url: str | None = None

    celery_broker_url: str = "redis://localhost:6379/0"
    celery_result_backend: str | None = None
    meter_every_seconds: float = Field(default=300.0, gt=0, le=24 * 3600)  # daily at most
    task_soft_time_limit: int = Field(default=240, gt=0)
    task_time_limit: int = Field(default=300, gt=0)
    lock_ttl_seconds: int = Field(default=360, gt=0, le=WEEK_SECONDS)
    # `json`: the worker's and beat's log lines are JSON objects, one a line (shippable).
    log_format: Literal["text", "json"] = "text"

    @field_validator("default_token_limit", "default_spend_limit_micros", mode="before")
    @classmethod
    def _no_limit(cls, value: object) -> object:
        """`none` (any case), `null` or an empty value is no limit, as the docs write the
        default and `plan set --token-limit none` takes it."""
        if isinstance(value, str) and value.strip().lower() in ("", "none", "null"):
            return None
        return value

    @field_validator("registry_path", mode="before")
    @classmethod
    def _no_registry(cls, value: object) -> object:
        """`REGISTRY_PATH=` (set, empty: a blank `.env` line) is the shipped registry, as when
        it is unset: an empty path read as the working directory, and every run stopped."""
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("redis_url", "celery_broker_url", "celery_result_backend")
    @classmethod
    def _redis_urls(cls, url: str | None, info: ValidationInfo) -> str | None:
        """The Redis URLs parse as redis-py parses them (scheme, port, options), so that a
        typo is one line at start, not a failure of every run. The broker is Redis by
        design (the beat's lock and the per-org locks live there); a result backend may be
        another kind, and is only checked when it is Redis."""
        if not url:  # `REDIS_URL=` (set, empty) is no Redis, as when it is unset
            if info.field_name == "celery_broker_url":
                raise ValueError("the broker's Redis URL is required")
            return None
        if not is_utf8(url):  # no client could send it (a traceback mid-command, before)
            raise ValueError("must be UTF-8 text (it holds bytes that are not)")
        scheme = url.partition("://")[0]
        if info.field_name == "celery_result_backend" and scheme not in REDIS_SCHEMES:
            return url  # another backend (`rpc://`, `redis+socket://`, `db+...`): Celery's
        backend = info.field_name == "celery_result_backend" and scheme in ("redis", "rediss")
        if not backend:  # Celery reads a result backend's `ssl_cert_reqs` itself
            _check_certificate_option(url)
        try:
            parse_redis_url(url)
            if scheme in ("redis", "rediss"):
                _check_database_number(url)
            if info.field_name == "celery_broker_url":
                kombu_parse_url(url)  # Celery's own reading (it refuses `?password=`)
        # KeyError: kombu's reading of `?password=` once Celery has loaded (TypeError before)
        except (ValueError, TypeError, KeyError) as exc:
            broker = info.field_name == "celery_broker_url"
            raise ValueError(
                f"not a Redis URL{_parser_detail(exc, url)}: redis://[[user]:password@]host"
                "[:port][/db], with any '/', '?', '#' or '@' of the password percent-encoded"
                + (" (Celery takes no password option: put it before the '@')" if broker else "")
            ) from None
        if backend:
            _check_result_backend_options(url)
        else:
            _check_connection_options(url, broker=info.field_name == "celery_broker_url")
        return url

    @field_validator("ai_task_names")
    @classmethod
    def _non_empty_names(cls, names: list[str]) -> list[str]:
        if not names or any(not n for n in names):
            raise ValueError("AI_TASK_NAMES must list at least one non-empty task name")
        if any("\0" in n for n in names):  # no BSON regex holds one (`Source._scope`)
            raise ValueError("AI_TASK_NAMES must not contain a NUL character")
        if not all(is_utf8(n) for n in names):  # no query could encode it
            raise ValueError("AI_TASK_NAMES must be UTF-8 text (it holds bytes that are not)")
        return names

    @field_validator("mongo_db", "tasks_collection", "findings_collection", "billing_prefix")
    @classmethod
    def _mongo_names(cls, name: str, info: ValidationInfo) -> str:
        """Names MongoDB accepts, so that a typo is one line at start, not a database
        error after a command's first output. Only the billing prefix may be empty."""
        forbidden = DATABASE_NAME_FORBIDDEN if info.field_name == "mongo_db" else "$\0"
        if not name and info.field_name != "billing_prefix":
            raise ValueError("must not be empty")
        if not is_utf8(name):  # no command to the server could encode it
            raise ValueError("must be UTF-8 text (it holds bytes that are not)")
        bad = sorted({c for c in name if c in forbidden})
        if bad:
            shown = ", ".join("NUL" if c == "\0" else repr(c) for c in bad)
            raise ValueError(f"must not contain {shown}")
        if info.field_name != "mongo_db" and name.startswith("system."):
            raise ValueError("must not start with 'system.' (MongoDB's own collections)")
        return name

    @model_validator(mode="after")
    def _billing_apart_from_the_source(self) -> Settings:
        """The chore writes its own collections and only reads the platform's: a billing
        collection named like the tasks or findings collection would write into the source
        (SPEC §1), so such names are refused at start."""
        source = {
            self.tasks_collection: "TASKS_COLLECTION",
            self.findings_collection: "FINDINGS_COLLECTION",
        }
        for name in BILLING_COLLECTIONS:
            full = self.collection(name)
            if full in source:
                raise ValueError(
                    f"{source[full]}={full!r} is the name of the billing collection {name!r} "
                    f"(BILLING_PREFIX={self.billing_prefix!r}): the chore would write into "
                    "the platform's collection; give one of them another name"
                )
        return self

    def collection(self, name: str) -> str:
        """Name of a billing collection (`ledger` -> `billing_ledger`)."""
        return f"{self.billing_prefix}{name}"

    @property
    def safe_mongo_url(self) -> str:
        return redact_url(self.mongo_url)

    @property
    def lock_redis_url(self) -> str:
        """Where the per-org metering locks live: REDIS_URL, else the broker's Redis."""
        return self.redis_url or self.celery_broker_url

    @property
    def default_plan(self) -> Plan:
        """The plan of orgs without a `billing_plans` document."""
        return Plan(
            token_limit=self.default_token_limit,
            spend_limit_micros=self.default_spend_limit_micros,
            soft_ratio=self.default_soft_ratio,
            grace_tokens=self.default_grace_tokens,
        )


SECRET_SETTINGS = frozenset(
    {"mongo_url", "redis_url", "celery_broker_url", "celery_result_backend"}
)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings from the environment; a bad value is a `ConfigError` whose message
    names the variable, its value (redacted when it may hold a secret) and what is
    expected, on one line."""
    _check_env_file(Path(ENV_FILE))
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(settings_problem(exc)) from None
    except SettingsError as exc:  # a list or mapping setting whose value is not JSON
        field = str(exc).split('"')[1] if '"' in str(exc) else "?"
        raise ConfigError(
            f"{field.upper()} must be a JSON list, e.g. {field.upper()}='[\"ai\"]'"
        ) from None


def _check_env_file(path: Path) -> None:
    """A `.env` that cannot be read, or has a line python-dotenv cannot parse (which it
    would skip with a warning, its setting silently left at the default), is a
    ConfigError naming the file and the line."""
    if not path.is_file():  # as pydantic-settings: none, or not a file (a venv named .env)
        return
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else exc.strerror
        raise ConfigError(f"cannot read the settings file {path}: {reason}") from None
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            raise ConfigError(
                f"{path} line {binding.original.line} cannot be parsed (an unclosed quote?): "
                "fix it, or every setting it holds is left at its default"
            )


def settings_problem(exc: ValidationError) -> str:
    """One line for every invalid setting: `NAME='value': what is expected`."""
    problems = []
    for error in exc.errors():
        if not error["loc"]:  # a check of several settings: its message names them
            problems.append(str(error["msg"]).removeprefix("Value error, "))
            continue
        field = str(error["loc"][0])
        value = error.get("input")
        # as read: a variable's text as text, a number in a list's JSON as a number
        shown = redact_url(str(value)) if field in SECRET_SETTINGS else value
        said = f" {shown}" if shown == NO_SCHEME else f"={shown!r}"  # not quoted as if set so
        item = "".join(f"[{part}]" for part in error["loc"][1:])  # of a list: which item
        problems.append(f"{field.upper()}{item}{said}: {error['msg']}")
    return "invalid setting: " + "; ".join(problems)
