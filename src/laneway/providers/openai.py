"""OpenAI Chat Completions wire format: OpenAI itself and every compatible server (vLLM, llama.cpp,
Ollama, LM Studio). `base_url` is what the official SDK calls it, e.g. `https://api.openai.com/v1`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import orjson

from ..chat import ChatRequest, Chunk, Completion, Message, TokenLogprob, Usage, token_count
from ..errors import UpstreamBadResponse, UpstreamError, UpstreamUnavailable
from ._base import Answered, Refusal, Upstream, decode_event

if TYPE_CHECKING:
    from ..config import ModelSpec

# Parameters an OpenAI-compatible server understands, passed through unchanged.
PASSTHROUGH = frozenset({
    "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "presence_penalty",
    "frequency_penalty", "seed", "logprobs", "top_logprobs", "response_format", "logit_bias", "user",
    "tools", "tool_choice", "parallel_tool_calls", "reasoning_effort", "service_tier", "verbosity",
    "prompt_cache_key", "prompt_cache_retention", "safety_identifier", "prediction", "modalities",
    "web_search_options", "store",
})


# OpenAI's own API, where `max_tokens` is deprecated and refused by reasoning models (o-series, gpt-5):
# `max_completion_tokens`, which every model there takes, is sent instead.
OPENAI_HOSTS = ("api.openai.com", ".openai.azure.com")
# Google's OpenAI-compatible endpoints read a tool call's `extra_content` (where a Gemini model's thought
# signature travels; the Gemini adapter hands it to clients there too). Strict servers refuse the field
# ("Extra inputs are not permitted", HTTP 400): a conversation that moves from a Gemini model to one of
# them goes without it.
GOOGLE_HOST = "googleapis.com"


def create(spec: ModelSpec, base_url: str) -> OpenAIProvider:
    return OpenAIProvider(spec, base_url)


class OpenAIProvider:
    default_max_tokens = 0

    def __init__(self, spec: ModelSpec, base_url: str) -> None:
        self.spec = spec
        self.upstream = Upstream(spec, base_url, {})
        key = self.upstream.api_key()
        if key:
            self.upstream.headers["authorization"] = f"Bearer {key}"
        self.url = f"{self.upstream.base_url}/chat/completions"
        host = urlsplit(self.upstream.base_url).hostname or ""
        self.completion_limit = host == OPENAI_HOSTS[0] or host.endswith(OPENAI_HOSTS[1])
        self.reads_extra_content = host == GOOGLE_HOST or host.endswith("." + GOOGLE_HOST)

    def refusal(self, params: dict[str, Any]) -> Refusal | None:
        return None  # tools, tool calls and `response_format` pass through as they are

    def body(self, request: ChatRequest, stream: bool) -> dict[str, Any]:
        messages = request.messages if self.reads_extra_content else without_extra_content(request.messages)
        body: dict[str, Any] = {"model": self.spec.model, "messages": messages}
        for key, value in request.params.items():
            if key in PASSTHROUGH:
                body[key] = value
        if self.completion_limit and "max_tokens" in body:
            body["max_completion_tokens"] = body.pop("max_tokens")
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        return body

    async def complete(self, request: ChatRequest, deadline: float) -> Completion:
        data = await self.upstream.post_json(self.url, self.body(request, False), deadline, is_overflow)
        return parse_completion(data, self.spec.name)

    async def stream(self, request: ChatRequest, deadline: float) -> AsyncIterator[Chunk]:
        response = await self.upstream.open_stream(self.url, self.body(request, True), deadline, is_overflow)
        done = False
        answered = Answered()
        async with contextlib.aclosing(self.upstream.sse(response, deadline, answered=answered)) as events:
            async for _event, data in events:
                if data == b"[DONE]":
                    done = True
                    response.release(ending=True)  # the body's last bytes may still be on their way
                    break
                event = decode_event(data, self.spec.name)
                if "error" in event:
                    raise stream_error(event, self.upstream)
                chunk = parse_chunk(event, self.spec.name)
                if chunk is not None:
                    answered.chunks += 1
                    yield chunk
        if not done:
            raise UpstreamBadResponse("stream ended without `[DONE]`: cut mid-way", model=self.spec.name)

    async def warm(self) -> None:
        await self.upstream.warm()

    async def aclose(self) -> None:
        await self.upstream.aclose()


def without_extra_content(messages: list[Message]) -> list[Message]:
    """`messages` without their tool calls' `extra_content`; the same list when none has one. The request
    check has made every `tool_calls` a list of objects."""
    for message in messages:
        calls = message.get("tool_calls")
        if calls and any("extra_content" in made for made in calls):
            break
    else:
        return messages
    return [_stripped(message) for message in messages]


def _stripped(message: Message) -> Message:
    calls = message.get("tool_calls")
    if not calls:
        return message
    return {**message, "tool_calls": [{key: value for key, value in made.items() if key != "extra_content"}
                                      for made in calls]}


# How OpenAI-compatible servers refuse a prompt longer than the model's window: OpenAI and vLLM
# ("maximum context length"), llama.cpp's server (`exceed_context_size_error`: "request (9412 tokens) exceeds
# the available context size (8192 tokens)").
_OVERFLOW_WORDS = ("context_length_exceeded", "maximum context length", "exceed_context_size_error",
                   "exceeds the available context size")
# An error event's `type` as OpenAI-compatible servers name it, when it carries no HTTP status as its `code`.
_ERROR_TYPES = {"rate_limit_error": 429, "ratelimiterror": 429, "invalid_request_error": 400,
                "badrequesterror": 400, "context_length_exceeded": 400, "exceed_context_size_error": 400}


def is_overflow(status: int, text: str) -> bool:
    return status == 400 and any(words in text for words in _OVERFLOW_WORDS)


def stream_error(event: dict[str, Any], upstream: Upstream) -> UpstreamError:
    """The error for an `error` event in a stream (vLLM, LiteLLM and OpenRouter send one), read as the same error
    in a status would be: a 429 is a rate limit, a refused prompt length an overflow, another 4xx the request's."""
    error = event["error"]
    body = orjson.dumps(event)
    status = 0
    if isinstance(error, dict):
        code, kind = error.get("code"), str(error.get("type") or "").lower()
        status = int(code) if isinstance(code, int | str) and str(code).isdigit() else _ERROR_TYPES.get(kind, 0)
        if status == 0 and isinstance(code, str):
            status = _ERROR_TYPES.get(code.lower(), 0)
    if not 400 <= status < 600:
        message = error.get("message") if isinstance(error, dict) else str(error)
        return UpstreamUnavailable(f"upstream error mid-stream: {message}", model=upstream.spec.name)
    found = upstream.status_error(status, {}, body, is_overflow)
    found.message = f"upstream error mid-stream: {found.message}"
    found.args = (found.message,)
    return found


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _content(value: Any) -> str:
    """A message's or a delta's `content`: text, or, from servers that answer in parts (Mistral's reasoning
    models: a `thinking` part, then `text` parts), the text of its `text` parts; ValueError for anything else."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, list) and all(isinstance(part, dict) for part in value):
        texts = [part.get("text") for part in value if part.get("type") == "text"]
        if all(isinstance(text, str) for text in texts):
            return "".join(texts)
    raise ValueError("`content` is neither text nor a list of parts")


# Finish reasons of an answer the upstream gave up on, cut where it failed: Mistral's and OpenRouter's `error`,
# vLLM's `abort`. Passed off as whole, it was logged `ok`, a success for the breaker, and cached.
FAILED_FINISHES = frozenset({"error", "abort"})


def _finish(value: Any) -> str:
    if value is None or value == "":
        return "stop"
    if not isinstance(value, str):
        raise ValueError("`finish_reason` is not text")
    return value


def _failed(finish: str, model: str) -> UpstreamUnavailable:
    return UpstreamUnavailable(f"the upstream ended its answer with `finish_reason: {finish}`: it failed while "
                               "generating, and the answer is cut short", model=model)


def parse_completion(data: dict[str, Any], model: str) -> Completion:
    try:
        choice = data["choices"][0]
        message = choice["message"]
        usage = data.get("usage") or {}
        completion = Completion(
            text=_content(message.get("content")),
            finish_reason=_finish(choice.get("finish_reason")),
            usage=usage_of(usage),
            model=str(data.get("model") or model),
            logprobs=_logprobs(choice),
            upstream_id=str(data.get("id") or ""),
            tool_calls=_tool_calls(message, model),
            refusal=message.get("refusal") if isinstance(message.get("refusal"), str) else None,
            system_fingerprint=_text(data.get("system_fingerprint")), service_tier=_text(data.get("service_tier")),
            annotations=_annotations(message),
        )
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        raise UpstreamBadResponse("answer lacks `choices[0].message`", model=model) from None
    if completion.finish_reason in FAILED_FINISHES:
        failed = _failed(completion.finish_reason, model)
        failed.billed = completion.usage if completion.usage.total_tokens else None
        raise failed
    return completion


def parse_chunk(event: dict[str, Any], model: str) -> Chunk | None:
    """One stream event, not an `error` one (`stream_error`)."""
    usage = event.get("usage")
    chunk = Chunk(system_fingerprint=_text(event.get("system_fingerprint")),
                  service_tier=_text(event.get("service_tier")))
    if isinstance(usage, dict) and (reported := usage_of(usage)).total_tokens:  # none of it usable: none reported
        chunk.usage = reported
    choices = event.get("choices") or []
    if choices:
        choice = choices[0] if isinstance(choices, list) else None
        delta = choice.get("delta") or {} if isinstance(choice, dict) else None
        if not isinstance(choice, dict) or not isinstance(delta, dict):
            raise UpstreamBadResponse("stream event's `choices[0].delta` is not an object", model=model)
        text, finish = delta.get("content") or "", choice.get("finish_reason")
        if not isinstance(text, str):
            try:
                text = _content(text)
            except ValueError:
                raise UpstreamBadResponse("stream event's `delta.content` is neither text nor a list of parts",
                                          model=model) from None
        if not (finish is None or isinstance(finish, str)):
            raise UpstreamBadResponse("stream event's `finish_reason` is not text", model=model)
        if finish in FAILED_FINISHES:
            raise _failed(finish, model)
        chunk.text, chunk.finish_reason = text, finish
        chunk.logprobs = _logprobs(choice)
        chunk.tool_calls = _tool_calls(delta, model)
        refusal = delta.get("refusal")
        chunk.refusal = refusal if isinstance(refusal, str) else ""
        chunk.annotations = _annotations(delta)
    if (not chunk.text and chunk.finish_reason is None and chunk.usage is None and chunk.tool_calls is None
            and not chunk.refusal and not chunk.annotations):
        return None
    return chunk


def _annotations(message: dict[str, Any]) -> list[Any] | None:
    """A message's or a delta's `annotations` (a web search's URL citations), passed on as they are."""
    found = message.get("annotations")
    return found if isinstance(found, list) and found else None


def _tool_calls(message: dict[str, Any], model: str) -> list[dict[str, Any]] | None:
    """A message's or a delta's `tool_calls`, passed on as they are; None when there are none."""
    calls = message.get("tool_calls")
    if not calls:
        return None
    if not isinstance(calls, list) or not all(isinstance(call, dict) for call in calls):
        raise UpstreamBadResponse("`tool_calls` is not a list of objects", model=model)
    return calls


def _logprobs(choice: dict[str, Any]) -> list[TokenLogprob] | None:
    logprobs = choice.get("logprobs")
    if not isinstance(logprobs, dict) or not isinstance(logprobs.get("content"), list):
        return None
    return [item for item in logprobs["content"] if isinstance(item, dict) and "logprob" in item]


def usage_of(usage: dict[str, Any]) -> Usage:
    """`prompt_tokens` includes `prompt_tokens_details.cached_tokens`, those read from the prompt cache;
    `completion_tokens` includes `completion_tokens_details.reasoning_tokens`."""
    details = usage.get("prompt_tokens_details")
    cached = details.get("cached_tokens") if isinstance(details, dict) else None
    thought = usage.get("completion_tokens_details")
    thought = thought if isinstance(thought, dict) else {}
    return Usage(token_count(usage.get("prompt_tokens")), token_count(usage.get("completion_tokens")),
                 token_count(cached), reasoning_tokens=token_count(thought.get("reasoning_tokens")),
                 accepted_prediction_tokens=token_count(thought.get("accepted_prediction_tokens")),
                 rejected_prediction_tokens=token_count(thought.get("rejected_prediction_tokens")))
