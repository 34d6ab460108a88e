"""Beat as a singleton (celery-redbeat: the schedule and a lock in the broker's Redis, so
only the beat holding the lock sends ticks, whatever the number started), its healthcheck
(`beat_health`), and the check that stops it at start when that Redis is not reached.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

from chores.core.redis_client import not_reached
from chores.core.settings import Settings, get_settings, redact_url
from chores.service.sockets import redis_socket_options

BEAT_KEY_PREFIX = "billing:beat:"  # redbeat's keys: `...:lock`, `...:schedule`, one per entry
BEAT_LOOP_MAX = 30.0  # seconds: the longest beat sleeps between two looks at its schedule


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
        # Not the broker's transport options (its visibility timeout is no client's option),
        # but the same socket timeouts: a beat whose Redis link died silently gets an error
        # within seconds, as when Redis is down (its lock's renewal fails, it exits and is
        # restarted), instead of hanging in a read for the kernel's ~15 min.
        "redbeat_redis_options": redis_socket_options(),
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
    `python -c 'import chores.service.beat as beat; raise SystemExit(beat.beat_health())'`"""
    import sys

    problem = beat_health_problem(get_settings())
    if problem is not None:
        print(f"beat unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


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
