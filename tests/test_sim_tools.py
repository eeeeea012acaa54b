"""Tool calls end to end on every wire format: the official `openai` client, the gateway, and the
simulated fleet, which calls a tool only when the request reaches it in its own wire format's terms
(`tools` for OpenAI, `tools` with `input_schema` for Anthropic, `functionDeclarations` for Gemini),
and which refuses, as Gemini 3 does, a current turn's function call sent back without its thought
signature."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from _live import WIRE_MODEL_NAMES, LiveGateway, live_gateway, wire_models_yaml

TOOLS: Any = [
    {"type": "function", "function": {
        "name": "lookup_order", "description": "Find an order and where it is",
        "parameters": {"type": "object", "properties": {"order": {"type": "string"}}, "required": ["order"]}}},
    {"type": "function", "function": {
        "name": "reset_password", "description": "Send a password reset link",
        "parameters": {"type": "object", "properties": {"email": {"type": "string", "format": "email"}},
                       "required": ["email"]}}},
]
QUESTION: Any = [{"role": "user", "content": "Where is my order 1182?"}]
MODELS = WIRE_MODEL_NAMES


@pytest.fixture(scope="module")
def live(sim_url: str) -> Iterator[LiveGateway]:
    config = f"""
models:
{wire_models_yaml()}
routes:
- target: gpt-5-mini
"""
    with live_gateway(config, sim_url) as gateway:
        yield gateway


def client(live: LiveGateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)


@pytest.mark.parametrize("model", MODELS)
def test_a_simulated_model_calls_the_tool_the_message_asks_for_then_answers_its_result(
        live: LiveGateway, model: str) -> None:
    ask = client(live).chat.completions
    called = ask.create(model=model, messages=QUESTION, tools=TOOLS)
    streamed = list(ask.create(model=model, messages=QUESTION, tools=TOOLS, stream=True))

    assert called.choices[0].finish_reason == "tool_calls"
    calls = called.choices[0].message.tool_calls
    assert calls is not None and [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("lookup_order", {"order": "1182"})]
    pieces = [p for c in streamed if c.choices for p in (c.choices[0].delta.tool_calls or [])]
    assert {p.index for p in pieces} == {0} and pieces[0].function and pieces[0].function.name == "lookup_order"
    assert json.loads("".join(p.function.arguments or "" for p in pieces if p.function)) == {"order": "1182"}
    assert [c.choices[0].finish_reason for c in streamed if c.choices][-1] == "tool_calls"

    # The result goes back as OpenAI's API has it; the model answers in text.
    follow_up: Any = [*QUESTION,
                      {"role": "assistant", "content": None, "tool_calls": [
                          {"id": calls[0].id, "type": "function",
                           "function": {"name": "lookup_order", "arguments": calls[0].function.arguments}}]},
                      {"role": "tool", "tool_call_id": calls[0].id, "content": '{"status": "shipped"}'}]
    answered = ask.create(model=model, messages=follow_up, tools=TOOLS)
    assert answered.choices[0].finish_reason == "stop" and answered.choices[0].message.content
    assert not answered.choices[0].message.tool_calls


@pytest.mark.parametrize("model", MODELS)
def test_tool_choice_decides_whether_and_which_tool_a_simulated_model_calls(live: LiveGateway, model: str) -> None:
    ask = client(live).chat.completions
    small_talk: Any = [{"role": "user", "content": "Hello there"}]

    def called(messages: Any, choice: Any) -> list[str]:
        answer = ask.create(model=model, messages=messages, tools=TOOLS, tool_choice=choice)
        return [c.function.name for c in answer.choices[0].message.tool_calls or ()]

    assert called(QUESTION, "none") == []
    assert called(small_talk, "auto") == []  # nothing in it asks for a tool
    assert called(small_talk, "required") == ["lookup_order"]
    assert called(QUESTION, {"type": "function", "function": {"name": "reset_password"}}) == ["reset_password"]


def test_a_gemini_call_goes_back_signed_and_the_fleet_refuses_one_that_does_not(
        live: LiveGateway, sim_url: str) -> None:
    ask = client(live).chat.completions
    # A call another model made (no signature anywhere) in the current turn: the adapter signs it with
    # the documented stand-in, and the request goes through.
    foreign: Any = [*QUESTION,
                    {"role": "assistant", "content": None, "tool_calls": [
                        {"id": "call_elsewhere", "type": "function",
                         "function": {"name": "lookup_order", "arguments": '{"order": "1182"}'}}]},
                    {"role": "tool", "tool_call_id": "call_elsewhere", "content": "shipped"}]
    answered = ask.create(model="gemini-2.5-flash-lite", messages=foreign, tools=TOOLS)
    assert answered.choices[0].finish_reason == "stop"

    # The same conversation sent to the fleet directly, unsigned, is refused as Gemini 3 refuses it.
    body = {"contents": [
        {"role": "user", "parts": [{"text": "Where is my order 1182?"}]},
        {"role": "model", "parts": [{"functionCall": {"name": "lookup_order", "args": {"order": "1182"}}}]},
        {"role": "user", "parts": [{"functionResponse": {"name": "lookup_order", "response": {"result": "shipped"}}}]},
    ]}
    request = urllib.request.Request(f"{sim_url}/gemini-2.5-flash-lite/v1beta/models/gemini-2.5-flash-lite:"
                                     "generateContent", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 400 and b"thought_signature" in refused.value.read()
