"""Exact OpenAI token counting that works offline, from rank files shipped in the repository.

``tiktoken.get_encoding()`` downloads its BPE rank files from the internet on first use,
which fails on a machine without internet access. This module feeds tiktoken's Rust BPE
core with the same files, bundled gzipped in ``chat/tokenizer_data/`` and checked against
the SHA-256 that tiktoken itself pins, so every count equals tiktoken's own. tiktoken's
download cache (``TIKTOKEN_CACHE_DIR``) is never read or written.

Only ``cl100k_base`` (gpt-4, gpt-3.5-turbo) and ``o200k_base`` (gpt-4o, o1 and later) are
shipped; every model name resolves to one of them (see ``encoding_name_for_model``).

Beyond plain text, ``count_prompt_tokens`` counts content parts, images, tool calls and tools by OpenAI's
published rules. Where an upstream's own count will differ:

- Non-OpenAI upstreams (llama3, offline) have their own tokenizers: all their counts are estimates.
- Tools: the cookbook's ``num_tokens_for_tools`` (checked by OpenAI for gpt-3.5-turbo, gpt-4, gpt-4o and
  gpt-4o-mini). Nested schemas count as JSON text, longer than the TypeScript-like types OpenAI renders.
  ``tool_choice`` is not counted (a few tokens at most).
- Tool calls and results: their framing is undocumented. A call costs its name, arguments and
  ``TOKENS_PER_TOOL_CALL``; ``tool_call_id`` counts as text, as the cookbook counts every value.
- Images: the vision guide's tile method, even for models on its 32-px patch method (gpt-4.1-mini/nano,
  gpt-5-mini/nano, o4-mini), which it counts low (1024x1024: 765 against 1024 patches). ``"auto"`` detail
  counts as high, the most it costs. http(s) images are never fetched: of unknown size, they count as a
  high-detail ``UNKNOWN_IMAGE_SIZE``. Audio and file parts are not counted.

This module must not import Django: it is used from plain scripts and unit tests.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import io
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import tiktoken
import tiktoken.model

__all__ = [
    "FALLBACK_ENCODING", "REPLY_PRIMING_TOKENS", "TOKENS_PER_MESSAGE", "TOKENS_PER_NAME", "TOKENS_PER_TOOL_CALL",
    "UNKNOWN_IMAGE_SIZE", "count_message_tokens", "count_openai_message_tokens", "count_prompt_tokens",
    "count_text_tokens", "count_tools_tokens", "encoding_name_for_model", "get_encoding", "image_tokens",
    "is_exact_for_model",
]

_DATA_DIR: Final = Path(__file__).resolve().parent / "tokenizer_data"

# Chat framing overhead, from OpenAI's cookbook "How to count tokens with tiktoken",
# section 6 (num_tokens_from_messages), for gpt-3.5-turbo-0613 and later, gpt-4, gpt-4o
# and gpt-4o-mini; the cookbook checked these against the prompt_tokens the API reported.
# The retired gpt-3.5-turbo-0301 used 4 per message and -1 per name; it is not special-cased.
TOKENS_PER_MESSAGE: Final = 3  # every message is framed as <|start|>{role/name}\n{content}<|end|>\n
TOKENS_PER_NAME: Final = 1  # a message's optional "name" costs one token on top of its text
REPLY_PRIMING_TOKENS: Final = 3  # every reply is primed with <|start|>assistant<|message|>
# OpenAI does not document a tool call's framing; it is taken to cost what a message's does.
TOKENS_PER_TOOL_CALL: Final = 3

# Used for models tiktoken does not know (local models such as llama3, our "offline"
# provider): the encoding of current OpenAI models, so such counts are estimates.
FALLBACK_ENCODING: Final = "o200k_base"


@dataclass(frozen=True, slots=True)
class _EncodingSpec:
    """What tiktoken pins for one encoding, besides the rank file itself."""

    sha256: str  # of the decompressed .tiktoken rank file
    pat_str: str
    special_tokens: Mapping[str, int]


# Copied from tiktoken 0.14.0, tiktoken_ext/openai_public.py, functions cl100k_base() and
# o200k_base(): both build their pattern, special tokens and expected hash inline, next to
# the download, so there is nothing importable to reuse. tests/chat/test_tokens.py compares
# these values with the installed tiktoken's, so an upgrade that changes them fails there.
_SPECS: Final[Mapping[str, _EncodingSpec]] = {
    "cl100k_base": _EncodingSpec(
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pat_str=(
            r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""  # noqa: E501  (tiktoken's own pattern, as it is)
        ),
        special_tokens={
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    ),
    "o200k_base": _EncodingSpec(
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        pat_str="|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        special_tokens={"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    ),
}

# tiktoken's encoding for a model -> (shipped encoding we count with, whether the counts
# are identical to the model's own).
_SHIPPED_EQUIVALENT: Final[Mapping[str, tuple[str, bool]]] = {
    "cl100k_base": ("cl100k_base", True),
    "o200k_base": ("o200k_base", True),
    # gpt-oss: o200k_harmony is o200k_base's ranks and pattern plus extra special tokens.
    # We never encode special tokens (see count_text_tokens), so ordinary-text counts are
    # identical.
    "o200k_harmony": ("o200k_base", True),
    # Retired GPT-3-era models (davinci, text-davinci-003, codex, gpt2). Their ~50k
    # vocabularies are not shipped; cl100k_base is the closest shipped one (the next
    # generation of the same byte-level BPE), so these counts are estimates.
    "r50k_base": ("cl100k_base", False),
    "p50k_base": ("cl100k_base", False),
    "p50k_edit": ("cl100k_base", False),
    "gpt2": ("cl100k_base", False),
}

_FALLBACK: Final = (FALLBACK_ENCODING, False)


# Bounded because model names come from requests. Caching spares the prefix scan on
# every chat turn and, for unknown models, a raised and caught KeyError.
@functools.lru_cache(maxsize=256)
def _resolve(model: str) -> tuple[str, bool]:
    """Return (shipped encoding name, counts are the model's own) for ``model``."""
    try:
        tiktoken_name = tiktoken.model.encoding_name_for_model(model)
    except KeyError:
        return _FALLBACK
    # An encoding that a newer tiktoken introduces, and that we do not ship, is treated
    # like an unknown model rather than failing at count time.
    return _SHIPPED_EQUIVALENT.get(tiktoken_name, _FALLBACK)


def encoding_name_for_model(model: str) -> str:
    """Return the name of the shipped encoding to count ``model``'s tokens with.

    Always ``"cl100k_base"`` or ``"o200k_base"``, never raises. Models tiktoken knows
    (gpt-4o, gpt-4, gpt-3.5-turbo, o1, ..., by exact name or by prefix such as
    ``gpt-4o-2024-08-06``) get their own encoding, or the closest shipped one for
    encodings we do not ship; any other name (``llama3``, ``offline``) gets
    ``FALLBACK_ENCODING``.
    """
    return _resolve(model)[0]


def is_exact_for_model(model: str) -> bool:
    """Tell whether text token counts for ``model`` are the provider's own.

    True when tiktoken knows the model and its encoding is shipped (or, for
    o200k_harmony, counts identically). False when the count is an estimate: models
    tiktoken does not know, and retired 50k-vocabulary models. This concerns the text
    only; the chat framing of ``count_prompt_tokens`` is the cookbook's, verified for
    gpt-3.5-turbo, gpt-4, gpt-4o and gpt-4o-mini.
    """
    return _resolve(model)[1]


def _load_mergeable_ranks(path: Path, expected_sha256: str) -> dict[bytes, int]:
    """Read a gzipped ``.tiktoken`` rank file, refusing it unless its content is pinned.

    The SHA-256 is taken over the decompressed bytes, which is what tiktoken pins, so
    the check does not depend on how the file was compressed. Each non-empty line is
    ``<base64 token bytes> <rank>``. Raises RuntimeError on a hash mismatch.
    """
    data = gzip.decompress(path.read_bytes())
    actual_sha256 = hashlib.sha256(data).hexdigest()
    if actual_sha256 != expected_sha256:
        raise RuntimeError(
            f"{path}: SHA-256 of the decompressed rank file is {actual_sha256}, "
            f"expected {expected_sha256} (the hash tiktoken pins). The bundled file is "
            f"corrupt or was replaced; see {_DATA_DIR / 'README.md'} to regenerate it."
        )
    return {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in data.splitlines() if line)
    }


# functools.cache does not lock while building: threads racing on the very first call
# may each build the encoding (about a second of CPU) and one result is kept. That is
# harmless; call get_encoding() once at startup to keep it off a request's path.
@functools.cache
def get_encoding(name: str) -> tiktoken.Encoding:
    """Return the tiktoken Encoding ``name`` built from the bundled rank file, cached.

    ``name`` is ``"cl100k_base"`` or ``"o200k_base"``; anything else raises ValueError.
    Raises RuntimeError if the bundled file's decompressed SHA-256 differs from the one
    tiktoken pins. Never touches the network or tiktoken's download cache. Encodings are
    identical to ``tiktoken.get_encoding(name)``; the returned object is shared.
    """
    spec = _SPECS.get(name)
    if spec is None:
        raise ValueError(f"encoding {name!r} is not shipped; shipped: {sorted(_SPECS)}")
    return tiktoken.Encoding(
        name=name,
        pat_str=spec.pat_str,
        mergeable_ranks=_load_mergeable_ranks(_DATA_DIR / f"{name}.tiktoken.gz", spec.sha256),
        # A copy, because Encoding keeps the dict it is given and the spec is shared.
        special_tokens=dict(spec.special_tokens),
    )


def _encoding_for_model(model: str) -> tiktoken.Encoding:
    return get_encoding(_resolve(model)[0])


def _message_tokens(
    encoding: tiktoken.Encoding, role: str, content: str, name: str | None
) -> int:
    # encode_ordinary, unlike the cookbook's encode(), treats special-token strings in
    # user text as plain text instead of raising; for any other text they agree.
    tokens = (
        TOKENS_PER_MESSAGE
        + len(encoding.encode_ordinary(role))
        + len(encoding.encode_ordinary(content))
    )
    if name is not None:
        tokens += TOKENS_PER_NAME + len(encoding.encode_ordinary(name))
    return tokens


def count_text_tokens(text: str, *, model: str) -> int:
    """Return the number of tokens of plain ``text`` for ``model``.

    Special-token strings such as ``"<|endoftext|>"`` inside the text are counted as the
    ordinary text they are; this never raises, not even on lone surrogates (tiktoken
    counts them as U+FFFD). Exact when ``is_exact_for_model(model)``, else an estimate.
    """
    return len(_encoding_for_model(model).encode_ordinary(text))


def count_message_tokens(
    *, role: str, content: str, model: str, name: str | None = None
) -> int:
    """Return the tokens one chat message adds to a prompt for ``model``.

    Per OpenAI's cookbook: ``TOKENS_PER_MESSAGE`` + tokens of ``role`` + tokens of
    ``content``, plus ``TOKENS_PER_NAME`` + tokens of ``name`` when a name is given.
    Excludes the ``REPLY_PRIMING_TOKENS`` that a whole prompt adds once.
    """
    return _message_tokens(_encoding_for_model(model), role, content, name)


def count_prompt_tokens(messages: Iterable[Mapping[str, Any]], *, model: str, tools: list[dict] | None = None) -> int:
    """Return the prompt tokens of a chat completion request with ``messages`` and ``tools``.

    ``count_openai_message_tokens`` of each message, plus ``REPLY_PRIMING_TOKENS``, plus ``count_tools_tokens``.
    For text messages the cookbook found this equal to the API's prompt_tokens for gpt-3.5-turbo, gpt-4,
    gpt-4o and gpt-4o-mini; the module docstring says what else is an estimate.
    """
    encoding = _encoding_for_model(model)
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        # A plain {"role", "content": text} inline: nearly every message is one, and must cost what it did.
        if len(message) == 2 and type(content := message.get("content")) is str:
            total += _message_tokens(encoding, message["role"], content, None)
        else:
            total += _openai_message_tokens(encoding, message, model)
    return total + count_tools_tokens(tools, model=model) if tools else total


def count_openai_message_tokens(message: Mapping[str, Any], *, model: str) -> int:
    """Return the tokens one OpenAI chat message dict adds to a prompt, without the reply priming.

    ``role`` is required (KeyError). ``content``: a string (then this equals ``count_message_tokens``), None,
    absent, or a list of ``text``/``refusal`` parts (text) and ``image_url`` parts (``image_tokens``: a data
    URL's size read from its header; an unreadable one or an http(s) URL at the unknown size); other parts
    count nothing, other content raises TypeError. A tool call adds its name, arguments and
    ``TOKENS_PER_TOOL_CALL``; ``tool_call_id`` is text.
    """
    return _openai_message_tokens(_encoding_for_model(model), message, model)


def _openai_message_tokens(encoding: tiktoken.Encoding, message: Mapping[str, Any], model: str) -> int:
    content = message.get("content")
    if isinstance(content, str):
        tokens = _message_tokens(encoding, message["role"], content, message.get("name"))
    else:
        tokens = _message_tokens(encoding, message["role"], "", message.get("name"))
        tokens += _content_parts_tokens(encoding, content, model)
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        tokens += TOKENS_PER_TOOL_CALL + _count(encoding, function.get("name"))
        tokens += _count(encoding, function.get("arguments"))
    if tool_call_id := message.get("tool_call_id"):
        tokens += _count(encoding, tool_call_id)
    return tokens


def _count(encoding: tiktoken.Encoding, text: str | None) -> int:
    return len(encoding.encode_ordinary(text)) if text else 0


def _content_parts_tokens(encoding: tiktoken.Encoding, content: object, model: str) -> int:
    if content is not None and not isinstance(content, list):
        raise TypeError(f"message content must be a string, None or a list of parts, not {type(content).__name__}")
    tokens = 0
    for part in content or ():
        kind = part.get("type")
        if kind == "text" or kind == "refusal":
            tokens += _count(encoding, part.get(kind))
        elif kind == "image_url":
            image = part.get("image_url") or {}
            tokens += _image_part_tokens(image.get("url") or "", image.get("detail") or "auto", model)
    return tokens


def _image_part_tokens(url: str, detail: str, model: str) -> int:
    width = height = None
    if detail != "low" and url[:5].lower() == "data:":  # low detail costs the same at any size
        width, height = _data_url_image_size(url)
    return image_tokens(width=width, height=height, detail=detail, model=model)


def _data_url_image_size(url: str) -> tuple[int, int] | tuple[None, None]:
    """The size in a data URL image's header, or (None, None) when it cannot be read.

    chat.images checks images, strictly; this module may not import it (they share rank 0), and counting
    only needs a size: an image that cannot be read counts at the unknown size, for upstream to refuse.
    """
    from PIL import Image  # here: only images need Pillow, so importing this module costs what it did

    payload = url.partition(",")[2]
    # The header is nearly always within the first 48 KiB: decoding only those spares decoding megabytes
    # on every count. Cut at a multiple of 4 characters, the prefix is valid base64; where it holds too
    # little of the image (a JPEG's large metadata), Pillow fails on it, and the whole image is decoded.
    attempts = (payload[:_HEADER_BASE64_CHARS], payload) if len(payload) > _HEADER_BASE64_CHARS else (payload,)
    for base64_text in attempts:
        try:
            data = base64.b64decode(base64_text, validate=True)
            with Image.open(io.BytesIO(data), formats=("PNG", "JPEG", "GIF", "WEBP")) as image:
                return image.size
        # DecompressionBombWarning is raised only where warnings are errors (the tests); else it is a warning.
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning):
            pass
    return None, None


# The cookbook's num_tokens_for_tools costs (func_init: each function, prop_init: a function with properties,
# prop_key: each property, enum_init: a property with an enum, enum_item: each value, func_end: once), given
# for gpt-4o and gpt-4o-mini (o200k_base), gpt-3.5-turbo and gpt-4 (cl100k_base). Keyed by encoding, so
# that other models get those of the models whose vocabulary they share.
_TOOL_COSTS: Final = {"o200k_base": (7, 3, 3, -3, 3, 12), "cl100k_base": (10, 3, 3, -3, 3, 12)}
# What the rule reads of a function's parameters (titles and the required list cost nothing) and of a
# property's schema; any other keyword (nested properties, items, anyOf, ...) counts as its JSON text.
_PARAMETERS_KEYS_BY_RULE: Final = frozenset({"type", "properties", "required", "additionalProperties", "title"})
_PROPERTY_KEYS_BY_RULE: Final = frozenset({"type", "description", "enum", "title"})


def count_tools_tokens(tools: list[dict], *, model: str) -> int:
    """Return the tokens that a chat completion request's ``tools`` add to its prompt (0 for none).

    The cookbook's rule for function tools: each function's name and description (less a final period),
    each property's name, type, description and enum values, plus fixed costs. Nested schemas, and tools
    that are not functions, count as their JSON text.
    """
    if not tools:
        return 0
    encoding_name = _resolve(model)[0]
    func_init, prop_init, prop_key, enum_init, enum_item, func_end = _TOOL_COSTS[encoding_name]
    encoding = get_encoding(encoding_name)
    total = func_end
    for tool in tools:
        function = tool.get("function")
        if tool.get("type") != "function" or not isinstance(function, Mapping):
            total += func_init + _count(encoding, _text(tool))
            continue
        description = _text(function.get("description") or "").removesuffix(".")
        total += func_init + _count(encoding, f"{_text(function.get('name') or '')}:{description}")
        parameters = function.get("parameters") or {}
        properties = parameters.get("properties") if isinstance(parameters, Mapping) else None
        if not isinstance(properties, Mapping) or not all(isinstance(s, Mapping) for s in properties.values()):
            # Not the shape the rule reads (a client's mistake, for upstream to refuse): its JSON text.
            total += _count(encoding, _text(parameters))
            continue
        total += _extra_keys_tokens(encoding, parameters, _PARAMETERS_KEYS_BY_RULE)
        total += prop_init if properties else 0
        for key, schema in properties.items():
            total += prop_key + _extra_keys_tokens(encoding, schema, _PROPERTY_KEYS_BY_RULE)
            if isinstance(enum := schema.get("enum"), list):
                total += enum_init + sum(enum_item + _count(encoding, _text(value)) for value in enum)
            kind = schema.get("type") or ""
            kind = " | ".join(map(str, kind)) if isinstance(kind, list) else kind  # ["string", "null"]
            description = _text(schema.get("description") or "").removesuffix(".")
            total += _count(encoding, f"{key}:{kind}:{description}")
    return total


def _extra_keys_tokens(encoding: tiktoken.Encoding, schema: Mapping[str, Any], by_rule: frozenset[str]) -> int:
    extra = {key: value for key, value in schema.items() if key not in by_rule}
    return _count(encoding, _text(extra)) if extra else 0


def _text(value: object) -> str:  # a string as it is, anything else (from a parsed request) as compact JSON
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# Image tokens by model prefix, the longest that matches: (base tokens, tokens per 512-px tile), from
# OpenAI's vision guide ("Calculating costs", tile method); other models get gpt-4o's. gpt-4o-mini's are
# that high because its tokens are priced that much lower; they do count in its prompt.
_IMAGE_COSTS: Final[Mapping[str, tuple[int, int]]] = {
    "gpt-5": (70, 140), "gpt-4.5": (85, 170), "gpt-4.1": (85, 170), "gpt-4o": (85, 170),
    "gpt-4o-mini": (2833, 5667), "o1": (75, 150), "o3": (75, 150), "computer-use-preview": (65, 129),
}
UNKNOWN_IMAGE_SIZE: Final = (1024, 1024)  # (width, height) counted for an image whose size we cannot know
_HEADER_BASE64_CHARS: Final = 64 * 1024  # 48 KiB of image


def image_tokens(*, width: int | None, height: int | None, detail: str, model: str) -> int:
    """Return the tokens of one image in a prompt for ``model``, by OpenAI's tile method.

    ``"low"`` detail costs the model's base tokens at any size. Any other (``"high"``, ``"auto"``) counts
    as high: the image is fitted within 2048x2048, then scaled down (never up) until its shortest side is
    768 px, and each 512-px tile costs the tile tokens on top of the base. A None side means the size is
    unknown: ``UNKNOWN_IMAGE_SIZE``. ValueError for a side below 1.
    """
    matches = [prefix for prefix in _IMAGE_COSTS if model.startswith(prefix)]
    base, per_tile = _IMAGE_COSTS[max(matches, key=len) if matches else "gpt-4o"]
    if detail == "low":
        return base
    if width is None or height is None:
        width, height = UNKNOWN_IMAGE_SIZE
    if width < 1 or height < 1:
        raise ValueError(f"image size {width}x{height} is not positive")
    # Whole pixels, rounded down as a resized image's are: with floats, 1536.0000001 px would take one more tile.
    for limit, side in ((2048, max), (768, min)):
        if (length := side(width, height)) > limit:
            width, height = max(1, width * limit // length), max(1, height * limit // length)
    return base + per_tile * -(-width // 512) * -(-height // 512)
