"""Gemini API `generateContent` wire format. `base_url` is the API's root,
`https://generativelanguage.googleapis.com`; requests go to
`{base_url}/v1beta/models/{model}:generateContent` (and `:streamGenerateContent?alt=sse`).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import orjson

from ..chat import (
    ChatRequest,
    Chunk,
    Completion,
    Message,
    TokenLogprob,
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
from ._base import Answered, OverflowTest, Refusal, Upstream, decode_event, waited
from ._gemini_tools import CallParts, Signatures, current_turn, tool_call_of, tool_settings
from ._media import media_of, unsupported

if TYPE_CHECKING:
    from ..config import ModelSpec

# Answers the API stopped on a policy: blocked content, an unsupported language, a filter in front.
FILTERED = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
                      "IMAGE_PROHIBITED_CONTENT", "LANGUAGE", "MODEL_ARMOR"})
FINISH = {"STOP": "stop", "MAX_TOKENS": "length", **{reason: "content_filter" for reason in FILTERED}}
# Answers that end in a function call the model got wrong: a failed attempt, which the next model may do better.
BROKEN_CALLS = frozenset({"MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS"})
_OVERFLOW_WORDS = ("input token count", "maximum number of tokens", "token limit", "token count exceeds")
_SYSTEM_ROLES = ("system", "developer")
# OpenAI parameter -> generationConfig field, for the ones that only change name.
_RENAMED = {
    "temperature": "temperature", "top_p": "topP", "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty", "seed": "seed",
}
_PENALTIES = ("presence_penalty", "frequency_penalty")
# Gemini 2.5 and later answer any penalty but 0 with 400 "Penalty is not enabled for this model".
_TAKES_PENALTIES = re.compile(r"gemini-(1\.\d+|2\.0)-")


def create(spec: ModelSpec, base_url: str) -> GeminiProvider:
    return GeminiProvider(spec, base_url)


class GeminiProvider:
    default_max_tokens = 0

    def __init__(self, spec: ModelSpec, base_url: str) -> None:
        self.spec = spec
        self.upstream = GeminiUpstream(spec, base_url, {})
        self.signatures = Signatures()  # of this model's function calls, for the requests that send them back
        key = self.upstream.api_key()
        if key:
            self.upstream.headers["x-goog-api-key"] = key
        root = f"{self.upstream.base_url}/v1beta/models/{spec.model}"
        self.url = f"{root}:generateContent"
        self.stream_url = f"{root}:streamGenerateContent?alt=sse"

    def refusal(self, params: dict[str, Any]) -> Refusal | None:
        return None  # tools travel as `functionDeclarations` (`_gemini_tools`), a JSON answer as `responseJsonSchema`

    def body(self, request: ChatRequest) -> dict[str, Any]:
        thinking = self.spec.thinking(request.params.get("reasoning_effort")) if self.spec.reasoning else None
        return request_body(request, thinking, self.signatures, takes_penalties(self.spec.model))

    async def complete(self, request: ChatRequest, deadline: float) -> Completion:
        data = await self.upstream.post_json(self.url, self.body(request), deadline, is_overflow)
        return parse_response(data, self.spec.name, self.signatures)

    async def stream(self, request: ChatRequest, deadline: float) -> AsyncIterator[Chunk]:
        body = self.body(request)
        response = await self.upstream.open_stream(self.stream_url, body, deadline, is_overflow)
        finish: str | None = None
        usage: Usage | None = None
        calls = 0  # the function calls streamed so far: each is numbered by its `index`, whole in one piece
        answered = Answered()
        async with contextlib.aclosing(self.upstream.sse(response, deadline, answered=answered)) as events:
            async for _event, data in events:
                event = decode_event(data, self.spec.name)
                if "error" in event:
                    raise status_error(event["error"], self.spec.name)
                chunk = read_chunk(event, self.spec.name, self.signatures)
                finish = chunk.finish_reason or finish
                usage = chunk.usage or usage
                pieces = None
                if chunk.tool_calls:
                    pieces = [{"index": calls + i, **made} for i, made in enumerate(chunk.tool_calls)]
                    calls += len(pieces)
                if chunk.text or chunk.logprobs or pieces:  # with the usage so far, for a stream cut later
                    answered.chunks += 1
                    yield Chunk(text=chunk.text, logprobs=chunk.logprobs, tool_calls=pieces, usage=chunk.usage)
                if finish is not None:  # the last event, its usage with it: the answer is whole, whenever the body ends
                    response.release(ending=True)
                    break
        if finish is None:
            raise UpstreamBadResponse("stream ended without a `finishReason`: cut mid-way",
                                      model=self.spec.name)
        yield Chunk(finish_reason=_finish(finish, bool(calls)), usage=usage)

    async def warm(self) -> None:
        await self.upstream.warm()

    async def aclose(self) -> None:
        await self.upstream.aclose()


class GeminiUpstream(Upstream):
    """Reads the retry delay of a 429 from the body's `RetryInfo` when there is no `Retry-After` header."""

    def status_error(self, status: int, headers: Any, payload: bytes,
                     overflow: OverflowTest) -> UpstreamError:
        error = super().status_error(status, headers, payload, overflow)
        if isinstance(error, UpstreamRateLimited) and error.retry_after_s is None:
            error.retry_after_s = retry_delay(payload)
        if isinstance(error, UpstreamRejected) and error.client_fault and _account_fault(payload):
            return UpstreamRejected(f"{error.message} (the gateway's API key or account for this model, not the "
                                    "request: check the model's `api_key_env`)", model=error.model,
                                    upstream_status=status, gateway_fault=True)
        return error


def _account_fault(payload: bytes) -> bool:
    """The API answers 400 to an invalid key (`ErrorInfo.reason` `API_KEY_INVALID`) and to an account it
    will not serve (`FAILED_PRECONDITION`: the region, billing); a 502 and a cooling model, not the client's."""
    try:
        error = orjson.loads(payload)["error"]
        if error.get("status") == "FAILED_PRECONDITION":
            return True
        return any(str(detail.get("reason", "")).startswith("API_KEY_") for detail in error.get("details") or ())
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        return False


def takes_penalties(model: str) -> bool:
    """Only Gemini 1.x and 2.0 models take `presencePenalty` and `frequencyPenalty`; for any other model id
    (2.5, 3, an alias such as `gemini-flash-latest`) they are dropped rather than have the request refused."""
    return _TAKES_PENALTIES.search(model) is not None


def request_body(request: ChatRequest, thinking: int | str | None = None,
                 signatures: Signatures | None = None, penalties: bool = True) -> dict[str, Any]:
    """The `generateContent` body: system prompts as `systemInstruction`, turns as user/model contents,
    tools as `functionDeclarations` (`signatures`: of the calls the model made earlier); `thinking` (a
    budget in tokens, or a level) as `thinkingConfig`; the penalties only when the model takes them."""
    system = [message_text(m) for m in request.messages if m.get("role") in _SYSTEM_ROLES]
    contents = contents_of(request.messages, signatures or Signatures())
    if not contents:
        raise InvalidRequest("a Gemini model needs at least one non-empty `user` or `assistant` message",
                             param="messages")
    body: dict[str, Any] = {"contents": contents}
    if any(system):
        body["systemInstruction"] = {"parts": [{"text": text} for text in system if text]}
    body.update(tool_settings(request.params))
    config = generation_config(request, penalties)
    if thinking is not None:
        _think(config, thinking)
    if config:
        body["generationConfig"] = config
    return body


def _think(config: dict[str, Any], thinking: int | str) -> None:
    """Gemini 2.5 takes a budget (`thinkingBudget`), Gemini 3 a level (`thinkingLevel`). The thinking
    counts in `maxOutputTokens`, so a budget is added to the answer's."""
    if isinstance(thinking, str):
        config["thinkingConfig"] = {"thinkingLevel": thinking}
        return
    config["thinkingConfig"] = {"thinkingBudget": thinking}
    if thinking > 0 and "maxOutputTokens" in config:
        config["maxOutputTokens"] += thinking


def contents_of(messages: list[Message], signatures: Signatures) -> list[Message]:
    """`user`/`model` contents, consecutive same-role messages merged into one turn: an assistant's tool
    calls as `functionCall` parts of a model turn, `tool` messages as `functionResponse` parts of a user
    turn. System messages are left out (they are the `systemInstruction`)."""
    contents: list[Message] = []
    tools = CallParts(signatures, current_turn(messages))
    for i, message in enumerate(messages):
        if message.get("role") in _SYSTEM_ROLES:
            continue
        role = "model" if message.get("role") == "assistant" else "user"
        if message.get("role") == "tool":
            parts = [tools.function_response(message, i)]
        else:
            parts = parts_of(message) + (tools.function_calls(message, i) if role == "model" else [])
        if not parts:
            continue
        if contents and contents[-1]["role"] == role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": role, "parts": parts})
    return contents


def generation_config(request: ChatRequest, penalties: bool = True) -> dict[str, Any]:
    """OpenAI generation parameters in `generationConfig`'s names; the ones it lacks are dropped, and so are
    the penalties for a model that does not take them."""
    params = request.params
    config = {field: params[name] for name, field in _RENAMED.items()
              if params.get(name) is not None and (penalties or name not in _PENALTIES)}
    if "max_tokens" in params or "max_completion_tokens" in params:
        config["maxOutputTokens"] = request.max_tokens(0)
    stop = params.get("stop")
    if stop:
        config["stopSequences"] = [stop] if isinstance(stop, str) else list(stop)
    if params.get("logprobs"):
        config["responseLogprobs"] = True
        if params.get("top_logprobs"):
            config["logprobs"] = int(params["top_logprobs"])
    if wants_json(params):
        config["responseMimeType"] = "application/json"
        schema = answer_schema(params)
        if schema is not None:
            config["responseJsonSchema"] = schema
    return config


def is_overflow(status: int, text: str) -> bool:
    lowered = text.lower()
    return status == 400 and "INVALID_ARGUMENT" in text and any(word in lowered for word in _OVERFLOW_WORDS)


def parse_response(data: dict[str, Any], model: str, signatures: Signatures | None = None) -> Completion:
    chunk = read_chunk(data, model, signatures or Signatures())
    if chunk.finish_reason is None and not chunk.text and not chunk.tool_calls:
        raise UpstreamBadResponse("answer has neither `candidates` nor `promptFeedback`", model=model)
    finish = chunk.finish_reason or "stop"
    return Completion(
        text=chunk.text, finish_reason=_finish(finish, bool(chunk.tool_calls)),
        usage=chunk.usage or Usage(), model=str(data.get("modelVersion") or model), logprobs=chunk.logprobs,
        upstream_id=str(data.get("responseId") or ""), tool_calls=chunk.tool_calls,
    )


def _finish(reason: str, called: bool) -> str:
    """The API stops with `STOP` after function calls too; OpenAI's finish reason is then `tool_calls`."""
    return "tool_calls" if called and reason == "stop" else reason


def read_chunk(data: dict[str, Any], model: str, signatures: Signatures) -> Chunk:
    try:
        chunk = parse_chunk(data, signatures)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError):
        raise UpstreamBadResponse("answer's `candidates[0]` is not a candidate", model=model) from None
    if chunk.finish_reason in BROKEN_CALLS:
        raise UpstreamBadResponse(f"the model's function call failed (finishReason {chunk.finish_reason})",
                                  model=model)
    return chunk


def parse_chunk(data: dict[str, Any], signatures: Signatures) -> Chunk:
    """One `GenerateContentResponse` (a whole answer, or one event of a stream) as a chunk: its function
    calls as whole `tool_calls` entries, their signatures kept in `signatures`."""
    chunk = Chunk(usage=usage_of(data.get("usageMetadata")))
    candidates = data.get("candidates") or []
    if not candidates:
        blocked = (data.get("promptFeedback") or {}).get("blockReason")
        chunk.finish_reason = "content_filter" if blocked else None
        return chunk
    candidate = candidates[0]
    parts = (candidate.get("content") or {}).get("parts") or []
    # Parts marked `thought` are the model's reasoning summary, not its answer.
    answer = [p for p in parts if isinstance(p, dict) and not p.get("thought")]
    chunk.text = "".join(str(p.get("text") or "") for p in answer)
    made = [tool_call_of(p, signatures) for p in answer if "functionCall" in p]
    chunk.tool_calls = [c for c in made if c is not None] or None
    reason = candidate.get("finishReason")
    if reason in BROKEN_CALLS:
        chunk.finish_reason = str(reason)  # `read_chunk` raises
    else:
        chunk.finish_reason = FINISH.get(str(reason), "stop") if reason else None
    chunk.logprobs = _logprobs(candidate.get("logprobsResult"))
    return chunk


def _logprobs(result: Any) -> list[TokenLogprob] | None:
    """`logprobsResult` as OpenAI's `logprobs.content`: each chosen token, with the top candidates
    of its step when the request asked for them (`top_logprobs`)."""
    chosen = result.get("chosenCandidates") if isinstance(result, dict) else None
    if not isinstance(chosen, list):
        return None
    tops = result.get("topCandidates") or []
    entries = []
    for i, token in enumerate(chosen):
        if not isinstance(token, dict) or "logProbability" not in token:
            continue
        step = tops[i].get("candidates") if i < len(tops) and isinstance(tops[i], dict) else None
        top = [_token(t) for t in step or () if isinstance(t, dict) and "logProbability" in t]
        entries.append({**_token(token), "top_logprobs": top})
    return entries


def _token(candidate: dict[str, Any]) -> TokenLogprob:
    return {"token": str(candidate.get("token") or ""), "logprob": float(candidate["logProbability"]), "bytes": None}


def usage_of(metadata: Any) -> Usage | None:
    if not isinstance(metadata, dict):
        return None
    # Thinking tokens are billed at the output price, so they count as completion tokens.
    thoughts = token_count(metadata.get("thoughtsTokenCount"))
    completion = token_count(metadata.get("candidatesTokenCount")) + thoughts
    # `promptTokenCount` includes `cachedContentTokenCount`, the tokens read from the context cache.
    cached = token_count(metadata.get("cachedContentTokenCount"))
    usage = Usage(token_count(metadata.get("promptTokenCount")), completion, cached, reasoning_tokens=thoughts)
    return usage if usage.total_tokens else None  # none of it usable: none reported


def status_error(error: Any, model: str) -> UpstreamError:
    """The Laneway error for an error object met inside an event stream."""
    if not isinstance(error, dict):
        return UpstreamUnavailable(f"upstream error mid-stream: {error}", model=model)
    code = error.get("code")
    code = code if isinstance(code, int) and not isinstance(code, bool) and 100 <= code < 600 else 0
    status = str(error.get("status") or "")
    text = f"upstream error mid-stream: {status or code}: {error.get('message', '')}"
    if status == "RESOURCE_EXHAUSTED" or code == 429:
        return UpstreamRateLimited(text, model=model)
    if is_overflow(400, f"{status} {error.get('message', '')}"):
        return UpstreamContextOverflow(text, model=model, upstream_status=code or None)
    if 400 <= code < 500:
        return UpstreamRejected(text, model=model, upstream_status=code)
    return UpstreamUnavailable(text, model=model, upstream_status=code or None)


def retry_delay(payload: bytes) -> float | None:
    """Seconds of the `google.rpc.RetryInfo` detail of an error body (`"retryDelay": "33s"`)."""
    try:
        details = orjson.loads(payload)["error"]["details"]
        for detail in details:
            if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
                return waited(float(str(detail["retryDelay"]).removesuffix("s")))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None
    return None


def parts_of(message: Message) -> list[dict[str, Any]]:
    """A message's text and media as `parts`, in the client's order; media go inline (`inlineData`)."""
    content = message.get("content")
    if not isinstance(content, list):
        text = message_text(message)
        return [{"text": text}] if text else []
    parts: list[dict[str, Any]] = []
    for part in content:
        media = media_of(part, "gemini")
        if media is None:
            text = part_text(part)
            if text:
                parts.append({"text": text})
        elif media.url:
            raise unsupported(media, "gemini", "the adapter sends media inline: pass it as a `data:` URL (base64)")
        else:
            parts.append({"inlineData": {"mimeType": media.mime, "data": media.data}})
    return parts
