"""The deployment files: the image serves with the same command as `make run`, and the compose
files are valid (checked with `docker compose config` or `docker-compose config`, which need no
Docker engine) and refuse to start without their secrets."""

import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from tests.support.processes import PROJECT_DIR

SECRETS = {"SECRET_KEY": "s" * 60, "FIELD_ENCRYPTION_KEYS": "key", "POSTGRES_PASSWORD": "pw",
           "ALLOWED_HOSTS": "llm.example.com"}


def test_the_image_serves_with_the_same_command_as_make_run() -> None:
    dockerfile = (PROJECT_DIR / "Dockerfile").read_text()
    makefile = (PROJECT_DIR / "Makefile").read_text()

    [cmd] = re.findall(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)
    run_recipe = re.search(r"^run: (\S+)\n\t(.+)$", makefile, re.MULTILINE)

    assert json.loads(cmd) == ["sh", "-c", "python manage.py migrate --noinput && exec python manage.py serve"]
    assert run_recipe is not None and run_recipe.group(1) == "migrate"
    assert run_recipe.group(2) == "$(PY) manage.py serve"
    assert "$(PY) manage.py migrate --noinput" in makefile


def compose_command() -> list[str]:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    pytest.skip("neither `docker compose` nor `docker-compose` is installed (.ci/run installs docker-compose)")


def compose_config(*files: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in SECRETS}
    arguments = [part for name in files for part in ("-f", name)]
    return subprocess.run([*compose_command(), *arguments, "config"], cwd=PROJECT_DIR, env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("files", [("docker-compose.yml",), ("docker-compose.yml", "docker-compose.prod.yml")])
def test_the_compose_files_are_valid(files: tuple[str, ...]) -> None:
    result = compose_config(*files, **SECRETS)

    assert result.returncode == 0, result.stderr
    assert "redis://redis:6379/0" in result.stdout and "postgres://llmserver:pw@db:5432/llmserver" in result.stdout


def test_production_compose_turns_on_https_and_json_logs() -> None:
    result = compose_config("docker-compose.yml", "docker-compose.prod.yml", **SECRETS)

    assert re.search(r"SECURE_SSL_REDIRECT: ['\"]?true", result.stdout)
    assert "LOG_FORMAT: json" in result.stdout
    # Only loopback: production trusts any proxy's X-Forwarded-* (FORWARDED_ALLOW_IPS=*) on that basis.
    web_ports = yaml.safe_load(result.stdout)["services"]["web"]["ports"]
    # docker-compose 1.x prints "127.0.0.1:5601:5601/tcp"; `docker compose` prints a mapping.
    host_addresses = [port["host_ip"] if isinstance(port, dict) else port.split(":")[0] for port in web_ports]
    assert host_addresses == ["127.0.0.1"], web_ports


@pytest.mark.parametrize("missing", ["SECRET_KEY", "FIELD_ENCRYPTION_KEYS", "POSTGRES_PASSWORD"])
def test_compose_refuses_to_start_without_a_secret(missing: str) -> None:
    result = compose_config("docker-compose.yml", **{k: v for k, v in SECRETS.items() if k != missing})

    assert result.returncode != 0
    assert f"set {missing}" in result.stderr
