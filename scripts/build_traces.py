"""Build `data/traces/support.json`: the support conversations `laneway demo` replays.

Sources (all under `data/`, each with its README and license):
  - ABCD (`data/abcd`): 5 real multi-turn chats, replayed turn by turn (long dialogs), and the
    agent guidelines, which are the policy passages the assistant retrieves for each customer message;
  - Bitext customer support (`data/bitext-customer-support`): single-message chats, and
    complaint + "talk to a human" pairs (escalations);
  - DSTC11 NatCS insurance (`data/dstc11-natcs-intents`): single-message chats, and calls whose
    customer raised several requests, sent as one email (email triage).

Run from the repository root: `.venv/bin/python scripts/build_traces.py` (deterministic).
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from laneway.retrieval import KnowledgeBase

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "data" / "traces" / "support.json"
SEED = 20250618
TOP_K = 3  # policy passages retrieved per customer message
CHUNK_WORDS = 400

SYSTEM = (
    "You are AcmeBrands' customer-support assistant. Answer from the policy passages and account "
    "records given in this conversation. Hand the case to a human agent when the customer asks for one."
)
# Share of *conversations* of each kind; `laneway demo` draws conversations with these weights.
MIX = {"chat": 0.826, "email": 0.136, "escalation": 0.0198, "long": 0.0183}
CHAT_BITEXT = 700
CHAT_NATCS = 300

BITEXT_TOPICS = {
    "ACCOUNT": "account", "CANCELLATION_FEE": "billing", "CONTACT": "contact", "DELIVERY": "shipping",
    "FEEDBACK": "feedback", "INVOICE": "billing", "NEWSLETTER": "account", "ORDER": "order",
    "PAYMENT": "billing", "REFUND": "refund", "SHIPPING_ADDRESS": "shipping",
}
NATCS_BILLING = {"PayBill", "ReportBillingIssue", "CheckPaymentStatus", "CancelAutomaticBilling",
                 "UpdateBillingFrequency", "UpdatePaymentPreference", "CheckAccountBalance"}
ESCALATING = {"complaint", "contact_human_agent"}


class Retriever:
    def __init__(self) -> None:
        self.kb = KnowledgeBase.build("abcd-guidelines", [ROOT / "data/abcd/guidelines.json"],
                                      chunk_tokens=CHUNK_WORDS)
        self.used: dict[str, str] = {}

    def passages(self, text: str) -> dict[str, Any]:
        found = self.kb.search(text, top_k=TOP_K)
        for passage in found:
            self.used[passage.id] = f"## {passage.title}\n{passage.text}"
        return {"role": "system", "passages": [p.id for p in found]}


def user_turn(retriever: Retriever, text: str) -> list[dict[str, Any]]:
    return [retriever.passages(text), {"role": "user", "content": text}]


def single(conv_id: str, kind: str, source: str, topic: str, messages: list[dict[str, Any]],
           channel: str = "chat", escalation: bool = False) -> dict[str, Any]:
    priority = "high" if escalation else "normal"
    return {"id": conv_id, "kind": kind, "source": source, "channel": channel, "topic": topic,
            "messages": messages, "requests": [{"upto": len(messages), "escalation": escalation,
                                                "priority": priority}]}


def bitext(retriever: Retriever, rng: random.Random) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    with (ROOT / "data/bitext-customer-support/bitext_train.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    plain = [r for r in rows if r["intent"] not in ESCALATING]
    rng.shuffle(plain)
    chats = [single(f"bitext-{i:04d}", "chat", "bitext", BITEXT_TOPICS[r["category"]],
                    user_turn(retriever, r["instruction"])) for i, r in enumerate(plain[:CHAT_BITEXT])]
    complaints = [r for r in rows if r["intent"] == "complaint"]
    humans = [r for r in rows if r["intent"] == "contact_human_agent"]
    rng.shuffle(complaints)
    rng.shuffle(humans)
    escalations = []
    for i, (complaint, human) in enumerate(zip(complaints, humans, strict=False)):
        first = user_turn(retriever, complaint["instruction"])
        messages = [*first, {"role": "assistant", "content": complaint["response"]},
                    *user_turn(retriever, human["instruction"])]
        escalations.append({
            "id": f"bitext-esc-{i:03d}", "kind": "escalation", "source": "bitext", "channel": "chat",
            "topic": "complaint", "messages": messages,
            "requests": [{"upto": len(first), "escalation": True, "priority": "high"},
                         {"upto": len(messages), "escalation": True, "priority": "high"}],
        })
    return chats, escalations


def natcs(retriever: Retriever, rng: random.Random) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    calls: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with (ROOT / "data/dstc11-natcs-intents/insurance_dev_intent_turns.jsonl").open(encoding="utf-8") as f:
        for line in f:
            turn = json.loads(line)
            calls[turn["dialogue_id"]].append(turn)
    for turns in calls.values():
        turns.sort(key=lambda t: int(t["turn_id"].rsplit("_", 1)[1]))
    singles = sorted(d for d, t in calls.items() if len({i for x in t for i in x["intent"]}) == 1)
    multis = sorted(d for d, t in calls.items() if len({i for x in t for i in x["intent"]}) > 1)
    rng.shuffle(singles)
    chats = [single(f"natcs-{d}", "chat", "natcs", _natcs_topic(calls[d][0]["intent"]),
                    user_turn(retriever, calls[d][0]["utterance"])) for d in singles[:CHAT_NATCS]]
    emails = []
    for d in multis:
        body = "Hello,\n\n" + "\n\n".join(t["utterance"] for t in calls[d]) + "\n\nThank you."
        topic = _natcs_topic([i for t in calls[d] for i in t["intent"]])
        emails.append(single(f"natcs-email-{d}", "email", "natcs", topic, user_turn(retriever, body),
                             channel="email"))
    return chats, emails


def _natcs_topic(intents: list[str]) -> str:
    return "billing" if any(i in NATCS_BILLING for i in intents) else "insurance"


def abcd(retriever: Retriever) -> list[dict[str, Any]]:
    conversations = []
    for name in ("abcd_sample.json", "abcd_dialogstudio_extra.json"):
        for convo in json.loads((ROOT / "data/abcd" / name).read_text(encoding="utf-8")):
            conversations.append(_abcd_conversation(retriever, convo))
    return conversations


def _abcd_conversation(retriever: Retriever, convo: dict[str, Any]) -> dict[str, Any]:
    """Consecutive lines of one speaker form one message; each customer message is one request."""
    scenario = convo["scenario"]
    turns: list[tuple[str, str]] = []
    for speaker, text in convo["original"]:
        if turns and turns[-1][0] == speaker and speaker != "action":
            turns[-1] = (speaker, turns[-1][1] + "\n" + text)
        else:
            turns.append((speaker, text))
    messages: list[dict[str, Any]] = []
    requests: list[dict[str, Any]] = []
    escalated = False
    for speaker, text in turns:
        if speaker == "customer":
            messages.extend(user_turn(retriever, text))
            requests.append({"upto": len(messages), "escalation": escalated,
                             "priority": "high" if escalated else "normal"})
        elif speaker == "agent":
            messages.append({"role": "assistant", "content": text})
            escalated = escalated or bool(re.search(r"\bescalat", text, re.IGNORECASE))
        else:
            messages.append({"role": "system", "content": _action_result(text, scenario)})
            escalated = escalated or "manager has been notified" in text.lower()
    flow = scenario["flow"]
    return {"id": f"abcd-{convo['convo_id']}", "kind": "long", "source": "abcd", "channel": "chat",
            "topic": flow, "tier": scenario["personal"].get("member_level", ""), "messages": messages,
            "requests": requests}


def _action_result(text: str, scenario: dict[str, Any]) -> str:
    """An agent action's result as the support platform returns it: the records it looked up."""
    lowered = text.lower()
    if "account has been pulled up" in lowered:
        return f"Tool result: {text}\nCustomer record: {json.dumps(scenario['personal'], sort_keys=True)}"
    if any(k in lowered for k in ("purchase validation", "shipping status", "order has been updated")):
        return f"Tool result: {text}\nOrder record: {json.dumps(scenario['order'], sort_keys=True)}"
    return f"Tool result: {text}"


def main() -> None:
    rng = random.Random(SEED)
    retriever = Retriever()
    chats_b, escalations = bitext(retriever, rng)
    chats_n, emails = natcs(retriever, rng)
    conversations = [*abcd(retriever), *escalations, *emails, *chats_b, *chats_n]
    trace = {
        "format": "laneway-traces/1",
        "built_by": "scripts/build_traces.py",
        "seed": SEED,
        "system": SYSTEM,
        "mix": MIX,
        "passages": dict(sorted(retriever.used.items())),
        "conversations": conversations,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(trace, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    kinds: dict[str, int] = defaultdict(int)
    for c in conversations:
        kinds[c["kind"]] += 1
    print(f"wrote {OUT.relative_to(ROOT)}: {len(conversations)} conversations {dict(kinds)}, "
          f"{len(retriever.used)} passages, {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
