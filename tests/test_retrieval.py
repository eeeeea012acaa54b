"""Knowledge bases: ingestion, search, persistence, prompt rendering and the `knowledge` command."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from laneway.errors import ConfigError
from laneway.retrieval import KnowledgeBase, Passage, add_commands, render_passages

ROOT = Path(__file__).resolve().parents[1]
GUIDELINES = ROOT / "data" / "abcd" / "guidelines.json"
BILLING = ROOT / "knowledge" / "billing" / "policies.md"


@pytest.fixture(scope="module")
def guidelines() -> KnowledgeBase:
    return KnowledgeBase.build("abcd", [GUIDELINES])


@pytest.fixture(scope="module")
def billing() -> KnowledgeBase:
    return KnowledgeBase.build("billing", [BILLING])


def ids(passages: list[Passage]) -> list[str]:
    return [passage.id for passage in passages]


def test_abcd_guidelines_become_one_passage_per_subflow(guidelines: KnowledgeBase) -> None:
    flows = json.loads(GUIDELINES.read_text())
    assert len(guidelines) == sum(len(flow["subflows"]) for flow in flows.values())
    refund_status = next(p for p in guidelines.passages if p.id == "product-defect/refund-status")
    assert refund_status.title == "Product Defect > Refund Status"
    assert "status and payment method of their refund" in refund_status.text


def test_real_conversation_opening_finds_refund_status_policy(billing: KnowledgeBase) -> None:
    conversation = next(c for c in json.loads((ROOT / "data/abcd/abcd_sample.json").read_text())
                        if c["scenario"]["subflow"] == "refund_status")
    opening = next(t["text"] for t in conversation["delexed"] if t["speaker"] == "customer")
    assert "refund-status" in " ".join(ids(billing.search(opening, top_k=3)))


def test_customer_phrasings_find_their_guideline(guidelines: KnowledgeBase) -> None:
    # The first is a request from the Bitext support corpus (intent check_refund_policy); the second
    # is how a customer in ABCD's manage_dispute_bill scenario states the problem.
    assert ids(guidelines.search("I need assistance checking your money back policy", top_k=1)) == [
        "storewide-query/policy-faq"
    ]
    assert ids(guidelines.search("my subscription bill is wrong, i was billed twice", top_k=1)) == [
        "subscription-inquiry/manage-dispute-bill"
    ]


def test_guideline_example_questions_rank_their_faq_in_top_three(guidelines: KnowledgeBase) -> None:
    flow = json.loads(GUIDELINES.read_text())["Single-Item Query"]["subflows"]["Boots FAQ"]
    questions = flow["instructions"][1].split(", ")
    found = [q for q in questions if "single-item-query/boots-faq" in ids(guidelines.search(q, top_k=3))]
    assert len(found) >= len(questions) - 1


def test_results_are_best_first_and_top_k_is_honoured(guidelines: KnowledgeBase) -> None:
    for top_k in (1, 3, 7):
        found = guidelines.search("refund my order", top_k=top_k)
        assert len(found) == top_k
        assert [p.score for p in found] == sorted((p.score for p in found), reverse=True)


def test_min_score_drops_weaker_passages(guidelines: KnowledgeBase) -> None:
    everything = guidelines.search("refund my order", top_k=55)
    threshold = everything[len(everything) // 2].score
    kept = guidelines.search("refund my order", top_k=55, min_score=threshold)
    assert kept == [p for p in everything if p.score >= threshold]
    assert 0 < len(kept) < len(everything)


def test_query_without_known_terms_returns_nothing(guidelines: KnowledgeBase) -> None:
    assert guidelines.search("zyzzyva quokka", top_k=3) == []
    assert guidelines.search("", top_k=3) == []


def test_save_and_load_round_trip(guidelines: KnowledgeBase, tmp_path: Path) -> None:
    guidelines.save(tmp_path / "index")
    loaded = KnowledgeBase.load(tmp_path / "index")
    assert loaded.name == "abcd"
    assert loaded.passages == guidelines.passages
    for query in ("where is my refund", "promo code is invalid", "the website is so slow"):
        assert loaded.search(query, top_k=5) == guidelines.search(query, top_k=5)


def test_a_line_separator_inside_a_text_is_text(tmp_path: Path) -> None:
    """U+2028 and U+0085 may sit in a JSON string or a CSV cell: they end neither a row nor a saved passage."""
    source = tmp_path / "policies.csv"
    source.write_text("title,text\nRefunds,Refunds take 5 days.\u2028Card refunds take 10.\n"
                      "Fees,A late fee\u0085is 5 USD.\n", encoding="utf-8")
    built = KnowledgeBase.build("policies", [source])
    assert [p.text for p in built.passages] == ["Refunds take 5 days.\u2028Card refunds take 10.",
                                                "A late fee\u0085is 5 USD."]
    built.save(tmp_path / "index")
    assert KnowledgeBase.load(tmp_path / "index").passages == built.passages


def test_markdown_is_split_at_headings_and_long_sections_at_paragraphs(tmp_path: Path) -> None:
    source = tmp_path / "faq.md"
    long_section = "\n\n".join(f"Paragraph {n} about late fees and payment plans." for n in range(6))
    source.write_text(f"# FAQ\n\n## Late fees\n\n{long_section}\n\n## Gift cards\n\nGift cards never expire.\n")
    knowledge_base = KnowledgeBase.build("faq", [source], chunk_tokens=20)
    titles = [p.title for p in knowledge_base.passages]
    assert titles.count("FAQ > Late fees") == 3
    assert titles[-1] == "FAQ > Gift cards"
    assert all(len(p.text.split()) <= 20 for p in knowledge_base.passages)
    assert len(set(ids(list(knowledge_base.passages)))) == len(knowledge_base)
    assert ids(knowledge_base.search("do gift cards expire", top_k=1)) == ["faq/gift-cards"]


def test_json_and_csv_records_are_ingested(tmp_path: Path) -> None:
    records = tmp_path / "records.json"
    records.write_text(json.dumps([{"id": "fees", "title": "Fees", "text": "A restocking fee of 10% applies."},
                                   {"text": "Refunds take five business days."}]))
    table = tmp_path / "table.csv"
    table.write_text('text,title\n"Wire transfers, checks and cards are accepted.",Payment methods\n')
    knowledge_base = KnowledgeBase.build("mixed", [records, table])
    assert [(p.id, p.source, p.title) for p in knowledge_base.passages] == [
        ("fees", "records.json", "Fees"),
        ("records/2", "records.json", ""),  # untitled: searched and shown by its text and source alone
        ("table/1", "table.csv", "Payment methods"),
    ]
    assert ids(knowledge_base.search("how long do refunds take", top_k=1)) == ["records/2"]
    assert ids(knowledge_base.search("can I pay by wire transfer", top_k=1)) == ["table/1"]
    assert knowledge_base.search("records", top_k=3) == []  # the file's name is no title to match
    block = render_passages(knowledge_base.search("how long do refunds take", top_k=1))
    assert "[1] (source: records.json)\nRefunds take five business days." in block


def test_a_byte_order_mark_is_skipped_in_every_kind_of_source(tmp_path: Path) -> None:
    sources = {"table.csv": "text,title\nLate fees are 15 USD.,Fees\n",
               "records.json": '[{"text": "Gift cards never expire."}]',
               "faq.md": "# Shipping\n\nOrders ship in two days.\n"}
    for name, text in sources.items():
        (tmp_path / name).write_text(text, encoding="utf-8-sig")  # as a spreadsheet's "CSV UTF-8" export
    knowledge_base = KnowledgeBase.build("bom", [tmp_path / name for name in sources])
    assert [(p.title, p.text) for p in knowledge_base.passages] == [
        ("Fees", "Late fees are 15 USD."), ("", "Gift cards never expire."), ("Shipping", "Orders ship in two days.")]


def test_markdown_headings_that_skip_a_level_are_siblings(tmp_path: Path) -> None:
    source = tmp_path / "billing.md"
    source.write_text("# Billing\n\n### Refunds\n\nFive days.\n\n### Late fees\n\n15 USD.\n\n"
                      "## Cards\n\nVisa.\n\n#### Expired\n\nUpdate it.\n")
    titles = [p.title for p in KnowledgeBase.build("billing", [source]).passages]
    assert titles == ["Billing > Refunds", "Billing > Late fees", "Billing > Cards", "Billing > Cards > Expired"]


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("missing.md", None, "does not exist"),
        ("empty.md", "# Title only\n", "has no text to index"),
        ("notes.txt", "plain text", "not a supported source"),
        ("broken.json", "{not json", "not valid JSON"),
        ("shape.json", '{"text": "a lone object"}', "must be a JSON list of objects"),
        ("columns.csv", "body\nsome text\n", "needs a `text` column"),
        ("binary.md", b"\xff\xfe\x00bad", "cannot be read as UTF-8"),
        # A malformed row stops the build: indexed, it would change what the policy says.
        ("comma.csv", "id,title,text\nrefund,Refund time,Refunds take 5 days, not 10\n",
         "line 2: more fields than the header's 3; quote a text that holds a comma"),
        ("quote.csv", 'id,title,text\nfee,Fees,"Late fees are 15 USD\ngift,Gift cards,Never expire\n',
         "line 2: not valid CSV (unexpected end of data); check the quoting of the row that starts there"),
        ("late-quote.csv", 'id,title,text\na,A,One\nb,B,Two\nfee,Fees,"Late fees\ngift,Gift cards,Never\n',
         "line 4: not valid CSV (unexpected end of data); check the quoting of the row that starts there"),
        ("untexted.json", '[{"text": "One."}, {"title": "Fees"}]', "record 2: has no `text`"),
        ("number.json", '[{"text": 5}]', "record 1: `text` must be a string, got int"),
    ],
)
def test_bad_sources_name_the_file(tmp_path: Path, name: str, content: str | bytes | None, problem: str) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        KnowledgeBase.build("bad", [path])
    assert f"`{path}`" in caught.value.message
    assert problem in caught.value.message


def test_loading_a_directory_that_is_not_a_knowledge_base_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no `manifest\.json`.*laneway knowledge build"):
        KnowledgeBase.load(tmp_path)


def test_rendered_block_numbers_passages_and_asks_for_grounding(billing: KnowledgeBase) -> None:
    passages = billing.search("my subscription bill is wrong, i was billed twice", top_k=2)
    block = render_passages(passages)
    assert block.index("[1] " + passages[0].title) < block.index("[2] " + passages[1].title)
    assert f"(source: {passages[0].source})" in block
    assert "only the policy passages below" in block and "clarifying question" in block
    assert passages[0].text.strip() in block
    assert render_passages(passages, style="user").startswith("Reference material")


def test_rendered_block_without_passages_forbids_guessing() -> None:
    block = render_passages([])
    assert "[1]" not in block and "clarifying question" in block
    with pytest.raises(ConfigError, match="unknown style `fancy`"):
        render_passages([], style="fancy")


def cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="laneway")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_builds_then_searches(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "billing"
    build = cli(["knowledge", "build", "billing", str(BILLING), "--out", str(out)])
    assert build.func(build) == 0
    assert "built `billing`: 25 passages" in capsys.readouterr().out

    search = cli(["knowledge", "search", str(out), "my subscription bill is wrong, i was billed twice",
                  "--top-k", "2", "--json"])
    assert search.func(search) == 0
    found = json.loads(capsys.readouterr().out)
    assert len(found) == 2
    assert found[0]["id"] == "policies/subscription-inquiry-manage-dispute-bill"
    assert found[0]["score"] >= found[1]["score"] > 0


def test_cli_reports_bad_sources_with_exit_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = cli(["knowledge", "build", "billing", str(tmp_path / "nope.md"), "--out", str(tmp_path / "out")])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("laneway knowledge build: ") and "nope.md` does not exist" in err
    unnamed = cli(["knowledge", "build", "", str(BILLING), "--out", str(tmp_path / "out")])
    assert unnamed.func(unnamed) == 2
    assert capsys.readouterr().err == ("laneway knowledge build: 1 error(s) in knowledge base:\n"
                                       "  knowledge: a knowledge base needs a non-empty name\n")
    search = cli(["knowledge", "search", str(tmp_path / "absent"), "fee"])
    assert search.func(search) == 2
    assert capsys.readouterr().err.startswith("laneway knowledge search: ")


def test_committed_billing_policies_match_their_generator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("build_policies", ROOT / "knowledge/billing/build_policies.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    monkeypatch.setattr(generator, "OUT", tmp_path / "policies.md")
    generator.main()
    assert (tmp_path / "policies.md").read_text() == BILLING.read_text()


@pytest.mark.parametrize(("argv", "words"), [
    (["knowledge", "search", "kb", "fee", "--top-k", "0"], "argument --top-k: must be at least 1, got 0"),
    (["knowledge", "search", "kb", "fee", "--min-score", "-1"], "argument --min-score: must be at least 0"),
    (["knowledge", "search", "kb", "fee", "--min-score", "high"], "argument --min-score: expected a number"),
    (["knowledge", "search", "kb", "fee", "--min-score", "nan"], "argument --min-score: expected a finite number"),
    (["knowledge", "build", "b", "x.md", "--out", "o", "--chunk-tokens", "3"],
     "argument --chunk-tokens: must be at least 16, got 3"),
])
def test_cli_flags_out_of_range_are_refused_as_flags(argv: list[str], words: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli(argv)
    err = capsys.readouterr().err
    assert words in err and "routing config" not in err


def test_cli_build_into_a_file_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    taken = tmp_path / "taken.md"
    taken.write_text("not a directory")
    args = cli(["knowledge", "build", "billing", str(BILLING), "--out", str(taken)])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert f"cannot write the index to `{taken}`" in err and err.count("\n") == 1


def test_words_in_any_script_are_terms_whole_and_a_base_built_before_reads_as_it_was_built(tmp_path: Path) -> None:
    """The analyzer read ASCII letters only: "Zürich" was the terms `z` and `rich`, so that "rich" found it
    before "Rich text"."""
    records = tmp_path / "records.json"
    records.write_text(json.dumps([
        {"id": "zurich", "title": "Zürich office", "text": "Our Zürich office opens at nine."},
        {"id": "rich", "title": "Rich text emails", "text": "Emails may hold rich text and pictures."},
        {"id": "remboursement", "title": "Remboursement", "text": "Le remboursement prend cinq jours ouvrés."},
    ], ensure_ascii=False), encoding="utf-8")
    knowledge_base = KnowledgeBase.build("offices", [records])
    assert ids(knowledge_base.search("rich", top_k=3)) == ["rich"]
    assert ids(knowledge_base.search("Zürich hours", top_k=3)) == ["zurich"]
    assert ids(knowledge_base.search("jours ouvrés", top_k=3)) == ["remboursement"]

    knowledge_base.save(tmp_path / "saved")
    manifest = tmp_path / "saved" / "manifest.json"
    made = json.loads(manifest.read_text())
    assert made["analyzer"] == "en-lucene-stop-snowball-v2"
    # A base saved by the release before reads its queries as it was built (its index holds `z` and `rich`).
    manifest.write_text(json.dumps({**made, "analyzer": "en-lucene-stop-snowball-v1"}))
    assert KnowledgeBase.load(tmp_path / "saved")._analyze("Zürich") == ["z", "rich"]
    manifest.write_text(json.dumps({**made, "analyzer": "another-v9"}))
    with pytest.raises(ConfigError, match="was built with analyzer `another-v9`, which this release does not have"):
        KnowledgeBase.load(tmp_path / "saved")


def test_underlined_headings_and_front_matter_are_read_as_markdown_has_them(tmp_path: Path) -> None:
    source = tmp_path / "policies.md"
    source.write_text("---\ntitle: Policies\nowner: billing\n---\n"
                      "Refunds\n=======\n\nRefunds take five business days.\n\n"
                      "Fees\n----\n\nLate fees are 15 USD.\n\n---\n\n- an item\n---\n\nA rule, then a list.\n")
    passages = KnowledgeBase.build("policies", [source]).passages
    assert [(p.id, p.title, p.text) for p in passages] == [
        ("policies/refunds", "Refunds", "Refunds take five business days."),
        ("policies/fees", "Refunds > Fees", "Late fees are 15 USD.\n\n---\n\n- an item\n---\n\nA rule, then a list."),
    ]


def test_a_long_csv_cell_is_cut_into_passages_and_ids_stay_unique(tmp_path: Path) -> None:
    table = tmp_path / "long.csv"
    long_text = "\n\n".join(f"Paragraph {i}: " + "refund policy words " * 40 for i in range(200))
    assert len(long_text) > 131_072
    table.write_text("text,title\n" + '"' + long_text + '",Refunds\n')
    assert len(KnowledgeBase.build("long", [table]).passages) > 10
    records = tmp_path / "records.json"
    records.write_text(json.dumps([{"id": "a", "text": "one"}, {"id": "a", "text": "two"},
                                   {"id": "a~2", "text": "three"}]))
    assert [p.id for p in KnowledgeBase.build("ids", [records]).passages] == ["a", "a~3", "a~2"]


@pytest.mark.parametrize("style", ["system", "user"])
def test_the_knowledge_block_comes_after_the_system_messages_even_with_no_user_message(
        billing: KnowledgeBase, style: str) -> None:
    """With only system messages, the block went first, before the client's system prompt."""
    from laneway.config import Retrieval
    from laneway.grounding import ground

    messages = [{"role": "system", "content": "You answer billing questions."},
                {"role": "developer", "content": "Be brief."}]
    grounded = ground(billing, Retrieval(knowledge="billing", style=style), messages, "").messages
    assert grounded[:2] == messages and len(grounded) == 3


def test_text_without_spaces_and_inline_images_do_not_make_passages_past_chunk_tokens(tmp_path: Path) -> None:
    """A run without spaces counted as one word: a Japanese section of 34,500 characters was one passage, and an
    image inlined as a `data:` URI one of 400,000 characters; each hit was refused as too long for the model."""
    image = "iVBORw0KGgo" + "AAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJ" * 12_000
    sentence = "ご注文の返金は、カードへの請求が確定してから五営業日以内に行われます。"
    source = tmp_path / "faq.md"
    source.write_text(f"# Returns\n\nPrint the return label from your orders page.\n\n![label](data:image/png;base64,"
                      f"{image})\n\n# 返金\n\n{sentence * 1000}\n", encoding="utf-8")
    passages = KnowledgeBase.build("faq", [source], chunk_tokens=400).passages
    assert all("base64" not in p.text and "AAAANSUh" not in p.text for p in passages)
    returns = [p for p in passages if p.title == "Returns"]
    assert len(returns) == 1 and "return label" in returns[0].text and "![label]" in returns[0].text
    japanese = [p for p in passages if p.title == "返金"]
    assert len(japanese) > 10 and max(len(p.text) for p in japanese) <= 800
    assert "".join(p.text for p in japanese) == sentence * 1000  # cut between characters, nothing lost or added


def test_a_link_shorter_than_a_passage_is_never_cut_across_two(tmp_path: Path) -> None:
    """Every run past 32 characters was cut in pieces that a passage could end between: a help-centre link came
    in two halves, neither a working link, for the model to quote to a customer."""
    link = "https://help.example.com/billing/refunds/how-to-request-a-refund-for-a-duplicate-charge"
    source = tmp_path / "links.md"
    source.write_text("# Refunds\n\n" + "\n\n".join(f"Step {i}: see " + "the refund policy " * 5 + link
                                                 for i in range(12)) + "\n")
    passages = KnowledgeBase.build("links", [source], chunk_tokens=60).passages
    assert len(passages) > 3
    assert sum(p.text.count(link) for p in passages) == 12  # each link whole, in one passage
    assert all(p.text.count("https://") == p.text.count(link) for p in passages)
