"""seq2seq: deep-LSTM sequence-to-sequence learning (Sutskever, Vinyals & Le, 2014)."""

import os

__version__ = "0.1.0"

__all__ = ["Translator", "Translation", "__version__"]


def _bound_cpu_memory() -> None:
    """Keep a long CPU run's memory bounded (measured on tatoeba-cpu: 6.5 GB -> 2.8 GB).

    oneDNN compiles and caches an LSTM kernel per input shape (a few MB each, up to 1024
    of them), and bucketed batches come in many shapes: cap the cache at 16 entries. On the
    benchmark model (bench/benchmark.yaml, bf16) 16 entries instead of 64 took the peak RSS
    of 200 updates from 1,346 MB to 1,113 MB at 2,448 vs 2,542 target tokens/s, within the
    machine's noise; decoding, whose shrinking batches make many shapes, pays ~10% (see
    bench/RESULTS.md, History). Must be set before torch runs its first kernel; a user's
    own setting wins. (Serving mid-size blocks from mmap bounded memory further but made
    training 5x slower, so glibc's allocator is left alone.)
    """
    os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")


_bound_cpu_memory()


def __getattr__(name: str):
    # Imported lazily so that `import seq2seq` (and the CLI's --help) stays fast.
    if name in ("Translator", "Translation"):
        from seq2seq import translator

        return getattr(translator, name)
    raise AttributeError(name)
