"""Intent models with the sentence-encoder stage: the ONNX graph against a numpy BERT, int8
quantization, the two-stage decision, persistence, and (when its package is installed) MiniLM."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime
import pytest
import tokenizers
from scipy.special import erf

from _intents_cli import run_intents_cli
from laneway.intents import UNKNOWN, IntentModel, SentenceEncoder, TrainingOptions, evaluate, train
from laneway.intents._encoder import ContextEncoder, StaticEncoder
from laneway.intents._minilm import (
    BertShape,
    StaticDistiller,
    bert_graph,
    build_minilm_encoder,
    read_safetensors,
)
from laneway.intents._training import stratified_split

DATA = Path(__file__).resolve().parents[1] / "data"
INTENTS = ("cancel_order", "track_order", "get_refund", "recover_password", "payment_issue", "delivery_period")
SHAPE = BertShape(hidden=32, heads=4, layers=2)
SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")

Rows = tuple[list[str], list[str]]
Arrays = dict[str, npt.NDArray[np.float32]]


def _support_rows(per_intent: int = 50) -> tuple[Rows, Rows]:
    taken: dict[str, int] = {}
    texts: list[str] = []
    labels: list[str] = []
    with (DATA / "bitext-customer-support" / "bitext_train.csv").open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["intent"] in INTENTS and taken.get(row["intent"], 0) < per_intent:
                taken[row["intent"]] = taken.get(row["intent"], 0) + 1
                texts.append(row["instruction"])
                labels.append(row["intent"])
    keep, held = stratified_split(labels, 0.3, seed=2)
    return ([texts[i] for i in keep], [labels[i] for i in keep]), ([texts[i] for i in held], [labels[i] for i in held])


@pytest.fixture(scope="module")
def support() -> tuple[Rows, Rows]:
    return _support_rows()


def _random_bert(vocab_size: int, seed: int = 0) -> Arrays:
    """Weights named like a Hugging Face `BertModel` checkpoint, small enough to build in a second."""
    rng = np.random.default_rng(seed)
    h, inner = SHAPE.hidden, 4 * SHAPE.hidden

    def rand(*dims: int, scale: float = 0.3) -> npt.NDArray[np.float32]:
        return (scale * rng.standard_normal(dims)).astype(np.float32)

    weights: Arrays = {
        "embeddings.word_embeddings.weight": rand(vocab_size, h),
        "embeddings.position_embeddings.weight": rand(64, h),
        "embeddings.token_type_embeddings.weight": rand(2, h),
        "embeddings.LayerNorm.weight": 1 + rand(h, scale=0.1),
        "embeddings.LayerNorm.bias": rand(h, scale=0.1),
    }
    for i in range(SHAPE.layers):
        p = f"encoder.layer.{i}."
        for name, dims in (("attention.self.query", (h, h)), ("attention.self.key", (h, h)),
                           ("attention.self.value", (h, h)), ("attention.output.dense", (h, h)),
                           ("intermediate.dense", (inner, h)), ("output.dense", (h, inner))):
            weights[f"{p}{name}.weight"] = rand(*dims)
            weights[f"{p}{name}.bias"] = rand(dims[0], scale=0.1)
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            weights[f"{p}{norm}.weight"] = 1 + rand(h, scale=0.1)
            weights[f"{p}{norm}.bias"] = rand(h, scale=0.1)
    return weights


def _reference_embedding(w: Arrays, ids: Sequence[int]) -> npt.NDArray[np.float64]:
    """The same BERT forward pass written directly in numpy (float64): the graph's oracle."""

    def norm(x: Any, name: str) -> Any:
        mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + SHAPE.layer_norm_eps) * w[name + ".weight"] + w[name + ".bias"]

    def dense(x: Any, name: str) -> Any:
        return x @ w[name + ".weight"].T.astype(np.float64) + w[name + ".bias"]

    tokens, head = len(ids), SHAPE.hidden // SHAPE.heads
    x = (w["embeddings.word_embeddings.weight"][list(ids)].astype(np.float64)
         + w["embeddings.position_embeddings.weight"][:tokens] + w["embeddings.token_type_embeddings.weight"][0])
    x = norm(x, "embeddings.LayerNorm")
    for i in range(SHAPE.layers):
        p = f"encoder.layer.{i}."
        q, k, v = (dense(x, p + f"attention.self.{n}").reshape(tokens, SHAPE.heads, head).transpose(1, 0, 2)
                   for n in ("query", "key", "value"))
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(head)
        attention = np.exp(scores - scores.max(-1, keepdims=True))
        attention /= attention.sum(-1, keepdims=True)
        context = (attention @ v).transpose(1, 0, 2).reshape(tokens, SHAPE.hidden)
        x = norm(x + dense(context, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        inner = dense(x, p + "intermediate.dense")
        gelu = 0.5 * inner * (1 + erf(inner / math.sqrt(2)))
        x = norm(x + dense(gelu, p + "output.dense"), p + "output.LayerNorm")
    return x.mean(0)  # type: ignore[no-any-return]


def _write_safetensors(path: Path, tensors: Arrays) -> None:
    header: dict[str, Any] = {}
    blobs: list[bytes] = []
    offset = 0
    for name, value in tensors.items():
        blob = np.ascontiguousarray(value, np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(value.shape), "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    encoded = json.dumps(header).encode()
    path.write_bytes(len(encoded).to_bytes(8, "little") + encoded + b"".join(blobs))


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory, support: tuple[Rows, Rows]) -> Path:
    """A sentence-transformers-like folder: config, safetensors weights and a WordPiece tokenizer whose
    vocabulary is the training words."""
    (texts, _), _ = support
    split = tokenizers.pre_tokenizers.BertPreTokenizer()
    words = sorted({word for text in texts for word, _ in split.pre_tokenize_str(text.lower())})
    vocab = {token: i for i, token in enumerate([*SPECIAL, *words])}
    folder = tmp_path_factory.mktemp("tiny-bert")
    config = {"hidden_size": SHAPE.hidden, "num_attention_heads": SHAPE.heads, "num_hidden_layers": SHAPE.layers}
    (folder / "config.json").write_text(json.dumps(config))
    _write_safetensors(folder / "model.safetensors", _random_bert(len(vocab)))
    wordpiece = tokenizers.implementations.BertWordPieceTokenizer(vocab, lowercase=True)
    (folder / "tokenizer.json").write_text(wordpiece.to_str())
    return folder


@pytest.fixture(scope="module")
def tiny_encoder(tiny_bert: Path) -> SentenceEncoder:
    return build_minilm_encoder(tiny_bert)


def test_safetensors_round_trip(tmp_path: Path) -> None:
    tensors = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.float32)}
    _write_safetensors(tmp_path / "w.safetensors", tensors)
    read = read_safetensors(tmp_path / "w.safetensors")
    assert read.keys() == tensors.keys()
    assert all(np.array_equal(read[name], value) for name, value in tensors.items())


def test_graph_matches_a_numpy_bert_and_int8_stays_close(tiny_bert: Path, tiny_encoder: SentenceEncoder) -> None:
    weights = read_safetensors(tiny_bert / "model.safetensors")
    session = onnxruntime.InferenceSession(bert_graph(weights, SHAPE), providers=["CPUExecutionProvider"])
    for text in ("I want to cancel my order", "refund", "where is my package? it has not arrived yet"):
        ids = tiny_encoder.token_ids(text)
        assert ids[0] == SPECIAL.index("[CLS]") and ids[-1] == SPECIAL.index("[SEP]")
        fp32 = session.run(None, {"input_ids": ids})[0]
        expected = _reference_embedding(weights, ids.tolist())
        np.testing.assert_allclose(fp32, expected, rtol=1e-3, atol=1e-4)
        int8 = tiny_encoder.embed(text)
        assert int8.shape == (SHAPE.hidden,)
        assert float(np.linalg.norm(int8)) == pytest.approx(1.0, abs=1e-5)
        assert float(int8 @ expected / np.linalg.norm(expected)) > 0.97


def test_quantized_graph_is_smaller(tiny_bert: Path, tiny_encoder: SentenceEncoder) -> None:
    fp32 = bert_graph(read_safetensors(tiny_bert / "model.safetensors"), SHAPE)
    assert len(tiny_encoder.graph) < 0.5 * len(fp32)


@pytest.fixture(scope="module")
def staged(support: tuple[Rows, Rows], tiny_encoder: SentenceEncoder) -> IntentModel:
    (texts, labels), _ = support
    return train(texts, labels, TrainingOptions(defer_below=0.9), encoder=tiny_encoder)


def test_encoder_stage_decides_only_uncertain_messages(staged: IntentModel, support: tuple[Rows, Rows]) -> None:
    _, (texts, labels) = support
    stage = staged.encoder
    assert stage is not None and stage.defer_below == 0.9
    never = _with_defer(staged, 0.0)
    always = _with_defer(staged, 2.0)
    lexical = IntentModel(staged.classes, staged.features, staged.weights, staged.bias, staged.threshold)
    assert not any(map(never.defers, texts)) and all(map(always.defers, texts))
    deferred = [text for text in texts if staged.defers(text)]
    assert 0 < len(deferred) < len(texts)
    for text in texts:
        assert np.array_equal(never.probabilities(text), lexical.probabilities(text))
        expected = always if text in deferred else lexical
        assert np.array_equal(staged.probabilities(text), expected.probabilities(text))
    assert not np.allclose(always.probabilities(deferred[0]), lexical.probabilities(deferred[0]))
    assert evaluate(always, texts, labels)["accuracy"] >= 0.85
    assert evaluate(staged, texts, labels)["accuracy"] >= 0.85


def test_encoder_model_round_trips_with_its_graph(staged: IntentModel, support: tuple[Rows, Rows],
                                                  tmp_path: Path) -> None:
    _, (texts, _) = support
    path = tmp_path / "staged.npz"
    staged.save(path)
    loaded = IntentModel.load(path)
    assert loaded.encoder is not None and staged.encoder is not None
    assert loaded.encoder.defer_below == staged.encoder.defer_below
    assert loaded.encoder.encoder.graph == staged.encoder.encoder.graph
    always, reloaded = _with_defer(staged, 2.0), _with_defer(loaded, 2.0)
    for text in texts:
        assert np.array_equal(reloaded.probabilities(text), always.probabilities(text))
        assert loaded.classify(text) == staged.classify(text)
    with np.load(path) as archive:
        assert json.loads(archive["header"].tobytes())["format"] == "laneway-intents/2"


def test_lexical_models_keep_the_first_format(support: tuple[Rows, Rows], tmp_path: Path) -> None:
    (texts, labels), _ = support
    train(texts, labels).save(tmp_path / "lexical.npz")
    with np.load(tmp_path / "lexical.npz") as archive:
        assert json.loads(archive["header"].tobytes())["format"] == "laneway-intents/1"
        assert "encoder_graph" not in archive.files
    assert IntentModel.load(tmp_path / "lexical.npz").encoder is None


@pytest.fixture(scope="module")
def distiller(tiny_bert: Path) -> StaticDistiller:
    return StaticDistiller(tiny_bert)


def test_static_vectors_average_the_contextual_ones(distiller: StaticDistiller, tiny_encoder: SentenceEncoder) -> None:
    text = "please cancel my order"  # every token once: its static embedding is the transformer's
    static = distiller.distill([text])
    np.testing.assert_allclose(static.embed(text), tiny_encoder.embed(text), atol=2e-3)
    ids = tiny_encoder.token_ids(text)
    contextual = distiller.contextual.outputs(ids)
    np.testing.assert_allclose(static.table[ids[1]], contextual[1], rtol=1e-2, atol=1e-2)
    twice = distiller.distill([text, "cancel"])
    again = distiller.contextual.outputs(tiny_encoder.token_ids("cancel"))[1]
    np.testing.assert_allclose(twice.table[ids[2]], (contextual[2] + again) / 2, rtol=1e-2, atol=1e-2)
    unseen = tiny_encoder.token_ids("refund")[1]
    alone = distiller.contextual.outputs(tiny_encoder.token_ids("refund"))[1]
    np.testing.assert_allclose(static.table[unseen], alone, rtol=1e-2, atol=1e-2)


def test_static_encoder_model_decides_every_message_and_round_trips(
        distiller: StaticDistiller, support: tuple[Rows, Rows], tmp_path: Path) -> None:
    (texts, labels), (val_texts, val_labels) = support
    model = train(texts, labels, TrainingOptions(encoder="static"), encoder=distiller.distill(texts))
    assert_distilled_model_round_trips(model, StaticEncoder, val_texts, val_labels, tmp_path / "static.npz")
    with np.load(tmp_path / "static.npz") as archive:
        assert "encoder_table" in archive.files and "encoder_graph" not in archive.files


def assert_distilled_model_round_trips(model: IntentModel, kind: type, val_texts: list[str], val_labels: list[str],
                                       path: Path) -> None:
    """A model with a distilled encoder stage decides every message, is accurate, and answers the same
    once saved to `path` and loaded."""
    assert model.encoder is not None and isinstance(model.encoder.encoder, kind)
    assert model.encoder.defer_below > 1 and all(map(model.defers, val_texts))
    assert evaluate(model, val_texts, val_labels)["accuracy"] >= 0.85
    model.save(path)
    loaded = IntentModel.load(path)
    assert loaded.encoder is not None and isinstance(loaded.encoder.encoder, kind)
    for text in val_texts:
        assert np.array_equal(loaded.probabilities(text), model.probabilities(text))


def test_context_vectors_read_each_token_by_its_neighbours(distiller: StaticDistiller,
                                                            tiny_encoder: SentenceEncoder) -> None:
    alone = distiller.context_encoder(distiller.token_run(["please cancel my order"]), [0])
    # every pair seen once, in this very text: its embedding is the transformer's
    np.testing.assert_allclose(alone.embed("please cancel my order"), tiny_encoder.embed("please cancel my order"),
                               atol=2e-3)
    texts = ["cancel my order", "track my order"]
    encoder = distiller.context_encoder(distiller.token_run(texts), [0, 1])
    assert isinstance(encoder, ContextEncoder)
    # [CLS] cancel my order [SEP] and [CLS] track my order [SEP]: 10 pairs each way, 3 of them shared
    assert len(encoder.left_keys) == len(encoder.right_keys) == 7
    ids = tiny_encoder.token_ids("cancel my order")
    cancel = distiller.contextual.outputs(ids)
    base = 1 << 20
    at = int(np.searchsorted(encoder.left_keys, (ids[1] + 1) * base + ids[2]))  # "my" after "cancel"
    np.testing.assert_allclose(encoder.left[at], cancel[2], rtol=1e-2, atol=1e-2)
    # read by its neighbours, "cancel my order" keeps more of its own context than with static vectors
    static = distiller.distill(texts)
    truth = tiny_encoder.embed("cancel my order")
    assert float(encoder.embed("cancel my order") @ truth) > float(static.embed("cancel my order") @ truth)
    # a pair never seen is left out; a token with neither pair seen has its own vector
    cls, refund, sep = (int(i) for i in tiny_encoder.token_ids("refund"))
    expected = np.mean([encoder.left[np.searchsorted(encoder.left_keys, cls)],  # ([none], [CLS])
                        encoder.table[refund],
                        encoder.right[np.searchsorted(encoder.right_keys, sep * base)]], axis=0)  # ([SEP], [none])
    np.testing.assert_allclose(encoder.embed("refund"), expected / np.linalg.norm(expected), rtol=1e-5, atol=1e-6)
    # distilled from no text at all (a fold of a tiny data set): every token's vector alone
    nothing = distiller.context_encoder(distiller.token_run(texts), [])
    alone_mean = distiller.alone()[[cls, refund, sep]].mean(0)
    np.testing.assert_allclose(nothing.embed("refund"), alone_mean / np.linalg.norm(alone_mean), rtol=1e-2, atol=1e-3)


def test_context_encoder_is_fitted_on_embeddings_its_text_did_not_shape(
        distiller: StaticDistiller, support: tuple[Rows, Rows], tmp_path: Path) -> None:
    (texts, labels), (val_texts, val_labels) = support
    run = distiller.token_run(texts)
    rows = list(range(len(texts)))
    encoder, embeddings = distiller.cross_fitted(run, rows, seed=0)
    fold = np.random.default_rng(0).integers(0, 5, len(rows))
    first = int(np.flatnonzero(fold == 0)[0])
    without = distiller.context_encoder(run, [r for r in rows if fold[r] != 0])
    np.testing.assert_array_equal(embeddings[first], without.embed_ids(run.ids[first]))
    assert not np.allclose(embeddings[first], encoder.embed_ids(run.ids[first]))  # the full one saw the text
    model = train(texts, labels, TrainingOptions(encoder="context"), distiller=distiller)
    assert_distilled_model_round_trips(model, ContextEncoder, val_texts, val_labels, tmp_path / "context.npz")


def _with_defer(model: IntentModel, defer_below: float) -> IntentModel:
    assert model.encoder is not None
    return dataclasses.replace(model, encoder=dataclasses.replace(model.encoder, defer_below=defer_below))


def test_minilm_encoder_separates_paraphrases_from_unrelated_text() -> None:
    encoder = build_minilm_encoder()
    assert encoder.dimensions == 384
    cancel, cancel_again, bread = (encoder.embed(text) for text in (
        "how do I cancel my card", "I want to cancel my card", "what is a good recipe for banana bread"))
    assert float(cancel @ cancel_again) > 0.8
    assert float(cancel @ bread) < 0.3


def test_cli_trains_an_encoder_model(tmp_path: Path, support: tuple[Rows, Rows],
                                     capsys: pytest.CaptureFixture[str]) -> None:
    (train_texts, train_labels), (val_texts, val_labels) = support
    oos = ["what is a good recipe for banana bread", "tell me a joke", "how tall is mount everest",
           "what time is it in tokyo", "play some jazz music", "who won the world cup"] * 2
    rows = zip(train_texts + oos, train_labels + [UNKNOWN] * len(oos), strict=True)
    train_csv = tmp_path / "train.csv"
    with train_csv.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("text", "label"), *rows])
    val_csv = tmp_path / "val.csv"
    with val_csv.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([("text", "label"), *zip(val_texts, val_labels, strict=True)])
    model_path = tmp_path / "model.npz"
    assert run_intents_cli(["intents", "train", str(train_csv), "--out", str(model_path), "--encoder", "transformer",
                 "--defer-below", "2"]) == 0
    assert "encoder stage" in capsys.readouterr().out
    loaded = IntentModel.load(model_path)
    assert loaded.encoder is not None and loaded.encoder.defer_below == 2.0
    assert run_intents_cli(["intents", "eval", "--model", str(model_path), str(val_csv), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] >= 0.9
