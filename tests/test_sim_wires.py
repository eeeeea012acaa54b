"""The simulated fleet speaks each provider's documented wire format: raw bytes, and the official clients."""

from __future__ import annotations

import asyncio
import os
import re
import select
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import orjson
import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types as genai_types

from laneway.chat import ChatRequest
from laneway.config import parse_config
from laneway.errors import ConfigError
from laneway.providers import create_provider
from laneway.sim import RunningFleet, load_fleet, start_fleet

DOCS = Path(__file__).resolve().parent.parent / "docs" / "providers.md"

CONVERSATION = [
    {"role": "system", "content": "You are a support agent."},
    {"role": "user", "content": "My parcel has not arrived."},
    {"role": "assistant", "content": "Sorry to hear that."},
    {"role": "user", "content": "It was due on Friday."},
]
ANTHROPIC_BODY = {
    "model": "claude-3-7-sonnet-20250219", "max_tokens": 40, "system": "You are a support agent.",
    "messages": [
        {"role": "user", "content": "My parcel has not arrived."},
        {"role": "assistant", "content": [{"type": "text", "text": "Sorry to hear that."}]},
        {"role": "user", "content": [{"type": "text", "text": "It was due on Friday."}]},
    ],
}
GEMINI_BODY = {
    "systemInstruction": {"parts": [{"text": "You are a support agent."}]},
    "contents": [
        {"role": "user", "parts": [{"text": "My parcel has not arrived."}]},
        {"role": "model", "parts": [{"text": "Sorry to hear that."}]},
        {"role": "user", "parts": [{"text": "It was due on Friday."}]},
    ],
    "generationConfig": {"maxOutputTokens": 40},
}
ANTHROPIC_EVENT = re.compile(rb"event: (\w+)\ndata: (\{.*\})")
GEMINI_EVENT = re.compile(rb"data: (\{.*\})")


@pytest.fixture
async def fleet() -> AsyncIterator[RunningFleet]:
    running = await start_fleet()
    yield running
    await running.aclose()


async def post(url: str, body: dict[str, Any]) -> tuple[int, str, bytes]:
    async with aiohttp.ClientSession() as session, session.post(url, json=body) as response:
        return response.status, response.headers.get("content-type", ""), await response.read()


def documented_configs() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", DOCS.read_text("utf-8"), re.S)


def anthropic_events(raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    blocks = raw.split(b"\n\n")
    assert blocks[-1] == b"", "every event ends with a blank line"
    events = []
    for block in blocks[:-1]:
        match = ANTHROPIC_EVENT.fullmatch(block)
        assert match is not None, block
        events.append((match.group(1).decode(), orjson.loads(match.group(2))))
    return events


def gemini_events(raw: bytes) -> list[dict[str, Any]]:
    blocks = raw.split(b"\r\n\r\n")
    assert blocks[-1] == b"", "every event ends with a blank CRLF line"
    matches = [GEMINI_EVENT.fullmatch(block) for block in blocks[:-1]]
    assert all(matches)
    return [orjson.loads(m.group(1)) for m in matches if m]


async def test_anthropic_stream_follows_the_documented_event_flow(fleet: RunningFleet) -> None:
    url = fleet.url + "/claude-sonnet-37/v1/messages"
    status, _, whole = await post(url, ANTHROPIC_BODY)
    status_s, ctype, raw = await post(url, {**ANTHROPIC_BODY, "stream": True})
    message = orjson.loads(whole)
    events = anthropic_events(raw)
    kinds = [kind for kind, _ in events]

    assert (status, status_s, ctype) == (200, 200, "text/event-stream")
    assert all(kind == data["type"] for kind, data in events)
    deltas = kinds.count("content_block_delta")
    assert deltas > 0
    assert kinds == ["message_start", "content_block_start", "ping", *["content_block_delta"] * deltas,
                     "content_block_stop", "message_delta", "message_stop"]
    start, end = events[0][1]["message"], events[-2][1]
    assert "".join(data["delta"]["text"] for kind, data in events if kind == "content_block_delta") == \
        message["content"][0]["text"]
    assert start["usage"]["input_tokens"] == message["usage"]["input_tokens"]
    assert end["usage"]["output_tokens"] == message["usage"]["output_tokens"]
    assert end["delta"]["stop_reason"] == message["stop_reason"] == "max_tokens"
    assert (message["type"], message["role"]) == ("message", "assistant")
    assert message["model"] == ANTHROPIC_BODY["model"]


async def test_anthropic_errors_use_its_error_shape_and_wording(fleet: RunningFleet) -> None:
    base = fleet.url + "/claude-sonnet-37/v1/messages"
    no_max = await post(base, {k: v for k, v in ANTHROPIC_BODY.items() if k != "max_tokens"})
    overloaded = await post(base, {**ANTHROPIC_BODY, "model": "claude-3-7-sonnet-20250219@error_529"})
    overflow = await post(base, {**ANTHROPIC_BODY, "model": "claude-3-7-sonnet-20250219@overflow"})

    assert no_max[0] == 400 and orjson.loads(no_max[2])["error"]["type"] == "invalid_request_error"
    assert overloaded[0] == 529
    assert orjson.loads(overloaded[2]) == {"type": "error",
                                           "error": {"type": "overloaded_error", "message": "simulated 529"}}
    body = orjson.loads(overflow[2])
    assert overflow[0] == 400 and body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert re.fullmatch(r"prompt is too long: \d+ tokens > 200000 maximum", body["error"]["message"])


async def test_gemini_stream_events_are_generate_content_responses(fleet: RunningFleet) -> None:
    root = fleet.url + "/gemini-2.5-pro/v1beta/models/gemini-2.5-pro"
    status, _, whole = await post(root + ":generateContent", GEMINI_BODY)
    status_s, ctype, raw = await post(root + ":streamGenerateContent?alt=sse", GEMINI_BODY)
    response = orjson.loads(whole)
    events = gemini_events(raw)
    candidate = response["candidates"][0]

    assert (status, status_s, ctype) == (200, 200, "text/event-stream")
    assert candidate["content"]["role"] == "model" and candidate["finishReason"] == "MAX_TOKENS"
    assert response["modelVersion"] == "gemini-2.5-pro"
    assert "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in events) == \
        candidate["content"]["parts"][0]["text"]
    only_last = [False] * (len(events) - 1) + [True]
    assert [("finishReason" in e["candidates"][0]) for e in events] == only_last
    assert [("candidatesTokenCount" in e["usageMetadata"]) for e in events] == only_last
    assert events[-1]["usageMetadata"] == response["usageMetadata"]
    assert response["usageMetadata"]["candidatesTokenCount"] == 40


async def test_gemini_errors_use_google_error_shape_and_wording(fleet: RunningFleet) -> None:
    models = fleet.url + "/gemini-2.5-pro/v1beta/models/"
    unknown = await post(models + "gemini-2.5-pro:countTokens", GEMINI_BODY)
    fault = await post(models + "gemini-2.5-pro@error_503:generateContent", GEMINI_BODY)
    overflow = await post(models + "gemini-2.5-pro@overflow:streamGenerateContent?alt=sse", GEMINI_BODY)

    assert unknown[0] == 400 and orjson.loads(unknown[2])["error"]["status"] == "INVALID_ARGUMENT"
    assert fault[0] == 503
    assert fault[2] == b'{\n  "error": {\n    "code": 503,\n    "message": "simulated 503",\n' \
                       b'    "status": "UNAVAILABLE"\n  }\n}\n'
    error = orjson.loads(overflow[2])["error"]
    assert overflow[0] == 400 and (error["code"], error["status"]) == (400, "INVALID_ARGUMENT")
    wording = r"The input token count \(\d+\) exceeds the maximum number of tokens allowed \(1048576\)\."
    assert re.fullmatch(wording, error["message"])


async def test_every_wire_tells_the_same_answer_for_the_same_conversation(fleet: RunningFleet) -> None:
    openai = await post(fleet.url + "/claude-sonnet-37/v1/chat/completions",
                        {"model": "claude-3-7-sonnet-20250219", "messages": CONVERSATION, "max_tokens": 40})
    claude = await post(fleet.url + "/claude-sonnet-37/v1/messages", ANTHROPIC_BODY)
    models = fleet.url + "/claude-sonnet-37/v1beta/models/"
    gemini = await post(models + "claude-3-7-sonnet-20250219:generateContent", GEMINI_BODY)
    o, a, g = (orjson.loads(r[2]) for r in (openai, claude, gemini))

    text = o["choices"][0]["message"]["content"]
    assert text == a["content"][0]["text"] == g["candidates"][0]["content"]["parts"][0]["text"]
    assert o["usage"]["prompt_tokens"] == a["usage"]["input_tokens"] == g["usageMetadata"]["promptTokenCount"]
    assert o["usage"]["completion_tokens"] == a["usage"]["output_tokens"] == 40


async def test_a_full_queue_answers_each_wire_s_overloaded_status(tmp_path: Path) -> None:
    fleet_file = tmp_path / "fleet.yaml"
    fleet_file.write_text("models:\n  tiny:\n    context_window: 1000\n    slots: 1\n    queue_limit: 0\n"
                          "    ttft: {base: 1}\n    decode_ms_per_token: 0\n", "utf-8")
    running = await start_fleet(fleet_file=str(fleet_file))
    try:
        claude = await post(running.url + "/tiny/v1/messages", {**ANTHROPIC_BODY, "model": "tiny"})
        gemini = await post(running.url + "/tiny/v1beta/models/tiny:generateContent", GEMINI_BODY)
    finally:
        await running.aclose()
    assert claude[0] == 529 and orjson.loads(claude[2])["error"]["type"] == "overloaded_error"
    assert gemini[0] == 503 and orjson.loads(gemini[2])["error"]["status"] == "UNAVAILABLE"


async def test_the_official_anthropic_client_reads_the_fleet(fleet: RunningFleet) -> None:
    client = anthropic.AsyncAnthropic(base_url=fleet.url + "/claude-sonnet-37", api_key="sk-ant-sim",
                                      max_retries=0)
    params: Any = {k: v for k, v in ANTHROPIC_BODY.items()}
    message = await client.messages.create(**params)
    async with client.messages.stream(**params) as stream:
        streamed = await stream.get_final_message()
    with pytest.raises(anthropic.APIStatusError) as overloaded:
        await client.messages.create(**{**params, "model": "claude-3-7-sonnet-20250219@error_529"})
    with pytest.raises(anthropic.BadRequestError, match="prompt is too long"):
        await client.messages.create(**{**params, "model": "claude-3-7-sonnet-20250219@overflow"})
    await client.close()

    block = message.content[0]
    assert block.type == "text" and block.text
    assert streamed.content[0].type == "text" and streamed.content[0].text == block.text
    assert (streamed.stop_reason, streamed.usage.output_tokens) == (message.stop_reason, 40)
    assert streamed.usage.input_tokens == message.usage.input_tokens > 0
    assert overloaded.value.status_code == 529


# The client subclasses aiohttp's session when aiohttp is installed, which aiohttp warns about.
@pytest.mark.filterwarnings("ignore:Inheritance class AiohttpClientSession:DeprecationWarning")
async def test_the_official_gemini_client_reads_the_fleet(fleet: RunningFleet) -> None:
    options = genai_types.HttpOptions(base_url=fleet.url + "/gemini-2.5-pro", api_version="v1beta")
    client = genai.Client(api_key="sim-key", http_options=options)
    config = genai_types.GenerateContentConfig(system_instruction="You are a support agent.",
                                               max_output_tokens=40, response_logprobs=True)
    contents = "My parcel has not arrived."
    whole = await client.aio.models.generate_content(model="gemini-2.5-pro", contents=contents, config=config)
    pieces = [p async for p in await client.aio.models.generate_content_stream(
        model="gemini-2.5-pro", contents=contents, config=config)]
    with pytest.raises(genai_errors.ClientError) as limited:
        await client.aio.models.generate_content(model="gemini-2.5-pro@error_429", contents=contents)
    await client.aio.aclose()

    candidate = whole.candidates[0] if whole.candidates else None
    assert candidate is not None and whole.text
    assert whole.text == "".join(p.text or "" for p in pieces)
    assert candidate.finish_reason == genai_types.FinishReason.MAX_TOKENS
    usage = whole.usage_metadata
    assert usage is not None and usage.candidates_token_count == 40
    assert pieces[-1].usage_metadata is not None and pieces[-1].usage_metadata.candidates_token_count == 40
    chosen = candidate.logprobs_result.chosen_candidates if candidate.logprobs_result else None
    assert chosen and all((c.log_probability or 0.0) <= 0 for c in chosen)
    assert (limited.value.code, limited.value.status) == (429, "RESOURCE_EXHAUSTED")


def test_the_documented_configs_load_with_the_approximate_tokenizer() -> None:
    configs = [parse_config(text, str(DOCS)) for text in documented_configs()]
    models = [m for config in configs for m in config.models.values()]
    assert len(configs) == 4 and len(models) == 8
    assert {m.provider for m in models} == {"anthropic", "gemini"}
    assert all(m.tokenizer == "approx" for m in models)
    thinking = {m.name: (m.thinking("medium"), m.thinking("xhigh")) for m in models if m.reasoning}
    assert thinking == {"claude": (8192, None), "gemini-pro": (8192, None), "gemini-3": ("high", None)}
    assert {m.base_url for m in models if not m.simulated} == {"https://api.anthropic.com",
                                                                 "https://generativelanguage.googleapis.com"}


async def test_the_documented_fleet_config_answers_in_each_provider_s_wire(fleet: RunningFleet) -> None:
    config = next(c for c in map(parse_config, documented_configs()) if c.simulated)
    request = ChatRequest("laneway", [{"role": "user", "content": "Where is my parcel?"}], {"max_tokens": 30})
    answers = {}
    for spec in config.models.values():
        provider = create_provider(spec, fleet.url + spec.base_url.removeprefix("sim://"))
        answers[spec.provider] = await provider.complete(request, asyncio.get_running_loop().time() + 5)
        await provider.aclose()
    assert set(answers) == {"anthropic", "gemini"}
    assert all(a.text and a.usage.completion_tokens > 0 for a in answers.values())
    assert answers["anthropic"].upstream_id.startswith("msg_")
    assert answers["gemini"].model == "gemini-2.5-pro"


@pytest.mark.parametrize(("content", "words"), [
    (None, "cannot read the fleet file: No such file or directory"),
    ("models: [\n", "not valid YAML: expected the node content, but found '<stream end>' (line 2, column 1)"),
    ("models: {fast: 5}\n", "models.fast: invalid entry"),
    ("models: 5\n", "models: expected a mapping of model names to their laws"),
    ("models: {fast: {slots: 3}}\n", "models.fast: missing `ttft`"),
])
def test_a_fleet_file_laneway_cannot_use_is_a_config_error_naming_it(tmp_path: Path, content: str | None,
                                                                      words: str) -> None:
    path = tmp_path / "fleet.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        load_fleet(str(path))
    assert str(caught.value).startswith(f"{path}: 1 error(s) in fleet file:") and words in str(caught.value)


async def test_a_fleet_that_cannot_listen_says_where_and_why() -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        with pytest.raises(ConfigError, match=f"host: cannot listen on 127.0.0.1:{taken}: .*; pick another host "
                                              "or port"):
            await start_fleet("127.0.0.1", taken)


async def test_a_path_no_model_is_under_is_a_404_that_says_where_the_models_are(fleet: RunningFleet) -> None:
    async with aiohttp.ClientSession() as session, session.post(
            fleet.url + "/v1/chat/completions", json={"model": "gpt-5-mini", "messages": []}) as response:
        assert response.status == 404
        message = (await response.json())["error"]["message"]
    assert message.startswith("no endpoint `POST /v1/chat/completions` on the simulated fleet")
    assert "POST /{model}/v1/chat/completions (OpenAI)" in message
    assert "`base_url: sim:///{model}/v1` (openai) or `sim:///{model}` (anthropic, gemini)" in message
    assert "gpt-5-mini" in message
    async with aiohttp.ClientSession() as session:
        async with session.get(fleet.url + "/gpt-5-mini/v1/chat/completions") as response:
            assert response.status == 405  # a path that is served, with the wrong method
        async with session.get(fleet.url + "/healthz") as response:
            assert response.status == 200


def test_laneway_sim_run_by_hand_says_where_the_models_are() -> None:
    process = subprocess.Popen([sys.executable, "-m", "laneway", "sim", "--port", "0"], stdout=subprocess.PIPE)
    printed = b""
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 30  # lines that never come fail the test, they do not hang it
        while printed.count(b"\n") < 2 and select.select([process.stdout], [], [],
                                                          max(0.0, deadline - time.monotonic()))[0]:
            piece = os.read(process.stdout.fileno(), 4096)
            if not piece:
                break
            printed += piece
    finally:
        process.terminate()
        process.wait(10)
    first, second, *_ = [*printed.decode().splitlines(), "", ""]
    assert first.startswith("laneway sim: simulated fleet (") and " at http://127.0.0.1:" in first
    assert second.startswith("laneway sim: each model under its own prefix: POST /{model}/v1/chat/completions")
