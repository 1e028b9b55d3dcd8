"""The monitoring app: request ids, JSON logs, readiness, system information and Prometheus
metrics, in process and on the served server (two worker processes)."""

import io
import json
import logging
import re
import subprocess
import sys
from typing import Any

import httpx
import pytest
from django.conf import settings
from rest_framework.test import APIClient

from chat.keys.services import api_key_create
from llmserver.logging import JsonFormatter
from tests.support.fake_upstream import FakeUpstream
from tests.support.metrics import metric
from tests.support.personas import UPSTREAM_TEST_KEY, Persona
from tests.support.processes import PROJECT_DIR, child_environment, free_port, stop, wait_until_healthy
from tests.support.served import Served, manage

REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture
def admin(db: None) -> APIClient:
    _, raw = api_key_create(name="ops", actor="test", scopes=["admin"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
    return client


def chat(persona: Persona, **headers: str) -> Any:
    return persona.client.post("/api/v1/chat", {"user_message": "Hello", "session_id": "watched"}, format="json",
                               **headers)


# --- Request ids -----------------------------------------------------------------------------


def test_every_response_has_a_request_id_and_a_sensible_one_sent_is_kept(alice: Persona) -> None:
    made_up = alice.client.get("/api/v1/sessions")
    kept = alice.client.get("/api/v1/sessions", HTTP_X_REQUEST_ID="lb-7f3a.42")
    replaced = alice.client.get("/api/v1/sessions", HTTP_X_REQUEST_ID="no spaces or <tags> please")
    failed = APIClient().get("/api/v1/sessions")

    assert REQUEST_ID.match(made_up.headers["X-Request-Id"])
    assert kept.headers["X-Request-Id"] == "lb-7f3a.42"
    assert REQUEST_ID.match(replaced.headers["X-Request-Id"])
    assert failed.status_code == 401 and REQUEST_ID.match(failed.headers["X-Request-Id"])


def test_the_request_id_is_in_every_log_line_of_the_turn_and_goes_upstream(
    alice: Persona, fake_upstream: FakeUpstream
) -> None:
    # The handlers settings.LOGGING configures (console, file), written to a buffer each: what
    # production writes, with its own format and filters.
    configured = [h for h in logging.getLogger().handlers if h.name in settings.LOGGING["handlers"]]
    assert configured
    written = {handler.name: io.StringIO() for handler in configured}
    streams = {handler.name: handler.setStream(written[handler.name]) for handler in configured}
    logger = logging.getLogger("chat.turns")
    try:
        response = chat(alice, HTTP_X_REQUEST_ID="trace-abc-123")
        logger.warning("no request here")
    finally:
        for handler in configured:
            handler.setStream(streams[handler.name])

    assert response.status_code == 200
    assert fake_upstream.requests[0].headers["x-request-id"] == "trace-abc-123"
    for name, buffer in written.items():
        lines = [line for line in buffer.getvalue().splitlines() if " - chat.turns - " in line]
        turn = [line for line in lines if "chat start" in line or "chat end" in line]
        assert len(turn) == 2 and all("[trace-abc-123] chat" in line for line in turn), (name, lines)
        # Outside a request there is no id.
        assert lines[-1].endswith("[-] no request here"), (name, lines)


def test_a_value_from_a_request_cannot_forge_a_log_line() -> None:
    """What the configured handlers write: a session id, model or error a client chose, holding a
    line break or a terminal escape, stays on the record's own line, escaped."""
    configured = [h for h in logging.getLogger().handlers if h.name in settings.LOGGING["handlers"]]
    written = {handler.name: io.StringIO() for handler in configured}
    streams = {handler.name: handler.setStream(written[handler.name]) for handler in configured}
    try:
        logging.getLogger("chat.turns").warning(
            "chat failed session=%s", "s1\n2026-01-01 00:00:00,000 - chat.turns - INFO - [-] forged\x1b[2J\x85\u2028"
        )
    finally:
        for handler in configured:
            handler.setStream(streams[handler.name])

    for name, buffer in written.items():
        lines = buffer.getvalue().splitlines()
        assert len(lines) == 1, (name, lines)
        assert lines[0].endswith("chat failed session=s1\\n2026-01-01 00:00:00,000 - chat.turns - INFO - [-] forged"
                                  "\\x1b[2J\\x85\\u2028"), (name, lines)


def test_the_json_log_format_is_one_object_a_line() -> None:
    record = logging.LogRecord("chat.turns", logging.WARNING, __file__, 1, "chat failed session=%s", ("s1",), None)
    record.request_id = "abc"

    entry = json.loads(JsonFormatter().format(record))

    assert entry["level"] == "WARNING" and entry["logger"] == "chat.turns"
    assert entry["message"] == "chat failed session=s1" and entry["request_id"] == "abc"
    assert entry["time"].endswith("+00:00")


# --- Readiness and system information -------------------------------------------------------------


def test_ready_says_200_when_the_database_cache_and_migrations_are_in_order(db: None) -> None:
    response = APIClient().get("/api/v1/system/ready")

    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["degraded"]) == ("ready", [])
    assert {name: check["ok"] for name, check in body["checks"].items()} == {
        "database": True, "cache": True, "migrations": True
    }


def test_ready_asks_the_database_about_migrations_every_time(db: None) -> None:
    """An emptied or replaced database must not read as ready because it once was."""
    from django.db.migrations.recorder import MigrationRecorder

    assert APIClient().get("/api/v1/system/ready").status_code == 200
    MigrationRecorder.Migration.objects.filter(app="chat", name="0001_initial").delete()

    response = APIClient().get("/api/v1/system/ready")

    assert response.status_code == 503
    assert response.json()["details"]["checks"]["migrations"]["pending"] == ["chat.0001_initial"]


def test_an_unreachable_cache_is_degraded_not_unready(db: None, settings: Any) -> None:
    """The cache is only a cache: a load balancer must not drop every instance when Redis is lost
    while the chats still work."""
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                   "LOCATION": f"redis://127.0.0.1:{free_port()}/0"}}

    response = APIClient().get("/api/v1/system/ready")

    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["degraded"], body["checks"]["cache"]["ok"]) == ("degraded", ["cache"], False)


def test_with_cache_required_an_unreachable_cache_is_503_naming_it(db: None, settings: Any) -> None:
    settings.CACHE_REQUIRED = True
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache",
                                   "LOCATION": f"redis://127.0.0.1:{free_port()}/0"}}

    response = APIClient().get("/api/v1/system/ready")

    assert response.status_code == 503
    body = response.json()
    assert body["error_code"] == "not_ready" and body["details"]["failing"] == ["cache"]
    assert "cache" in body["error_message"]


@pytest.mark.e2e
def test_ready_says_503_naming_pending_migrations_on_an_unmigrated_database(tmp_path: Any) -> None:
    port = free_port()
    env = child_environment(DJANGO_ENV="development", DATABASE_URL=f"sqlite:///{tmp_path / 'empty.sqlite3'}",
                            LOG_FILE=str(tmp_path / "app.log"), SERVER_PORT=str(port), WEB_CONCURRENCY="1")
    process = subprocess.Popen([sys.executable, "manage.py", "serve"], cwd=PROJECT_DIR, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_healthy(process, f"http://127.0.0.1:{port}")
        response = httpx.get(f"http://127.0.0.1:{port}/api/v1/system/ready", timeout=5)
    finally:
        stop(process)

    assert response.status_code == 503
    details = response.json()["details"]
    assert details["failing"] == ["migrations"]
    assert "chat.0001_initial" in details["checks"]["migrations"]["pending"]


def test_system_info_is_for_admin_keys_only(alice: Persona, admin: APIClient) -> None:
    assert APIClient().get("/api/v1/system/info").status_code == 401
    refused = alice.client.get("/api/v1/system/info")
    assert refused.status_code == 403 and refused.json()["error_code"] == "insufficient_scope"
    assert admin.get("/api/v1/system/info").status_code == 200


def test_system_info_reports_the_machine_the_process_and_the_service(
    admin: APIClient, alice: Persona, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.enqueue()
    assert chat(alice).status_code == 200

    response = admin.get("/api/v1/system/info")

    info = response.json()
    assert info["cpu"]["count"] >= 1 and len(info["cpu"]["load_average"]) == 3
    assert info["memory"]["total_bytes"] > info["memory"]["available_bytes"] > 0
    assert info["process"]["rss_bytes"] > 0 and info["process"]["threads"] >= 1
    # At least stdin, stdout, stderr and the test database's connection.
    assert info["process"]["open_fds"] >= 4 and 0 <= info["cpu"]["percent"] <= 100
    assert info["versions"]["django"].startswith("5.2") and info["versions"]["python"].startswith("3.")
    assert info["database"]["ok"] is True and info["database"]["vendor"] in ("sqlite", "postgresql")
    assert info["cache"]["ok"] is True
    assert info["upstream"] == {"provider": "openai-compatible", "host": "127.0.0.1", "default_model": "gpt-4o-mini"}
    assert info["counts"]["api_keys"] == 2 and info["counts"]["sessions"] == 1 and info["counts"]["messages"] == 2
    assert info["counts"]["tokens_today"] > 0
    assert UPSTREAM_TEST_KEY not in response.content.decode()


# --- Metrics ------------------------------------------------------------------------------------


def test_metrics_count_requests_by_route_upstream_calls_and_tokens(
    admin: APIClient, alice: Persona, fake_upstream: FakeUpstream
) -> None:
    before = admin.get("/metrics").content.decode()
    assert chat(alice).status_code == 200
    alice.client.get("/api/v1/sessions/watched")

    response = admin.get("/metrics")

    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain")
    text = response.content.decode()

    def grew(name: str, **labels: str) -> float:
        return metric(text, name, **labels) - metric(before, name, **labels)

    assert grew("llmserver_http_requests_total", route="/api/v1/chat", method="POST", status="200") == 1
    assert grew("llmserver_http_requests_total", route="/api/v1/sessions/<session_id:session_id>", status="200") == 1
    assert grew("llmserver_upstream_request_duration_seconds_count", provider="openai", outcome="success") == 1
    assert grew("llmserver_tokens_total", model="gpt-4o-mini", kind="completion") > 0


def test_a_method_no_one_uses_is_counted_as_other(admin: APIClient) -> None:
    APIClient().generic("BREW", "/api/v1/system/health")
    APIClient().generic("BREW", "/api/v1/system/health")

    text = admin.get("/metrics").content.decode()

    assert metric(text, "llmserver_http_requests_total", method="other", route="/api/v1/system/health") >= 2
    assert 'method="BREW"' not in text


@pytest.mark.e2e
def test_the_metrics_directory_made_for_several_workers_is_removed_when_the_server_stops(tmp_path: Any) -> None:
    port = free_port()
    env = child_environment(DJANGO_ENV="development", DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite3'}",
                            LOG_FILE="", SERVER_PORT=str(port), WEB_CONCURRENCY="2", TMPDIR=str(tmp_path))
    process = subprocess.Popen([sys.executable, "manage.py", "serve"], cwd=PROJECT_DIR, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_healthy(process, f"http://127.0.0.1:{port}")
        while_serving = list(tmp_path.glob("llmserver-metrics-*"))
    finally:
        stop(process)

    assert len(while_serving) == 1
    assert not while_serving[0].exists()


def test_metrics_need_an_admin_key_unless_opened(alice: Persona, settings: Any) -> None:
    assert APIClient().get("/metrics").status_code == 401
    assert alice.client.get("/metrics").status_code == 403
    settings.METRICS_PUBLIC = True
    assert APIClient().get("/metrics").status_code == 200


@pytest.mark.e2e
def test_metrics_add_up_every_worker_process(serve: Any) -> None:
    served: Served = serve(LOG_FORMAT="json")
    admin_key = manage("create_api_key", "--name", "ops", "--scopes", "admin", env=served.env).strip().splitlines()[-1]
    headers = {"Authorization": f"Bearer {admin_key}"}
    # A new connection each time, so that both worker processes take some of them.
    before = httpx.get(f"{served.base_url}/metrics", headers=headers).text
    pids = {httpx.get(f"{served.base_url}/api/v1/system/info", headers=headers).json()["process"]["pid"]
            for _ in range(40)}
    for _ in range(30):
        assert httpx.get(f"{served.base_url}/api/v1/system/health").status_code == 200

    chat_answer = httpx.post(f"{served.base_url}/api/v1/chat", headers={**served.headers(), "X-Request-Id": "json-log-1"},
                             json={"user_message": "hi"}, timeout=30)
    text = httpx.get(f"{served.base_url}/metrics", headers=headers).text

    def grew(route: str) -> float:
        return (metric(text, "llmserver_http_requests_total", route=route, status="200")
                - metric(before, "llmserver_http_requests_total", route=route, status="200"))

    assert len(pids) == 2, "both workers answered"
    assert grew("/api/v1/system/health") == 30
    assert grew("/api/v1/system/info") == 40
    # The JSON log format: one object a line, each with the request's id.
    lines = [json.loads(line) for line in served.log_file.read_text().splitlines() if line]
    assert lines and all({"time", "level", "logger", "message", "request_id"} <= set(entry) for entry in lines)
    assert chat_answer.status_code == 200
    turn = [entry for entry in lines if entry["message"].startswith(("chat start", "chat end"))]
    assert [entry["request_id"] for entry in turn] == ["json-log-1", "json-log-1"]


def test_a_worker_that_died_mid_stream_leaves_no_active_stream_behind(tmp_path: Any) -> None:
    """uvicorn replaces a worker that dies; its live gauge must leave the sum, its counters stay."""
    def run(code: str) -> str:
        result = subprocess.run(
            [sys.executable, "-c", "import django; django.setup()\nfrom chat.turns import metrics as turn_metrics\nfrom monitoring import metrics\n" + code],
            cwd=PROJECT_DIR, capture_output=True, text=True, timeout=60,
            env=child_environment(DJANGO_SETTINGS_MODULE="llmserver.settings", LOG_FILE="",
                                  PROMETHEUS_MULTIPROC_DIR=str(tmp_path)),
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    run("turn_metrics.active_streams.inc()\n"
        "metrics.http_requests.labels(method='POST', route='/api/v1/chat', status='200').inc()\n"
        "import os; os._exit(0)")
    text = run("print(metrics.exposition().decode())")

    assert metric(text, "llmserver_active_streams") == 0
    assert metric(text, "llmserver_http_requests_total", route="/api/v1/chat") == 1
