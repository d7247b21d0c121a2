"""Word-level and piece-level source reversal on every path: training batches, validation,
greedy and beam search, scoring, ensembles and sentence vectors (Figure 2).

Each path's encoder input is read off the model's own source embedding (a forward hook
records the ids it is fed) and compared with a slow reference that reverses the source's
SentencePiece pieces as strings.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_config
from seq2seq.config import config_from_dict
from seq2seq.data import WORD_START, DataDir
from seq2seq.prepare import prepare
from seq2seq.train import Trainer
from seq2seq.translator import Translator
from seq2seq.vocab import PAD_ID

SENTENCES = ["Unbelievably, the neighbours' cats sat on the mat.", "Tom laughed.",
             "I can't understand why she doesn't like chocolate!"]


def _words(pieces: list[str]) -> list[list[str]]:
    words: list[list[str]] = []
    for p in pieces:
        if p.startswith(WORD_START) or not words:
            words.append([p])
        else:
            words[-1].append(p)
    return words


def slow_reference(pieces: list[str], reverse: str) -> list[str]:
    if reverse == "none":
        return list(pieces)
    if reverse == "pieces":
        return pieces[::-1]
    return [p for word in reversed(_words(pieces)) for p in word]


@pytest.fixture(scope="module")
def sp_runs(corpus, tmp_path_factory) -> dict[str, object]:
    """A SentencePiece data directory and a tiny model trained on it for each reversal."""
    root = tmp_path_factory.mktemp("reversal")
    data = root / "data"
    prepare(corpus["train_src"], corpus["train_tgt"], corpus["valid_src"], corpus["valid_tgt"],
            data, src_vocab=500, tgt_vocab=500, tokenizer="sentencepiece", max_len=200)
    runs = {}
    for reverse in ("none", "words", "pieces"):
        cfg = config_from_dict(tiny_config(model={"reverse_source": reverse},
                                           optim={"max_steps": 6},
                                           train={"valid_every": 3}))
        Trainer(cfg, data, root / reverse).train()
        runs[reverse] = root / reverse / "best.pt"
    return {"data": data, **runs}


class FedIds:
    """Records the (unpadded) source rows every model's encoder embedding is fed."""

    def __init__(self, models):
        self.rows: list[list[list[int]]] = [[] for _ in models]
        self.handles = [m.encoder.embed.register_forward_hook(self._hook(k))
                        for k, m in enumerate(models)]

    def _hook(self, k):
        def hook(module, args, output):
            for row in args[0].tolist():
                self.rows[k].append([i for i in row if i != PAD_ID])
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def _expected(translator: Translator, reverse: str) -> list[list[int]]:
    vocab, tok = translator.src_vocab, translator.src_tokenizer
    return [vocab.encode(slow_reference(tok.tokenize(s), reverse)) for s in SENTENCES]


@pytest.mark.parametrize("reverse", ["none", "words", "pieces"])
def test_every_decoding_path_feeds_the_encoder_in_the_models_order(sp_runs, reverse):
    torch.set_num_threads(1)
    t = Translator.load(sp_runs[reverse], device="cpu")
    model = t.ensemble.models[0]
    assert model.cfg.reverse_source == reverse and model.source_order.word_starts is not None
    expected = sorted(map(tuple, _expected(t, reverse)))
    calls = {
        "greedy": lambda: t.translate(SENTENCES, beam=1),
        "beam": lambda: t.translate(SENTENCES, beam=4),
        "score": lambda: t.score(SENTENCES, ["Oui.", "Non.", "Peut-être."]),
        "encode (Figure 2)": lambda: t.encode(SENTENCES),
    }
    for path, call in calls.items():
        fed = FedIds([model])
        call()
        fed.close()
        assert sorted(map(tuple, fed.rows[0])) == expected, path
    if reverse == "words":  # the two reversals differ on these sentences
        assert expected != sorted(map(tuple, _expected(t, "pieces")))


def test_an_ensemble_feeds_each_model_its_own_order(sp_runs):
    t = Translator.load([sp_runs["words"], sp_runs["pieces"], sp_runs["none"]], device="cpu")
    fed = FedIds(t.ensemble.models)
    t.translate(SENTENCES, beam=3)
    fed.close()
    for k, reverse in enumerate(("words", "pieces", "none")):
        assert sorted(map(tuple, fed.rows[k])) == sorted(map(tuple, _expected(t, reverse)))


def test_training_and_validation_batches_are_read_in_the_configured_order(sp_runs):
    data = DataDir(sp_runs["data"])
    vocab = data.src_vocab
    cfg = config_from_dict(tiny_config(model={"reverse_source": "words"}))
    trainer = Trainer(cfg, sp_runs["data"], sp_runs["data"].parent / "unused")
    batch = next(trainer.stream)
    corpus = data.split("train")
    first = trainer.stream.epoch_batches(0)[0]
    for row, n, i in zip(batch.src.tolist(), batch.src_lens.tolist(), first):
        pieces = vocab.decode(np.asarray(corpus.src[i]).tolist())
        assert vocab.decode(row[:n]) == slow_reference(pieces, "words")
