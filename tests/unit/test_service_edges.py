"""chores/service (config, checks, beat) at its edges: found untested by mutation testing
(stop 55). Pure: no Redis, no worker."""

from __future__ import annotations

import json
import socket

import pytest

from chores import Settings, tasks
from chores.core.exceptions import ConfigError
from chores.service.checks import BROKER_SILENCE_SECONDS, mongo_url_problem, stop_line
from chores.service.config import (
    RETRY_BACKOFF_MAX,
    SHUTDOWN_MARGIN,
    broker_socket_options,
    celery_config,
    result_backend_sockets,
    stop_timeout,
    visibility_timeout,
)
from chores.service.sockets import REDIS_SOCKET_TIMEOUT


def test_the_visibility_timeout_is_the_documented_formula():
    """docs/deploy.md: `max(3600, 2 x (TASK_TIME_LIMIT + max(60, LOCK_TTL_SECONDS)))`,
    3600 s with the defaults."""
    config = celery_config(Settings())
    assert config["broker_transport_options"]["visibility_timeout"] == 3600
    big = Settings(
        task_soft_time_limit=7000,
        task_time_limit=7200,
        lock_ttl_seconds=7300,
        quota_max_staleness_seconds=7800,
    )
    assert celery_config(big)["broker_transport_options"]["visibility_timeout"] == 2 * (7200 + 7300)
    assert visibility_timeout(2000) == 2 * (2000 + 60)  # the longest backoff countdown
    assert visibility_timeout(1799, 0) == 3600 and visibility_timeout(1801, 0) == 3602


def test_the_retry_backoff_is_capped_at_a_minute():
    """docs/deploy.md: the n-th retry waits a random 0 to min(2^(n-1), 60) s."""
    assert RETRY_BACKOFF_MAX == 60
    for task in (tasks.meter_all, tasks.meter_org, tasks.finalize_invoices):
        assert task.retry_backoff_max == 60


def test_the_stop_timeout_is_the_hard_limit_plus_thirty_seconds():
    """docs/deploy.md: the grace period is above TASK_TIME_LIMIT + 30 s (`stop_timeout`)."""
    assert SHUTDOWN_MARGIN == 30
    assert stop_timeout(Settings()) == 330
    assert stop_timeout(Settings(task_soft_time_limit=900, task_time_limit=1000)) == 1030


def test_an_in_process_mongo_url_is_no_problem_to_pymongo_and_a_bad_one_is():
    """`mongomock://` (and `file://`) are not pymongo's to read; a URL it cannot read is
    one line, without its password (as the worker's start check says it)."""
    assert mongo_url_problem(Settings(mongo_url="mongomock://worker", redis_url=None)) is None
    said = mongo_url_problem(
        Settings(mongo_url="mongodb://billing:Xsecret@db:notaport/", redis_url=None)
    )
    assert said is not None and "is not a valid MongoDB URL" in said and "Xsecret" not in said


def test_time_limits_that_are_equal_do_not_nest():
    """TASK_SOFT_TIME_LIMIT < TASK_TIME_LIMIT < LOCK_TTL_SECONDS, strictly: a lock that
    expires as the hard limit cuts the run lets a second run in under a live one."""
    with pytest.raises(ConfigError, match="got 300 < 300 < 360"):
        celery_config(Settings(task_soft_time_limit=300, task_time_limit=300))
    with pytest.raises(ConfigError, match="got 240 < 360 < 360"):
        celery_config(
            Settings(task_time_limit=360, lock_ttl_seconds=360, quota_max_staleness_seconds=1000)
        )
    assert celery_config(
        Settings(task_soft_time_limit=299, task_time_limit=300, lock_ttl_seconds=301)
    )


def test_a_worker_retries_its_broker_at_start_and_does_not_log_what_is_printed():
    """docs/deploy.md: a worker waits for its broker by itself (`beat_redis_problem`: only
    beat stops on it); stdout and stderr are not logged (`worker_redirect_stdouts` off)."""
    config = celery_config(Settings())
    assert config["broker_connection_retry_on_startup"] is True
    assert config["worker_redirect_stdouts"] is False


def test_checking_the_result_backend_leaves_the_current_app_alone():
    """The result backend is built on a throwaway app: it must not become Celery's current
    app (what `current_app`, `AsyncResult` without an app... then use)."""
    import celery

    before = celery.current_app._get_current_object()
    celery_config(Settings(celery_result_backend="redis://127.0.0.1:1/2"))
    assert celery.current_app._get_current_object() is before


def test_the_stop_line_is_the_plain_line_in_text_and_one_json_record_under_json():
    line = "chore service: REDIS_URL redis://:***@cache:6379/0: Redis refused its password"
    assert stop_line(line, Settings()) == line  # LOG_FORMAT=text, the default
    record = json.loads(stop_line(line, Settings(log_format="json")))
    assert (record["level"], record["logger"], record["message"]) == ("CRITICAL", "chores", line)


# Redis connections that die silently (docs/deploy.md) -------------------------------
def test_a_redis_broker_gets_socket_timeouts_and_keepalive_beside_its_visibility_timeout():
    """A publish on a broker link that died without a FIN fails within REDIS_SOCKET_TIMEOUT
    (tests/integration/test_broker_partition.py); an idle one is probed by the kernel."""
    for url in ("redis://cache:6379/0", "rediss://cache:6380/0"):
        options = celery_config(Settings(celery_broker_url=url))["broker_transport_options"]
        assert options["visibility_timeout"] == 3600  # kept
        assert options["socket_timeout"] == options["socket_connect_timeout"] == 10
        assert options["socket_keepalive"] is True
        assert options["socket_keepalive_options"] == {
            socket.TCP_KEEPIDLE: 60,
            socket.TCP_KEEPINTVL: 10,
            socket.TCP_KEEPCNT: 3,
        }
        # redis-py would resend a timed-out command; kombu then stops batching publishes
        assert not options.get("retry_on_timeout")
    assert REDIS_SOCKET_TIMEOUT == BROKER_SILENCE_SECONDS  # the start check's PING waits as long
    assert broker_socket_options("amqp://guest:guest@rabbit:5672//") == {}  # not kombu-redis's


def test_a_redis_result_backend_times_out_in_seconds_unless_its_url_says_otherwise():
    """Celery's own: 120 s for a command, no connect timeout. An operator's
    `?socket_timeout=` in CELERY_RESULT_BACKEND still wins, as Celery reads the URL last."""
    from celery import Celery
    from celery.backends.redis import RedisBackend

    url = "redis://cache:6379/2"
    config = celery_config(Settings(celery_result_backend=url))
    assert config["redis_socket_timeout"] == config["redis_socket_connect_timeout"] == 10
    app = Celery(set_as_current=False)
    app.conf.update(config)
    params = RedisBackend(app=app, url=url).connparams
    assert params["socket_timeout"] == params["socket_connect_timeout"] == 10
    given = RedisBackend(app=app, url=url + "?socket_timeout=30").connparams
    assert given["socket_timeout"] == 30
    for other in (None, "rpc://", "redis+socket:///tmp/redis.sock"):
        assert result_backend_sockets(other) == {}
    assert "redis_socket_timeout" not in celery_config(Settings(celery_result_backend="rpc://"))


def test_beats_redis_client_has_the_same_timeouts_and_not_the_visibility_timeout():
    """redbeat's client (the schedule, beat's lock): a beat whose link died silently fails
    its tick or its lock's renewal in seconds and exits, instead of hanging ~15 min.
    Built, not connected."""
    from celery import Celery
    from redbeat.schedulers import get_redis

    app = Celery(set_as_current=False)
    app.conf.update(celery_config(Settings()))
    kwargs = get_redis(app).connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == kwargs["socket_connect_timeout"] == 10
    assert kwargs["socket_keepalive"] is True and kwargs["socket_keepalive_options"]
    assert "visibility_timeout" not in kwargs
