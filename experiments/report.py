"""`experiments/RESULTS.md` and its plots, from the JSON that `experiments/paper.py` writes.

Nothing here trains or decodes: `python experiments/paper.py --report` writes the report
again from the committed results alone.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

# Published effects of reversing the source, forward -> reversed (per-word perplexity, BLEU).
PUBLISHED = [
    ("Sutskever et al. 2014, Table 1 (4 x 1000 LSTMs, WMT'14 En-Fr)", 5.8, 4.7, 25.9, 30.6),
    ("Luong et al. 2015, Table 1 (4 x 1000 LSTMs, WMT'14 En-De, no attention)",
     10.6, 9.9, 11.3, 12.6),
]
METRICS = {  # key in a paired comparison -> (what, better when the difference is)
    "ppl": ("test perplexity per piece", "lower"),
    "ppl_word": ("test perplexity per word", "lower"),
    "bleu1": ("BLEU, beam 1", "higher"),
    "bleu12": ("BLEU, beam 12", "higher"),
}


def load(p, tasks) -> dict[str, dict]:
    out = {}
    for t in tasks:
        path = p.result(t.name)
        if path.exists():
            out[t.name] = json.loads(path.read_text(encoding="utf-8"))
    return out


def spread(values: list[float], digits: int = 2) -> str:
    """mean ± sample sd (min-max), or the one value."""
    f = f"{{:.{digits}f}}"
    values = [v for v in values if v == v]  # an empty bucket's BLEU is NaN
    if not values:
        return "-"
    if len(values) == 1:
        return f.format(values[0])
    return (f"{f.format(statistics.mean(values))} ± {f.format(statistics.stdev(values))} "
            f"({f.format(min(values))}-{f.format(max(values))})")


def interval(e: dict, digits: int = 2) -> str:
    """'mean [low, high]' of a paired effect (the interval is missing for one pair)."""
    f = f"{{:+.{digits}f}}"
    if e["n"] < 2:
        return f"{f.format(e['mean'])} (one pair)"
    return f"{f.format(e['mean'])} [{f.format(e['low'])}, {f.format(e['high'])}]"


def p_value(p: float) -> str:
    if p != p:
        return "-"
    return f"{p:.3f}" if p >= 0.001 else "< 0.001"


def verdict(e: dict, better: str) -> str:
    """What the interval over seeds says, in words."""
    if e["n"] < 2:
        return "one pair: no interval"
    if e["low"] > 0 or e["high"] < 0:
        good = (e["mean"] < 0) == (better == "lower")
        return "helps" if good else "hurts"
    return "no effect the seeds can tell"


def _label(b: dict) -> str:
    from seq2seq.analysis import range_label

    return range_label(b)


# ------------------------------------------------------------------ the report


def write_report(p, regimes, tasks, out: Path, figures: Path, command: str,
                 discussion: Path | None = None) -> None:
    """RESULTS.md (and .json) from the tasks' JSON; `discussion`, a hand-written reading of
    the measured numbers, goes in after the summary."""
    r = load(p, tasks)
    missing = [t.name for t in tasks if t.name not in r]
    figures.mkdir(parents=True, exist_ok=True)
    lines = ["# The paper's claims, tested as a reviewer would", ""]
    lines += [
        f"Made by `{command}` (`make paper`). Each task's numbers are in "
        "`experiments/results/` (JSON, with the date and machine it ran on); this page is "
        "written from them (`python experiments/paper.py --report`).", ""]
    if missing:
        lines += [f"**Incomplete**: not yet run: {', '.join(missing)}.", ""]
    lines += summary_section(r, regimes)
    if discussion is not None and discussion.exists():
        lines += ["## Reading the results", "", discussion.read_text(encoding="utf-8").strip(),
                  ""]
    for regime in regimes.values():
        lines += regime_section(r, regime, figures)
    if "synthetic" in r:
        lines += synthetic_section(r["synthetic"], figures)
    lines += commands_section(r, tasks)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(
        {"command": command, "results": {k: _brief(v) for k, v in r.items()}}, indent=1)
        + "\n", encoding="utf-8")


def _brief(result: dict) -> dict:
    """A task's result without its long per-step and per-sentence lists."""
    return {k: v for k, v in result.items()
            if k not in ("metrics", "sentence_nll", "sentence_pieces", "sentence_words")}


def summary_section(r, regimes) -> list[str]:
    """Ours beside the published effects of reversal: one row per regime and reversal."""
    lines = ["## Reversal's effect, ours beside the published ones", "",
             "Forward -> reversed. Ours: the mean of the per-seed paired differences with its "
             "95% t interval over seeds, and the sentence-level paired test's p-value "
             "(perplexity: paired bootstrap over test sentences; BLEU: sacreBLEU's paired "
             "bootstrap). Perplexity per word (the same NLL spread over Moses words and "
             "</s>), BLEU at beam 12.", "",
             "| system | perplexity | change | BLEU | change |", "|---|---|---:|---|---:|"]
    for what, f_ppl, r_ppl, f_bleu, r_bleu in PUBLISHED:
        lines.append(f"| {what} | {f_ppl} -> {r_ppl} | {100 * (r_ppl / f_ppl - 1):+.1f}% | "
                     f"{f_bleu} -> {r_bleu} | {r_bleu - f_bleu:+.1f} |")
    for regime in regimes.values():
        paired = r.get(f"{regime.name}/paired")
        if not paired:
            continue
        for c in paired["comparisons"].values():
            if c["control"] != "forward":
                continue
            a = _models(r, regime, c["control"])
            b = _models(r, regime, c["treated"])
            s, t = c["over_seeds"], c["over_sentences"]
            ratio = t["ppl_word"]
            lines.append(
                f"| ours, {regime.name}, {c['treated']} reversed ({len(c['seeds'])} seed "
                f"pairs) | {statistics.mean(m['ppl_word'] for m in a):.2f} -> "
                f"{statistics.mean(m['ppl_word'] for m in b):.2f} | "
                f"{100 * (ratio['ratio'] - 1):+.1f}% [{100 * (ratio['low'] - 1):+.1f}, "
                f"{100 * (ratio['high'] - 1):+.1f}], p {p_value(ratio['p'])} | "
                f"{statistics.mean(m['beams'][-1]['bleu'] for m in a):.2f} -> "
                f"{statistics.mean(m['beams'][-1]['bleu'] for m in b):.2f} | "
                f"{interval(s['bleu12'])}, p {p_value(t['bleu12']['p'])} |")
    return lines + ["", "The percentages in brackets are the bootstrap's 95% interval of "
                    "the perplexity ratio over sentences (all seeds pooled); the BLEU "
                    "brackets are the t interval over seed pairs.", ""]


def _models(r, regime, direction: str) -> list[dict]:
    return [r[f"{regime.name}/model/{direction}-seed{k}"] for k in regime.seeds
            if f"{regime.name}/model/{direction}-seed{k}" in r]


def regime_section(r, regime, figures: Path) -> list[str]:
    g = regime.name
    train = {n: r[f"{g}/train/{n}"] for n in regime.runs() if f"{g}/train/{n}" in r}
    models = {n: r[f"{g}/model/{n}"] for n in regime.runs() if f"{g}/model/{n}" in r}
    if not train:
        return []
    first = next(iter(train.values()))
    title = {"tatoeba": "Competent models on short sentences: Tatoeba",
             "hansard": "Long sentences: the whole Hansard"}.get(g, g)
    lines = [f"## {title}", "", *setup_lines(regime, first), ""]
    lines += ["| run | updates | best valid ppl | valid ppl, last 3 validations | test ppl "
              "(piece) | test ppl (word) | BLEU beam 1 | BLEU beam 12 |",
              "|---|---:|---:|---|---:|---:|---:|---:|"]
    for n, t in train.items():
        m = models.get(n)
        valid = [x["valid_ppl"] for x in t["metrics"] if "valid_ppl" in x]
        cells = ([f"{m['ppl']:.2f}", f"{m['ppl_word']:.2f}",
                  *(f"{b['bleu']:.2f}" for b in m["beams"])] if m else ["-"] * 4)
        lines.append(f"| {n} | {t['steps']:,} | {t['best_valid_ppl']:.2f} | "
                     f"{' -> '.join(f'{v:.2f}' for v in valid[-3:])} | {' | '.join(cells)} |")
    lines += ["", *flatness(train), ""]
    paired = r.get(f"{g}/paired")
    if paired:
        lines += paired_section(paired)
    lines += curves_section(train, regime, figures)
    if regime.analyses and models:
        lines += analyses_section(r, regime, models, figures)
    if f"{g}/pca" in r:
        lines += pca_section(r[f"{g}/pca"], g, figures)
    return lines


def setup_lines(regime, first: dict) -> list[str]:
    data = ("the bundled Tatoeba corpus (`data/tatoeba-en-fr/`, short everyday sentences), "
            "prepared as `make demo` does" if regime.corpus == "tatoeba" else
            "the Canadian Hansard (`../shared/data/hansard-en-fr/`, read from there, never "
            "copied here; ~19 words a sentence)")
    pairs = "all" if regime.train_pairs is None else f"the first {regime.train_pairs:,}"
    test = "all" if regime.test_sentences is None else f"the first {regime.test_sentences:,}"
    return [
        f"- Data: {data}; {pairs} training pairs, SentencePiece {regime.vocab:,} pieces a "
        f"side, training sentences of at most {regime.max_len} pieces; test: {test} pairs "
        "of `test.*`.",
        f"- Recipe: `{regime.config}`" + (f" with {', '.join(f'`{o}`' for o in regime.overrides)}"
                                           if regime.overrides else "")
        + f", one thread a run; seeds {', '.join(map(str, regime.seeds))}, each direction "
        f"({', '.join(regime.directions)}) with the same seeds: only `model.reverse_source` "
        "differs within a seed.",
        f"- Trained on: {first.get('machine', '-')}, {first.get('date', '-')}.",
        "- BLEU: detokenized sacreBLEU (13a), one reference, no length penalty (the paper's "
        "search); perplexity: teacher-forced, per SentencePiece piece and per Moses word, "
        "</s> counted once a sentence.",
    ]


def flatness(train: dict[str, dict]) -> list[str]:
    """Whether each run's validation curve was flat at the end: the last validation's gain
    over the one before, in percent."""
    out = []
    for n, t in train.items():
        valid = [x["valid_ppl"] for x in t["metrics"] if "valid_ppl" in x]
        if len(valid) >= 2:
            out.append(f"{n} {100 * (valid[-1] / valid[-2] - 1):+.1f}%")
    return (["Last validation against the one before (a flat curve: near 0; still falling: "
             "negative): " + ", ".join(out) + "."] if out else [])


def paired_section(paired: dict) -> list[str]:
    lines = ["### Paired effects", "",
             "Treated - control for each seed (seed k of both directions shares its initial "
             "weights and batch order), their mean with a 95% t interval and the paired "
             "t-test's p over seeds; then the test over sentences: for perplexity the "
             "ratio treated / control with its 95% bootstrap interval and p (sentences "
             "resampled, seeds pooled), for BLEU sacreBLEU's paired bootstrap p (all seeds' "
             "translations pooled, so each (seed, sentence) counts as one item and the pooled p is "
             "somewhat too confident; each seed's own p, the sound one, in brackets).", "",
             "| comparison | metric | per-seed differences | mean [95% CI] | t-test p | "
             "over sentences | p | verdict |",
             "|---|---|---|---|---:|---|---:|---|"]
    for c in paired["comparisons"].values():
        name = f"{c['treated']} vs {c['control']}"
        for key, (what, better) in METRICS.items():
            s, t = c["over_seeds"][key], c["over_sentences"][key]
            diffs = ", ".join(f"{d:+.2f}" for d in s["differences"])
            if key.startswith("ppl"):
                sentence = f"x{t['ratio']:.3f} [{t['low']:.3f}, {t['high']:.3f}]"
                p = p_value(t["p"])
            else:
                seeds = ", ".join(p_value(x["p"]) for x in c["over_sentences"][f"{key}_per_seed"])
                sentence = f"{t['treated'] - t['control']:+.2f} (pooled)"
                p = f"{p_value(t['p'])} ({seeds})"
            lines.append(f"| {name} | {what} | {diffs} | {interval(s)} | {p_value(s['p'])} | "
                         f"{sentence} | {p} | {verdict(s, better)} |")
        pct = c["over_seeds"]["ppl_change_pct"]
        lines.append(f"| {name} | perplexity per piece, change | "
                     f"{', '.join(f'{d:+.1f}%' for d in pct['differences'])} | "
                     f"{interval(pct, 1)}% | {p_value(pct['p'])} | | | |")
    return lines + [""]


def curves_section(train, regime, figures: Path) -> list[str]:
    from seq2seq.analysis import plot_curves

    name = f"curves-{regime.name}"
    plot_curves({n: t["metrics"] for n, t in train.items()}, figures / name,
                f"{regime.name}: validation perplexity by direction and seed")
    lines = ["### Validation curves", "", f"![training curves](figures/{name}.png)", ""]
    curves: dict[str, list[dict[int, float]]] = {}
    for n, t in train.items():
        curves.setdefault(n.split("-seed")[0], []).append(
            {x["step"]: x["valid_ppl"] for x in t["metrics"] if "valid_ppl" in x})
    steps = sorted(set.intersection(*(set(c) for cs in curves.values() for c in cs)))
    if len(steps) > 12:  # keep the table readable: every k-th validation and the last
        k = math.ceil(len(steps) / 12)
        steps = steps[::-1][::k][::-1]
    mean = {d: [statistics.mean(c[s] for c in cs) for s in steps] for d, cs in curves.items()}
    lines += ["Each direction's mean validation perplexity (per piece) over its seeds:", "",
              "| updates | " + " | ".join(f"{s:,}" for s in steps) + " |",
              "|---|" + "---:|" * len(steps)]
    lines += [f"| {d} | " + " | ".join(f"{v:.2f}" for v in vs) + " |" for d, vs in mean.items()]
    if "forward" in mean:
        lines += [f"| {d} / forward | " + " | ".join(
            f"{v / f:.3f}" for f, v in zip(mean["forward"], vs)) + " |"
            for d, vs in mean.items() if d != "forward"]
    return lines + [""]


def analyses_section(r, regime, models, figures: Path) -> list[str]:
    g = regime.name
    by_dir = {d: [models[f"{d}-seed{k}"] for k in regime.seeds if f"{d}-seed{k}" in models]
              for d in regime.directions}
    by_dir = {d: ms for d, ms in by_dir.items() if ms}
    lines = []
    if len(by_dir) < 2:
        return lines
    figure_buckets(by_dir, "by_length", "source length (words)",
                   "Figure 3, left: BLEU by sentence length", figures / f"length-{g}")
    lines += ["### By source length (Figure 3, left)", "",
              f"![BLEU by length](figures/length-{g}.png)", "",
              *bucket_table(by_dir, "by_length", "source words"), ""]
    figure_profile(by_dir, figures / f"profile-{g}")
    lines += ["### Where reversal acts: perplexity by source length and by target position",
              "", "Teacher-forced test perplexity per target piece, grouped by the source's "
              "length in words and by the target piece's position (1 = the first piece). A "
              "ratio below 1: the reversed models predict those pieces better.", "",
              f"![perplexity profile](figures/profile-{g}.png)", "",
              *profile_table(by_dir, "by_length", "source words"), "",
              *profile_table(by_dir, "by_position", "target position"), ""]
    figure_buckets(by_dir, "by_rarity", "mean frequency rank of the source's words "
                   "(equal-size groups)", "Figure 3, right: BLEU by word rarity",
                   figures / f"rarity-{g}")
    lines += ["### BLEU by word rarity (Figure 3, right)", "",
              "A sentence's rarity: the mean frequency rank of its Moses words in the "
              "training text, 1 = most frequent (`seq2seq plot rarity --measure train-words`); "
              "eight groups of equal size.", "", f"![BLEU by rarity](figures/rarity-{g}.png)",
              "", *bucket_table(by_dir, "by_rarity", "mean rank"), ""]
    e = r.get(f"{g}/ensemble")
    if e and all(n in models for n in e["runs"]):
        single = [statistics.mean(models[n]["beams"][i]["bleu"] for n in e["runs"])
                  for i in range(len(e["beams"]))]
        lines += ["### Ensemble (Table 1)", "",
                  "| system | beam 1 | beam 12 |", "|---|---:|---:|",
                  f"| its models, mean | {' | '.join(f'{x:.2f}' for x in single)} |",
                  f"| ensemble of {', '.join(e['runs'])} | "
                  + " | ".join(f"{b['bleu']:.2f}" for b in e["beams"]) + " |", "",
                  "The paper: +2.7 BLEU for an ensemble of 2 (33.27 against 30.59).", ""]
    if f"{g}/rescore" in r:
        lines += rescore_section(r[f"{g}/rescore"])
    return lines


def figure_buckets(models: dict[str, list[dict]], key: str, xlabel: str, title: str,
                   out: Path) -> None:
    """Mean BLEU per bucket over each direction's seeds, the seeds' range as error bars."""
    from seq2seq.analysis import figure, save_figure

    fig, ax = figure(figsize=(8, 4.8))
    for k, (direction, runs) in enumerate(models.items()):
        rows = list(zip(*(m[key] for m in runs)))  # per bucket: one entry per seed
        x = [i + (k - 0.5) * 0.08 for i in range(len(rows))]
        values = [[b["bleu"] for b in bucket] for bucket in rows]
        mean = [statistics.mean(v) for v in values]
        err = [[m - min(v) for m, v in zip(mean, values)],
               [max(v) - m for m, v in zip(mean, values)]]
        ax.errorbar(x, mean, yerr=err, marker="os^"[k % 3], capsize=3,
                    label=f"{direction} ({len(runs)} seeds, mean and range)")
    first = next(iter(models.values()))[0][key]
    ax.set_xticks(range(len(first)))
    ax.set_xticklabels([f"{_label(b)}\nn={b['sentences']}" for b in first], fontsize=8)
    ax.set(xlabel=xlabel, ylabel="BLEU (beam 12)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, out)


def bucket_table(models: dict[str, list[dict]], key: str, what: str) -> list[str]:
    dirs = list(models)
    lines = [f"| {what} | sentences | " + " | ".join(f"{d} BLEU" for d in dirs) + " | "
             + " | ".join(f"{d} - {dirs[0]}" for d in dirs[1:]) + " |",
             "|---|---:|" + "---:|" * (2 * len(dirs) - 1)]
    for i, b in enumerate(models[dirs[0]][0][key]):
        if not b["sentences"]:
            continue
        v = {d: [m[key][i]["bleu"] for m in ms] for d, ms in models.items()}
        lines.append(f"| {_label(b)} | {b['sentences']} | "
                     + " | ".join(spread(v[d]) for d in dirs) + " | "
                     + " | ".join(f"{statistics.mean(v[d]) - statistics.mean(v[dirs[0]]):+.2f}"
                                  for d in dirs[1:]) + " |")
    return lines


def profile_table(models: dict[str, list[dict]], key: str, what: str) -> list[str]:
    dirs = list(models)
    lines = [f"| {what} | target pieces | " + " | ".join(f"{d} ppl" for d in dirs) + " | "
             + " | ".join(f"{d} / {dirs[0]}" for d in dirs[1:]) + " |",
             "|---|---:|" + "---:|" * (2 * len(dirs) - 1)]
    for i, b in enumerate(models[dirs[0]][0]["ppl_profile"][key]):
        if not b["tokens"]:
            continue
        v = {d: [m["ppl_profile"][key][i]["ppl"] for m in ms] for d, ms in models.items()}
        lines.append(f"| {_label(b)} | {b['tokens']:,} | "
                     + " | ".join(spread(v[d]) for d in dirs) + " | "
                     + " | ".join(f"{statistics.mean(v[d]) / statistics.mean(v[dirs[0]]):.3f}"
                                  for d in dirs[1:]) + " |")
    return lines


def figure_profile(models: dict[str, list[dict]], out: Path) -> None:
    """Each model's test perplexity per bucket over the first direction's mean, by source
    length (left) and by target position (right)."""
    from seq2seq.analysis import figure, save_figure

    base = next(iter(models.values()))
    fig, axes = figure(1, 2, figsize=(11, 4.2))
    for ax, key, xlabel in zip(axes, ("by_length", "by_position"),
                               ("source length (words)", "target position (pieces)")):
        keep = [i for i, b in enumerate(base[0]["ppl_profile"][key]) if b["tokens"]]
        ref = [statistics.mean(m["ppl_profile"][key][i]["ppl"] for m in base) for i in keep]
        for k, ms in enumerate(models.values()):
            for m in ms:
                ax.plot(range(len(keep)), [m["ppl_profile"][key][i]["ppl"] / f
                                           for i, f in zip(keep, ref)],
                        marker="os^"[k % 3], linestyle=":" if k == 0 else "-",
                        color=f"C{k}", alpha=0.8, label=m["run"])
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(keep)))
        ax.set_xticklabels([_label(base[0]["ppl_profile"][key][i]) for i in keep], fontsize=8)
        ax.set(xlabel=xlabel, ylabel=f"test ppl / {next(iter(models))} mean")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle("Where reversal acts: perplexity relative to the forward models")
    save_figure(fig, out)


def rescore_section(x) -> list[str]:
    lines = ["### Rescoring an n-best list (Table 2)", "",
             f"The list: {x['list']}; each hypothesis re-scored as {x['weight']} x log p(T|S) "
             f"of the rescorer + {1 - x['weight']:g} x the list's score, the best kept. The "
             "paper rescored a phrase-based system's 1000-best lists (33.30 -> 35.61 with a "
             "forward LSTM, 35.85 with a reversed one); no such system here, so the list comes "
             "from a forward LSTM.", "",
             "| | BLEU |", "|---|---:|", f"| the list's 1-best | {x['bleu_before']:.2f} |"]
    for name, bleu in x["after"].items():
        lines.append(f"| rescored with {name} | {bleu:.2f} ({bleu - x['bleu_before']:+.2f}) |")
    lines += [f"| oracle: the best of the list per sentence (sentence BLEU) | "
              f"{x['oracle_bleu']:.2f} |", ""]
    return lines


def pca_section(pca: dict, regime: str, figures: Path) -> list[str]:
    import numpy as np

    from seq2seq.analysis import figure, save_figure

    runs = pca["runs"]
    fig, axes = figure(1, len(runs), figsize=(6 * len(runs), 5))
    axes = np.atleast_1d(axes)
    for ax, name in zip(axes, runs):
        points = np.array(pca["points"][name])
        ax.scatter(points[:, 0], points[:, 1], s=14)
        for (x, y), label in zip(points, pca["phrases"]):
            ax.annotate(label, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set(title=f"{name}: encoder final states, 2-D PCA", xticks=[], yticks=[])
    name = f"pca-{regime}"
    save_figure(fig, figures / name)
    return ["### Sentence vectors (Figure 2)", "",
            "The paper's phrases (`examples/phrases.en`) through the encoder of each "
            "direction's first seed (the top layer's final h), each model's vectors projected "
            "on their own two principal components (the models' spaces differ, so one "
            "projection cannot serve both).", "", f"![PCA](figures/{name}.png)", ""]


def synthetic_section(x, figures: Path) -> list[str]:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from synthetic import plot, table

    plot(x, figures / "synthetic")
    return ["## The mechanism, isolated: a synthetic task with controls", "",
            f"`{x['command']}` (`experiments/synthetic.py`; its docstring says what each task "
            "tests and what would falsify the mechanism).", "",
            "![synthetic](figures/synthetic.png)", "", *table(x), ""]


def commands_section(r, tasks) -> list[str]:
    lines = ["## Commands and wall times", "",
             "Each run and evaluation below is a task of `experiments/paper.py`; its "
             "command is the equivalent `seq2seq` call (repository-relative paths; the "
             "Hansard folder is `--hansard`).", "",
             "| task | command | wall time |", "|---|---|---:|"]
    for t in tasks:
        x = r.get(t.name)
        if x and x.get("command"):
            seconds = x.get("wall_seconds") if "/train/" in t.name else None
            seconds = seconds or x.get("task_seconds", 0)
            lines.append(f"| {t.name} | `{x['command']}` | {seconds / 60:.1f} min |")
    total = sum(x.get("task_seconds", 0) for x in r.values())
    lines += ["", f"Sum of task times: {total / 3600:.2f} h of one core each; two at a time."]
    return lines
