"""Tokenize and detokenize raw text; read corpus files line by line with clear errors.

Three tokenizers:
- `moses` (default): the Moses rules via sacremoses, per language; words stay words.
- `space`: split on whitespace, join with one space.
- `sentencepiece`: a subword model trained by `prepare` on the training side.

Before any tokenizer runs, every run of Unicode whitespace (including the no-break and
narrow no-break spaces of French typography) becomes one ASCII space, and zero-width
spaces and soft hyphens are removed. BLEU is unaffected: its own tokenizer splits on the
same whitespace.
"""

from __future__ import annotations

import errno
import gzip
import io
import lzma
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from seq2seq.errors import DataError
from seq2seq.files import TEMP_MARK, atomic_file

_INVISIBLE = re.compile("[\u200b\u200c\u200d\u2060\ufeff\u00ad]")
TOKENIZERS = ("moses", "space", "sentencepiece")
MAX_LINE_BYTES = 1_000_000  # the longest line read_stream reads (a sentence is far shorter)


def normalize(line: str) -> str:
    """Collapse all Unicode whitespace to single spaces and drop invisible characters."""
    return " ".join(_INVISIBLE.sub("", line).split())


class Tokenizer:
    """Turns one side's raw text into tokens and back.

    `kind` is one of TOKENIZERS; `lang` picks the Moses rules; `sp_model` is the serialized
    SentencePiece model (bytes) when kind is "sentencepiece".
    """

    def __init__(
        self, kind: str = "moses", lang: str = "en", lowercase: bool = False,
        sp_model: bytes | None = None,
    ):
        if kind not in TOKENIZERS:
            raise DataError(f"unknown tokenizer {kind!r} (choose from {', '.join(TOKENIZERS)})")
        if kind == "sentencepiece" and sp_model is None:
            raise DataError("the sentencepiece tokenizer needs a trained model")
        self.kind, self.lang, self.lowercase, self.sp_model = kind, lang, lowercase, sp_model
        self._moses = self._moses_detok = self._sp = None
        if kind == "moses":
            from sacremoses import MosesDetokenizer, MosesTokenizer

            self._moses = MosesTokenizer(lang)
            self._moses_detok = MosesDetokenizer(lang)
        elif kind == "sentencepiece":
            import sentencepiece as spm

            try:
                self._sp = spm.SentencePieceProcessor(model_proto=sp_model)
            except (RuntimeError, TypeError) as err:
                raise DataError(f"not a SentencePiece model ({str(err)[:120]})") from None

    def tokenize(self, line: str) -> list[str]:
        line = normalize(line)
        if self.lowercase:
            line = line.lower()
        if not line:
            return []
        if self._moses is not None:
            return self._moses.tokenize(line, escape=False)
        if self._sp is not None:
            return self._sp.encode(line, out_type=str)
        return line.split(" ")

    def detokenize(self, tokens: list[str]) -> str:
        if self._moses_detok is not None:
            return self._moses_detok.detokenize(tokens)
        if self._sp is not None:
            return self._sp.decode_pieces(tokens)
        return " ".join(tokens)

    def to_dict(self) -> dict[str, Any]:
        """Everything needed to rebuild this tokenizer (stored in data dirs and checkpoints)."""
        return {"kind": self.kind, "lang": self.lang, "lowercase": self.lowercase,
                "sp_model": self.sp_model}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Tokenizer:
        return cls(d["kind"], d["lang"], d["lowercase"], d.get("sp_model"))


def train_sentencepiece(lines: Iterator[str], vocab_size: int, lowercase: bool) -> bytes:
    """Train a unigram SentencePiece model on (a sample of up to 2M of) `lines`."""
    import sentencepiece as spm

    stream = ((normalize(s).lower() if lowercase else normalize(s)) for s in lines)
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=stream, model_writer=model, vocab_size=vocab_size,
            model_type="unigram", character_coverage=1.0, input_sentence_size=2_000_000,
            shuffle_input_sentence=True, hard_vocab_limit=False,
            unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, minloglevel=2,
        )
    except RuntimeError as err:  # e.g. a vocabulary smaller than the corpus's alphabet
        message = str(err).strip().splitlines()[-1][:200]
        raise DataError(f"SentencePiece could not train a {vocab_size:,}-piece vocabulary: "
                        f"{message} (try another --src-vocab/--tgt-vocab)") from None
    return model.getvalue()


def open_binary(path: str | Path):
    """Open a corpus file for reading bytes; `.gz` and `.xz` files are decompressed. A
    pipe (a FIFO, /dev/stdin) is read as it comes, once."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a file")
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    if path.suffix == ".xz":
        return lzma.open(path, "rb")
    return open(path, "rb")


def read_lines(path: str | Path) -> Iterator[str]:
    """Yield the lines of a UTF-8 text file without their line ends, streaming.

    Raises DataError naming the file and line on invalid UTF-8 or a line over
    MAX_LINE_BYTES (see `read_stream`).
    """
    number = 0
    try:
        with open_binary(path) as f:
            for line in read_stream(f, str(path)):
                yield line
                number += 1
    except (OSError, EOFError, lzma.LZMAError) as err:  # damaged .gz/.xz, I/O errors
        raise DataError(f"{path}: unreadable after line {number}: {err}") from None


def read_stream(f: BinaryIO, name: str) -> Iterator[str]:
    """Yield the lines of the binary stream `f` (a file, stdin) decoded from UTF-8, without
    their line ends. DataError naming `name` and the line on invalid UTF-8, or on a line
    longer than MAX_LINE_BYTES, which is read no further: no sentence is that long, and
    an endless line (/dev/zero) must not fill the memory."""
    number = 0
    while raw := f.readline(MAX_LINE_BYTES + 1):
        number += 1
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            raise DataError(f"{name} line {number}: longer than {MAX_LINE_BYTES:,} bytes "
                            "(not a text file of sentences?)")
        try:
            yield raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as err:
            raise DataError(f"{name} line {number}: invalid UTF-8 (byte "
                            f"0x{raw[err.start]:02x} at column {err.start + 1})") from None


@contextmanager
def atomic_output(path: str | Path) -> Iterator[TextIO]:
    """A UTF-8 text file for `path`, written under a temporary name beside it and renamed
    over it only when the block ends without error (`seq2seq.files.atomic_file`).

    `path` is never truncated: it may be the very file the block reads its input from, and
    a run that fails leaves an existing file as it was. A full disk or a folder that cannot
    be written raises DataError naming `path`.
    """
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a directory, not a file to write")
    if not path.parent.is_dir():
        raise DataError(f"{path}: its folder {path.parent} does not exist")
    try:
        with atomic_file(path, "w", encoding="utf-8") as f:
            yield f
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DataError(f"{path}: no space left on the device; nothing was replaced"
                            ) from None
        if str(err.filename).startswith(str(path.with_name(f".{path.name}{TEMP_MARK}"))):
            raise DataError(f"{path}: cannot write there ({err.strerror})") from None
        raise


def read_pairs(src_path: str | Path, tgt_path: str | Path) -> Iterator[tuple[str, str]]:
    """Yield (source, target) lines of two parallel files, checking they have equal length."""
    sources, targets = read_lines(src_path), read_lines(tgt_path)
    count = 0
    for src in sources:
        tgt = next(targets, None)
        if tgt is None:
            rest = sum(1 for _ in sources)
            raise DataError(
                f"{src_path} has {count + 1 + rest} lines but {tgt_path} has {count}: "
                "parallel files must have the same number of lines"
            )
        count += 1
        yield src, tgt
    rest = sum(1 for _ in targets)
    if rest:
        raise DataError(
            f"{src_path} has {count} lines but {tgt_path} has {count + rest}: "
            "parallel files must have the same number of lines"
        )
