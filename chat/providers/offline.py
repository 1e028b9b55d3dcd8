"""The offline provider: the embedded default when no upstream is configured.

Like Django's console e-mail backend, it lets the server be tried and tested with nothing else
running. It is not a language model and never pretends to be one: it answers deterministically,
without any network, saying what it received, and names itself `offline` in the `model` field.
Its usage is counted with the same tokenizer as everything else.
"""

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from chat import tokens
from chat.providers.base import Completion, CompletionRequest, StreamDelta

OFFLINE_MODEL_NAME = "offline"
# How much of the user's message the answer quotes back.
QUOTE_CHARS = 200
_WORD = re.compile(r"\S+\s*|\s+")


def _text(content: Any) -> str:
    if isinstance(content, list):
        return "\n\n".join(part["text"] for part in content if part.get("type") == "text")
    return content or ""


def example_of(schema: Any, defs: dict[str, Any] | None = None, depth: int = 0) -> Any:
    """A value that fits the JSON schema `schema`, the same every time: the first of an enum, the
    minimum of a number, one item of an array, every property of an object."""
    if not isinstance(schema, dict) or depth > 8:
        return None
    defs = dict(defs or {})
    for key in ("$defs", "definitions"):
        if isinstance(schema.get(key), dict):
            defs.update(schema[key])
    if isinstance(schema.get("$ref"), str):
        return example_of(defs.get(schema["$ref"].rsplit("/", 1)[-1]), defs, depth + 1)
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return example_of(schema[key][0], defs, depth + 1)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        properties = schema.get("properties")
        return {str(name): example_of(sub, defs, depth + 1) for name, sub in properties.items()} if isinstance(
            properties, dict) else {}
    if kind == "array":
        return [example_of(schema.get("items", {}), defs, depth + 1)]
    if kind in ("integer", "number"):
        low, above = schema.get("minimum"), schema.get("exclusiveMinimum")
        value = low if _is_number(low) else above + 1 if _is_number(above) else 0
        return int(value) if kind == "integer" else float(value)
    return {"boolean": True, "null": None}.get(kind, "example") if isinstance(kind, str) else None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < 1e15


def _tool_to_call(request: CompletionRequest) -> dict[str, Any] | None:
    """The tool the offline model calls: the one `tool_choice` names, else the first, unless
    tool_choice is "none" or the last message is a tool's result (that is answered instead)."""
    tools = [tool for tool in request.options.get("tools") or () if tool.get("type") == "function"]
    choice = request.options.get("tool_choice", "auto")
    if not tools or choice == "none" or (request.messages and request.messages[-1]["role"] == "tool"):
        return None
    if isinstance(choice, dict):
        named = (choice.get("function") or {}).get("name")
        return next((tool for tool in tools if tool["function"]["name"] == named), tools[0])
    return tools[0]


def offline_tool_call(tool: dict[str, Any]) -> dict[str, Any]:
    function = tool["function"]
    arguments = json.dumps(example_of(function.get("parameters") or {"type": "object"}))
    call_id = "call_" + hashlib.sha256((function["name"] + arguments).encode()).hexdigest()[:24]
    return {"id": call_id, "type": "function", "function": {"name": function["name"], "arguments": arguments}}


def _structured_reply(request: CompletionRequest) -> str | None:
    response_format = request.options.get("response_format") or {}
    if response_format.get("type") == "json_schema":
        return json.dumps(example_of((response_format.get("json_schema") or {}).get("schema") or {}))
    if response_format.get("type") == "json_object":
        return json.dumps({"answer": "[offline] No upstream model is configured."})
    return None


def offline_reply(request: CompletionRequest, *, prompt_tokens: int) -> str:
    """The deterministic answer to `request`: the same request always gets the same text."""
    if request.messages and request.messages[-1]["role"] == "tool":
        result = _text(request.messages[-1]["content"])[:QUOTE_CHARS]
        return f'[offline] The tool answered: "{result}".'
    structured = _structured_reply(request)
    if structured is not None:
        return structured
    user_message = next((_text(m["content"]) for m in reversed(request.messages) if m["role"] == "user"), "")
    quote = user_message[:QUOTE_CHARS] + ("…" if len(user_message) > QUOTE_CHARS else "")
    count = len(request.messages)
    return (
        f"[offline] No upstream model is configured, so LLM Server answered by itself. "
        f"It received {count} message{'' if count == 1 else 's'} ({prompt_tokens} prompt tokens) and your "
        f'last message was: "{quote}". Set OPENAI_BASE_URL and OPENAI_API_KEY to chat with a real model.'
    )


class OfflineProvider:
    name = "offline"

    def _answer(self, request: CompletionRequest) -> Completion:
        encoding = tokens.get_encoding(tokens.encoding_name_for_model(OFFLINE_MODEL_NAME))
        prompt_tokens = tokens.count_prompt_tokens(request.messages, model=OFFLINE_MODEL_NAME)
        if request.options.get("tools"):
            prompt_tokens += tokens.count_tools_tokens(request.options["tools"], model=OFFLINE_MODEL_NAME)
        tool = _tool_to_call(request)
        if tool is not None:
            call = offline_tool_call(tool)
            return Completion(
                text="", model=OFFLINE_MODEL_NAME, prompt_tokens=prompt_tokens,
                completion_tokens=tokens.count_text_tokens(
                    call["function"]["name"] + call["function"]["arguments"], model=OFFLINE_MODEL_NAME
                ),
                usage_estimated=False, finish_reason="tool_calls", tool_calls=(call,),
            )
        reply_tokens = encoding.encode_ordinary(offline_reply(request, prompt_tokens=prompt_tokens))
        finish_reason = "stop"
        limit = request.max_tokens or request.options.get("max_completion_tokens")
        if limit is not None and len(reply_tokens) > limit:
            # Honour max_tokens like a model would: cut the answer and say why it stopped.
            reply_tokens = reply_tokens[:limit]
            finish_reason = "length"
        return Completion(
            text=encoding.decode(reply_tokens),
            model=OFFLINE_MODEL_NAME,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(reply_tokens),
            usage_estimated=False,
            finish_reason=finish_reason,
        )

    async def list_models(self) -> list[str] | None:
        return [OFFLINE_MODEL_NAME]

    async def complete(self, request: CompletionRequest) -> Completion:
        return self._answer(request)

    async def stream(self, request: CompletionRequest) -> AsyncIterator[StreamDelta | Completion]:
        completion = self._answer(request)
        for index, call in enumerate(completion.tool_calls):
            # As a model streams a call: its id and name, then its arguments.
            yield StreamDelta(text="", model=OFFLINE_MODEL_NAME, tool_calls=(
                {"index": index, "id": call["id"], "type": "function",
                 "function": {"name": call["function"]["name"], "arguments": ""}},
                {"index": index, "function": {"arguments": call["function"]["arguments"]}},
            ))
        for word in _WORD.findall(completion.text):
            yield StreamDelta(text=word, model=OFFLINE_MODEL_NAME)
            # Let other requests run between words, as a network stream would.
            await asyncio.sleep(0)
        yield completion
