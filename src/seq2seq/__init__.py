"""seq2seq: deep-LSTM sequence-to-sequence learning (Sutskever, Vinyals & Le, 2014)."""

import os

__version__ = "0.1.0"

__all__ = ["Translator", "Translation", "__version__"]


# Whether the user chose oneDNN's kernel cache size; if not, `seq2seq.device.size_kernel_cache`
# picks one per workload (it must be set before torch runs its first oneDNN kernel).
USER_KERNEL_CACHE = "ONEDNN_PRIMITIVE_CACHE_CAPACITY" in os.environ
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "16")  # = device.KERNEL_CACHE["train"]


def __getattr__(name: str):
    # Imported lazily so that `import seq2seq` (and the CLI's --help) stays fast.
    if name in ("Translator", "Translation"):
        from seq2seq import translator

        return getattr(translator, name)
    raise AttributeError(name)
