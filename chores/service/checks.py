"""What stops the worker or beat at start, in one line: a store it cannot bill into
(`store_problem`), a MONGO_URL pymongo cannot read (`mongo_url_problem`), a Redis refusing
its credentials (`redis_problem`); the line itself as the logs expect it
(`stop_line`).
"""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

from chores.core.db import IN_PROCESS_SCHEMES, mongo_client
from chores.core.exceptions import ConfigError, DatabaseUnavailable
from chores.core.local_store import SCHEME as LOCAL_STORE_SCHEME
from chores.core.logs import JsonFormatter
from chores.core.redis_client import answers_nothing, refused_credentials, speaks_without_tls
from chores.core.settings import REDIS_SCHEMES, Settings, redact_url


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


def mongo_url_problem(settings: Settings) -> str | None:
    """Why pymongo cannot read MONGO_URL (`db.mongo_client`'s one line), or None; nothing is
    connected to. Without it a worker started, answered its healthcheck, then failed every
    run on it. A `mongodb+srv://` name not resolved now is left to the runs' retries."""
    if settings.mongo_url.startswith(IN_PROCESS_SCHEMES):
        return None
    try:
        mongo_client(settings, connect=False).close()
    except ConfigError as exc:
        return str(exc)
    except DatabaseUnavailable:
        return None
    return None


# How long the broker may take to answer a PING at start: twice Redis's default
# `busy-reply-threshold` (5 s), after which a busy Redis answers `-BUSY`.
BROKER_SILENCE_SECONDS = 10.0


def redis_problem(settings: Settings) -> str | None:
    """The first Redis of the service (its broker, the per-org locks', a Redis result
    backend) that refuses the user or password its URL carries, or that speaks no TLS to
    a `rediss://` URL; or a broker that takes a connection and never answers a PING
    (`answers_nothing`); in one line, or None.

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
        # First, in plain text: a TLS client's handshake with such a Redis only ends with
        # its timeout (5 s per check).
        if urlsplit(url).scheme == "rediss" and speaks_without_tls(url):
            return (
                f"{name} {redact_url(url)}: that Redis speaks no TLS, and a rediss:// "
                "client's TLS handshake with it only ends in a timeout: use redis://, or "
                "turn TLS on at the server (docs/deploy.md)"
            )
        # Only the broker's connection is checked so: Celery retries a broker that times out
        # as one that is down, for an hour and more (`service.sockets`; before it had no
        # timeout, it waited for good); the others fail their use (`redis_client`, the
        # result backend's timeouts), and a Redis busy for a few seconds answers.
        silent = name == "CELERY_BROKER_URL" and urlsplit(url).scheme in ("redis", "rediss")
        if silent and answers_nothing(url, timeout=BROKER_SILENCE_SECONDS):
            return (
                f"{name} {redact_url(url)}: the server there took the connection but did not "
                f"answer a PING within {BROKER_SILENCE_SECONDS:g} s (another service's port, "
                "such as MongoDB's, or a Redis that is stopped): Celery would retry it as a "
                "Redis that is down, a hundred times; check the host and port (docs/deploy.md)"
            )
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


def stop_line(line: str, settings: Settings) -> str:
    """The one line the worker or beat stops with: a JSON record under `LOG_FORMAT=json`
    (Celery's logging is not set up yet, and a log shipper reads JSON lines only)."""
    if settings.log_format != "json":
        return line
    record = logging.LogRecord("chores", logging.CRITICAL, __file__, 0, line, None, None)
    return JsonFormatter().format(record)
