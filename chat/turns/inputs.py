"""A turn as the client asked for it: its new messages (checked), and what else it asks. What the
HTTP layers build, and what the first step (steps.py) takes."""

from dataclasses import dataclass, field
from typing import Any

from chat.sessions import content
from chat.sessions.content import ContentPart, ImageInput

# The original contract's defaults (POST /api/v1/chat); the API's serializer takes them from here.
DEFAULT_MAX_TOKENS = 1000
DEFAULT_TEMPERATURE = 0.7


@dataclass(frozen=True)
class NewMessage:
    """A message a client sends to be stored (chat/sessions/content.py): a user's message, a tool's
    result, or an earlier message imported into a new session. Already checked."""

    role: str
    content: str
    # Texts and images, when the message is more than one text.
    parts: tuple[ContentPart, ...] | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str = ""
    name: str = ""

    @property
    def stored_parts(self) -> list[dict[str, Any]] | None:
        return None if self.parts is None else content.stored_parts(list(self.parts))

    def tokens_for(self, model: str) -> int:
        return content.message_tokens(
            role=self.role, content=self.content, model=model, parts=self.stored_parts, tool_calls=self.tool_calls,
            tool_call_id=self.tool_call_id, name=self.name,
        )

    def upstream(self) -> dict[str, Any]:
        """In OpenAI's format, its images as the data URLs they came as."""
        image_urls = {part.sha256: content.data_url(part.media_type, part.data)
                      for part in self.parts or () if isinstance(part, ImageInput) and not part.url}
        return content.upstream_message(
            role=self.role, content=self.content, parts=self.stored_parts, tool_calls=self.tool_calls,
            tool_call_id=self.tool_call_id, name=self.name, image_urls=image_urls,
        )

    @property
    def images(self) -> list[ImageInput]:
        return [part for part in self.parts or () if isinstance(part, ImageInput)]


@dataclass(frozen=True)
class ChatTurnInput:
    """One turn as the client asked for it (the original `ChatRequest` contract, extended)."""

    user_message: str = ""
    session_id: str = ""
    system_prompt: str = ""
    model: str = ""
    # None: none is sent upstream (the model writes as much as it will); the limits then reserve
    # what the model can write at most.
    max_tokens: int | None = DEFAULT_MAX_TOKENS
    temperature: float = DEFAULT_TEMPERATURE
    memory_context: list[str] = field(default_factory=list)
    # Earlier turns as (role, content) or as whole messages, imported only into a session with no
    # messages yet.
    conversation_history: list[tuple[str, str] | NewMessage] = field(default_factory=list)
    # Further parameters passed upstream as they are (the OpenAI-compatible endpoint's top_p, stop,
    # seed, tools, response_format, …); already validated.
    options: dict[str, Any] = field(default_factory=dict)
    # The user's message as texts and images, when it is more than `user_message`'s text.
    user_parts: tuple[ContentPart, ...] | None = None
    user_name: str = ""
    # The results of the tool calls of the session's last answer: instead of a user's message, or
    # before it (a client that answers the calls and asks on in one request).
    tool_results: tuple[NewMessage, ...] = ()
    # The client sends its whole conversation every time (the OpenAI-compatible API's clients, agent
    # frameworks): earlier messages ignored for a session with history are expected, not warned of.
    history_resent: bool = False
    # A system message sent first on this turn only, not stored (the Responses API's `instructions`).
    instructions: str = ""
    # The Responses API: the response this turn is, and the session it branches from.
    response: "ResponseStart | None" = None

    def new_messages(self) -> list[NewMessage]:
        if self.tool_results and not (self.user_message or self.user_parts):
            return list(self.tool_results)
        user = NewMessage(role="user", content=self.user_message, parts=self.user_parts, name=self.user_name)
        return [*self.tool_results, user]


@dataclass(frozen=True)
class StatelessTurnInput:
    """A call that keeps no conversation (the OpenAI-compatible endpoint without X-Session-Id):
    the client sends the whole prompt, nothing is stored but the call's usage."""

    messages: list[dict[str, Any]]
    model: str = ""
    max_tokens: int | None = DEFAULT_MAX_TOKENS
    temperature: float = DEFAULT_TEMPERATURE
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ResponseStart:
    """The response a turn is (the Responses API): its id, the response it continues, the fields
    it echoes; and, for a branch from a response that is not its session's last, the session and
    message up to which the new session copies the history."""

    public_id: str
    parent_pk: int | None = None
    request: dict[str, Any] = field(default_factory=dict)
    fork_session_pk: int | None = None
    fork_through_message_id: int | None = None


@dataclass(frozen=True)
class ResentConversation:
    """A conversation as clients of OpenAI's APIs send it, split for a session that keeps it: the
    system messages (the persona), the earlier messages (imported only into a session with none),
    and what is new: what comes after the last assistant message, a user's message, the results
    of that message's tool calls, or those results and then a user's message."""

    persona: str
    earlier: list[NewMessage]
    user: NewMessage | None
    results: tuple[NewMessage, ...]

    @property
    def empty(self) -> bool:
        return self.user is None and not self.results


def resent_conversation(messages: list[NewMessage]) -> ResentConversation:
    conversation = [m for m in messages if m.role != "system"]
    new_start = len(conversation)
    if new_start and conversation[-1].role == "user":
        new_start -= 1
    while new_start > 0 and conversation[new_start - 1].role == "tool":
        new_start -= 1
    new = conversation[new_start:]
    return ResentConversation(
        persona="\n\n".join(m.content for m in messages if m.role == "system"),
        earlier=conversation[:new_start],
        user=new[-1] if new and new[-1].role == "user" else None,
        results=tuple(message for message in new if message.role == "tool"),
    )
