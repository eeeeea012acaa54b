"""Prompt-cache reads and writes are priced as providers bill them, for every wire format.

The simulated fleet caches a long prompt prefix as each provider does (OpenAI and Gemini on their
own, Anthropic only where the request marks it) and reports the counts in each wire's own fields;
the gateway must read them, price them with `cached_input_per_mtok` / `cache_write_per_mtok`, and
pass the cached count on to the client as OpenAI's `prompt_tokens_details.cached_tokens`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from _live import LiveGateway, RecordingSink, live_gateway
from laneway.config import Price
from laneway.sim._prompt_cache import STEP

# About 2,000 tokens of standing instructions, as a support assistant's system prompt often is.
POLICY = " ".join(f"Rule {i}: refunds over 50 dollars need a supervisor's approval, and the agent says so."
                  for i in range(120))
PRICES = {
    "gpt-5-mini": Price(0.25, 2.0, cached_input_per_mtok=0.025),
    "claude-cached": Price(3.0, 15.0, cached_input_per_mtok=0.3, cache_write_per_mtok=3.75),
    "claude-plain": Price(3.0, 15.0, cached_input_per_mtok=0.3, cache_write_per_mtok=3.75),
    "gemini-2.5-flash-lite": Price(0.10, 0.40, cached_input_per_mtok=0.025),
}


def _price(p: Price) -> str:
    return (f"{{input_per_mtok: {p.input_per_mtok}, output_per_mtok: {p.output_per_mtok}, "
            f"cached_input_per_mtok: {p.cached_input_per_mtok}, cache_write_per_mtok: {p.cache_write_per_mtok or 0}}}")


@pytest.fixture(scope="module")
def live(sim_url: str) -> Iterator[tuple[LiveGateway, RecordingSink]]:
    wires = {"gpt-5-mini": ("openai", "sim:///gpt-5-mini/v1", "gpt-5-mini", ""),
             "claude-cached": ("anthropic", "sim:///claude-sonnet-37", "claude-3-7-sonnet", "prompt_cache: true"),
             "claude-plain": ("anthropic", "sim:///claude-sonnet-37", "claude-3-7-sonnet", ""),
             "gemini-2.5-flash-lite": ("gemini", "sim:///gemini-2.5-flash-lite", "gemini-2.5-flash-lite", "")}
    models = "".join(f"""  {name}:
    provider: {provider}
    base_url: {base}
    model: {model}
    context_window: 100000
    price: {_price(PRICES[name])}
    {extra}
""" for name, (provider, base, model, extra) in wires.items())
    sink = RecordingSink()
    with live_gateway(f"models:\n{models}routes:\n- target: gpt-5-mini\n", sim_url, telemetry=sink) as gateway:
        yield gateway, sink


def ask(live: LiveGateway, model: str, question: str, stream: bool, case: str) -> tuple[str, dict[str, Any]]:
    """One request behind the long system prompt, made unique to `case` (the fleet's cache outlives a
    test): its request id and the usage the client saw."""
    c = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)
    messages: Any = [{"role": "system", "content": f"[{case}] {POLICY}"}, {"role": "user", "content": question}]
    if not stream:
        answer = c.chat.completions.create(model=model, messages=messages, max_tokens=30)
        assert answer.usage is not None
        return answer.id.removeprefix("chatcmpl-"), answer.usage.model_dump()
    chunks = list(c.chat.completions.create(model=model, messages=messages, max_tokens=30, stream=True,
                                            stream_options={"include_usage": True}))
    usage = chunks[-1].usage
    assert usage is not None
    return chunks[0].id.removeprefix("chatcmpl-"), usage.model_dump()


def cached_of(usage: dict[str, Any]) -> int:
    return int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model", ["gpt-5-mini", "gemini-2.5-flash-lite"])
def test_a_repeated_long_prefix_is_billed_at_the_cached_price(live: tuple[LiveGateway, RecordingSink], model: str,
                                                              stream: bool) -> None:
    gateway, sink = live
    case = f"{model} {stream}"
    first_id, first = ask(gateway, model, "Where is my refund?", stream, case)
    second_id, second = ask(gateway, model, "And my second refund?", stream, case)

    assert cached_of(first) == 0
    cached = cached_of(second)
    assert cached > 1000 and cached % STEP == 0
    exchange = sink.by_id(second_id)
    price = PRICES[model]
    assert exchange.attempts[-1].cached_tokens == cached
    assert exchange.cost_usd == pytest.approx(price.cost(second["prompt_tokens"], second["completion_tokens"], cached))
    full = price.cost(second["prompt_tokens"], second["completion_tokens"])
    assert exchange.cost_usd < 0.5 * full  # most of this prompt was read from the cache
    first_cost = price.cost(first["prompt_tokens"], first["completion_tokens"])
    assert sink.by_id(first_id).cost_usd == pytest.approx(first_cost)


def test_the_next_turn_of_a_conversation_reads_the_whole_previous_prompt(
        live: tuple[LiveGateway, RecordingSink]) -> None:
    c = openai.OpenAI(base_url=live[0].url + "/v1", api_key="unused", max_retries=0)
    turn: Any = [{"role": "system", "content": f"[turns] {POLICY}"}, {"role": "user", "content": "My parcel is late."}]
    first = c.chat.completions.create(model="gpt-5-mini", messages=turn, max_tokens=30)
    turn += [{"role": "assistant", "content": first.choices[0].message.content},
             {"role": "user", "content": "It was due on Monday."}]
    second = c.chat.completions.create(model="gpt-5-mini", messages=turn, max_tokens=30)

    assert first.usage is not None and second.usage is not None
    assert cached_of(second.usage.model_dump()) == first.usage.prompt_tokens // STEP * STEP


def test_anthropic_caches_only_a_marked_system_prompt_and_bills_the_write(
        live: tuple[LiveGateway, RecordingSink]) -> None:
    gateway, sink = live
    first_id, first = ask(gateway, "claude-cached", "Where is my refund?", False, "marked")
    second_id, second = ask(gateway, "claude-cached", "Is it on its way?", True, "marked")
    _, unmarked = ask(gateway, "claude-plain", "Where is my refund?", False, "unmarked")
    _, unmarked_again = ask(gateway, "claude-plain", "Is it on its way?", False, "unmarked")

    price = PRICES["claude-cached"]
    written = cached_of(second)  # the prefix the first request wrote is what the second one read
    assert written > 1000 and cached_of(first) == 0
    assert sink.by_id(first_id).cost_usd == pytest.approx(
        price.cost(first["prompt_tokens"], first["completion_tokens"], 0, written))
    assert sink.by_id(second_id).cost_usd == pytest.approx(
        price.cost(second["prompt_tokens"], second["completion_tokens"], written))
    assert cached_of(unmarked) == cached_of(unmarked_again) == 0


def test_an_anthropic_model_reads_the_cached_system_prompt_behind_a_route_s_passages(sim_url: str) -> None:
    """The passages went into the marked system prompt: they change with each question, so every request paid
    the cache write's premium on the whole of it and none read the cache."""
    from pathlib import Path

    policies = Path(__file__).resolve().parent.parent / "knowledge" / "billing" / "policies.md"
    config = f"""
models:
  claude:
    provider: anthropic
    base_url: sim:///claude-sonnet-37
    model: claude-3-7-sonnet
    context_window: 100000
    price: {_price(PRICES["claude-cached"])}
    prompt_cache: true
knowledge:
  billing: {{sources: ["{policies}"]}}
routes:
- target: claude
  retrieval: {{knowledge: billing, top_k: 3}}
"""
    sink = RecordingSink()
    with live_gateway(config, sim_url, telemetry=sink) as gateway:
        usages = [ask(gateway, "laneway", question, stream, "grounded")[1] for question, stream in (
            ("I was charged twice for my order, can I get a refund?", False),
            ("How long does a refund take to reach my card?", True),
            ("Can I cancel my subscription and get my money back?", False))]
    assert cached_of(usages[0]) == 0
    assert all(cached_of(usage) > 1000 for usage in usages[1:]), usages  # the policy prompt, read from the cache
