"""The OpenAPI document of Laneway's HTTP API, served at `/openapi.json`."""

from __future__ import annotations

from typing import Any

from .. import __version__
from ..chat import REASONING_EFFORTS
from ..request import MAX_OUTPUT_TOKENS, MAX_STOP, RESPONSE_FORMATS, TOOL_CHOICES
from ..signals import CHANNELS, PRIORITIES

_ERROR = {
    "type": "object", "required": ["error"],
    "properties": {"error": {
        "type": "object", "required": ["message", "type", "code", "request_id"],
        "properties": {
            "message": {"type": "string"}, "type": {"type": "string"}, "code": {"type": "string"},
            "param": {"type": ["string", "null"]}, "request_id": {"type": "string"},
            "attempts": {"type": "array", "items": {"type": "object"}},
        },
    }},
}
_TEXT_PART = {"type": "object", "required": ["text"], "description": "`type` `text` (the default), or `input_text`; "
              "an assistant's `refusal` part carries `refusal` instead",
              "properties": {"type": {"enum": ["text", "input_text"]}, "text": {"type": "string"}}}
_REFUSAL_PART = {"type": "object", "required": ["type", "refusal"],
                 "properties": {"type": {"const": "refusal"}, "refusal": {"type": "string"}}}
_MEDIA_PART = {"type": "object", "required": ["type"], "description": "`image_url`, `file` or `input_audio`, as "
               "OpenAI's; a model whose adapter cannot send one is skipped (docs/providers.md)",
               "properties": {"type": {"enum": ["image_url", "file", "input_audio"]}}}
_TOOL_CALL = {"type": "object", "required": ["id", "type", "function"],
              "properties": {"id": {"type": "string"}, "type": {"const": "function"},
                             "function": {"type": "object", "required": ["name", "arguments"],
                                          "properties": {"name": {"type": "string"},
                                                         "arguments": {"type": "string"}}}}}
_MESSAGE = {
    "type": "object", "required": ["role"],
    "description": "`content` may be null only for `assistant` (with `tool_calls`) and `tool` messages",
    "properties": {
        "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {"oneOf": [{"type": "string"}, {"type": "null"},
                              {"type": "array", "items": {"anyOf": [_TEXT_PART, _REFUSAL_PART, _MEDIA_PART]}}]},
        "name": {"type": "string"},
        "tool_calls": {"type": "array", "items": _TOOL_CALL},
        "tool_call_id": {"type": "string"},
    },
}
_TOOL = {"type": "object", "required": ["type", "function"],
         "properties": {"type": {"const": "function"},
                        "function": {"type": "object", "required": ["name"],
                                     "properties": {"name": {"type": "string", "minLength": 1},
                                                    "description": {"type": "string"},
                                                    "parameters": {"type": "object"}}}}}
_PENALTY = {"type": "number", "minimum": -2, "maximum": 2}
_OUTPUT_LIMIT = {"type": "integer", "minimum": 1, "maximum": MAX_OUTPUT_TOKENS}
_METADATA = {
    "type": "object", "description": "Signals (`priority`, `escalation`, `channel`, `tier`, `conversation_id`) "
                                     "and any other key for `metadata.<key>` matchers.",
    "properties": {
        "priority": {"enum": list(PRIORITIES)}, "escalation": {"enum": [True, False, "true", "false"]},
        "channel": {"enum": list(CHANNELS)}, "tier": {"type": "string"}, "conversation_id": {"type": "string"},
    },
    "additionalProperties": {"description": "any JSON value, within the bounds the gateway sets (64 keys, "
                                            "strings of at most 512 characters, 16 KiB in all)"},
}
_REQUEST_FIELDS: dict[str, Any] = {
    "model": {"type": "string", "minLength": 1, "description": "`laneway` (or `auto`) routes by the table"},
    "messages": {"type": "array", "minItems": 1, "maxItems": 2048, "items": _MESSAGE},
    "stream": {"type": "boolean"},
    "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "minimum": 0, "maximum": 1},
    "max_tokens": _OUTPUT_LIMIT,
    "max_completion_tokens": _OUTPUT_LIMIT,
    "stop": {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "maxItems": MAX_STOP}]},
    "presence_penalty": _PENALTY,
    "frequency_penalty": _PENALTY,
    "seed": {"type": "integer"},
    "logprobs": {"type": "boolean"},
    "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 20},
    "logit_bias": {"type": "object", "additionalProperties": {"type": "number"}},
    "response_format": {"type": "object", "required": ["type"],
                        "properties": {"type": {"enum": list(RESPONSE_FORMATS)},
                                       "json_schema": {"type": "object", "required": ["name"],
                                                       "properties": {"name": {"type": "string"},
                                                                      "schema": {"type": "object"},
                                                                      "strict": {"type": "boolean"}}}}},
    "tools": {"type": "array", "items": _TOOL},
    "tool_choice": {"oneOf": [{"enum": list(TOOL_CHOICES)}, {"type": "object"}]},
    "parallel_tool_calls": {"type": "boolean"},
    "reasoning_effort": {"enum": list(REASONING_EFFORTS)},
    "service_tier": {"type": "string"},
    "verbosity": {"type": "string"},
    "prompt_cache_key": {"type": "string"},
    "prompt_cache_retention": {"type": "string"},
    "safety_identifier": {"type": "string"},
    "prediction": {"type": "object"},
    "modalities": {"type": "array", "items": {"type": "string"}},
    "web_search_options": {"type": "object"},
    "store": {"type": "boolean"},
    "n": {"const": 1},
    "user": {"type": "string"},
    "metadata": _METADATA,
}
_REQUIRED = ("model", "messages")
# As OpenAI's API, and the gateway, take them: an optional field may be sent as null, meaning not sent.
_REQUEST = {"type": "object", "required": list(_REQUIRED), "additionalProperties": False,
            "properties": {name: field if name in _REQUIRED else {"anyOf": [field, {"type": "null"}]}
                           for name, field in _REQUEST_FIELDS.items()}}
_USAGE = {"type": "object", "required": ["prompt_tokens", "completion_tokens", "total_tokens"],
          "properties": {k: {"type": "integer"} for k in ("prompt_tokens", "completion_tokens", "total_tokens")}}
_COMPLETION = {
    "type": "object", "required": ["id", "object", "created", "model", "choices", "usage"],
    "properties": {
        "id": {"type": "string"}, "object": {"const": "chat.completion"}, "created": {"type": "integer"},
        "model": {"type": "string"}, "usage": _USAGE,
        "choices": {"type": "array", "items": {
            "type": "object", "required": ["index", "message", "finish_reason"],
            "properties": {"index": {"type": "integer"}, "finish_reason": {"type": "string"},
                           "message": {"type": "object", "required": ["role", "content"],
                                       "properties": {"role": {"const": "assistant"},
                                                      "content": {"type": ["string", "null"]},
                                                      "refusal": {"type": ["string", "null"]},
                                                      "tool_calls": {"type": "array", "items": _TOOL_CALL}}}},
        }},
    },
}


_MODEL = {"type": "object", "required": ["id", "object", "created", "owned_by"],
          "properties": {"id": {"type": "string"}, "object": {"const": "model"}, "created": {"type": "integer"},
                         "owned_by": {"type": "string"}}}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"description": "error", "content": {"application/json": {"schema": _ERROR}}}
            for s in statuses}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def openapi_document() -> dict[str, Any]:
    chat = {
        "operationId": "createChatCompletion", "security": _CLIENT,
        "requestBody": {"required": True, "content": {"application/json": {"schema": _REQUEST}}},
        "responses": {
            "200": {"description": "the answer (JSON, or an SSE stream when `stream` is true)",
                    "content": {"application/json": {"schema": _COMPLETION}, "text/event-stream": {}}},
            **_errors(400, 401, 403, 404, 405, 413, 429, 500, 502, 503, 504),
        },
    }
    status = {"type": "object"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Laneway", "version": __version__,
                 "description": "OpenAI-compatible routing gateway. `x-laneway-*` headers carry signals in and "
                                "the route, model, lane and cost out."},
        "paths": {
            "/v1/chat/completions": {"post": chat},
            "/v1/models": {"get": {"operationId": "listModels", "security": _CLIENT, "responses": {"200": _json({
                "type": "object", "required": ["object", "data"],
                "properties": {"object": {"const": "list"}, "data": {"type": "array", "items": _MODEL}}}),
                **_errors(401)}}},
            "/v1/models/{model}": {"get": {
                "operationId": "retrieveModel", "security": _CLIENT,
                "parameters": [{"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _json(_MODEL), **_errors(401, 404)}}},
            "/healthz": {"get": {"operationId": "health", "responses": {"200": _json(status)}}},
            "/readyz": {"get": {"operationId": "ready", "responses": {"200": _json(status),
                                                                      "503": _json(status, "not ready")}}},
            **_ADMIN_PATHS,
        },
        "components": {"securitySchemes": {
            "clientKey": {"type": "http", "scheme": "bearer",
                          "description": "a client key, once `keys:` gives clients keys (docs/deployment.md)"},
            "adminKey": {"type": "http", "scheme": "bearer",
                         "description": "the admin key (`admin.key_env`), needed once it is set or clients need "
                                        "keys; before, the admin endpoints answer on a loopback address only "
                                        "(docs/deployment.md)"},
        }},
    }


_CLIENT: list[dict[str, list[str]]] = [{}, {"clientKey": []}]  # no key, or a client key once `keys:` gives clients keys
# The admin key once clients need keys or `admin.key_env` is set; before, none, on a loopback address only.
_ADMIN: list[dict[str, list[str]]] = [{}, {"adminKey": []}]
_WINDOW = [{"name": name, "in": "query", "required": False, "schema": {"type": ["number", "string"]},
            "description": f"{what} of the window: unix seconds, or an ISO 8601 time (UTC unless it carries an offset)"}
           for name, what in (("since", "the start"), ("until", "the end"))]
_FIGURES = {"type": "object", "required": ["total", "models", "routes"], "description": "docs/telemetry.md",
            "properties": {"total": {"type": "object", "required": ["requests", "cost_usd"],
                                     "properties": {"requests": {"type": "integer"}, "cost_usd": {"type": "number"}}},
                           "models": {"type": "object", "additionalProperties": {"type": "object"}},
                           "routes": {"type": "object", "additionalProperties": {"type": "object"}}}}
# The operator's endpoints (docs/telemetry.md, docs/deployment.md). A gateway with `telemetry.metrics: false`
# answers 404 on the live figures; `/metrics` and the dashboard need the admin key as `admin:` says.
_ADMIN_PATHS: dict[str, Any] = {
    "/metrics": {"get": {
        "operationId": "metrics", "security": _ADMIN,
        "description": "Prometheus text format; with the admin key when `admin.protect_metrics` is set",
        "responses": {"200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}},
                      **_errors(401, 403, 404)}}},
    "/admin/stats": {"get": {
        "operationId": "stats", "security": _ADMIN, "parameters": _WINDOW,
        "description": "per model and route figures over the in-memory window; `laneway report --json` prints the "
                       "same from the exchange log",
        "responses": {"200": _json(_FIGURES), **_errors(400, 401, 403, 404)}}},
    "/admin/shadow": {"get": {
        "operationId": "shadowComparison", "security": _ADMIN,
        "description": "shadow candidates against their primaries (docs/lanes.md)",
        "responses": {"200": _json({"type": "object"}), **_errors(401, 403, 404)}}},
    "/admin/config": {"get": {
        "operationId": "runningConfig", "security": _ADMIN,
        "description": "the running config, without secrets",
        "responses": {"200": _json({"type": "object", "required": ["source", "models", "routes"]}),
                      **_errors(401, 403)}}},
    "/admin/reload": {"post": {
        "operationId": "reload", "security": _ADMIN,
        "description": "read the config file again; an invalid one is refused and the running config goes on",
        "responses": {"200": _json({"type": "object", "required": ["reloaded"]}),
                      "400": _json({"type": "object", "required": ["reloaded", "errors"]}, "the file is invalid"),
                      "500": _json({"type": "object", "required": ["reloaded", "errors"]},
                                   "the file is valid and could not be put to work"),
                      **_errors(401, 403)}}},
    "/dashboard": {"get": {
        "operationId": "dashboard",
        "description": "the live dashboard (HTML); it reads `/admin/stats` with the admin key it is given",
        "responses": {"200": {"description": "OK", "content": {"text/html": {"schema": {"type": "string"}}}},
                      **_errors(403, 404)}}},
}
