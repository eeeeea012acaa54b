"""Structured outputs (`response_format`) through the gateway, for every wire format.

The simulated fleet answers with JSON only when a request reaches it in its own wire format's terms
(`response_format` for OpenAI, `output_config.format` for Anthropic, `responseMimeType` and
`responseJsonSchema` for Gemini), so a JSON answer that follows the schema shows the adapter's
translation arrived whole. The schemas are checked with `jsonschema`."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from typing import Any

import jsonschema
import openai
import pytest

from _live import WIRE_MODEL_NAMES, LiveGateway, RecordingSink, live_gateway, wire_models_yaml
from laneway.sim._answers import _SENTENCES
from laneway.sim._structured import instance

TRIAGE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "intent": {"type": "string", "enum": ["refund", "invoice", "delivery", "other"]},
        "urgent": {"type": "boolean"},
        "summary": {"type": "string", "maxLength": 40},
        "order_ids": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2},
        "customer": {"$ref": "#/$defs/customer"},
    },
    "required": ["intent", "urgent", "summary", "order_ids", "customer"],
    "additionalProperties": False,
    "$defs": {"customer": {"type": "object", "properties": {"tier": {"type": ["integer", "null"], "minimum": 1,
                                                                   "maximum": 3}},
                           "required": ["tier"], "additionalProperties": False}},
}
TRIAGE_FORMAT: Any = {"type": "json_schema", "json_schema": {"name": "triage", "schema": TRIAGE, "strict": True}}
MESSAGES: Any = [{"role": "user", "content": "I was charged twice for order 1182, please refund one."}]
MODELS = WIRE_MODEL_NAMES


@pytest.fixture(scope="module")
def live(sim_url: str) -> Iterator[tuple[LiveGateway, RecordingSink]]:
    config = f"""
models:
{wire_models_yaml()}
routes:
- name: shadowed
  matcher: "metadata.lane == shadowed"
  target: gpt-5-mini
  shadow: [{{target: claude-sonnet-37, sample: 1.0}}]
- name: claude-first
  target: claude-sonnet-37
  fallbacks: [gpt-5-mini]
"""
    sink = RecordingSink()
    with live_gateway(config, sim_url, telemetry=sink) as gateway:
        yield gateway, sink


def client(live: LiveGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("model", MODELS)
def test_a_json_schema_answer_follows_the_schema_whole_and_streamed(live: tuple[LiveGateway, RecordingSink],
                                                                    model: str) -> None:
    c = client(live[0])
    whole = c.chat.completions.create(model=model, messages=MESSAGES, response_format=TRIAGE_FORMAT, max_tokens=400)
    stream = c.chat.completions.create(model=model, messages=MESSAGES, response_format=TRIAGE_FORMAT,
                                       max_tokens=400, stream=True)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)

    assert whole.choices[0].finish_reason == "stop"
    for text in (whole.choices[0].message.content or "", streamed):
        jsonschema.validate(json.loads(text), TRIAGE)
    plain = c.chat.completions.create(model=model, messages=MESSAGES, max_tokens=40)
    with pytest.raises(ValueError):
        json.loads(plain.choices[0].message.content or "")  # without the format: prose


@pytest.mark.parametrize("model", ["gpt-5-mini", "gemini-2.5-flash-lite"])
def test_json_object_mode_gives_a_json_object(live: tuple[LiveGateway, RecordingSink], model: str) -> None:
    answer = client(live[0]).chat.completions.create(model=model, messages=MESSAGES, max_tokens=200,
                                                     response_format={"type": "json_object"})
    assert isinstance(json.loads(answer.choices[0].message.content or ""), dict)


def test_json_object_mode_skips_an_anthropic_model_for_the_next_one(live: tuple[LiveGateway, RecordingSink]) -> None:
    gateway, sink = live
    response = client(gateway).chat.completions.with_raw_response.create(
        model="laneway", messages=MESSAGES, max_tokens=200, response_format={"type": "json_object"})
    answer = response.parse()

    assert response.headers["x-laneway-model"] == "gpt-5-mini"
    assert isinstance(json.loads(answer.choices[0].message.content or ""), dict)
    exchange = sink.by_id(answer.id.removeprefix("chatcmpl-"))
    skipped = exchange.attempts[0]
    assert (skipped.model, skipped.outcome) == ("claude-sonnet-37", "skipped")
    assert skipped.error is not None and skipped.error.startswith("response_format: ")
    assert [a.model for a in exchange.attempts[1:]] == ["gpt-5-mini"]


def test_json_object_mode_on_an_anthropic_model_alone_is_a_400_that_says_to_send_a_schema(
        live: tuple[LiveGateway, RecordingSink]) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client(live[0]).chat.completions.create(model="claude-sonnet-37", messages=MESSAGES,
                                                response_format={"type": "json_object"})
    error = raised.value.body
    assert isinstance(error, dict) and error["param"] == "response_format"
    assert "`claude-sonnet-37` (anthropic)" in error["message"] and "json_schema" in error["message"]


def test_a_shadow_candidate_that_cannot_carry_the_format_is_dropped_and_counted(
        live: tuple[LiveGateway, RecordingSink]) -> None:
    gateway, sink = live
    assert gateway.gateway is not None
    counters = gateway.gateway.shadows.counters
    before = counters.dropped_refused
    answer = client(gateway).chat.completions.create(model="laneway", messages=MESSAGES, max_tokens=200,
                                                     response_format={"type": "json_object"},
                                                     metadata={"lane": "shadowed"})
    assert isinstance(json.loads(answer.choices[0].message.content or ""), dict)
    assert counters.dropped_refused == before + 1
    assert ("shadow_dropped_refused", "claude-sonnet-37") in sink.events


@pytest.mark.parametrize(("response_format", "param", "words"), [
    ({"type": "xml"}, "response_format", "one of text, json_object, json_schema"),
    ("json", "response_format", "must be an object"),
    ({"type": "json_schema"}, "response_format.json_schema", "with `name` and `schema`"),
    ({"type": "json_schema", "json_schema": {"schema": {"type": "object"}}}, "response_format.json_schema.name",
     "is required"),
    ({"type": "json_schema", "json_schema": {"name": "t", "schema": "{}"}}, "response_format.json_schema.schema",
     "must be an object (a JSON Schema)"),
])
def test_a_malformed_response_format_is_a_400_naming_the_field(live: tuple[LiveGateway, RecordingSink],
                                                               response_format: Any, param: str, words: str) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client(live[0]).chat.completions.create(model="gpt-5-mini", messages=MESSAGES,
                                                response_format=response_format)
    error = raised.value.body
    assert isinstance(error, dict) and error["param"] == param and words in error["message"]


def test_the_fleet_builds_values_that_follow_their_schema() -> None:
    schemas: list[dict[str, Any]] = [
        TRIAGE,
        {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 0.5}, "minItems": 3},
        {"anyOf": [{"type": "null"}, {"type": "integer", "exclusiveMaximum": -10}]},
        {"type": "object", "properties": {"next": {"$ref": "#"}, "at": {"type": "string", "format": "date-time"}}},
        {"type": "string", "const": "escalate"},
    ]
    gemini = {"type": "OBJECT", "properties": {"score": {"type": "INTEGER", "minimum": 7, "maximum": 9}}}
    for seed in range(30):
        rng = random.Random(seed)
        for schema in schemas:
            jsonschema.validate(instance(schema, rng, _SENTENCES), schema)
        value = instance(gemini, rng, _SENTENCES)
        assert set(value) == {"score"} and value["score"] in (7, 8, 9)
    assert instance({"type": "object"}, random.Random(0), _SENTENCES).keys() == {"reply"}


def test_a_prefill_under_a_schema_is_a_400_on_anthropic(live: tuple[LiveGateway, RecordingSink]) -> None:
    messages: Any = [*MESSAGES, {"role": "assistant", "content": '{"intent": "'}]
    with pytest.raises(openai.BadRequestError) as raised:
        client(live[0]).chat.completions.create(model="claude-sonnet-37", messages=messages,
                                                response_format=TRIAGE_FORMAT)
    error = raised.value.body
    assert isinstance(error, dict) and error["param"] == "messages"
    assert "does not continue an assistant message (a prefill)" in error["message"]
