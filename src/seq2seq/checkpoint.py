"""Checkpoints: written atomically, read without unpickling arbitrary objects.

A checkpoint is a dict of tensors and plain values (`torch.load(weights_only=True)` reads
it) that carries everything needed to use the model: the config, both vocabularies, the
tokenizer settings (with any SentencePiece model), and the reversal flag inside the config.
Training checkpoints (`last.pt`) also carry the optimizer, schedule, RNG and data position.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from seq2seq.errors import CheckpointError

FORMAT = "seq2seq-checkpoint"
VERSION = 1
REQUIRED = ("config", "model", "src_vocab", "tgt_vocab", "tokenizer", "max_len")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write `state` to `path` atomically: a temp file in the same directory, fsync, rename.

    A crash at any moment leaves either the old file or the new one, never a partial one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, "version": VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        # torch.save reports a full disk as a RuntimeError from its zip writer
        if isinstance(err, OSError) and err.errno not in (errno.ENOSPC, errno.EDQUOT) or \
                isinstance(err, RuntimeError) and not _disk_full(path):
            raise
        raise CheckpointError(f"{path}: no space left on the device; the checkpoint was not "
                              "written (an earlier one there is intact)") from None
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _disk_full(path: Path) -> bool:
    """Whether the filesystem of `path` has (next to) no space left."""
    try:
        return shutil.disk_usage(path.parent).free < 1 << 20
    except OSError:
        return False


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`; CheckpointError if it is anything else."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for a damaged file; all mean the same
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or corrupt?): {first[:200]}"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a seq2seq checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {state.get('version')} (this seq2seq reads {VERSION})"
        )
    missing = [k for k in REQUIRED if k not in state]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return state
