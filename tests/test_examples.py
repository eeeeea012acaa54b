"""The shipped example of the case study's final architecture routes real support messages."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from _live import live_gateway

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "case-study-final.yaml"


@pytest.mark.parametrize(("content", "metadata", "route", "model"), [
    ("I was charged twice on my card, I want my money back", {}, "billing", "gemini-2.5-pro"),
    ("can I get a copy of my invoice for march", {}, "billing", "gemini-2.5-pro"),
    ("there's a charge on my statement I don't recognise", {}, "billing", "gemini-2.5-pro"),
    ("hello there", {}, "short-chat", "gemini-2.5-flash-lite"),
    # The client's own classifier decides the route; the policy manual has nothing on "hello", so
    # the retrieval miss goes to gpt-5.
    ("hello there", {"intent": "billing_dispute"}, "billing", "gpt-5"),
    ("Subject: delivery\n\nWhen will my order arrive?", {"channel": "email"}, "email-triage", "gpt-5-mini"),
    # An email is classified by its subject and body; a chat has no subject to read.
    ("see the subject line", {"channel": "email", "subject": "I was charged twice on my card, I want my money back"},
     "billing", "gemini-2.5-pro"),
    ("see the subject line", {"subject": "I was charged twice on my card, I want my money back"},
     "short-chat", "gemini-2.5-flash-lite"),
    ("this is the third time I write", {"escalation": True}, "escalation", "heavy-foundation"),
])
def test_final_architecture_routes_by_intent_and_signals(sim_url: str, content: str, metadata: dict[str, object],
                                                         route: str, model: str) -> None:
    with live_gateway(EXAMPLE.read_text(), sim_url, config_path=EXAMPLE) as live:
        body = {"model": "laneway", "messages": [{"role": "user", "content": content}], "metadata": metadata}
        request = urllib.request.Request(live.url + "/v1/chat/completions", data=json.dumps(body).encode())
        with urllib.request.urlopen(request, timeout=30) as response:
            headers = dict(response.headers)
    assert headers["x-laneway-route"] == route
    assert headers["x-laneway-model"] == model


@pytest.mark.parametrize(("metadata", "headers", "status", "needle"), [
    ({"intent": " Billing_Dispute "}, {}, 200, "billing"),  # trimmed and lower-cased, as other signals are
    ({}, {"x-laneway-intent": "billing_dispte"}, 400, "did you mean `billing_dispute`?"),
    ({"intent": 5}, {}, 400, "`metadata.intent`: expected an intent label, got 5"),
    ({"channel": "email", "subject": ["a"]}, {}, 400, "`metadata.subject`: expected the email's subject line"),
])
def test_a_client_intent_is_normalised_and_checked_against_the_model(
        sim_url: str, metadata: dict[str, object], headers: dict[str, str], status: int, needle: str) -> None:
    with live_gateway(EXAMPLE.read_text(), sim_url, config_path=EXAMPLE) as live:
        body = {"model": "laneway", "messages": [{"role": "user", "content": "tell me a joke"}], "metadata": metadata}
        request = urllib.request.Request(live.url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                got, route = response.status, response.headers["x-laneway-route"]
        except urllib.error.HTTPError as error:
            got, route = error.code, json.loads(error.read())["error"]["message"]
    assert got == status
    assert needle in route
