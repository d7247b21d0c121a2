"""Where the model runs and in what precision: the one place that decides it.

- `resolve_device("auto")` is CUDA when available, else the CPU.
- `autocast(device, precision)`: bf16 or fp16 autocast on CUDA, bf16 on the CPU (oneDNN's
  AVX-512 BF16 kernels); fp32 is a no-op. Parameters and optimizer state stay float32.
- `quantize_int8(model)`: decoding only, on the CPU: int8 LSTM and output-layer weights
  (`seq2seq.int8.Int8LSTM`, PyTorch's dynamic quantized Linear), chosen when a model is
  loaded for decoding; `quantization_quieted()`, the warnings its tools give.
- `dist_backend(device)`: NCCL for CUDA, gloo for the CPU.
- cuDNN's fused LSTM kernels are used by `nn.LSTM` on CUDA automatically; `configure`
  turns on cuDNN's autotuner and TF32 matmuls, which suit fixed-shape LSTM batches.
- `setup_process(workload, device, threads)`: the process-wide settings (threads, oneDNN's
  kernel cache, the C allocator keeping freed memory), made by the entry points only: the
  CLI verbs, the server and the benchmarks. Importing seq2seq, building a `Trainer` or a
  `Translator` changes nothing process-wide.
- `release_free_memory(device)`: on the CPU, return the C allocator's free pages to the OS
  (the trainer does it every `train.trim_every` updates).
- `peak_rss_mb()`: this process's peak resident memory, for the training log and the
  benchmarks; `peak_memory_mb(device)`: the same on the CPU, the CUDA allocator's peak on
  a GPU.
- `synchronize(device)`: wait for a GPU's queued work before reading a clock.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import logging
import os
import warnings

import torch
from torch import nn

from seq2seq.config import DECODE_PRECISIONS, DEVICES, PRECISIONS
from seq2seq.errors import ConfigError

log = logging.getLogger(__name__)


def resolve_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    """The torch.device for `name` (auto|cpu|cuda); under torchrun, the rank's own GPU."""
    if name not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}, got {name!r}")
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


def resolve_precision(precision: str, device: torch.device, decoding: bool = False) -> str:
    """The precision to run: `precision` if `device` can run it; fp32, with a warning
    (NO_BF16), for bf16 on a CPU without native bf16 (AVX-512 BF16 or AMX), whose oneDNN
    has no bf16 LSTM; a ConfigError for what cannot run at all. int8 is for `decoding`
    only."""
    allowed = DECODE_PRECISIONS if decoding else PRECISIONS
    if precision not in allowed:
        hint = " (int8 is for decoding only)" if precision == "int8" else ""
        raise ConfigError(f"precision must be one of {', '.join(allowed)}, got "
                          f"{precision!r}{hint}")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA device; use bf16 on the CPU")
    if precision == "int8" and device.type != "cpu":
        raise ConfigError("precision int8 runs on the CPU only; use bf16 or fp16 on a GPU")
    if precision == "bf16" and device.type == "cpu" and not cpu_has_bf16():
        log.warning(NO_BF16)
        return "fp32"
    return precision


NO_BF16 = ("bf16 needs a CPU with AVX-512 BF16 or AMX, and this one has neither: running in "
           "fp32 instead")


def cpu_has_bf16() -> bool:
    """Whether this CPU runs bf16 natively (oneDNN's bf16 kernels, the LSTM's among them)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype of the weights and activations (int8: of what is not quantized)."""
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
            "int8": torch.float32}[precision]


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """The autocast context for `precision` (fp32|bf16|fp16|int8) on `device`."""
    if resolve_precision(precision, device, decoding=True) in ("fp32", "int8"):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=compute_dtype(precision))


def quantize_int8(model: nn.Module) -> nn.Module:
    """`model` (float32, on the CPU, for inference) with int8 LSTMs and linear layers, in
    place: its `nn.LSTM`s become `seq2seq.int8.Int8LSTM`s, its `nn.Linear`s PyTorch's
    dynamic quantized Linear.

    Weights become int8 once, here, with a scale per output row (per gate unit in the
    LSTMs, per word in the output layer); each product quantizes its input to uint8 on the
    fly (one scale per call) and accumulates in int32 (fbgemm's kernels: AVX2 at the least,
    VNNI where the CPU has it). Gates, embeddings and the log-softmax stay float32. Nothing
    is written back to a checkpoint: the model loses its float weights, so keep it for
    decoding only.

    The activations' scale is one per call, shared by the rows of a batch, so a sentence's
    scores depend slightly on the sentences decoded with it, and a near tie may go the
    other way in another batch.
    """
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    from seq2seq.int8 import Int8LSTM

    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, nn.LSTM):
                setattr(parent, name, Int8LSTM(child))
    with quantization_quieted():
        return quantize_dynamic(model, {nn.Linear: per_channel_dynamic_qconfig},
                                dtype=torch.qint8, inplace=True)


@contextlib.contextmanager
def quantization_quieted():
    """Silence the deprecation warnings of PyTorch's quantization tools (`torch.ao.
    quantization`, `torch.quantize_per_channel`, ...): PyTorch marks them as to be replaced
    by torchao, whose CPU int8 path needs `torch.compile`."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "torch.ao.quantization is deprecated",
                                DeprecationWarning)
        warnings.filterwarnings("ignore", "torch.quantize_per_tensor, torch.quantize_per_"
                                "channel", UserWarning)
        yield


def grad_scaler(device: torch.device, precision: str) -> torch.amp.GradScaler:
    """Loss scaling, needed only for fp16 (bf16 has float32's range)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def dist_backend(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


# ------------------------------------------------------------------ process-wide settings
# Library code leaves the process as it found it. The entry points (each CLI verb, the
# server, the benchmarks) call `setup_process` once, before any computation.

# oneDNN compiles and caches a kernel per LSTM input shape, and batches come in many shapes.
# Training kernels hold large scratch buffers, so a small cache bounds training memory;
# decoding makes a new shape at every live-row count, and its kernels are small. The
# measurements behind both sizes: bench/LOG.md, History.
KERNEL_CACHE = {"train": 16, "decode": 64}
KERNEL_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"
USER_KERNEL_CACHE = KERNEL_CACHE_ENV in os.environ
USER_MALLOC_THRESHOLDS = any(
    name in os.environ for name in ("MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"))
_process_workload: str | None = None  # what setup_process tuned this process for


def setup_process(workload: str, device: torch.device, threads: int | None = None) -> None:
    """Tune this process for `workload` (train|decode) on `device`; entry points only.

    - oneDNN's kernel cache: KERNEL_CACHE[workload] entries, unless the user set
      ONEDNN_PRIMITIVE_CACHE_CAPACITY. oneDNN reads it when it compiles its first kernel,
      so this must come before any CPU computation; a later call for another workload
      (the CLI's `main` run twice in one process) keeps the first size.
    - torch's intra-op threads (`threads`; None keeps torch's default); on CUDA the rank's
      GPU, cuDNN's autotuner and TF32 matmuls (`configure`).
    - on the CPU, glibc keeps freed memory for reuse (`keep_free_memory`).
    """
    global _process_workload
    if workload not in KERNEL_CACHE:
        raise ValueError(f"workload must be one of {', '.join(KERNEL_CACHE)}, got {workload!r}")
    if _process_workload is None:
        if not USER_KERNEL_CACHE:
            os.environ[KERNEL_CACHE_ENV] = str(KERNEL_CACHE[workload])
        _process_workload = workload
    elif _process_workload != workload and not USER_KERNEL_CACHE:
        log.debug(f"oneDNN's kernel cache stays sized for {_process_workload} "
                  f"({KERNEL_CACHE[_process_workload]} kernels): it is read once per process")
    configure(device, threads)
    keep_free_memory(device)


@functools.cache
def _glibc(name: str):
    """A function of glibc's allocator, or None where the C library has none (macOS, musl)."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError):
        return None


def has_glibc_allocator() -> bool:
    """Whether this process's C library lets us tune and trim its allocator (glibc)."""
    return _glibc("mallopt") is not None and _glibc("malloc_trim") is not None


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)
KEEP_TRIM_THRESHOLD = 1 << 30  # free memory at the heap's top kept before glibc trims it
KEEP_MMAP_THRESHOLD = 1 << 28  # blocks below this come from the heap, not their own mmap


def keep_free_memory(device: torch.device) -> bool:
    """Let glibc keep freed CPU memory for reuse instead of returning it to the OS at once.

    Process-wide: `setup_process` calls it. By default glibc unmaps a freed block of more
    than its (adaptive) mmap threshold and trims free memory off the top of its heap, so
    the next training step or decoding step, whose tensors are of much the same sizes,
    faults the same pages in again, zeroed by the kernel. Fixed thresholds of 256 MB (mmap)
    and 1 GB (trim) make freed blocks reused instead; the trainer returns the free pages
    every `train.trim_every` updates itself (`release_free_memory`). The gains, in training
    and decoding: bench/LOG.md, History. The same as MALLOC_TRIM_THRESHOLD_=1073741824
    MALLOC_MMAP_THRESHOLD_=268435456; a user's own MALLOC_TRIM_THRESHOLD_ or
    MALLOC_MMAP_THRESHOLD_ wins. Returns whether it was set; False on CUDA and without glibc.
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
    `train.trim_every` updates (default 100: the speed and memory of 10, 50, 100 and never
    are in bench/LOG.md, History). It changes no setting. A no-op on CUDA and without
    glibc.
    """
    trim = _glibc("malloc_trim") if device.type == "cpu" else None
    if trim is not None:
        trim(0)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (Linux reports KiB)."""
    import resource  # Unix only: imported where it is used

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory_mb(device: torch.device) -> float:
    """The most memory this process has held on `device`, in MB: the CUDA allocator's peak
    allocation on a GPU, the peak resident memory (`peak_rss_mb`) on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return peak_rss_mb()


def synchronize(device: torch.device) -> None:
    """Wait until `device` has run the work queued on it: a GPU runs it asynchronously, so a
    clock read without this stops early. A no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
