"""Images, files and audio in messages (OpenAI content parts), for every wire format.

The simulated fleet checks media blocks as each API does and bills `MEDIA_TOKENS` prompt tokens for
each one it reads, so a prompt that costs exactly that much more than its text alone shows the
adapter's translation arrived whole."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from _live import WIRE_MODEL_NAMES, LiveGateway, live_gateway, wire_models_yaml
from laneway.sim._answers import MEDIA_TOKENS

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAQAAAC1HAwCAAAAC0lEQVR42mNkYAAAAAYAAjCB0C8AAAAASUVORK5CYII="
OTHER_PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGP4DwABAQEAzBEH8gAAAABJRU5ErkJggg=="
PDF = "JVBERi0xLjQKJcfsj6IKMSAwIG9iago8PD4+CmVuZG9iagp0cmFpbGVyCjw8Pj4KJSVFT0YK"
TEXT = "The parcel arrived like this. Can I get a replacement?"
MODELS = WIRE_MODEL_NAMES


def image(url: str) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": url}}


PDF_PART = {"type": "file", "file": {"filename": "invoice.pdf", "file_data": f"data:application/pdf;base64,{PDF}"}}
AUDIO_PART = {"type": "input_audio", "input_audio": {"data": "UklGRiQAAABXQVZFZm10IBAAAAABAAEA", "format": "wav"}}


@pytest.fixture(scope="module")
def live(sim_url: str) -> Iterator[LiveGateway]:
    config = f"""
models:
{wire_models_yaml()}
routes:
- name: gemini-first
  matcher: "metadata.route == gemini-first"
  target: gemini-2.5-flash-lite
  fallbacks: [claude-sonnet-37]
- name: cached
  target: gpt-5-mini
  cache: {{mode: on, ttl_s: 60}}
"""
    with live_gateway(config, sim_url) as gateway:
        yield gateway


def client(live: LiveGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)


def prompt_tokens(live: LiveGateway, model: str, *parts: dict[str, Any]) -> int:
    content: Any = [{"type": "text", "text": TEXT}, *parts]
    answer = client(live).chat.completions.create(model=model, max_tokens=20,
                                                  messages=[{"role": "user", "content": content}])
    assert answer.usage is not None
    return answer.usage.prompt_tokens


@pytest.mark.parametrize("model", MODELS)
def test_an_inline_image_and_a_pdf_reach_every_wire(live: LiveGateway, model: str) -> None:
    text_only = prompt_tokens(live, model)
    assert prompt_tokens(live, model, image(f"data:image/png;base64,{PNG}")) == text_only + MEDIA_TOKENS
    assert prompt_tokens(live, model, PDF_PART, image(f"data:image/png;base64,{PNG}")) == text_only + 2 * MEDIA_TOKENS


@pytest.mark.parametrize("model", ["gpt-5-mini", "claude-sonnet-37"])
def test_an_image_url_reaches_the_wires_that_fetch_urls(live: LiveGateway, model: str) -> None:
    text_only = prompt_tokens(live, model)
    assert prompt_tokens(live, model, image("https://example.com/parcel.jpg")) == text_only + MEDIA_TOKENS


def test_gemini_takes_audio_inline(live: LiveGateway) -> None:
    text_only = prompt_tokens(live, "gemini-2.5-flash-lite")
    assert prompt_tokens(live, "gemini-2.5-flash-lite", AUDIO_PART) == text_only + MEDIA_TOKENS


@pytest.mark.parametrize(("model", "part", "words"), [
    ("gemini-2.5-flash-lite", image("https://example.com/parcel.jpg"), "pass it as a `data:` URL"),
    ("claude-sonnet-37", AUDIO_PART, "takes images (base64 or a URL) and PDF files"),
    ("claude-sonnet-37", {"type": "file", "file": {"file_id": "file-abc123"}}, "send its content as `file_data`"),
    ("claude-sonnet-37", image("data:image/png,not-base64"), "the `image_url` part's data cannot be read"),
    ("gemini-2.5-flash-lite", {"type": "video_url", "video_url": "x"}, "not 'video_url'"),
    ("claude-sonnet-37", image(f"data:image/bmp;base64,{PNG}"), "takes images of type image/jpeg"),
])
def test_a_part_the_adapter_cannot_send_is_a_400_that_says_what_it_takes(live: LiveGateway, model: str,
                                                                         part: dict[str, Any], words: str) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        prompt_tokens(live, model, part)
    error = raised.value.body
    assert isinstance(error, dict) and error["param"] == "messages" and words in error["message"]
    assert error["message"].startswith(f"`{model}` (")  # which model of the route could not take it


@pytest.mark.parametrize("stream", [False, True])
def test_a_part_one_model_cannot_send_goes_to_the_routes_model_that_can(live: LiveGateway, stream: bool) -> None:
    """Gemini takes no image URLs; the route's fallback, Claude, does: the request is not a 400."""
    content: Any = [{"type": "text", "text": TEXT}, image("https://example.com/parcel.jpg")]
    answer = client(live).chat.completions.with_raw_response.create(
        model="laneway", max_tokens=20, messages=[{"role": "user", "content": content}],
        metadata={"route": "gemini-first"}, stream=stream)
    assert (answer.headers["x-laneway-model"], answer.headers["x-laneway-lane"]) == ("claude-sonnet-37", "fallback")
    assert answer.headers["x-laneway-attempts"] == "2"  # gemini's, skipped unsent, then claude's


def test_the_cache_tells_answers_to_different_images_apart(live: LiveGateway) -> None:
    def ask(data: str) -> str:
        content: Any = [{"type": "text", "text": "Is this damage covered?"}, image(f"data:image/png;base64,{data}")]
        response = client(live).chat.completions.with_raw_response.create(
            model="laneway", max_tokens=20, temperature=0, messages=[{"role": "user", "content": content}])
        return response.headers["x-laneway-lane"]

    assert ask(PNG) == "primary"
    assert ask(OTHER_PNG) == "primary"  # same words, another photo: not the first one's answer
    assert ask(PNG) == "cache"


@pytest.mark.parametrize("model", MODELS)
def test_an_assistant_refusal_part_is_sent_as_its_text(live: LiveGateway, model: str) -> None:
    messages: Any = [{"role": "user", "content": "Give me the card number on file."},
                     {"role": "assistant", "content": [{"type": "refusal", "refusal": "I cannot share that."}]},
                     {"role": "user", "content": "Then the last four digits?"}]
    answer = client(live).chat.completions.create(model=model, max_tokens=20, messages=messages)
    assert answer.choices[0].message.content
