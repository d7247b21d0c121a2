"""The training loop of the paper: teacher forcing, SGD, halving schedule, clipping, resume.

Objective: the mean over the batch's sentences of -log p(T|S) (the paper divides the
gradient by its batch of 128 sentences); the gradient is rescaled to `clip_norm` when its
L2 norm is larger. Learning rate: `lr` until `decay_start` epochs, then multiplied by
`decay_factor` every `decay_every` epochs.

Each validation measures perplexity and, with `train.valid_metrics: [ppl, bleu]`, BLEU of
greedy (or small-beam) translations, as `seq2seq evaluate` computes it. `best.pt` is the best
validation by `train.best_metric`; `train.patience` stops the run after that many
validations without a new best; `train.keep_last` / `keep_best` keep numbered checkpoints.

Re-running the same command on the same run directory resumes from `last.pt`: model,
optimizer, schedule, data position, RNG and the best so far, so the result equals an
uninterrupted run. What the run directory holds, and how: `seq2seq.rundir`.
Under `torchrun`, each global batch is split over the ranks and DistributedDataParallel
averages the gradients; only rank 0 writes files.
"""

from __future__ import annotations

import logging
import math
import os
import random
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from seq2seq.checkpoint import (
    check_resumable,
    load_checkpoint,
    model_bundle,
    save_checkpoint,
    training_checkpoint,
)
from seq2seq.config import Config, OptimConfig, TrainConfig
from seq2seq.data import Batch, BatchStream, DataDir, collate, make_batches
from seq2seq.device import (
    autocast,
    dist_backend,
    grad_scaler,
    peak_rss_mb,
    release_free_memory,
    resolve_device,
    resolve_precision,
)
from seq2seq.errors import ArgumentError, ConfigError, InUse, Seq2SeqError, TrainingStopped
from seq2seq.evaluate import bleu_chrf
from seq2seq.model import Seq2Seq, count_parameters
from seq2seq.rundir import RunDir
from seq2seq.search import check_decoding
from seq2seq.translator import Translator

log = logging.getLogger(__name__)


def clip_grad_norm(params: Iterable[torch.nn.Parameter], max_norm: float) -> float:
    """Rescale the gradients to L2 norm `max_norm` if it is larger; their norm before.

    As torch.nn.utils.clip_grad_norm_, but the gradients are only touched when they are
    actually clipped (the norm is read on the host anyway, for the log).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))
    if norm > max_norm:
        torch._foreach_mul_(grads, max_norm / (norm + 1e-6))
    return norm


def learning_rate(optim: OptimConfig, epoch: float) -> float:
    """The paper's schedule at fractional `epoch`: constant, then halved every half epoch."""
    if epoch < optim.decay_start:
        return optim.lr
    decays = math.floor((epoch - optim.decay_start) / optim.decay_every) + 1
    return optim.lr * optim.decay_factor ** decays


class Trainer:
    """Trains a Seq2Seq model on a prepared data directory, writing into a run directory.

    `train()` is the run: `_start` (resume from `last.pt`, or begin), `train_next` until
    the budget is spent (logging, validating and checkpointing on their schedules), then
    `_finish` (a last validation and checkpoint, unless the last step had them).
    """

    def __init__(self, cfg: Config, data_dir: str | Path, run_dir: str | Path):
        self.cfg = cfg
        self.run = RunDir(run_dir, tensorboard=cfg.train.tensorboard)
        self.rank, self.world = _dist_info()
        self.device = resolve_device(cfg.train.device)
        self.data = DataDir(data_dir)
        self.valid_set = self.data.split("valid")
        torch.manual_seed(cfg.train.seed)
        # `model` is the bare Seq2Seq: its weights are saved, validated and translated with.
        # `ddp_model` is what training calls forward on: under torchrun it is
        # DistributedDataParallel(model), whose backward averages the gradients over the
        # ranks; in one process it is `model` itself.
        self.model = Seq2Seq(len(self.data.src_vocab), len(self.data.tgt_vocab), cfg.model,
                             self.data.source_order(cfg.model.reverse_source))
        self.model.to(self.device)
        self.model.use_bf16_kernels(cfg.train.bf16_kernels)
        self.ddp_model: torch.nn.Module = self.model
        if self.world > 1:
            # Same initial weights on every rank, but each rank its own dropout masks.
            torch.manual_seed(cfg.train.seed + self.rank)
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp_model = torch.nn.parallel.DistributedDataParallel(self.model,
                                                                       device_ids=ids)
        self.stream = BatchStream(self.data.split("train"), cfg.batching, cfg.train.seed,
                                  self.model.source_order, self.world)
        self.optimizer = _make_optimizer(self.model, cfg.optim)
        self.precision = resolve_precision(cfg.train.precision, self.device)
        self.scaler = grad_scaler(self.device, self.precision)
        self.step = 0  # updates done, skipped batches included
        self.skipped = 0  # batches skipped for a non-finite loss (train.nonfinite=skip)
        self._saved_step: int | None = None  # the step of the last last.pt written
        self.best_valid_ppl = float("inf")
        self.selection = Selection(cfg.train)
        self.ema = None if cfg.train.ema is None else WeightAverage(self.model, cfg.train.ema)
        self.bleu_text = None
        if "bleu" in cfg.train.valid_metrics:
            _check_valid_beam(cfg.train.valid_beam)
            self.bleu_text = self.data.valid_text(cfg.train.valid_bleu_sentences)
        # Wall seconds of training so far, across resumptions (time lost to a kill after
        # the last checkpoint is not counted: it is the time of an uninterrupted run).
        self._seconds_before = 0.0
        self._clock = time.perf_counter()

    # ------------------------------------------------------------------ the run

    def train(self) -> dict[str, Any]:
        """Train until the epoch budget (or max_steps) is spent; returns the last validation.
        The run directory is locked meanwhile: a second run on it is refused (InUse)."""
        window = _Window()
        last_valid: dict[str, Any] = {}
        with _locked_by_rank0(self.run, self.rank, self.world, self.device), _StopSignals() as stop:
            self._start()
            bar = tqdm(total=self._total_steps(), initial=self.step, unit="step",
                       disable=None if self.rank == 0 else True, dynamic_ncols=True,
                       file=sys.stderr)
            while not self._finished():
                if self._stop_requested(stop.signum):
                    bar.close()
                    self._interrupted(stop.signum)
                stats = self.train_next()
                last_valid = self._after_step(stats, window, bar) or last_valid
            bar.close()
            return self._finish(last_valid)

    def _start(self) -> None:
        """Resume from the run directory's last.pt if there is one, else begin the run;
        the metrics log goes on from the step resumed."""
        if self.rank == 0:
            self.run.remove_leftovers()
        if self.run.last.exists():
            self._resume(self.run.last)
        elif self.rank == 0:
            self.run.write_config(self.cfg.to_dict())
            n = count_parameters(self.model)
            log.info(f"model: {n['total']:,} parameters ({n['encoder_lstm']:,} encoder "
                     f"LSTM, {n['decoder_lstm']:,} decoder LSTM); device {self.device}; "
                     f"{len(self.stream.corpus):,} training pairs; world size {self.world}")
        if self.rank == 0:
            self.run.start_log(self.step)
        self._clock = time.perf_counter()

    def _finished(self) -> bool:
        if self.selection.stop_reason():
            return True
        if self.cfg.optim.max_steps is not None:
            return self.step >= self.cfg.optim.max_steps
        return self.stream.epoch >= self.cfg.optim.epochs

    def _total_steps(self) -> int:
        if self.cfg.optim.max_steps is not None:
            return self.cfg.optim.max_steps
        return math.ceil(self.cfg.optim.epochs * len(self.stream.epoch_batches(0)))

    def _after_step(self, stats: dict[str, float], window: _Window, bar) -> dict[str, Any]:
        """Log, validate and checkpoint on their schedules; the validation, if one ran."""
        cfg = self.cfg
        last_valid: dict[str, Any] = {}
        window.add(stats)
        bar.update(1)
        if self.step % cfg.train.log_every == 0:
            record = window.flush(self.step, self.stream.epoch)
            record["elapsed_s"] = round(self.elapsed(), 1)
            bar.set_postfix(loss=f"{record['loss']:.3f}", lr=f"{record['lr']:.3g}",
                            tok_s=f"{record['tgt_tok_s']:,.0f}")
            self._log(record)
            log.info(_format(record))
        if self.step % cfg.train.valid_every == 0:
            last_valid = self._validate_and_save()
        elif self.step % (cfg.train.checkpoint_every or cfg.train.valid_every) == 0:
            self._save_last()
        return last_valid

    def _finish(self, last_valid: dict[str, Any]) -> dict[str, Any]:
        """The validation of the last step: `last_valid`, the logged one of a finished run
        resumed, or a new one (which also saves the checkpoints)."""
        if not last_valid and self.world == 1:  # under DDP only rank 0 could read the log
            last_valid = self.run.logged_validation(self.step)
        if not last_valid or last_valid.get("step") != self.step:
            last_valid = self._validate_and_save()
        self.run.close_log()
        return last_valid

    def _stop_requested(self, signum: int | None) -> bool:
        """Whether any rank got SIGINT/SIGTERM (the ranks agree, so all stop together)."""
        return _on_any_rank(signum is not None, self.world, self.device)

    def _interrupted(self, signum: int | None) -> None:
        """Save where we are and stop; re-running the same command resumes from here."""
        import signal

        self.save(self.run.last)
        name = signal.Signals(signum).name if signum else "a signal on another rank"
        raise TrainingStopped(
            f"interrupted by {name} at step {self.step}: saved {self.run.last}; "
            "run the same command again to resume", exit_code=128 + (signum or 15))

    # ------------------------------------------------------------------ one update

    def train_next(self) -> dict[str, float]:
        """One update on the stream's next global batch, at the schedule's learning rate
        for the batch's epoch; the step's statistics (see `train_step`)."""
        lr = learning_rate(self.cfg.optim, self.stream.epoch)
        return self.train_step(next(self.stream), lr)

    def train_step(self, batch: Batch, lr: float) -> dict[str, float]:
        """One update on one global batch at learning rate `lr`.

        The phases are public so that `bench/step_phases.py` times each one of this very
        code: `set_learning_rate`, `forward`, `backward`, `clip_gradients`, `update`.
        Returns the global batch's summed NLL, its source and target tokens (</s> counted)
        and sentences, the lr and the gradient norm before clipping.
        """
        self.set_learning_rate(lr)
        loss, nll = self.forward(batch)
        self.backward(loss)
        grad_norm = self.clip_gradients()
        if not self._finite(loss, grad_norm):
            return self._nonfinite(loss, grad_norm, lr)
        self.update()
        # Report the global batch, not this rank's share of it.
        nll = nll.detach().clone()
        if self.world > 1:
            dist.all_reduce(nll)
        src_tokens, tgt_tokens = batch.num_tokens()
        return {"nll": float(nll), "tgt_tokens": tgt_tokens, "src_tokens": src_tokens,
                "sentences": batch.size, "lr": lr, "grad_norm": grad_norm}

    def set_learning_rate(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, NLL) of this rank's share of the global `batch`, two scalars on the device.

        The loss is scaled so that its gradient, averaged over the ranks by DDP, is that of
        the mean loss over the global batch's sentences; the NLL is summed over this rank's
        target tokens.
        """
        local = batch.shard(self.rank, self.world)
        if self.device.type == "cuda":  # page-locked memory lets the copy overlap compute
            local = local.pin_memory()
        local = local.to(self.device, non_blocking=True)
        self.model.train()
        with autocast(self.device, self.precision):
            loss, nll = self.ddp_model(local.src, local.src_lens, local.tgt_in, local.tgt_out,
                                       self.cfg.train.loss_chunk, self.cfg.optim.label_smoothing)
        return loss * (self.world / batch.size), nll

    def backward(self, loss: torch.Tensor) -> None:
        """The gradients of `loss`, unscaled (fp16's loss scaling undone) and ready to clip."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)

    def clip_gradients(self) -> float:
        """Clip to optim.clip_norm (0: no clipping); the gradients' norm before, which the
        non-finite check reads either way."""
        return clip_grad_norm(self.model.parameters(), self.cfg.optim.clip_norm or math.inf)

    def update(self) -> None:
        """The optimizer's step on the gradients; counts the update."""
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.ema:
            self.ema.update()
        self.step += 1
        if self.cfg.train.trim_every and self.step % self.cfg.train.trim_every == 0:
            release_free_memory(self.device)  # see there: glibc's heap fragments

    def _finite(self, loss: torch.Tensor, grad_norm: float) -> bool:
        """Whether this update's loss and gradient norm are finite, on every rank. A
        GradScaler in use (fp16) skips overflowing steps itself, so nothing is checked."""
        if self.scaler.is_enabled():
            return True
        ok = math.isfinite(float(loss.detach())) and math.isfinite(grad_norm)
        return not _on_any_rank(not ok, self.world, self.device)  # all skip or stop

    def _nonfinite(self, loss: torch.Tensor, grad_norm: float, lr: float) -> dict[str, float]:
        """Stop the run (train.nonfinite=stop), or skip the batch without an update."""
        what = (f"step {self.step + 1}: loss {float(loss.detach())}, gradient norm "
                f"{grad_norm} (not finite)")
        self.optimizer.zero_grad(set_to_none=True)
        if self.cfg.train.nonfinite == "stop":
            saved = (f"{self.run.last} (step {self._saved_step}) is the last good "
                     "checkpoint" if self._saved_step is not None else "no checkpoint yet")
            raise TrainingStopped(
                f"{what}; stopped before updating the weights; {saved}. Lower optim.lr, or "
                "set train.nonfinite=skip to skip such batches", exit_code=1)
        self.skipped += 1
        self.step += 1
        log.warning(f"{what}; batch skipped ({self.skipped} so far)")
        return {"nll": 0.0, "tgt_tokens": 0, "src_tokens": 0, "sentences": 0, "lr": lr,
                "grad_norm": grad_norm}

    # ------------------------------------------------------------------ validation

    @torch.inference_mode()
    def validate(self) -> dict[str, float]:
        """Perplexity of the validation split: exp(total NLL / target tokens incl. </s>)."""
        self.model.eval()
        total_nll, total_tokens = 0.0, 0
        for idx in self._valid_batches():
            batch = collate(self.valid_set, idx, self.model.source_order).to(self.device)
            with autocast(self.device, self.precision):
                _, nll = self.model(batch.src, batch.src_lens, batch.tgt_in, batch.tgt_out,
                                    self.cfg.train.loss_chunk)
            total_nll += float(nll)
            total_tokens += batch.num_tokens()[1]
        return {"valid_nll": total_nll / total_tokens,
                "valid_ppl": math.exp(min(total_nll / total_tokens, 50.0))}

    @torch.inference_mode()
    def validate_bleu(self) -> dict[str, float]:
        """sacreBLEU of the first train.valid_bleu_sentences validation pairs, translated
        with beam train.valid_beam as `seq2seq evaluate` translates (its defaults
        otherwise; fp32), and the seconds it took. Rank 0 translates; the others get its
        score, so that all agree on the best and on stopping."""
        start = time.perf_counter()
        bleu = [math.nan]
        if self.rank == 0:
            self.model.eval()
            sources, refs = self.bleu_text
            translator = Translator([self.model], self.data.src_vocab, self.data.tgt_vocab,
                                    self.data.tokenizer("src"), self.data.tokenizer("tgt"),
                                    self.data.max_len)
            hyps = translator.translate(sources, beam=self.cfg.train.valid_beam)
            bleu = [bleu_chrf([h.text for h in hyps], refs)["bleu"]]
        if self.world > 1:
            dist.broadcast_object_list(bleu, src=0)
        return {"valid_bleu": bleu[0], "valid_bleu_s": round(time.perf_counter() - start, 2)}

    def _valid_batches(self) -> list[np.ndarray]:
        s = self.valid_set
        b = self.cfg.batching
        return make_batches(s.src.lengths, s.tgt.lengths, batch_size=b.batch_size,
                            max_tokens=b.max_tokens, pool_batches=10**9, seed=0, epoch=0)

    def _validate_and_save(self) -> dict[str, Any]:
        """Validate; save best.pt if it is the best, best-N.pt if among the keep_best best,
        then last.pt (and step-N.pt); log it, with the reason if the run stops early."""
        with self._averaged():
            record = self._validation()
            improved, kept, dropped = self.selection.add(record)
            self.best_valid_ppl = min(self.best_valid_ppl, record["valid_ppl"])
            if improved:
                self.save(self.run.best, training=False)
            if kept:
                self.save(self.run.numbered("best", self.step), training=False)
        self._save_last()
        self._remove([self.run.numbered("best", step) for step in dropped])
        record["best"] = improved
        if reason := self.selection.stop_reason():
            record["early_stop"] = reason
        self._log(record)
        bleu = f" | valid BLEU {record['valid_bleu']:.2f}" if "valid_bleu" in record else ""
        log.info(f"step {record['step']} | epoch {record['epoch']:.2f} | valid ppl "
                 f"{record['valid_ppl']:.2f}{bleu}" + (" (best)" if improved else "")
                 + f" | peak RSS {record['peak_rss_mb']:,} MB")
        if reason:
            log.info(reason)
        return record

    def _averaged(self):
        """With train.ema, a block in which the model holds the average of its weights."""
        return self.ema.swapped_in() if self.ema else nullcontext()

    def _validation(self) -> dict[str, Any]:
        """The validation record of this step (the metrics of train.valid_metrics)."""
        record = {"step": self.step, "epoch": round(self.stream.epoch, 4), **self.validate()}
        if not math.isfinite(record["valid_nll"]):
            raise TrainingStopped(
                f"step {self.step}: validation loss {record['valid_nll']} (not finite); "
                "nothing saved at this step. Lower optim.lr", exit_code=1)
        if self.bleu_text is not None:
            record.update(self.validate_bleu())
        return {**record, "peak_rss_mb": round(peak_rss_mb()),
                "elapsed_s": round(self.elapsed(), 1)}

    def elapsed(self) -> float:
        """Wall seconds spent training this run so far, resumptions included."""
        return self._seconds_before + time.perf_counter() - self._clock

    # ------------------------------------------------------------------ checkpoints

    def save(self, path: Path, training: bool = True) -> None:
        """Write the model bundle (`training`: the training checkpoint) to `path`."""
        state = model_bundle(self.cfg, self.model, self.data, self.step, self.best_valid_ppl)
        if training:  # on every rank: it gathers the RNG states
            state = training_checkpoint(
                state, optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict(),
                data_stream=self.stream.state_dict(), rng=_rng_states(self.world),
                elapsed=self.elapsed(), selection=self.selection.state_dict(),
                ema=self.ema.state_dict() if self.ema else None)
        if self.rank == 0:
            save_checkpoint(state, path)
        if training:
            self._saved_step = self.step

    def _save_last(self) -> None:
        """last.pt; with train.keep_last, also step-N.pt, and then the oldest beyond
        keep_last removed (only once the new one is written)."""
        self.save(self.run.last)
        if keep := self.cfg.train.keep_last:
            with self._averaged():
                self.save(self.run.numbered("step", self.step), training=False)
            self._remove(self.run.numbered_checkpoints("step")[:-keep])

    def _remove(self, paths: list[Path]) -> None:
        if self.rank == 0:
            for path in paths:
                path.unlink(missing_ok=True)

    def _resume(self, last: Path) -> None:
        """Continue from the training checkpoint `last`: weights, optimizer, data position,
        RNG, clock."""
        state = load_checkpoint(last, map_location=self.device, training=True)
        check_resumable(state, self.cfg, self.data, last)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.stream.load_state_dict(state["data_stream"])
        self.step = self._saved_step = state["step"]
        self.best_valid_ppl = state["best_valid_ppl"]
        self.selection.load_state_dict(state["selection"])
        if self.ema:
            self.ema.load_state_dict(state["ema"])
        self._seconds_before = float(state["elapsed"])
        _set_rng_states(state["rng"][self.rank % len(state["rng"])])  # more ranks: reuse
        log.info(f"resumed {last} at step {self.step} (epoch {self.stream.epoch:.4f})")

    def _log(self, record: dict[str, Any]) -> None:
        if self.rank == 0:
            self.run.log(record)


class Selection:
    """Which validations are best by train.best_metric (lower perplexity, higher BLEU):
    the best so far (best.pt), the train.keep_best best (best-N.pt), and how many
    validations have passed without a new best (train.patience). Its whole state is
    `state_dict()`, saved in training checkpoints.
    """

    def __init__(self, train: TrainConfig):
        self.metric, self.patience, self.keep = train.best_metric, train.patience, train.keep_best
        self.best: float | None = None
        self.best_step: int | None = None
        self.since_best = 0  # validations since the best
        self.kept: list[tuple[float, int]] = []  # (value, step) of each best-N.pt, best first

    def _key(self, value: float, step: int) -> tuple[float, int]:
        """Sorts the better first; of equal values, the earlier."""
        return (value if self.metric == "ppl" else -value), step

    def add(self, record: dict[str, Any]) -> tuple[bool, bool, list[int]]:
        """Count the validation `record`: (whether it is a new best, whether it is among the
        keep_best best, the steps of the best-N.pt it pushes out)."""
        value, step = record[f"valid_{self.metric}"], record["step"]
        improved = self.best is None or self._key(value, 0) < self._key(self.best, 0)
        if improved:
            self.best, self.best_step, self.since_best = value, step, 0
        else:
            self.since_best += 1
        if not self.keep:
            return improved, False, []
        ranked = sorted([*self.kept, (value, step)], key=lambda k: self._key(*k))
        self.kept = ranked[:self.keep]
        return improved, (value, step) in self.kept, [s for _, s in ranked[self.keep:]
                                                      if s != step]

    def stop_reason(self) -> str | None:
        """Why the run stops early (train.patience validations without a new best), or None."""
        if not self.patience or self.since_best < self.patience:
            return None
        return (f"early stopping: valid {self.metric} not better than {self.best:.4g} (step "
                f"{self.best_step}) for {self.since_best} validations (train.patience="
                f"{self.patience})")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "since_best": self.since_best,
                "kept": [list(k) for k in self.kept]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step = state["best"], state["best_step"]
        self.since_best = state["since_best"]
        self.kept = [tuple(k) for k in state["kept"]]


class WeightAverage:
    """An exponential moving average of a model's weights, in fp32: after each update,
    average = decay * average + (1 - decay) * weights.
    `swapped_in()` lends the average to the model for a block (validating, saving)."""

    def __init__(self, model: Seq2Seq, decay: float):
        self.model, self.decay = model, decay
        self.weights = {name: p.detach().float().clone()
                        for name, p in model.named_parameters()}

    @torch.no_grad()
    def update(self) -> None:
        params = [p.detach().float() for p in self.model.parameters()]
        torch._foreach_lerp_(list(self.weights.values()), params, 1.0 - self.decay)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        params = dict(self.model.named_parameters())
        own = {name: p.detach().clone() for name, p in params.items()}
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(self.weights[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in params.items():
                    p.copy_(own[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.weights)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for name, w in state.items():
            self.weights[name].copy_(w)


def _check_valid_beam(beam: int) -> None:
    """ConfigError before training, not at the first validation, for a beam that
    `seq2seq.search` refuses."""
    try:
        check_decoding(beam)
    except ArgumentError as err:
        raise ConfigError(f"train.valid_beam: {err}") from None


def train(cfg: Config, data_dir: str | Path, run_dir: str | Path) -> dict[str, Any]:
    """Train (or resume) a run; returns the final validation record. Works under torchrun."""
    init_distributed(cfg.train.device)
    try:
        return Trainer(cfg, data_dir, run_dir).train()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device_name: str) -> None:
    """Join the process group that torchrun describes in the environment, if any."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        device = resolve_device(device_name)
        if device.type == "cuda":  # each rank on its own GPU before NCCL sees it
            torch.cuda.set_device(device)
        dist.init_process_group(backend=dist_backend(device))


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _on_any_rank(flag: bool, world: int, device: torch.device) -> bool:
    """Whether `flag` holds on any rank: every rank calls it, and all get the answer."""
    if world == 1:
        return flag
    agreed = torch.tensor([int(flag)], device=device)
    dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
    return bool(agreed.item())


@contextmanager
def _locked_by_rank0(run: RunDir, rank: int, world: int, device: torch.device
                     ) -> Iterator[None]:
    """Rank 0 makes the run directory and holds its lock while the block runs; under
    torchrun the other ranks learn whether it could, and stop with it."""
    with ExitStack() as held:
        refused: Seq2SeqError | None = None
        if rank == 0:
            try:
                held.enter_context(run.locked())
            except Seq2SeqError as err:
                refused = err
        if _on_any_rank(refused is not None, world, device) and refused is None:
            refused = InUse(f"{run.path}: rank 0 could not take the run directory (see its "
                            "message)")
        if refused is not None:
            raise refused
        yield


def _make_optimizer(model: Seq2Seq, optim: OptimConfig) -> torch.optim.Optimizer:
    # Fused kernels update all parameters in one pass (4-5x faster than the loop on a CPU).
    if optim.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=optim.lr, fused=True)
    return torch.optim.SGD(model.parameters(), lr=optim.lr, fused=True)


def _rng_states(world: int) -> list[dict[str, Any]]:
    """The RNG states of all `world` ranks, rank r's at index r (each draws its own
    dropout); under torchrun every rank must call it."""
    mine = {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    if world == 1:
        return [mine]
    states: list[dict[str, Any]] = [{}] * world
    dist.all_gather_object(states, mine)
    return states


def _set_rng_states(rng: dict[str, Any]) -> None:
    """Restore this process's RNGs from one rank's entry of `_rng_states`."""
    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])


class _StopSignals:
    """SIGINT and SIGTERM, while the block runs, only note the signal (`signum`): the loop
    finishes its step, saves and stops. A second signal acts as usual (Ctrl-C twice quits
    at once). Outside the main thread, signals cannot be caught; nothing changes."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopSignals:
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._note)
        return self

    def _note(self, signum: int, _frame) -> None:
        import signal

        self.signum = signum
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def __exit__(self, *_) -> None:
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _Window:
    """Sums of the steps since the last log line."""

    def __init__(self):
        self.start = time.perf_counter()
        self.nll = self.tgt = self.src = self.steps = 0
        self.lr = self.grad_norm = 0.0

    def add(self, s: dict[str, float]) -> None:
        self.nll += s["nll"]
        self.tgt += s["tgt_tokens"]
        self.src += s["src_tokens"]
        self.steps += 1
        self.lr, self.grad_norm = s["lr"], s["grad_norm"]

    def flush(self, step: int, epoch: float) -> dict[str, Any]:
        elapsed = time.perf_counter() - self.start
        loss = self.nll / max(1, self.tgt)
        record = {
            "step": step, "epoch": round(epoch, 4), "loss": loss,
            "ppl": math.exp(min(loss, 50.0)), "lr": self.lr, "grad_norm": self.grad_norm,
            "tgt_tok_s": self.tgt / elapsed, "src_tgt_tok_s": (self.src + self.tgt) / elapsed,
            "sec_per_step": elapsed / max(1, self.steps),
        }
        self.__init__()
        return record


def _format(r: dict[str, Any]) -> str:
    return (f"step {r['step']} | epoch {r['epoch']:.2f} | loss {r['loss']:.3f} | ppl "
            f"{r['ppl']:.1f} | lr {r['lr']:.3g} | |g| {r['grad_norm']:.2f} | "
            f"{r['tgt_tok_s']:,.0f} tgt tok/s | {r['src_tgt_tok_s']:,.0f} src+tgt tok/s")
