"""The deployment files: compose services and healthchecks, the image, the settings file."""

from __future__ import annotations

import json
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

ROOT = Path(__file__).resolve().parents[2]
ENV_EXAMPLE = ROOT / ".env.example"
INIT_SCRIPT = "docker/mongo-init/10-billing-user.js"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def healthcheck(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    return " ".join(test[1:]) if isinstance(test, list) else test


CHORE_SERVICES = ("worker", "worker-full", "beat")  # the chore's image, three commands


def test_services_and_their_healthchecks(compose):
    services = compose["services"]
    assert {"mongo", "redis", *CHORE_SERVICES} <= set(services)

    mongo = services["mongo"]
    assert mongo["image"].startswith("mongo:")
    # at its own address: the first start's init-phase mongod listens on 127.0.0.1 only
    ping = 'mongosh --quiet --host "$$HOSTNAME" --eval "db.runCommand({ping:1})"'
    assert healthcheck(mongo) == ping
    assert mongo["healthcheck"]["test"][0] == "CMD-SHELL"
    assert any(v.endswith(":/data/db") for v in mongo["volumes"])
    assert mongo["volumes"][0].split(":")[0] in compose["volumes"]
    # the init scripts, read-only: the chore's own user (see the credentials test)
    assert "./docker/mongo-init:/docker-entrypoint-initdb.d:ro" in mongo["volumes"]

    redis = services["redis"]
    assert redis["image"].startswith("redis:")
    assert healthcheck(redis) == 'REDISCLI_AUTH="$$REDIS_PASSWORD" redis-cli ping | grep -q PONG'


def test_worker_and_beat_share_the_image_wait_for_healthy_stores_and_beat_is_alone(compose):
    services = compose["services"]
    for name in CHORE_SERVICES:
        service = services[name]
        assert service["build"] == {"context": ".", "dockerfile": "Dockerfile"}
        assert service["image"] == services["worker"]["image"]
        assert service["depends_on"] == {
            "mongo": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
        }
        assert service["env_file"] == [{"path": ".env", "required": False}]
        command = service["command"]
        assert command[:3] == ["celery", "-A", "chores.celery_app"]
        assert command[3] == name.removesuffix("-full")

    assert services["beat"]["deploy"]["replicas"] == 1
    assert "scale" not in services["beat"]
    # beat is a singleton by its Redis lock, not by replicas (integration/test_beat.py): no
    # schedule file or volume of its own, redbeat's scheduler from the app's configuration
    assert "volumes" not in services["beat"] and "--schedule" not in " ".join(
        services["beat"]["command"]
    )
    assert "replicas" not in services["worker"].get("deploy", {})  # free to scale


def test_each_queue_has_its_worker(compose):
    """The 5-minute queue and the daily full pass's queue (service.config.route_full_pass) are
    read by different workers: the full pass never holds up the 5-minute runs."""
    from chores.service.config import DEFAULT_QUEUE, FULL_QUEUE

    def queues(name: str) -> str:
        command = compose["services"][name]["command"]
        return command[command.index("-Q") + 1]

    assert queues("worker") == DEFAULT_QUEUE
    assert queues("worker-full") == FULL_QUEUE


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


# read by compose only
CREDENTIALS = {
    "MONGO_ROOT_USERNAME",
    "MONGO_ROOT_PASSWORD",
    "MONGO_USERNAME",
    "MONGO_PASSWORD",
    "REDIS_PASSWORD",
}
PASSWORDS = {
    "MONGO_ROOT_PASSWORD": "r00t-pw",
    "MONGO_PASSWORD": "m0ngo-pw",
    "REDIS_PASSWORD": "r3dis-pw",
}


def test_env_example_holds_only_real_settings_with_valid_values_and_no_secret(monkeypatch):
    values = dotenv_values(ENV_EXAMPLE)
    assert set(values) <= {name.upper() for name in Settings.model_fields} | CREDENTIALS
    assert set(values) >= CREDENTIALS
    assert {values[name] for name in PASSWORDS} == {""}  # the operator sets them
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


def compose_client() -> tuple[list[str], str] | None:
    """This machine's compose command and its version: the docker CLI plugin (`docker
    compose`) or a standalone `docker-compose`; None when there is neither."""
    candidates = []
    if docker := shutil.which("docker"):
        candidates.append([docker, "compose"])
    if standalone := shutil.which("docker-compose"):
        candidates.append([standalone])
    for command in candidates:
        done = subprocess.run(
            [*command, "version", "--short"], capture_output=True, text=True, check=False
        )
        if done.returncode == 0:
            return command, done.stdout.strip().removeprefix("v")
    return None


def test_docker_compose_accepts_the_file_where_the_client_has_compose(compose, tmp_path):
    assert compose["name"] == "ai-billing-chore"
    client = compose_client()
    if client is None:  # `config` needs no engine, only a client
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("no compose client; CI must `apt-get install -y docker-compose`")
        pytest.skip("no compose client here (neither `docker compose` nor `docker-compose`)")
    command, version = client
    no_dot_env = tmp_path / "empty.env"  # not the developer's .env; v1 refuses os.devnull
    no_dot_env.write_text("")
    clean = {k: v for k, v in os.environ.items() if k not in CREDENTIALS}

    def config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, "--env-file", str(no_dot_env), "-f", "docker-compose.yml", "config", "-q"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )

    done = config({**clean, **PASSWORDS})
    if int(version.split(".")[0]) < 2:
        # Compose v1 (docker-compose 1.x, end of life) predates the Compose Specification the
        # file is written in: it rejects exactly the spec's features used here, the top-level
        # `name` and `env_file` entries with `required` (compose 2.24), and nothing else.
        assert done.returncode != 0
        assert "'name' does not match any of the regexes" in done.stderr
        rejected = [line for line in done.stderr.splitlines() if line.startswith("services.")]
        spec_only = re.compile(
            r'services\.[\w-]+\.env_file contains \{"path": ".env", "required": false\}, '
            r"which is an invalid type, it should be a string"
        )
        assert rejected and all(spec_only.fullmatch(line) for line in rejected), done.stderr
        assert {line.split(".")[1] for line in rejected} == set(CHORE_SERVICES)
        return
    assert done.returncode == 0, done.stderr
    missing = config(clean)  # no password: compose refuses, naming it
    assert missing.returncode != 0 and "PASSWORD" in missing.stderr


def test_worker_and_beat_have_healthchecks_and_every_service_has_limits_and_log_rotation(
    compose,
):
    services = compose["services"]
    worker = healthcheck(services["worker"])
    # `$$` is compose's escape: the container's own $HOSTNAME, the worker's node name
    assert "celery -A chores.celery_app inspect ping -d celery@$$HOSTNAME" in worker
    assert services["worker"]["healthcheck"]["test"][0] == "CMD-SHELL"
    assert healthcheck(services["worker-full"]) == worker
    # beat: the 5-minute fan-out was sent lately (service.beat.beat_health, test_beat.py)
    beat = services["beat"]["healthcheck"]["test"]
    assert beat[:3] == ["CMD", "python", "-c"]
    assert beat[3] == "import chores.service.beat as beat; raise SystemExit(beat.beat_health())"
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
    from chores.service.config import SHUTDOWN_MARGIN, celery_config, stop_timeout

    for name in dotenv_values(ENV_EXAMPLE):
        monkeypatch.delenv(name, raising=False)
    grace = seconds(compose["services"]["worker"]["stop_grace_period"])
    assert seconds(compose["services"]["worker-full"]["stop_grace_period"]) == grace
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
    env = dict(PASSWORDS)

    mongo = services["mongo"]["environment"]
    assert interpolate(mongo["MONGO_INITDB_ROOT_USERNAME"], env) == "root"  # admin only
    assert interpolate(mongo["MONGO_INITDB_ROOT_PASSWORD"], env) == "r00t-pw"
    # the chore's own user, created by the init script (readWrite on MONGO_DB)
    assert interpolate(mongo["CHORE_MONGO_USERNAME"], env) == "billing"
    assert interpolate(mongo["CHORE_MONGO_PASSWORD"], env) == "m0ngo-pw"
    assert interpolate(mongo["CHORE_MONGO_DB"], env) == Settings().mongo_db == "main"
    assert interpolate(mongo["CHORE_MONGO_DB"], {**env, "MONGO_DB": "billing"}) == "billing"
    for name in ("MONGO_INITDB_ROOT_PASSWORD", "CHORE_MONGO_PASSWORD"):
        with pytest.raises(KeyError, match="PASSWORD"):
            interpolate(mongo[name], {})
    redis = services["redis"]
    assert interpolate(redis["environment"]["REDIS_PASSWORD"], env) == "r3dis-pw"
    assert "--requirepass" in " ".join(redis["command"])
    assert '"$$REDIS_PASSWORD"' in redis["command"][-1]  # from the environment, not the file
    # through the image's entrypoint, which drops root for the `redis` user
    assert "exec docker-entrypoint.sh redis-server " in redis["command"][-1]

    dot_env = {**dotenv_values(ENV_EXAMPLE), **PASSWORDS}  # .env as the operator fills it
    for name in CHORE_SERVICES:
        given = {k: interpolate(v, env) for k, v in services[name]["environment"].items()}
        # What the container sees: env_file (.env), overridden by `environment`.
        seen = {**dot_env, **given}
        urls = {"MONGO_URL", "CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "REDIS_URL"}
        for password in PASSWORDS.values():  # only inside the URLs the chore connects with
            assert {k for k, value in seen.items() if password in (value or "")} <= urls
        assert not any("r00t-pw" in (value or "") for value in seen.values())  # never root
        settings = Settings(
            **{k.lower(): v for k, v in given.items() if k.lower() in Settings.model_fields}
        )
        assert settings.mongo_url == "mongodb://billing:m0ngo-pw@mongo:27017/?authSource=admin"
        assert settings.safe_mongo_url == "mongodb://billing:***@mongo:27017/?authSource=admin"
        for url in (settings.celery_broker_url, settings.celery_result_backend, settings.redis_url):
            assert url and url.startswith("redis://:r3dis-pw@redis:6379/")
        assert services[name]["env_file"] == [{"path": ".env", "required": False}]
        for key in urls:  # no password has a default
            with pytest.raises(KeyError, match="PASSWORD"):
                interpolate(services[name]["environment"][key], {})
        blanked = {k for k, v in services[name]["environment"].items() if v == ""}
        assert blanked == CREDENTIALS - {"MONGO_USERNAME"}

    # the credentials file is never committed, and none of the committed files holds one
    ignored = (ROOT / ".gitignore").read_text().split()
    assert ".env" in ignored and "!.env.example" in ignored
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False
    ).stdout.split()
    if tracked:  # a git checkout
        assert ".env" not in tracked and ".env.example" in tracked
    for path in ("docker-compose.yml", ".env.example", "Dockerfile", INIT_SCRIPT):
        text = (ROOT / path).read_text()
        assert not re.search(r"(?m)^\s*[A-Z_]*PASSWORD[:=][ \t]*(?!\"\"$)[^$\s]", text), path
        assert not re.search(
            r"(mongodb|redis)://[^/\s]*:[^$*/\s]+@", text.replace("PASSWORD@", "")
        ), path


def test_the_chore_uses_the_database_its_mongo_user_may_write_however_mongo_db_is_given(compose):
    """Operator's review: MONGO_DB reached mongo's init script by interpolation (the shell's
    environment, `.env`, or `docker compose --env-file`) but the chore's containers through
    `env_file: .env` only: with `MONGO_DB=billing` exported in the shell or in another env
    file, the chore's user got readWrite on `billing` while the worker and beat metered
    `main`, refused at every run. Both now take it from the same interpolation."""
    services = compose["services"]
    mongo = services["mongo"]["environment"]
    for given in ({}, {"MONGO_DB": "billing"}):
        env = {**PASSWORDS, **given}
        rights_on = interpolate(mongo["CHORE_MONGO_DB"], env)
        assert rights_on == given.get("MONGO_DB", Settings().mongo_db)
        for name in CHORE_SERVICES:
            environment = services[name]["environment"]
            # `environment` wins over env_file: what the container's Settings read
            assert "MONGO_DB" in environment, name
            assert interpolate(environment["MONGO_DB"], env) == rights_on, name


# Runs the init script under node with a stand-in for mongosh's `db` and `print`.
MONGOSH_SHIM = """
const calls = [];
globalThis.db = {getSiblingDB: (name) => ({createUser: (spec) => calls.push({db: name, spec})})};
globalThis.print = () => {};
process.on("exit", () => console.log(JSON.stringify(calls)));
require(process.argv[process.argv.length - 1]);
"""


def test_the_mongo_init_script_creates_the_chores_user_readwrite_on_its_database_only():
    node = shutil.which("node")
    if node is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("node is not installed; CI must `apt-get install -y nodejs`")
        pytest.skip("node is not installed: the init script is checked by the compose test only")

    def run(**env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [node, "-e", MONGOSH_SHIM, str(ROOT / INIT_SCRIPT)],
            env={"PATH": os.environ.get("PATH", ""), **env},
            capture_output=True,
            text=True,
            check=False,
        )

    given = {
        "MONGO_INITDB_ROOT_USERNAME": "root",
        "CHORE_MONGO_USERNAME": "billing",
        "CHORE_MONGO_PASSWORD": "m0ngo-pw",
        "CHORE_MONGO_DB": "main",
    }
    done = run(**given)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [
        {
            "db": "admin",  # the user lives in admin (authSource=admin), its rights in "main"
            "spec": {
                "user": "billing",
                "pwd": "m0ngo-pw",
                "roles": [{"role": "readWrite", "db": "main"}],
            },
        }
    ]
    no_password = run(**{**given, "CHORE_MONGO_PASSWORD": ""})
    assert no_password.returncode != 0 and "must be set" in no_password.stderr
    as_root = run(**{**given, "CHORE_MONGO_USERNAME": "root"})
    assert as_root.returncode != 0 and "must differ" in as_root.stderr


def test_the_tighter_role_in_security_md_names_every_billing_collection():
    """SECURITY.md's `billingChore` role lists the chore's collections by hand: all of them."""
    from functools import cached_property

    from chores.core.db import Collections

    text = (ROOT / "SECURITY.md").read_text()
    listed = re.search(r"\]\.concat\(\[([^\]]*)\]\.map", text)
    assert listed, "the billingChore role's list of billing collections"
    named = set(re.findall(r'"(\w+)"', listed.group(1)))
    handles = {name for name, v in vars(Collections).items() if isinstance(v, cached_property)}
    ours = handles - {"tasks", "findings"}
    assert "ledger" in ours and "quota" in ours  # read from the class as it is written
    assert named == ours
