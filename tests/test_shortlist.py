"""The vocabulary shortlist: its table, its candidates per batch, decoding over them, its file."""

import copy

import pytest
import torch

from conftest import needs_bf16
from seq2seq.config import ModelConfig
from seq2seq.data import DataDir
from seq2seq.device import quantize_int8
from seq2seq.errors import CheckpointError
from seq2seq.model import Seq2Seq
from seq2seq.prepare import prepare
from seq2seq.search import Ensemble, beam_search, greedy_search
from seq2seq.shortlist import Shortlist, build_shortlist, fingerprint
from seq2seq.translator import Translator
from seq2seq.vocab import BOS_ID, EOS_ID, PAD_ID, Vocabulary

SOURCES = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14], [4, 15, 16, 17, 18, 19, 20], [21], [7, 7]]
SRC_VOCAB, TGT_VOCAB = 30, 12


def untrained(seed: int) -> Seq2Seq:
    torch.manual_seed(seed)  # a wide init: hypotheses differ and end at different lengths
    cfg = ModelConfig(embed_dim=16, hidden_size=24, num_layers=2, init_range=0.5)
    return Seq2Seq(SRC_VOCAB, TGT_VOCAB, cfg).eval()


def shortlist_of(table: list[list[int]], frequent: list[int]) -> Shortlist:
    return Shortlist(torch.tensor(table, dtype=torch.int32),
                     torch.tensor(frequent, dtype=torch.int32),
                     {"size": len(table), "sha256": ""}, {"size": TGT_VOCAB, "sha256": ""})


def whole_vocabulary() -> Shortlist:
    """Every source word's row holds every target word."""
    return shortlist_of([list(range(TGT_VOCAB))] * SRC_VOCAB, [])


def models(count: int, precision: str) -> list[Seq2Seq]:
    out = [untrained(seed) for seed in range(count)]
    if precision == "int8":
        out = [quantize_int8(m) for m in out]
    return [m.to(torch.bfloat16) for m in out] if precision == "bf16" else out


def decode(ensemble: Ensemble, search: str, precision: str):
    with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
        if search == "greedy":
            return [[h] for h in greedy_search(ensemble, SOURCES)]
        return beam_search(ensemble, SOURCES, beam_size=4, nbest=3)


def same_hypotheses(found, expected, tol=1e-5):
    for a, b in zip(found, expected):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=tol)


# --------------------------------------------------------------------------- candidates


def test_candidates_are_the_batch_rows_the_frequent_and_every_id_up_to_eos():
    gen = torch.Generator().manual_seed(0)
    table = torch.randint(0, 500, (40, 7), generator=gen).tolist()
    shortlist = Shortlist(torch.tensor(table, dtype=torch.int32),
                          torch.tensor([300, 17, 9], dtype=torch.int32), {}, {})
    batch = [[5, 39, 5], [0, 12], []]
    ids = shortlist.candidates(batch).tolist()
    expected = {0, 1, 2, EOS_ID, 300, 17, 9} | {t for s in batch for w in s for t in table[w]}
    assert ids == sorted(expected)  # sorted, each once, nothing else
    assert ids[EOS_ID] == EOS_ID  # </s> keeps its id in the restricted vocabulary


def test_a_reference_piece_in_the_table_is_never_dropped(data_dir):
    # Every piece of a validation reference that the table lists for a piece of its
    # source, or that is frequent, is a candidate of the batch holding that source.
    shortlist = build_shortlist(data_dir, translations=5, frequent=20, iterations=2)
    valid = DataDir(data_dir).split("valid")
    pairs = [(valid.src[i].tolist(), valid.tgt[i].tolist()) for i in range(len(valid))]
    checked = 0
    for start in range(0, len(pairs), 16):
        batch = pairs[start:start + 16]
        candidates = set(shortlist.candidates([s for s, _ in batch]).tolist())
        for source, reference in batch:
            listed = set(shortlist.table[source].flatten().tolist())
            listed |= set(shortlist.frequent.tolist())
            for piece in reference:
                if piece in listed:
                    assert piece in candidates
                    checked += 1
    assert checked > 100
    assert len(candidates) < len(DataDir(data_dir).tgt_vocab)  # it does select


# --------------------------------------------------------------------------- building


PAIRS = [("the cat", "le chat"), ("the dog", "le chien"), ("the cat sleeps", "le chat dort"),
         ("the dog eats", "le chien mange"), ("the bird sings", "le oiseau chante"),
         ("the cat eats", "le chat mange"), ("the dog sleeps", "le chien dort"),
         ("the bird eats", "le oiseau mange"), ("a cat", "un chat"), ("a dog", "un chien")]


def test_ibm_model_1_puts_the_obvious_translation_first(tmp_path):
    # "le" is in every sentence with "cat", as often as "chat", and has the lower id (it
    # is more frequent): counting co-occurrences would rank it first for "cat". IBM 1
    # explains it by "the".
    src, tgt = tmp_path / "train.en", tmp_path / "train.fr"
    src.write_text("".join(s + "\n" for s, _ in PAIRS))
    tgt.write_text("".join(t + "\n" for _, t in PAIRS))
    prepare(src, tgt, src, tgt, tmp_path / "data", src_vocab=100, tgt_vocab=100,
            tokenizer="space")
    data = DataDir(tmp_path / "data")
    shortlist = build_shortlist(tmp_path / "data", translations=4, frequent=2)
    s, t = data.src_vocab.index, data.tgt_vocab.words
    assert t.index("le") < t.index("chat")
    first = {word: t[int(shortlist.table[s[word], 0])] for word in
             ("the", "cat", "dog", "bird", "sleeps", "eats", "sings", "a")}
    assert first == {"the": "le", "cat": "chat", "dog": "chien", "bird": "oiseau",
                     "sleeps": "dort", "eats": "mange", "sings": "chante", "a": "un"}
    assert shortlist.table.shape == (len(data.src_vocab), 4)
    assert [t[i] for i in shortlist.frequent] == ["le", "chat"]  # chat, chien: 4 each
    assert int(shortlist.table[s["sings"], 3]) == EOS_ID  # 3 co-occurring words, then </s>


def test_build_checks_its_arguments(data_dir):
    with pytest.raises(ValueError, match="translations must be an integer >= 1, got 0"):
        build_shortlist(data_dir, translations=0)


# --------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=needs_bf16), "int8"])
@pytest.mark.parametrize("count", [1, 2])
@pytest.mark.parametrize("search", ["greedy", "beam"])
def test_a_shortlist_of_the_whole_vocabulary_decodes_exactly(precision, count, search):
    exact_models = models(count, precision)
    exact = decode(Ensemble(exact_models), search, precision)
    restricted = decode(Ensemble(exact_models, whole_vocabulary()), search, precision)
    same_hypotheses(restricted, exact)


@pytest.mark.parametrize("count", [1, 2])
def test_a_shortlist_decodes_as_the_model_without_the_other_words(count):
    # Decoding over the candidates equals exact decoding of models whose other words can
    # never be said (their logits -inf): same hypotheses, same scores.
    shortlist = shortlist_of([[5, 6]] * SRC_VOCAB, [8, 10])  # candidates 0-3, 5, 6, 8, 10
    mine = models(count, "fp32")
    with torch.no_grad():  # words, not <pad> or <s>
        for model in mine:
            model.decoder.output.bias[[PAD_ID, BOS_ID]] -= 10.0
    silenced = copy.deepcopy(mine)
    with torch.no_grad():
        for model in silenced:
            model.decoder.output.bias[[4, 7, 9, 11]] = float("-inf")
    said = set()
    for search in ("greedy", "beam"):
        found = decode(Ensemble(mine, shortlist), search, "fp32")
        same_hypotheses(found, decode(Ensemble(silenced), search, "fp32"), tol=1e-4)
        said |= {t for hyps in found for h in hyps for t in h.tokens}
    assert said <= {1, 5, 6, 8, 10} and len(said) > 2


def test_int8_output_rows_equal_the_whole_layer_s():
    from seq2seq.shortlist import PACK_ROWS, OutputRows

    layer = quantize_int8(untrained(0)).decoder.output
    rows = OutputRows(layer)
    ids = torch.tensor([0, 3, 4, 9, 11])
    # a range whose largest activation rounds to 128 (uint8, 7-bit scale): a decoder state
    # that came up in a demo model's greedy decoding
    edge = torch.rand(3, 24) * 2 - 1
    edge[0, :2] = torch.tensor([-0.9999991059303284, 0.9999991059303284])
    quantized = torch.quantize_per_tensor_dynamic(edge, torch.quint8, reduce_range=True)
    assert quantized.int_repr().max() == 128
    # calls of few rows (greedy's) run unpacked; the first of PACK_ROWS rows packs the rows
    # for fbgemm, which then runs every call of the batch
    some, packed = rows.take(ids), False
    for hidden in (torch.randn(5, 24), torch.rand(1, 24) + 2, torch.rand(64, 24) * 2 - 1,
                   edge, torch.randn(PACK_ROWS, 24), torch.randn(7, 24), edge):
        assert torch.equal(some(hidden), layer(hidden)[:, ids])
        packed |= len(hidden) >= PACK_ROWS
        assert (some.packed is not None) == packed
    assert packed
    assert rows.take(ids)(torch.empty(0, 24)).shape == (0, len(ids))


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_an_int8_output_layer_with_zero_points_is_refused():
    from torch.ao.quantization import (
        PerChannelMinMaxObserver,
        PlaceholderObserver,
        QConfig,
        quantize_dynamic,
    )

    from seq2seq.shortlist import OutputRows

    affine = QConfig(activation=PlaceholderObserver.with_args(dtype=torch.quint8,
                                                              is_dynamic=True),
                     weight=PerChannelMinMaxObserver.with_args(
                         dtype=torch.qint8, qscheme=torch.per_channel_affine))
    model = quantize_dynamic(untrained(0), {torch.nn.Linear: affine}, dtype=torch.qint8)
    with pytest.raises(ValueError, match="zero points 0"):
        OutputRows(model.decoder.output)


# --------------------------------------------------------------------------- the file


@pytest.fixture(scope="module")
def built(data_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("shortlist") / "shortlist.pt"
    build_shortlist(data_dir, translations=4, frequent=10, iterations=2).save(path)
    return path


def test_a_saved_shortlist_loads_as_it_was(built, data_dir):
    data = DataDir(data_dir)
    loaded = Shortlist.load(built, data.src_vocab, data.tgt_vocab)
    again = build_shortlist(data_dir, translations=4, frequent=10, iterations=2)
    assert torch.equal(loaded.table, again.table) and torch.equal(loaded.frequent,
                                                                  again.frequent)
    assert loaded.src_vocab == fingerprint(data.src_vocab)
    assert loaded.built == {"pairs": len(data.split("train")), "iterations": 2}
    assert not list(built.parent.glob(".*tmp*"))  # written atomically


def test_a_shortlist_for_other_vocabularies_is_refused_naming_the_side(built, data_dir):
    data = DataDir(data_dir)
    other = Vocabulary([*data.tgt_vocab.words[:-1], "zzz"])
    with pytest.raises(CheckpointError) as err:
        Shortlist.load(built, data.src_vocab, other)
    message = str(err.value)
    assert message.startswith(f"{built}: built for another target vocabulary")
    assert f"({len(data.tgt_vocab):,} words) than the model's ({len(other):,} words)" in message
    smaller = Vocabulary(data.src_vocab.words[:100])
    with pytest.raises(CheckpointError, match=r"another source vocabulary \(.* words\) than "
                                              r"the model's \(100 words\)"):
        Shortlist.load(built, smaller, data.tgt_vocab)


def _damaged(state: dict, built) -> dict:
    return {**torch.load(built, weights_only=True), **state}


@pytest.mark.parametrize("content, message", [
    (b"not a zip file", "not a readable shortlist (truncated or corrupt?)"),
    ({"format": "seq2seq-checkpoint", "version": 3}, "not a seq2seq shortlist"),
    ({"version": 9}, "shortlist version 9 (this seq2seq reads 1)"),
    ({"table": torch.zeros(3, 2, dtype=torch.int32)}, "its table is (3, 2), needed ("),
    ({"table": "x"}, "its table must be a 2-D int32 tensor"),
    ({"frequent": torch.tensor([10 ** 6], dtype=torch.int32)},
     "its frequent holds ids outside the target vocabulary"),
])
def test_a_bad_shortlist_file_is_refused_naming_the_file(built, data_dir, tmp_path, content,
                                                        message):
    data = DataDir(data_dir)
    path = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        state = _damaged(content, built)
        if content.get("format"):
            state = content
        torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        Shortlist.load(path, data.src_vocab, data.tgt_vocab)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)
    with pytest.raises(CheckpointError, match="shortlist not found"):
        Shortlist.load(tmp_path / "none.pt", data.src_vocab, data.tgt_vocab)


# --------------------------------------------------------------------------- Translator


SENTENCES = ["Tom is here.", "I like cats very much.", "Where is the station?", "Go!",
             "We have to talk about what happened yesterday."]


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_translator_with_a_shortlist_of_every_word_translates_exactly(trained_run, data_dir,
                                                                      tmp_path, precision):
    path = tmp_path / "all.pt"
    every = len(DataDir(data_dir).tgt_vocab)
    build_shortlist(data_dir, translations=1, frequent=every, iterations=1).save(path)
    model = trained_run / "best.pt"
    exact = Translator.load(model, device="cpu", precision=precision)
    listed = Translator.load(model, device="cpu", precision=precision, shortlist=path)
    assert listed.ensemble.shortlist is not None and exact.ensemble.shortlist is None
    for beam in (1, 3):
        for a, b in zip(listed.translate(SENTENCES, beam=beam, nbest=beam),
                        exact.translate(SENTENCES, beam=beam, nbest=beam)):
            assert [text for text, _ in a.nbest] == [text for text, _ in b.nbest]
            assert [s for _, s in a.nbest] == pytest.approx([s for _, s in b.nbest], abs=1e-4)


def test_translator_with_a_shortlist_says_only_its_candidates(trained_run, built):
    listed = Translator.load(trained_run / "best.pt", device="cpu", shortlist=built)
    sources = listed.source_ids(SENTENCES)
    candidates = set(listed.ensemble.shortlist.candidates(sources).tolist())
    said = {t for nbest in beam_search(listed.ensemble, sources, beam_size=3, nbest=3)
            for h in nbest for t in h.tokens}
    assert said <= candidates and len(said) > 2
