"""Anthropic Messages API wire format. `base_url` is what the official SDK calls it, e.g.
`https://api.anthropic.com`; requests go to `{base_url}/v1/messages`.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

from ..chat import (
    ChatRequest,
    Chunk,
    Completion,
    KnowledgeMessage,
    Message,
    Usage,
    answer_schema,
    message_text,
    part_text,
    token_count,
    wants_json,
)
from ..errors import (
    InvalidRequest,
    UpstreamBadResponse,
    UpstreamContextOverflow,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamUnavailable,
)
from ._anthropic_tools import StreamedCalls, tool_calls_of, tool_result_block, tool_settings, tool_use_blocks
from ._base import Answered, OverflowTest, Refusal, Upstream, decode_event
from ._media import Media, media_of, unsupported

if TYPE_CHECKING:
    from ..config import ModelSpec

API_VERSION = "2023-06-01"
# `max_tokens` is required by the Messages API; this is what a request that names none gets.
DEFAULT_MAX_TOKENS = 4096
# The Messages API accepts temperatures in [0, 1]; OpenAI's range is [0, 2].
MAX_TEMPERATURE = 1.0
THINKING_MIN_TOP_P = 0.95

FINISH = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop", "max_tokens": "length",
    "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter",
}
_OVERFLOW_WORDS = ("prompt is too long", "exceed context limit")
_SYSTEM_ROLES = ("system", "developer")
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")  # what the API's image blocks take
NO_JSON_MODE = ("the Messages API has no JSON mode without a schema: ask for `response_format: {\"type\": "
                "\"json_schema\", \"json_schema\": {\"name\": ..., \"schema\": {...}}}`")


def create(spec: ModelSpec, base_url: str) -> AnthropicProvider:
    return AnthropicProvider(spec, base_url)


class AnthropicUpstream(Upstream):
    """Tells the account's faults from the request's: the API answers 400 `invalid_request_error` to an
    account without credit ("Your credit balance is too low ..."), which no request of the client's can
    fix: a 502 and a cooling model, so that the route's next model answers, rather than the client's 400."""

    def status_error(self, status: int, headers: Any, payload: bytes, overflow: OverflowTest) -> UpstreamError:
        error = super().status_error(status, headers, payload, overflow)
        if isinstance(error, UpstreamRejected) and error.client_fault and b"credit balance" in payload.lower():
            return UpstreamRejected(f"{error.message} (the gateway's account for this model, not the request: "
                                    "add credit, or check the model's `api_key_env`)", model=error.model,
                                    upstream_status=status, gateway_fault=True)
        return error


class AnthropicProvider:
    default_max_tokens = DEFAULT_MAX_TOKENS  # the Messages API requires a `max_tokens`

    def __init__(self, spec: ModelSpec, base_url: str) -> None:
        self.spec = spec
        self.upstream = AnthropicUpstream(spec, base_url, {"anthropic-version": API_VERSION})
        key = self.upstream.api_key()
        if key:
            self.upstream.headers["x-api-key"] = key
        self.url = f"{self.upstream.base_url}/v1/messages"

    def refusal(self, params: dict[str, Any]) -> Refusal | None:
        # Tools travel as `tools`, `tool_use` and `tool_result` blocks (`_anthropic_tools`); a JSON answer
        # only with a schema, as `output_config.format`.
        if wants_json(params) and answer_schema(params) is None:
            return Refusal("response_format", NO_JSON_MODE)
        return None

    def body(self, request: ChatRequest, stream: bool) -> dict[str, Any]:
        budget = self.spec.thinking(request.params.get("reasoning_effort")) if self.spec.reasoning else None
        return request_body(self.spec.model, request, stream, self.spec.prompt_cache, int(budget or 0))

    async def complete(self, request: ChatRequest, deadline: float) -> Completion:
        data = await self.upstream.post_json(self.url, self.body(request, False), deadline, is_overflow)
        return parse_message(data, self.spec.name)

    async def stream(self, request: ChatRequest, deadline: float) -> AsyncIterator[Chunk]:
        response = await self.upstream.open_stream(self.url, self.body(request, True), deadline, is_overflow)
        state = _StreamState()
        answered = Answered()
        async with contextlib.aclosing(self.upstream.sse(response, deadline, answered=answered)) as events:
            async for _event, data in events:
                chunk = state.read_event(decode_event(data, self.spec.name), self.spec.name)
                if state.stopped:  # the answer is whole, whenever the body ends
                    response.release(ending=True)
                if chunk is not None:
                    answered.chunks += 1
                    yield chunk
                if state.stopped:
                    break
        if not state.stopped:
            raise UpstreamBadResponse("stream ended without `message_stop`: cut mid-way",
                                      model=self.spec.name)

    async def warm(self) -> None:
        await self.upstream.warm()

    async def aclose(self) -> None:
        await self.upstream.aclose()


def request_body(model: str, request: ChatRequest, stream: bool, prompt_cache: bool = False,
                 thinking: int = 0) -> dict[str, Any]:
    """The Messages API body for `request`: system prompts lifted out, turns alternating. With
    `prompt_cache`, the system prompt is marked for the API's prompt cache (`cache_control`), so that
    the next request that starts with it reads it at the cache's price; a route's retrieved passages,
    which change from request to request, follow the mark in a block of their own (inside it, every
    request wrote the cache at its premium and none read it). A `thinking` budget (tokens) turns on
    extended thinking, on top of the answer's `max_tokens`."""
    system = [m for m in request.messages if m.get("role") in _SYSTEM_ROLES]
    turns = alternating_turns(request.messages)
    if not turns:
        raise InvalidRequest("an Anthropic model needs at least one non-empty `user` or `assistant` message",
                             param="messages")
    body: dict[str, Any] = {"model": model, "max_tokens": request.max_tokens(DEFAULT_MAX_TOKENS),
                            "messages": turns}
    if prompt_cache:
        stable = _joined(m for m in system if not isinstance(m, KnowledgeMessage))
        passages = _joined(m for m in system if isinstance(m, KnowledgeMessage))
        blocks = [{"type": "text", "text": stable, "cache_control": {"type": "ephemeral"}}] if stable else []
        body["system"] = [*blocks, {"type": "text", "text": passages}] if passages else blocks
        if not body["system"]:
            del body["system"]
    elif joined := _joined(system):
        body["system"] = joined
    body.update(sampling(request.params))
    body.update(tool_settings(request.params))
    schema = answer_schema(request.params)
    if schema is not None:
        if turns[-1]["role"] == "assistant":
            raise InvalidRequest("the Messages API does not continue an assistant message (a prefill) under a "
                                 "`json_schema` response format: end `messages` with the user's turn",
                                 param="messages")
        body["output_config"] = {"format": {"type": "json_schema", "schema": schema}}
    if thinking and "tools" not in body and turns[-1]["role"] == "user":
        _think(body, thinking, request.params.get("top_p"))
    if stream:
        body["stream"] = True
    return body


def _joined(messages: Iterable[Message]) -> str:
    return "\n\n".join(text for text in map(message_text, messages) if text)


def _think(body: dict[str, Any], budget: int, top_p: Any) -> None:
    """Extended thinking: the API counts the thinking in `max_tokens`, and takes no temperature and no
    `top_p` under 0.95 with it. Not with tools (a tool call's next turn would have to send its
    thinking block back, which an OpenAI-format conversation does not carry), nor after a prefill,
    which the API does not continue with thinking on."""
    body["thinking"] = {"type": "enabled", "budget_tokens": budget}
    body["max_tokens"] += budget
    if body.pop("temperature", None) is not None and top_p is not None:
        body["top_p"] = top_p  # left out for the temperature, which thinking now leaves out
    if body.get("top_p", 1.0) < THINKING_MIN_TOP_P:
        body.pop("top_p")


def alternating_turns(messages: list[Message]) -> list[Message]:
    """Content blocks per turn, consecutive same-role messages merged: the API requires alternation.
    System messages are left out (they are the `system` prompt).

    The API refuses a text block of whitespace only ("text content blocks must contain non-whitespace
    text"), and a final assistant turn (a prefill) that ends in whitespace: such blocks are dropped,
    and that tail is trimmed."""
    turns: list[Message] = []
    for i, message in enumerate(messages):
        if message.get("role") in _SYSTEM_ROLES:
            continue
        role = "assistant" if message.get("role") == "assistant" else "user"
        if message.get("role") == "tool":
            blocks = [tool_result_block(message, i)]
        else:
            blocks = content_blocks(message)
            blocks += tool_use_blocks(message, i) if role == "assistant" else []
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:  # a turn's tool results come before its text, as the API requires
        turn["content"].sort(key=lambda block: block["type"] != "tool_result")
    last = turns[-1]["content"][-1] if turns and turns[-1]["role"] == "assistant" else None
    if last is not None and last["type"] == "text":
        last["text"] = last["text"].rstrip()
    return turns


def sampling(params: dict[str, Any]) -> dict[str, Any]:
    """OpenAI sampling parameters in the Messages API's names; the ones it lacks are dropped."""
    mapped: dict[str, Any] = {}
    if params.get("temperature") is not None:
        mapped["temperature"] = min(float(params["temperature"]), MAX_TEMPERATURE)
    elif params.get("top_p") is not None:
        # Only one of the two: recent models answer 400 to both ("`temperature` and `top_p` cannot
        # both be specified for this model"); a model profile's temperature wins.
        mapped["top_p"] = params["top_p"]
    stop = params.get("stop")
    # The API refuses a sequence that is empty or only whitespace ("each stop sequence must contain
    # non-whitespace"), such as OpenAI's common "\n": those are left out.
    sequences = [s for s in ([stop] if isinstance(stop, str) else stop or ()) if s.strip()]
    if sequences:
        mapped["stop_sequences"] = sequences
    user = params.get("user") or params.get("safety_identifier")  # OpenAI's successor to `user`
    if user:
        mapped["metadata"] = {"user_id": str(user)}
    return mapped


def is_overflow(status: int, text: str) -> bool:
    return status == 400 and any(word in text for word in _OVERFLOW_WORDS)


def parse_message(data: dict[str, Any], model: str) -> Completion:
    try:
        blocks = data["content"]
        text = "".join(b.get("text", "") for b in blocks if isinstance(b, dict) and b.get("type") == "text")
        usage = data.get("usage") or {}
        return Completion(
            text=text, finish_reason=FINISH.get(str(data.get("stop_reason")), "stop"),
            usage=usage_of(usage, token_count(usage.get("output_tokens"))),
            model=str(data.get("model") or model), upstream_id=str(data.get("id") or ""),
            tool_calls=tool_calls_of(blocks),
        )
    except (KeyError, TypeError, ValueError, AttributeError):
        raise UpstreamBadResponse("answer lacks a `content` list of blocks", model=model) from None


def usage_of(usage: dict[str, Any], output_tokens: int) -> Usage:
    """Like OpenAI's `prompt_tokens`, the prompt count includes the tokens read from the prompt cache and
    those written to it (`input_tokens` counts neither)."""
    read = token_count(usage.get("cache_read_input_tokens"))
    written = token_count(usage.get("cache_creation_input_tokens"))
    return Usage(token_count(usage.get("input_tokens")) + read + written, output_tokens, read, written)


def stream_error(error: Any, model: str) -> UpstreamError:
    """The Laneway error for an `error` event (or error body) of the given Anthropic type."""
    kind = error.get("type", "") if isinstance(error, dict) else ""
    message = error.get("message", "") if isinstance(error, dict) else str(error)
    text = f"upstream error mid-stream: {kind}: {message}"
    if kind == "rate_limit_error":
        return UpstreamRateLimited(text, model=model)
    if kind == "invalid_request_error" and any(word in message for word in _OVERFLOW_WORDS):
        return UpstreamContextOverflow(text, model=model)
    if kind in ("invalid_request_error", "authentication_error", "permission_error", "not_found_error",
                "request_too_large", "billing_error"):
        return UpstreamRejected(text, model=model)
    return UpstreamUnavailable(text, model=model)


class _StreamState:
    """What a Messages stream has said so far; the finish and the whole usage go out with `message_stop`,
    the usage so far (the prompt's counts) with the first piece, for a stream cut before its end."""

    def __init__(self) -> None:
        # The prompt's counts as `message_start` gave them, or a `message_delta` that repeats them (a later
        # non-null one winning); the usage is read from them at `message_stop`.
        self._counts: dict[str, Any] = {}
        self._told = False  # the usage so far went out with a piece
        self.output_tokens = 0
        self.finish: str | None = None
        self.stopped = False
        self.calls = StreamedCalls()

    def _so_far(self) -> Usage | None:
        """The usage `message_start` gave, once: a stream cut after it is billed the prompt as the API counted
        it (its prompt-cache reads at their price), not an estimate."""
        if self._told or not self._counts:
            return None
        self._told = True
        usage = usage_of(self._counts, self.output_tokens)
        return usage if usage.total_tokens else None

    def read_event(self, event: dict[str, Any], model: str) -> Chunk | None:
        try:
            return self._read(event, model)
        except (KeyError, TypeError, ValueError, AttributeError):
            kind = event.get("type")
            raise UpstreamBadResponse(f"malformed `{kind}` event in stream", model=model) from None

    def _read(self, event: dict[str, Any], model: str) -> Chunk | None:
        kind = event.get("type")
        if kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                text = delta.get("text") or ""
                if not isinstance(text, str):
                    raise TypeError("`delta.text` is not text")
                return Chunk(text=text, usage=self._so_far())
            if delta.get("type") == "input_json_delta":
                pieces = self.calls.arguments(int(event["index"]), delta.get("partial_json") or "")
                return Chunk(tool_calls=pieces, usage=self._so_far()) if pieces else None
            return None
        if kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") != "tool_use":
                return None
            return Chunk(tool_calls=self.calls.started(int(event["index"]), block), usage=self._so_far())
        if kind == "content_block_stop":
            pieces = self.calls.stopped(int(event["index"]))
            return Chunk(tool_calls=pieces) if pieces else None
        if kind == "message_start":
            usage = (event.get("message") or {}).get("usage") or {}
            self._counts = dict(usage)
            self.output_tokens = token_count(usage.get("output_tokens"))
        elif kind == "message_delta":
            self._delta(event)
        elif kind == "message_stop" and not self.stopped:
            self.stopped = True
            usage = usage_of(self._counts, self.output_tokens)  # none of it usable: none reported
            return Chunk(finish_reason=self.finish or "stop", usage=usage if usage.total_tokens else None)
        elif kind == "error":
            raise stream_error(event.get("error"), model)
        return None

    def _delta(self, event: dict[str, Any]) -> None:
        reason = (event.get("delta") or {}).get("stop_reason")
        if reason:
            self.finish = FINISH.get(str(reason), "stop")
        usage = event.get("usage") or {}
        # `output_tokens` here is cumulative; newer API versions repeat the input counts too, some as null:
        # a null keeps the count `message_start` gave (as the SDK merges them).
        if usage.get("output_tokens") is not None:
            self.output_tokens = token_count(usage["output_tokens"])
        if usage.get("input_tokens") is not None:
            self._counts.update((name, value) for name, value in usage.items() if value is not None)


def content_blocks(message: Message) -> list[dict[str, Any]]:
    """A message's text, images and PDF documents as content blocks, in the client's order."""
    content = message.get("content")
    if not isinstance(content, list):
        text = message_text(message)
        return [{"type": "text", "text": text}] if text.strip() else []
    blocks: list[dict[str, Any]] = []
    for part in content:
        media = media_of(part, "anthropic")
        if media is None:
            text = part_text(part)
            if text.strip():
                blocks.append({"type": "text", "text": text})
        else:
            blocks.append(_media_block(media))
    return blocks


def _media_block(media: Media) -> dict[str, Any]:
    if media.kind == "image_url" and not media.url and media.mime not in IMAGE_TYPES:
        raise unsupported(media, "anthropic", f"the Messages API takes images of type {', '.join(IMAGE_TYPES)}")
    if media.kind == "image_url":
        source = ({"type": "url", "url": media.url} if media.url else
                  {"type": "base64", "media_type": media.mime, "data": media.data})
        return {"type": "image", "source": source}
    if media.kind == "file" and media.mime == "application/pdf":
        return {"type": "document", "source": {"type": "base64", "media_type": media.mime, "data": media.data}}
    raise unsupported(media, "anthropic", "the Messages API takes images (base64 or a URL) and PDF files")
