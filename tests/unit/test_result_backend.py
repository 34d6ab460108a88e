"""CELERY_RESULT_BACKEND is checked as the worker builds it: a backend that refuses its URL
is one redacted line at start, not a worker that stops once started."""

from __future__ import annotations

import pytest

from chores.service.config import result_backend_problem


@pytest.mark.parametrize(
    ("url", "said"),
    [
        (  # review: Celery's "Unrecoverable error" and a traceback once the worker started
            "rediss://:S3CRET@cache:6380/0",
            "CELERY_RESULT_BACKEND rediss://:***@cache:6380/0: the backend refuses it: A "
            "rediss:// URL must have parameter ssl_cert_reqs",
        ),
        (
            "redis://:S3CRET@cache:6379/0?ssl_cert_reqs=CERT_NONE",
            "the backend refuses it: SSL connection parameters have been provided but the "
            "specified URL scheme is redis://.",
        ),
        (
            "file:///no/such/folder/results",
            "CELERY_RESULT_BACKEND file:///no/such/folder/results: the backend refuses it: The "
            "configured path for the file-system backend does not work correctly, please make",
        ),
        ("nosuchbackend://u:S3CRET@h/x", "Celery cannot load its backend (No module named"),
    ],
)
def test_a_result_backend_that_refuses_its_url_is_one_line(url, said):
    problem = result_backend_problem(url)
    assert problem is not None and said in problem
    assert "S3CRET" not in problem and "\n" not in problem


def test_a_result_backend_that_takes_its_url_is_no_problem(tmp_path):
    for url in (
        None,
        "redis://:S3CRET@127.0.0.1:1/0",  # not reached: nothing connects before first use
        "rediss://cache:6380/0?ssl_cert_reqs=CERT_REQUIRED",
        "rpc://",
        f"file://{tmp_path}",
    ):
        assert result_backend_problem(url) is None, url
