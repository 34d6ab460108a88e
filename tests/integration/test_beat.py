"""Beat is a singleton whatever the number started: real `celery beat` processes over the
real Redis (celery-redbeat's scheduler and lock). Redis DB 10, flushed before and after.

Who sent a tick is in the message itself: Celery's `origin` header is `gen<pid>@<host>`
of the sending process.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from redbeat.decoder import RedBeatJSONEncoder

from chores import Settings
from chores.service import beat
from chores.service.beat import (
    BEAT_KEY_PREFIX,
    beat_config,
    beat_health_problem,
    beat_lock_timeout,
    beat_loop_seconds,
)
from chores.service.config import DEFAULT_QUEUE

from support import closed_port, dies_with_the_tests, flushed_redis_db

EVERY = 1  # METER_EVERY_SECONDS of the beats under test: a tick a second, 1 s loop, 5 s lock


@pytest.fixture
def broker_url(redis_base_url: str) -> Iterator[str]:
    with flushed_redis_db(redis_base_url, 10) as url:
        yield url


def wait_for(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


class Beat:
    """One `celery -A chores.celery_app beat` process, its log in a file."""

    def __init__(self, broker_url: str, log: Path):
        self.log = log
        env = {
            **os.environ,
            "CELERY_BROKER_URL": broker_url,
            "METER_EVERY_SECONDS": str(EVERY),
        }
        command = [sys.executable, "-m", "celery", "-A", "chores.celery_app", "beat"]
        with open(log, "w") as out:
            self.process = subprocess.Popen(
                [*command, "--loglevel=DEBUG"],
                env=env,
                cwd=log.parent,
                stdout=out,
                stderr=out,
                start_new_session=True,  # its own process group: killed whole at the end
                preexec_fn=dies_with_the_tests,
            )
        self.pid = self.process.pid

    def text(self) -> str:
        return self.log.read_text()

    def waiting_for_the_lock(self) -> bool:
        return "beat: Acquiring lock" in self.text()

    def kill(self, sig: signal.Signals) -> None:
        if self.process.poll() is None:
            os.killpg(self.pid, sig)
        self.process.wait(timeout=30)


def sent(url: str) -> list[tuple[int, datetime]]:
    """(pid of the sender, when it sent it) of each `meter_all` queued, oldest first."""
    with redis.Redis.from_url(url) as client:
        messages = [json.loads(m) for m in client.lrange(DEFAULT_QUEUE, 0, -1)]
    out = []
    for message in reversed(messages):  # LPUSHed: the newest first
        headers = message["headers"]
        assert headers["task"] == "chores.tasks.meter_all"
        assert json.loads(base64.b64decode(message["body"]))[1] == {}  # not the full pass
        pid = int(headers["origin"].split("@")[0].removeprefix("gen"))
        # a fan-out expires one interval after it was sent (celery_app's beat_schedule)
        out.append((pid, datetime.fromisoformat(headers["expires"]) - timedelta(seconds=EVERY)))
    return out


def ticks(url: str) -> list[int]:
    """The pid of the sender of each `meter_all` queued, oldest first."""
    return [pid for pid, _ in sent(url)]


def test_beat_runs_redbeat_with_a_lock_renewed_every_loop_and_expiring_after_five():
    config = beat_config(Settings())
    assert config["beat_scheduler"] == "redbeat.RedBeatScheduler"
    assert config["beat_max_loop_interval"] == 30 and config["redbeat_lock_timeout"] == 150
    assert config["redbeat_redis_url"] == Settings().celery_broker_url
    assert config["redbeat_key_prefix"] == BEAT_KEY_PREFIX
    fast = Settings(meter_every_seconds=EVERY)
    assert beat_loop_seconds(fast) == 1 and beat_lock_timeout(fast) == 5


def test_of_two_beats_only_the_lock_holder_ticks_and_the_other_takes_over_when_it_dies(
    broker_url, tmp_path
):
    settings = Settings(celery_broker_url=broker_url, meter_every_seconds=EVERY)
    assert beat_health_problem(settings) == "meter-all was never scheduled (no beat started)"
    first = Beat(broker_url, tmp_path / "first.log")
    beats = [first]
    try:
        wait_for(lambda: ticks(broker_url).count(first.pid) >= 2, 60)
        # Two more beats (`--scale beat=3`): they start, then wait for the lock.
        second, third = Beat(broker_url, tmp_path / "b.log"), Beat(broker_url, tmp_path / "c.log")
        beats += [second, third]
        wait_for(lambda: second.waiting_for_the_lock() and third.waiting_for_the_lock(), 60)
        count = len(ticks(broker_url))
        wait_for(lambda: len(ticks(broker_url)) >= count + 3, 10)
        assert set(ticks(broker_url)) == {first.pid}  # the others sent nothing meanwhile
        assert beat_health_problem(settings) is None

        # The lock holder is SIGKILLed: its lock expires (5 s here), a waiting beat takes it.
        first.kill(signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: set(ticks(broker_url)) - {first.pid}, 30)
        took = time.monotonic() - killed
        assert took <= beat_lock_timeout(settings) + 3 * beat_loop_seconds(settings) + 2
        new = next(pid for pid in ticks(broker_url) if pid != first.pid)
        holder, waiting = (second, third) if new == second.pid else (third, second)
        count = len(ticks(broker_url))
        wait_for(lambda: len(ticks(broker_url)) >= count + 3, 10)
        assert waiting.pid not in ticks(broker_url)  # still one sender at a time

        # SIGTERM (docker stop) releases the lock: the last beat takes over without waiting
        # out the lock's TTL.
        holder.kill(signal.SIGTERM)
        assert holder.process.returncode == 0
        stopped = time.monotonic()
        wait_for(lambda: waiting.pid in ticks(broker_url), 30)
        assert time.monotonic() - stopped < beat_lock_timeout(settings)
        assert "beat: Releasing lock" in holder.text()
        assert beat_health_problem(settings) is None
    finally:
        for beat in beats:
            beat.kill(signal.SIGKILL)

    # One tick a second, from one beat at a time: never two ticks of one second.
    times = sorted(when for _, when in sent(broker_url))
    assert len(times) >= 2 + 3 + 3 + 1  # at least what the waits above saw
    assert min(b - a for a, b in itertools.pairwise(times)) > timedelta(seconds=0.5)
    later = datetime.now(UTC) + timedelta(seconds=60)
    assert "meter-all last sent" in str(beat_health_problem(settings, now=later))


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A `redis-server` with a password, on a free port, that a test may stop."""
    port = closed_port()
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--requirepass",
            "s3cr3t-pw",
            "--dir",
            str(tmp_path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, password="s3cr3t-pw")
    wait_for(lambda: _answers(client), 10)
    yield port, server
    server.kill()
    server.wait()


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def test_a_beat_stopped_by_its_redis_logs_it_in_two_json_lines_without_the_password(
    tmp_path, own_redis
):
    """Celery logged what Python printed on the way out one write at a time: a Redis outage
    once stopped beat with 1,069 JSON lines, most of them `"message": "^"` (review). Now the
    exception is logged once by beat and once by our hook, redacted; nothing is printed raw."""
    port, server = own_redis
    env = {
        **os.environ,
        "CELERY_BROKER_URL": f"redis://:s3cr3t-pw@127.0.0.1:{port}/0",
        "LOG_FORMAT": "json",
        "METER_EVERY_SECONDS": str(EVERY),
    }
    command = [sys.executable, "-m", "celery", "-A", "chores.celery_app", "beat"]
    beat = subprocess.Popen(
        command,
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=dies_with_the_tests,
    )
    client = redis.Redis(port=port, password="s3cr3t-pw")
    wait_for(lambda: client.llen(DEFAULT_QUEUE) > 0, 60)  # it ticks: Redis goes away now
    server.kill()
    stdout, stderr = beat.communicate(timeout=120)
    assert beat.returncode == 1
    records = [json.loads(line) for line in stderr.splitlines()]  # every line is JSON
    assert [(r["level"], r["logger"]) for r in records] == [
        ("CRITICAL", "celery.beat"),
        ("CRITICAL", "chores"),
    ], stderr[:2000]
    assert records[1]["message"] == "stopped by ConnectionError"
    assert "Traceback" in records[1]["exc_info"]
    assert "s3cr3t-pw" not in stderr + stdout


def test_a_beat_whose_redis_is_not_there_at_start_says_so_in_one_json_line(tmp_path):
    """Not reached at start, beat stopped with two tracebacks at every restart; it stops
    with one line, a JSON record under LOG_FORMAT=json (logging is not set up yet)."""
    port = closed_port()
    env = {
        **os.environ,
        "CELERY_BROKER_URL": f"redis://:s3cr3t-pw@127.0.0.1:{port}/0",
        "LOG_FORMAT": "json",
    }
    command = [sys.executable, "-m", "celery", "-A", "chores.celery_app", "beat"]
    done = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    (record,) = [json.loads(line) for line in done.stderr.splitlines()]
    assert (record["level"], record["logger"]) == ("CRITICAL", "chores")
    assert record["message"].startswith(
        f"chore service: beat: CELERY_BROKER_URL redis://:***@127.0.0.1:{port}/0: Redis not "
        "reached (Error 111 connecting to"
    )
    assert "s3cr3t-pw" not in done.stderr + done.stdout


# -- the healthcheck at its edges: found untested by mutation testing (service/beat.py) --

SENT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def scheduled(url: str, **meta: object) -> None:
    """The `meter-all` entry's state as redbeat keeps it (`last_run_at` once it was sent)."""
    with redis.Redis.from_url(url) as client:
        meta_json = json.dumps(meta, cls=RedBeatJSONEncoder)
        client.hset(BEAT_KEY_PREFIX + "meter-all", "meta", meta_json)


def test_beat_is_healthy_for_two_intervals_and_the_lock_timeout_and_not_a_second_more(broker_url):
    settings = Settings(celery_broker_url=broker_url)  # 300 s ticks, a 150 s lock: 750 s
    scheduled(broker_url, last_run_at=SENT, total_run_count=1)
    assert beat_health_problem(settings, now=SENT + timedelta(seconds=750)) is None
    assert beat_health_problem(settings, now=SENT + timedelta(seconds=751)) == (
        "meter-all last sent 751 s ago (more than 750 s)"
    )


def test_an_entry_scheduled_but_never_sent_is_unhealthy(broker_url):
    scheduled(broker_url, total_run_count=0)
    problem = beat_health_problem(Settings(celery_broker_url=broker_url), now=SENT)
    assert problem == "meter-all was never sent"


def test_no_redis_is_unhealthy_in_one_line():
    settings = Settings(celery_broker_url=f"redis://127.0.0.1:{closed_port()}/0")
    assert beat_health_problem(settings) == "no Redis: ConnectionError"


def test_the_healthcheck_exits_0_when_healthy_and_1_with_its_reason_on_stderr(
    broker_url, monkeypatch, capsys
):
    settings = Settings(celery_broker_url=broker_url)
    monkeypatch.setattr(beat, "get_settings", lambda: settings)
    assert beat.beat_health() == 1
    assert capsys.readouterr().err == (
        "beat unhealthy: meter-all was never scheduled (no beat started)\n"
    )
    scheduled(broker_url, last_run_at=datetime.now(UTC), total_run_count=1)
    assert beat.beat_health() == 0
    assert capsys.readouterr().err == ""


def test_the_beat_lock_lives_five_loops_and_never_under_five_seconds():
    """docs/deploy.md: redbeat's ratio (5 loops), at least 5 s."""
    assert beat_lock_timeout(Settings(meter_every_seconds=0.5)) == 5
    assert beat_lock_timeout(Settings(meter_every_seconds=1.5)) == 8
