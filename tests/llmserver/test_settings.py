"""Settings: development works with nothing set; production refuses unsafe values, saying what to set."""

import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from llmserver.environment import number
from tests.support.processes import PROJECT_DIR, child_environment

SAFE_SECRET = "k" * 30 + "-production-secret-for-tests-only-0123456789"
# A Fernet key made for these tests only.
SAFE_ENCRYPTION_KEY = "dGVzdHMtb25seS1mZXJuZXQta2V5LTMyLWJ5dGVzISE="
PRODUCTION = {
    "DJANGO_ENV": "production", "SECRET_KEY": SAFE_SECRET, "ALLOWED_HOSTS": "llm.example.com",
    "FIELD_ENCRYPTION_KEYS": SAFE_ENCRYPTION_KEY,
}


def load_settings(print_setting: str = "DEBUG", **env: str) -> subprocess.CompletedProcess:
    """Import the settings in a fresh interpreter with exactly this configuration and print one."""
    code = f"import django; django.setup(); from django.conf import settings; print(settings.{print_setting})"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT_DIR,
        env=child_environment(DJANGO_SETTINGS_MODULE="llmserver.settings", LOG_FILE="", **env),
        capture_output=True, text=True, timeout=60,
    )


def test_development_needs_no_configuration() -> None:
    result = load_settings()

    assert (result.returncode, result.stdout.strip()) == (0, "True")


@pytest.mark.parametrize("secret", [None, "short", "django-insecure-" + "x" * 60, "abab" * 20])
def test_production_refuses_a_missing_or_unsafe_secret(secret: str | None) -> None:
    env = {"DJANGO_ENV": "production", "ALLOWED_HOSTS": "llm.example.com"}
    if secret is not None:
        env["SECRET_KEY"] = secret

    result = load_settings(**env)

    assert result.returncode != 0
    assert "SECRET_KEY is missing or unsafe for production: set SECRET_KEY to a random string of at least 50 characters" in result.stderr


def test_production_refuses_an_empty_host_list() -> None:
    result = load_settings(DJANGO_ENV="production", SECRET_KEY=SAFE_SECRET)

    assert result.returncode != 0
    assert "ALLOWED_HOSTS is empty in production: set ALLOWED_HOSTS" in result.stderr


def test_production_starts_with_safe_settings_and_debug_off() -> None:
    result = load_settings(**PRODUCTION)

    assert (result.returncode, result.stdout.strip()) == (0, "False"), result.stderr


@pytest.mark.parametrize("keys", [None, "ZGV2ZWxvcG1lbnQtb25seS1rZXktZG8tbm90LXVzZT0="])
def test_production_refuses_a_missing_or_development_encryption_key(keys: str | None) -> None:
    env = {name: value for name, value in PRODUCTION.items() if name != "FIELD_ENCRYPTION_KEYS"}
    if keys is not None:
        env["FIELD_ENCRYPTION_KEYS"] = keys

    result = load_settings(**env)

    assert result.returncode != 0
    assert "FIELD_ENCRYPTION_KEYS is missing or unsafe for production: set it to one or more comma-separated Fernet keys" in result.stderr


def test_a_malformed_encryption_key_stops_start_up_with_a_sentence() -> None:
    result = load_settings(**{**PRODUCTION, "FIELD_ENCRYPTION_KEYS": f"{SAFE_ENCRYPTION_KEY},not-a-key"})

    assert result.returncode != 0
    assert "FIELD_ENCRYPTION_KEYS holds a value that is not a Fernet key" in result.stderr


def test_sqlite_is_configured_for_concurrent_writers(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", (
            "import django; django.setup(); from django.db import connection; c = connection.cursor(); "
            "print(c.execute('pragma journal_mode').fetchone()[0], c.execute('pragma busy_timeout').fetchone()[0], "
            "connection.settings_dict['OPTIONS']['transaction_mode'])"
        )],
        cwd=PROJECT_DIR, capture_output=True, text=True, timeout=60,
        env=child_environment(DJANGO_SETTINGS_MODULE="llmserver.settings", LOG_FILE="",
                              DATABASE_URL=f"sqlite:///{tmp_path / 'pragma-check.sqlite3'}"),
    )

    assert result.stdout.split() == ["wal", "20000", "IMMEDIATE"], result.stderr


def test_context_windows_are_read_as_model_token_pairs() -> None:
    result = load_settings("LLM_CONTEXT_WINDOWS", LLM_CONTEXT_WINDOWS="llama3=8192;qwen2.5=32768")

    assert result.stdout.strip() == "{'llama3': 8192, 'qwen2.5': 32768}", result.stderr


def test_malformed_context_windows_stop_start_up_with_a_sentence() -> None:
    result = load_settings(LLM_CONTEXT_WINDOWS="llama3=8192,qwen2.5=32768")

    assert result.returncode != 0
    assert "LLM_CONTEXT_WINDOWS must be model=tokens pairs separated by semicolons" in result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "sentence"),
    [
        # Taken as it was, a negative retry count left the provider no attempt to make: every chat failed.
        ("LLM_MAX_RETRIES", "-1", "LLM_MAX_RETRIES must be a whole number from 0 to 10, not '-1'."),
        ("SERVER_PORT", "70000", "SERVER_PORT must be a whole number from 1 to 65535, not '70000'."),
    ],
)
def test_an_out_of_range_number_stops_start_up_naming_the_variable(variable: str, value: str, sentence: str) -> None:
    result = load_settings(**{variable: value})

    assert result.returncode != 0
    assert sentence in result.stderr


@pytest.mark.parametrize(
    ("value", "default", "shown"),
    [
        ("two", 2, "a whole number from 0 to 10, not 'two'."),
        ("", 2, "a whole number from 0 to 10, not ''."),
        ("1.5", 2, "a whole number from 0 to 10, not '1.5'."),
        ("11", 2, "a whole number from 0 to 10, not '11'."),
        ("9" * 400, 2, "a whole number from 0 to 10, not '999"),
        # django-environ alone read these as 60, 13, and 0 (`$` names another variable).
        ("60s", 2.0, "a number from 0 to 10, not '60s'."),
        ("1e400", 2.0, "a number from 0 to 10, not '1e400'."),
        ("$5", 2.0, "a number from 0 to 10, not '$5'."),
        ("nan", 2.0, "a number from 0 to 10, not 'nan'."),
        ("-0.5", 2.0, "a number from 0 to 10, not '-0.5'."),
    ],
)
def test_numbers_are_read_strictly(monkeypatch: pytest.MonkeyPatch, value: str, default: float, shown: str) -> None:
    monkeypatch.setenv("SOME_NUMBER", value)

    with pytest.raises(ImproperlyConfigured) as refused:
        number("SOME_NUMBER", default, minimum=0, maximum=10)

    assert str(refused.value).startswith("SOME_NUMBER must be " + shown)


def test_a_number_in_range_is_read_with_its_type(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOME_NUMBER", " 7 ")
    monkeypatch.setenv("SOME_FLOAT", "1e1")

    assert number("SOME_NUMBER", 2, minimum=0, maximum=10) == 7
    assert number("SOME_FLOAT", 2.0, minimum=0, maximum=10) == 10.0
    assert number("SOME_UNSET_NUMBER", 2, minimum=0) == 2


def test_a_pool_smaller_than_its_minimum_stops_start_up() -> None:
    result = load_settings(
        DATABASE_URL="postgres://postgres@127.0.0.1:5432/postgres", DATABASE_POOL_MIN_SIZE="12",
        DATABASE_POOL_MAX_SIZE="5",
    )

    assert result.returncode != 0
    assert "DATABASE_POOL_MAX_SIZE (5) must be at least DATABASE_POOL_MIN_SIZE (12)." in result.stderr


def test_an_unknown_log_level_stops_start_up_with_a_sentence() -> None:
    result = load_settings(LOG_LEVEL="verbose")

    assert result.returncode != 0
    assert "LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, not 'VERBOSE'." in result.stderr


def test_an_empty_cache_url_counts_as_unset() -> None:
    result = load_settings("CACHES['default']['BACKEND']", CACHE_URL="")

    assert result.stdout.strip() == "django.core.cache.backends.locmem.LocMemCache", result.stderr


def test_servers_the_tests_start_read_no_dotenv_file(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("LIMIT_REQUESTS_PER_MINUTE=7\n")

    read = load_settings("LIMIT_REQUESTS_PER_MINUTE", DOTENV_FILE=str(dotenv))
    unread = load_settings("LIMIT_REQUESTS_PER_MINUTE")

    assert (read.stdout.strip(), unread.stdout.strip()) == ("7", "0"), read.stderr + unread.stderr


def test_redis_url_selects_the_shared_redis_cache() -> None:
    result = load_settings("CACHES['default']['BACKEND']", REDIS_URL="redis://127.0.0.1:6379/0")

    assert result.stdout.strip() == "django.core.cache.backends.redis.RedisCache", result.stderr


def deploy_check(**env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=PROJECT_DIR, env=child_environment(LOG_FILE="", **env), capture_output=True, text=True, timeout=120,
    )


def test_the_documented_production_environment_passes_the_deploy_check() -> None:
    result = deploy_check(**PRODUCTION)

    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout


@pytest.mark.parametrize(
    ("setting", "check_id"),
    [("SECURE_HSTS_SECONDS=0", "security.W004"), ("SECURE_SSL_REDIRECT=false", "security.W008")],
)
def test_the_deploy_check_sees_through_our_middleware_subclasses(setting: str, check_id: str) -> None:
    # Django's checks look for its middleware by name; ours are subclasses (llmserver/checks.py).
    name, value = setting.split("=")

    result = deploy_check(**PRODUCTION, **{name: value})

    assert result.returncode == 1
    assert check_id in result.stderr


def test_the_deploy_check_reports_a_missing_middleware() -> None:
    # Django's own "missing middleware" warnings are silenced (they cannot see our subclasses), so
    # llmserver/checks.py must report a middleware that is really gone.
    code = (
        "import django; django.setup()\n"
        "from django.conf import settings\n"
        "from django.test.utils import override_settings\n"
        "from llmserver.checks import security_checks_with_django_names\n"
        "kept = [m for m in settings.MIDDLEWARE if not m.endswith('CsrfViewMiddleware')]\n"
        "with override_settings(MIDDLEWARE=kept):\n"
        "    print(sorted({m.id for m in security_checks_with_django_names(None)}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_DIR, capture_output=True, text=True,
                            env=child_environment(**PRODUCTION, DJANGO_SETTINGS_MODULE="llmserver.settings", LOG_FILE=""),
                            timeout=60)

    assert result.returncode == 0, result.stderr
    assert "llmserver.W003" in result.stdout


def test_a_metrics_directory_the_operator_names_is_created_at_start(tmp_path: Path) -> None:
    directory = tmp_path / "not-yet" / "metrics"

    result = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=60,
        env=child_environment(PROMETHEUS_MULTIPROC_DIR=str(directory), LOG_FILE=""),
    )

    assert result.returncode == 0, result.stderr
    assert directory.is_dir()


def test_a_redis_that_never_answers_holds_a_request_half_a_second_at_most() -> None:
    result = load_settings('CACHES["default"]["OPTIONS"]', REDIS_URL="redis://127.0.0.1:6379/0")

    assert result.stdout.strip() == "{'socket_timeout': 0.5, 'socket_connect_timeout': 0.5}"


def test_an_unpriced_model_needs_both_prices_or_none() -> None:
    result = load_settings(UNPRICED_MODEL_INPUT_PER_MILLION="0.5")

    assert result.returncode == 1
    assert "Set both UNPRICED_MODEL_INPUT_PER_MILLION and UNPRICED_MODEL_OUTPUT_PER_MILLION, or neither." in result.stderr
