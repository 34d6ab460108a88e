"""The Celery app: Redis broker, late acks, time limits, JSON, UTC, and the beat schedule.

    celery -A chores.celery_app worker --loglevel=INFO
    celery -A chores.celery_app beat --loglevel=INFO     # one sends; any other waits

Beat runs celery-redbeat's scheduler: the schedule and a lock in Redis, so only the
beat holding the lock sends ticks, whatever the number started (`beat_config`).

The tasks are in `chores.tasks`; docs/deploy.md explains the settings.
"""

from __future__ import annotations

import json
import logging
import math
import ssl
import sys
from datetime import UTC, datetime
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import click
from celery import Celery
from celery.app.backends import by_url
from celery.exceptions import ImproperlyConfigured
from celery.schedules import crontab
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    celeryd_init,
    import_modules,
)
from kombu import Exchange, Queue

from chores.core.exceptions import ConfigError
from chores.core.local_store import SCHEME as LOCAL_STORE_SCHEME
from chores.core.logs import JsonFormatter, redact_urls, use_log_format
from chores.core.redis_client import not_reached, refused_credentials
from chores.core.settings import REDIS_SCHEMES, Settings, get_settings, redact_url

RETRY_BACKOFF_MAX = 60  # seconds: the longest countdown between two retries
DEFAULT_QUEUE = "celery"  # the 5-minute fan-outs, their runs, the daily finalize
FULL_QUEUE = "billing-full"  # the daily full pass: its fan-out and its runs
SHUTDOWN_MARGIN = 30  # seconds: a worker's own shutdown after its last run has ended
BEAT_KEY_PREFIX = "billing:beat:"  # redbeat's keys: `...:lock`, `...:schedule`, one per entry
BEAT_LOOP_MAX = 30.0  # seconds: the longest beat sleeps between two looks at its schedule


def store_problem(settings: Settings) -> str | None:
    """Why a worker cannot bill into the database MONGO_URL names, or None.

    A `file://` store is saved by the `chore` command that opened it, on exit; a worker
    would bill into its memory and lose it all (and its pool processes would lock each
    other out of the file)."""
    if settings.mongo_url.startswith(LOCAL_STORE_SCHEME):
        return (
            f"MONGO_URL {settings.safe_mongo_url} is a local store, saved only by the `chore` "
            "command that opens it: a worker's billing would be lost. Point the worker at "
            "MongoDB (docs/deploy.md)"
        )
    return None


def credentials_problem(settings: Settings) -> str | None:
    """The first Redis of the service (its broker, the per-org locks', a Redis result
    backend) that refuses the user or password its URL carries, in one line, or None.

    Celery retries a broker that refuses its credentials like one that is down (a hundred
    times over hours, the worker idle meanwhile), and beat stops with two tracebacks.
    Credentials do not fix themselves: the service stops at start instead. A Redis not
    reached now is left to Celery's retries."""
    urls = {
        "CELERY_BROKER_URL": settings.celery_broker_url,
        "REDIS_URL": settings.lock_redis_url,
        "CELERY_RESULT_BACKEND": settings.celery_result_backend,
    }
    checked: set[str] = set()
    for name, url in urls.items():
        if url is None or url in checked or url.partition("://")[0] not in REDIS_SCHEMES:
            continue
        checked.add(url)
        reply = refused_credentials(url)
        if reply is None:
            continue
        if urlsplit(url).password is None:
            return (
                f"{name} {redact_url(url)}: Redis asks for a password, and the URL gives "
                "none: put it in the URL before the host, as [user]:password@ (docs/deploy.md)"
            )
        return (
            f"{name} {redact_url(url)}: Redis refused its user or password "
            f"({reply.rstrip('.')}); fix the URL (docs/deploy.md)"
        )
    return None


def visibility_timeout(hard_time_limit: int, longest_countdown: float = RETRY_BACKOFF_MAX) -> int:
    """Seconds before Redis hands an unacknowledged message to another worker: longer
    than a run plus the longest retry countdown (a retried message waits out its
    countdown unacknowledged at a worker), or a slow run would be started twice."""
    return max(3600, 2 * (hard_time_limit + int(longest_countdown)))


def stop_timeout(settings: Settings) -> int:
    """Seconds a supervisor must give a worker between SIGTERM and SIGKILL: its run
    lasts at most the hard time limit (the soft shutdown no longer), then it exits."""
    return settings.task_time_limit + SHUTDOWN_MARGIN


# Where a metering task's message holds `full` when it is given by position.
FULL_POSITION = {"chores.tasks.meter_all": 0, "chores.tasks.meter_org": 1}


def full_given(name: str, args: Any, kwargs: Any) -> Any:
    """The `full` a message of task `name` holds, by keyword or by position, as sent (not
    checked: the task refuses one that is not a bool); False when it holds none."""
    position = FULL_POSITION.get(name)
    by_position = args[position] if position is not None and len(args or ()) > position else False
    return (kwargs or {}).get("full", by_position)


def route_full_pass(
    name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **_: Any
) -> dict[str, str] | None:
    """Celery router: the daily full pass (`meter_all(full=True)` and each
    `meter_org(org, full=True)` it queues, retries included; `full` by keyword or by
    position) goes to `FULL_QUEUE`, so its long runs never hold up the 5-minute runs;
    everything else to `DEFAULT_QUEUE`."""
    if name in FULL_POSITION and full_given(name, args, kwargs) is True:
        return {"queue": FULL_QUEUE}
    return None


def beat_loop_seconds(settings: Settings) -> float:
    """How long beat sleeps at most between two ticks; a beat waiting for the lock tries
    to take it as often."""
    return min(BEAT_LOOP_MAX, settings.meter_every_seconds)


def beat_lock_timeout(settings: Settings) -> int:
    """Seconds the beat lock lives unless renewed: the beat holding it renews it at every
    tick, so it expires only once that beat is gone (killed, hung, host lost); a waiting
    beat then takes it within one more loop. redbeat's own ratio (5 loops), at least 5 s."""
    return max(5, math.ceil(5 * beat_loop_seconds(settings)))


def beat_config(settings: Settings) -> dict[str, Any]:
    """Beat as a singleton: celery-redbeat keeps the schedule in the broker's Redis and sends
    ticks only while holding its lock there. A second beat (`--scale beat=2`, a redeploy
    overlapping the old one) blocks on the lock at start-up and takes over when the first
    stops (released at once on SIGTERM; after `beat_lock_timeout` when killed). The
    schedule's state (when each entry last ran) is in Redis too, so the new beat sends
    what fell due meanwhile, once."""
    return {
        "beat_scheduler": "redbeat.RedBeatScheduler",
        "beat_max_loop_interval": beat_loop_seconds(settings),
        "redbeat_redis_url": settings.celery_broker_url,
        "redbeat_redis_options": {},  # not the broker's transport options
        "redbeat_key_prefix": BEAT_KEY_PREFIX,
        "redbeat_lock_timeout": beat_lock_timeout(settings),
    }


def beat_health_problem(settings: Settings, now: datetime | None = None) -> str | None:
    """None while the 5-minute fan-out is being sent, by this beat or by the one holding
    the lock; else what is wrong, in one line (the compose healthcheck of beat)."""
    import redis
    from redbeat.decoder import RedBeatJSONDecoder

    now = now or datetime.now(UTC)
    client = redis.Redis.from_url(settings.celery_broker_url, socket_timeout=5)
    try:
        meta = client.hget(BEAT_KEY_PREFIX + "meter-all", "meta")
    except redis.RedisError as exc:
        return f"no Redis: {type(exc).__name__}"
    finally:
        client.close()
    if meta is None:
        return "meter-all was never scheduled (no beat started)"
    last = json.loads(meta, cls=RedBeatJSONDecoder).get("last_run_at")
    if last is None:
        return "meter-all was never sent"
    age = (now - last).total_seconds()
    limit = 2 * settings.meter_every_seconds + beat_lock_timeout(settings)
    if age > limit:
        return f"meter-all last sent {age:.0f} s ago (more than {limit:.0f} s)"
    return None


def beat_health() -> int:
    """The beat healthcheck's exit code: 0 healthy, 1 not (its reason on stderr).
    `python -c 'import chores.celery_app as c; raise SystemExit(c.beat_health())'`"""
    import sys

    problem = beat_health_problem(get_settings())
    if problem is not None:
        print(f"beat unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


def result_backend_problem(url: str | None) -> str | None:
    """Why Celery cannot load or set up the backend CELERY_RESULT_BACKEND names, in one
    line; None when it can. Loading fails on a scheme Celery does not know or a backend
    whose library is not installed (`db+postgresql://` without SQLAlchemy); setting up, on
    what the backend refuses in its URL (`rediss://` without `ssl_cert_reqs`, a `file://`
    folder that does not exist). Built here on a throwaway app, as the worker builds it
    (no backend connects before its first use). Before, the worker found out once started,
    and stopped on an "Unrecoverable error" and a traceback."""
    if url is None:
        return None
    try:
        backend, backend_url = by_url(url)
    except (ImportError, AttributeError) as exc:  # a module, or a `module:Class` that is not
        return (
            f"CELERY_RESULT_BACKEND {redact_url(url)}: Celery cannot load its backend ({exc}): "
            "install that backend's library, or use a Redis URL"
        )
    try:
        backend(app=Celery(set_as_current=False), url=backend_url)
    except (ValueError, ImproperlyConfigured) as exc:
        said = redact_urls(" ".join(str(exc).split()))
        return f"CELERY_RESULT_BACKEND {redact_url(url)}: the backend refuses it: {said}"
    return None


def broker_tls(url: str) -> dict[str, Any]:
    """A `rediss://` broker's certificate is checked, as redis-py checks REDIS_URL's and
    celery-redbeat beat's. Celery's own default is not to ("Secure redis scheme specified
    (rediss) with no ssl options, defaulting to insecure SSL behaviour", a warning), unless
    the URL says otherwise (`?ssl_cert_reqs=none`), which it still may."""
    parts = urlsplit(url)
    if parts.scheme != "rediss" or "ssl_cert_reqs" in parse_qs(parts.query):
        return {}
    return {"broker_use_ssl": {"ssl_cert_reqs": ssl.CERT_REQUIRED}}


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery's settings, derived from ours (time limits checked to nest)."""
    soft, hard = settings.task_soft_time_limit, settings.task_time_limit
    ttl = settings.lock_ttl_seconds
    if not soft < hard < ttl:
        raise ConfigError(
            "time limits must nest: TASK_SOFT_TIME_LIMIT < TASK_TIME_LIMIT < LOCK_TTL_SECONDS, "
            f"got {soft} < {hard} < {ttl}"
        )
    # An idle org's decision is made again by each meter-all (`tasks.meter_all`): ticks
    # further apart than a decision stays trusted would leave it `unknown` between them,
    # and a blocked org let through under the fail-open policy.
    every, staleness = settings.meter_every_seconds, settings.quota_max_staleness_seconds
    if not every + hard < staleness:
        raise ConfigError(
            "decisions must stay fresh between two meter-all ticks: METER_EVERY_SECONDS + "
            f"TASK_TIME_LIMIT < QUOTA_MAX_STALENESS_SECONDS, got {every:g} + {hard} < "
            f"{staleness:g}: raise QUOTA_MAX_STALENESS_SECONDS with them (docs/deploy.md)"
        )
    problem = result_backend_problem(settings.celery_result_backend)
    if problem is not None:
        raise ConfigError(problem)
    return {
        "broker_url": settings.celery_broker_url,
        **broker_tls(settings.celery_broker_url),
        "result_backend": settings.celery_result_backend,
        # The full pass of a locked org is retried after LOCK_TTL_SECONDS (`tasks.meter_org`).
        "broker_transport_options": {
            "visibility_timeout": visibility_timeout(hard, max(RETRY_BACKOFF_MAX, ttl))
        },
        # Ack after the run: a worker that dies mid-run leaves its message to be redelivered,
        # which is safe because every run can be repeated without billing twice.
        "task_acks_late": True,
        # ...and so does a pool process killed under it (OOM killer, SIGKILL): without this
        # Celery acknowledges the message as failed (`WorkerLostError`) and nothing is
        # redelivered. With it the message goes back on the queue at once, and its next run
        # takes over the dead run's lock (same task id, `_lock`).
        "task_reject_on_worker_lost": True,
        # ...but not forever: a run that kills its process every time (it always runs out
        # of memory) is sent again as a retry instead, counted against `max_retries`, after
        # `default_retry_delay` (tasks.RETRY), so it ends as a "failed for good" line that
        # names its org (`tasks._log_a_lost_worker`). Rejection stays the fallback when
        # that retry cannot be sent.
        "task_retry_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # Two queues: a worker started without -Q consumes both (nothing is left unread);
        # compose runs one worker per queue (docker-compose.yml, docs/deploy.md).
        "task_default_queue": DEFAULT_QUEUE,
        "task_queues": tuple(
            Queue(q, Exchange(q), routing_key=q) for q in (DEFAULT_QUEUE, FULL_QUEUE)
        ),
        "task_routes": (route_full_pass,),
        # A broker connection lost under a run lets the run finish (Celery's default in 5.x).
        # Cancelling it instead acknowledges its message as revoked once the worker is back:
        # lost, a daily full pass with it. Not cancelled, the run's acknowledgement is lost
        # with the connection, so the message is handed out again after its visibility
        # timeout and the run is repeated, which bills nothing twice.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # SIGTERM (docker stop) is a warm shutdown: the running run finishes, cut at the
        # latest by the hard limit. A cold shutdown (SIGQUIT, a second Ctrl+C) first waits
        # as long (the soft shutdown), then cancels what still runs: with late acks its
        # message goes back on the queue. The supervisor's stop timeout must exceed both
        # (`stop_timeout`; docker-compose.yml's stop_grace_period, docs/deploy.md).
        "worker_soft_shutdown_timeout": float(hard),
        "broker_connection_retry_on_startup": True,
        # stdout and stderr are not logged: a traceback Python prints on the way out
        # would be one log record per write (a thousand `^` lines for one Redis outage);
        # the exception is already logged once, with its traceback (`_log_uncaught`).
        "worker_redirect_stdouts": False,
        "task_soft_time_limit": soft,
        "task_time_limit": hard,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "timezone": "UTC",
        "enable_utc": True,
        **beat_config(settings),
        "beat_schedule": {
            "meter-all": {
                "task": "chores.tasks.meter_all",
                "schedule": settings.meter_every_seconds,
                # A fan-out nobody ran before the next one is redundant: the next covers it.
                "options": {"expires": settings.meter_every_seconds},
            },
            # The safety net: every org re-read in full (a runner rewritten long after it ended).
            "meter-all-full": {
                "task": "chores.tasks.meter_all",
                "schedule": crontab(minute="5", hour="0"),
                "kwargs": {"full": True},
            },
            "finalize-invoices": {
                "task": "chores.tasks.finalize_invoices",
                "schedule": crontab(minute="15", hour="0"),
            },
        },
    }


def stop_line(line: str, settings: Settings) -> str:
    """The one line the worker or beat stops with: a JSON record under `LOG_FORMAT=json`
    (Celery's logging is not set up yet, and a log shipper reads JSON lines only)."""
    if settings.log_format != "json":
        return line
    record = logging.LogRecord("chores", logging.CRITICAL, __file__, 0, line, None, None)
    return JsonFormatter().format(record)


def _configured() -> dict[str, Any]:
    """Celery's settings from the environment. A bad one stops the `celery` command (worker,
    beat) with its one line (redacted, as `get_settings` words it), not Celery's usage text
    and a traceback: SystemExit, which Celery's loading of the app does not catch; a JSON
    record under `LOG_FORMAT=json` when the settings could be read. Any other importer gets
    the `ConfigError`."""
    settings: Settings | None = None
    try:
        settings = get_settings()
        return celery_config(settings)
    except ConfigError as exc:
        if _run_by_celery_command():
            line = f"chore service: {exc}"
            raise SystemExit(line if settings is None else stop_line(line, settings)) from None
        raise


def _run_by_celery_command() -> bool:
    """Whether this process is the `celery` command: its script runs `celery.__main__`'s
    `main`, `python -m celery` runs that module as `__main__` (a script merely named
    celery does neither)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return "celery.__main__" in sys.modules or getattr(spec, "name", None) == "celery.__main__"


app = Celery("chores", include=["chores.tasks"])
app.conf.update(_configured())


@celeryd_init.connect
def _refuse_a_local_store(**_: Any) -> None:
    """`celery worker` stops before it starts on a store it cannot bill into."""
    settings = get_settings()
    problem = store_problem(settings)
    if problem is not None:  # not Exception: Celery would log it on
        raise SystemExit(stop_line(f"chore worker: {problem}", settings))


@import_modules.connect
def _refuse_refused_credentials(**_: Any) -> None:
    """`celery worker` and `celery beat` stop before they start (each imports the task
    modules first) when a Redis refuses their credentials (`credentials_problem`)."""
    if not _run_by_celery_command():
        return
    settings = get_settings()
    problem = credentials_problem(settings)
    if problem is None and _celery_subcommand() == "beat":
        problem = beat_redis_problem(settings)
    if problem is not None:
        # not Exception: Celery would log it on
        raise SystemExit(stop_line(f"chore service: {problem}", settings))


def _celery_subcommand() -> str | None:
    """`worker`, `beat`, ...: the `celery` subcommand running now (click's context)."""
    context = click.get_current_context(silent=True)
    return None if context is None else context.info_name


def beat_redis_problem(settings: Settings) -> str | None:
    """Beat keeps its schedule and its lock in the broker's Redis (redbeat): not reached at
    start, beat stopped with two tracebacks (182 lines), again at every restart. It stops
    with this one line instead; its supervisor starts it again (compose: `restart:
    unless-stopped`), and once Redis answers it goes on where the schedule says. (A
    worker waits for its broker by itself.)"""
    url = settings.celery_broker_url
    reason = not_reached(url)
    if reason is None:
        return None
    return (
        f"beat: CELERY_BROKER_URL {redact_url(url)}: Redis not reached ({reason.rstrip('.')}); "
        "beat keeps its schedule and lock there: it stops, and starts again with its "
        "supervisor (docs/deploy.md)"
    )


@after_setup_logger.connect
@after_setup_task_logger.connect
def _log_format(logger: logging.Logger, **_: Any) -> None:
    """Celery's loggers as set up by the worker and beat: URLs redacted in every line,
    JSON lines when `LOG_FORMAT=json` (`chores.core.logs`); from then on, an exception that
    stops the worker or beat is logged through them too."""
    use_log_format(logger, get_settings().log_format)
    sys.excepthook = _log_uncaught


def _log_uncaught(
    kind: type[BaseException], exc: BaseException, traceback: TracebackType | None
) -> None:
    """One record through the loggers set up above (redacted; JSON with `LOG_FORMAT=json`)
    instead of Python's raw traceback on stderr, which nothing redacts."""
    logging.getLogger("chores").critical(
        "stopped by %s", kind.__name__, exc_info=(kind, exc, traceback)
    )
