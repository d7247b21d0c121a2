"""The paper's analyses: Figure 2 (sentence vectors in 2-D) and Figure 3 (BLEU by length and
by word rarity), and rescoring of n-best lists (Table 2).

Figure 3's buckets:
- length: the source sentence's length in tokens, in fixed-width buckets;
- rarity: the mean frequency rank of the source sentence's words, where a word's rank is its
  position in the training vocabulary (1 = most frequent; a word outside the vocabulary ranks
  just after the last one), in buckets holding equal numbers of sentences.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import sacrebleu

from seq2seq.errors import DataError
from seq2seq.vocab import SPECIALS, Vocabulary


@dataclass
class Bucket:
    low: float  # inclusive
    high: float  # exclusive
    sentences: int
    bleu: float

    @property
    def label(self) -> str:
        return f"{self.low:g}-{self.high:g}"


# --------------------------------------------------------------------------- Figure 3


def length_buckets(lengths: Sequence[int], width: int = 5) -> list[tuple[int, int]]:
    """Fixed-width [low, high) ranges covering 1 .. max(lengths)."""
    top = max(lengths) if lengths else 1
    return [(lo, lo + width) for lo in range(1, top + 1, width)]


def equal_count_buckets(values: Sequence[float], count: int = 8) -> list[tuple[float, float]]:
    """[low, high) ranges that split `values` into `count` groups of about equal size."""
    edges = np.unique(np.quantile(np.asarray(values, dtype=float), np.linspace(0, 1, count + 1)))
    ranges = [(float(a), float(b)) for a, b in zip(edges[:-1], edges[1:])]
    if ranges:
        ranges[-1] = (ranges[-1][0], np.nextafter(ranges[-1][1], np.inf))
    return ranges or [(float(values[0]), float(np.nextafter(values[0], np.inf)))]


def bleu_by_bucket(
    keys: Sequence[float], hyps: Sequence[str], refs: Sequence[str],
    ranges: Sequence[tuple[float, float]],
) -> list[Bucket]:
    """Corpus BLEU of the sentences whose key falls in each [low, high) range."""
    out = []
    for low, high in ranges:
        idx = [i for i, k in enumerate(keys) if low <= k < high]
        bleu = sacrebleu.corpus_bleu([hyps[i] for i in idx], [[refs[i] for i in idx]]).score \
            if idx else float("nan")
        out.append(Bucket(low, high, len(idx), bleu))
    return out


def mean_frequency_rank(tokens: Sequence[str], vocab: Vocabulary) -> float:
    """Mean rank of a sentence's words in `vocab` (1 = most frequent; unknown = size + 1)."""
    unknown = len(vocab) - len(SPECIALS) + 1
    ranks = [vocab.index[t] - len(SPECIALS) + 1 if t in vocab.index else unknown
             for t in tokens]
    return float(np.mean(ranks)) if ranks else 0.0


def buckets_to_json(buckets: list[Bucket], what: str) -> str:
    return json.dumps({"bucketed_by": what, "buckets": [
        {**asdict(b), "label": b.label} for b in buckets]}, indent=2)


def buckets_table(buckets: list[Bucket], what: str) -> str:
    rows = [f"{what:>12} | sentences |  BLEU", "-" * 34]
    rows += [f"{b.label:>12} | {b.sentences:>9} | {b.bleu:5.2f}" for b in buckets]
    return "\n".join(rows)


def plot_buckets(buckets: list[Bucket], xlabel: str, title: str, out: Path) -> list[Path]:
    """A line plot of BLEU per bucket, with the sentence count written at each point."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = [(b.low + b.high) / 2 for b in buckets]
    ax.plot(x, [b.bleu for b in buckets], marker="o", label="BLEU (sacreBLEU)")
    for xi, b in zip(x, buckets):
        ax.annotate(f"n={b.sentences}", (xi, b.bleu), textcoords="offset points",
                    xytext=(0, 7), ha="center", fontsize=8)
    ax.set(xlabel=xlabel, ylabel="BLEU", title=title)
    ax.margins(y=0.15)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, out)


# --------------------------------------------------------------------------- Figure 2


def pca_2d(vectors: np.ndarray) -> np.ndarray:
    """Project (n, dim) vectors on their first two principal components: (n, 2)."""
    if len(vectors) < 2:
        raise DataError("PCA needs at least two phrases")
    centered = vectors - vectors.mean(0)
    _, _, components = np.linalg.svd(centered, full_matrices=False)
    return centered @ components[:2].T


def plot_pca(points: np.ndarray, labels: Sequence[str], title: str, out: Path) -> list[Path]:
    """A scatter plot of 2-D points, each labelled with its phrase."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 6))
    ax.scatter(points[:, 0], points[:, 1], s=25, label="encoder final state (PCA)")
    for (x, y), text in zip(points, labels):
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set(xlabel="principal component 1", ylabel="principal component 2", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return _save(fig, out)


# --------------------------------------------------------------------------- rescoring


@dataclass
class NbestEntry:
    source: int  # 0-based index of the source sentence
    text: str
    score: float  # the list's own score
    model_score: float = 0.0  # log p(T|S)
    combined: float = 0.0


def read_nbest(path: str | Path) -> list[NbestEntry]:
    """Moses-style n-best lines `index ||| hypothesis ||| ... ||| score` (score last)."""
    from seq2seq.text import read_lines

    entries = []
    for number, line in enumerate(read_lines(path), start=1):
        fields = [f.strip() for f in line.split("|||")]
        try:
            entries.append(NbestEntry(int(fields[0]), fields[1], float(fields[-1])))
        except (ValueError, IndexError):
            raise DataError(f"{path} line {number}: expected 'index ||| hypothesis ||| score'"
                            ) from None
    return entries


def rescore(entries: list[NbestEntry], sources: Sequence[str], translator,
            weight: float = 0.5) -> list[NbestEntry]:
    """Add log p(T|S) to each entry and re-rank: combined = weight * model + (1 - weight) * list.

    Returns the entries grouped by source (in order), best combined score first.
    """
    for e in entries:
        if not 0 <= e.source < len(sources):
            raise DataError(f"n-best entry for source {e.source}, but there are "
                            f"{len(sources)} sources")
    model = translator.score([sources[e.source] for e in entries], [e.text for e in entries])
    groups: dict[int, list[NbestEntry]] = defaultdict(list)
    for e, m in zip(entries, model):
        e.model_score, e.combined = m, weight * m + (1 - weight) * e.score
        groups[e.source].append(e)
    return [e for s in sorted(groups) for e in sorted(groups[s], key=lambda e: -e.combined)]


# --------------------------------------------------------------------------- helpers


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> list[Path]:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    paths = [out.with_suffix(".png"), out.with_suffix(".svg")]
    for p in paths:
        fig.savefig(p, dpi=120)
    fig.clear()
    return paths
