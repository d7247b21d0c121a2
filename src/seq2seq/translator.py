"""Trained models as a Python object: raw text in, raw text out.

    from seq2seq import Translator
    t = Translator.load("runs/tatoeba/best.pt")
    t.translate(["How are you?"])[0].text

Several checkpoints make an ensemble; they must share vocabularies and tokenizers. A
vocabulary shortlist (`seq2seq.shortlist`) makes decoding faster, at a small cost in quality:

    t = Translator.load("runs/tatoeba/best.pt", precision="int8", shortlist="shortlist.pt")
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from seq2seq.checkpoint import check_ensemble, load_bundle
from seq2seq.config import DEFAULT_DEVICE, DEFAULT_PRECISION
from seq2seq.data import source_batch
from seq2seq.device import (
    autocast,
    compute_dtype,
    quantize_int8,
    resolve_device,
    resolve_precision,
)
from seq2seq.errors import ArgumentError, check_text
from seq2seq.model import Seq2Seq
from seq2seq.search import (
    Ensemble,
    Hypothesis,
    beam_search,
    check_decoding,
    greedy_search,
)
from seq2seq.shortlist import Shortlist
from seq2seq.text import Tokenizer
from seq2seq.vocab import Vocabulary

log = logging.getLogger(__name__)


@dataclass
class Translation:
    """The best translation of one source, with the n-best list it came from."""

    text: str
    score: float  # log p(translation </s> | source)
    nbest: list[tuple[str, float]] = field(default_factory=list)  # (text, score), best first


class Translator:
    """One model or an ensemble, with the vocabularies and tokenizers it was trained with.

    The models are cast in place to the dtype of `precision` (int8: quantized in place, see
    `seq2seq.device.quantize_int8`): a Translator owns its models (`Translator.load` gives
    it fresh ones); don't share them with another Translator or train them afterwards.

    A Translator changes nothing process-wide. Decoding runs fastest once the process is
    tuned for it, which the CLI and the server do: `seq2seq.device.setup_process("decode",
    device)` before the first computation (threads, oneDNN's kernel cache, glibc keeping
    the freed score blocks of each step for the next).

    With a `shortlist` (`Shortlist.load`, for these vocabularies), `translate` decodes each
    batch over its candidate words only (see `seq2seq.shortlist`): its scores are
    log-probabilities normalised over them. `score` stays exact.
    """

    def __init__(
        self, models: list[Seq2Seq], src_vocab: Vocabulary, tgt_vocab: Vocabulary,
        src_tokenizer: Tokenizer, tgt_tokenizer: Tokenizer, max_len: int,
        precision: str = DEFAULT_PRECISION, shortlist: Shortlist | None = None,
    ):
        self.ensemble = Ensemble(models, shortlist)
        self.precision = resolve_precision(precision, self.ensemble.device, decoding=True)
        for model in models:  # cast once here, not at every decoding step under autocast
            model.to(compute_dtype(self.precision))
            if self.precision == "int8":
                quantize_int8(model.eval())
        self.src_vocab, self.tgt_vocab = src_vocab, tgt_vocab
        self.src_tokenizer, self.tgt_tokenizer = src_tokenizer, tgt_tokenizer
        self.max_len = max_len

    @classmethod
    def load(cls, paths: str | Path | Sequence[str | Path], device: str = DEFAULT_DEVICE,
             precision: str = DEFAULT_PRECISION, shortlist: str | Path | None = None) -> Translator:
        """Load one checkpoint or several (an ensemble) onto `device` (auto|cpu|cuda).

        `precision` bf16 (or fp16 on CUDA) casts the weights to that type (the models of a
        Translator are cast in place); int8 (the CPU only) quantizes the LSTMs and the output
        layer when loading, and writes nothing back to the checkpoint. Log-probabilities
        and scores stay float32.

        `shortlist`, a file of `seq2seq shortlist` built from the models' data directory,
        restricts each batch's decoding to its candidate words (see `seq2seq.shortlist`);
        CheckpointError naming the file if it was built for other vocabularies.
        """
        paths = [paths] if isinstance(paths, str | Path) else list(paths)
        dev = resolve_device(device)
        bundles = [load_bundle(p, dev) for p in paths]
        check_ensemble(bundles, paths)
        first = bundles[0]
        words = None if shortlist is None else \
            Shortlist.load(shortlist, first.src_vocab, first.tgt_vocab)
        return cls(
            [b.model for b in bundles], first.src_vocab, first.tgt_vocab, first.src_tokenizer,
            first.tgt_tokenizer, min(b.max_len for b in bundles), precision, words,
        )

    # ------------------------------------------------------------------ text <-> ids

    def source_ids(self, sentences: Sequence[str], first_line: int = 1) -> list[list[int]]:
        """Tokenized, id-mapped sources, cut to the model's max length (with one warning per
        call that numbers the input lines from `first_line`)."""
        ids = [self.src_vocab.encode(self.src_tokenizer.tokenize(s)) for s in sentences]
        return self._cut(ids, "input", first_line)

    def target_ids(self, sentences: Sequence[str], first_line: int = 1) -> list[list[int]]:
        """Tokenized, id-mapped targets, cut to the model's max length as sources are."""
        ids = [self.tgt_vocab.encode(self.tgt_tokenizer.tokenize(s)) for s in sentences]
        return self._cut(ids, "target", first_line)

    def _cut(self, ids: list[list[int]], what: str, first_line: int) -> list[list[int]]:
        """`ids` cut to `max_len` tokens (the longest the model was trained on; it bounds
        the work per sentence), with one warning for all the lines cut."""
        long = [i for i, x in enumerate(ids) if len(x) > self.max_len]
        if long:
            more = f" ({len(long) - 1} more {what} lines cut too)" if len(long) > 1 else ""
            log.warning(f"{what} line {first_line + long[0]}: {len(ids[long[0]])} tokens, "
                        f"truncated to the model's limit of {self.max_len}{more}")
        return [x[:self.max_len] for x in ids]

    def detokenize(self, ids: list[int]) -> str:
        return self.tgt_tokenizer.detokenize(self.tgt_vocab.decode(ids))

    # ------------------------------------------------------------------ the verbs

    def translate(
        self, sentences: Sequence[str], beam: int = 12, nbest: int = 1, batch_size: int = 64,
        max_len_a: float = 2.0, max_len_b: int = 10, first_line: int = 1,
        length_penalty: float = 0.0, progress: Callable[[int], None] | None = None,
    ) -> list[Translation]:
        """Translate raw sentences; beam 1 is greedy search. Empty inputs give empty outputs.

        `length_penalty` (alpha) ranks beam search's complete hypotheses by normalised score
        (see `seq2seq.search`); 0, the paper's choice, ranks by log-probability. Greedy
        search has nothing to rank, so beam 1 ignores it.

        `first_line` numbers the inputs in warnings (for callers that stream a file);
        `progress`, if given, is called with the number of sentences of each batch done
        (e.g. a tqdm bar's `update`).
        """
        check_decoding(beam, nbest, batch_size, max_len_a, max_len_b, length_penalty)
        sources = self.source_ids(_sentences(sentences, "sentences"), first_line)
        results: list[Translation] = [Translation("", 0.0, [("", 0.0)])] * len(sources)
        progress = progress or (lambda sentences: None)
        progress(sum(not s for s in sources))  # empty ones are done already
        for idx in _length_batches(sources, batch_size):
            batch = [sources[i] for i in idx]
            with self._autocast():
                if beam == 1 and nbest == 1:
                    hyps = [[h] for h in greedy_search(self.ensemble, batch, max_len_a,
                                                       max_len_b)]
                else:
                    hyps = beam_search(self.ensemble, batch, beam, nbest, max_len_a, max_len_b,
                                       length_penalty)
            for i, nb in zip(idx, hyps):
                results[i] = self._translation(nb)
            progress(len(idx))
        return results

    def _autocast(self):
        return autocast(self.ensemble.device, self.precision)

    def _translation(self, hyps: list[Hypothesis]) -> Translation:
        nbest = [(self.detokenize(h.tokens), h.score) for h in hyps]
        return Translation(nbest[0][0], nbest[0][1], nbest)

    @torch.inference_mode()
    def score(self, sources: Sequence[str], targets: Sequence[str], batch_size: int = 64,
              progress: Callable[[int], None] | None = None) -> list[float]:
        """log p(T|S) of each (source, target) pair, target </s> included; `progress` as
        in `translate`."""
        sources, targets = _sentences(sources, "sources"), _sentences(targets, "targets")
        check_decoding(batch_size=batch_size)
        if len(sources) != len(targets):
            raise ArgumentError(f"{len(sources)} sources but {len(targets)} targets")
        src_ids, tgt_ids = self.source_ids(sources), self.target_ids(targets)
        scores = [0.0] * len(src_ids)
        for idx in _length_batches(src_ids, batch_size, skip_empty=False):
            with self._autocast():
                logp = self.ensemble.token_logprobs([src_ids[i] for i in idx],
                                                    [tgt_ids[i] for i in idx])
            for i, s in zip(idx, logp.sum(1).tolist()):
                scores[i] = s
            if progress:
                progress(len(idx))
        return scores

    @torch.inference_mode()
    def encode(self, sentences: Sequence[str], layers: str = "top",
               batch_size: int = 64) -> np.ndarray:
        """Sentence vectors: the first model's final encoder hidden state, (n, dim).

        layers="top": the top layer's h, dim = hidden_size; "all": h of every layer
        concatenated, dim = num_layers * hidden_size.
        """
        if layers not in ("top", "all"):
            raise ArgumentError(f"layers must be 'top' or 'all', got {layers!r}",
                                argument="layers")
        check_decoding(batch_size=batch_size)
        model = self.ensemble.models[0]
        sources = self.source_ids(_sentences(sentences, "sentences"))
        out = np.zeros((len(sources), 0), dtype=np.float32)
        rows = {}
        for idx in _length_batches(sources, batch_size, skip_empty=False):
            src, lens = source_batch([sources[i] for i in idx], model.source_order)
            h, _ = model.encode(src.to(self.ensemble.device), lens)  # (layers, b, hidden)
            vec = h[-1] if layers == "top" else h.permute(1, 0, 2).reshape(len(idx), -1)
            rows.update(zip(idx, vec.float().cpu().numpy()))
        if rows:
            out = np.stack([rows[i] for i in range(len(sources))])
        return out


def _sentences(value, name: str) -> list[str]:
    """The strings of `value`, any iterable of strings (a list, a generator, a NumPy array of
    str); one string is refused, not split into characters, and a lone surrogate too."""
    if isinstance(value, str | bytes):
        raise ArgumentError(f"{name} must be a list of strings, not one string "
                            f"(wrap it: [{value[:20]!r}])")
    try:
        sentences = list(value)
    except TypeError:
        raise ArgumentError(f"{name} must be a list of strings") from None
    if not all(isinstance(x, str) for x in sentences):
        raise ArgumentError(f"{name} must be a list of strings")
    check_text(name, sentences)
    return sentences


def _length_batches(sources: list[list[int]], batch_size: int,
                    skip_empty: bool = True) -> list[list[int]]:
    """Indices of `sources` in batches of similar length (empty sources skipped)."""
    order = sorted((i for i, s in enumerate(sources) if s or not skip_empty),
                   key=lambda i: len(sources[i]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
