"""Agent frameworks against the served server, over real HTTP to a fake upstream: langchain-openai's
`bind_tools` and `with_structured_output`, and a pydantic-ai `Agent` with a tool and with structured output.

These run the real libraries, unpatched, so what they send is what the server must accept: a
parameter a new version of a library starts sending shows up here as a 400, not in a user's app.
Each library is built by one helper below; the fake upstream's queued answers decide what the
"model" does, and `upstream.requests` shows what the server passed on."""

import asyncio
import json
from typing import Any

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from tests.support.fake_upstream import Behaviour, FakeUpstream
from tests.support.served import Served

pytestmark = pytest.mark.e2e

MODEL = "gpt-4o-mini"


class City(BaseModel):
    name: str
    population: int


PARIS = City(name="Paris", population=2100000)
PARIS_JSON = PARIS.model_dump_json()


def langchain_model(served: Served, *, headers: dict[str, str] | None = None, **options: Any) -> ChatOpenAI:
    """LangChain's OpenAI chat model on our /v1. No retries: a refusal must fail the test at once."""
    return ChatOpenAI(model=MODEL, base_url=f"{served.base_url}/v1", api_key=served.api_key, max_retries=0,
                      default_headers=headers, **options)


def pydantic_ai_model(served: Served, *, headers: dict[str, str] | None = None) -> OpenAIChatModel:
    """pydantic-ai's Chat Completions model on our /v1. The provider is handed an SDK client, rather than
    `OpenAIProvider(base_url=..., api_key=...)`, because only the client takes `max_retries` and default headers."""
    client = openai.AsyncOpenAI(base_url=f"{served.base_url}/v1", api_key=served.api_key, max_retries=0,
                                default_headers=headers)
    return OpenAIChatModel(MODEL, provider=OpenAIProvider(openai_client=client))


def messages_of(served: Served, session_id: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{served.base_url}/api/v1/sessions/{session_id}/messages", headers=served.headers())
    assert response.status_code == 200, response.text
    return response.json()["results"]


def roles(request_body: dict[str, Any]) -> list[str]:
    return [message["role"] for message in request_body["messages"]]


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return f"sunny in {city}"


# --- langchain-openai -------------------------------------------------------------------------------


def test_langchain_bind_tools_round_trip_stateless(upstream_server: Served, upstream: FakeUpstream) -> None:
    upstream.enqueue(Behaviour(reply="", tool_calls=(("get_weather", '{"city": "Paris"}'),)),
                     Behaviour(reply="It is sunny in Paris."))
    model = langchain_model(upstream_server).bind_tools([get_weather])
    messages: list[BaseMessage] = [HumanMessage("Weather in Paris?")]

    first = model.invoke(messages)
    assert isinstance(first, AIMessage)
    [call] = first.tool_calls
    # Stateless: LangChain sends the whole conversation again, with the tool's result at its end.
    messages += [first, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])]
    second = model.invoke(messages)

    assert (call["name"], call["args"]) == ("get_weather", {"city": "Paris"})
    assert second.content == "It is sunny in Paris." and not second.tool_calls
    sent = [request.json for request in upstream.requests]
    assert [t["function"]["name"] for t in sent[0]["tools"]] == ["get_weather"]
    assert sent[0]["tools"][0]["function"]["parameters"]["properties"] == {"city": {"type": "string"}}
    assert roles(sent[1]) == ["user", "assistant", "tool"]
    assert sent[1]["messages"][1]["tool_calls"][0]["id"] == call["id"]
    assert json.loads(sent[1]["messages"][1]["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris"}
    assert sent[1]["messages"][2] == {"role": "tool", "content": "sunny in Paris", "tool_call_id": call["id"]}


def test_langchain_streams_a_tool_call_and_its_usage(upstream_server: Served, upstream: FakeUpstream) -> None:
    upstream.enqueue(Behaviour(reply="", tool_calls=(("get_weather", '{"city": "Lisbon"}'),)))
    # With a base_url of its own LangChain asks for no usage in a stream unless told to (stream_usage).
    model = langchain_model(upstream_server, stream_usage=True).bind_tools([get_weather])

    chunks = list(model.stream("Weather in Lisbon?"))
    whole = chunks[0]
    for chunk in chunks[1:]:
        whole += chunk

    assert [(call["name"], call["args"]) for call in whole.tool_calls] == [("get_weather", {"city": "Lisbon"})]
    assert whole.usage_metadata is not None and whole.usage_metadata["input_tokens"] > 0
    assert upstream.requests[0].json["stream"] is True


@pytest.mark.parametrize("method", ["function_calling", "json_schema", "json_mode"])
def test_langchain_with_structured_output_returns_the_model(
    upstream_server: Served, upstream: FakeUpstream, method: str
) -> None:
    # function_calling forces a call of a tool named after the schema; the two others ask for JSON text.
    if method == "function_calling":
        upstream.enqueue(Behaviour(reply="", tool_calls=(("City", PARIS_JSON),)))
    else:
        upstream.enqueue(Behaviour(reply=PARIS_JSON))
    model = langchain_model(upstream_server).with_structured_output(City, method=method)

    # json_mode sends no schema: the prompt has to ask for the fields and for JSON (OpenAI requires the word).
    answer = model.invoke("Describe Paris as JSON with the keys name and population.")

    assert answer == PARIS
    sent = upstream.requests[0].json
    if method == "function_calling":
        assert [t["function"]["name"] for t in sent["tools"]] == ["City"]
        assert sent["tool_choice"] == {"type": "function", "function": {"name": "City"}}
    elif method == "json_schema":
        assert sent["response_format"]["type"] == "json_schema"
        assert sent["response_format"]["json_schema"]["name"] == "City"
    else:
        assert sent["response_format"] == {"type": "json_object"}


def test_langchain_with_x_session_id_sends_everything_and_upstream_gets_no_duplicates(
    upstream_server: Served, upstream: FakeUpstream
) -> None:
    """LangChain always sends the whole conversation. With X-Session-Id the server keeps it itself: it takes
    the messages after the last assistant message as the new turn and ignores the rest (already stored)."""
    upstream.enqueue(Behaviour(reply="", tool_calls=(("get_weather", '{"city": "Seoul"}'),)),
                     Behaviour(reply="Seoul is sunny."), Behaviour(reply="You asked about Seoul."))
    model = langchain_model(upstream_server, headers={"X-Session-Id": "langchain-tools"}).bind_tools([get_weather])
    messages: list[BaseMessage] = [HumanMessage("Weather in Seoul?")]

    first = model.invoke(messages)
    # Invoked with the whole tool call, a LangChain tool answers with its ToolMessage.
    messages += [first, get_weather.invoke(first.tool_calls[0])]
    second = model.invoke(messages)
    messages += [second, HumanMessage("Which city?")]
    third = model.invoke(messages)

    assert (second.content, third.content) == ("Seoul is sunny.", "You asked about Seoul.")
    sent = [request.json for request in upstream.requests]
    assert roles(sent[1]) == ["user", "assistant", "tool"]
    assert roles(sent[2]) == ["user", "assistant", "tool", "assistant", "user"]
    assert [(m["role"], m["status"]) for m in messages_of(upstream_server, "langchain-tools")] == [
        ("user", "complete"), ("assistant", "complete"), ("tool", "complete"), ("assistant", "complete"),
        ("user", "complete"), ("assistant", "complete"),
    ]


# --- pydantic-ai ------------------------------------------------------------------------------------


def weather_agent(model: OpenAIChatModel, ran: list[str]) -> Agent[None, str]:
    """An agent with one plain tool, which notes each city it was called with in `ran`."""
    agent = Agent(model, instructions="You answer questions about the weather.")

    @agent.tool_plain
    def get_weather(city: str) -> str:
        """The weather in a city."""
        ran.append(city)
        return f"sunny in {city}"

    return agent


def test_pydantic_ai_agent_runs_its_tool_and_answers(upstream_server: Served, upstream: FakeUpstream) -> None:
    upstream.enqueue(Behaviour(reply="", tool_calls=(("get_weather", '{"city": "Paris"}'),)),
                     Behaviour(reply="It is sunny in Paris."))
    ran: list[str] = []

    result = weather_agent(pydantic_ai_model(upstream_server), ran).run_sync("Weather in Paris?")

    assert ran == ["Paris"]
    assert result.output == "It is sunny in Paris."
    sent = [request.json for request in upstream.requests]
    assert [t["function"]["name"] for t in sent[0]["tools"]] == ["get_weather"]
    assert roles(sent[1]) == ["system", "user", "assistant", "tool"]
    assert sent[1]["messages"][-1]["content"] == "sunny in Paris"


def test_pydantic_ai_agent_streams_after_its_tool(upstream_server: Served, upstream: FakeUpstream) -> None:
    upstream.enqueue(Behaviour(reply="", tool_calls=(("get_weather", '{"city": "Lima"}'),)),
                     Behaviour(reply="It is sunny in Lima."))
    ran: list[str] = []
    agent = weather_agent(pydantic_ai_model(upstream_server), ran)

    async def streamed() -> str:
        async with agent.run_stream("Weather in Lima?") as result:
            return await result.get_output()

    assert asyncio.run(streamed()) == "It is sunny in Lima."
    assert ran == ["Lima"]
    assert [request.json["stream"] for request in upstream.requests] == [True, True]


def test_pydantic_ai_structured_output_is_a_final_result_tool_call(
    upstream_server: Served, upstream: FakeUpstream
) -> None:
    # pydantic-ai's default output mode for OpenAI is a tool, named `final_result` (pydantic_ai/_output.py,
    # DEFAULT_OUTPUT_TOOL_NAME); the run ends when the model calls it with valid arguments.
    upstream.enqueue(Behaviour(reply="", tool_calls=(("final_result", PARIS_JSON),)))
    agent = Agent(pydantic_ai_model(upstream_server), output_type=City)

    result = agent.run_sync("Describe Paris.")

    assert result.output == PARIS
    sent = upstream.requests[0].json
    assert [t["function"]["name"] for t in sent["tools"]] == ["final_result"]
    assert len(upstream.requests) == 1


def test_pydantic_ai_with_x_session_id_sends_everything_and_upstream_gets_no_duplicates(
    upstream_server: Served, upstream: FakeUpstream
) -> None:
    """pydantic-ai sends the whole history too (the tool loop within a run, and `message_history` across runs);
    with X-Session-Id the server stores it once and passes each message upstream once."""
    upstream.enqueue(Behaviour(reply="", tool_calls=(("get_weather", '{"city": "Oslo"}'),)),
                     Behaviour(reply="Oslo is sunny."), Behaviour(reply="You asked about Oslo."))
    ran: list[str] = []
    agent = weather_agent(pydantic_ai_model(upstream_server, headers={"X-Session-Id": "pydantic-ai-tools"}), ran)

    first = agent.run_sync("Weather in Oslo?")
    second = agent.run_sync("Which city?", message_history=first.all_messages())

    assert ran == ["Oslo"]
    assert (first.output, second.output) == ("Oslo is sunny.", "You asked about Oslo.")
    sent = [request.json for request in upstream.requests]
    # The instructions are the session's persona: one system message first, each time.
    assert roles(sent[1]) == ["system", "user", "assistant", "tool"]
    assert roles(sent[2]) == ["system", "user", "assistant", "tool", "assistant", "user"]
    assert [m["role"] for m in messages_of(upstream_server, "pydantic-ai-tools")] == [
        "user", "assistant", "tool", "assistant", "user", "assistant",
    ]
