"""Translation quality: sacreBLEU BLEU and chrF, the paper's tokenized BLEU, perplexity.

- `bleu` and `chrf`: sacreBLEU on detokenized text (its standard 13a tokenization), the
  figures to compare with other toolkits.
- `tok_bleu`: BLEU on Moses-tokenized, cased text with no further tokenization, like the
  paper's multi-bleu.pl figures.
- `ppl`: exp of the mean -log p(y_t | ...) over the reference tokens (</s> included).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import sacrebleu

from seq2seq.text import Tokenizer
from seq2seq.translator import Translator


def bleu_chrf(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, Any]:
    """sacreBLEU BLEU and chrF of detokenized hypotheses against one reference each."""
    bleu = sacrebleu.metrics.BLEU()
    chrf = sacrebleu.metrics.CHRF()
    b = bleu.corpus_score(list(hyps), [list(refs)])
    c = chrf.corpus_score(list(hyps), [list(refs)])
    return {"bleu": b.score, "chrf": c.score, "bleu_signature": str(bleu.get_signature()),
            "chrf_signature": str(chrf.get_signature())}


def tokenized_bleu(hyps: Sequence[str], refs: Sequence[str], lang: str) -> float:
    """Cased BLEU on Moses-tokenized text (the paper's multi-bleu.pl convention)."""
    tok = Tokenizer("moses", lang)
    join = lambda lines: [" ".join(tok.tokenize(s)) for s in lines]  # noqa: E731
    return sacrebleu.corpus_bleu(join(hyps), [join(refs)], tokenize="none").score


def perplexity(translator: Translator, sources: Sequence[str], refs: Sequence[str],
               batch_size: int = 64) -> float:
    scores = translator.score(sources, refs, batch_size=batch_size)
    tokens = sum(len(t) + 1 for t in translator.target_ids(refs))
    return math.exp(-sum(scores) / tokens)


def evaluate(
    translator: Translator, sources: Sequence[str], refs: Sequence[str], beam: int = 12,
    batch_size: int = 64, max_len_a: float = 2.0, max_len_b: int = 10,
    length_penalty: float = 0.0, progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Translate `sources` and score against `refs`: (metrics, hypotheses). `progress` is
    told of the sentences translated (see `Translator.translate`)."""
    if len(sources) != len(refs):
        raise ValueError(f"{len(sources)} sources but {len(refs)} references")
    start = time.perf_counter()
    hyps = [t.text for t in translator.translate(sources, beam=beam, batch_size=batch_size,
                                                 max_len_a=max_len_a, max_len_b=max_len_b,
                                                 length_penalty=length_penalty,
                                                 progress=progress)]
    elapsed = time.perf_counter() - start
    metrics = {
        "sentences": len(sources), "beam": beam, "length_penalty": length_penalty,
        **bleu_chrf(hyps, refs),
        "tok_bleu": tokenized_bleu(hyps, refs, translator.tgt_tokenizer.lang),
        "ppl": perplexity(translator, sources, refs, batch_size),
        "translate_seconds": round(elapsed, 2),
        "sentences_per_second": round(len(sources) / max(elapsed, 1e-9), 1),
    }
    return metrics, hyps
