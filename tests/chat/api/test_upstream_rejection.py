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
