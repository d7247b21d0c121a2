"""Peak memory and time of ONE training step of the paper's full model on this CPU.

Builds `configs/sutskever2014.yaml` (4 x 1000 LSTMs, 160k / 80k words, 384M parameters),
feeds random token ids (batch 128, 30 source and 30 target tokens, so 128 x 31 = 3,968
target positions with </s>), and runs forward + backward + clipping + SGD once, in fp32
or (`--precision bf16`) under bf16 autocast as `seq2seq train` runs it, in a fresh
process per setting, reporting that process's peak RSS (ru_maxrss):

- `loss_chunk=N`: the project's output layer (`seq2seq.model.chunked_loss`), N positions
  at a time;
- `autograd`: the textbook output layer (full logits, log_softmax, autograd backward),
  i.e. what the chunked layer replaces.

    .venv/bin/python -m bench.step_memory                 # all settings
    .venv/bin/python -m bench.step_memory --setting 512   # one, in this process
    .venv/bin/python -m bench.step_memory --precision bf16 --setting 4096
    .venv/bin/python -m bench.step_memory --precision bf16 --setting 4096 --no-bf16-kernels

In bf16 the step runs seq2seq's kernels (`seq2seq.bf16`) as training does, unless
`--no-bf16-kernels` (PyTorch's code: oneDNN's LSTM).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from seq2seq.config import load_config
from seq2seq.device import autocast, peak_rss_mb
from seq2seq.model import Seq2Seq, count_parameters
from seq2seq.vocab import BOS_ID

ROOT = Path(__file__).resolve().parents[1]
BATCH, SRC_LEN, TGT_LEN = 128, 30, 30
SETTINGS = ("512", "4096", "autograd")


def one_step(setting: str, threads: int, precision: str,
             bf16_kernels: bool = True) -> dict[str, float | str]:
    """Build the model and SGD, run one step on random ids; sizes in GB, time in seconds."""
    torch.set_num_threads(threads)
    cfg = load_config(ROOT / "configs" / "sutskever2014.yaml")
    torch.manual_seed(0)
    model = Seq2Seq(cfg.model.src_vocab, cfg.model.tgt_vocab, cfg.model)
    model.use_bf16_kernels(bf16_kernels)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.optim.lr, fused=True)
    src = torch.randint(4, cfg.model.src_vocab, (BATCH, SRC_LEN))
    src_lens = torch.full((BATCH,), SRC_LEN)
    tgt_out = torch.randint(4, cfg.model.tgt_vocab, (BATCH, TGT_LEN + 1))  # y </s>
    tgt_in = torch.cat([torch.full((BATCH, 1), BOS_ID), tgt_out[:, :-1]], 1)  # <s> y
    before = peak_rss_mb() / 1024
    start = time.perf_counter()
    with autocast(torch.device("cpu"), precision):
        if setting == "autograd":
            loss = model.token_nll(src, src_lens, tgt_in, tgt_out).sum()
        else:
            loss, _ = model(src, src_lens, tgt_in, tgt_out, chunk=int(setting))
    optimizer.zero_grad(set_to_none=True)
    (loss / BATCH).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_norm)
    optimizer.step()
    seconds = time.perf_counter() - start
    return {"setting": setting, "params": count_parameters(model)["total"],
            "positions": BATCH * (TGT_LEN + 1), "rss_before_step_gb": round(before, 2),
            "peak_rss_gb": round(peak_rss_mb() / 1024, 2), "step_seconds": round(seconds, 1),
            "threads": threads, "precision": precision, "bf16_kernels": bf16_kernels}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--setting", choices=SETTINGS, help="run one setting in this process")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--no-bf16-kernels", dest="bf16_kernels", action="store_false",
                        help="bf16: PyTorch's code instead of seq2seq's kernels")
    args = parser.parse_args()
    if args.setting:
        print(json.dumps(one_step(args.setting, args.threads, args.precision,
                                  args.bf16_kernels)), flush=True)
        return
    for setting in SETTINGS:  # a fresh process each, so that peaks do not mix
        subprocess.run([sys.executable, "-m", "bench.step_memory", "--setting", setting,
                        "--threads", str(args.threads), "--precision", args.precision,
                        *([] if args.bf16_kernels else ["--no-bf16-kernels"])], check=True)


if __name__ == "__main__":
    main()
