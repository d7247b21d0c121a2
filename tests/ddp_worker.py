"""Run under torchrun by tests/test_distributed.py: train, then save this rank's parameters.

    torchrun --standalone --nproc-per-node 2 tests/ddp_worker.py CFG DATA OUT

Trains exactly as `seq2seq train CFG --data DATA --out OUT` does (rank 0 writes OUT/last.pt),
then every rank writes its own copy of the model's parameters to OUT/rank{r}.pt, so the
test can check that the ranks agree without the product code dumping anything.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from seq2seq.config import load_config
from seq2seq.train import Trainer, init_distributed


def main(cfg_path: str, data_dir: str, out: str) -> None:
    cfg = load_config(cfg_path)
    init_distributed(cfg.train.device)
    try:
        trainer = Trainer(cfg, data_dir, out)
        trainer.train()
        dist.barrier()  # rank 0 has created OUT
        torch.save(trainer.model.state_dict(), Path(out) / f"rank{dist.get_rank()}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
