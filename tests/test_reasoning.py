"""`reasoning_effort` on Anthropic and Gemini models: a model's `reasoning:` translates it into the
provider's thinking settings (OpenAI models take it as it is); the thinking is billed, counted in
`completion_tokens_details.reasoning_tokens` where the provider says, and never shown as the answer."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from _live import LiveGateway, RecordingSink, live_gateway
from laneway.chat import ChatRequest
from laneway.config import parse_config
from laneway.errors import ConfigError
from laneway.providers import anthropic, gemini
from laneway.providers import openai as openai_provider
from laneway.runtime import prepare
from laneway.sim._answers import THINKING_BASE_TOKENS
from laneway.sim._wire_anthropic import THOUGHT

CONFIG = """
models:
  claude:
    provider: anthropic
    base_url: sim:///claude-sonnet-37
    model: claude-sonnet-37
    price: {input_per_mtok: 3.0, output_per_mtok: 15.0}
    profile: {temperature: 0.2}
    reasoning: {low: 1024, high: 8192, none: 0}
  gemini-25:
    provider: gemini
    base_url: sim:///gemini-2.5-pro
    model: gemini-2.5-pro
    price: {input_per_mtok: 1.25, output_per_mtok: 10.0}
    reasoning: {high: 8192, medium: -1}
  gemini-3:
    provider: gemini
    base_url: sim:///gemini-2.5-flash-lite
    model: gemini-2.5-flash-lite
    price: {input_per_mtok: 0.1, output_per_mtok: 0.4}
    reasoning: {low: low, high: high}
  mini:
    provider: openai
    base_url: sim:///gpt-5-mini/v1
    model: gpt-5-mini
    price: {input_per_mtok: 0.25, output_per_mtok: 2.0}
routes:
- name: cached
  matcher: "metadata.cache == on"
  target: claude
  cache: {mode: on, ttl_s: 60}
- target: claude
"""
QUESTION = [{"role": "user", "content": "I was charged twice for my order, can you check?"}]


def test_reasoning_settings_are_checked_per_provider() -> None:
    cases = [
        ("provider: openai\n    base_url: sim:///gpt-5/v1\n    reasoning: {high: 1}",
         "models.m.reasoning", "take `reasoning_effort` as it is"),
        ("provider: anthropic\n    base_url: sim:///claude-sonnet-37\n    reasoning: {high: 500}",
         "models.m.reasoning.high", "at least 1024"),
        ("provider: gemini\n    base_url: sim:///gemini-2.5-pro\n    reasoning: {high: extreme}",
         "models.m.reasoning.high", "thinking level (minimal, low, medium, high)"),
        ("provider: gemini\n    base_url: sim:///gemini-2.5-pro\n    reasoning: {extreme: 10}",
         "models.m.reasoning.extreme", "unknown `reasoning_effort` value"),
    ]
    for model, path, needle in cases:
        with pytest.raises(ConfigError) as caught:
            parse_config(f"models:\n  m:\n    {model}\nroutes:\n- target: m\n")
        assert path in str(caught.value) and needle in str(caught.value), str(caught.value)


def test_check_warns_of_budgets_the_window_cannot_hold_and_of_mixed_gemini_settings() -> None:
    config = parse_config("""
models:
  claude:
    provider: anthropic
    base_url: sim:///claude-sonnet-37
    context_window: 32000
    reasoning: {low: 2048, high: 64000}
  gemini:
    provider: gemini
    base_url: sim:///gemini-2.5-pro
    reasoning: {low: low, high: 8192}
routes:
- target: claude
  fallbacks: [gemini]
""")
    warnings = sorted(str(w) for w in config.warnings if not w.path.endswith(".price"))  # none given here
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith("models.claude.reasoning.high") and "does not fit" in warnings[0]
    assert warnings[1].startswith("models.gemini.reasoning") and "one or the other" in warnings[1]


def test_anthropic_thinking_adds_its_budget_and_drops_what_the_api_refuses_with_it() -> None:
    request = ChatRequest("claude", QUESTION, {"max_tokens": 300, "temperature": 0.2, "reasoning_effort": "high"})
    body = anthropic.request_body("claude", request, False, thinking=8192)
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 8192}
    assert body["max_tokens"] == 8192 + 300 and "temperature" not in body
    plain = anthropic.request_body("claude", request, False)
    assert "thinking" not in plain and plain["max_tokens"] == 300 and plain["temperature"] == 0.2
    nucleus = ChatRequest("claude", QUESTION, {"top_p": 0.5})
    assert "top_p" not in anthropic.request_body("claude", nucleus, False, thinking=2048)
    both = ChatRequest("claude", QUESTION, {"temperature": 0.7, "top_p": 0.97})  # the temperature used to win
    assert anthropic.request_body("claude", both, False)["temperature"] == 0.7
    assert anthropic.request_body("claude", both, False, thinking=2048)["top_p"] == 0.97
    tools = [{"type": "function", "function": {"name": "order", "parameters": {"type": "object"}}}]
    with_tools = ChatRequest("claude", QUESTION, {"tools": tools})
    assert "thinking" not in anthropic.request_body("claude", with_tools, False, thinking=2048)
    prefill = ChatRequest("claude", [*QUESTION, {"role": "assistant", "content": "Sure, the charge"}], {})
    assert "thinking" not in anthropic.request_body("claude", prefill, False, thinking=2048)


def test_gemini_thinking_is_a_budget_or_a_level() -> None:
    request = ChatRequest("gemini-2.5-pro", QUESTION, {"max_tokens": 300})
    budget = gemini.request_body(request, 8192)["generationConfig"]
    assert budget["thinkingConfig"] == {"thinkingBudget": 8192} and budget["maxOutputTokens"] == 8192 + 300
    level = gemini.request_body(request, "low")["generationConfig"]
    assert level["thinkingConfig"] == {"thinkingLevel": "low"} and level["maxOutputTokens"] == 300
    assert "thinkingConfig" not in gemini.request_body(request)["generationConfig"]


@pytest.mark.parametrize(("base_url", "field"), [
    ("https://api.openai.com/v1", "max_completion_tokens"),
    ("https://my-resource.openai.azure.com/openai/v1", "max_completion_tokens"),
    ("http://127.0.0.1:8000/v1", "max_tokens"),  # a vLLM server: the field as the client sent it
])
def test_openai_models_get_their_output_limit_in_the_field_their_api_takes(base_url: str, field: str) -> None:
    spec = parse_config(f"""
models:
  gpt-5:
    provider: openai
    base_url: {base_url}
    model: gpt-5
    price: {{input_per_mtok: 1.25, output_per_mtok: 10.0}}
    profile: {{max_tokens: 500}}
routes:
- target: gpt-5
""").models["gpt-5"]
    provider = openai_provider.create(spec, base_url)
    assert {k: v for k, v in provider.body(prepare(spec, QUESTION, {}), False).items()
            if k.startswith("max_")} == {field: 500}
    client_limit = prepare(spec, QUESTION, {"max_completion_tokens": 64})
    assert provider.body(client_limit, True)["max_completion_tokens"] == 64


@pytest.fixture(scope="module")
def thinking(sim_url: str) -> Iterator[tuple[LiveGateway, RecordingSink]]:
    sink = RecordingSink()
    with live_gateway(CONFIG, sim_url, telemetry=sink) as live:
        yield live, sink


def ask(live: LiveGateway, model: str, **extra: Any) -> Any:
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)
    return client.chat.completions.with_raw_response.create(model=model, messages=QUESTION, **extra)


@pytest.mark.parametrize("model", ["claude", "gemini-25", "gemini-3", "mini"])
def test_a_thinking_answer_bills_the_thinking_and_shows_only_the_answer(
        thinking: tuple[LiveGateway, RecordingSink], model: str) -> None:
    live, sink = thinking
    plain = ask(live, model)
    thought = ask(live, model, reasoning_effort="high")
    plain_usage, thought_usage = plain.parse().usage, thought.parse().usage
    answer = thought.parse().choices[0].message.content
    assert answer and THOUGHT not in answer
    # The same question gets the same answer; the thinking is on top of it, billed as output.
    assert answer == plain.parse().choices[0].message.content
    extra = thought_usage.completion_tokens - plain_usage.completion_tokens
    assert extra >= THINKING_BASE_TOKENS
    # OpenAI and Gemini say how many of the completion tokens were thought; Anthropic does not.
    details = thought_usage.completion_tokens_details
    assert (details.reasoning_tokens if details else None) == (None if model == "claude" else extra)
    assert plain_usage.completion_tokens_details is None
    attempt = sink.by_id(thought.headers["x-request-id"]).attempts[-1]
    assert attempt.completion_tokens == thought_usage.completion_tokens
    assert float(thought.headers["x-laneway-cost-usd"]) > float(plain.headers["x-laneway-cost-usd"])


def test_an_effort_the_model_does_not_map_is_sent_without_thinking(
        thinking: tuple[LiveGateway, RecordingSink]) -> None:
    live, _ = thinking
    plain = ask(live, "claude").parse().usage.completion_tokens
    assert ask(live, "claude", reasoning_effort="medium").parse().usage.completion_tokens == plain
    assert ask(live, "claude", reasoning_effort="none").parse().usage.completion_tokens == plain


def test_a_streamed_thinking_answer_shows_no_thought(thinking: tuple[LiveGateway, RecordingSink]) -> None:
    live, _ = thinking
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)
    chunks = list(client.chat.completions.create(
        model="claude", messages=QUESTION, reasoning_effort="low", stream=True,  # type: ignore[arg-type]
        stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    assert text and THOUGHT not in text
    assert usage is not None and usage.completion_tokens >= THINKING_BASE_TOKENS


def test_a_thinking_answer_is_sampled_and_not_cached(thinking: tuple[LiveGateway, RecordingSink]) -> None:
    """Extended thinking takes no temperature: the adapter leaves the request's 0 out, so the answer is
    sampled at the API's default and must not be replayed; without thinking the same request is cached."""
    live, _ = thinking
    client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)

    def lane(effort: str) -> str:
        response = client.chat.completions.with_raw_response.create(
            model="laneway", messages=QUESTION, temperature=0, reasoning_effort=effort,  # type: ignore[arg-type]
            metadata={"cache": "on"})
        return str(response.headers["x-laneway-lane"])

    assert [lane("high"), lane("high")] == ["primary", "primary"]
    assert [lane("none"), lane("none")] == ["primary", "cache"]
