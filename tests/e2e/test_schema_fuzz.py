"""Schemathesis against the server's own OpenAPI schema (/api/schema/), over real HTTP.

A real server (`manage.py serve`, tests/support/served.py) on the suite's database: PostgreSQL when the
suite runs on it (`make test-postgres`), SQLite otherwise; the offline provider answers chats, so
nothing waits on a model. The fuzzer sends schema-valid and schema-violating requests with a
client key holding every scope, and every answer must be what the schema documents: no server
error, only documented status codes, content types, headers and bodies. Bad input must get a
4xx, never a 5xx.

The run is deterministic (the same inputs every time) and bounded (MAX_EXAMPLES per operation).
Its JUnit report is kept in test-artifacts/; a failure shows schemathesis' own output, with a
curl command for each failing request.

The staff pages (/admin/, /admin/dashboard/, /admin/playground/) are not in the schema, so they
are not fuzzed; nothing in the schema is excluded.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.processes import PROJECT_DIR
from tests.support.served import Served, manage

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS_DIR", PROJECT_DIR / "test-artifacts"))
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
CONFIG_FILE = PROJECT_DIR / "tests" / "schemathesis.toml"
# Test cases per operation and phase: enough to reach every parameter and body field with valid
# and invalid values, few enough that the whole run stays under about a minute.
MAX_EXAMPLES = 50
# No server error; status, content type, headers and body as documented; a request without the
# key refused (401); a method the schema does not list refused (405); and a request the schema
# says is valid accepted, one it says is not refused (with the few rules between values that a
# schema cannot state allowed for in tests/schemathesis.toml).
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "ignored_auth",
    "unsupported_method",
    "positive_data_acceptance",
    "negative_data_rejection",
]
# A closed port on the loopback interface: an HTTP(S) proxy that refuses every connection.
UNREACHABLE_PROXY = "http://127.0.0.1:9"


@pytest.fixture(scope="module")
def fuzzed_server(serve, request: pytest.FixtureRequest) -> Served:
    extra_env = {
        # A caller's own upstream key (`api_key`, X-Upstream-Api-Key) sends a chat to that key's
        # upstream, api.openai.com, even on the offline provider. Through a proxy that refuses,
        # those calls never leave the machine and always answer 503 upstream_unavailable (allowed
        # for the chat operations only, in tests/schemathesis.toml), with or without a network.
        "HTTPS_PROXY": UNREACHABLE_PROXY,
        "https_proxy": UNREACHABLE_PROXY,
        "HTTP_PROXY": UNREACHABLE_PROXY,
        "http_proxy": UNREACHABLE_PROXY,
        "NO_PROXY": "",
        "no_proxy": "",
        # Asking that proxy again cannot help: without retries each of those answers is immediate,
        # not ~1.5 s of back-off (retries are tested in tests/chat/providers/test_providers.py).
        "LLM_MAX_RETRIES": "0",
    }
    if os.environ.get("DATABASE_URL", "").startswith("postgres"):
        extra_env["DATABASE_URL"] = request.getfixturevalue("postgres_url")
    return serve(**extra_env)


def test_the_server_answers_every_request_as_its_schema_documents(fuzzed_server: Served, tmp_path: Path) -> None:
    key = manage(
        "create_api_key", "--name", "schemathesis", "--scopes", "chat", "read", "admin", env=fuzzed_server.env
    ).strip().splitlines()[-1]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    command = [
        str(SCHEMATHESIS), "--config-file", str(CONFIG_FILE), "run", f"{fuzzed_server.base_url}/api/schema/",
        "--header", f"Authorization: Bearer {key}",
        "--checks", ",".join(CHECKS),
        # Valid and invalid inputs: an invalid one must be answered with a documented 4xx.
        "--mode", "all",
        "--max-examples", str(MAX_EXAMPLES),
        # The same inputs on every run (Hypothesis' derandomize; no example database).
        "--generation-deterministic",
        # One worker: operations never interleave, so the server's state, and so each answer, is
        # the same on every run. (With several, schemathesis 4.32.5 on Python 3.11 also fails now
        # and then with "SystemError: AST constructor recursion depth mismatch", from Hypothesis
        # parsing lambdas in two threads at once.)
        "--workers", "1",
        # Every failure of every operation, not only the first of each.
        "--continue-on-failure",
        "--request-timeout", "30",
        "--report", "junit", "--report-junit-path", str(ARTIFACTS / "schemathesis-junit.xml"),
        "--no-color",
    ]

    # In a scratch directory: Hypothesis keeps its caches (.hypothesis/) in the working directory.
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)

    # The exit status alone, so that pytest does not print the command (and the key) on failure.
    exit_status = result.returncode
    assert exit_status == 0, result.stdout + result.stderr
