"""The Responses API's wire format: a response object, its output items, the items of a session (a
conversation's, a response's input), and the stream of events the SDKs read.

Output item ids come from the response's id (`msg_<id>`, `fc_<id>_<n>`), so that a stream can name
them before the answer is stored and a retrieved response names them alike; a stored message listed
as an item is named by its row (`msg_…`, `fc_…`, `fco_…` and its number).
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from chat.models import Message
from chat.providers import StreamDelta
from chat.turns import run
from llmserver.http.handlers import openai_exception_handler
from llmserver.http.sse import sse_event

ECHOED = ("instructions", "tools", "tool_choice", "parallel_tool_calls", "text", "truncation", "metadata",
          "temperature", "top_p", "max_output_tokens", "user", "store")
ECHO_DEFAULTS: dict[str, Any] = {
    "instructions": None, "tools": [], "tool_choice": "auto", "parallel_tool_calls": True,
    "text": {"format": {"type": "text"}}, "truncation": "disabled", "metadata": {}, "temperature": 1.0,
    "top_p": 1.0, "max_output_tokens": None, "user": None, "store": True,
}


def echoed(data: dict[str, Any]) -> dict[str, Any]:
    """The request's fields a response repeats, with OpenAI's defaults for those not sent."""
    return {name: data[name] if data.get(name) is not None else ECHO_DEFAULTS[name] for name in ECHOED}



@dataclass
class ResponseView:
    """What a response object says: from a turn just run, or from its stored row."""

    public_id: str
    status: str
    model: str
    created_at: datetime
    request: dict[str, Any]
    completed_at: datetime | None = None
    text: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    previous_response_id: str | None = None
    conversation_id: str | None = None
    error: dict[str, str] | None = None

    def items(self) -> list[dict[str, Any]]:
        """The output: the answer's text as a message item (when it wrote any), then its calls."""
        found = [message_item(self.public_id, self.text)] if self.text else []
        return found + [function_call_item(self.public_id, n, call) for n, call in enumerate(self.tool_calls)]

    def body(self) -> dict[str, Any]:
        return {
            "id": self.public_id, "object": "response", "created_at": int(self.created_at.timestamp()),
            "completed_at": int(self.completed_at.timestamp()) if self.completed_at else None,
            "status": self.status, "model": self.model, "output": self.items(), "error": self.error,
            "incomplete_details": {"reason": "interrupted"} if self.status == "incomplete" else None,
            "usage": {
                "input_tokens": self.input_tokens, "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": self.output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.input_tokens + self.output_tokens,
            },
            "previous_response_id": self.previous_response_id,
            "conversation": {"id": self.conversation_id} if self.conversation_id else None,
            "background": False, **echoed(self.request),
        }


def message_item(response_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "id": "msg_" + response_id.removeprefix("resp_"), "type": "message", "role": "assistant", "status": status,
        "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}] if status == "completed"
        else [],
    }


def function_call_item(response_id: str, n: int, call: dict[str, Any], status: str = "completed") -> dict[str, Any]:
    return {
        "id": f"fc_{response_id.removeprefix('resp_')}_{n}", "type": "function_call", "status": status,
        "call_id": call["id"], "name": call["function"]["name"],
        "arguments": call["function"]["arguments"] if status == "completed" else "",
    }


def stored_items(message: Message) -> list[dict[str, Any]]:
    """A stored message as the items it is (a conversation's items, a response's input items)."""
    if message.role == Message.Role.TOOL:
        return [{"id": f"fco_{message.pk}", "type": "function_call_output", "call_id": message.tool_call_id,
                 "output": message.content, "status": "completed"}]
    items: list[dict[str, Any]] = []
    if message.content or message.parts or not message.tool_calls:
        kind = "output_text" if message.role == Message.Role.ASSISTANT else "input_text"
        parts = [
            {"type": kind, "text": part["text"]} if part["type"] == "text"
            else {"type": "input_image", "image_url": part.get("url"), "detail": part["detail"]}
            for part in message.parts or [{"type": "text", "text": message.content}]
        ]
        items.append({"id": f"msg_{message.pk}", "type": "message", "role": message.role, "content": parts,
                      "status": "completed"})
    items += [
        {"id": f"fc_{message.pk}_{n}", "type": "function_call", "call_id": call["id"],
         "name": call["function"]["name"], "arguments": call["function"]["arguments"], "status": "completed"}
        for n, call in enumerate(message.tool_calls or ())
    ]
    return items


class _Events:
    """Numbers each event, as the SDKs expect (`sequence_number` from 0)."""

    def __init__(self) -> None:
        self.number = 0

    def __call__(self, kind: str, **fields: Any) -> bytes:
        event = {"type": kind, "sequence_number": self.number, **fields}
        self.number += 1
        return sse_event(event, event=kind)


async def response_events(
    view: ResponseView, first: StreamDelta | run.ChatTurnResult,
    pieces: AsyncIterator[StreamDelta | run.ChatTurnResult], *, finished: Any,
) -> AsyncIterator[bytes]:
    """The turn as the Responses API streams it: created, in_progress, then for the message its
    item, part, text deltas and their ends, for each tool call its item and argument deltas, then
    completed with the whole response; a failure is `response.failed` (or `response.incomplete`
    when part of the answer was kept) with the error. `finished(result)` fills `view` in."""
    event = _Events()
    text: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    message_open = False
    yield event("response.created", response=view.body())
    yield event("response.in_progress", response=view.body())
    piece = first
    try:
        while isinstance(piece, StreamDelta):
            if piece.text:
                if not message_open:
                    message_open = True
                    yield event("response.output_item.added", output_index=0,
                                item=message_item(view.public_id, "", "in_progress"))
                    yield event("response.content_part.added", item_id=_message_id(view), output_index=0,
                                content_index=0, part={"type": "output_text", "text": "", "annotations": []})
                text.append(piece.text)
                yield event("response.output_text.delta", item_id=_message_id(view), output_index=0,
                            content_index=0, delta=piece.text, logprobs=[])
            for call in piece.tool_calls:
                for chunk in _call_events(event, view, calls, call, offset=int(message_open)):
                    yield chunk
            piece = await anext(pieces)
        finished(piece)
        if message_open:
            whole = "".join(text)
            yield event("response.output_text.done", item_id=_message_id(view), output_index=0, content_index=0,
                        text=whole, logprobs=[])
            yield event("response.content_part.done", item_id=_message_id(view), output_index=0, content_index=0,
                        part={"type": "output_text", "text": whole, "annotations": []})
            yield event("response.output_item.done", output_index=0, item=message_item(view.public_id, whole))
        for n, call in enumerate(view.tool_calls):
            output_index = n + int(message_open)
            item_id = f"fc_{view.public_id.removeprefix('resp_')}_{n}"
            yield event("response.function_call_arguments.done", item_id=item_id, output_index=output_index,
                        arguments=call["function"]["arguments"])
            yield event("response.output_item.done", output_index=output_index,
                        item=function_call_item(view.public_id, n, call))
        yield event("response.completed", response=view.body())
    except Exception as exc:
        error = openai_exception_handler(exc, {"where": "a streamed response"}).data["error"]
        view.status = "incomplete" if text or calls else "failed"
        view.text = "".join(text)
        view.error = {"code": error["code"], "message": error["message"]}
        yield event("response.incomplete" if view.status == "incomplete" else "response.failed", response=view.body())
    finally:
        await pieces.aclose()


def _message_id(view: ResponseView) -> str:
    return "msg_" + view.public_id.removeprefix("resp_")


def _call_events(
    event: _Events, view: ResponseView, calls: dict[int, dict[str, Any]], piece: dict[str, Any], *, offset: int
) -> list[bytes]:
    """Events for one piece of a streamed tool call: its item when it starts, then argument deltas."""
    index = piece.get("index", 0)
    function = piece.get("function") or {}
    out: list[bytes] = []
    if index not in calls:
        calls[index] = {"id": piece.get("id") or "", "function": {"name": function.get("name") or "", "arguments": ""}}
        out.append(event("response.output_item.added", output_index=index + offset,
                         item=function_call_item(view.public_id, index, calls[index], "in_progress")))
    if function.get("arguments"):
        out.append(event("response.function_call_arguments.delta",
                         item_id=f"fc_{view.public_id.removeprefix('resp_')}_{index}", output_index=index + offset,
                         delta=function["arguments"]))
    return out
