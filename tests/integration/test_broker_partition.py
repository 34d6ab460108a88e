"""A broker link that dies without being closed (a network partition, a dropped NAT entry,
a frozen VM: no FIN, no RST), made by freezing a TCP proxy in front of the real Redis
(`support.tcpproxy`). A publish on it must fail within the socket timeout the service
sets (`service.sockets`), not wait out the kernel's retransmissions (~15 min).

The broker uses Redis database 7 (flushed before and after).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any
from urllib.parse import urlsplit

import redis
from celery.app.defaults import DEFAULTS

from chores.service.sockets import REDIS_SOCKET_TIMEOUT

from support import flushed_redis_db
from support.tcpproxy import FreezableProxy

# A process of the service sending a task as the fan-out does (`meter_all`), configured
# from its environment as `celery -A chores.celery_app` is: once over a healthy link (its
# connection is then pooled), then, told on stdin, once more over the same link.
PUBLISHER = """
import sys, time
from kombu.exceptions import OperationalError
from chores.tasks import meter_org

meter_org.delay("acme")
print("sent", flush=True)
sys.stdin.readline()
started = time.monotonic()
try:
    meter_org.delay("globex")
except OperationalError as exc:
    print(f"failed after {time.monotonic() - started:.1f} s: {type(exc).__name__}: {exc}")
else:
    print("sent again")
"""

# Celery makes 1 + max_retries tries of a publish (3 retries by default), and kombu's
# reconnection between two tries makes one more handshake: each waits at most the socket
# timeout on a dead link (seen: 5 waits, 50.6 s). Half as much again for a loaded machine.
PUBLISH_WAITS = DEFAULTS["task_publish_retry_policy"]["max_retries"] + 2
BOUND = 1.5 * PUBLISH_WAITS * REDIS_SOCKET_TIMEOUT


def test_a_publish_over_a_broker_link_gone_silent_fails_within_the_socket_timeouts(
    redis_base_url: str, tmp_path: Any
) -> None:
    """Without a socket timeout on the broker's connection (Celery's default) the second
    publish waits for a reply that never comes: it still hung after 120 s, the caller (the
    fan-out, beat) with it. With one it fails with kombu's `OperationalError`, which the
    fan-out's retries take (`tasks.RETRY`), within `BOUND`."""
    address = urlsplit(redis_base_url)
    with (
        flushed_redis_db(redis_base_url, 7) as direct,
        FreezableProxy(address.hostname or "127.0.0.1", address.port or 6379) as proxy,
    ):
        env = {
            **os.environ,
            "CELERY_BROKER_URL": f"redis://127.0.0.1:{proxy.port}/7",
            "MONGO_URL": "mongodb://127.0.0.1:1/billing",  # never reached: nothing runs here
        }
        for unused in ("CELERY_RESULT_BACKEND", "REDIS_URL"):
            env.pop(unused, None)
        publisher = subprocess.Popen(
            [sys.executable, "-c", PUBLISHER],
            env=env,
            cwd=tmp_path,  # no `.env` of the repository read
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert publisher.stdout is not None and publisher.stdin is not None
            assert publisher.stdout.readline() == "sent\n", publisher.communicate(timeout=30)
            queued = redis.Redis.from_url(direct)
            assert queued.llen("celery") == 1  # the healthy link reached the real Redis
            proxy.freeze()
            started = time.monotonic()
            publisher.stdin.write("go\n")
            publisher.stdin.flush()
            out, err = publisher.communicate(timeout=BOUND)
        finally:
            if publisher.poll() is None:  # hung past BOUND (or the test failed before)
                publisher.kill()
                publisher.communicate()
        took = time.monotonic() - started
        assert publisher.returncode == 0, err
        said = out.strip()
        assert said.startswith("failed after "), said
        assert "OperationalError: Timeout reading from" in said, said
        # It waited for the timeout (the link really was silent, nothing refused it)...
        assert took >= REDIS_SOCKET_TIMEOUT, said
        assert took < BOUND, said  # ...and no longer than its tries' timeouts
        assert queued.llen("celery") == 1  # the second message never reached Redis
