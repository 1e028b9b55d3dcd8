"""Writes: client keys, sessions, and chat turns.

A chat turn is three short steps, and no database transaction is ever open while the model
thinks (STYLE.md rule 4):
1. `chat_turn_begin` (one transaction): find or create the session, take its turn lease, store
   the user's message as pending, and build the prompt from stored history;
2. the upstream call, with no transaction open;
3. `chat_turn_complete` or `chat_turn_fail` (one transaction): store the answer, the usage and
   the session's new totals, or mark the user's message failed; release the lease.

Two turns on one session at once are refused: the second gets 409 `session_busy` (it would
otherwise be answered without seeing the first, and the history would interleave). The lease is
a timestamp taken with a conditional UPDATE, so it holds across worker processes; it expires on
its own after the longest a turn can take, so a crashed worker cannot lock a session forever.
"""

import logging
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import IntegrityError, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone
from django.utils.translation import gettext as _

from chat import crypto, keys, limits, rows, selectors, tokens
from chat.context import Prompt, build_prompt, fixed_prompt
from chat.models import (
    ApiKey,
    ApiKeyEvent,
    ChatSession,
    Message,
    UpstreamCredential,
    UsageDaily,
    UsageDailyTotal,
    UsageRecord,
)
from chat.providers import Completion, CompletionRequest, default_model
from llmserver.errors import (
    InvalidInput,
    ModelNotAllowed,
    ModelNotAvailable,
    SessionAlreadyExists,
    SessionBusy,
    SessionNotFound,
)

logger = logging.getLogger(__name__)

TITLE_LENGTH = 80
# The original contract's defaults.
DEFAULT_MAX_TOKENS = 1000
DEFAULT_TEMPERATURE = 0.7
# How long a turn's lease lasts beyond the longest an upstream call can take (every retry timing
# out), to cover the database writes around it.
TURN_LEASE_MARGIN_SECONDS = 60
# Room for the waits between retries within one upstream call (see upstream_deadline_seconds).
RETRY_WAIT_ALLOWANCE_SECONDS = 30
MIN_KEY_LENGTH_TO_SHOW_LAST4 = 16
PRUNE_BATCH_SIZE = 5000


# --- Client keys ----------------------------------------------------------------------------


def _validated_scopes(scopes: list[str]) -> list[str]:
    unknown = sorted(set(scopes) - set(ApiKey.Scope.values))
    if unknown or not scopes:
        raise InvalidInput(
            _("Scopes must be one or more of %(allowed)s.") % {"allowed": ", ".join(ApiKey.Scope.values)},
            details={"scopes": unknown},
        )
    # Stored in a fixed order so that equal scope sets compare equal.
    return [scope for scope in ApiKey.Scope.values if scope in scopes]


def _cleaned_models(models: list[str]) -> list[str]:
    return list(dict.fromkeys(model.strip() for model in models if model.strip()))


def _record_key_event(*, api_key: ApiKey, action: str, actor: str, note: str = "") -> None:
    ApiKeyEvent.objects.create(api_key=api_key, action=action, actor=actor, note=note)


def api_key_create(
    *,
    name: str,
    actor: str,
    scopes: list[str] | None = None,
    allowed_models: list[str] | None = None,
    expires_at: datetime | None = None,
    owner: Any = None,
    upstream_credential: UpstreamCredential | None = None,
    requests_per_minute: int | None = None,
    tokens_per_day: int | None = None,
    monthly_budget_usd: Decimal | None = None,
) -> tuple[ApiKey, str]:
    """Create a client key (default scope: chat). Returns the row and the full key, which exists
    nowhere else: show it once and forget it. `actor` says who did it, for the audit trail."""
    raw_key, parsed = keys.generate_key()
    with transaction.atomic():
        api_key = ApiKey.objects.create(
            name=name,
            key_id=parsed.key_id,
            secret_hash=keys.hash_secret(parsed.secret),
            last4=raw_key[-4:],
            scopes=_validated_scopes(scopes or [ApiKey.Scope.CHAT]),
            allowed_models=_cleaned_models(allowed_models or []),
            expires_at=expires_at,
            owner=owner,
            upstream_credential=upstream_credential,
            requests_per_minute=requests_per_minute,
            tokens_per_day=tokens_per_day,
            monthly_budget_usd=monthly_budget_usd,
        )
        _record_key_event(api_key=api_key, action=ApiKeyEvent.Action.CREATED, actor=actor)
    return api_key, raw_key


def api_key_update(*, api_key: ApiKey, actor: str, changes: dict[str, Any]) -> ApiKey:
    """Change a key's name, owner, scopes, allowed models, upstream credential, expiry or limits."""
    allowed = {
        "name", "owner", "scopes", "allowed_models", "upstream_credential", "expires_at",
        "requests_per_minute", "tokens_per_day", "monthly_budget_usd",
    }
    unknown = set(changes) - allowed
    if unknown:
        raise ValueError(f"api_key_update cannot change {sorted(unknown)}")
    if "scopes" in changes:
        changes = {**changes, "scopes": _validated_scopes(changes["scopes"])}
    if "allowed_models" in changes:
        changes = {**changes, "allowed_models": _cleaned_models(changes["allowed_models"])}
    if not changes:
        return api_key
    with transaction.atomic():
        for field_name, value in changes.items():
            setattr(api_key, field_name, value)
        api_key.save(update_fields=list(changes))
        _record_key_event(
            api_key=api_key, action=ApiKeyEvent.Action.UPDATED, actor=actor, note=", ".join(sorted(changes))
        )
    return api_key


def api_key_revoke(*, api_key: ApiKey, actor: str) -> bool:
    """Revoke a key: the very next request with it is refused. Returns False when it already was."""
    with transaction.atomic():
        now = timezone.now()
        revoked = ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(
            revoked_at=now, previous_secret_hash="", previous_secret_valid_until=None
        )
        if revoked:
            _record_key_event(api_key=api_key, action=ApiKeyEvent.Action.REVOKED, actor=actor)
    api_key.refresh_from_db()
    return bool(revoked)


def api_key_rotate(*, api_key: ApiKey, actor: str, grace: timedelta = timedelta(0)) -> str:
    """Give the key a new secret and return the new full key. The key keeps its id, so its
    sessions, usage and limits stay with it. The old secret stops at once, or after `grace`."""
    if api_key.revoked_at is not None:
        raise InvalidInput(_("A revoked key cannot be rotated; create a new key instead."))
    raw_key, parsed = keys.generate_key(key_id=api_key.key_id)
    with transaction.atomic():
        api_key.previous_secret_hash = api_key.secret_hash if grace > timedelta(0) else ""
        api_key.previous_secret_valid_until = timezone.now() + grace if grace > timedelta(0) else None
        api_key.secret_hash = keys.hash_secret(parsed.secret)
        api_key.last4 = raw_key[-4:]
        api_key.save(update_fields=["secret_hash", "last4", "previous_secret_hash", "previous_secret_valid_until"])
        note = f"old secret valid for {grace}" if grace > timedelta(0) else "old secret stopped at once"
        _record_key_event(api_key=api_key, action=ApiKeyEvent.Action.ROTATED, actor=actor, note=note)
    return raw_key


def api_key_touch(*, api_key: ApiKey) -> None:
    """Keep `last_used_at` fresh with at most one write per key per interval, not one per request."""
    now = timezone.now()
    interval = timedelta(seconds=settings.API_KEY_LAST_USED_INTERVAL_SECONDS)
    if api_key.last_used_at is not None and api_key.last_used_at > now - interval:
        return
    ApiKey.objects.filter(pk=api_key.pk).filter(
        Q(last_used_at__isnull=True) | Q(last_used_at__lte=now - interval)
    ).update(last_used_at=now)
    api_key.last_used_at = now


def playground_key_for(*, user: Any) -> ApiKey:
    """The client key a staff user's playground chats run under: created on first use, owned by
    the user, scope `chat`. Its secret is never shown (the playground authenticates with the
    admin login), so it cannot be used from outside. Its sessions, usage and limits are those of
    any key; revoking it makes the next playground chat start a new one."""
    name = f"Playground: {user.get_username()}"[: ApiKey._meta.get_field("name").max_length]
    usable = ApiKey.objects.filter(owner=user, name=name, revoked_at__isnull=True).filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=timezone.now())
    )
    if (found := usable.order_by("pk").first()) is not None:
        return found
    # First use: the user's row, locked, serialises two requests that both found no key (a page
    # and its first chat), so that exactly one key is created.
    with transaction.atomic():
        list(get_user_model().objects.select_for_update().filter(pk=user.pk).values_list("pk", flat=True))
        if (found := usable.order_by("pk").first()) is not None:
            return found
        api_key, _raw_key = api_key_create(name=name, actor=f"admin:{user.get_username()}", owner=user)
    return api_key


# --- Upstream credentials -------------------------------------------------------------------


def upstream_credential_save(
    *, credential: UpstreamCredential, plaintext_key: str | None = None
) -> UpstreamCredential:
    """Store a credential, encrypting a new upstream key when one is given (None keeps the stored
    one). The plaintext is never stored; `api_key_last4` is what the admin shows."""
    if plaintext_key is not None:
        credential.api_key_encrypted = crypto.encrypt(plaintext_key)
        # A short key's last 4 characters would give most of it away.
        credential.api_key_last4 = plaintext_key[-4:] if len(plaintext_key) >= MIN_KEY_LENGTH_TO_SHOW_LAST4 else ""
    credential.served_models = _cleaned_models(credential.served_models or [])
    credential.updated_at = timezone.now()
    credential.save()
    return credential


def upstream_credentials_reencrypt() -> int:
    """Re-encrypt every stored credential under the first FIELD_ENCRYPTION_KEYS key; returns how
    many. Run it after putting a new key first, before removing the old one."""
    count = 0
    with transaction.atomic():
        for credential in UpstreamCredential.objects.select_for_update().only("pk", "api_key_encrypted"):
            UpstreamCredential.objects.filter(pk=credential.pk).update(
                api_key_encrypted=crypto.reencrypt(credential.api_key_encrypted)
            )
            count += 1
    return count


# --- Sessions -------------------------------------------------------------------------------


def new_session_public_id() -> str:
    return uuid.uuid4().hex


def _title_from(message: str) -> str:
    return re.sub(r"\s+", " ", message).strip()[:TITLE_LENGTH]


def _merge_memory(current: list[str], new_facts: list[str]) -> list[str]:
    """`current` followed by the new facts it does not hold yet, within the configured cap."""
    merged = list(current)
    for fact in new_facts:
        if fact not in merged:
            merged.append(fact)
    if len(merged) > settings.CHAT_MAX_MEMORY_FACTS:
        raise InvalidInput(
            _("The session would hold %(count)d memory facts; the limit is %(limit)d.")
            % {"count": len(merged), "limit": settings.CHAT_MAX_MEMORY_FACTS},
            details={"memory_context": [_("Too many memory facts.")]},
        )
    return merged


def session_create(
    *,
    api_key: ApiKey,
    public_id: str = "",
    title: str = "",
    system_prompt: str = "",
    model: str = "",
    memory_facts: list[str] | None = None,
) -> ChatSession:
    """Create a session for `api_key`. An empty `public_id` gets a new random one.

    Raises SessionAlreadyExists when the key already has a session with this id.
    """
    public_id = public_id or new_session_public_id()
    model = model or model_default_for(api_key)
    _check_model(api_key=api_key, model=model, key_source=UsageRecord.KeySource.DEFAULT)
    try:
        # The unique constraint decides, not a prior look-up: two requests creating the same id
        # at once both pass a look-up, and one of them must still get 409, not 500.
        with transaction.atomic():
            return ChatSession.objects.create(
                api_key=api_key,
                public_id=public_id,
                title=title,
                system_prompt=system_prompt,
                model=model,
                memory_facts=_merge_memory([], memory_facts or []),
            )
    except IntegrityError:
        raise SessionAlreadyExists(details={"session_id": public_id}) from None


def session_update(*, session: ChatSession, changes: dict[str, Any]) -> ChatSession:
    """Apply `changes` (any of title, system_prompt, model, memory_facts; memory replaces)."""
    allowed = {"title", "system_prompt", "model", "memory_facts"}
    unknown = set(changes) - allowed
    if unknown:
        raise ValueError(f"session_update cannot change {sorted(unknown)}")
    if "memory_facts" in changes:
        changes = {**changes, "memory_facts": _merge_memory([], changes["memory_facts"])}
    if "model" in changes:
        model = changes["model"] or model_default_for(session.api_key)
        _check_model(api_key=session.api_key, model=model, key_source=UsageRecord.KeySource.DEFAULT)
        changes = {**changes, "model": model}
    for name, value in changes.items():
        setattr(session, name, value)
    session.updated_at = timezone.now()
    session.save(update_fields=[*changes, "updated_at"])
    return session


def session_delete(*, session: ChatSession) -> None:
    """Delete a session and its messages. Its usage records stay, for the bill.

    Raises SessionBusy while a turn of the session is waiting on upstream: its answer and usage
    must have a session to be written to.
    """
    with transaction.atomic():
        locked = ChatSession.objects.select_for_update().filter(pk=session.pk).first()
        if locked is None:
            return
        if _lease_held(locked.turn_started_at, now=timezone.now()):
            raise SessionBusy(details={"session_id": session.public_id}, retry_after=1)
        locked.delete()


# --- Chat turns -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ChatTurnInput:
    """One turn as the client asked for it (the original `ChatRequest` contract)."""

    user_message: str
    session_id: str = ""
    system_prompt: str = ""
    model: str = ""
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = DEFAULT_TEMPERATURE
    memory_context: list[str] = field(default_factory=list)
    # Earlier turns as (role, content), imported only into a session with no messages yet.
    conversation_history: list[tuple[str, str]] = field(default_factory=list)
    # Further sampling parameters passed upstream as they are (the OpenAI-compatible endpoint's
    # top_p, stop, seed, …); already validated.
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StatelessTurnInput:
    """A call that keeps no conversation (the OpenAI-compatible endpoint without X-Session-Id):
    the client sends the whole prompt, nothing is stored but the call's usage."""

    messages: list[dict[str, str]]
    model: str = ""
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = DEFAULT_TEMPERATURE
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PreparedTurn:
    """A turn whose question is stored (or, stateless, only checked) and whose prompt is built:
    what the upstream call and the turn's end need."""

    api_key_id: int
    # None for a stateless turn: no session, no stored message, no lease.
    session_pk: int | None
    session_id: str
    user_message_id: int | None
    model: str
    prompt: Prompt
    max_tokens: int
    temperature: float
    warnings: list[str]
    # The lease this turn holds: only this turn's end may release it.
    lease_started_at: datetime | None
    key_source: str = UsageRecord.KeySource.DEFAULT
    # What the turn reserved against the key's limits, settled when it ends.
    reservations: tuple[limits.Reservation, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def stateless(self) -> bool:
        return self.session_pk is None

    def completion_request(self) -> CompletionRequest:
        return CompletionRequest(
            model=self.model,
            messages=self.prompt.messages,
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            options=self.options,
        )


def upstream_deadline_seconds() -> float:
    """The longest one upstream call may take, retries included. Every attempt may use the whole
    timeout, and the provider waits between attempts (its backoff, or upstream's Retry-After of up
    to 8 s, chat/providers/openai_compatible.py): the call is cut at this deadline so that a turn
    always ends inside its lease."""
    return settings.LLM_TIMEOUT_SECONDS * (settings.LLM_MAX_RETRIES + 1) + RETRY_WAIT_ALLOWANCE_SECONDS


def turn_lease() -> timedelta:
    return timedelta(seconds=upstream_deadline_seconds() + TURN_LEASE_MARGIN_SECONDS)


def _lease_held(turn_started_at: datetime | None, *, now: datetime) -> bool:
    return turn_started_at is not None and turn_started_at >= now - turn_lease()


def _stored_message(
    *, session_pk: int, role: str, content: str, model: str, token_count: int | None = None, **fields: Any
) -> Message:
    """`token_count`: the message's tokens under `model`, when already counted."""
    if token_count is None:
        token_count = tokens.count_message_tokens(role=role, content=content, model=model)
    return Message(
        session_id=session_pk,
        role=role,
        content=content,
        token_count=token_count,
        token_encoding=tokens.encoding_name_for_model(model),
        **fields,
    )


def model_default_for(api_key: ApiKey) -> str:
    """The model of a new session that names none: the first model the key's upstream credential
    serves, else the server default."""
    credential = api_key.upstream_credential
    if credential is not None and credential.served_models:
        return credential.served_models[0]
    return default_model()


def models_usable_by(api_key: ApiKey) -> list[str]:
    """The models this key can use with the server's upstream, as far as the server knows (what
    /v1/models lists): its allow-list, narrowed to what its upstream credential serves when
    that is known; else what the credential serves; else the server's default model (such a
    key may still ask for any model its upstream serves). `_check_model` enforces the same."""
    credential = api_key.upstream_credential
    served = credential.served_models if credential is not None else []
    if api_key.allowed_models:
        return [model for model in api_key.allowed_models if not served or model in served]
    return list(served) or [default_model()]


def _check_model(*, api_key: ApiKey, model: str, key_source: str) -> None:
    if api_key.allowed_models and model not in api_key.allowed_models:
        raise ModelNotAllowed(
            _("This API key may not use the model %(model)s; it may use: %(allowed)s.")
            % {"model": model, "allowed": ", ".join(api_key.allowed_models)},
            details={"model": model, "allowed_models": api_key.allowed_models},
        )
    credential = api_key.upstream_credential
    if key_source == UsageRecord.KeySource.DEFAULT and credential is not None and credential.served_models:
        if model not in credential.served_models:
            raise ModelNotAvailable(
                _("The upstream assigned to this API key does not serve %(model)s; it serves: %(served)s.")
                % {"model": model, "served": ", ".join(credential.served_models)},
                details={"model": model, "served_models": credential.served_models},
            )


def _session_leased(*, api_key: ApiKey, turn: ChatTurnInput, now: datetime, key_source: str) -> ChatSession:
    """The turn's session with its lease taken, and the model checked: an existing session in a
    single UPDATE; else a new one, created leased. Raises ModelNotAllowed or ModelNotAvailable
    before SessionBusy (when another turn holds the lease), as for a free session."""
    new_fields = {
        "model": turn.model or model_default_for(api_key),
        "title": _title_from(turn.user_message),
        "turn_started_at": now,
    }
    if not turn.session_id:
        # An id made up just now cannot exist yet: no lookup, no savepoint.
        session = ChatSession(api_key=api_key, public_id=new_session_public_id(), **new_fields)
        rows.insert(session)
        created = True
    else:
        session = rows.session_lease(
            api_key_id=api_key.pk, public_id=turn.session_id, now=now, expired_before=now - turn_lease()
        )
        if session is not None:
            _check_model(api_key=api_key, model=turn.model or session.model, key_source=key_source)
            return session
        session, created = ChatSession.objects.get_or_create(
            api_key=api_key, public_id=turn.session_id, defaults=new_fields
        )
    _check_model(api_key=api_key, model=turn.model or session.model, key_source=key_source)
    if not created:
        # It exists, so the UPDATE above found its lease held (or another request created, and
        # leased, it a moment ago).
        raise SessionBusy(details={"session_id": session.public_id}, retry_after=1)
    return session


def chat_turn_begin(
    *, api_key: ApiKey, turn: ChatTurnInput, key_source: str = UsageRecord.KeySource.DEFAULT
) -> PreparedTurn:
    """Step 1 of a turn, in one short transaction. Stores nothing when it raises.

    Raises SessionBusy when another turn of the session is in flight, ContextTooLong when the
    new message cannot fit, InvalidInput for too many memory facts, ModelNotAllowed or
    ModelNotAvailable when the key may not use the model.
    """
    now = timezone.now()
    warnings: list[str] = []
    with transaction.atomic():
        session = _session_leased(api_key=api_key, turn=turn, now=now, key_source=key_source)

        changed: list[str] = []
        if turn.system_prompt and turn.system_prompt != session.system_prompt:
            session.system_prompt = turn.system_prompt
            changed.append("system_prompt")
        if turn.model and turn.model != session.model:
            session.model = turn.model
            changed.append("model")
        if turn.memory_context:
            merged = _merge_memory(session.memory_facts, turn.memory_context)
            if merged != session.memory_facts:
                session.memory_facts = merged
                changed.append("memory_facts")
        if not session.title:
            session.title = _title_from(turn.user_message)
            changed.append("title")
        if changed:
            session.save(update_fields=changed)

        if turn.conversation_history:
            if selectors.session_has_messages(session_pk=session.pk):
                warnings.append(
                    _("conversation_history was ignored: this session already has stored messages, and its stored history is used instead.")
                )
            else:
                Message.objects.bulk_create(
                    _stored_message(session_pk=session.pk, role=role, content=content, model=session.model)
                    for role, content in turn.conversation_history
                )

        prompt = build_prompt(
            model=session.model,
            max_tokens=turn.max_tokens,
            system_prompt=session.system_prompt,
            memory_facts=session.memory_facts,
            history_newest_first=selectors.history_newest_first(session_pk=session.pk),
            user_message=turn.user_message,
        )
        reservations = limits.reserve(
            api_key=api_key, model=session.model, prompt_tokens=prompt.prompt_tokens, max_tokens=turn.max_tokens,
            now=now,
        )
        user_message = _stored_message(
            session_pk=session.pk,
            role=Message.Role.USER,
            content=turn.user_message,
            model=session.model,
            token_count=prompt.user_message_tokens,
            status=Message.Status.PENDING,
        )
        user_message.model = session.model
        rows.insert(user_message)
    return PreparedTurn(
        api_key_id=api_key.pk,
        session_pk=session.pk,
        session_id=session.public_id,
        user_message_id=user_message.pk,
        model=session.model,
        prompt=prompt,
        max_tokens=turn.max_tokens,
        temperature=turn.temperature,
        warnings=warnings,
        lease_started_at=now,
        key_source=key_source,
        reservations=tuple(reservations),
        options=turn.options,
    )


def stateless_turn_begin(
    *, api_key: ApiKey, turn: StatelessTurnInput, key_source: str = UsageRecord.KeySource.DEFAULT
) -> PreparedTurn:
    """Step 1 of a turn that keeps no conversation: check the model and the prompt's size, and
    reserve against the key's limits. Stores nothing.

    Raises ModelNotAllowed or ModelNotAvailable, ContextTooLong, or LimitExceeded.
    """
    model = turn.model or model_default_for(api_key)
    _check_model(api_key=api_key, model=model, key_source=key_source)
    prompt = fixed_prompt(turn.messages, model=model, max_tokens=turn.max_tokens)
    now = timezone.now()
    with transaction.atomic():
        reservations = limits.reserve(
            api_key=api_key, model=model, prompt_tokens=prompt.prompt_tokens, max_tokens=turn.max_tokens, now=now
        )
    return PreparedTurn(
        api_key_id=api_key.pk,
        session_pk=None,
        session_id="",
        user_message_id=None,
        model=model,
        prompt=prompt,
        max_tokens=turn.max_tokens,
        temperature=turn.temperature,
        warnings=[],
        lease_started_at=None,
        key_source=key_source,
        reservations=tuple(reservations),
        options=turn.options,
    )


def chat_turn_complete(
    *, turn: PreparedTurn, completion: Completion, latency_ms: int, cut_short_by: str = ""
) -> Message | None:
    """Step 3 when upstream answered, in one transaction: the answer, its usage, the session's
    totals. Returns the stored answer (None for a stateless turn, which stores none).

    `cut_short_by` is the error code of whatever ended a streamed answer early (the client went
    away, upstream dropped): the partial answer and its question are stored marked incomplete, so
    that they are kept but never replayed, and the call is recorded as partial.
    """
    if turn.stateless:
        outcome = UsageRecord.Outcome.PARTIAL if cut_short_by else UsageRecord.Outcome.SUCCESS
        with transaction.atomic():
            _record_usage(turn=turn, completion=completion, latency_ms=latency_ms, outcome=outcome,
                          error_code=cut_short_by)
        return None
    status = Message.Status.INCOMPLETE if cut_short_by else Message.Status.COMPLETE
    answer = _stored_message(
        session_pk=turn.session_pk,
        role=Message.Role.ASSISTANT,
        content=completion.text,
        model=turn.model,
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        latency_ms=latency_ms,
        status=status,
        error_code=cut_short_by,
    )
    answer.model = completion.model
    with transaction.atomic():
        session_exists = rows.session_end_turn(
            session_pk=turn.session_pk, lease_started_at=turn.lease_started_at, now=timezone.now(),
            prompt_tokens=completion.prompt_tokens, completion_tokens=completion.completion_tokens,
        )
        if session_exists:
            rows.message_set_status(message_id=turn.user_message_id, status=status, error_code=cut_short_by)
            rows.insert(answer)
        # Last: see _record_usage.
        _record_usage(
            turn=turn, completion=completion, latency_ms=latency_ms,
            outcome=UsageRecord.Outcome.PARTIAL if cut_short_by else UsageRecord.Outcome.SUCCESS,
            error_code=cut_short_by, session_exists=session_exists,
        )
    if not session_exists:
        # Deleted while upstream answered (possible only once the lease had run out): the tokens
        # were spent all the same, so they were recorded above, against no session.
        raise SessionNotFound(
            _("The session was deleted while its answer was being written; the tokens used were recorded."),
            details={"session_id": turn.session_id},
        )
    return answer


def _record_usage(
    *, turn: PreparedTurn, completion: Completion | None, latency_ms: int, outcome: str,
    error_code: str = "", session_exists: bool = True,
) -> None:
    """Record the call and settle the turn's reservations to what it used.

    Always the last writes of a turn's transaction: the roll-up rows are shared (the key's by
    every turn of the key, the all-keys one by every turn of the model), and so are a key's limit
    counters, and each turn holds their row locks from its UPDATE until it commits. Written first, they made a key's concurrent turns wait for the rest of each other's
    transactions (sampled from pg_stat_activity at 8 clients: a third as many lock waits since)."""
    record = usage_record(
        api_key_id=turn.api_key_id,
        session_pk=turn.session_pk if session_exists else None,
        model=completion.model if completion else turn.model,
        prompt_tokens=completion.prompt_tokens if completion else 0,
        completion_tokens=completion.completion_tokens if completion else 0,
        usage_estimated=completion.usage_estimated if completion else False,
        key_source=turn.key_source,
        latency_ms=latency_ms,
        outcome=outcome,
        error_code=error_code,
    )
    limits.settle(
        api_key_id=turn.api_key_id, reservations=list(turn.reservations), tokens=record.total_tokens, cost=record.cost
    )


# --- Usage ----------------------------------------------------------------------------------


def usage_record(
    *, api_key_id: int, session_pk: int | None, model: str, prompt_tokens: int, completion_tokens: int,
    usage_estimated: bool, key_source: str, latency_ms: int, outcome: str, error_code: str = "",
) -> UsageRecord:
    """Record one upstream call and move its day's roll-up, in the caller's transaction (or one
    of its own), so that the record and the roll-up can never disagree."""
    cost = selectors.usage_cost(model=model, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    # No savepoint when called inside a turn's transaction (it would cost two more statements
    # per call); a transaction of its own when called alone.
    with transaction.atomic(savepoint=False):
        record = UsageRecord(
            api_key_id=api_key_id,
            session_id=session_pk,
            model=model,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            usage_estimated=usage_estimated,
            cost=cost,
            key_source=key_source,
            latency_ms=latency_ms,
            outcome=outcome,
            error_code=error_code,
        )
        rows.insert(record)
        _usage_daily_add(record)
    return record


def usage_prune(*, older_than_days: int) -> tuple[int, datetime]:
    """Delete usage records older than the cutoff, in batches. The roll-ups keep every report
    whole. Returns (deleted, cutoff)."""
    cutoff = timezone.now() - timedelta(days=older_than_days)
    return delete_in_batches(UsageRecord.objects.filter(created_at__lt=cutoff)), cutoff


def delete_in_batches(queryset: QuerySet) -> int:
    """Delete the rows of `queryset` PRUNE_BATCH_SIZE at a time: one long DELETE would hold its
    locks (SQLite's whole-database write lock) for its whole length. Returns how many."""
    deleted = 0
    while True:
        batch = list(queryset.values_list("pk", flat=True)[:PRUNE_BATCH_SIZE])
        if not batch:
            return deleted
        deleted += queryset.model.objects.filter(pk__in=batch).delete()[0]


def _usage_daily_add(record: UsageRecord) -> None:
    """Add the record to its key's roll-up and to the all-keys roll-up of its day and model."""
    day = record.created_at.astimezone(dt_timezone.utc).date()
    counts = {
        "requests": 1,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "total_tokens": record.total_tokens,
        "cost": record.cost,
    }
    _roll_up_add(UsageDaily, {"api_key": record.api_key_id, "model": record.model, "day": day}, counts)
    _roll_up_add(UsageDailyTotal, {"model": record.model, "day": day}, counts)


def _roll_up_add(model: type[UsageDaily] | type[UsageDailyTotal], identity: dict[str, Any], counts: dict[str, Any]) -> None:
    """Add `counts` to the roll-up row of `identity` (field name -> value), creating it on the
    day's first call."""
    if rows.roll_up_add(model, identity, counts):
        return
    try:
        # The first call of its day. Two first calls at once: the unique constraint lets one
        # insert win, and the other adds to its row.
        with transaction.atomic():
            model.objects.create(**{model._meta.get_field(name).attname: value for name, value in identity.items()},
                                 **counts)
    except IntegrityError:
        rows.roll_up_add(model, identity, counts)


def chat_turn_fail(
    *, turn: PreparedTurn, error_code: str, latency_ms: int, completion: Completion | None = None
) -> None:
    """Step 3 on failure, in one transaction: the user's message is kept, marked failed (so it is
    never replayed); no answer is invented; the call is recorded as failed, with the tokens of
    `completion` when upstream did answer (and storing the answer is what failed), else none."""
    if turn.stateless:
        with transaction.atomic():
            _record_usage(turn=turn, completion=completion, latency_ms=latency_ms,
                          outcome=UsageRecord.Outcome.FAILED, error_code=error_code)
        return
    with transaction.atomic():
        session_exists = rows.session_end_turn(
            session_pk=turn.session_pk, lease_started_at=turn.lease_started_at, now=timezone.now()
        )
        rows.message_set_status(message_id=turn.user_message_id, status=Message.Status.FAILED, error_code=error_code)
        _record_usage(turn=turn, completion=completion, latency_ms=latency_ms, outcome=UsageRecord.Outcome.FAILED,
                      error_code=error_code, session_exists=session_exists)
