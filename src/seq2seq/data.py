"""The prepared corpus and its batches: the memory-mapped splits, bucketing, the source's
reading order (`SourceOrder`: as written, or reversed by words or by pieces), and
`BatchStream`, the training batches in order with the position in them.

A data directory made by `seq2seq.prepare.prepare` holds::

    meta.json                    format and version, tokenizer settings, max_len, counts
    vocab.src  vocab.tgt         one token per line, ids 0-3 are the specials
    {split}.{side}.ids           int32 token ids of all sentences, back to back
    {split}.{side}.offsets       int64, n + 1 offsets: sentence i is ids[off[i]:off[i+1]]
    valid.{side}.txt             the validation text as given to prepare (validation BLEU)
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
import torch

from seq2seq.config import BatchingConfig
from seq2seq.errors import DataError, check_integer, reported_as, shown
from seq2seq.text import Tokenizer, read_pairs
from seq2seq.vocab import BOS_ID, EOS_ID, PAD_ID, Vocabulary

DATA_FORMAT = "seq2seq-data"  # meta.json's "format"
DATA_FORMAT_VERSION = 1
DATA_READS = (1,)  # the meta.json versions DataDir reads


# --------------------------------------------------------------------------- reading


class TokenArray:
    """Sentences of token ids read by memory map: `arr[i]` is an int32 array."""

    def __init__(self, prefix: Path):
        try:
            self.offsets = np.fromfile(f"{prefix}.offsets", dtype=np.int64)
            size = os.path.getsize(f"{prefix}.ids")
        except OSError as err:
            raise DataError(f"{prefix}: cannot read binarized data: {err}") from None
        if len(self.offsets) < 1 or self.offsets[-1] * 4 != size:
            raise DataError(f"{prefix}.ids: size does not match its offsets (truncated?)")
        self.ids = np.memmap(f"{prefix}.ids", dtype=np.int32, mode="r") if size else np.zeros(
            0, np.int32)
        self.lengths = np.diff(self.offsets).astype(np.int32)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.ids[self.offsets[i]:self.offsets[i + 1]]


class DataDir:
    """A directory written by `prepare`: vocabularies, tokenizers and splits."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        try:
            self.meta = json.loads(meta_path.read_text())
        except FileNotFoundError:
            raise DataError(f"{self.path}: not a data directory (no meta.json; run "
                            "`seq2seq prepare` first)") from None
        except (OSError, ValueError) as err:
            raise DataError(f"{meta_path}: unreadable: {err}") from None
        if not isinstance(self.meta, dict) or self.meta.get("format") != DATA_FORMAT:
            raise DataError(f"{meta_path}: not a seq2seq data directory")
        version = self.meta.get("version")
        if type(version) is not int or version not in DATA_READS:
            raise DataError(f"{meta_path}: data format version {shown(version)}; this seq2seq "
                            f"reads version {', '.join(map(str, DATA_READS))} (prepare it again "
                            "with this seq2seq)")
        tokenizer = self.meta.get("tokenizer")
        if not isinstance(tokenizer, dict) or \
                not all(isinstance(tokenizer.get(side), dict) for side in ("src", "tgt")):
            raise DataError(f"{meta_path}: lacks the tokenizer settings (tokenizer.src and "
                            "tokenizer.tgt); prepare the data again")
        with reported_as(DataError, str(meta_path)):
            check_integer("max_len", self.meta.get("max_len"), 1)
        self.src_vocab = Vocabulary.load(self.path / "vocab.src")
        self.tgt_vocab = Vocabulary.load(self.path / "vocab.tgt")
        self.max_len: int = self.meta["max_len"]

    def tokenizer(self, side: str) -> Tokenizer:
        settings = dict(self.meta["tokenizer"][side])
        if settings.get("sp_model"):
            settings["sp_model"] = (self.path / settings["sp_model"]).read_bytes()
        return Tokenizer.from_dict(settings)

    def source_order(self, reverse: str) -> SourceOrder:
        """The reading order `reverse` (one of REVERSALS) for this data's sources."""
        return SourceOrder.of(reverse, self.src_vocab.words, self.meta["tokenizer"]["src"]["kind"])

    def valid_text(self, n: int) -> tuple[list[str], list[str]]:
        """The first `n` validation pairs as raw text, (sources, references), as `prepare`
        was given them (not the ids: their <unk>s would match the model's). Data
        directories made before these copies were kept read the files meta.json names."""
        paths = [self.path / f"valid.{side}.txt" for side in ("src", "tgt")]
        if not all(p.is_file() for p in paths):
            paths = [Path(p) for p in self.meta.get("sources", {}).get("valid", [])]
        if len(paths) != 2 or not all(p.is_file() for p in paths):
            raise DataError(f"{self.path}: holds no validation text for validation BLEU, and "
                            f"the files meta.json names are not there ({paths}); run "
                            "`seq2seq prepare` again")
        pairs = list(islice(read_pairs(*paths), n))
        return [s for s, _ in pairs], [t for _, t in pairs]

    def split(self, name: str) -> ParallelCorpus:
        return ParallelCorpus(self.path / f"{name}.src", self.path / f"{name}.tgt")


class ParallelCorpus:
    """Aligned source and target TokenArrays of one split."""

    def __init__(self, src_prefix: Path, tgt_prefix: Path):
        self.src, self.tgt = TokenArray(src_prefix), TokenArray(tgt_prefix)
        if len(self.src) != len(self.tgt):
            raise DataError(f"{src_prefix}: source and target sentence counts differ")

    def __len__(self) -> int:
        return len(self.src)


# --------------------------------------------------------------------------- batching


def make_batches(
    src_lens: np.ndarray, tgt_lens: np.ndarray, *, batch_size: int, max_tokens: int | None,
    pool_batches: int, seed: int, epoch: int,
) -> list[np.ndarray]:
    """One epoch of batches (arrays of sentence indices) of sentences of similar length.

    The corpus is shuffled, cut into pools of `pool_batches` batches, each pool is sorted by
    (source length, target length) and cut into batches of `batch_size` sentences or, with
    `max_tokens`, of at most that many padded source + target tokens. The batch order is
    then shuffled. Depends only on (seed, epoch), so a resumed run sees the same batches.
    """
    rng = np.random.default_rng([seed, epoch])
    n = len(src_lens)
    order = rng.permutation(n)
    if max_tokens:
        mean_len = float(src_lens.mean() + tgt_lens.mean()) + 1
        pool = max(1, int(pool_batches * max_tokens / mean_len))
    else:
        pool = pool_batches * batch_size
    batches: list[np.ndarray] = []
    for start in range(0, n, pool):
        chunk = order[start:start + pool]
        chunk = chunk[np.lexsort((tgt_lens[chunk], src_lens[chunk]))]
        if max_tokens:
            batches.extend(_cut_by_tokens(chunk, src_lens, tgt_lens, max_tokens))
        else:
            batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def _cut_by_tokens(chunk, src_lens, tgt_lens, max_tokens) -> Iterator[np.ndarray]:
    begin, max_src, max_tgt = 0, 0, 0
    for i, idx in enumerate(chunk):
        s, t = max(max_src, src_lens[idx]), max(max_tgt, tgt_lens[idx] + 1)
        if i > begin and (i - begin + 1) * (s + t) > max_tokens:
            yield chunk[begin:i]
            begin, s, t = i, src_lens[idx], tgt_lens[idx] + 1
        max_src, max_tgt = s, t
    if begin < len(chunk):
        yield chunk[begin:]


@dataclass
class Batch:
    """Padded tensors of one batch.

    src:      (batch, src_len)  source ids, reversed if the model reverses, then padded
    src_lens: (batch,)          true source lengths
    tgt_in:   (batch, tgt_len)  <s> y1 .. yn, padded
    tgt_out:  (batch, tgt_len)  y1 .. yn </s>, padded
    """

    src: torch.Tensor
    src_lens: torch.Tensor
    tgt_in: torch.Tensor
    tgt_out: torch.Tensor

    @property
    def size(self) -> int:
        return self.src.shape[0]

    def num_tokens(self) -> tuple[int, int]:
        """(source tokens, target tokens including </s>), padding excluded."""
        return int(self.src_lens.sum()), int((self.tgt_out != PAD_ID).sum())

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        return Batch(*(t.to(device, non_blocking=non_blocking) for t in vars(self).values()))

    def pin_memory(self) -> Batch:
        return Batch(*(t.pin_memory() for t in vars(self).values()))

    def shard(self, rank: int, world: int) -> Batch:
        """Rank `rank`'s contiguous share of this global batch split over `world` ranks:
        rows [size * rank // world, size * (rank + 1) // world)."""
        if world == 1:
            return self
        lo, hi = self.size * rank // world, self.size * (rank + 1) // world
        return Batch(*(t[lo:hi] for t in vars(self).values()))


REVERSALS = ("none", "words", "pieces")  # model.reverse_source
WORD_START = "\u2581"  # SentencePiece's mark on a piece that begins a word


class SourceOrder:
    """The order the encoder reads a source in, the one place the source is reversed.

    `reverse` is one of REVERSALS: "none" reads the source as written; "words" reverses the
    order of its words and keeps each word's pieces in order (the paper's reversal:
    "a b c" -> "c b a" for words a, b, c); "pieces" reverses it token by token, so a word
    split into pieces is read backwards too. `word_starts[i]` says whether token i of the
    source vocabulary begins a word; without it (word-level tokenizers) every token is a
    word, and "words" and "pieces" read alike.
    """

    def __init__(self, reverse: str = "none", word_starts: np.ndarray | None = None):
        if reverse not in REVERSALS:
            raise ValueError(f"reverse must be one of {', '.join(REVERSALS)}, got {reverse!r}")
        self.reverse = reverse
        self.word_starts = None if word_starts is None else np.asarray(word_starts, bool)

    @classmethod
    def of(cls, reverse: str, src_words: list[str], tokenizer_kind: str) -> SourceOrder:
        """The order for a source vocabulary (its words in id order) and tokenizer kind:
        with SentencePiece, a word begins at every piece marked with WORD_START."""
        if tokenizer_kind != "sentencepiece":
            return cls(reverse)
        return cls(reverse, np.fromiter((w.startswith(WORD_START) for w in src_words), bool,
                                        count=len(src_words)))

    def __call__(self, row: np.ndarray) -> np.ndarray:
        """One source sentence's ids (a 1-D array) in reading order."""
        if self.reverse == "none" or len(row) < 2:
            return row
        if self.reverse == "pieces" or self.word_starts is None:
            return row[::-1]
        # The first token opens a word whatever it is (a sentence may start mid-word).
        cuts = np.flatnonzero(self.word_starts[row[1:]]) + 1
        return np.concatenate(np.split(row, cuts)[::-1])

    def __repr__(self) -> str:
        return f"SourceOrder({self.reverse!r})"


def source_batch(
    sentences: Iterable[Iterable[int]], order: SourceOrder
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad source sentences, read in `order`, into (batch, src_len) ids and (batch,)
    lengths. Every path (training, validation, scoring, search) goes through here; padding
    always goes at the end.
    """
    rows = [order(_ids(s)) for s in sentences]
    src, lens = _pad(rows, offset=0)
    # An empty source is read as one <pad> step, so that it still has a final state.
    return torch.from_numpy(src), torch.from_numpy(np.maximum(lens, 1))


def target_batch(sentences: Iterable[Iterable[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forcing input (<s> y) and output (y </s>), both (batch, max_len + 1)."""
    rows = [_ids(s) for s in sentences]
    tgt_in, lens = _pad(rows, offset=1)
    tgt_in[:, 0] = BOS_ID
    tgt_out, _ = _pad(rows, offset=0, width=tgt_in.shape[1])
    tgt_out[np.arange(len(rows)), lens] = EOS_ID
    return torch.from_numpy(tgt_in), torch.from_numpy(tgt_out)


def _ids(sentence: Iterable[int]) -> np.ndarray:
    if not isinstance(sentence, np.ndarray | list | tuple):
        sentence = list(sentence)  # a generator
    return np.asarray(sentence, dtype=np.int64)


def _pad(rows: list[np.ndarray], offset: int, width: int | None = None
         ) -> tuple[np.ndarray, np.ndarray]:
    """rows -> an (n, width) array holding row i at columns offset .. offset + len_i - 1 and
    <pad> elsewhere, and the (n,) lengths. `width` defaults to the end of the longest row
    (at least 1)."""
    lens = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    width = width or max(1, offset + int(lens.max(initial=0)))
    out = np.full((len(rows), width), PAD_ID, dtype=np.int64)
    columns = np.arange(width)
    out[(columns >= offset) & (columns < offset + lens[:, None])] = np.concatenate(
        rows + [np.zeros(0, np.int64)])
    return out, lens


def collate(corpus: ParallelCorpus, indices: np.ndarray, order: SourceOrder) -> Batch:
    """The Batch of sentences `indices` of `corpus`, sources read in `order`."""
    src, src_lens = source_batch((corpus.src[i] for i in indices), order)
    tgt_in, tgt_out = target_batch(corpus.tgt[i] for i in indices)
    return Batch(src, src_lens, tgt_in, tgt_out)


# --------------------------------------------------------------------------- the stream


class BatchStream:
    """The training batches in order, epoch after epoch, and the position in them.

    Epoch e is `make_batches(..., seed=seed, epoch=e)` of the corpus, without the batches
    of fewer than `world` sentences (each rank needs at least one sentence of every global
    batch). The position, (epoch, index of the next batch in it), is the whole state:
    `state_dict()` / `load_state_dict()` carry it across a resumption, and the batches
    that follow are those of an uninterrupted run.

        stream = BatchStream(data.split("train"), cfg.batching, seed=1, order=model.source_order)
        batch = next(stream)   # the next global Batch
        stream.epoch           # fractional epoch of the batch after it, e.g. 2.25
    """

    def __init__(self, corpus: ParallelCorpus, batching: BatchingConfig, seed: int,
                 order: SourceOrder, world: int = 1):
        self.corpus = corpus
        self.batching = batching
        self.seed = seed
        self.order = order
        self.world = world
        self.epoch_index = 0  # the epoch of the next batch
        # The index of the next batch in its epoch. It may equal the epoch's length: the
        # stream moves on to the next epoch when that batch is asked for.
        self.batch_index = 0
        self._cached: tuple[int, list[np.ndarray]] | None = None  # (epoch, its batches)

    def epoch_batches(self, epoch: int) -> list[np.ndarray]:
        """The batches of `epoch`, in order: arrays of sentence indices into the corpus."""
        if self._cached is None or self._cached[0] != epoch:
            b = self.batching
            batches = make_batches(
                self.corpus.src.lengths, self.corpus.tgt.lengths, batch_size=b.batch_size,
                max_tokens=b.max_tokens, pool_batches=b.pool_batches, seed=self.seed,
                epoch=epoch,
            )
            self._cached = (epoch, [x for x in batches if len(x) >= self.world])
        return self._cached[1]

    @property
    def epoch(self) -> float:
        """Fractional epoch of the next batch: epochs done + batches done / batches in it."""
        done = self.batch_index / max(1, len(self.epoch_batches(self.epoch_index)))
        return self.epoch_index + done

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> Batch:
        """The next global Batch (collated on the host); moves the position past it."""
        if self.batch_index >= len(self.epoch_batches(self.epoch_index)):
            self.epoch_index, self.batch_index = self.epoch_index + 1, 0
        indices = self.epoch_batches(self.epoch_index)[self.batch_index]
        self.batch_index += 1
        return collate(self.corpus, indices, self.order)

    def state_dict(self) -> dict[str, int]:
        """The position: {"epoch": epoch of the next batch, "batch": its index there}."""
        return {"epoch": self.epoch_index, "batch": self.batch_index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a position saved by `state_dict()`."""
        self.epoch_index, self.batch_index = int(state["epoch"]), int(state["batch"])
