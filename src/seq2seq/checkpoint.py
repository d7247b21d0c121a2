"""The checkpoint format, in one place: what a file holds, how it is written and read.

A *model bundle* (`best.pt`) carries everything needed to use the model:

    config                 the run's config, `Config.to_dict()` (the reversal is in it:
                           model.reverse_source; true / false from before words and
                           pieces were told apart read as "pieces" / "none")
    model                  the Seq2Seq's state_dict
    src_vocab, tgt_vocab   the vocabularies' words, in id order
    tokenizer              {"src": settings, "tgt": settings}, `Tokenizer.to_dict()` (with
                           any SentencePiece model)
    max_len                the longest sentence, in tokens, the data was prepared with
    step                   updates done
    best_valid_ppl         the best validation perplexity so far

A *training checkpoint* (`last.pt`) adds what resuming needs:

    optimizer, scaler      their state_dicts
    data_stream            `BatchStream.state_dict()`: the position in the training data
    rng                    the RNG states of every rank, rank r's at index r
    elapsed                wall seconds of training so far
    selection              `train.Selection.state_dict()`: the best value of
                           train.best_metric and its step, validations since, and the
                           (value, step) of each best-N.pt kept
    ema                    with train.ema, the moving average of the weights, {name:
                           fp32 tensor}; else None (`model` holds the weights themselves)

Both are dicts of tensors and plain values, tagged with `format` and `version`, written
atomically and read with `torch.load(weights_only=True)`, which unpickles no code. The
file is torch's zip archive, its parts stored uncompressed: one whose parts declare more
bytes than the file holds (a "deflate bomb") is refused before it is read. A model is
built only once its config has passed the config's checks and its weights' shapes match
what that config and the vocabularies need (`model.parameter_shapes`).
Older versions are read as the current one:
    1 -> 2   the data position in `position` = {step, epoch, batch}
    2 -> 3   no `selection`: the best was always by perplexity, with no patience
             count; no `ema` (there was none)

Where a run keeps them (last.pt, best.pt, step-N.pt, best-N.pt): `seq2seq.rundir`.
"""

from __future__ import annotations

import errno
import math
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from seq2seq.config import Config, config_from_dict
from seq2seq.data import DataDir, SourceOrder
from seq2seq.errors import (
    CheckpointError,
    ConfigError,
    DataError,
    check_integer,
    reported_as,
    shown,
)
from seq2seq.files import atomic_file
from seq2seq.model import Seq2Seq, parameter_shapes
from seq2seq.text import Tokenizer
from seq2seq.vocab import Vocabulary

FORMAT = "seq2seq-checkpoint"
VERSION = 3
READS = (1, 2, 3)  # the versions load_checkpoint reads
BUNDLE_KEYS = ("config", "model", "src_vocab", "tgt_vocab", "tokenizer", "max_len", "step",
               "best_valid_ppl")
TRAINING_KEYS = ("optimizer", "scaler", "data_stream", "rng", "elapsed", "selection", "ema")

# Config keys that may change between a run and its resumption (they do not change the
# result of the steps already taken). Not train.best_metric, valid_bleu_sentences or
# valid_beam: the best value saved, and the patience count, were measured with them; nor
# train.ema: the average saved would not be the one asked for.
RESUMABLE_CHANGES = {
    "optim.epochs", "optim.max_steps", "train.log_every", "train.valid_every",
    "train.checkpoint_every", "train.threads", "train.device", "train.trim_every",
    "train.nonfinite", "train.valid_metrics", "train.patience", "train.keep_last",
    "train.keep_best", "train.tensorboard",
}


# --------------------------------------------------------------------------- building


def model_bundle(config: Config, model: Seq2Seq, data: DataDir, step: int,
                 best_valid_ppl: float) -> dict[str, Any]:
    """The model bundle of `model`, trained with `config` on the data directory `data`."""
    return {
        "config": config.to_dict(), "model": model.state_dict(),
        "src_vocab": data.src_vocab.words, "tgt_vocab": data.tgt_vocab.words,
        "tokenizer": {side: data.tokenizer(side).to_dict() for side in ("src", "tgt")},
        "max_len": data.max_len, "step": step, "best_valid_ppl": best_valid_ppl,
    }


def training_checkpoint(bundle: dict[str, Any], *, optimizer: dict, scaler: dict,
                        data_stream: dict[str, int], rng: list[dict[str, Any]],
                        elapsed: float, selection: dict[str, Any],
                        ema: dict[str, Any] | None) -> dict[str, Any]:
    """A model bundle plus what resuming needs (the keys of TRAINING_KEYS)."""
    return {**bundle, "optimizer": optimizer, "scaler": scaler, "data_stream": data_stream,
            "rng": rng, "elapsed": elapsed, "selection": selection, "ema": ema}


# --------------------------------------------------------------------------- files


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write `state` to `path` atomically (`seq2seq.files.atomic_file`: a new temp file in
    the same directory, fsync, rename), then fsync the directory.

    A crash at any moment leaves either the old file or the new one, never a partial one.
    """
    path = Path(path)
    try:
        with atomic_file(path, "wb") as f:
            torch.save({**state, "format": FORMAT, "version": VERSION}, f)
    except (OSError, RuntimeError) as err:
        if not _disk_full(err):
            raise
        raise CheckpointError(f"{path}: no space left on the device; the checkpoint was not "
                              "written (an earlier one there is intact)") from None
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _disk_full(err: BaseException | None) -> bool:
    """Whether `err` comes from a full disk: torch.save reports one as a RuntimeError of
    its zip writer, raised while handling the OSError."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        err = err.__cause__ or err.__context__
    return False


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu",
                    training: bool = False) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`, in the current version's layout.

    CheckpointError if it is anything else, or lacks a key of a model bundle (or, with
    `training`, of a training checkpoint).
    """
    path = Path(path)
    state = read_torch_file(path, "checkpoint", map_location)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a seq2seq checkpoint")
    if state.get("version") not in READS:
        raise CheckpointError(f"{path}: checkpoint version {state.get('version')} (this "
                              f"seq2seq reads versions {', '.join(map(str, READS))})")
    if state["version"] == 1:
        _upgrade_from_v1(state)
    if state["version"] == 2:
        _upgrade_from_v2(state)
    wanted = BUNDLE_KEYS + (TRAINING_KEYS if training else ())
    missing = [k for k in wanted if k not in state]
    if missing:
        what = "a training checkpoint" if training else "a model checkpoint"
        raise CheckpointError(f"{path}: lacks {', '.join(missing)} (not {what})")
    return state


def read_torch_file(path: Path, what: str, map_location: str | torch.device = "cpu") -> Any:
    """What `torch.save` wrote to `path`, read with `torch.load(weights_only=True)` after the
    archive check; CheckpointError naming the file and `what` it should be (a checkpoint, a
    shortlist) if it is missing or cannot be read."""
    if not path.is_file():
        raise CheckpointError(f"{path}: {what} not found")
    try:
        _check_archive(path)
        return torch.load(path, map_location=map_location, weights_only=True)
    except CheckpointError:
        raise
    except Exception as err:  # torch raises many types for a damaged file; all mean the same
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: not a readable {what} (truncated or corrupt?): {first[:200]}"
        ) from None


def _check_archive(path: Path) -> None:
    """CheckpointError unless the zip archive at `path` declares no more bytes than it
    holds: torch stores its parts uncompressed, so more means compressed parts that could
    inflate to any size. zipfile.BadZipFile if it is not a zip archive."""
    with zipfile.ZipFile(path) as archive:
        declared = sum(part.file_size for part in archive.infolist())
    size = path.stat().st_size
    if declared > size:
        raise CheckpointError(f"{path}: its parts declare {declared:,} bytes in a file of "
                              f"{size:,} (compressed: not written by seq2seq); not read")


def _upgrade_from_v1(state: dict[str, Any]) -> None:
    """Version 1 -> 2, in place: `position` {step, epoch, batch} became `data_stream`
    {epoch, batch} (the step is the bundle's); `elapsed` was absent before 2026-12."""
    if "position" in state:
        position = state.pop("position")
        state["data_stream"] = {"epoch": position["epoch"], "batch": position["batch"]}
        state.setdefault("elapsed", 0.0)
    state["version"] = 2


def _upgrade_from_v2(state: dict[str, Any]) -> None:
    """Version 2 -> 3, in place: training checkpoints gain `selection`; the best was by
    perplexity (train.best_metric did not exist), its step and patience count unknown."""
    if "optimizer" in state:
        best = state["best_valid_ppl"]
        state["selection"] = {"best": best if math.isfinite(best) else None, "best_step": None,
                              "since_best": 0, "kept": []}
        state["ema"] = None
    state["version"] = 3


# --------------------------------------------------------------------------- using


@dataclass
class ModelBundle:
    """A model bundle read back: the model, in eval mode, and what it was trained with."""

    model: Seq2Seq
    config: Config
    src_vocab: Vocabulary
    tgt_vocab: Vocabulary
    src_tokenizer: Tokenizer
    tgt_tokenizer: Tokenizer
    max_len: int
    step: int
    best_valid_ppl: float


def load_bundle(path: str | Path, device: torch.device) -> ModelBundle:
    """The model bundle of checkpoint `path`, its model on `device`; CheckpointError naming
    the file if its weights or tokenizer settings are damaged."""
    state = load_checkpoint(path, map_location=device)
    cfg = config_from_dict(state["config"], where=f"{path} (config)")
    _check_contents(state, cfg, path)
    try:
        tokenizers = [Tokenizer.from_dict(state["tokenizer"][side]) for side in ("src", "tgt")]
    except (DataError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: its tokenizer settings are damaged: {err}") from None
    order = SourceOrder.of(cfg.model.reverse_source, state["src_vocab"], tokenizers[0].kind)
    model = Seq2Seq(len(state["src_vocab"]), len(state["tgt_vocab"]), cfg.model, order)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not fit the model: {str(err)[:200]}") from None
    return ModelBundle(
        model.to(device).eval(), cfg, Vocabulary(state["src_vocab"]),
        Vocabulary(state["tgt_vocab"]), *tokenizers, state["max_len"], state["step"],
        state["best_valid_ppl"],
    )


def _check_contents(state: dict[str, Any], cfg: Config, path: Path) -> None:
    """CheckpointError naming the file and the key unless the bundle's plain values have
    their types and ranges and its weights have the shapes that `cfg` and the vocabularies
    need: checked before a model of that size is built."""
    for key in ("src_vocab", "tgt_vocab"):
        words = state[key]
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise CheckpointError(f"{path}: {key} must be a list of strings")
    with reported_as(CheckpointError, str(path)):
        check_integer("max_len", state["max_len"], 1)
        check_integer("step", state["step"], 0)
    if isinstance(state["best_valid_ppl"], bool) or \
            not isinstance(state["best_valid_ppl"], int | float):
        raise CheckpointError(f"{path}: best_valid_ppl must be a number, got "
                              f"{shown(state['best_valid_ppl'])}")
    weights = state["model"]
    if not isinstance(weights, dict) or \
            not all(isinstance(t, torch.Tensor) for t in weights.values()):
        raise CheckpointError(f"{path}: its model weights must be a dict of tensors")
    needed = parameter_shapes(len(state["src_vocab"]), len(state["tgt_vocab"]), cfg.model)
    for name in sorted(needed.keys() | weights.keys(), key=shown):
        have = tuple(weights[name].shape) if name in weights else None
        if have != needed.get(name):
            m, name = cfg.model, name if isinstance(name, str) else shown(name)
            raise CheckpointError(
                f"{path}: its weights do not fit its config and vocabularies: {name} is "
                f"{'missing' if have is None else have}, needed {needed.get(name) or 'none'} "
                f"(embed_dim {m.embed_dim}, hidden_size {m.hidden_size}, num_layers "
                f"{m.num_layers}, {len(state['src_vocab']):,} + {len(state['tgt_vocab']):,} "
                "words)")


def check_ensemble(bundles: list[ModelBundle], paths: list[str | Path]) -> None:
    """Models decode together only with the same vocabularies and tokenizers: CheckpointError
    naming the first checkpoint (of `paths`, one per bundle) that differs from the first."""
    first = bundles[0]
    for path, b in zip(paths[1:], bundles[1:]):
        for what, mine, theirs in (
            ("src vocab", b.src_vocab, first.src_vocab),
            ("tgt vocab", b.tgt_vocab, first.tgt_vocab),
            ("tokenizer", [b.src_tokenizer.to_dict(), b.tgt_tokenizer.to_dict()],
             [first.src_tokenizer.to_dict(), first.tgt_tokenizer.to_dict()]),
        ):
            if mine != theirs:
                raise CheckpointError(
                    f"{path}: its {what} differs from {paths[0]}'s; an ensemble needs "
                    "models trained on the same prepared data")


def average_checkpoints(paths: Sequence[str | Path]) -> dict[str, Any]:
    """The model bundle whose weights are the mean of the checkpoints' at `paths` (summed in
    float64, cast back to each weight's type); config, vocabularies and tokenizers are the
    first's, the step the largest, best_valid_ppl NaN (the mean was never validated).

    The files are read one at a time. CheckpointError naming the first file whose
    vocabularies, tokenizer settings, source reversal or weight names and shapes differ from
    the first file's.
    """
    if not paths:
        raise CheckpointError("nothing to average: no checkpoints given")
    first = load_checkpoint(paths[0])
    total = {name: w.double() for name, w in first["model"].items()}
    step = first["step"]
    for path in paths[1:]:
        state = load_checkpoint(path)
        _check_averageable(state, first, path, paths[0])
        for name, w in state["model"].items():
            total[name] += w.double()
        step = max(step, state["step"])
    model = {name: (w / len(paths)).to(first["model"][name].dtype) for name, w in total.items()}
    return {**{k: first[k] for k in BUNDLE_KEYS}, "model": model, "step": step,
            "best_valid_ppl": math.nan}


def _check_averageable(state: dict[str, Any], first: dict[str, Any], path: str | Path,
                       first_path: str | Path) -> None:
    """Weights average only over the same model: CheckpointError naming what differs."""
    def shapes(s):
        return {name: tuple(w.shape) for name, w in s["model"].items()}

    def reversal(s):
        return config_from_dict(s["config"], where=f"{path} (config)").model.reverse_source

    for what, get in (("src vocab", lambda s: s["src_vocab"]),
                      ("tgt vocab", lambda s: s["tgt_vocab"]),
                      ("tokenizer", lambda s: s["tokenizer"]),
                      ("source reversal (model.reverse_source)", reversal),
                      ("weight names or shapes", shapes)):
        if get(state) != get(first):
            raise CheckpointError(f"{path}: its {what} differs from {first_path}'s; only "
                                  "checkpoints of the same model average")


def check_resumable(state: dict[str, Any], config: Config, data: DataDir, path: Path) -> None:
    """Resume the training checkpoint `state` (read from `path`) with `config` on `data` only
    if the config is the same but for RESUMABLE_CHANGES (ConfigError naming the first other
    key that changed) and the vocabularies are the same (DataError)."""
    before = _flat(config_from_dict(state["config"]).to_dict())
    now = _flat(config.to_dict())
    changed = [k for k in now if now[k] != before.get(k) and k not in RESUMABLE_CHANGES]
    if changed:
        k = changed[0]
        raise ConfigError(
            f"{path}: this run was started with {k}={before.get(k)!r}, now {now[k]!r}; "
            "resume with the same config, or train into a new --out directory"
        )
    if state["src_vocab"] != data.src_vocab.words or state["tgt_vocab"] != data.tgt_vocab.words:
        raise DataError(f"{path}: was trained on data with other vocabularies than {data.path}")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optim": {"lr": 0.7}} -> {"optim.lr": 0.7}"""
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out
