"""Decoding and validating a client's chat-completions request, and reading its signals."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import orjson

from .chat import REASONING_EFFORTS
from .errors import InvalidRequest, shown
from .signals import MAX_TEXT_SIGNAL, SETTABLE, SUBJECT, Signals, parse_settable

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
# Message fields passed on to providers; anything else a client sends is dropped, not forwarded.
MESSAGE_FIELDS = frozenset({"role", "content", "name", "tool_calls", "tool_call_id"})

# Fields of OpenAI's chat-completions request that Laneway accepts; anything else is a 400.
_PARAMS = frozenset({
    "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "presence_penalty",
    "frequency_penalty", "seed", "logprobs", "top_logprobs", "response_format", "logit_bias",
    "tools", "tool_choice", "parallel_tool_calls", "reasoning_effort", "service_tier", "verbosity",
    # OpenAI's own: passed on to `openai` models, left out for the others (`safety_identifier` becomes
    # Anthropic's `metadata.user_id`, as `user` does)
    "prompt_cache_key", "prompt_cache_retention", "safety_identifier", "prediction", "modalities",
    "web_search_options", "store",
})
# OpenAI's deprecated function calling, which `tools` replaced: refused with the way to send it now.
_LEGACY = {"functions": "`tools`", "function_call": "`tool_choice`"}
_FIELDS = _PARAMS | {"model", "messages", "stream", "stream_options", "n", "user", "metadata"}
SAMPLING_RANGES = {"temperature": (0.0, 2.0), "top_p": (0.0, 1.0), "presence_penalty": (-2.0, 2.0),
                   "frequency_penalty": (-2.0, 2.0), "top_logprobs": (0, 20)}
MAX_OUTPUT_TOKENS = 1_000_000
MAX_STOP = 4  # stop sequences, as OpenAI allows
TOOL_CHOICES = ("none", "auto", "required")


SEED_RANGE = 2**63  # a seed is a signed 64-bit number: no upstream's JSON encoder takes one past it


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_stop(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and len(value) <= MAX_STOP
                                      and all(isinstance(v, str) for v in value))


def _is_tools(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(t, dict) and isinstance(t.get("function", {}), dict) for t in value)


def _check_functions(tools: list[dict[str, Any]]) -> None:
    """A function tool has a `function` with a name, as OpenAI requires: a model whose adapter passes tools on
    as they are sent a nameless one upstream, for the upstream's 400. Other tool types pass as they are."""
    for i, tool in enumerate(tools):
        name = (tool.get("function") or {}).get("name")
        if tool.get("type", "function") == "function" and not (isinstance(name, str) and name):
            raise InvalidRequest(f"`tools[{i}]` must be `{{\"type\": \"function\", \"function\": {{\"name\": ...}}}}`",
                                 param=f"tools[{i}]")


def _is_bias(value: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value.values())


# The shape of each parameter not checked by range: how to test it, and what it must be.
_SHAPES: dict[str, tuple[Any, str]] = {
    "stop": (_is_stop, f"a string or a list of at most {MAX_STOP} strings"),
    "seed": (_is_int, "a whole number"),
    "logprobs": (lambda v: isinstance(v, bool), "true or false"),
    "parallel_tool_calls": (lambda v: isinstance(v, bool), "true or false"),
    "tools": (_is_tools, 'a list of tools, each an object such as {"type": "function", "function": {"name": ...}}'),
    "tool_choice": (lambda v: v in TOOL_CHOICES or isinstance(v, dict),
                    f"one of {', '.join(TOOL_CHOICES)}, or an object naming a function"),
    "logit_bias": (_is_bias, "an object of token ids to numbers"),
    "service_tier": (lambda v: isinstance(v, str), "a string"),
    "verbosity": (lambda v: isinstance(v, str), "a string"),
    "prompt_cache_key": (lambda v: isinstance(v, str), "a string"),
    "prompt_cache_retention": (lambda v: isinstance(v, str), "a string"),
    "safety_identifier": (lambda v: isinstance(v, str), "a string"),
    "prediction": (lambda v: isinstance(v, dict), 'an object such as {"type": "content", "content": ...}'),
    # Answers are text: an audio answer's `message.audio` would not reach the client.
    "modalities": (lambda v: isinstance(v, list) and all(m == "text" for m in v),
                   '["text"]: answers through the gateway are text, audio output is not supported'),
    "store": (lambda v: isinstance(v, bool), "true or false"),
    "web_search_options": (lambda v: isinstance(v, dict), "an object"),
}
RESPONSE_FORMATS = ("text", "json_object", "json_schema")
# `x-laneway-conversation-id`, and `x-laneway-conversation_id` as the signal is spelled (read second: proxies
# such as nginx drop headers with an underscore by default).
_SIGNAL_HEADERS = tuple((name, header) for name in SETTABLE
                        for header in dict.fromkeys(("x-laneway-" + name.replace("_", "-"), "x-laneway-" + name)))


@dataclass(slots=True)
class ClientRequest:
    model: str
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    stream: bool
    include_usage: bool
    user: str
    metadata: dict[str, Any]

    def max_tokens(self, default: int) -> int:
        value = self.params.get("max_tokens", self.params.get("max_completion_tokens"))
        return int(value) if value is not None else default


def decode(body: bytes, max_messages: int) -> ClientRequest:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if body.startswith(b"\x1f\x8b"):
            raise InvalidRequest("request body is gzip-compressed: send the JSON uncompressed") from None
        if "not valid UTF-8" in str(exc):
            raise InvalidRequest("request body is not UTF-8: send the JSON encoded as UTF-8 (compressed bodies are "
                                 "not supported)") from None
        raise InvalidRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("request body must be a JSON object")
    unknown = [key for key in data if key not in _FIELDS]
    if unknown:
        _refuse_unknown(unknown)
    model = data.get("model")
    if not isinstance(model, str) or not model:
        problem = "is required" if model is None or model == "" else f"must be a string, got {shown(model)}"
        raise InvalidRequest(f"`model` {problem}: a route table name such as `laneway`, or a model name",
                             param="model")
    messages = _messages(data.get("messages"), max_messages)
    params = {key: value for key, value in data.items() if key in _PARAMS and value is not None}
    _check_params(params, data.get("n"))
    stream = data.get("stream")
    stream = False if stream is None else stream  # null is the default, as OpenAI's API reads it
    if not isinstance(stream, bool):
        raise InvalidRequest("`stream` must be true or false", param="stream")
    options = data.get("stream_options")
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise InvalidRequest("`stream_options` must be an object", param="stream_options")
    if options and not stream:  # as OpenAI's API and vLLM answer
        raise InvalidRequest("`stream_options` is only allowed when `stream` is true: drop it, or stream",
                             param="stream_options")
    include_usage = options.get("include_usage")
    include_usage = False if include_usage is None else include_usage
    if not isinstance(include_usage, bool):
        raise InvalidRequest("`stream_options.include_usage` must be true or false",
                             param="stream_options.include_usage")
    user = data.get("user")
    user = "" if user is None else user
    if not isinstance(user, str):
        raise InvalidRequest("`user` must be a string", param="user")
    if user:
        params["user"] = user  # passed on: OpenAI's `user`, Anthropic's `metadata.user_id`
    metadata = data.get("metadata")
    metadata = {} if metadata is None else metadata
    if not isinstance(metadata, dict):
        raise InvalidRequest("`metadata` must be an object of string keys", param="metadata")
    if len(body) > MAX_METADATA_BYTES and metadata and len(orjson.dumps(metadata)) > MAX_METADATA_BYTES:
        raise InvalidRequest(f"`metadata` takes more than {MAX_METADATA_BYTES} bytes as JSON", param="metadata")
    # Encoding a value nested deeper than orjson's 254 levels fails: the upstream request, the exchange log.
    # Counted only when the body holds enough brackets to be that deep (almost never).
    if body.count(b"[") + body.count(b"{") > MAX_NESTING and _nesting(data) > MAX_NESTING:
        raise InvalidRequest(f"the request's JSON is nested more than {MAX_NESTING} levels deep")
    return ClientRequest(model, messages, params, stream, include_usage, user, metadata)


MAX_NESTING = 100
# `metadata` is kept with each exchange in the exchange log and in memory: bounded as OpenAI bounds it (16
# pairs, keys of 64 characters, values of 512), with room for Laneway's own keys and non-string values.
MAX_METADATA_KEYS = 64
MAX_METADATA_KEY = 64
MAX_METADATA_BYTES = 16 * 1024


def _too_long(key: str, value: Any) -> InvalidRequest:
    if len(key) > MAX_METADATA_KEY:
        return InvalidRequest(f"`metadata`: the key `{key[:40]}...` has {len(key)} characters, more than "
                              f"{MAX_METADATA_KEY}", param="metadata")
    return InvalidRequest(f"`metadata.{key}`: {len(value)} characters, more than {MAX_TEXT_SIGNAL}",
                          param=f"metadata.{key}")


def _nesting(value: Any) -> int:
    """How deep `value`'s arrays and objects nest (0 for a scalar)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        if depth <= MAX_NESTING:
            stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return deepest


def _messages(raw: Any, limit: int) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest("`messages` must be a non-empty list of chat messages", param="messages")
    if len(raw) > limit:
        raise InvalidRequest(f"`messages` has {len(raw)} entries; the limit is {limit}", param="messages")
    for i, message in enumerate(raw):
        if not isinstance(message, dict):
            raise InvalidRequest(f"`messages[{i}]` must be an object", param=f"messages[{i}]")
        if message.keys() - MESSAGE_FIELDS:
            message = raw[i] = {k: v for k, v in message.items() if k in MESSAGE_FIELDS}
        role = message.get("role")
        if role not in ROLES:
            raise InvalidRequest(f"`messages[{i}].role` must be one of {', '.join(sorted(ROLES))}, got {shown(role)}",
                                 param=f"messages[{i}].role")
        calls = message.get("tool_calls")
        if calls is not None and not (isinstance(calls, list) and all(isinstance(c, dict) for c in calls)):
            raise InvalidRequest(f"`messages[{i}].tool_calls` must be a list of tool calls (objects), got "
                                 f"{shown(calls)}", param=f"messages[{i}].tool_calls")
        if not isinstance(message.get("tool_call_id", ""), str):
            raise InvalidRequest(f"`messages[{i}].tool_call_id` must be a string", param=f"messages[{i}].tool_call_id")
        content = message.get("content")
        if content is None and role in ("assistant", "tool"):
            continue
        if isinstance(content, list):
            if not all(isinstance(p, dict) and isinstance(p.get("text", ""), str) for p in content):
                raise InvalidRequest(f"`messages[{i}].content` parts must be objects with `text`",
                                     param=f"messages[{i}].content")
        elif not isinstance(content, str):
            raise InvalidRequest(f"`messages[{i}].content` must be a string or a list of content parts (text, "
                                 f"image, file or audio), got {shown(content)}", param=f"messages[{i}].content")
    return raw


def _refuse_unknown(unknown: list[str]) -> NoReturn:
    legacy = next((key for key in unknown if key in _LEGACY), None)
    if legacy is not None:
        raise InvalidRequest(f"`{legacy}` is OpenAI's deprecated function calling; send {_LEGACY[legacy]} "
                             "instead (the `openai` client: `tools=[{\"type\": \"function\", \"function\": {...}}]`)",
                             param=legacy)
    raise InvalidRequest(f"unknown field `{unknown[0]}`; supported: {', '.join(sorted(_FIELDS))}", param=unknown[0])


def _check_params(params: dict[str, Any], n: Any) -> None:
    if isinstance(n, float) and n.is_integer():  # JSON has one number type: 1.0 is 1, as for `max_tokens`
        n = int(n)
    if isinstance(params.get("top_logprobs"), float) and params["top_logprobs"].is_integer():
        params["top_logprobs"] = int(params["top_logprobs"])
    if n is not None and (not _is_int(n) or n != 1):  # `true` is not 1
        raise InvalidRequest("`n` must be 1: Laneway routes and accounts one answer per request", param="n")
    for key, (low, high) in SAMPLING_RANGES.items():
        value = params.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise InvalidRequest(f"`{key}` must be a number from {low:g} to {high:g}, got {shown(value)}", param=key)
    if "top_logprobs" in params:
        if not _is_int(params["top_logprobs"]):
            raise InvalidRequest(f"`top_logprobs` must be a whole number, got {shown(params['top_logprobs'])}",
                                 param="top_logprobs")
        if params.get("logprobs") is not True:  # as OpenAI answers: else it would be dropped without a word
            raise InvalidRequest("`top_logprobs` asks for the most likely tokens of each log probability: send "
                                 "`logprobs: true` with it", param="top_logprobs")
    if params.get("max_tokens") is not None and params.get("max_completion_tokens") is not None:
        raise InvalidRequest("send one of `max_tokens` and `max_completion_tokens` (the current name), not both",
                             param="max_tokens")
    seed = params.get("seed")
    if isinstance(seed, float) and seed.is_integer():  # JSON has one number type: 7.0 is 7, as for `max_tokens`
        params["seed"] = seed = int(seed)
    if isinstance(seed, int) and not isinstance(seed, bool) and not -SEED_RANGE <= seed < SEED_RANGE:
        raise InvalidRequest(f"`seed` must be a whole number within 64 bits, got {shown(seed)}", param="seed")
    for key, value in params.items():  # the request's few, not every shape there is
        checked = _SHAPES.get(key)
        if checked is not None and not checked[0](value):
            raise InvalidRequest(f"`{key}` must be {checked[1]}, got {shown(value)}", param=key)
    if params.get("tools"):
        _check_functions(params["tools"])
    for key in ("max_tokens", "max_completion_tokens"):
        value = params.get(key)
        if value is None:
            continue
        if isinstance(value, float) and value.is_integer():  # JSON has one number type: 64.0 is 64
            params[key] = value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_OUTPUT_TOKENS:
            raise InvalidRequest(f"`{key}` must be a whole number from 1 to {MAX_OUTPUT_TOKENS}, got {shown(value)}",
                                 param=key)
    effort = params.get("reasoning_effort")
    if effort is not None and effort not in REASONING_EFFORTS:
        raise InvalidRequest(f"`reasoning_effort` must be one of {', '.join(REASONING_EFFORTS)}, got {shown(effort)}",
                             param="reasoning_effort")
    if "response_format" in params:
        _check_response_format(params["response_format"])
    if "tool_choice" in params:
        _check_tool_choice(params["tool_choice"], params.get("tools"))


def _check_tool_choice(choice: Any, tools: list[dict[str, Any]] | None) -> None:
    """As OpenAI answers: a choice that asks for a tool needs `tools`, and a named function must be one of
    them. Providers translate the choice, so an upstream would otherwise refuse it in words of its own."""
    if choice in ("none", "auto"):
        return
    if not tools:
        raise InvalidRequest(f"`tool_choice` {shown(choice)} is only allowed when `tools` are given",
                             param="tool_choice")
    if not isinstance(choice, dict) or choice.get("type") != "function":
        return
    function = choice.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    names = [t["function"].get("name") for t in tools if isinstance(t.get("function"), dict)]
    if name not in names:
        raise InvalidRequest(f"`tool_choice.function.name` must name a function in `tools` "
                             f"({', '.join(shown(n) for n in names)}), got {shown(name)}",
                             param="tool_choice.function.name")


def _check_response_format(value: Any) -> None:
    """OpenAI's shapes: `{"type": "text" | "json_object"}`, or `{"type": "json_schema", "json_schema":
    {"name": ..., "schema": {...}, "strict": ...}}`. Providers translate them, so they are checked here."""
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in RESPONSE_FORMATS:
        raise InvalidRequest("`response_format` must be an object whose `type` is one of "
                             f"{', '.join(RESPONSE_FORMATS)}, got {shown(value)}", param="response_format")
    if kind != "json_schema":
        return
    spec = value.get("json_schema")
    if not isinstance(spec, dict):
        raise InvalidRequest("`response_format.json_schema` must be an object with `name` and `schema`, as in "
                             '`{"type": "json_schema", "json_schema": {"name": "ticket", "schema": {...}}}`',
                             param="response_format.json_schema")
    if "name" not in spec:
        raise InvalidRequest("`response_format.json_schema.name` is required: a name for the schema, such as "
                             "`ticket`", param="response_format.json_schema.name")
    for key, kind_name, expected in (("name", "a string", str), ("schema", "an object (a JSON Schema)", dict)):
        if key in spec and not isinstance(spec[key], expected):
            raise InvalidRequest(f"`response_format.json_schema.{key}` must be {kind_name}, got {shown(spec[key])}",
                                 param=f"response_format.json_schema.{key}")


def read_signals(request: ClientRequest, headers: Mapping[str, str], intents: frozenset[str] = frozenset(),
                 **lazy: Any) -> Signals:
    """Signals from `metadata` and `x-laneway-<name>` headers; the header wins, and the `metadata` value it
    replaces is not read at all. `metadata.subject`, an email's subject, must be a string. A client's
    `intent` must be one of `intents` (what the routing file's intent model answers) when there are any."""
    values: dict[str, Any] = {}
    for name, header_name in _SIGNAL_HEADERS:
        header = headers.get(header_name)
        if header is not None and name not in values:
            values[name] = _settable(name, _header_text(header), header_name, intents)
    extra: dict[str, Any] = {}
    metadata = request.metadata
    if len(metadata) > MAX_METADATA_KEYS:  # kept with the exchange: bounded (`decode`)
        raise InvalidRequest(f"`metadata` has {len(metadata)} keys, more than {MAX_METADATA_KEYS}", param="metadata")
    for key, raw in metadata.items():
        name = str(key)
        if name not in SETTABLE:
            if len(name) > MAX_METADATA_KEY or (type(raw) is str and len(raw) > MAX_TEXT_SIGNAL):
                raise _too_long(name, raw)
            if name == SUBJECT and not isinstance(raw, str):
                raise InvalidRequest(f"`metadata.{SUBJECT}`: expected the email's subject line as a string, got "
                                     f"{shown(raw)}", param=f"metadata.{SUBJECT}")
            extra[name] = raw
        elif name not in values:
            values[name] = _settable(name, raw, f"metadata.{name}", intents)
    return Signals(request.messages, user=request.user, metadata=extra, **values, **lazy)


def conversation_header(headers: Mapping[str, str]) -> str | None:
    """The conversation id the headers give, when a valid one: a request refused before its signals were read
    still belongs to its conversation."""
    for name, header_name in _SIGNAL_HEADERS:
        header = headers.get(header_name)
        if name == "conversation_id" and header is not None:
            try:
                return str(_settable(name, _header_text(header), header_name, frozenset())) or None
            except InvalidRequest:
                return None
    return None


def _header_text(header: str) -> str:
    """A header value as its bytes meant it: servers read header bytes as Latin-1, and clients send UTF-8."""
    if header.isascii():
        return header
    try:
        return header.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return header


def _settable(name: str, raw: Any, where: str, intents: frozenset[str]) -> Any:
    value = parse_settable(name, raw, where)
    return _client_intent(raw, where, intents) if name == "intent" else value


def _client_intent(raw: Any, where: str, intents: frozenset[str]) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise InvalidRequest(f"`{where}`: expected an intent label, got {shown(raw)}", param=where)
    label = raw.strip().lower()
    if intents and label not in intents:
        close = difflib.get_close_matches(label, sorted(intents), n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        raise InvalidRequest(f"`{where}`: `{label}` is not an intent of the routing file's intent model; {hint}"
                             f"it knows: {', '.join(sorted(intents))}", param=where)
    return label
