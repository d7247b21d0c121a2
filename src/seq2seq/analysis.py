"""The paper's analyses: Figure 2 (sentence vectors in 2-D) and Figure 3 (BLEU by length and
by word rarity), and rescoring of n-best lists (Table 2).

Figure 3's buckets (`bleu_by_length`, `bleu_by_rarity`: the one place they are made, for
`seq2seq plot`, `seq2seq evaluate --by-length` and the experiments):
- length: the source sentence's length in words (Moses tokens, whatever the model's own
  tokenizer: the paper's measure, the same for every model), in fixed-width buckets;
- rarity: the mean frequency rank of the source sentence's tokens, where a token's rank is
  its position in the model's source vocabulary (1 = most frequent; a token outside the
  vocabulary ranks just after the last one), in buckets holding equal numbers of sentences.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import sacrebleu

from seq2seq.errors import DataError, check_integer
from seq2seq.text import Tokenizer
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


def source_words(sources: Sequence[str], lang: str = "en") -> list[int]:
    """The length in words (Moses tokens) of each source sentence."""
    tok = Tokenizer("moses", lang)
    return [len(tok.tokenize(s)) for s in sources]


def bleu_by_length(
    sources: Sequence[str], hyps: Sequence[str], refs: Sequence[str], lang: str = "en",
    width: int = 5, ranges: Sequence[tuple[float, float]] | None = None,
) -> list[Bucket]:
    """Figure 3, left: corpus BLEU per bucket of source length in words; `width`-word
    buckets from 1, or the [low, high) `ranges` given."""
    check_integer("width", width, 1)
    lengths = source_words(sources, lang)
    return bleu_by_bucket(lengths, hyps, refs, ranges or length_buckets(lengths, width))


def bleu_by_rarity(
    sources: Sequence[str], hyps: Sequence[str], refs: Sequence[str], tokenizer: Tokenizer,
    vocab: Vocabulary, buckets: int = 8,
) -> list[Bucket]:
    """Figure 3, right: corpus BLEU per bucket of the sources' mean frequency rank (tokens
    of the model's `tokenizer`, ranked in its source `vocab`), in `buckets` equal-sized groups."""
    check_integer("buckets", buckets, 1)
    ranks = [mean_frequency_rank(tokenizer.tokenize(s), vocab) for s in sources]
    return bleu_by_bucket(ranks, hyps, refs, equal_count_buckets(ranks, buckets))


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
    fig, ax = figure(figsize=(7, 4.5))
    x = [(b.low + b.high) / 2 for b in buckets]
    ax.plot(x, [b.bleu for b in buckets], marker="o", label="BLEU (sacreBLEU)")
    for xi, b in zip(x, buckets):
        ax.annotate(f"n={b.sentences}", (xi, b.bleu), textcoords="offset points",
                    xytext=(0, 7), ha="center", fontsize=8)
    ax.set(xlabel=xlabel, ylabel="BLEU", title=title)
    ax.margins(y=0.15)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, out)


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
    fig, ax = figure(figsize=(8, 6))
    ax.scatter(points[:, 0], points[:, 1], s=25, label="encoder final state (PCA)")
    for (x, y), text in zip(points, labels):
        ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set(xlabel="principal component 1", ylabel="principal component 2", title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return save_figure(fig, out)


# --------------------------------------------------------------------------- training curves


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The records of a run's `metrics.jsonl`: training lines (`loss`, `ppl`) and
    validation lines (`valid_ppl`), each with `step` and, since 2026-12, `elapsed_s`."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: not found (is {run_dir} a run directory of `seq2seq train`?)")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} line {number}: not JSON ({err.msg})") from None
        if not isinstance(record, dict) or "step" not in record:
            raise DataError(f"{path} line {number}: a metrics record needs a 'step'")
        records.append(record)
    if not records:
        raise DataError(f"{path}: no records yet")
    return records


def curve_summary(runs: dict[str, list[dict]]) -> list[dict]:
    """Per run: updates, best and last validation perplexity, wall time."""
    out = []
    for name, records in runs.items():
        valid = [r for r in records if "valid_ppl" in r]
        out.append({
            "run": name, "steps": max(r["step"] for r in records),
            "best_valid_ppl": min((r["valid_ppl"] for r in valid), default=float("nan")),
            "last_valid_ppl": valid[-1]["valid_ppl"] if valid else float("nan"),
            "elapsed_s": max((r.get("elapsed_s", 0.0) for r in records), default=0.0),
        })
    return out


def plot_curves(runs: dict[str, list[dict]], out: Path, title: str = "Training curves"
                ) -> list[Path]:
    """Training (thin) and validation (markers) perplexity of each run against updates and,
    where the records have it, against wall time; one colour per run, log scale."""
    timed = all(any("elapsed_s" in r for r in records) for records in runs.values())
    fig, axes = figure(ncols=2 if timed else 1, figsize=(12 if timed else 7, 4.5))
    axes = list(axes) if timed else [axes]
    for k, (name, records) in enumerate(runs.items()):
        color = f"C{k % 10}"
        train = [r for r in records if "ppl" in r]
        valid = [r for r in records if "valid_ppl" in r]
        xs = [("step", 1.0, "updates")] + ([("elapsed_s", 3600.0, "wall time (hours)")]
                                          if timed else [])
        for ax, (key, scale, label) in zip(axes, xs):
            ax.plot([r.get(key, np.nan) / scale for r in train], [r["ppl"] for r in train],
                    color=color, alpha=0.35, linewidth=1)
            ax.plot([r.get(key, np.nan) / scale for r in valid],
                    [r["valid_ppl"] for r in valid], "o-", color=color, markersize=3,
                    label=f"{name} (valid)")
            ax.set(xlabel=label, ylabel="perplexity", yscale="log")
    axes[0].set_title(f"{title}: thin = training, markers = validation")
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    return save_figure(fig, out)


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


def figure(nrows: int = 1, ncols: int = 1, figsize: tuple[float, float] = (7, 4.5)):
    """A matplotlib Figure and its axes, made without pyplot: no global backend or state
    is touched, so plotting from a notebook or a GUI program leaves its backend alone."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols)


def save_figure(fig, out: str | Path) -> list[Path]:
    """Write `fig` as `out`.png and `out`.svg; the two paths. The same figure gives the same
    bytes (no date, fixed SVG ids), so a regenerated report changes only what changed."""
    import matplotlib

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    paths = [out.with_suffix(".png"), out.with_suffix(".svg")]
    with matplotlib.rc_context({"svg.hashsalt": "seq2seq"}):  # this block only
        for p in paths:
            fig.savefig(p, dpi=120, metadata={"Date": None} if p.suffix == ".svg" else None)
    return paths
