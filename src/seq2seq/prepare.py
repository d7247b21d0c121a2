"""`prepare`: from raw parallel text to a data directory (the layout is in `seq2seq.data`).

Tokenize (training SentencePiece models first if asked), count, build the vocabularies
and binarize both splits. `prepare` streams: it holds one chunk of lines and the word
counts at a time, never the corpus, so its memory depends on the vocabulary, not on the
number of lines. With `workers` > 1, chunks are tokenized in that many processes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass
from itertools import islice
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from seq2seq.data import DATA_FORMAT, DATA_FORMAT_VERSION
from seq2seq.errors import DataError, check_integer
from seq2seq.files import make_temp_folder
from seq2seq.text import Tokenizer, read_lines, read_pairs, train_sentencepiece
from seq2seq.vocab import Vocabulary

log = logging.getLogger(__name__)

CHUNK_LINES = 4096
SIDES = ("src", "tgt")
# The files of a data directory (the layout is in seq2seq.data): all that prepare makes,
# and so all that `--force` may delete.
DATA_FILES = frozenset({
    "meta.json", *(f"vocab.{side}" for side in SIDES), *(f"spm.{side}.model" for side in SIDES),
    *(f"{split}.{side}.{ext}" for split in ("train", "valid") for side in SIDES
      for ext in ("ids", "offsets")),
    *(f"valid.{side}.txt" for side in SIDES),
})

Progress = Callable[[int], None]  # told how many more items are done


@dataclass
class PrepareStats:
    pairs: int = 0
    kept: int = 0
    too_long: int = 0
    empty: int = 0

    def add(self, other: PrepareStats) -> None:
        for name in ("pairs", "kept", "too_long", "empty"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


_worker_tokenizers: tuple[Tokenizer, Tokenizer] | None = None


def _init_worker(settings: tuple[dict, dict]) -> None:
    global _worker_tokenizers
    _worker_tokenizers = (Tokenizer.from_dict(settings[0]), Tokenizer.from_dict(settings[1]))


def _tokenize_chunk(
    args: tuple[list[tuple[str, str]], int],
) -> tuple[list[tuple[list[str], list[str]]], PrepareStats]:
    """Tokenize a chunk of pairs; drop pairs with an empty side or a side over max_len."""
    pairs, max_len = args
    src_tok, tgt_tok = _worker_tokenizers
    kept, stats = [], PrepareStats(pairs=len(pairs))
    for src, tgt in pairs:
        s, t = src_tok.tokenize(src), tgt_tok.tokenize(tgt)
        if not s or not t:
            stats.empty += 1
        elif len(s) > max_len or len(t) > max_len:
            stats.too_long += 1
        else:
            kept.append((s, t))
    stats.kept = len(kept)
    return kept, stats


def _chunks(pairs: Iterator[tuple[str, str]], size: int) -> Iterator[list[tuple[str, str]]]:
    while chunk := list(islice(pairs, size)):
        yield chunk


def _tokenized_chunks(
    src_path: Path, tgt_path: Path, tokenizers: tuple[Tokenizer, Tokenizer], max_len: int,
    workers: int, progress: Progress,
) -> Iterator[tuple[list[tuple[list[str], list[str]]], PrepareStats]]:
    """Tokenized, filtered chunks of a parallel corpus, in order; `workers` processes.
    `progress` is called with the number of pairs of each chunk."""
    for kept, stats in _tokenize_in_order(src_path, tgt_path, tokenizers, max_len, workers):
        progress(stats.pairs)
        yield kept, stats


def _tokenize_in_order(src_path, tgt_path, tokenizers, max_len, workers):
    settings = (tokenizers[0].to_dict(), tokenizers[1].to_dict())
    jobs = ((chunk, max_len) for chunk in _chunks(read_pairs(src_path, tgt_path), CHUNK_LINES))
    if workers <= 1:
        _init_worker(settings)
        yield from map(_tokenize_chunk, jobs)
        return
    with get_context("spawn").Pool(workers, _init_worker, (settings,)) as pool:
        # In order, at most 2 chunks per worker in flight. (Pool.imap queues finished
        # chunks without bound when tokenizing outpaces counting: memory grew with the
        # corpus, 0.30 GB at 200k pairs, 0.40 GB at 2M, bench/prepare_speed.py.)
        pending: deque = deque()
        for job in jobs:
            pending.append(pool.apply_async(_tokenize_chunk, (job,)))
            if len(pending) >= 2 * workers:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


class _IdWriter:
    """Appends sentences of token ids to `{prefix}.ids` and their offsets to `.offsets`."""

    def __init__(self, prefix: Path):
        self.ids = open(f"{prefix}.ids", "wb")
        self.offsets = open(f"{prefix}.offsets", "wb")
        self.total = 0
        np.zeros(1, dtype=np.int64).tofile(self.offsets)

    def write(self, sentences: list[list[int]]) -> None:
        lengths = np.fromiter((len(s) for s in sentences), dtype=np.int64, count=len(sentences))
        flat = np.fromiter((i for s in sentences for i in s), dtype=np.int32,
                           count=int(lengths.sum()))
        flat.tofile(self.ids)
        (self.total + np.cumsum(lengths)).tofile(self.offsets)
        self.total += int(lengths.sum())

    def close(self) -> None:
        for f in (self.ids, self.offsets):
            f.flush()
            os.fsync(f.fileno())
            f.close()


def prepare(
    train_src: str | Path, train_tgt: str | Path, valid_src: str | Path, valid_tgt: str | Path,
    out: str | Path, *, src_vocab: int = 160_000, tgt_vocab: int = 80_000,
    tokenizer: str = "moses", lowercase: bool = False, max_len: int = 50,
    src_lang: str | None = None, tgt_lang: str | None = None, workers: int = 1,
    force: bool = False, progress: Progress | None = None,
) -> dict[str, Any]:
    """Tokenize, build vocabularies and binarize a parallel corpus into the directory `out`.

    `progress`, if given, is called with the number of pairs of each chunk tokenized
    (training pairs, then validation pairs), e.g. a tqdm bar's `update`.

    The directory appears only when everything succeeded (it is built under a new temporary
    name and renamed). An existing `out` is replaced only with `force`, and only if it holds
    nothing but a data directory's files (see `_check_replaceable`); if `out` is a symbolic
    link, the folder it points to is replaced, and the link kept.
    Returns the summary that is also saved in `out/meta.json`.
    """
    for name, value in (("src_vocab", src_vocab), ("tgt_vocab", tgt_vocab),
                        ("max_len", max_len), ("workers", workers)):
        check_integer(name, value, 1)
    inputs = (train_src, train_tgt, valid_src, valid_tgt)
    out = Path(out)
    if os.path.lexists(out):
        if not force:
            raise DataError(f"{out} already exists (use --force to replace it)")
        out = _replaceable(out, inputs)
    start = time.perf_counter()
    src_lang = src_lang or _lang_of(train_src)
    tgt_lang = tgt_lang or _lang_of(train_tgt)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = make_temp_folder(out)
    except OSError as err:
        raise DataError(f"{out}: cannot create the data directory there ({err.strerror})"
                        ) from None
    try:
        tokenizers = _make_tokenizers(
            tokenizer, lowercase, (src_lang, tgt_lang), (train_src, train_tgt),
            (src_vocab, tgt_vocab),
        )
        progress = progress or (lambda pairs: None)
        train_stats, vocabs = _prepare_train(
            Path(train_src), Path(train_tgt), tmp, tokenizers, (src_vocab, tgt_vocab),
            max_len, workers, progress,
        )
        valid_stats = _binarize(
            Path(valid_src), Path(valid_tgt), tmp / "valid", tokenizers, vocabs, max_len,
            workers, progress,
        )
        if valid_stats.kept == 0:
            raise DataError(f"{valid_src}: no validation pairs left (empty, or all too long)")
        for side, path in zip(SIDES, (valid_src, valid_tgt)):
            _copy_text(path, tmp / f"valid.{side}.txt")
        meta = {
            "format": DATA_FORMAT, "version": DATA_FORMAT_VERSION, "max_len": max_len,
            "tokenizer": {"src": tokenizers[0].to_dict(), "tgt": tokenizers[1].to_dict()},
            "vocab_size": {"src": len(vocabs[0]), "tgt": len(vocabs[1])},
            "train": vars(train_stats), "valid": vars(valid_stats),
            "sources": {"train": [str(train_src), str(train_tgt)],
                        "valid": [str(valid_src), str(valid_tgt)]},
        }
        for side, tok in zip(SIDES, tokenizers):
            if tok.sp_model is not None:
                (tmp / f"spm.{side}.model").write_bytes(tok.sp_model)
                meta["tokenizer"][side]["sp_model"] = f"spm.{side}.model"
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        _put_in_place(tmp, out, force, inputs)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # our own folder: only what we made
    elapsed = time.perf_counter() - start
    log.info(
        f"prepared {out}: train {train_stats.kept:,} of {train_stats.pairs:,} pairs kept "
        f"({train_stats.too_long:,} longer than {max_len} tokens, {train_stats.empty:,} with an "
        f"empty side dropped); valid {valid_stats.kept:,} of {valid_stats.pairs:,}; vocab "
        f"{len(vocabs[0]):,} src / {len(vocabs[1]):,} tgt; {elapsed:.1f}s "
        f"({train_stats.pairs / max(elapsed, 1e-9):,.0f} pairs/s)"
    )
    return meta


def _replaceable(out: Path, inputs: tuple) -> Path:
    """The folder that `--force` replaces for the existing `out`: `out`, or, if `out` is a
    symbolic link, the folder it points to. The link is the user's, not ours: it stays,
    and leads to the new data, built beside the old (for the rename) under the same rule."""
    if out.is_symlink():
        target = out.resolve()
        if not target.is_dir():
            raise DataError(f"{out}: a symbolic link to {target}, which is not a data "
                            "directory; not replaced")
        out = target
    _check_replaceable(out, inputs)
    return out


def _copy_text(path: str | Path, copy: Path) -> None:
    """The lines of `path` as they are, in plain UTF-8 (validation BLEU reads them)."""
    with open(copy, "w", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in read_lines(path))


def _check_replaceable(out: Path, inputs: tuple) -> None:
    """`--force` replaces only a data directory holding nothing but files `prepare` makes
    (`DATA_FILES`), and never one holding an input or the current directory: what it
    deletes is what `prepare` made."""
    where = out.resolve()
    if not (out / "meta.json").is_file():
        raise DataError(f"{out}: exists and is not a data directory (no meta.json); --force "
                        "only replaces what prepare made")
    if Path.cwd().resolve().is_relative_to(where):
        raise DataError(f"{out}: is the current directory or holds it; not replaced")
    for path in inputs:
        if Path(path).resolve().is_relative_to(where):
            raise DataError(f"{out}: holds the input {path}; not replaced")
    for entry in sorted(out.iterdir()):
        if entry.name not in DATA_FILES or entry.is_symlink() or not entry.is_file():
            raise DataError(f"{out}: holds {entry.name}, which prepare did not make; --force "
                            "only replaces a data directory that holds nothing else (move "
                            "it away, or prepare into another --out)")


def _put_in_place(tmp: Path, out: Path, force: bool, inputs: tuple) -> None:
    """Rename the finished data directory `tmp` to `out`. An `out` that appeared meanwhile
    is refused, never replaced; with `force`, a data directory there (checked again) is
    moved aside, and then only its files of `DATA_FILES` are deleted."""
    old = None
    if os.path.lexists(out):
        if not force:
            raise DataError(f"{out}: appeared while prepare ran; not replaced (the new data "
                            "was not kept)")
        _check_replaceable(out, inputs)
        old = make_temp_folder(out)
        os.rename(out, old)  # onto the empty folder just made: atomic, and ours alone
    claimed = False
    try:
        # mkdir claims the name (it fails if anything is there); the rename then replaces
        # only that empty folder (it fails if something was put in it meanwhile).
        os.mkdir(out)
        claimed = True
        os.rename(tmp, out)
    except OSError as err:
        if claimed:
            with suppress(OSError):  # our claim, if still empty
                os.rmdir(out)
        kept = f"; the old data directory is in {old}" if old else ""
        raise DataError(f"{out}: appeared while prepare ran ({err.strerror}); not replaced"
                        f"{kept}") from None
    if old is not None:
        _remove_data_dir(old)


def _remove_data_dir(path: Path) -> None:
    """Delete the files of `DATA_FILES` in `path`, then `path` if that emptied it."""
    for name in DATA_FILES:
        if (path / name).is_file() and not (path / name).is_symlink():
            (path / name).unlink()
    try:
        path.rmdir()
    except OSError:
        log.warning(f"kept {path}: it holds files that prepare did not make")


def _lang_of(path: str | Path) -> str:
    """The language code of `train.en` or `train.en.gz` (its last real suffix), else 'en'."""
    suffixes = [s for s in Path(path).suffixes if s not in (".gz", ".xz")]
    code = suffixes[-1][1:] if suffixes else ""
    return code if 2 <= len(code) <= 3 and code.isalpha() else "en"


def _make_tokenizers(kind, lowercase, langs, train_files, sizes) -> tuple[Tokenizer, Tokenizer]:
    if kind != "sentencepiece":
        return Tokenizer(kind, langs[0], lowercase), Tokenizer(kind, langs[1], lowercase)
    models = [train_sentencepiece(read_lines(f), size, lowercase)
              for f, size in zip(train_files, sizes)]
    return tuple(Tokenizer(kind, lang, lowercase, m) for lang, m in zip(langs, models))


def _prepare_train(src, tgt, tmp, tokenizers, sizes, max_len, workers, progress):
    """Pass 1: tokenize, count and spool tokens; pass 2: binarize with the vocabularies."""
    counts = (Counter(), Counter())
    stats = PrepareStats()
    spool_path = tmp / "train.tok"
    with open(spool_path, "w", encoding="utf-8") as spool:
        for kept, chunk_stats in _tokenized_chunks(src, tgt, tokenizers, max_len, workers,
                                                   progress):
            stats.add(chunk_stats)
            for s, t in kept:
                counts[0].update(s)
                counts[1].update(t)
                spool.write(" ".join(s) + "\t" + " ".join(t) + "\n")
    if stats.pairs == 0:
        raise DataError(f"{src}: empty corpus (no lines)")
    if stats.kept == 0:
        raise DataError(
            f"{src}: no training pairs left after dropping {stats.too_long} pairs longer "
            f"than {max_len} tokens and {stats.empty} with an empty side"
        )
    vocabs = tuple(Vocabulary.build(c, n) for c, n in zip(counts, sizes))
    for side, vocab in zip(SIDES, vocabs):
        vocab.save(tmp / f"vocab.{side}")
    writers = [_IdWriter(tmp / f"train.{side}") for side in SIDES]
    with open(spool_path, encoding="utf-8") as spool:
        while lines := list(islice(spool, CHUNK_LINES)):
            pairs = [line.rstrip("\n").split("\t") for line in lines]
            for w, vocab, column in zip(writers, vocabs, zip(*pairs)):
                w.write([vocab.encode(text.split(" ")) for text in column])
    for w in writers:
        w.close()
    spool_path.unlink()
    return stats, vocabs


def _binarize(src, tgt, prefix, tokenizers, vocabs, max_len, workers, progress
              ) -> PrepareStats:
    stats = PrepareStats()
    writers = [_IdWriter(Path(f"{prefix}.{side}")) for side in SIDES]
    for kept, chunk_stats in _tokenized_chunks(src, tgt, tokenizers, max_len, workers,
                                               progress):
        stats.add(chunk_stats)
        for w, vocab, column in zip(writers, vocabs, zip(*kept) if kept else ((), ())):
            w.write([vocab.encode(tokens) for tokens in column])
    for w in writers:
        w.close()
    return stats
