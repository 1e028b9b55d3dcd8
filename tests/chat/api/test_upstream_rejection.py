"""A request upstream refuses, on /api/v1/chat: upstream's own status, in this API's shape, with
our sentence for people and upstream's words in `details` (OpenAI's shape on /v1/ is tested in
tests/chat/openai/test_upstream_failures.py)."""

from chat.models import Message, UsageRecord
from tests.support.fake_upstream import Behaviour, FakeUpstream
from tests.support.personas import Persona


def test_an_unknown_model_upstream_refuses_is_its_404_with_its_words_in_the_details(
    alice: Persona, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.enqueue(Behaviour(status=404))

    response = alice.client.post("/api/v1/chat", {"session_id": "s", "user_message": "Hi", "model": "gpt-9"},
                                 format="json")

    assert response.status_code == 404
    user_message = Message.objects.get()
    assert response.json() == {
        "success": False,
        "error_code": "upstream_rejected_request",
        "error_message": "The model provider rejected the request (for example an unknown model or an invalid parameter).",
        "details": {
            "upstream_status": 404,
            "upstream_message": "The model `gpt-9` does not exist or you do not have access to it.",
            "upstream_code": "model_not_found",
            "upstream_param": "model",
            "session_id": "s",
            "user_message_id": user_message.pk,
        },
    }
    assert len(fake_upstream.requests) == 1
    assert list(UsageRecord.objects.values_list("outcome", "error_code")) == [("failed", "upstream_rejected_request")]


def test_an_upstream_408_or_409_asked_again_in_vain_is_not_passed_on_for_the_client_to_ask_again(
    alice: Persona, fake_upstream: FakeUpstream, settings
) -> None:
    """The server asks again after 408 and 409 itself (they are upstream's, not the request's
    fault): passed on as they are, the client's SDK would ask again as well."""
    settings.LLM_MAX_RETRIES = 0
    fake_upstream.enqueue(Behaviour(status=409), Behaviour(status=408))

    conflict = alice.client.post("/api/v1/chat", {"user_message": "Hi"}, format="json")
    timeout = alice.client.post("/api/v1/chat", {"user_message": "Hi"}, format="json")

    assert (conflict.status_code, conflict.json()["error_code"]) == (502, "upstream_error")
    assert (timeout.status_code, timeout.json()["error_code"]) == (504, "upstream_timeout")
