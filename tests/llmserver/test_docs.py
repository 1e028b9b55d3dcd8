"""The OpenAPI schema, the docs page and the browsable API."""

from tests.support.personas import Persona


def test_the_schema_documents_every_endpoint_and_its_error_statuses(db: None, client) -> None:
    schema = client.get("/api/schema/?format=json").json()

    assert set(schema["paths"]) >= {
        "/api/v1/chat", "/api/v1/sessions", "/api/v1/sessions/{session_id}",
        "/api/v1/sessions/{session_id}/messages", "/api/v1/sessions/{session_id}/usage", "/api/v1/keys",
        "/api/v1/system/health",
    }
    chat_statuses = set(schema["paths"]["/api/v1/chat"]["post"]["responses"])
    assert chat_statuses >= {"200", "400", "401", "403", "409", "413", "422", "429", "502", "503", "504"}
    assert set(schema["components"]["schemas"]["Error"]["required"]) == {"error_code", "error_message", "details"}


def test_the_docs_page_loads_swagger_ui_from_the_project(db: None, client) -> None:
    page = client.get("/api/docs/").content.decode()

    assert "/static/drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js" in page
    assert "cdn" not in page.lower()


def test_every_endpoint_has_the_browsable_api(alice: Persona) -> None:
    page = alice.client.get("/api/v1/sessions", HTTP_ACCEPT="text/html")

    assert page.status_code == 200
    assert page["Content-Type"].startswith("text/html")
    assert "Session List" in page.content.decode()
