"""The deployment files: compose services and healthchecks, the image, the settings file."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from dotenv import dotenv_values

from chores import Settings

ROOT = Path(__file__).resolve().parents[1]
ENV_EXAMPLE = ROOT / ".env.example"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def healthcheck(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return " ".join(test[1:]) if isinstance(test, list) else test


def test_services_and_their_healthchecks(compose):
    services = compose["services"]
    assert {"mongo", "redis", "worker", "beat"} <= set(services)

    mongo = services["mongo"]
    assert mongo["image"].startswith("mongo:")
    assert "mongosh" in healthcheck(mongo) and "db.runCommand({ping:1})" in healthcheck(mongo)
    assert any(v.endswith(":/data/db") for v in mongo["volumes"])
    assert mongo["volumes"][0].split(":")[0] in compose["volumes"]

    redis = services["redis"]
    assert redis["image"].startswith("redis:")
    assert healthcheck(redis) == "redis-cli ping"


def test_worker_and_beat_share_the_image_wait_for_healthy_stores_and_beat_is_alone(compose):
    services = compose["services"]
    for name in ("worker", "beat"):
        service = services[name]
        assert service["build"] == {"context": ".", "dockerfile": "Dockerfile"}
        assert service["image"] == services["worker"]["image"]
        assert service["depends_on"] == {
            "mongo": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
        }
        assert service["env_file"] == ".env.example"
        command = service["command"]
        assert command[:3] == ["celery", "-A", "chores.celery_app"] and command[3] == name

    assert services["beat"]["deploy"]["replicas"] == 1
    assert "scale" not in services["beat"]
    assert "replicas" not in services["worker"].get("deploy", {})  # free to scale


def test_the_image_installs_the_package_and_runs_a_worker_as_a_user():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11\.\d+-slim$", dockerfile, re.M)  # the image run, pinned
    # the wheel is built in a build stage, installed in the image; no C toolchain anywhere
    assert re.search(r"^FROM python:3\.11\.\d+-slim AS build$", dockerfile, re.M)
    assert re.search(r"^COPY pyproject\.toml README\.md ", dockerfile, re.M)
    assert "setup.py" not in dockerfile and "gcc" not in dockerfile
    assert re.search(r"^RUN pip wheel .*--wheel-dir /wheels \.$", dockerfile, re.M)
    assert re.search(r"^COPY --from=build /wheels /wheels$", dockerfile, re.M)
    assert re.search(r"^RUN pip install /wheels/\*\.whl", dockerfile, re.M)
    user = re.findall(r"^USER (\S+)$", dockerfile, re.M)
    assert user and user[-1] not in ("root", "0")
    cmd = re.findall(r"^CMD (.+)$", dockerfile, re.M)[-1]
    assert cmd == '["celery", "-A", "chores.celery_app", "worker", "--loglevel=INFO"]'
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".env", "tests"} <= set(ignored)


def test_env_example_holds_only_real_settings_with_valid_values(monkeypatch):
    values = dotenv_values(ENV_EXAMPLE)
    assert set(values) <= {name.upper() for name in Settings.model_fields}
    for name in values:
        monkeypatch.delenv(name, raising=False)

    settings = Settings(_env_file=ENV_EXAMPLE)  # type: ignore[call-arg]

    assert settings.mongo_url == "mongodb://mongo:27017"
    assert settings.celery_broker_url.startswith("redis://redis:6379/")
    assert settings.task_soft_time_limit < settings.task_time_limit < settings.lock_ttl_seconds


def test_every_setting_is_explained_in_the_deploy_guide():
    guide = (ROOT / "docs" / "deploy.md").read_text()
    names = [name.upper() for name in Settings.model_fields]
    assert [n for n in names if f"`{n}`" not in guide] == []


def test_docker_compose_accepts_the_file_where_the_client_has_compose(compose):
    docker = shutil.which("docker")
    has_compose = (
        docker is not None
        and subprocess.run(
            [docker, "compose", "version"], capture_output=True, check=False
        ).returncode
        == 0
    )
    if has_compose:  # `config` needs no engine; without compose the checks above stand
        done = subprocess.run(
            [str(docker), "compose", "config", "-q"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    assert compose["name"] == "ai-billing-chore"


def test_worker_and_beat_have_healthchecks_and_every_service_has_limits_and_log_rotation(
    compose,
):
    services = compose["services"]
    worker = healthcheck(services["worker"])
    # `$$` is compose's escape: the container's own $HOSTNAME, the worker's node name
    assert "celery -A chores.celery_app inspect ping -d celery@$$HOSTNAME" in worker
    assert services["worker"]["healthcheck"]["test"][0] == "CMD-SHELL"
    beat = healthcheck(services["beat"])
    assert "find /var/lib/chore -name 'celerybeat-schedule*'" in beat and "-mmin" in beat
    assert "$${METER_EVERY_SECONDS:-300}" in beat  # follows the tick interval
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^HEALTHCHECK --interval=\S+ --timeout=\S+ ", dockerfile, re.M)
    assert 'CMD celery -A chores.celery_app inspect ping -d "celery@$HOSTNAME"' in dockerfile

    redis = services["redis"]
    assert "--appendonly" in redis["command"]
    assert any(v.split(":")[0] == "redis-data" and v.endswith(":/data") for v in redis["volumes"])
    assert "redis-data" in compose["volumes"]
    for name, service in services.items():
        assert service["deploy"]["resources"]["limits"]["memory"], name
        logging = service["logging"]
        assert logging["driver"] == "json-file", name
        assert logging["options"]["max-size"] and logging["options"]["max-file"], name


def seconds(duration: str | int) -> float:
    """A compose duration (`6m`, `1m30s`, `90s`, `300`) in seconds."""
    if isinstance(duration, int):
        return float(duration)
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", duration)
    assert parts and duration, duration
    h, m, s = (float(p) if p else 0.0 for p in parts.groups())
    return 3600 * h + 60 * m + s


def test_the_worker_stop_grace_period_outlasts_a_run_and_its_soft_shutdown(compose, monkeypatch):
    from chores.celery_app import SHUTDOWN_MARGIN, celery_config, stop_timeout

    for name in dotenv_values(ENV_EXAMPLE):
        monkeypatch.delenv(name, raising=False)
    grace = seconds(compose["services"]["worker"]["stop_grace_period"])
    # the defaults, and the values the containers are given
    for settings in (Settings(), Settings(_env_file=ENV_EXAMPLE)):  # type: ignore[call-arg]
        config = celery_config(settings)
        hard = config["task_time_limit"]
        assert config["worker_soft_shutdown_timeout"] <= hard
        assert grace >= stop_timeout(settings) == hard + SHUTDOWN_MARGIN
        assert grace >= config["worker_soft_shutdown_timeout"] + SHUTDOWN_MARGIN
        assert hard < settings.lock_ttl_seconds
        assert hard < config["broker_transport_options"]["visibility_timeout"]
    assert seconds("6m") == 360 and seconds("1m30s") == 90 and seconds(300) == 300
