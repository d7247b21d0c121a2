"""`experiments/RESULTS.md` and its plots, from the JSON that `experiments/paper.py` writes.

Nothing here trains or decodes: `python experiments/paper.py --report` writes the report
again from the committed results alone.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

PAPER = {"forward": {"ppl": 5.8, "bleu": 25.9}, "reversed": {"ppl": 4.7, "bleu": 30.6}}


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


def verdict(fwd: list[float], rev: list[float], better: str) -> str:
    """The effect of reversal on a metric next to the seeds' spread, in words."""
    effect = statistics.mean(rev) - statistics.mean(fwd)
    helps = effect < 0 if better == "lower" else effect > 0
    separated = max(rev) < min(fwd) if better == "lower" else min(rev) > max(fwd)
    worse = min(rev) > max(fwd) if better == "lower" else max(rev) < min(fwd)
    widest = max(max(fwd) - min(fwd), max(rev) - min(rev))
    size = f"{effect:+.2f} (seeds' widest range {widest:.2f})"
    if helps and separated:
        return f"{size}: reversal helps, beyond the seed spread (every reversed seed is better)"
    if worse:
        return f"{size}: reversal hurts, beyond the seed spread"
    return f"{size}: within the seed spread, no measurable effect"


def figure_curves(r, names, figures: Path) -> None:
    from seq2seq.analysis import plot_curves

    runs = {n: r[f"train/{n}"]["metrics"] for n in names if f"train/{n}" in r}
    if runs:
        plot_curves(runs, figures / "curves", "Hansard, forward vs reversed source")


def figure_buckets(models: dict[str, list[dict]], key: str, xlabel: str, title: str,
                   out: Path) -> None:
    """Mean BLEU per bucket over each direction's seeds, the seeds' range as error bars."""
    from seq2seq.analysis import figure, save_figure

    fig, ax = figure(figsize=(8, 4.8))
    for k, (direction, runs) in enumerate(models.items()):
        if not runs:
            continue
        rows = list(zip(*(m[key] for m in runs)))  # per bucket: one entry per seed
        x = [i + (k - 0.5) * 0.08 for i in range(len(rows))]
        values = [[b["bleu"] for b in bucket] for bucket in rows]
        mean = [statistics.mean(v) for v in values]
        err = [[m - min(v) for m, v in zip(mean, values)],
               [max(v) - m for m, v in zip(mean, values)]]
        ax.errorbar(x, mean, yerr=err, marker="o" if k else "s", capsize=3,
                    label=f"{direction} source ({len(runs)} seeds, mean and range)")
    first = next(iter(r for r in models.values() if r))[0][key]
    ax.set_xticks(range(len(first)))
    ax.set_xticklabels([f"{_label(b)}\nn={b['sentences']}" for b in first], fontsize=8)
    ax.set(xlabel=xlabel, ylabel="BLEU (beam 12)", title=title)
    ax.grid(alpha=0.3)
    ax.legend()
    save_figure(fig, out)


def _label(b: dict) -> str:
    low, high = b["low"], b["high"]
    if float(low).is_integer() and float(high).is_integer():
        return f"{int(low)}-{int(high) - 1}"
    return f"{low:.0f}-{high:.0f}"


def bucket_table(models: dict[str, list[dict]], key: str, what: str) -> list[str]:
    fwd, rev = models["forward"], models["reversed"]
    lines = [f"| {what} | sentences | forward BLEU | reversed BLEU | reversed - forward |",
             "|---|---:|---:|---:|---:|"]
    for i, b in enumerate(fwd[0][key]):
        if not b["sentences"]:
            continue
        f = [m[key][i]["bleu"] for m in fwd]
        r = [m[key][i]["bleu"] for m in rev]
        lines.append(f"| {_label(b)} | {b['sentences']} | {spread(f)} | {spread(r)} | "
                     f"{statistics.mean(r) - statistics.mean(f):+.2f} |")
    return lines


def write_report(p, s, tasks, out: Path, figures: Path, command: str,
                 discussion: Path | None = None) -> None:
    """RESULTS.md (and .json) from the tasks' JSON; `discussion`, a hand-written reading of
    the measured numbers, goes in after the setup."""
    from seq2seq.analysis import plot_pca

    r = load(p, tasks)
    names = [t.name.split("/", 1)[1] for t in tasks if t.name.startswith("train/")]
    fwd_names = [n for n in names if n.startswith("forward")]
    rev_names = [n for n in names if n.startswith("reversed")]
    models = {d: [r[f"model/{n}"] for n in ns if f"model/{n}" in r]
              for d, ns in (("forward", fwd_names), ("reversed", rev_names))}
    missing = [t.name for t in tasks if t.name not in r]
    figures.mkdir(parents=True, exist_ok=True)
    figure_curves(r, names, figures)
    lines = ["# The paper's claims on trained models and long sentences", ""]
    any_result = next(iter(r.values()), {})
    lines += [
        f"Made by `{command}` (`make paper`), results of {any_result.get('date', '-')} on "
        f"{any_result.get('machine', '-')}. Each task's numbers are in `experiments/results/` "
        "(JSON); this page is written from them (`python experiments/paper.py --report`).",
        "",
    ]
    if missing:
        lines += [f"**Incomplete**: not yet run: {', '.join(missing)}.", ""]
    train = {n: r[f"train/{n}"] for n in names if f"train/{n}" in r}
    if train:
        first = next(iter(train.values()))
        lines += [
            "## Setup", "",
            f"- Data: the first {s.train_pairs:,} pairs of the Hansard training file (a random "
            "sample: it is shuffled), `../shared/data/hansard-en-fr/` (the Canadian Hansard, "
            "36th Parliament, ISI release; research use, read from there, never copied here). "
            f"SentencePiece, {s.vocab:,} pieces per side; training pairs of at most "
            f"{s.max_len} pieces. Test: the first {s.test_sentences:,} pairs of `test.*` "
            "(mean 20.5 English words).",
            "- Model and recipe: `configs/hansard-cpu.yaml` (2 x 256 LSTMs, embeddings 256, "
            "Adam 0.002, batches of 64, label smoothing 0.1, float32), 2.5 epochs with the lr "
            "halved every quarter epoch of the last, the same for every model; only "
            "`model.reverse_source` and `train.seed` (initial weights and batch order) differ. "
            f"Every run: {first['steps']:,} updates, one thread, two runs at a time on the "
            "2 cores.",
            "- BLEU: detokenized sacreBLEU (13a) against one reference; perplexity: per target "
            "piece, </s> included. The paper's figures are tokenized BLEU on WMT'14 with a "
            "4 x 1000 model trained 10 days on 8 GPUs: compare directions and sizes of "
            "effects, not values.", "",
        ]
    if discussion is not None and discussion.exists():
        lines += ["## Reading the results", "", discussion.read_text(encoding="utf-8").strip(),
                  ""]
    if models["forward"] and models["reversed"]:
        lines += reversal_section(train, models, figures)
    if train:
        lines += ["## Training curves", "",
                  "![training curves](figures/curves.png)", "",
                  "| run | updates | best valid ppl | last valid ppl | wall time | tgt tok/s |",
                  "|---|---:|---:|---:|---:|---:|"]
        for n, t in train.items():
            lines.append(f"| {n} | {t['steps']:,} | {t['best_valid_ppl']:.2f} | "
                         f"{t['last_valid_ppl']:.2f} | {t['wall_seconds'] / 60:.1f} min | "
                         f"{t['tgt_tok_s'] or 0:,.0f} |")
        lines += ["", *valid_ratio_table(train)]
        lines.append("")
    lines += beams_section(r, models)
    if "rescore" in r:
        lines += rescore_section(r["rescore"])
    if models["forward"] and models["reversed"]:
        figure_buckets(models, "by_rarity", "mean frequency rank of the source's words "
                       "(equal-size groups)", "Figure 3, right: BLEU by word rarity",
                       figures / "rarity")
        lines += ["## BLEU by word rarity (Figure 3, right)", "",
                  "A sentence's rarity: the mean frequency rank of its (Moses-tokenized) "
                  "words in the training sample, 1 = most frequent; eight groups of equal "
                  "size.", "", "![BLEU by rarity](figures/rarity.png)", "",
                  *bucket_table(models, "by_rarity", "mean rank"), ""]
    if "pca" in r:
        pca = r["pca"]
        import numpy as np

        plot_pca(np.array(pca["points"]), pca["phrases"],
                 f"Figure 2: encoder final states ({pca['run']}), 2-D PCA", figures / "pca")
        lines += ["## Sentence vectors (Figure 2)", "",
                  f"The paper's phrases (`examples/phrases.en`) through the encoder of "
                  f"`{pca['run']}` (the top layer's final h, 256 numbers), projected on "
                  "their two principal components. A Hansard model is used so that Figure 2 "
                  "comes from the same trained models as the rest; the phrases are not "
                  "parliamentary, so read the clusters with that in mind.", "",
                  "![PCA](figures/pca.png)", ""]
    if "synthetic" in r:
        lines += synthetic_section(r["synthetic"], figures)
    lines += commands_section(r, tasks)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(
        {"command": command, "results": {k: {kk: vv for kk, vv in v.items() if kk != "metrics"}
                                         for k, v in r.items()}}, indent=1) + "\n",
        encoding="utf-8")


def valid_ratio_table(train: dict[str, dict]) -> list[str]:
    """Validation perplexity through training, each direction's mean over its seeds, and
    reversed / forward: whether the gap opens early, closes or stays."""
    curves: dict[str, list[dict[int, float]]] = {"forward": [], "reversed": []}
    for name, t in train.items():
        curves[name.split("-seed")[0]].append(
            {m["step"]: m["valid_ppl"] for m in t["metrics"] if "valid_ppl" in m})
    if not curves["forward"] or not curves["reversed"]:
        return []
    steps = sorted(set.intersection(*(set(c) for cs in curves.values() for c in cs)))
    mean = {d: [statistics.mean(c[s] for c in cs) for s in steps] for d, cs in curves.items()}
    return ["| updates | " + " | ".join(f"{s:,}" for s in steps) + " |",
            "|---|" + "---:|" * len(steps),
            "| forward valid ppl (mean) | " + " | ".join(f"{v:.1f}" for v in mean["forward"])
            + " |",
            "| reversed valid ppl (mean) | " + " | ".join(f"{v:.1f}" for v in mean["reversed"])
            + " |",
            "| reversed / forward | " + " | ".join(
                f"{r / f:.3f}" for f, r in zip(mean["forward"], mean["reversed"])) + " |"]


def reversal_section(train, models, figures) -> list[str]:
    fwd, rev = models["forward"], models["reversed"]
    lines = ["## Reversing the source (Table 1's key trick)", "",
             "| model | best valid ppl | test ppl | BLEU, beam 12 |", "|---|---:|---:|---:|"]
    for m in fwd + rev:
        t = train.get(m["run"], {})
        lines.append(f"| {m['run']} | {t.get('best_valid_ppl', float('nan')):.2f} | "
                     f"{m['ppl']:.2f} | {m['beams'][2]['bleu']:.2f} |")
    ppl = {d: [m["ppl"] for m in ms] for d, ms in models.items()}
    bleu = {d: [m["beams"][2]["bleu"] for m in ms] for d, ms in models.items()}
    lines += [
        "", "| direction | seeds | test ppl, mean ± sd (range) | BLEU beam 12 | paper: ppl | "
        "paper: BLEU |", "|---|---:|---:|---:|---:|---:|",
        *(f"| {d} | {len(ms)} | {spread(ppl[d])} | {spread(bleu[d])} | {PAPER[d]['ppl']} | "
          f"{PAPER[d]['bleu']} |" for d, ms in models.items()), "",
        "- Test perplexity, reversed - forward: "
        f"{verdict(ppl['forward'], ppl['reversed'], 'lower')}.",
        f"- BLEU (beam 12), reversed - forward: "
        f"{verdict(bleu['forward'], bleu['reversed'], 'higher')}.",
        "",
    ]
    figure_buckets(models, "by_length", "source length (words)",
                   "Figure 3, left: BLEU by sentence length", figures / "length")
    lines += ["### By source length (Figure 3, left)", "",
              "![BLEU by length](figures/length.png)", "",
              *bucket_table(models, "by_length", "source words"), ""]
    if all("ppl_profile" in m for ms in models.values() for m in ms):
        figure_profile(models, figures / "profile")
        lines += ["### Where reversal acts: perplexity by source length and by target position",
                  "", "Teacher-forced test perplexity per target piece, on the same test "
                  "sentences, grouped by the source's length in words and by the target "
                  "piece's position in its sentence (1 = the first piece). A ratio below 1: "
                  "the reversed models predict those pieces better.", "",
                  "![perplexity profile](figures/profile.png)", "",
                  *profile_table(models, "by_length", "source words"), "",
                  *profile_table(models, "by_position", "target position"), ""]
    return lines


def profile_table(models: dict[str, list[dict]], key: str, what: str) -> list[str]:
    fwd, rev = models["forward"], models["reversed"]
    lines = [f"| {what} | target pieces | forward ppl | reversed ppl | reversed / forward |",
             "|---|---:|---:|---:|---:|"]
    for i, b in enumerate(fwd[0]["ppl_profile"][key]):
        if not b["tokens"]:
            continue
        f = [m["ppl_profile"][key][i]["ppl"] for m in fwd]
        r = [m["ppl_profile"][key][i]["ppl"] for m in rev]
        lines.append(f"| {_label(b)} | {b['tokens']:,} | {spread(f)} | {spread(r)} | "
                     f"{statistics.mean(r) / statistics.mean(f):.3f} |")
    return lines


def figure_profile(models: dict[str, list[dict]], out: Path) -> None:
    """Reversed / forward test perplexity per bucket: each reversed seed against the forward
    seeds' mean, by source length (left) and by target position (right)."""
    from seq2seq.analysis import figure, save_figure

    fig, axes = figure(1, 2, figsize=(11, 4.2))
    for ax, key, xlabel in zip(axes, ("by_length", "by_position"),
                               ("source length (words)", "target position (pieces)")):
        buckets = [b for b in models["forward"][0]["ppl_profile"][key] if b["tokens"]]
        keep = [i for i, b in enumerate(models["forward"][0]["ppl_profile"][key])
                if b["tokens"]]
        fwd = [statistics.mean(m["ppl_profile"][key][i]["ppl"] for m in models["forward"])
               for i in keep]
        for m in models["reversed"]:
            ax.plot(range(len(keep)), [m["ppl_profile"][key][i]["ppl"] / f
                                       for i, f in zip(keep, fwd)],
                    marker="o", label=m["run"])
        for m in models["forward"]:
            ax.plot(range(len(keep)), [m["ppl_profile"][key][i]["ppl"] / f
                                       for i, f in zip(keep, fwd)],
                    marker="s", linestyle=":", color="grey", alpha=0.7, label=m["run"])
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(keep)))
        ax.set_xticklabels([_label(b) for b in buckets], fontsize=8)
        ax.set(xlabel=xlabel, ylabel="test ppl / forward seeds' mean")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Where reversal acts: perplexity relative to the forward models")
    save_figure(fig, out)


def beams_section(r, models) -> list[str]:
    rev = models["reversed"]
    if not rev:
        return []
    lines = ["## Beam size and ensembles (Table 1)", "",
             "| system | beam 1 | beam 2 | beam 12 | paper (beam 12 unless said) |",
             "|---|---:|---:|---:|---|"]
    for d, paper in (("forward", "26.17"), ("reversed", "30.59")):
        ms = models[d]
        if ms:
            cells = [spread([m["beams"][i]["bleu"] for m in ms]) for i in range(3)]
            lines.append(f"| single {d} model, {len(ms)} seeds | {' | '.join(cells)} | "
                         f"{paper} |")
    paper = {2: "33.27", 3: "5 models: 33.00 (beam 1), 34.50 (2), 34.81 (12)"}
    for k in (2, 3):
        e = r.get(f"ensemble/{k}")
        if e:
            by_beam = {b["beam"]: b["bleu"] for b in e["beams"]}
            cells = [f"{by_beam[k]:.2f}" if k in by_beam else "-" for k in (1, 2, 12)]
            lines.append(f"| ensemble of {k} reversed ({', '.join(e['runs'])}) | "
                         f"{' | '.join(cells)} | {paper[k]} |")
    lines.append("")
    single = [statistics.mean(m["beams"][i]["bleu"] for m in rev) for i in range(3)]
    lines.append(f"- Beam: reversed models {single[0]:.2f} (beam 1) -> {single[1]:.2f} (2) -> "
                 f"{single[2]:.2f} (12), i.e. {single[1] - single[0]:+.2f} from a beam of 2 and "
                 f"{single[2] - single[1]:+.2f} more from 12 (the paper: most of the gain comes "
                 "from a small beam).")
    for k in (2, 3):
        e = r.get(f"ensemble/{k}")
        if e:
            beam12 = e["beams"][-1]["bleu"]
            gain = beam12 - single[2]
            lines.append(f"- Ensemble of {k}: {beam12:.2f} at beam 12, "
                         f"{gain:+.2f} over the mean single reversed model (the paper: "
                         "+2.68 for 2, +4.22 for 5).")
    return lines + [""]


def rescore_section(x) -> list[str]:
    lines = ["## Rescoring an n-best list (Table 2)", "",
             f"The list: {x['list']}; each hypothesis re-scored as {x['weight']} x log p(T|S) "
             f"of the rescorer + {1 - x['weight']:g} x the list's score, the best kept. The "
             "paper rescored a phrase-based system's 1000-best lists (33.30 -> 35.61 with a "
             "forward LSTM, 35.85 with a reversed one); no such system here, so the list comes "
             "from a forward LSTM, which leaves less to choose from (see the oracle).", "",
             "| | BLEU |", "|---|---:|", f"| the list's 1-best | {x['bleu_before']:.2f} |"]
    for name, bleu in x["after"].items():
        lines.append(f"| rescored with {name} | {bleu:.2f} ({bleu - x['bleu_before']:+.2f}) |")
    lines += [f"| oracle: the best of the list per sentence (sentence BLEU) | "
              f"{x['oracle_bleu']:.2f} |", ""]
    return lines


def synthetic_section(x, figures: Path) -> list[str]:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from synthetic import plot

    plot(x, figures / "synthetic")
    st = x["settings"]
    f, r = x["models"]["forward"], x["models"]["reversed"]
    return [
        "## The mechanism, isolated: a synthetic task", "",
        f"`{x['command']}` (`experiments/synthetic.py`): sources of {st['min_len']}-"
        f"{st['max_len']} random symbols out of {st['vocab']}, the target each symbol's fixed "
        "image with every two neighbours swapped. Forward and reversed models with the same "
        f"data, seed and {st['steps']:,} updates ({st['model']['num_layers']} x "
        f"{st['model']['hidden_size']} LSTMs); greedy decoding of {st['test']:,} test "
        "sequences.", "",
        "![synthetic](figures/synthetic.png)", "",
        "| | exact match | BLEU | valid NLL/symbol, short | valid NLL/symbol, long |",
        "|---|---:|---:|---:|---:|",
        *(f"| {n} | {100 * m['exact_match']:.1f}% | {m['bleu']:.2f} | "
          f"{m['valid_nll_short']:.3f} | {m['valid_nll_long']:.3f} |"
          for n, m in (("forward", f), ("reversed", r))), "",
        f"(short: sources under {x['long_from']} symbols; long: the rest.)", "",
    ]


def commands_section(r, tasks) -> list[str]:
    lines = ["## Commands and wall times", "",
             "Each run and evaluation below is a task of `experiments/paper.py`; its "
             "command is the equivalent `seq2seq` call (repository-relative paths; the "
             "Hansard folder is `--hansard`).", "",
             "| task | command | wall time |", "|---|---|---:|"]
    for t in tasks:
        x = r.get(t.name)
        if x:
            seconds = x.get("wall_seconds") if t.name.startswith("train/") else None
            seconds = seconds or x.get("task_seconds", 0)
            lines.append(f"| {t.name} | `{x.get('command', '')}` | {seconds / 60:.1f} min |")
    total = sum(x.get("task_seconds", 0) for x in r.values())
    lines += ["", f"Sum of task times: {total / 3600:.2f} h of one core each; two at a time."]
    return lines
