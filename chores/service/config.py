"""Celery's configuration, derived from the settings: Redis broker, late acks, time limits
that nest, two queues (the daily full pass on its own), JSON, UTC, and the beat schedule
(`celery_config`). docs/deploy.md explains the settings.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qs, urlsplit

from celery import Celery
from celery.app.backends import by_url
from celery.exceptions import ImproperlyConfigured
from celery.schedules import crontab
from kombu import Exchange, Queue

from chores.core.exceptions import ConfigError
from chores.core.logs import redact_urls
from chores.core.settings import Settings, redact_url
from chores.service.beat import beat_config
from chores.service.sockets import REDIS_SOCKET_TIMEOUT, over_tcp, redis_socket_options

RETRY_BACKOFF_MAX = 60  # seconds: the longest countdown between two retries
DEFAULT_QUEUE = "celery"  # the 5-minute fan-outs, their runs, the daily finalize
FULL_QUEUE = "billing-full"  # the daily full pass: its fan-out and its runs
SHUTDOWN_MARGIN = 30  # seconds: a worker's own shutdown after its last run has ended


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


def broker_socket_options(url: str) -> dict[str, Any]:
    """The broker's socket timeouts and keepalive (`service.sockets`), for a Redis broker
    only (`redis://`, `rediss://`): kombu would hand these names to another transport.

    With them, a publish on a dead connection (`meter_org.delay` in the fan-out, a beat
    tick) fails with kombu's `OperationalError` once Celery's publish retries are spent
    (`task_publish_retry_policy`: 3), each waiting at most `REDIS_SOCKET_TIMEOUT` on a new
    connection: 5 waits, about 50 s (`tests/integration/test_broker_partition.py`), not the
    kernel's ~15 min. An idle consumer is unaffected: its BRPOP is read once its socket is
    readable, and the server answers it within kombu's `brpop_timeout` (1 s); kombu drops
    a BRPOP connection whose answer is overdue by its `health_check_interval` (25 s).
    Celery's broker URL takes no socket option (`?socket_timeout=` is refused at start by
    Settings), so nothing here overrides an operator's choice."""
    return redis_socket_options() if over_tcp(url) else {}


def result_backend_sockets(url: str | None) -> dict[str, Any]:
    """A Redis result backend's socket timeouts (Celery's own: 120 s for a command, none for
    a connect): a dead connection fails a result's write or read within
    `REDIS_SOCKET_TIMEOUT`. An option in the URL (`?socket_timeout=30`) still wins: Celery
    lets the URL's options override these. Only for `redis://` and `rediss://`, the
    backends that read them over TCP. No keepalive: Celery takes no keepalive timings for
    its backend (the kernel's 2 h), and each use of a connection is bounded anyway."""
    if not over_tcp(url):
        return {}
    return {
        "redis_socket_timeout": REDIS_SOCKET_TIMEOUT,
        "redis_socket_connect_timeout": REDIS_SOCKET_TIMEOUT,
    }


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
        **result_backend_sockets(settings.celery_result_backend),
        "broker_transport_options": {
            # The full pass of a locked org is retried after LOCK_TTL_SECONDS (`tasks.meter_org`).
            "visibility_timeout": visibility_timeout(hard, max(RETRY_BACKOFF_MAX, ttl)),
            **broker_socket_options(settings.celery_broker_url),
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
