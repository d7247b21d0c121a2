"""Where the model runs and in what precision: the one place that decides it.

- `resolve_device("auto")` is CUDA when available, else the CPU.
- `autocast(device, precision)`: bf16 or fp16 autocast on CUDA, bf16 on the CPU (oneDNN's
  AVX-512 BF16 kernels); fp32 is a no-op. Parameters and optimizer state stay float32.
- `dist_backend(device)`: NCCL for CUDA, gloo for the CPU.
- cuDNN's fused LSTM kernels are used by `nn.LSTM` on CUDA automatically; `configure`
  turns on cuDNN's autotuner and TF32 matmuls, which suit fixed-shape LSTM batches.
- `size_kernel_cache(workload)`: how many compiled oneDNN kernels a CPU process keeps.
- `release_free_memory(device)`: on the CPU, return the C allocator's free pages to the OS.
- `keep_free_memory(device)`: on the CPU, let the C allocator keep freed memory for reuse
  (the trainer uses both: keeps it, and releases it every `train.trim_every` updates; a
  `Translator` keeps it).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os

import torch

from seq2seq import USER_KERNEL_CACHE
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
    """The precision to run: `precision` if `device` can run it; fp32 for bf16 on a CPU
    without native bf16 (AVX-512 BF16 or AMX), whose oneDNN has no bf16 LSTM (callers warn
    with NO_BF16); a ConfigError for what cannot run at all."""
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA device; use bf16 on the CPU")
    if precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        return "fp32"
    return precision


NO_BF16 = ("bf16 needs a CPU with AVX-512 BF16 or AMX, and this one has neither: running in "
           "fp32 instead")


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 natively (oneDNN's bf16 kernels, the LSTM's among them)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


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


# oneDNN compiles and caches a kernel per LSTM input shape; batches come in many shapes.
# Training kernels hold large scratch buffers: on the benchmark model (bf16) 16 cached
# kernels instead of 64 took the peak RSS of 200 updates from 1,346 to 1,113 MB at no
# measured speed cost. Decoding kernels are small, and a shrinking batch makes a new shape
# at every live-row count: 64 entries decode greedy ~10% faster than 16 (bench/RESULTS.md).
KERNEL_CACHE = {"train": 16, "decode": 64}
USER_MALLOC_THRESHOLDS = any(
    name in os.environ for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"))


def size_kernel_cache(workload: str) -> None:
    """Size oneDNN's kernel cache for `workload` (train|decode), unless the user set
    ONEDNN_PRIMITIVE_CACHE_CAPACITY. oneDNN reads it when it compiles its first kernel, so
    this must come before any CPU computation of the process; after that it does nothing.
    """
    if not USER_KERNEL_CACHE:
        os.environ["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] = str(KERNEL_CACHE[workload])


@functools.cache
def _glibc(name: str):
    """A function of glibc's allocator, or None where the C library has none (macOS, musl)."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def _malloc_trim():
    return _glibc("malloc_trim")


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
KEEP_TRIM_THRESHOLD = 1 << 30  # free memory at the heap's top kept before glibc trims it
KEEP_MMAP_THRESHOLD = 1 << 28  # blocks below this come from the heap, not their own mmap


def keep_free_memory(device: torch.device) -> bool:
    """Let glibc keep freed CPU memory for reuse instead of returning it to the OS at once.

    By default glibc unmaps a freed block of more than its (adaptive) mmap threshold and
    trims free memory off the top of its heap: the next training step, whose tensors are of
    much the same sizes, faults the same pages in again, zeroed by the kernel. Fixed
    thresholds of 256 MB (mmap) and 1 GB (trim) make freed blocks reused instead; the
    trainer sets them on the CPU and returns the free pages every `train.trim_every` updates
    itself (`release_free_memory`). A `Translator` sets them too: beam 12 in bf16 on the
    benchmark model, 124.2 vs 120.0 median sentences/s (`PYTHONPATH=TREE/src
    .venv/bin/python bench/decode_speed.py --child --model M --beams 12 --precision bf16`,
    the tree before and after alternating, three times, measured with a trim after each call,
    since dropped); greedy: no gain. For training, on
    the demo model (tatoeba-cpu, bf16), never trimming: 7,588 / 7,936 vs 6,928 / 6,534
    target tokens/s, 0.25 vs 3.2 million faults in 320 updates, peak RSS 966-989 vs 894-901
    MB against glibc's thresholds with a trim every 10 updates (`/usr/bin/time
    .venv/bin/python bench/train_speed.py --config configs/tatoeba-cpu.yaml --data
    work/tatoeba-data --child train --precision bf16 --steps 300 train.trim_every=0|10`,
    alternating, twice, before the thresholds were set at every `trim_every`). The env
    variables MALLOC_TRIM_THRESHOLD_=1073741824 MALLOC_MMAP_THRESHOLD_=268435456 do the
    same; a user's own MALLOC_TRIM_THRESHOLD_ / MALLOC_MMAP_THRESHOLD_ wins. Returns whether
    it was set; a no-op (False) on CUDA and without glibc.
    """
    if device.type != "cpu" or USER_MALLOC_THRESHOLDS:
        return False
    mallopt = _glibc("mallopt")
    if mallopt is None:
        return False
    mmap_set = bool(mallopt(M_MMAP_THRESHOLD, KEEP_MMAP_THRESHOLD))
    trim_set = bool(mallopt(M_TRIM_THRESHOLD, KEEP_TRIM_THRESHOLD))  # even if mmap's failed
    return mmap_set and trim_set


def release_free_memory(device: torch.device) -> None:
    """Hand the pages of freed CPU tensors back to the OS (glibc's `malloc_trim`).

    Every training batch has its own shape, so its tensors have their own sizes, and the
    heap that `keep_free_memory` lets glibc keep fragments; the trainer trims it every
    `train.trim_every` updates (default 100). On the benchmark model in bf16, 200 updates
    with the fixed thresholds and a trim every 10 / 50 / 100 updates / never reached
    2,290-2,309 / 2,245-2,249 / 2,379-2,537 / 2,357-2,490 target tokens/s at a peak RSS of
    935-977 / 960-1,029 / 987-1,007 / 1,097-1,121 MB, and glibc's own thresholds with a
    trim every 10 (the code before) 2,133-2,204 at 927-976 MB, with 2.9 million page faults
    against 0.47 million for every 100 (`/usr/bin/time .venv/bin/python bench/train_speed.py
    --child train --precision bf16 --steps 200 train.trim_every=10|50|100|0`, the tree
    before with `PYTHONPATH=TREE/src`, alternating, twice).
    A no-op on CUDA and without glibc.
    """
    trim = _malloc_trim() if device.type == "cpu" else None
    if trim is not None:
        trim(0)
