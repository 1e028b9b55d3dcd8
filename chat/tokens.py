"""Exact OpenAI token counting that works offline, from rank files shipped in the repository.

``tiktoken.get_encoding()`` downloads its BPE rank files from the internet on first use,
which fails on a machine without internet access. This module feeds tiktoken's Rust BPE
core with the same files, bundled gzipped in ``chat/tokenizer_data/`` and checked against
the SHA-256 that tiktoken itself pins, so every count equals tiktoken's own. tiktoken's
download cache (``TIKTOKEN_CACHE_DIR``) is never read or written.

Only ``cl100k_base`` (gpt-4, gpt-3.5-turbo) and ``o200k_base`` (gpt-4o, o1 and later) are
shipped; every model name resolves to one of them (see ``encoding_name_for_model``).

This module must not import Django: it is used from plain scripts and unit tests.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import tiktoken
import tiktoken.model

__all__ = [
    "FALLBACK_ENCODING",
    "REPLY_PRIMING_TOKENS",
    "TOKENS_PER_MESSAGE",
    "TOKENS_PER_NAME",
    "count_message_tokens",
    "count_prompt_tokens",
    "count_text_tokens",
    "encoding_name_for_model",
    "get_encoding",
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


def count_prompt_tokens(messages: list[dict[str, str]], *, model: str) -> int:
    """Return the prompt tokens of a chat completion request with ``messages``.

    Each message needs ``"role"`` and ``"content"`` (KeyError otherwise) and may have
    ``"name"``; other keys are not counted. The result is the sum of
    ``count_message_tokens`` over the messages plus ``REPLY_PRIMING_TOKENS``. The
    cookbook found this equal to the API's reported prompt_tokens for gpt-3.5-turbo,
    gpt-4, gpt-4o and gpt-4o-mini; tools and images add tokens not counted here.
    """
    encoding = _encoding_for_model(model)
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        total += _message_tokens(
            encoding, message["role"], message["content"], message.get("name")
        )
    return total
