"""The OpenAPI document of Laneway's HTTP API, served at `/openapi.json`."""

from __future__ import annotations

from typing import Any

from .. import __version__
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
_TEXT_PART = {"type": "object", "required": ["type", "text"],
              "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}
_MESSAGE = {
    "type": "object", "required": ["role", "content"],
    "properties": {
        "role": {"enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {"oneOf": [{"type": "string"}, {"type": "array", "items": _TEXT_PART}]},
        "name": {"type": "string"},
    },
}
_METADATA = {
    "type": "object", "description": "Signals (`priority`, `escalation`, `channel`, `tier`, `conversation_id`) "
                                     "and any other key for `metadata.<key>` matchers.",
    "properties": {
        "priority": {"enum": list(PRIORITIES)}, "escalation": {"enum": [True, False, "true", "false"]},
        "channel": {"enum": list(CHANNELS)}, "tier": {"type": "string"}, "conversation_id": {"type": "string"},
    },
    "additionalProperties": {"type": ["string", "number", "boolean"]},
}
_REQUEST = {
    "type": "object", "required": ["model", "messages"], "additionalProperties": False,
    "properties": {
        "model": {"type": "string", "minLength": 1, "description": "`laneway` (or `auto`) routes by the table"},
        "messages": {"type": "array", "minItems": 1, "maxItems": 2048, "items": _MESSAGE},
        "stream": {"type": "boolean"},
        "stream_options": {"type": "object", "properties": {"include_usage": {"type": "boolean"}}},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": 1_000_000},
        "n": {"const": 1},
        "user": {"type": "string"},
        "metadata": _METADATA,
    },
}
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
                                                      "content": {"type": "string"}}}},
        }},
    },
}


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"description": "error", "content": {"application/json": {"schema": _ERROR}}}
            for s in statuses}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def openapi_document() -> dict[str, Any]:
    chat = {
        "operationId": "createChatCompletion",
        "requestBody": {"required": True, "content": {"application/json": {"schema": _REQUEST}}},
        "responses": {
            "200": {"description": "the answer (JSON, or an SSE stream when `stream` is true)",
                    "content": {"application/json": {"schema": _COMPLETION}, "text/event-stream": {}}},
            **_errors(400, 401, 403, 404, 413, 429, 500, 502, 504),
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
            "/v1/models": {"get": {"operationId": "listModels", "responses": {"200": _json({
                "type": "object", "required": ["object", "data"],
                "properties": {"object": {"const": "list"}, "data": {"type": "array"}}})}}},
            "/healthz": {"get": {"operationId": "health", "responses": {"200": _json(status)}}},
            "/readyz": {"get": {"operationId": "ready", "responses": {"200": _json(status),
                                                                      "503": _json(status, "not ready")}}},
        },
    }
