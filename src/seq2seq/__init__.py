"""seq2seq: deep-LSTM sequence-to-sequence learning (Sutskever, Vinyals & Le, 2014)."""

__version__ = "0.1.0"

__all__ = ["Translator", "Translation", "__version__"]


def __getattr__(name: str):
    # Imported lazily so that `import seq2seq` (and the CLI's --help) stays fast.
    if name in ("Translator", "Translation"):
        from seq2seq import translator

        return getattr(translator, name)
    raise AttributeError(name)
