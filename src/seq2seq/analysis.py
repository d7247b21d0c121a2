"""The paper's analyses: Figure 2 (sentence vectors in 2-D) and Figure 3 (BLEU by length and
by word rarity), rescoring of n-best lists (Table 2), and where in a sentence the model's
perplexity lies (per source length and per target position).

Figure 3's buckets (`bleu_by_length`, `bleu_by_rarity`: the one place they are made, for
`seq2seq plot`, `seq2seq evaluate --by-length` and the experiments):
- length: the source sentence's length in words (Moses tokens, whatever the model's own
  tokenizer: the paper's measure, the same for every model), in fixed-width buckets;
- rarity: the mean frequency rank of the source sentence's words (1 = most frequent; an
  unknown word ranks just after the last one), in buckets holding equal numbers of
  sentences. Two rankings (`seq2seq plot rarity --measure`): "vocab", the model's own
  tokens ranked by their position in its source vocabulary (`mean_vocab_rank`), and
  "train-words", Moses words ranked by their count in the training source text
  (`training_word_ranks`, `mean_training_rank`: the same for every model, like length).

The perplexity profile (`token_nlls`, `nll_profile`): the teacher-forced -log p of every
reference piece and </s>, pooled per bucket of source length in words (LENGTH_EDGES) and
per target position (POSITION_EDGES), where reversing the source should act.
"""

from __future__ import annotations

import bisect
import json
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import sacrebleu

from seq2seq.errors import ArgumentError, DataError, check_integer
from seq2seq.files import atomic_file, make_folder
from seq2seq.text import Tokenizer, read_lines
from seq2seq.vocab import SPECIALS, Vocabulary

if TYPE_CHECKING:
    from seq2seq.translator import Translator

# Figure 3, left: source length in words, the buckets the paper's plot spans ([low, high)).
FIGURE_SUFFIXES = (".png", ".svg")  # the files of a figure, `save_figure` writes
LENGTH_EDGES = (1, 10, 15, 20, 25, 30, 35, 40, 50, 101)
# Target position in pieces (1 = the first, </s> last): where reversal should matter.
POSITION_EDGES = (1, 4, 8, 12, 16, 21, 31, 41, 61, 201)


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
    return _moses_words(sources, lang)


def target_words(refs: Sequence[str], lang: str = "fr") -> list[int]:
    """The length in words (Moses tokens, as `source_words`) of each reference sentence: the
    words of `stats.perplexity_per_word`."""
    return _moses_words(refs, lang)


def _moses_words(sentences: Sequence[str], lang: str) -> list[int]:
    tok = Tokenizer("moses", lang)
    return [len(tok.tokenize(s)) for s in sentences]


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
    rarity: Sequence[float], hyps: Sequence[str], refs: Sequence[str], buckets: int = 8,
) -> list[Bucket]:
    """Figure 3, right: corpus BLEU per bucket of the sources' `rarity` (one mean rank per
    sentence: `mean_vocab_rank` or `mean_training_rank`), in `buckets` equal-sized groups."""
    check_integer("buckets", buckets, 1)
    return bleu_by_bucket(rarity, hyps, refs, equal_count_buckets(rarity, buckets))


def mean_frequency_rank(tokens: Sequence[str], vocab: Vocabulary) -> float:
    """Mean rank of a sentence's words in `vocab` (1 = most frequent; unknown = size + 1)."""
    unknown = len(vocab) - len(SPECIALS) + 1
    ranks = [vocab.index[t] - len(SPECIALS) + 1 if t in vocab.index else unknown
             for t in tokens]
    return float(np.mean(ranks)) if ranks else 0.0


def mean_vocab_rank(sentences: Sequence[str], tokenizer: Tokenizer,
                    vocab: Vocabulary) -> list[float]:
    """Rarity "vocab": each sentence's mean rank of its `tokenizer` tokens in the model's
    source `vocab` (`mean_frequency_rank`); 0 for an empty sentence."""
    return [mean_frequency_rank(tokenizer.tokenize(s), vocab) for s in sentences]


def training_word_ranks(path_or_lines: str | Path | Iterable[str],
                        lang: str = "en") -> dict[str, int]:
    """The frequency rank of each word (Moses token) of the training source text: 1 = most
    frequent, ties in order of first appearance. `path_or_lines`: a file (.gz/.xz read as
    compressed; a str is a path) or the lines themselves."""
    lines = read_lines(path_or_lines) if isinstance(path_or_lines, str | Path) else path_or_lines
    tok = Tokenizer("moses", lang)
    counts = Counter(w for line in lines for w in tok.tokenize(line))
    return {w: rank for rank, (w, _) in enumerate(counts.most_common(), start=1)}


def mean_training_rank(sentences: Sequence[str], ranks: dict[str, int],
                       lang: str = "en") -> list[float]:
    """Rarity "train-words": each sentence's mean rank (`training_word_ranks`) of its Moses
    words; a word unseen in training ranks len(ranks) + 1; 0 for an empty sentence."""
    tok = Tokenizer("moses", lang)
    unknown = len(ranks) + 1
    out = []
    for sentence in sentences:
        words = tok.tokenize(sentence)
        out.append(float(np.mean([ranks.get(w, unknown) for w in words])) if words else 0.0)
    return out


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


# --------------------------------------------------------------------------- perplexity profile


def token_nlls(translator: Translator, sources: Sequence[str], refs: Sequence[str],
               batch_size: int = 64) -> list[np.ndarray]:
    """Teacher-forced -log p(y_t | y_<t, S) of every piece of each reference and of its </s>:
    one float64 array (len(pieces) + 1,) per sentence, in order. Summed, -`Translator.score`.

    Computed as `score` computes it: `batch_size` sentences at a time, sorted by source length.
    """
    import torch

    from seq2seq.device import autocast
    from seq2seq.search import check_decoding

    check_decoding(batch_size=batch_size)
    if len(sources) != len(refs):
        raise ArgumentError(f"{len(sources)} sources but {len(refs)} references")
    src_ids, tgt_ids = translator.source_ids(sources), translator.target_ids(refs)
    order = sorted(range(len(src_ids)), key=lambda i: len(src_ids[i]))
    nlls: list[np.ndarray] = [np.zeros(0)] * len(src_ids)
    ensemble = translator.ensemble
    for k in range(0, len(order), batch_size):
        rows = order[k:k + batch_size]
        with torch.inference_mode(), autocast(ensemble.device, translator.precision):
            logp = ensemble.token_logprobs([src_ids[i] for i in rows],
                                           [tgt_ids[i] for i in rows])  # (rows, tgt_len + 1)
        for i, row in zip(rows, logp.float().cpu().numpy()):
            nlls[i] = -row[:len(tgt_ids[i]) + 1].astype(np.float64)  # the pieces and </s>
    return nlls


def nll_profile(
    nlls: Sequence[np.ndarray], source_lengths: Sequence[int],
    length_edges: Sequence[int] = LENGTH_EDGES, position_edges: Sequence[int] = POSITION_EDGES,
) -> dict[str, list[dict]]:
    """Perplexity per target piece (</s> included) of the `token_nlls`, pooled per bucket.

    "by_length": the sentences whose `source_lengths` (words: `source_words`) fall in each
    [low, high) range of `length_edges`; "by_position": the pieces at each target position
    (1 = the first) in a range of `position_edges`. Each bucket is {"low", "high", "tokens",
    "ppl"} (ppl NaN where tokens is 0); what falls outside the edges is not counted.
    """
    if len(nlls) != len(source_lengths):
        raise ArgumentError(f"{len(nlls)} sentences of NLLs but {len(source_lengths)} "
                            "source lengths")
    _check_edges("length_edges", length_edges)
    _check_edges("position_edges", position_edges)
    sums = {"by_length": np.zeros((len(length_edges) - 1, 2)),
            "by_position": np.zeros((len(position_edges) - 1, 2))}  # (buckets, [nll, tokens])
    for nll, length in zip(nlls, source_lengths):
        at = _edge_index(length, length_edges)
        if at is not None:
            sums["by_length"][at] += (float(np.sum(nll)), len(nll))
        for position, x in enumerate(nll, start=1):
            at = _edge_index(position, position_edges)
            if at is not None:
                sums["by_position"][at] += (float(x), 1)
    return {key: [{"low": lo, "high": hi, "tokens": int(n),
                   "ppl": math.exp(total / n) if n else float("nan")}
                  for lo, hi, (total, n) in zip(edges[:-1], edges[1:], sums[key])]
            for key, edges in (("by_length", length_edges), ("by_position", position_edges))}


def _check_edges(name: str, edges: Sequence[int]) -> None:
    if len(edges) < 2 or any(a >= b for a, b in zip(edges[:-1], edges[1:])):
        raise ArgumentError(f"{name} must be at least two increasing numbers, got "
                            f"{tuple(edges)}", argument=name)


def _edge_index(value: float, edges: Sequence[int]) -> int | None:
    """The k of the range [edges[k], edges[k + 1]) that holds `value`, or None."""
    k = bisect.bisect_right(edges, value) - 1
    return k if 0 <= k < len(edges) - 1 else None


def token_perplexity(nlls: Sequence[np.ndarray]) -> float:
    """exp(mean NLL per target piece, </s> included) of `token_nlls`: `seq2seq evaluate`'s
    perplexity. Per word: `stats.perplexity_per_word` with `target_words`."""
    return math.exp(sum(float(np.sum(x)) for x in nlls) / sum(len(x) for x in nlls))


def profile_table(profile: dict[str, list[dict]]) -> str:
    rows = []
    for key, what in (("by_length", "src words"), ("by_position", "tgt position")):
        rows += [f"{what:>12} | tokens |     ppl", "-" * 32]
        rows += [f"{range_label(b):>12} | {b['tokens']:>6} | {b['ppl']:7.2f}"
                 for b in profile[key]]
    return "\n".join(rows)


def plot_profile(profile: dict[str, list[dict]], out: Path,
                 title: str = "Teacher-forced test perplexity") -> list[Path]:
    """Two panels: perplexity by source length in words (left) and by target position
    (right), one point per non-empty bucket, its token count written beside it."""
    fig, axes = figure(ncols=2, figsize=(12, 4.5))
    for ax, key, xlabel in zip(axes, ("by_length", "by_position"),
                               ("source length (words)", "target position (pieces)")):
        buckets = [b for b in profile[key] if b["tokens"]]
        ax.plot(range(len(buckets)), [b["ppl"] for b in buckets], marker="o")
        for x, b in enumerate(buckets):
            ax.annotate(f"n={b['tokens']}", (x, b["ppl"]), textcoords="offset points",
                        xytext=(0, 7), ha="center", fontsize=7)
        ax.set_xticks(range(len(buckets)))
        ax.set_xticklabels([range_label(b) for b in buckets], fontsize=8)
        ax.set(xlabel=xlabel, ylabel="perplexity per target piece")
        ax.margins(y=0.15)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title} (n: target pieces in the bucket, </s> included)")
    return save_figure(fig, out)


def range_label(bucket: dict) -> str:
    """A bucket's range [low, high): an integer one as its first and last values ("1-9"),
    any other as its rounded ends."""
    low, high = bucket["low"], bucket["high"]
    if float(low).is_integer() and float(high).is_integer():
        return f"{int(low)}-{int(high) - 1}"
    return f"{low:.0f}-{high:.0f}"


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
    where the records have it, against wall time; one colour per run, log scale. Runs that
    validated by BLEU (train.valid_metrics) add it, dashed, on a second axis at the right."""
    timed = all(any("elapsed_s" in r for r in records) for records in runs.values())
    fig, axes = figure(ncols=2 if timed else 1, figsize=(12 if timed else 7, 4.5))
    axes = list(axes) if timed else [axes]
    with_bleu = any("valid_bleu" in r for records in runs.values() for r in records)
    bleu_axes = [ax.twinx() for ax in axes] if with_bleu else []
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
        for bleu_ax, (key, scale, _) in zip(bleu_axes, xs):
            bleu = [r for r in valid if "valid_bleu" in r]
            bleu_ax.plot([r.get(key, np.nan) / scale for r in bleu],
                         [r["valid_bleu"] for r in bleu], "s--", color=color, markersize=3)
            bleu_ax.set(ylabel="validation BLEU (squares, dashed)")
    fig.suptitle(f"{title}: thin = training, markers = validation")  # above both panels
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
            weight: float = 0.5, progress: Callable[[int], None] | None = None
            ) -> list[NbestEntry]:
    """Add log p(T|S) to each entry and re-rank: combined = weight * model + (1 - weight) * list.
    `progress` is told of the entries scored (see `Translator.score`).

    Returns the entries grouped by source (in order), best combined score first.
    """
    for e in entries:
        if not 0 <= e.source < len(sources):
            raise DataError(f"n-best entry for source {e.source}, but there are "
                            f"{len(sources)} sources")
    model = translator.score([sources[e.source] for e in entries], [e.text for e in entries],
                             progress=progress)
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
    """Write `fig` as `out`.png and `out`.svg, each atomically (a full disk names the file
    in a DataError, and leaves an older file as it was); the two paths. The same figure
    gives the same bytes (no date, fixed SVG ids), so a regenerated report changes only
    what changed."""
    import matplotlib

    out = Path(out)
    make_folder(out.parent)
    fig.tight_layout()
    paths = [out.with_suffix(suffix) for suffix in FIGURE_SUFFIXES]
    with matplotlib.rc_context({"svg.hashsalt": "seq2seq"}):  # this block only
        for p in paths:
            try:
                with atomic_file(p, "wb") as f:
                    fig.savefig(f, format=p.suffix[1:], dpi=120,
                                metadata={"Date": None} if p.suffix == ".svg" else None)
            except OSError as err:
                raise DataError(f"{p}: cannot write the figure ({err.strerror or err})"
                                ) from None
    return paths
