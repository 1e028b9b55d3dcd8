"""Tests for chat.tokens beyond plain text (tool definitions, tool calls, content parts, images), and for
chat.images, which reads data URLs and image sizes.

Plain unit tests: no Django settings or database needed. The published figures come from OpenAI's
cookbook "How to count tokens with tiktoken" (section 7, num_tokens_for_tools, whose counts OpenAI's API
confirmed) and from OpenAI's vision guide ("Calculating costs", its worked examples for gpt-4o).
"""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from chat.images import image_size, parse_data_url
from chat.tokens import (
    REPLY_PRIMING_TOKENS,
    TOKENS_PER_MESSAGE,
    TOKENS_PER_TOOL_CALL,
    count_message_tokens,
    count_openai_message_tokens,
    count_prompt_tokens,
    count_text_tokens,
    count_tools_tokens,
    image_tokens,
)

# The cookbook's example request with tools, section 7.
COOKBOOK_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature to return",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    }
]
COOKBOOK_TOOL_MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant that can answer to questions about the weather."},
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]


def png_data_url(width: int, height: int, image_format: str = "PNG", media_type: str = "image/png") -> str:
    """A real image of that size, made by Pillow, as a base64 data URL."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color=(200, 30, 30)).save(buffer, format=image_format)
    return f"data:{media_type};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims that size over no pixels at all: what a decompression bomb looks like."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def user_message_with_image(url: str, detail: str | None = "high") -> dict:
    image_url = {"url": url} if detail is None else {"url": url, "detail": detail}
    return {
        "role": "user",
        "content": [{"type": "text", "text": "What is in this image?"}, {"type": "image_url", "image_url": image_url}],
    }


# Tools ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "api_prompt_tokens"),
    [("gpt-3.5-turbo", 105), ("gpt-4", 105), ("gpt-4o", 101), ("gpt-4o-mini", 101)],
)
def test_it_matches_the_prompt_tokens_openai_reported_for_the_cookbook_tools_example(
    model: str, api_prompt_tokens: int
) -> None:
    assert count_prompt_tokens(COOKBOOK_TOOL_MESSAGES, model=model, tools=COOKBOOK_TOOLS) == api_prompt_tokens
    assert (
        count_prompt_tokens(COOKBOOK_TOOL_MESSAGES, model=model) + count_tools_tokens(COOKBOOK_TOOLS, model=model)
        == api_prompt_tokens
    )


def test_it_counts_the_cookbook_tool_by_the_cookbooks_rule() -> None:
    # o200k_base: func_init 7 + "get_current_weather:Get the current weather in a given location" (11)
    # + prop_init 3 + prop_key 3 + "location:string:The city and state, e.g. San Francisco, CA" (15)
    # + prop_key 3 + enum_init -3 + 2 x (enum_item 3 + 1 token each) + "unit:string:The unit of temperature
    # to return" (9) + func_end 12 = 68; cl100k_base differs in func_init (10) and the texts.
    assert count_tools_tokens(COOKBOOK_TOOLS, model="gpt-4o") == 68
    assert count_tools_tokens(COOKBOOK_TOOLS, model="gpt-4") == 71


def test_no_tools_add_nothing() -> None:
    assert count_tools_tokens([], model="gpt-4o") == 0
    assert count_prompt_tokens(COOKBOOK_TOOL_MESSAGES, model="gpt-4o", tools=[]) == count_prompt_tokens(
        COOKBOOK_TOOL_MESSAGES, model="gpt-4o"
    )


def test_a_nested_schema_is_counted_as_its_json_text() -> None:
    flat = {"type": "function", "function": {"name": "add_item", "description": "Add an item.", "parameters": {
        "type": "object", "properties": {"item": {"type": "object", "description": "The item"}}}}}
    nested = {"type": "function", "function": {"name": "add_item", "description": "Add an item.", "parameters": {
        "type": "object", "properties": {"item": {"type": "object", "description": "The item", "properties": {
            "sku": {"type": "string"}, "quantity": {"type": "integer"}}, "required": ["sku"]}}}}}
    schema_json = '{"properties":{"sku":{"type":"string"},"quantity":{"type":"integer"}},"required":["sku"]}'
    assert count_tools_tokens([nested], model="gpt-4o") == count_tools_tokens(
        [flat], model="gpt-4o"
    ) + count_text_tokens(schema_json, model="gpt-4o")


def test_a_tool_that_is_not_a_function_is_counted_as_its_json_text() -> None:
    tool = {"type": "custom", "custom": {"name": "grammar", "description": "Free text."}}
    text = '{"type":"custom","custom":{"name":"grammar","description":"Free text."}}'
    # func_init 7 and func_end 12 of o200k_base, around the JSON text.
    assert count_tools_tokens([tool], model="gpt-4o") == 7 + count_text_tokens(text, model="gpt-4o") + 12


# Tool calls and tool results ---------------------------------------------------------------------------


def test_an_assistant_tool_call_with_content_none_is_counted() -> None:
    message = {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "call_abc123", "type": "function",
                        "function": {"name": "get_current_weather", "arguments": '{"location":"Paris, France"}'}}],
    }
    # 3 per message + "assistant" (1) + 3 per call + "get_current_weather" (3) + the arguments (7).
    assert TOKENS_PER_MESSAGE + 1 + TOKENS_PER_TOOL_CALL + 3 + 7 == 17
    assert count_openai_message_tokens(message, model="gpt-4o") == 17
    without_content = {key: value for key, value in message.items() if key != "content"}
    assert count_openai_message_tokens(without_content, model="gpt-4o") == 17
    assert count_prompt_tokens([message], model="gpt-4o") == 17 + REPLY_PRIMING_TOKENS


def test_each_of_several_tool_calls_is_counted() -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_current_weather", "arguments": "{}"}}
    one = count_openai_message_tokens({"role": "assistant", "content": None, "tool_calls": [call]}, model="gpt-4o")
    two = count_openai_message_tokens({"role": "assistant", "content": None, "tool_calls": [call, call]}, model="gpt-4o")
    assert two - one == TOKENS_PER_TOOL_CALL + 3 + count_text_tokens("{}", model="gpt-4o")


def test_a_tool_result_counts_its_tool_call_id_as_text() -> None:
    message = {"role": "tool", "tool_call_id": "call_abc123", "content": '{"temperature":18,"unit":"celsius"}'}
    # 3 per message + "tool" (1) + the content (10) + "call_abc123" (4).
    assert count_openai_message_tokens(message, model="gpt-4o") == 18
    assert count_prompt_tokens([message], model="gpt-4o") == 18 + REPLY_PRIMING_TOKENS


# Plain text is counted as before ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        {"role": "user", "content": "hello world"},
        {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
        # As a history row may come, with the keys a plain message leaves empty.
        {"role": "assistant", "content": "Hi!", "name": None, "tool_calls": None, "tool_call_id": None},
    ],
)
@pytest.mark.parametrize("model", ["gpt-4", "gpt-4o", "llama3"])
def test_a_plain_text_message_counts_what_count_message_tokens_does(message: dict, model: str) -> None:
    expected = count_message_tokens(
        role=message["role"], content=message["content"], name=message.get("name"), model=model
    )
    assert count_openai_message_tokens(message, model=model) == expected
    assert count_prompt_tokens([message, message], model=model) == 2 * expected + REPLY_PRIMING_TOKENS


def test_text_parts_count_as_their_text() -> None:
    message = {"role": "user", "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "world"}]}
    text_tokens = count_text_tokens("hello ", model="gpt-4o") + count_text_tokens("world", model="gpt-4o")
    assert count_openai_message_tokens(message, model="gpt-4o") == TOKENS_PER_MESSAGE + 1 + text_tokens


def test_content_that_is_neither_text_none_nor_parts_is_refused() -> None:
    with pytest.raises(TypeError):
        count_openai_message_tokens({"role": "user", "content": {"text": "hi"}}, model="gpt-4o")


# Image tokens: the vision guide's tile method ------------------------------------------------------------


@pytest.mark.parametrize(
    ("width", "height", "detail", "expected"),
    [
        (1024, 1024, "high", 765),  # the guide: scaled to 768x768, 4 tiles: 85 + 4 x 170
        (2048, 4096, "high", 1105),  # the guide: 1024x2048, then 768x1536, 6 tiles
        (4096, 8192, "low", 85),  # the guide: low detail is the base at any size
        (4096, 8192, "high", 1105),  # fitted within 2048 first: 1024x2048, then as above
        (500, 500, "high", 255),  # one tile, never scaled up
        (513, 500, "high", 425),  # two tiles
        (1920, 1080, "high", 1105),  # 1365x768: 3 x 2 tiles
        (1024, 1024, "auto", 765),  # auto is counted as high
        (None, None, "high", 765),  # unknown size: counted as 1024x1024
        (None, None, "low", 85),
    ],
)
def test_it_counts_gpt_4o_image_tokens_by_the_tile_method(
    width: int | None, height: int | None, detail: str, expected: int
) -> None:
    assert image_tokens(width=width, height=height, detail=detail, model="gpt-4o") == expected


@pytest.mark.parametrize(
    ("model", "low", "high_1024"),
    [
        ("gpt-4o-2024-08-06", 85, 765),
        ("gpt-4o-mini", 2833, 2833 + 4 * 5667),
        ("gpt-4o-mini-2024-07-18", 2833, 2833 + 4 * 5667),  # the longest prefix wins over gpt-4o
        ("gpt-4.1", 85, 765),
        ("gpt-5", 70, 70 + 4 * 140),
        ("o1", 75, 75 + 4 * 150),
        ("o3", 75, 75 + 4 * 150),
        ("computer-use-preview", 65, 65 + 4 * 129),
        ("llama3", 85, 765),  # unknown models: gpt-4o's
    ],
)
def test_image_costs_are_looked_up_by_the_longest_model_prefix(model: str, low: int, high_1024: int) -> None:
    assert image_tokens(width=1024, height=1024, detail="low", model=model) == low
    assert image_tokens(width=1024, height=1024, detail="high", model=model) == high_1024


def test_a_size_below_one_pixel_is_refused() -> None:
    with pytest.raises(ValueError):
        image_tokens(width=0, height=10, detail="high", model="gpt-4o")


def test_a_real_png_data_url_is_counted_by_its_size() -> None:
    message = user_message_with_image(png_data_url(600, 300))
    text = count_message_tokens(role="user", content="What is in this image?", model="gpt-4o")
    # 600x300 needs no scaling: 2 x 1 tiles, 85 + 2 x 170 = 425.
    assert count_openai_message_tokens(message, model="gpt-4o") == text + 425
    assert count_prompt_tokens([message], model="gpt-4o") == text + 425 + REPLY_PRIMING_TOKENS
    tiny = user_message_with_image(png_data_url(8, 8), detail=None)  # no detail: auto, counted as high
    assert count_openai_message_tokens(tiny, model="gpt-4o") == text + 255
    low = user_message_with_image(png_data_url(600, 300), detail="low")
    assert count_openai_message_tokens(low, model="gpt-4o") == text + 85


def test_an_image_whose_header_lies_beyond_the_first_bytes_is_still_counted_by_its_size() -> None:
    # A 200 kB colour profile comes before a JPEG's size, past the first 48 KiB that counting decodes first.
    buffer = io.BytesIO()
    Image.new("RGB", (1300, 700)).save(buffer, format="JPEG", icc_profile=bytes(range(256)) * 800)
    url = f"data:image/jpeg;base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"
    text = count_message_tokens(role="user", content="What is in this image?", model="gpt-4o")
    # 1300x700 needs no scaling: 3 x 2 tiles, 85 + 6 x 170 = 1105 (the unknown size, 1024x1024, would be 765).
    assert count_openai_message_tokens(user_message_with_image(url), model="gpt-4o") == text + 1105


def test_an_http_image_is_counted_at_the_unknown_size_and_never_fetched() -> None:
    text = count_message_tokens(role="user", content="What is in this image?", model="gpt-4o")
    # 127.0.0.1:9 refuses connections: were it fetched, the count would fail or take the wrong size.
    message = user_message_with_image("http://127.0.0.1:9/cat.png")
    assert count_openai_message_tokens(message, model="gpt-4o") == text + 765
    message = user_message_with_image("https://127.0.0.1:9/cat.png", detail="low")
    assert count_openai_message_tokens(message, model="gpt-4o") == text + 85


def test_an_unreadable_data_url_image_is_counted_at_the_unknown_size_rather_than_refused() -> None:
    text = count_message_tokens(role="user", content="What is in this image?", model="gpt-4o")
    for url in ("data:image/png;base64,@@@", "data:image/png;base64," + base64.b64encode(b"not a png").decode()):
        assert count_openai_message_tokens(user_message_with_image(url), model="gpt-4o") == text + 765


# Data URLs and image sizes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("image_format", "media_type"),
    [("PNG", "image/png"), ("JPEG", "image/jpeg"), ("GIF", "image/gif"), ("WEBP", "image/webp")],
)
def test_it_reads_the_size_of_each_accepted_format(image_format: str, media_type: str) -> None:
    declared, data = parse_data_url(png_data_url(37, 21, image_format, media_type.upper()))
    assert declared == media_type
    assert image_size(data) == (37, 21)


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/cat.png",
        "data:image/png;base64",  # no comma
        "data:image/png,iVBORw0KGgo=",  # not base64
        "data:image/svg+xml;base64,PHN2Zz48L3N2Zz4=",  # not an accepted media type
        "data:text/plain;base64,aGVsbG8=",
        "data:;base64,aGVsbG8=",
        "data:image/png;base64,iVBOR w0KGgo=",  # invalid base64
        "data:image/png;base64,@@@@",
        "data:image/png;base64,",  # empty
    ],
)
def test_a_malformed_data_url_is_refused(url: str) -> None:
    with pytest.raises(ValueError):
        parse_data_url(url)


def test_bytes_that_are_not_an_accepted_image_are_refused() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="BMP")  # a real image, in a format upstream refuses
    for data in (b"not an image", b"", buffer.getvalue()):
        with pytest.raises(ValueError):
            image_size(data)


def test_a_header_claiming_a_decompression_bomb_is_refused() -> None:
    # Pillow refuses more than twice MAX_IMAGE_PIXELS itself.
    with pytest.raises(ValueError, match="decompression bomb"):
        image_size(png_claiming(100_000, 100_000))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_header_claiming_more_than_max_image_pixels_is_refused() -> None:
    # 10,000 x 10,000 is more than Pillow's MAX_IMAGE_PIXELS (89,478,485), less than twice it: Pillow
    # only warns; image_size refuses it.
    assert Image.MAX_IMAGE_PIXELS < 10_000 * 10_000 < 2 * Image.MAX_IMAGE_PIXELS
    with pytest.raises(ValueError, match="claims 10000x10000 pixels"):
        image_size(png_claiming(10_000, 10_000))
    assert image_size(png_claiming(9_000, 9_000)) == (9_000, 9_000)  # only the header is read: no pixels there


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_pillows_warning_is_refused_too_where_warnings_are_errors() -> None:
    with pytest.raises(ValueError, match="decompression bomb"):
        image_size(png_claiming(10_000, 10_000))
    # Counting takes it at the unknown size rather than failing.
    url = f"data:image/png;base64,{base64.b64encode(png_claiming(10_000, 10_000)).decode('ascii')}"
    text = count_message_tokens(role="user", content="What is in this image?", model="gpt-4o")
    assert count_openai_message_tokens(user_message_with_image(url), model="gpt-4o") == text + 765
