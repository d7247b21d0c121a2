"""Peer systems on the benchmark configuration of `../shared/PEERS.md`: OpenNMT-py 3.5.1.

OpenNMT-py runs from its own venv (`bench/.peers/onmt-venv`, made by `install_onmt`) so
that it never touches the project's `.venv`. It sees exactly our data: `export_onmt_data`
writes the tokenized training text of the benchmark data directory (ids mapped back to
words, so out-of-vocabulary words read `<unk>`), vocabulary files holding our 10,000 words
per side (ONMT adds its own 4 specials: 10,004, like ours) and the first 1,000 test
sources tokenized by our tokenizer.

`run_onmt_train` trains the PEERS.md configuration for some steps and reports steady-state
throughput and peak memory; `run_onmt_translate` decodes the test sources with one beam
size and reports speed, peak memory and detokenized sacreBLEU. Each run is a fresh
`onmt_train` / `onmt_translate` process with 2 threads.

Our decoding runs exact in each of `--precisions`, and with a vocabulary shortlist in each
of `--shortlist-precisions` (rows "seq2seq int8 + shortlist", "seq2seq bf16 + shortlist":
the benchmark data's shortlist, `bench_shortlist`, of `--shortlist-translations` and
`--shortlist-frequent`, by default `seq2seq shortlist`'s), each row with its BLEU, to set
beside the exact row's.

    .venv/bin/python -m bench.peers --onmt-smoke     # a few seconds of each, not a benchmark
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import (
    BENCH_CONFIG,
    BENCH_DATA,
    CORPUS,
    WORK,
    best_ceiling,
    ceiling_of_runs,
    median,
    prepare_bench_data,
    proc_kb,
    process_tree,
    run_child,
)
from seq2seq.config import SHORTLIST_FREQUENT, SHORTLIST_TRANSLATIONS

BENCH = Path(__file__).resolve().parent
PEERS_DIR = BENCH / ".peers"
ONMT_VENV = PEERS_DIR / "onmt-venv"
ONMT_WORK = PEERS_DIR / "onmt"
ONMT_VERSION = "3.5.1"
TEST_SENTENCES = 1000

# What `onmt_train` / `onmt_translate` import at start-up, found by trying: OpenNMT-py's
# declared requirements pin torch<2.3 (hence --no-deps), and it imports every module of
# `onmt.transforms` on start-up, so spacy, fasttext, pyahocorasick, rapidfuzz and regex are
# needed although no transform is used. Versions are the ones measured with.
ONMT_DEPS = (
    "configargparse==1.9.0", "pyyaml==6.0.3", "numpy==2.4.6", "pyonmttok==1.38.1",
    "sacrebleu==2.6.0", "spacy==3.8.18", "fasttext-wheel==0.9.2", "pyahocorasick==2.3.1",
    "rapidfuzz==3.14.6", "regex==2026.11.15",
)

# The PEERS.md model and optimizer. OpenNMT-py cannot reverse the source: it reads it in
# the given order, which costs exactly the same. `-param_init 0.08` is our init range (it
# does not change the cost); `-vocab_size_multiple 1` keeps the vocabularies at 10,004
# (the default, 8, would pad them to 10,008).
ONMT_TRAIN_FLAGS = (
    "-encoder_type", "rnn", "-decoder_type", "rnn", "-rnn_type", "LSTM", "-layers", "2",
    "-word_vec_size", "256", "-hidden_size", "512", "-global_attention", "none",
    "-input_feed", "0", "-optim", "sgd", "-learning_rate", "0.7", "-max_grad_norm", "5",
    "-batch_type", "sents", "-batch_size", "64", "-dropout", "0", "-param_init", "0.08",
    "-vocab_size_multiple", "1",
)


# --------------------------------------------------------------------------- install


@functools.cache
def install_onmt(venv_dir: Path = ONMT_VENV) -> Path:
    """Create the OpenNMT-py venv unless it already works; return its `bin` directory.

    Checked once per process (the check imports OpenNMT-py: about 3 s).

    torch is pinned to 2.13.0: pip then takes the CPU wheel of /opt/wheels (its `+cpu`
    local version sorts above PyPI's CUDA build); an unpinned torch would pull CUDA.
    """
    venv_dir = Path(venv_dir)
    python = venv_dir / "bin" / "python"
    if _onmt_works(python):
        return python.parent
    subprocess.run([sys.executable, "-m", "venv", str(venv_dir)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "torch==2.13.0"], check=True)
    subprocess.run([*pip, "--no-deps", f"OpenNMT-py=={ONMT_VERSION}"], check=True)
    subprocess.run([*pip, *ONMT_DEPS], check=True)
    if not _onmt_works(python):
        raise RuntimeError(f"{venv_dir}: OpenNMT-py still does not import after installing")
    return python.parent


def _onmt_works(python: Path) -> bool:
    """Whether `python` imports onmt_train's and onmt_translate's code with the CPU torch."""
    check = (f"import onmt, onmt.bin.train, onmt.bin.translate, torch; "
             f"assert onmt.__version__ == {ONMT_VERSION!r}, onmt.__version__; "
             f"assert torch.__version__ == '2.13.0+cpu', torch.__version__")
    return python.exists() and subprocess.run(
        [str(python), "-c", check], capture_output=True).returncode == 0


# --------------------------------------------------------------------------- data


def export_onmt_data(data_dir: Path = BENCH_DATA,
                     out_dir: Path = ONMT_WORK / "data") -> dict[str, Path]:
    """Our benchmark data as OpenNMT-py reads it; the paths, by name.

    - `train.src`, `train.tgt`: one tokenized sentence per line, ids mapped back to words
      (out-of-vocabulary words read `<unk>`, which OpenNMT-py maps to its own).
    - `vocab.src`, `vocab.tgt`: our words without our 4 specials, one per line, no counts
      (OpenNMT-py 3.5's format; it prepends its own `<unk> <blank> <s> </s>`).
    - `test.src`: the first TEST_SENTENCES lines of test.en, tokenized as `prepare` did.
    - `test.ref`: the first TEST_SENTENCES lines of test.fr, raw (sacreBLEU's reference).

    A copy of the data directory's meta.json, written last, marks a complete export of
    that data: then nothing is rewritten.
    """
    from seq2seq.data import DataDir, TokenArray
    from seq2seq.text import read_lines
    from seq2seq.vocab import BOS_ID, EOS_ID, PAD_ID

    out_dir = Path(out_dir)
    names = ("train.src", "train.tgt", "vocab.src", "vocab.tgt", "test.src", "test.ref")
    paths = {name: out_dir / name for name in names}
    data = DataDir(data_dir)
    stamp = out_dir / "meta.json"
    meta = (data.path / "meta.json").read_text()
    if stamp.exists() and stamp.read_text() == meta:
        return paths
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    for side, vocab in (("src", data.src_vocab), ("tgt", data.tgt_vocab)):
        _write_lines(paths[f"vocab.{side}"], vocab.words[4:])
        arr = TokenArray(data.path / f"train.{side}")
        if np.isin(arr.ids, (PAD_ID, BOS_ID, EOS_ID)).any():
            raise ValueError(f"{data.path}: train.{side} holds <pad>, <s> or </s> ids")
        words = np.array(vocab.words, dtype=object)
        _write_lines(paths[f"train.{side}"],
                     (" ".join(words[arr[i]]) for i in range(len(arr))))
    tokenizer = data.tokenizer("src")
    sources = [s for _, s in zip(range(TEST_SENTENCES), read_lines(CORPUS / "test.en"))]
    _write_lines(paths["test.src"], (" ".join(tokenizer.tokenize(s)) for s in sources))
    refs = [r for _, r in zip(range(TEST_SENTENCES), read_lines(CORPUS / "test.fr"))]
    _write_lines(paths["test.ref"], refs)
    stamp.write_text(meta)
    return paths


def _write_lines(path: Path, lines) -> None:
    """Write `lines` to `path` atomically (a temporary name, then a rename)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for line in lines:
            f.write(line + "\n")
    os.replace(tmp, path)


# --------------------------------------------------------------------------- runs


def _run(argv: list[str], log_path: Path, threads: int) -> tuple[float, float]:
    """Run `argv` with `threads` torch threads, output to `log_path`; its memory peaks in MB.

    Returns (largest peak RSS of one process, peak memory of the process tree):
    - the first is `ru_maxrss` from `wait4`: the largest peak resident set among the
      process and the children it waited for (for onmt_train, its 2 DataLoader workers
      peak higher than the trainer itself while they read the corpus);
    - the second is the peak over time of the tree's summed proportional set size (PSS:
      shared pages split among the processes that share them), sampled every 0.2 s.
    """
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               # OpenNMT-py 3.5 calls torch.load without weights_only; torch >= 2.6 would
               # refuse its checkpoints (they hold the options and vocabularies).
               TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    tree_kb = 0
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            pss = sum(proc_kb(p, "smaps_rollup", "Pss") for p in process_tree(proc.pid))
            tree_kb = max(tree_kb, pss)
            time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(argv[0]).name} failed ({proc.returncode}), see {log_path}")
    return usage.ru_maxrss / 1024, tree_kb / 1024


# One report line per step (`-report_every 1`), e.g.
# "Step 21/   60; acc: 3.9; ppl: 9964.4; xent: 9.2; lr: 0.70000; sents:      64; bsz:  549/ 613/64;
#  2612/2916 tok/s;      4 sec;"  -- bsz: source / target tokens / sentences per batch.
_STEP_LINE = re.compile(r"Step\s+(\d+)/\s*\d+;.*?bsz:\s*(\d+)/\s*(\d+)/\s*\d+;"
                        r"\s*(\d+)/\s*(\d+) tok/s;")
_VOCAB_LINE = re.compile(r"\* (src|tgt) vocab size = (\d+)")


def run_onmt_train(steps: int, *, warmup: int = 20, out_dir: Path = ONMT_WORK / "train",
                   threads: int = 2, seed: int = 1) -> dict:
    """Train the PEERS.md configuration for `steps` updates; throughput after `warmup` steps.

    Returns a record with `tgt_tok_s` and `src_tgt_tok_s` (steady state: the updates after
    the first `warmup`), `seconds` and the token counts they cover, `peak_rss_mb` and
    `tree_peak_mb` (see `_run`), `vocab` (the sizes OpenNMT-py reports) and `model` (the
    checkpoint saved at the end).

    How the steady-state rate is measured: with `-report_every 1`, OpenNMT-py logs every
    update's source and target token counts (`bsz`, exact with one batch per report) and
    its rate (`tok/s`, over the wall time since the previous report, so the reports tile
    the run without gaps). An update's seconds are its target tokens over its target rate;
    the steady-state rate is the tokens of the updates after `warmup` over the sum of their
    seconds. Start-up (imports, reading the corpus into the DataLoader's bucket, the first
    updates) and the final checkpoint are outside it. Target tokens count </s>, source
    tokens none, as ours.

    OpenNMT-py's batching (its defaults): 2 DataLoader worker processes each read their half
    of the corpus into one bucket (262,144 > 157k pairs), sort it by length and cut it into
    batches of 64 sentences, so batches carry almost no padding; a batch skips a source
    sentence it already holds. The workers finish reading before the first update and
    are idle afterwards, but hold about 1.1 GB each: see `tree_peak_mb`.
    """
    if steps <= warmup:
        raise ValueError(f"steps ({steps}) must exceed warmup ({warmup})")
    bin_dir = install_onmt()
    data = export_onmt_data()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = out_dir / "data.yaml"
    config.write_text(json.dumps({  # JSON is YAML
        "data": {"corpus_1": {"path_src": str(data["train.src"]),
                              "path_tgt": str(data["train.tgt"])}},
        "src_vocab": str(data["vocab.src"]), "tgt_vocab": str(data["vocab.tgt"]),
    }, indent=2) + "\n")
    model_prefix = out_dir / "model"
    log_path = out_dir / "train.log"
    argv = [str(bin_dir / "onmt_train"), "-config", str(config), *ONMT_TRAIN_FLAGS,
            "-train_steps", str(steps), "-save_checkpoint_steps", str(steps),
            "-save_model", str(model_prefix), "-report_every", "1", "-seed", str(seed)]
    rss, tree = _run(argv, log_path, threads)
    log = log_path.read_text(encoding="utf-8")
    src = tgt = 0
    seconds = 0.0
    for m in _STEP_LINE.finditer(log):
        step, src_tok, tgt_tok, tgt_rate = int(m[1]), int(m[2]), int(m[3]), int(m[5])
        if step > warmup:
            src, tgt, seconds = src + src_tok, tgt + tgt_tok, seconds + tgt_tok / tgt_rate
    if not seconds:
        raise RuntimeError(f"no step reports after step {warmup} in {log_path}")
    return {
        "system": f"OpenNMT-py {ONMT_VERSION}", "steps": steps, "warmup": warmup,
        "seconds": round(seconds, 2), "src_tokens": src, "tgt_tokens": tgt,
        "tgt_tok_s": round(tgt / seconds), "src_tgt_tok_s": round((src + tgt) / seconds),
        "peak_rss_mb": round(rss), "tree_peak_mb": round(tree), "threads": threads,
        "vocab": {side: int(n) for side, n in _VOCAB_LINE.findall(log)},
        "model": str(model_prefix) + f"_step_{steps}.pt", "log": str(log_path),
    }


_TIME_LINE = re.compile(r"Tokens per second: ([\d.]+)")

# `onmt_translate` with the quantization that its `-precision int8` means to make (see
# `run_onmt_translate`): OpenNMT-py's own call, on the model `load_test_model` returns.
ONMT_INT8_TRANSLATE = """
import sys, torch
import onmt.model_builder
from onmt.bin.translate import main
load = onmt.model_builder.load_test_model
def load_quantized(*args, **kwargs):
    vocabs, model, model_opt = load(*args, **kwargs)
    torch.quantization.quantize_dynamic(model, dtype=torch.qint8, inplace=True)
    print("quantized:", sorted({type(m).__name__ for m in model.modules()
                                if "quantized" in type(m).__module__}), flush=True)
    return vocabs, model, model_opt
onmt.model_builder.load_test_model = load_quantized
sys.argv[0] = "onmt_translate"
main()
"""


def run_onmt_translate(model: str | Path, beam: int, *, sentences: int = TEST_SENTENCES,
                       batch_size: int = 64, out_dir: Path = ONMT_WORK / "translate",
                       threads: int = 2, precision: str = "fp32") -> dict:
    """Decode the first `sentences` test sources with `beam` (1: greedy); speed and BLEU.

    `precision` int8 is OpenNMT-py's `-precision int8` as it is meant to work: PyTorch's
    dynamic quantization of every linear layer and LSTM of the model, made when the model
    is loaded, by OpenNMT-py's own call (`torch.quantization.quantize_dynamic(model,
    dtype=torch.qint8, inplace=True)`: one scale per weight matrix). In 3.5.1 that call is
    never reached (`load_test_model` compares the option, the string "int8", with
    `torch.int8`), so the flag alone decodes in fp32, with the same output as fp32;
    `ONMT_INT8_TRANSLATE` runs `onmt_translate` with the call made after loading.

    Returns a record with `sent_s`, `tgt_tok_s` (output tokens with one </s> per sentence,
    as ours), `seconds`, `peak_rss_mb` and `tree_peak_mb` (one process here: see `_run`),
    `bleu` (detokenized sacreBLEU against the raw references, as bench/decode_speed.py)
    and `output` (the tokenized translations).

    Timing is OpenNMT-py's own `-report_time`: from its first batch to its last output
    line (reading and batching the tokenized source, search, writing), not loading the
    model. It prints the total time to 0.1 s only, so the seconds are recovered from its
    precise "Tokens per second" (output words without </s> / seconds) and the word count.
    Length limit: OpenNMT-py has no per-sentence `a x source + b`; `-max_length_ratio 2`
    stops a batch at 2 x its longest source + 5 tokens. Hypotheses are scored by their
    log-probability (`-length_penalty none`), as ours.
    """
    from sacrebleu.metrics import BLEU

    from seq2seq.data import DataDir

    bin_dir = install_onmt()
    data = export_onmt_data()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    src_path = data["test.src"]
    if sentences != TEST_SENTENCES:
        src_path = out_dir / f"test.{sentences}.src"
        _write_lines(src_path, data["test.src"].read_text(encoding="utf-8").splitlines()
                     [:sentences])
    output = out_dir / f"hyp.beam{beam}.{precision}.tok.fr"
    log_path = out_dir / f"translate.beam{beam}.{precision}.log"
    command = ([str(bin_dir / "python"), "-c", ONMT_INT8_TRANSLATE] if precision == "int8"
               else [str(bin_dir / "onmt_translate")])
    argv = [*command, "-model", str(model), "-src", str(src_path),
            "-output", str(output), "-beam_size", str(beam), "-batch_type", "sents",
            "-batch_size", str(batch_size), "-max_length_ratio", "2",
            "-length_penalty", "none", "-report_time", "-precision", precision]
    rss, tree = _run(argv, log_path, threads)
    if precision == "int8" and "quantized: [" not in log_path.read_text(encoding="utf-8"):
        raise RuntimeError(f"onmt_translate did not quantize the model, see {log_path}")
    hyps = [line.split() for line in output.read_text(encoding="utf-8").splitlines()]
    words = sum(len(h) for h in hyps)
    rate = _TIME_LINE.search(log_path.read_text(encoding="utf-8"))
    if rate is None or len(hyps) != sentences:
        raise RuntimeError(f"unexpected onmt_translate output, see {log_path}")
    seconds = words / float(rate[1])
    detok = DataDir(BENCH_DATA).tokenizer("tgt")
    refs = data["test.ref"].read_text(encoding="utf-8").splitlines()[:sentences]
    bleu = BLEU().corpus_score([detok.detokenize(h) for h in hyps], [refs]).score
    return {
        "system": f"OpenNMT-py {ONMT_VERSION}", "mode": "greedy" if beam == 1 else f"beam {beam}",
        "beam": beam, "precision": precision, "sentences": sentences, "batch_size": batch_size,
        "seconds": round(seconds, 3), "sent_s": round(sentences / seconds, 1),
        "tgt_tok_s": round((words + sentences) / seconds), "bleu": round(bleu, 2),
        "peak_rss_mb": round(rss), "tree_peak_mb": round(tree), "threads": threads,
        "output": str(output),
    }


# --------------------------------------------------------------------------- ours


def run_ours_train(steps: int, precision: str, *, warmup: int = 20) -> dict:
    """Our steady-state training throughput (bench/train_speed.py, a fresh process)."""
    return run_child(["-m", "bench.train_speed", "--child", "train", "--precision",
                      precision, "--steps", str(steps - warmup), "--warmup", str(warmup)])


def train_ours_model(steps: int, precision: str) -> Path:
    """Our model of the quality comparison: `steps` updates, saved as best.pt.

    A run directory that already holds this many updates is reused (training resumes
    from last.pt and finds nothing left to do).
    """
    run = WORK / "peers" / f"ours-{precision}-{steps}"
    subprocess.run([sys.executable, "-m", "seq2seq", "train", str(BENCH_CONFIG),
                    "--data", str(BENCH_DATA), "--out", str(run),
                    f"optim.max_steps={steps}", f"train.precision={precision}",
                    f"train.valid_every={steps}", "train.log_every=500"], check=True)
    return run / "best.pt"


def bench_shortlist(translations: int, frequent: int) -> Path:
    """The vocabulary shortlist of the benchmark data (`seq2seq shortlist`), built unless
    one of these sizes for the data's vocabularies is there already."""
    from seq2seq.data import DataDir
    from seq2seq.errors import CheckpointError
    from seq2seq.shortlist import Shortlist

    out = WORK / "peers" / f"shortlist-{translations}-{frequent}.pt"
    data = DataDir(BENCH_DATA)
    try:
        Shortlist.load(out, data.src_vocab, data.tgt_vocab)
    except CheckpointError:
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "seq2seq", "shortlist", "--data", str(BENCH_DATA),
                        "--out", str(out), "--translations", str(translations),
                        "--frequent", str(frequent)], check=True)
    return out


def run_ours_translate(model: Path, beam: int, precision: str,
                       shortlist: Path | None = None) -> dict:
    """Our decoding speed and BLEU (bench/decode_speed.py, a fresh process), with a
    vocabulary shortlist if given."""
    extra = ["--shortlist", str(shortlist)] if shortlist else []
    return run_child(["-m", "bench.decode_speed", "--child", "--model", str(model),
                      "--beams", str(beam), "--precision", precision,
                      "--sentences", str(TEST_SENTENCES), "--batch-size", "64", *extra])


# --------------------------------------------------------------------------- main


def _row(cells: list) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def report(train: dict[str, list[dict]], ceilings: dict[str, dict],
           decode: dict[tuple[str, int], list[dict]], peer: str,
           peer_int8: str | None = None) -> str:
    """The Markdown tables: medians over the rounds, ratios to the peer (fp32; in decoding,
    also to its int8 rows, and each round's ratios to each)."""
    med = lambda rs, key: median([r[key] for r in rs])  # noqa: E731
    lines = []
    if train:
        lines += ["| system | train tgt tok/s | train src+tgt tok/s | x peer | MFU | peak RSS | "
                  "peak memory of the process tree |", "|---|---:|---:|---:|---:|---:|---:|"]
        base = med(train[peer], "tgt_tok_s")
    for name, rs in train.items():
        mfu = ceilings.get(name)
        lines.append(_row([
            name, f"{med(rs, 'tgt_tok_s'):,.0f}", f"{med(rs, 'src_tgt_tok_s'):,.0f}",
            f"{med(rs, 'tgt_tok_s') / base:.2f}",
            f"{mfu['mfu']:.0%} of {mfu['ceiling_gflops']:.0f} GFLOP/s" if mfu else "",
            f"{max(r['peak_rss_mb'] for r in rs):,} MB",
            f"{max(r.get('tree_peak_mb', r['peak_rss_mb']) for r in rs):,} MB"]))
    peers = [peer] + ([peer_int8] if peer_int8 else [])
    if decode:
        lines += ["", "| system | mode | sent/s | tgt tok/s | "
                  + " | ".join(f"x {p.split()[-1]} peer" for p in peers)
                  + " | BLEU | peak RSS | round ratios |",
                  "|---|---|---:|---:|" + "---:|" * len(peers) + "---:|---:|---|"]
    for (name, beam), rs in decode.items():
        ratios = [f"{med(rs, 'sent_s') / med(decode[(p, beam)], 'sent_s'):.2f}" for p in peers]
        rounds = "; ".join(
            "/".join(f"{r['sent_s'] / q['sent_s']:.2f}" for r, q in zip(rs, decode[(p, beam)]))
            for p in peers) if name not in peers else ""
        lines.append(_row([name, rs[0]["mode"], f"{med(rs, 'sent_s'):,.1f}",
                           f"{med(rs, 'tgt_tok_s'):,.0f}", *ratios,
                           f"{rs[0]['bleu']:.2f}", f"{max(r['peak_rss_mb'] for r in rs):,} MB",
                           rounds]))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--onmt-smoke", action="store_true",
                        help="install/check OpenNMT-py, train 60 steps, decode 50 sentences "
                             "greedy, beam 5, beam 12 and beam 5 in int8 (seconds each; not a "
                             "benchmark)")
    parser.add_argument("--precisions", nargs="+", default=["bf16", "fp32", "int8"],
                        choices=["bf16", "fp32", "int8"],
                        help="ours, each against the peer: training (bf16, fp32), and "
                             "decoding (all)")
    parser.add_argument("--shortlist-precisions", nargs="*", default=["int8", "bf16"],
                        choices=["bf16", "fp32", "int8"],
                        help="ours again in decoding, with the benchmark data's vocabulary "
                             "shortlist (rows 'seq2seq P + shortlist'); none: no such rows")
    parser.add_argument("--shortlist-translations", type=int, default=SHORTLIST_TRANSLATIONS,
                        metavar="K", help="its target words per source word (default "
                                          "%(default)s, `seq2seq shortlist`'s)")
    parser.add_argument("--shortlist-frequent", type=int, default=SHORTLIST_FREQUENT,
                        metavar="N", help="its frequent target words (default %(default)s)")
    parser.add_argument("--peer-precisions", nargs="+", default=["fp32", "int8"],
                        choices=["fp32", "int8"],
                        help="OpenNMT-py's decoding precisions (it trains in fp32)")
    parser.add_argument("--speed-steps", type=int, default=220,
                        help="updates per training-speed run, 20 of them warm-up (default 220)")
    parser.add_argument("--quality-steps", type=int, default=2454,
                        help="updates of each model that is decoded (default 2454: 1 epoch)")
    parser.add_argument("--beams", type=int, nargs="+", default=[1, 5, 12])
    parser.add_argument("--rounds", type=int, default=3,
                        help="A/B rounds: every system once per round, medians reported")
    parser.add_argument("--parts", nargs="+", default=["train", "decode"],
                        choices=["train", "decode"], help="what to measure (default both)")
    parser.add_argument("--json", type=Path,
                        help="every run's record, one JSON line each (default "
                             "bench/.work/peers-PARTS.jsonl)")
    parser.add_argument("--report", type=Path,
                        help="the Markdown tables, also printed (default "
                             "bench/.work/peers-PARTS.md)")
    args = parser.parse_args()
    from seq2seq.device import cpu_has_bf16

    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    parts = "-".join(sorted(set(args.parts)))
    args.json = args.json or WORK / f"peers-{parts}.jsonl"
    args.report = args.report or WORK / f"peers-{parts}.md"
    if args.onmt_smoke:
        train = run_onmt_train(60)
        print(json.dumps(train), flush=True)
        for beam, precision in ((1, "fp32"), (5, "fp32"), (12, "fp32"), (5, "int8")):
            print(json.dumps(run_onmt_translate(train["model"], beam, sentences=50,
                                                precision=precision)), flush=True)
        return

    prepare_bench_data()
    install_onmt()
    export_onmt_data()
    peer = f"OpenNMT-py {ONMT_VERSION} fp32"
    peer_int8 = f"OpenNMT-py {ONMT_VERSION} int8" if "int8" in args.peer_precisions else None
    ours = {f"seq2seq {p}": p for p in args.precisions if p != "int8"}  # training
    ours_decode = {f"seq2seq {p}": (p, None) for p in args.precisions}
    WORK.mkdir(parents=True, exist_ok=True)
    log = open(args.json, "w", encoding="utf-8")

    def record(r: dict) -> dict:
        log.write(json.dumps(r) + "\n")
        log.flush()
        print(json.dumps(r), flush=True)
        return r

    def finish(train, ceilings, decode) -> None:
        log.close()
        trained = "bf16" if cpu_has_bf16() else "fp32 (asked for bf16; this CPU has none)"
        about = (f"; decoding: our model trained {args.quality_steps} updates in {trained}, "
                 "decoded in the precision named" if decode else "")
        text = (f"{time.strftime('%Y-%m-%d')}, {args.rounds} rounds, medians{about}\n\n"
                + report(train, ceilings, decode, peer, peer_int8) + "\n")
        args.report.write_text(text, encoding="utf-8")
        print("\n" + text)

    # 1. Training throughput, the systems alternating within each round, and in each round
    #    the matmul ceiling of our step, for the MFU (each shape at its best rate of the rounds).
    train: dict[str, list[dict]] = {}
    ceilings: dict[str, dict] = {}
    round_ceilings: dict[str, list[dict]] = {name: [] for name in ours}
    for _ in range(args.rounds if "train" in args.parts else 0):
        train = train or {name: [] for name in [*ours, peer]}
        for name, p in ours.items():
            train[name].append(record(run_ours_train(args.speed_steps, p)))
            round_ceilings[name].append(record(ceiling_of_runs(p, train[name][-1:])))
        train[peer].append(record(run_onmt_train(args.speed_steps)))
    if train:
        ceilings = {name: record(best_ceiling(round_ceilings[name], train[name]))
                    for name in ours}
    if "decode" not in args.parts:
        return finish(train, ceilings, {})

    # 2. The models to decode: the same number of updates on the same data. Ours is trained
    #    once, in bf16 (the precision we recommend on CPUs with AVX-512 BF16), and decoded in
    #    each precision.
    model = train_ours_model(args.quality_steps, "bf16")
    if args.shortlist_precisions:
        shortlist = bench_shortlist(args.shortlist_translations, args.shortlist_frequent)
        ours_decode |= {f"seq2seq {p} + shortlist": (p, shortlist)
                        for p in args.shortlist_precisions}
    onmt_model = ONMT_WORK / "quality" / f"model_step_{args.quality_steps}.pt"
    if not onmt_model.exists():
        onmt_model = Path(run_onmt_train(args.quality_steps, out_dir=ONMT_WORK / "quality")
                          ["model"])

    # 3. Decoding, alternating likewise.
    peers = {peer: "fp32", **({peer_int8: "int8"} if peer_int8 else {})}
    decode: dict[tuple[str, int], list[dict]] = {
        (name, beam): [] for beam in args.beams for name in [*ours_decode, *peers]}
    for _ in range(args.rounds):
        for beam in args.beams:
            for name, (p, shortlist) in ours_decode.items():
                decode[(name, beam)].append(record(run_ours_translate(model, beam, p,
                                                                      shortlist)))
            for name, p in peers.items():
                decode[(name, beam)].append(record(run_onmt_translate(onmt_model, beam,
                                                                      precision=p)))
    finish(train, ceilings, decode)


if __name__ == "__main__":
    main()
