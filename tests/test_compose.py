"""The deployment files: compose services and healthchecks, the image, the settings file."""

from __future__ import annotations

import os
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
    assert healthcheck(redis) == 'REDISCLI_AUTH="$$REDIS_PASSWORD" redis-cli ping | grep -q PONG'


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
        assert service["env_file"] == [{"path": ".env", "required": False}]
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


CREDENTIALS = {"MONGO_USERNAME", "MONGO_PASSWORD", "REDIS_PASSWORD"}  # read by compose only


def test_env_example_holds_only_real_settings_with_valid_values_and_no_secret(monkeypatch):
    values = dotenv_values(ENV_EXAMPLE)
    assert set(values) <= {name.upper() for name in Settings.model_fields} | CREDENTIALS
    assert set(values) >= CREDENTIALS
    assert values["MONGO_PASSWORD"] == values["REDIS_PASSWORD"] == ""  # the operator sets them
    for name in values:
        monkeypatch.delenv(name, raising=False)

    settings = Settings(_env_file=ENV_EXAMPLE)  # type: ignore[call-arg]

    # no URL in it: compose builds them from the credentials
    assert not {"MONGO_URL", "REDIS_URL", "CELERY_BROKER_URL"} & set(values)
    assert settings.mongo_url == Settings.model_fields["mongo_url"].default
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
        clean = {k: v for k, v in os.environ.items() if k not in CREDENTIALS}
        secrets = {"MONGO_PASSWORD": "mongo-pw", "REDIS_PASSWORD": "redis-pw"}
        done = subprocess.run(
            [str(docker), "compose", "--env-file", os.devnull, "config", "-q"],
            cwd=ROOT,
            env={**clean, **secrets},
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        missing = subprocess.run(  # no password: compose refuses, naming it
            [str(docker), "compose", "--env-file", os.devnull, "config", "-q"],
            cwd=ROOT,
            env=clean,
            capture_output=True,
            text=True,
            check=False,
        )
        assert missing.returncode != 0 and "PASSWORD" in missing.stderr
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
    assert "--appendonly yes" in " ".join(redis["command"])
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


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's interpolation of `${VAR}`, `${VAR:-default}`, `${VAR:?error}` and `$$`."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return arg or ""

    out = re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", one, value.replace("$$", "\0"))
    return out.replace("\0", "$")


def test_mongo_and_redis_require_credentials_that_reach_the_containers_from_dot_env(compose):
    services = compose["services"]
    env = {"MONGO_PASSWORD": "m0ngo-pw", "REDIS_PASSWORD": "r3dis-pw"}

    mongo = services["mongo"]["environment"]
    assert interpolate(mongo["MONGO_INITDB_ROOT_USERNAME"], env) == "billing"
    assert interpolate(mongo["MONGO_INITDB_ROOT_PASSWORD"], env) == "m0ngo-pw"
    redis = services["redis"]
    assert interpolate(redis["environment"]["REDIS_PASSWORD"], env) == "r3dis-pw"
    assert "--requirepass" in " ".join(redis["command"])
    assert '"$$REDIS_PASSWORD"' in redis["command"][-1]  # from the environment, not the file

    for name in ("worker", "beat"):
        given = {k: interpolate(v, env) for k, v in services[name]["environment"].items()}
        settings = Settings(**{k.lower(): v for k, v in given.items()})
        assert settings.mongo_url == "mongodb://billing:m0ngo-pw@mongo:27017/?authSource=admin"
        assert settings.safe_mongo_url == "mongodb://billing:***@mongo:27017/?authSource=admin"
        for url in (settings.celery_broker_url, settings.celery_result_backend, settings.redis_url):
            assert url and url.startswith("redis://:r3dis-pw@redis:6379/")
        assert services[name]["env_file"] == [{"path": ".env", "required": False}]
        for value in services[name]["environment"].values():  # no password has a default
            with pytest.raises(KeyError, match="PASSWORD"):
                interpolate(value, {})

    # the credentials file is never committed, and none of the committed files holds one
    ignored = (ROOT / ".gitignore").read_text().split()
    assert ".env" in ignored and "!.env.example" in ignored
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.split()
    if tracked:  # a git checkout
        assert ".env" not in tracked and ".env.example" in tracked
    for path in ("docker-compose.yml", ".env.example", "Dockerfile"):
        text = (ROOT / path).read_text()
        assert not re.search(r"(?m)^\s*[A-Z_]*PASSWORD[:=][ \t]*[^$\s]", text), path
        assert not re.search(
            r"(mongodb|redis)://[^/\s]*:[^$*/\s]+@", text.replace("PASSWORD@", "")
        ), path
