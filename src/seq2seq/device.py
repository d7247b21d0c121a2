"""Where the model runs and in what precision: the one place that decides it.

- `resolve_device("auto")` is CUDA when available, else the CPU.
- `autocast(device, precision)`: bf16 or fp16 autocast on CUDA, bf16 on the CPU (oneDNN's
  AVX-512 BF16 kernels); fp32 is a no-op. Parameters and optimizer state stay float32.
- `dist_backend(device)`: NCCL for CUDA, gloo for the CPU.
- cuDNN's fused LSTM kernels are used by `nn.LSTM` on CUDA automatically; `configure`
  turns on cuDNN's autotuner and TF32 matmuls, which suit fixed-shape LSTM batches.
"""

from __future__ import annotations

import contextlib
import os

import torch

from seq2seq.errors import ConfigError


def resolve_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """The torch.device for `name` (auto|cpu|cuda); under torchrun, the rank's own GPU."""
    if name not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("device cuda was asked for, but no CUDA GPU is available")
        if local_rank is None:
            local_rank = int(os.environ.get("LOCAL_RANK", 0))
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def configure(device: torch.device, threads: int | None = None) -> None:
    """Per-process backend settings for `device`."""
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif threads:
        torch.set_num_threads(threads)


PRECISIONS = ("fp32", "bf16", "fp16")


def check_precision(precision: str, device: torch.device) -> str:
    """`precision` if `device` can run it, else a ConfigError saying what can."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA device; use bf16 on the CPU")
    return precision


def compute_dtype(precision: str) -> torch.dtype:
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for `precision` (fp32|bf16|fp16) on `device`."""
    if check_precision(precision, device) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=compute_dtype(precision))


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling, needed only for fp16 (bf16 has float32's range)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def dist_backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"
