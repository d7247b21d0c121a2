import json
import shutil

import numpy as np
import pytest
import torch

from seq2seq.config import BatchingConfig
from seq2seq.data import (
    Batch,
    BatchStream,
    DataDir,
    SourceOrder,
    collate,
    make_batches,
    source_batch,
    target_batch,
)
from seq2seq.errors import DataError
from seq2seq.vocab import BOS_ID, EOS_ID, PAD_ID, SPECIALS, Vocabulary


def test_truncated_binary_is_detected(data_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    ids = copy / "train.src.ids"
    ids.write_bytes(ids.read_bytes()[:-8])
    with pytest.raises(DataError, match="truncated"):
        DataDir(copy).split("train")


@pytest.mark.parametrize("version", [2, 0, "1", None, [[1] * 50]])
def test_a_data_format_version_it_does_not_read_is_refused_naming_the_directory(
        data_dir, tmp_path, version):
    import json
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(data_dir, copy)
    meta = json.loads((copy / "meta.json").read_text())
    meta["version"] = version
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"copy/meta.json: data format version .{1,90}; "
                                        r"this seq2seq reads version 1 \("):
        DataDir(copy)


def lengths(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(1, 30, n).astype(np.int32), rng.integers(1, 30, n).astype(np.int32)


def test_batches_cover_each_sentence_once_and_are_deterministic():
    src, tgt = lengths(1000)
    kw = dict(batch_size=16, max_tokens=None, pool_batches=5, seed=1)
    batches = make_batches(src, tgt, epoch=0, **kw)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    assert all(len(b) <= 16 for b in batches)
    again = make_batches(src, tgt, epoch=0, **kw)
    assert all((a == b).all() for a, b in zip(batches, again))
    other = make_batches(src, tgt, epoch=1, **kw)
    assert any(len(a) != len(b) or (a != b).any() for a, b in zip(batches, other))


def test_bucketing_keeps_padding_low_and_respects_token_budget():
    src, tgt = lengths(5000)
    batches = make_batches(src, tgt, batch_size=0, max_tokens=600, pool_batches=50, seed=2,
                           epoch=0)
    assert sorted(np.concatenate(batches).tolist()) == list(range(5000))
    padded = real = 0
    for b in batches:
        cost = len(b) * (src[b].max() + tgt[b].max() + 1)
        assert cost <= 600 or len(b) == 1
        padded += len(b) * src[b].max()
        real += src[b].sum()
    assert real / padded > 0.95  # sorted pools: source padding nearly gone


PIECES, NONE = SourceOrder("pieces"), SourceOrder("none")


def test_source_and_target_batches():
    src, lens = source_batch([[4, 5, 6], [7]], PIECES)
    assert src.tolist() == [[6, 5, 4], [7, PAD_ID, PAD_ID]] and lens.tolist() == [3, 1]
    src, _ = source_batch([[4, 5, 6]], NONE)
    assert src.tolist() == [[4, 5, 6]]
    tgt_in, tgt_out = target_batch([[8, 9], [10]])
    assert tgt_in.tolist() == [[BOS_ID, 8, 9], [BOS_ID, 10, PAD_ID]]
    assert tgt_out.tolist() == [[8, 9, EOS_ID], [10, EOS_ID, PAD_ID]]
    src, lens = source_batch([[], [4, 5]], PIECES)  # empty: one <pad> step
    assert src.tolist() == [[PAD_ID, PAD_ID], [5, 4]] and lens.tolist() == [1, 2]
    tgt_in, tgt_out = target_batch([[]])
    assert tgt_in.tolist() == [[BOS_ID]] and tgt_out.tolist() == [[EOS_ID]]


# Sentences as words, each word a list of pieces ("▁" marks a word's first piece).
WORDED = [
    [["▁The"], ["▁cat", "s"], ["▁sat", "."]],
    [["▁un", "believ", "able"]],
    [["s", "t"], ["▁end"]],  # starts mid-word: its first piece opens a word all the same
    [["▁a"], ["▁b"], ["▁c"], ["▁d"]],
    [],
]


def _slow_reversal(words: list[list[str]], unit: str) -> list[str]:
    """The reference: reverse a list of words (each a list of pieces) word by word or piece
    by piece, on strings."""
    if unit == "words":
        return [p for word in reversed(words) for p in word]
    return [p for word in words for p in word][::-1]


@pytest.mark.parametrize("unit", ["words", "pieces"])
def test_source_order_reverses_like_a_slow_reference(unit):
    words = sorted({p for s in WORDED for w in s for p in w})
    vocab = Vocabulary([*SPECIALS, *words])
    order = SourceOrder.of(unit, vocab.words, "sentencepiece")
    rows = [vocab.encode(p for w in s for p in w) for s in WORDED]
    src, lens = source_batch(rows, order)
    for sentence, row, n in zip(WORDED, src.tolist(), lens.tolist()):
        if sentence:
            assert vocab.decode(row[:n]) == _slow_reversal(sentence, unit)
    if unit == "words":  # the two reversals differ only where a word has several pieces
        assert vocab.decode(src[0].tolist()) == ["▁sat", ".", "▁cat", "s", "▁The"]
    # A word-level tokenizer: every token is a word, so both reversals read alike.
    assert SourceOrder.of(unit, vocab.words, "moses")(np.arange(4, 9)).tolist() == [8, 7, 6, 5, 4]


def test_source_order_of_a_data_directory_marks_sentencepiece_word_starts(tmp_path):
    from seq2seq.prepare import prepare

    for split, n in (("train", 300), ("valid", 20)):
        for lang in ("en", "fr"):
            lines = [f"line {i} with some wordy unbelievable sentence" for i in range(n)]
            (tmp_path / f"{split}.{lang}").write_text("\n".join(lines) + "\n")
    prepare(tmp_path / "train.en", tmp_path / "train.fr", tmp_path / "valid.en",
            tmp_path / "valid.fr", tmp_path / "data", src_vocab=60, tgt_vocab=60,
            tokenizer="sentencepiece")
    data = DataDir(tmp_path / "data")
    order = data.source_order("words")
    starts = [w for w, s in zip(data.src_vocab.words, order.word_starts) if s]
    assert starts and all(w.startswith("▁") for w in starts)
    assert len(starts) < len(data.src_vocab) - 4  # some pieces continue a word
    first = data.split("valid").src[0]
    assert order(np.asarray(first)).tolist() != first[::-1].tolist()


def _stream(data_dir, batch_size=100, world=1) -> BatchStream:
    return BatchStream(DataDir(data_dir).split("train"), BatchingConfig(batch_size=batch_size),
                       seed=3, order=PIECES, world=world)


def _assert_same(a: Batch, b: Batch) -> None:
    assert all(torch.equal(x, y) for x, y in zip(vars(a).values(), vars(b).values()))


def test_stream_gives_the_batches_of_make_batches_epoch_after_epoch(data_dir):
    stream, corpus = _stream(data_dir), DataDir(data_dir).split("train")
    for epoch in (0, 1):
        expected = make_batches(corpus.src.lengths, corpus.tgt.lengths, batch_size=100,
                                max_tokens=None, pool_batches=100, seed=3, epoch=epoch)
        assert len(expected) == 15  # 1,500 pairs
        for i, indices in enumerate(expected):
            assert stream.epoch == pytest.approx(epoch + i / 15)
            _assert_same(next(stream), collate(corpus, indices, PIECES))
    # At the end of an epoch the position stays there until the next batch is asked for.
    assert stream.epoch == 2.0 and stream.state_dict() == {"epoch": 1, "batch": 15}
    next(stream)
    assert stream.state_dict() == {"epoch": 2, "batch": 1}


@pytest.mark.parametrize("stop", [7, 15, 16])  # mid-epoch, at its end, just after
def test_a_restored_stream_continues_as_an_uninterrupted_one(data_dir, stop):
    whole = _stream(data_dir)
    expected = [next(whole) for _ in range(25)]
    first = _stream(data_dir)
    for _ in range(stop):
        next(first)
    resumed = _stream(data_dir)
    resumed.load_state_dict(first.state_dict())
    assert resumed.epoch == first.epoch
    for want in expected[stop:]:
        _assert_same(next(resumed), want)


def test_stream_drops_batches_smaller_than_the_world_and_shards_the_rest(data_dir):
    sizes = [len(b) for b in _stream(data_dir, batch_size=7).epoch_batches(0)]
    assert sorted(sizes)[:2] == [2, 7]  # 1,500 = 214 x 7 + 2
    batches = _stream(data_dir, batch_size=7, world=3).epoch_batches(0)
    assert len(batches) == len(sizes) - 1 and min(len(b) for b in batches) == 7
    batch = next(_stream(data_dir, batch_size=7, world=3))
    shards = [batch.shard(rank, 3) for rank in range(3)]
    assert [s.size for s in shards] == [2, 2, 3]
    _assert_same(Batch(*(torch.cat(t) for t in zip(*(vars(s).values() for s in shards)))),
                 batch)



@pytest.mark.parametrize("damage", [{"tokenizer": None}, {"tokenizer": {"src": {}}},
                                    {"max_len": "50"}, {"max_len": None}])
def test_a_meta_json_without_tokenizer_or_max_len_is_a_data_error(data_dir, tmp_path, damage):
    copy = tmp_path / "data"
    shutil.copytree(data_dir, copy)
    meta = json.loads((copy / "meta.json").read_text())
    meta.update(damage)
    meta = {k: v for k, v in meta.items() if v is not None}
    (copy / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match=r"meta.json: (lacks the tokenizer settings|max_len "
                                        r"must be an integer >= 1)"):
        DataDir(copy)
