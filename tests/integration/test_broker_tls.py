"""A `rediss://` broker's certificate is checked, over a real TLS Redis: Celery's own
default connects to one it cannot verify (a warning, "defaulting to insecure SSL
behaviour"), where redis-py (REDIS_URL) and celery-redbeat (beat) check it."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis
from celery import Celery
from kombu.exceptions import OperationalError
from redis.backoff import NoBackoff
from redis.retry import Retry

from chores.core.settings import Settings
from chores.service.checks import redis_problem
from chores.service.config import celery_config

from support import closed_port


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server speaking TLS only, with a self-signed certificate: `host:port`."""
    server, openssl = shutil.which("redis-server"), shutil.which("openssl")
    if server is None or openssl is None:
        pytest.fail("this test needs redis-server (built with TLS) and openssl on the PATH")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    port = closed_port()
    process = subprocess.Popen(
        [server, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-auth-clients", "no",
         "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for_tls(port)
        yield f"127.0.0.1:{port}"
    finally:
        process.kill()
        process.wait()


def wait_for_tls(port: int) -> None:
    """Until the server answers over TLS (its certificate unchecked: this only waits)."""
    client = redis.Redis(
        host="127.0.0.1",
        port=port,
        ssl=True,
        ssl_cert_reqs="none",
        socket_timeout=1,
        retry=Retry(NoBackoff(), 0),
    )
    for _ in range(100):
        try:
            if client.ping():
                return
        except redis.RedisError:
            time.sleep(0.05)
    pytest.fail(f"redis-server did not answer over TLS on port {port} (built without TLS?)")


def broker_reached(url: str) -> bool:
    """Whether the worker's broker connection, configured as the service configures it,
    is made (one attempt)."""
    settings = Settings(mongo_url="mongomock://tls", redis_url=None, celery_broker_url=url)
    app = Celery(set_as_current=False)
    app.conf.update(celery_config(settings))
    with app.connection_for_write() as connection:
        try:
            connection.ensure_connection(max_retries=1)
        except OperationalError as exc:
            assert "CERTIFICATE_VERIFY_FAILED" in str(exc), exc
            return False
        return True


def test_a_rediss_broker_whose_certificate_cannot_be_verified_is_not_used(tls_redis):
    """Before: connected, with Celery's warning."""
    assert not broker_reached(f"rediss://{tls_redis}/0")


def test_a_rediss_broker_url_may_still_say_not_to_check(tls_redis):
    assert broker_reached(f"rediss://{tls_redis}/0?ssl_cert_reqs=none")


def test_the_start_up_check_passes_a_redis_that_speaks_tls(tls_redis):
    """The check probes a `rediss://` URL in plain text first (a TLS handshake with a
    plain Redis only ends with its timeout): a Redis that speaks TLS is not taken for one
    that does not, with or without the password it does not ask for."""
    for url in (f"rediss://{tls_redis}/0", f"rediss://:pw@{tls_redis}/0"):
        settings = Settings(
            mongo_url="mongomock://tls",
            redis_url=None,
            celery_broker_url=f"{url}?ssl_cert_reqs=none",
        )
        assert redis_problem(settings) is None
