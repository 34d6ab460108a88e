"""Shared fixtures: a fresh mongomock database, settings, the shipped registry, sample docs."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mongomock
import pytest
from bson import json_util

from chores import Settings
from pricing import Registry, load_registry

SHARED_FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
LOCAL_FIXTURES = Path(__file__).resolve().parent / "data"
NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def load_fixture_docs() -> dict[str, list[dict[str, Any]]]:
    """The platform's sample runner documents, without their `_role` notes."""
    path = SHARED_FIXTURES / "secator_runner_docs.json"
    if not path.exists():
        path = LOCAL_FIXTURES / "secator_runner_docs.json"
    data = json_util.loads(path.read_text())
    for docs in data.values():
        for doc in docs:
            doc.pop("_role", None)
    return data


@pytest.fixture
def db() -> Any:
    return mongomock.MongoClient(tz_aware=True)["main"]


@pytest.fixture
def settings() -> Settings:
    return Settings(mongo_url="mongomock://test", batch_size=50, redis_url=None)


@pytest.fixture(scope="session")
def registry() -> Registry:
    return load_registry()


@pytest.fixture
def fixture_docs() -> dict[str, list[dict[str, Any]]]:
    return copy.deepcopy(_FIXTURE_DOCS)


_FIXTURE_DOCS = load_fixture_docs()
