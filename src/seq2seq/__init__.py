"""seq2seq: deep-LSTM sequence-to-sequence learning (Sutskever, Vinyals & Le, 2014)."""

import ctypes
import os

__version__ = "0.1.0"

__all__ = ["Translator", "Translation", "__version__"]


def _bound_cpu_memory() -> None:
    """Keep a long CPU run's memory flat (measured: 6.5 GB -> under 1 GB for tatoeba-cpu).

    oneDNN compiles and caches an LSTM kernel per input shape (a few MB each, up to 1024
    of them), and bucketed batches come in many shapes: cap the cache (64 entries cost no
    measurable speed). glibc keeps freed mid-size blocks in fragmented heaps: serve blocks
    over 256 KiB from mmap so they return to the system. Both must be set before torch
    runs its first kernel; a user's own setting wins.
    """
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        try:
            ctypes.CDLL("libc.so.6").mallopt(-3, 256 * 1024)  # -3 = M_MMAP_THRESHOLD
        except (OSError, AttributeError):
            pass  # not glibc: nothing to tune


_bound_cpu_memory()


def __getattr__(name: str):
    # Imported lazily so that `import seq2seq` (and the CLI's --help) stays fast.
    if name in ("Translator", "Translation"):
        from seq2seq import translator

        return getattr(translator, name)
    raise AttributeError(name)
