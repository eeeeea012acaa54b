"""Retrieval quality and speed of Laneway's knowledge bases, on ABCD's agent guidelines.

Quality: recall@1/3/5 of the right guideline (ABCD subflow) for labelled customer messages.
Speed: single-query p50/p99 search latency, build time and load time on a knowledge base of
thousands of passages (the guidelines plus Bitext's support responses).

    PYTHONPATH=src .venv/bin/python bench/bench_retrieval.py
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from laneway.retrieval import KnowledgeBase

ROOT = Path(__file__).resolve().parents[1]
ABCD = ROOT / "data" / "abcd"
BITEXT = ROOT / "data" / "bitext-customer-support" / "bitext_train.csv"
CLINC = ROOT / "data" / "clinc150" / "data_full_trainval.json"

# Bitext intents whose requests ask for exactly one ABCD subflow; the rest have no clear match.
BITEXT_TO_ABCD = {
    "recover_password": "recover_password",
    "track_refund": "refund_status",
    "get_refund": "refund_initiate",
    "check_refund_policy": "policy",
}
KS = (1, 3, 5)


@dataclass(frozen=True)
class Query:
    text: str
    subflow: str
    origin: str


def subflow_labels() -> dict[str, str]:
    """Guideline passage id (`flow-slug/subflow-slug`) -> ABCD subflow label from ontology.json.

    The guidelines list each flow's subflows in the ontology's order; the counts are checked.
    """
    guidelines = json.loads((ABCD / "guidelines.json").read_text())
    ontology = json.loads((ABCD / "ontology.json").read_text())["intents"]["subflows"]
    labels: dict[str, str] = {}
    for flow_name, flow in guidelines.items():
        flow_id = "_".join(flow_name.lower().replace("-", " ").split())
        names, ids = list(flow["subflows"]), ontology[flow_id]
        assert len(names) == len(ids), flow_name
        for name, label in zip(names, ids, strict=True):
            labels[f"{slug(flow_name)}/{slug(name)}"] = label
    return labels


def slug(text: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in text.lower()).split())


def conversation_queries() -> list[Query]:
    """The customer's first substantive message of each ABCD sample conversation.

    A message is the run of consecutive customer turns; it is substantive when it has at least
    four words (so "hey ho!" is skipped). The label is the first turn's intent target.
    """
    queries = []
    for name in ("abcd_sample.json", "abcd_dialogstudio_extra.json"):
        for conversation in json.loads((ABCD / name).read_text()):
            message, label = first_substantive(conversation["delexed"])
            queries.append(Query(message, label, "abcd-conversation"))
    return queries


def first_substantive(turns: Sequence[dict[str, Any]]) -> tuple[str, str]:
    run: list[str] = []
    for turn in [*turns, {"speaker": "end"}]:
        if turn["speaker"] == "customer":
            run.append(str(turn["text"]))
            continue
        if len(" ".join(run).split()) >= 4:
            return " ".join(run), str(turns[0]["targets"][0])
        run = []
    raise ValueError("conversation without a substantive customer message")


def guideline_phrasing_queries(labels: dict[str, str]) -> list[Query]:
    """The example customer questions the FAQ guidelines list ("how to wash the shirt, ...").

    These sentences appear verbatim in their own passage, so this set is easier than real chats.
    """
    queries = []
    for flow_name, flow in json.loads((ABCD / "guidelines.json").read_text()).items():
        for name, subflow in flow["subflows"].items():
            opening, examples = subflow["instructions"]
            if opening.startswith("The main effort is in figuring out which question"):
                label = labels[f"{slug(flow_name)}/{slug(name)}"]
                queries += [Query(q.strip(), label, "guideline-phrasing") for q in examples.split(", ")]
    return queries


def bitext_queries() -> list[Query]:
    with BITEXT.open(newline="", encoding="utf-8") as rows:
        return [
            Query(row["instruction"], BITEXT_TO_ABCD[row["intent"]], "bitext-mapped")
            for row in csv.DictReader(rows)
            if row["intent"] in BITEXT_TO_ABCD
        ]


def recall(kb: KnowledgeBase, labels: dict[str, str], queries: Sequence[Query]) -> dict[int, float]:
    hits = dict.fromkeys(KS, 0)
    for query in queries:
        found = [labels.get(p.id.split("#")[0]) for p in kb.search(query.text, top_k=max(KS))]
        for k in KS:
            hits[k] += query.subflow in found[:k]
    return {k: hits[k] / len(queries) for k in KS}


def bitext_response_csv(directory: Path) -> Path:
    """Bitext's 4,514 agent responses as a `text,title,id` CSV source."""
    path = directory / "bitext_responses.csv"
    with BITEXT.open(newline="", encoding="utf-8") as rows, path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["text", "title", "id"])
        for number, row in enumerate(csv.DictReader(rows), start=1):
            writer.writerow([row["response"], row["intent"].replace("_", " "), f"bitext/{number}"])
    return path


def timed_ms(action: Callable[[], object], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        started = time.perf_counter_ns()
        action()
        times.append((time.perf_counter_ns() - started) / 1e6)
    return times


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def speed(queries: Sequence[Query], passes: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as scratch:
        sources = [ABCD / "guidelines.json", bitext_response_csv(Path(scratch))]
        builds = timed_ms(lambda: KnowledgeBase.build("large", sources), 3)
        kb = KnowledgeBase.build("large", sources)
        kb.save(Path(scratch) / "index")
        loads = timed_ms(lambda: KnowledgeBase.load(Path(scratch) / "index"), 5)
    texts = [q.text for q in queries]
    for text in texts:
        kb.search(text)
    latencies = []
    for _ in range(passes):
        for text in texts:
            started = time.perf_counter_ns()
            kb.search(text)
            latencies.append((time.perf_counter_ns() - started) / 1e6)
    return {
        "passages": len(kb), "searches": len(latencies),
        "p50_ms": percentile(latencies, 0.50), "p99_ms": percentile(latencies, 0.99), "max_ms": max(latencies),
        "build_ms": statistics.median(builds), "load_ms": statistics.median(loads),
    }


def off_topic_best_scores(kb: KnowledgeBase) -> list[float]:
    """Best guideline score of each CLINC150 out-of-scope validation query (0 when nothing matches)."""
    queries = [text for text, _ in json.loads(CLINC.read_text())["oos_val"]]
    return [next((p.score for p in kb.search(text, top_k=1)), 0.0) for text in queries]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--passes", type=int, default=5, help="times each query is searched for latency")
    args = parser.parse_args()

    labels = subflow_labels()
    kb = KnowledgeBase.build("abcd-guidelines", [ABCD / "guidelines.json"])
    sets = {
        "abcd-conversation": conversation_queries(),
        "guideline-phrasing": guideline_phrasing_queries(labels),
        "bitext-mapped": bitext_queries(),
    }
    sets["all"] = [q for group in sets.values() for q in group]
    print(f"knowledge base `{kb.name}`: {len(kb)} passages\n")
    print("| query set | queries | recall@1 | recall@3 | recall@5 |\n|---|---:|---:|---:|---:|")
    for name, queries in sets.items():
        r = recall(kb, labels, queries)
        print(f"| {name} | {len(queries)} | {r[1]:.3f} | {r[3]:.3f} | {r[5]:.3f} |")

    correct = [p.score for q in sets["all"] for p in kb.search(q.text, top_k=1) if labels[p.id] == q.subflow]
    off_topic = off_topic_best_scores(kb)
    print("\n| best-passage score | p10 | p50 | p90 | share >= 1.5 |\n|---|---:|---:|---:|---:|")
    for name, scores in (("correct top-1, labelled queries", correct), ("CLINC150 out-of-scope (100)", off_topic)):
        share = sum(s >= 1.5 for s in scores) / len(scores)
        row = " | ".join(f"{percentile(scores, f):.2f}" for f in (0.1, 0.5, 0.9))
        print(f"| {name} | {row} | {share:.2f} |")

    s = speed(sets["all"], args.passes)
    print(f"\nlarge knowledge base: {s['passages']} passages (guidelines + Bitext responses)")
    print(f"search top_k=3, {s['searches']} single-query searches: p50 {s['p50_ms']:.3f} ms, "
          f"p99 {s['p99_ms']:.3f} ms, max {s['max_ms']:.3f} ms")
    print(f"build (read + index) median of 3: {s['build_ms']:.0f} ms; load median of 5: {s['load_ms']:.1f} ms")


if __name__ == "__main__":
    main()
