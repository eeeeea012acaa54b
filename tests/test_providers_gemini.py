"""The Gemini adapter against documented generateContent bodies and streams, and the simulated fleet."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web

from laneway.chat import ChatRequest, Chunk, Usage
from laneway.config import ModelSpec
from laneway.errors import (
    InvalidRequest,
    UpstreamBadResponse,
    UpstreamContextOverflow,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
)
from laneway.providers import create_provider
from laneway.sim import RunningFleet, start_fleet

KEY_ENV = "LANEWAY_TEST_GEMINI_KEY"

# A `GenerateContentResponse` of a thinking model, shaped as in the API reference.
DOCUMENTED_RESPONSE = b"""{
  "candidates": [
    {
      "content": {
        "parts": [
          {
            "text": "Refunds reach your card in 3-5 business days."
          }
        ],
        "role": "model"
      },
      "finishReason": "STOP",
      "index": 0
    }
  ],
  "usageMetadata": {
    "promptTokenCount": 12,
    "candidatesTokenCount": 11,
    "totalTokenCount": 51,
    "promptTokensDetails": [
      {
        "modality": "TEXT",
        "tokenCount": 12
      }
    ],
    "thoughtsTokenCount": 28
  },
  "modelVersion": "gemini-2.5-pro",
  "responseId": "mAitaLmkHPPlz7IPvtfUqQ4"
}
"""

# A recorded `streamGenerateContent?alt=sse` answer: CRLF-separated events, usage counts only at the end.
DOCUMENTED_STREAM = [
    b'data: {"candidates": [{"content": {"role": "model","parts": [{"text": "Hello!"}]}}],'
    b'"usageMetadata": {"trafficType": "ON_DEMAND"},"modelVersion": "gemini-2.5-pro",'
    b'"createTime": "2026-03-10T14:54:45.066123Z","responseId": "tTCwacuEBMvnitYP06qsgQY"}\r\n\r\n',
    b'data: {"candidates": [{"content": {"role": "model","parts": [{"text": " How can I help you today"}]}}],'
    b'"usageMetadata": {"trafficType": "ON_DEMAND"},"modelVersion": "gemini-2.5-pro",'
    b'"createTime": "2026-03-10T14:54:45.066123Z","responseId": "tTCwacuEBMvnitYP06qsgQY"}\r\n\r\n',
    b'data: {"candidates": [{"content": {"role": "model","parts": [{"text": "?"}]}}],'
    b'"usageMetadata": {"trafficType": "ON_DEMAND"},"modelVersion": "gemini-2.5-pro",'
    b'"createTime": "2026-03-10T14:54:45.066123Z","responseId": "tTCwacuEBMvnitYP06qsgQY"}\r\n\r\n',
    b'data: {"candidates": [{"content": {"role": "model","parts": [{"text": "","thoughtSignature": '
    b'"AY89a18iOcFus5wr5bW5xN6zZ4aUiCyhgmg6HE2YjtYDV/dwZ5oZlZHeTmiUKv34qq0="}]},"finishReason": "STOP"}],'
    b'"usageMetadata": {"promptTokenCount": 1,"candidatesTokenCount": 9,"totalTokenCount": 10,'
    b'"trafficType": "ON_DEMAND","promptTokensDetails": [{"modality": "TEXT","tokenCount": 1}],'
    b'"candidatesTokensDetails": [{"modality": "TEXT","tokenCount": 9}]},"modelVersion": "gemini-2.5-pro",'
    b'"createTime": "2026-03-10T14:54:45.066123Z","responseId": "tTCwacuEBMvnitYP06qsgQY"}\r\n\r\n',
]

LOGPROBS_CANDIDATE = {
    "content": {"parts": [{"text": "Yes, refunded."}], "role": "model"}, "finishReason": "STOP",
    "avgLogprobs": -0.1216,
    "logprobsResult": {
        "topCandidates": [{"candidates": [{"token": "Yes", "logProbability": -0.0021}]}],
        "chosenCandidates": [{"token": "Yes", "logProbability": -0.0021},
                             {"token": ",", "logProbability": -0.31},
                             {"token": " refunded", "logProbability": -0.05},
                             {"token": ".", "logProbability": 0.0}],
    },
}


def google_error(code: int, status: str, message: str, details: list[dict[str, Any]] | None = None) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = details
    return orjson.dumps({"error": error}, option=orjson.OPT_INDENT_2)


QUOTA_EXCEEDED = google_error(
    429, "RESOURCE_EXHAUSTED",
    "You exceeded your current quota, please check your plan and billing details.",
    [{"@type": "type.googleapis.com/google.rpc.QuotaFailure",
      "violations": [{"quotaMetric":
                      "generativelanguage.googleapis.com/generate_content_paid_tier_input_token_count",
                      "quotaId": "GenerateContentPaidTierInputTokensPerModelPerMinute"}]},
     {"@type": "type.googleapis.com/google.rpc.Help",
      "links": [{"description": "Learn more about Gemini API quotas",
                 "url": "https://ai.google.dev/gemini-api/docs/rate-limits"}]},
     {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "33s"}])


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    events: list[bytes] | None = None


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class Loopback:
    """A purpose-built upstream on a loopback port: answers `reply`, records what it was sent."""

    def __init__(self) -> None:
        self.reply = Reply()
        self.seen: list[Seen] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("POST", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(Seen(request.path_qs, dict(request.headers), orjson.loads(await request.read())))
        reply = self.reply
        if reply.events is None:
            return web.Response(status=reply.status, body=reply.body, headers=reply.headers,
                                content_type=reply.content_type)
        response = web.StreamResponse(status=reply.status, headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for event in reply.events:
            await response.write(event)
        await response.write_eof()
        return response


@pytest.fixture
async def loopback() -> AsyncIterator[Loopback]:
    server = Loopback()
    await server.start()
    yield server
    assert server.runner is not None
    await server.runner.cleanup()


@pytest.fixture
async def fleet() -> AsyncIterator[RunningFleet]:
    running = await start_fleet()
    yield running
    await running.aclose()


def spec(model: str = "gemini-2.5-pro", key_env: str | None = KEY_ENV) -> ModelSpec:
    return ModelSpec(name="gemini-2.5-pro", provider="gemini", base_url="", model=model, api_key_env=key_env)


def deadline(seconds: float = 5.0) -> float:
    return asyncio.get_running_loop().time() + seconds


def conversation(**params: Any) -> ChatRequest:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a support agent."},
        {"role": "user", "content": "Was my refund sent?"},
        {"role": "assistant", "content": "Let me look."},
        {"role": "assistant", "content": [{"type": "text", "text": "One moment."}]},
        {"role": "developer", "content": "Refund 5521 was issued on Monday."},
        {"role": "user", "content": "Thanks."},
    ]
    return ChatRequest(model="gemini-2.5-pro", messages=messages, params=params)


async def drain(provider: Any, request: ChatRequest, into: list[Chunk] | None = None) -> list[Chunk]:
    chunks = into if into is not None else []
    async for chunk in provider.stream(request, deadline()):
        chunks.append(chunk)
    return chunks


def with_candidate(candidate: dict[str, Any]) -> bytes:
    body = orjson.loads(DOCUMENTED_RESPONSE)
    body["candidates"] = [candidate]
    return orjson.dumps(body)


async def test_complete_translates_documented_response_and_sends_generate_content_request(
        loopback: Loopback, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "AIzaSy-test-91c2")
    loopback.reply = Reply(body=DOCUMENTED_RESPONSE)
    provider = create_provider(spec(), loopback.url)
    request = conversation(temperature=0.3, top_p=0.9, max_tokens=200, stop=["END", "STOP"],
                           presence_penalty=0.5, frequency_penalty=0.25, seed=7, logit_bias={"50256": -100},
                           user="u-1", n=1)
    completion = await provider.complete(request, deadline())
    await provider.aclose()

    assert completion.text == "Refunds reach your card in 3-5 business days."
    assert completion.finish_reason == "stop"
    # Thinking tokens are billed as output: 11 candidates + 28 thoughts.
    assert completion.usage == Usage(12, 39, reasoning_tokens=28)
    assert (completion.model, completion.upstream_id) == ("gemini-2.5-pro", "mAitaLmkHPPlz7IPvtfUqQ4")
    assert completion.logprobs is None
    seen = loopback.seen[0]
    assert seen.path == "/v1beta/models/gemini-2.5-pro:generateContent"
    assert seen.headers["x-goog-api-key"] == "AIzaSy-test-91c2"
    assert seen.body == {
        "contents": [
            {"role": "user", "parts": [{"text": "Was my refund sent?"}]},
            {"role": "model", "parts": [{"text": "Let me look."}, {"text": "One moment."}]},
            {"role": "user", "parts": [{"text": "Thanks."}]},
        ],
        "systemInstruction": {"parts": [{"text": "You are a support agent."},
                                        {"text": "Refund 5521 was issued on Monday."}]},
        # Gemini 2.5 refuses penalties ("Penalty is not enabled for this model"): they are left out.
        "generationConfig": {"temperature": 0.3, "topP": 0.9, "seed": 7, "maxOutputTokens": 200,
                             "stopSequences": ["END", "STOP"]},
    }


@pytest.mark.parametrize(("model", "sent"), [
    ("gemini-2.0-flash", True), ("gemini-1.5-pro-002", True), ("gemini-2.5-flash", False),
    ("gemini-3-pro-preview", False), ("gemini-flash-latest", False),
])
async def test_penalties_go_only_to_models_that_take_them(loopback: Loopback, model: str, sent: bool) -> None:
    loopback.reply = Reply(body=DOCUMENTED_RESPONSE)
    provider = create_provider(spec(model), loopback.url)
    await provider.complete(conversation(presence_penalty=0.5, frequency_penalty=0.25, temperature=0.3), deadline())
    await provider.aclose()
    config = loopback.seen[0].body["generationConfig"]
    assert config["temperature"] == 0.3
    assert (config.get("presencePenalty"), config.get("frequencyPenalty")) == ((0.5, 0.25) if sent else (None, None))


async def test_no_generation_config_and_no_key_header_when_none_is_set(loopback: Loopback) -> None:
    loopback.reply = Reply(body=DOCUMENTED_RESPONSE)
    provider = create_provider(spec(key_env=None), loopback.url)
    await provider.complete(ChatRequest("m", [{"role": "user", "content": "hi"}]), deadline())
    await provider.aclose()
    assert loopback.seen[0].body == {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
    assert "x-goog-api-key" not in loopback.seen[0].headers


async def test_a_request_without_any_turn_is_refused_before_sending(loopback: Loopback) -> None:
    provider = create_provider(spec(), loopback.url)
    with pytest.raises(InvalidRequest, match="non-empty `user` or `assistant`"):
        await provider.complete(ChatRequest("m", [{"role": "system", "content": "Only a system prompt."}]),
                                deadline())
    await provider.aclose()
    assert loopback.seen == []


async def test_logprobs_are_asked_for_and_read_from_chosen_candidates(loopback: Loopback) -> None:
    loopback.reply = Reply(body=with_candidate(LOGPROBS_CANDIDATE))
    provider = create_provider(spec(), loopback.url)
    completion = await provider.complete(conversation(logprobs=True, top_logprobs=3), deadline())
    await provider.aclose()
    assert completion.logprobs is not None
    assert [(t["token"], t["logprob"]) for t in completion.logprobs] == [
        ("Yes", -0.0021), (",", -0.31), (" refunded", -0.05), (".", 0.0)]
    # In OpenAI's shape: the first step's top candidates; steps the answer gave none for have none.
    assert completion.logprobs[0]["top_logprobs"] == [{"token": "Yes", "logprob": -0.0021, "bytes": None}]
    assert completion.logprobs[1]["top_logprobs"] == []
    assert loopback.seen[0].body["generationConfig"] == {"responseLogprobs": True, "logprobs": 3}


@pytest.mark.parametrize(("reason", "finish"), [
    ("STOP", "stop"), ("MAX_TOKENS", "length"), ("SAFETY", "content_filter"),
    ("RECITATION", "content_filter"), ("BLOCKLIST", "content_filter"),
    ("PROHIBITED_CONTENT", "content_filter"), ("LANGUAGE", "content_filter"), ("MODEL_ARMOR", "content_filter"),
])
async def test_finish_reasons_map_to_openai_finish_reasons(loopback: Loopback, reason: str,
                                                            finish: str) -> None:
    loopback.reply = Reply(body=with_candidate({"content": {"parts": [{"text": "x"}], "role": "model"},
                                                "finishReason": reason}))
    provider = create_provider(spec(), loopback.url)
    completion = await provider.complete(conversation(), deadline())
    await provider.aclose()
    assert completion.finish_reason == finish


async def test_blocked_prompt_is_a_content_filter_finish_with_no_text(loopback: Loopback) -> None:
    loopback.reply = Reply(body=b'{"promptFeedback": {"blockReason": "SAFETY", "safetyRatings": []},'
                                b' "usageMetadata": {"promptTokenCount": 8, "totalTokenCount": 8}}')
    provider = create_provider(spec(), loopback.url)
    completion = await provider.complete(conversation(), deadline())
    await provider.aclose()
    assert (completion.text, completion.finish_reason) == ("", "content_filter")
    assert completion.usage == Usage(8, 0)


async def test_stream_translates_recorded_events_with_usage_from_the_last(loopback: Loopback) -> None:
    loopback.reply = Reply(events=DOCUMENTED_STREAM)
    provider = create_provider(spec(), loopback.url)
    chunks = await drain(provider, conversation())
    await provider.aclose()

    assert [c.text for c in chunks if c.text] == ["Hello!", " How can I help you today", "?"]
    finals = [c for c in chunks if c.finish_reason is not None]
    assert len(finals) == 1 and finals[0] is chunks[-1]
    assert (finals[0].finish_reason, finals[0].usage) == ("stop", Usage(1, 9))
    assert loopback.seen[0].path == "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"


async def test_stream_logprobs_arrive_per_event(loopback: Loopback) -> None:
    first = {"candidates": [{
        "content": {"parts": [{"text": "Yes"}], "role": "model"},
        "logprobsResult": {"chosenCandidates": [{"token": "Yes", "logProbability": -0.5}]}}]}
    last = {"candidates": [{
        "content": {"parts": [{"text": "."}], "role": "model"}, "finishReason": "STOP",
        "logprobsResult": {"chosenCandidates": [{"token": ".", "logProbability": -0.25}]}}],
            "usageMetadata": {"promptTokenCount": 4, "candidatesTokenCount": 2}}
    loopback.reply = Reply(events=[b"data: " + orjson.dumps(e) + b"\r\n\r\n" for e in (first, last)])
    provider = create_provider(spec(), loopback.url)
    chunks = await drain(provider, conversation(logprobs=True))
    await provider.aclose()
    assert [[t["logprob"] for t in c.logprobs or ()] for c in chunks if c.text] == [[-0.5], [-0.25]]
    assert chunks[-1].usage == Usage(4, 2)


async def test_stream_without_finish_reason_is_cut(loopback: Loopback) -> None:
    loopback.reply = Reply(events=DOCUMENTED_STREAM[:3])
    provider = create_provider(spec(), loopback.url)
    got: list[Chunk] = []
    with pytest.raises(UpstreamBadResponse, match="finishReason"):
        await drain(provider, conversation(), got)
    await provider.aclose()
    assert "".join(c.text for c in got) == "Hello! How can I help you today?"
    assert all(c.finish_reason is None for c in got)


async def test_each_piece_carries_the_usage_so_far_for_a_stream_cut_before_its_end(loopback: Loopback) -> None:
    """Gemini counts the prompt (and the context-cache reads) on every event: a stream cut before its last one
    is billed those counts rather than an estimate."""
    counted = [e.replace(b'"usageMetadata": {"trafficType": "ON_DEMAND"}',
                         b'"usageMetadata": {"promptTokenCount": 40, "cachedContentTokenCount": 25, '
                         b'"candidatesTokenCount": %d}' % (i + 2)) for i, e in enumerate(DOCUMENTED_STREAM[:3])]
    loopback.reply = Reply(events=counted)
    provider = create_provider(spec(), loopback.url)
    got: list[Chunk] = []
    with pytest.raises(UpstreamBadResponse, match="finishReason"):
        await drain(provider, conversation(), got)
    await provider.aclose()
    assert [c.usage for c in got] == [Usage(40, 2, 25), Usage(40, 3, 25), Usage(40, 4, 25)]


@pytest.mark.parametrize(("error", "raised"), [
    (google_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
     UpstreamUnavailable),
    (google_error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted"), UpstreamRateLimited),
])
async def test_mid_stream_error_raises_after_the_text_already_sent(loopback: Loopback, error: bytes,
                                                                   raised: type[UpstreamError]) -> None:
    event = b"data: " + orjson.dumps(orjson.loads(error)) + b"\r\n\r\n"
    loopback.reply = Reply(events=[DOCUMENTED_STREAM[0], event])
    provider = create_provider(spec(), loopback.url)
    got: list[Chunk] = []
    with pytest.raises(raised, match="mid-stream"):
        await drain(provider, conversation(), got)
    await provider.aclose()
    assert [c.text for c in got] == ["Hello!"]


async def test_malformed_stream_event_is_a_bad_response(loopback: Loopback) -> None:
    loopback.reply = Reply(events=[DOCUMENTED_STREAM[0], b"data: {not json\r\n\r\n"])
    provider = create_provider(spec(), loopback.url)
    with pytest.raises(UpstreamBadResponse, match="malformed event"):
        await drain(provider, conversation())
    await provider.aclose()


@pytest.mark.parametrize(("reply", "error", "status"), [
    (Reply(503, google_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")),
     UpstreamUnavailable, 503),
    (Reply(500, google_error(500, "INTERNAL", "An internal error has occurred.")), UpstreamUnavailable, 500),
    (Reply(400, google_error(400, "INVALID_ARGUMENT", "The input token count (1200293) exceeds the maximum"
                                                      " number of tokens allowed (1048576).")),
     UpstreamContextOverflow, 400),
    (Reply(400, google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received. Unknown name \"foo\"")),
     UpstreamRejected, 400),
    (Reply(403, google_error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers.")),
     UpstreamRejected, 403),
])
async def test_error_answers_map_to_laneway_errors(loopback: Loopback, reply: Reply,
                                                   error: type[UpstreamError], status: int) -> None:
    loopback.reply = reply
    provider = create_provider(spec(), loopback.url)
    with pytest.raises(error) as caught:
        await provider.complete(conversation(), deadline())
    with pytest.raises(error):
        await drain(provider, conversation())
    await provider.aclose()
    assert caught.value.upstream_status == status
    assert orjson.loads(reply.body)["error"]["message"] in caught.value.message


BAD_KEY = orjson.dumps({"error": {
    "code": 400, "message": "API key not valid. Please pass a valid API key.", "status": "INVALID_ARGUMENT",
    "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                 "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"}}]}})


@pytest.mark.parametrize(("body", "client_fault"), [
    (BAD_KEY, False),
    (google_error(400, "FAILED_PRECONDITION", "User location is not supported for the API use."), False),
    (google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received. Unknown name \"foo\""), True),
])
async def test_a_400_about_the_gateways_key_or_account_is_not_the_clients_fault(
        loopback: Loopback, body: bytes, client_fault: bool) -> None:
    """Such a 400 is a 502 to the client, and fails (cools) the model, as a 401 from other providers does."""
    loopback.reply = Reply(400, body)
    provider = create_provider(spec(), loopback.url)
    for call in (lambda: provider.complete(conversation(), deadline()), lambda: drain(provider, conversation())):
        with pytest.raises(UpstreamRejected) as caught:
            await call()
        assert caught.value.client_fault is client_fault
        assert caught.value.status == (400 if client_fault else 502)
        assert ("api_key_env" in caught.value.message) is not client_fault
    await provider.aclose()


async def test_rate_limit_reads_retry_info_and_prefers_retry_after(loopback: Loopback) -> None:
    provider = create_provider(spec(), loopback.url)
    loopback.reply = Reply(429, QUOTA_EXCEEDED)
    with pytest.raises(UpstreamRateLimited) as from_body:
        await provider.complete(conversation(), deadline())
    loopback.reply = Reply(429, QUOTA_EXCEEDED, headers={"retry-after": "5"})
    with pytest.raises(UpstreamRateLimited) as from_header:
        await drain(provider, conversation())
    loopback.reply = Reply(429, google_error(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted"))
    with pytest.raises(UpstreamRateLimited) as from_neither:
        await provider.complete(conversation(), deadline())
    await provider.aclose()
    assert (from_body.value.retry_after_s, from_header.value.retry_after_s) == (33.0, 5.0)
    assert from_neither.value.retry_after_s is None


@pytest.mark.parametrize(("reply", "pattern"), [
    (Reply(body=b'{"candidates": [{"content": '), "malformed JSON"),
    (Reply(body=b"<html>maintenance</html>", content_type="text/html"), "expected JSON"),
    (Reply(body=b'{"modelVersion": "gemini-2.5-pro"}'), "neither"),
    (Reply(body=b'{"candidates": ["text"]}'), "candidates"),
])
async def test_unusable_success_bodies_are_bad_responses(loopback: Loopback, reply: Reply,
                                                          pattern: str) -> None:
    loopback.reply = reply
    provider = create_provider(spec(), loopback.url)
    with pytest.raises(UpstreamBadResponse, match=pattern):
        await provider.complete(conversation(), deadline())
    await provider.aclose()


async def test_sim_answers_the_same_text_usage_and_logprobs_whole_or_streamed(fleet: RunningFleet) -> None:
    provider = create_provider(spec(), fleet.url + "/gemini-2.5-pro")
    request = conversation(max_tokens=60, logprobs=True)
    completion = await provider.complete(request, deadline())
    chunks = await drain(provider, request)
    await provider.aclose()

    assert completion.text and completion.text == "".join(c.text for c in chunks)
    assert (chunks[-1].finish_reason, chunks[-1].usage) == (completion.finish_reason, completion.usage)
    assert 0 < completion.usage.completion_tokens <= 60
    assert completion.logprobs and all(t["logprob"] <= 0 for t in completion.logprobs)
    assert [t for c in chunks for t in (c.logprobs or [])] == completion.logprobs


async def test_sim_length_finish_when_max_tokens_caps_the_answer(fleet: RunningFleet) -> None:
    provider = create_provider(spec(), fleet.url + "/gemini-2.5-pro")
    completion = await provider.complete(conversation(max_tokens=3), deadline())
    await provider.aclose()
    assert (completion.finish_reason, completion.usage.completion_tokens) == ("length", 3)


@pytest.mark.parametrize(("fault", "error", "streamed"), [
    ("error_503", UpstreamUnavailable, False),
    ("error_500", UpstreamUnavailable, True),
    ("overflow", UpstreamContextOverflow, False),
    ("overflow", UpstreamContextOverflow, True),
    ("malformed_json", UpstreamBadResponse, False),
    ("wrong_content_type", UpstreamBadResponse, False),
    ("wrong_content_type", UpstreamBadResponse, True),
    ("cut_mid_stream", UpstreamBadResponse, True),
])
async def test_sim_faults_chosen_in_the_url_path(fleet: RunningFleet, fault: str, error: type[UpstreamError],
                                                 streamed: bool) -> None:
    provider = create_provider(spec(f"gemini-2.5-pro@{fault}"), fleet.url + "/gemini-2.5-pro")
    with pytest.raises(error):
        if streamed:
            await drain(provider, conversation())
        else:
            await provider.complete(conversation(), deadline())
    await provider.aclose()


async def test_sim_rate_limit_with_retry_after(fleet: RunningFleet) -> None:
    provider = create_provider(spec("gemini-2.5-pro@error_429_retry_2"), fleet.url + "/gemini-2.5-pro")
    with pytest.raises(UpstreamRateLimited) as caught:
        await drain(provider, conversation())
    await provider.aclose()
    assert caught.value.retry_after_s == 2.0
