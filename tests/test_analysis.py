import gzip
import json
import math
from collections import Counter

import numpy as np
import pytest

from seq2seq.analysis import (
    NbestEntry,
    bleu_by_bucket,
    bleu_by_length,
    bleu_by_rarity,
    equal_count_buckets,
    length_buckets,
    mean_frequency_rank,
    mean_training_rank,
    nll_profile,
    pca_2d,
    read_nbest,
    rescore,
    source_words,
    target_words,
    token_nlls,
    token_perplexity,
    training_word_ranks,
)
from seq2seq.cli import main
from seq2seq.errors import ArgumentError, DataError
from seq2seq.rundir import RunDir
from seq2seq.stats import perplexity_per_word
from seq2seq.text import Tokenizer, read_lines
from seq2seq.vocab import Vocabulary

REF = ["le chat dort", "le chien mange sa soupe", "il pleut", "nous partons demain matin tôt"]


def test_length_buckets_by_hand():
    assert length_buckets([1, 2, 6, 7, 11], width=5) == [(1, 6), (6, 11), (11, 16)]
    keys = [1, 2, 6, 7]
    hyps = [REF[0], REF[1], "x y", "a b c d"]  # bucket 1 right, bucket 2 all wrong
    buckets = bleu_by_bucket(keys, hyps, REF, [(1, 6), (6, 11)])
    assert [b.sentences for b in buckets] == [2, 2]
    assert buckets[0].bleu == pytest.approx(100) and buckets[1].bleu == pytest.approx(0)


def test_bleu_by_length_counts_moses_words_whatever_the_model_tokenizes():
    sources = ["Go!", "I like it.", "Where is the big red station?"]  # 2, 4, 7 words
    buckets = bleu_by_length(sources, REF[:3], REF[:3], width=3)
    assert [(b.low, b.high, b.sentences) for b in buckets] == [(1, 4, 1), (4, 7, 1),
                                                               (7, 10, 1)]
    fixed = bleu_by_length(sources, REF[:3], REF[:3], ranges=[(1, 5), (5, 50)])
    assert [b.sentences for b in fixed] == [2, 1]


def test_frequency_ranks_by_hand():
    vocab = Vocabulary(["<pad>", "<unk>", "<s>", "</s>", "the", "cat", "dog"])
    assert mean_frequency_rank(["the", "dog", "zebra"], vocab) == pytest.approx((1 + 3 + 4) / 3)
    assert mean_frequency_rank(["cat"], vocab) == 2


def experiments_rarity(train_path, sentences):
    """experiments/paper.py's rarity before it moved here (word_ranks and task_model), copied
    as the reference that the library's must equal."""
    tok = Tokenizer("moses", "en")
    counts = Counter(w for line in read_lines(train_path) for w in tok.tokenize(line))
    ranks = {w: rank for rank, (w, _) in enumerate(counts.most_common(), start=1)}
    words = [tok.tokenize(line) for line in sentences]
    unknown = len(ranks) + 1
    return ranks, [float(np.mean([ranks.get(w, unknown) for w in ws])) if ws else 0.0
                   for ws in words]


def test_training_word_ranks_are_the_experiments(tmp_path, corpus):
    train = tmp_path / "train.en.gz"
    with gzip.open(train, "wt", encoding="utf-8") as f:
        f.write("the cat sat.\nthe dog sat on the mat.\nA cat!\n")
    ranks = training_word_ranks(train, "en")
    # the x3, sat x2, . x2, cat x2 (ties in order of first appearance), then the rest once.
    assert list(ranks.items())[:5] == [("the", 1), ("cat", 2), ("sat", 3), (".", 4),
                                       ("dog", 5)]
    assert ranks == training_word_ranks(["the cat sat.", "the dog sat on the mat.", "A cat!"])
    assert mean_training_rank(["the cat", "zebra", ""], ranks) == [1.5, len(ranks) + 1, 0.0]
    # On a real slice: the same ranks and rarity as experiments/paper.py computed them.
    sources = list(read_lines(corpus["valid_src"]))
    expected_ranks, expected = experiments_rarity(corpus["train_src"], sources)
    ranks = training_word_ranks(corpus["train_src"], "en")
    assert ranks == expected_ranks
    assert mean_training_rank(sources, ranks, "en") == expected


def test_bleu_by_rarity_checks_its_bucket_count():
    rarity = [1.0, 2.0, 3.0, 4.0]
    assert sum(b.sentences for b in bleu_by_rarity(rarity, REF, REF, buckets=2)) == 4
    with pytest.raises(ArgumentError, match="buckets must be an integer >= 1, got 0"):
        bleu_by_rarity(rarity, REF, REF, buckets=0)


def test_token_nlls_sum_to_minus_the_score(translator, corpus):
    sources = list(read_lines(corpus["valid_src"]))[:20] + ["", "Tom."]
    refs = list(read_lines(corpus["valid_tgt"]))[:20] + ["Rien.", ""]
    nlls = token_nlls(translator, sources, refs, batch_size=6)  # several batches, unsorted
    assert [len(x) for x in nlls] == [len(t) + 1 for t in translator.target_ids(refs)]
    assert all(x.dtype == np.float64 and (x > 0).all() for x in nlls)
    scores = translator.score(sources, refs)
    assert [-float(x.sum()) for x in nlls] == pytest.approx(scores, abs=1e-4)
    one_batch = token_nlls(translator, sources, refs, batch_size=64)
    assert np.concatenate(one_batch) == pytest.approx(np.concatenate(nlls), abs=1e-5)
    assert token_perplexity(nlls) == pytest.approx(
        math.exp(-sum(scores) / sum(len(x) for x in nlls)))
    with pytest.raises(ArgumentError, match="22 sources but 21 references"):
        token_nlls(translator, sources, refs[:-1])


def test_nll_profile_and_per_word_perplexity_by_hand():
    nlls = [np.array([1.0, 2.0, 3.0]), np.array([0.5, 0.5]), np.array([4.0])]
    profile = nll_profile(nlls, [3, 12, 40], length_edges=(1, 10, 20, 30),
                          position_edges=(1, 2, 4))
    by_length = [(b["low"], b["high"], b["tokens"]) for b in profile["by_length"]]
    assert by_length == [(1, 10, 3), (10, 20, 2), (20, 30, 0)]  # length 40: not counted
    assert [b["ppl"] for b in profile["by_length"][:2]] == pytest.approx(
        [math.exp(6 / 3), math.exp(1 / 2)])
    assert math.isnan(profile["by_length"][2]["ppl"])
    # position 1: 1, 0.5, 4; positions 2-3: 2, 3, 0.5.
    assert [(b["low"], b["high"], b["tokens"]) for b in profile["by_position"]] == [
        (1, 2, 3), (2, 4, 3)]
    assert [b["ppl"] for b in profile["by_position"]] == pytest.approx(
        [math.exp(5.5 / 3), math.exp(5.5 / 3)])
    # The same 11 nats over 3 + 1 + 1 words and 3 </s> (8) instead of 6 pieces and </s>.
    refs = ["Le chat.", "Oui", "Non"]
    assert target_words(refs) == [3, 1, 1]
    assert perplexity_per_word(sum(x.sum() for x in nlls), sum(target_words(refs)), 3) == \
        pytest.approx(math.exp(11 / 8))
    assert token_perplexity(nlls) == pytest.approx(math.exp(11 / 6))
    with pytest.raises(ArgumentError, match="position_edges"):
        nll_profile(nlls, [3, 12, 40], position_edges=(1, 1))


def test_nll_profile_pools_every_token_of_the_test_set(translator, corpus):
    sources = list(read_lines(corpus["valid_src"]))
    refs = list(read_lines(corpus["valid_tgt"]))
    nlls = token_nlls(translator, sources, refs)
    profile = nll_profile(nlls, source_words(sources))
    total = sum(len(x) for x in nlls)
    assert max(source_words(sources)) < 101 and max(len(x) for x in nlls) < 201
    for key in ("by_length", "by_position"):
        assert sum(b["tokens"] for b in profile[key]) == total
        nats = sum(b["tokens"] * math.log(b["ppl"]) for b in profile[key] if b["tokens"])
        assert nats == pytest.approx(-sum(translator.score(sources, refs)), rel=1e-6)


def test_equal_count_buckets_split_evenly():
    ranges = equal_count_buckets(list(range(1, 9)), count=4)
    counts = [sum(lo <= v < hi for v in range(1, 9)) for lo, hi in ranges]
    assert counts == [2, 2, 2, 2]


def test_pca_finds_the_direction_of_largest_variance():
    vectors = np.array([[1.0, 0, 0], [-1, 0, 0], [0, 2, 0], [0, -2, 0]])
    points = pca_2d(vectors)
    assert np.abs(points[2:, 0]) == pytest.approx([2, 2])
    assert np.abs(points[:2, 1]) == pytest.approx([1, 1])
    with pytest.raises(DataError):
        pca_2d(vectors[:1])


def test_rescoring_by_hand(translator):
    sources = ["Tom is here.", "I like cats."]
    best = [t.text for t in translator.translate(sources, beam=4)]
    # The list puts garbage first; the model prefers its own beam-search output.
    entries = [NbestEntry(0, "chat chat chat chat chat", -1.0), NbestEntry(0, best[0], -5.0),
               NbestEntry(1, best[1], -9.0), NbestEntry(1, "le le le le le le le", -2.0)]
    model_only = rescore(list(entries), sources, translator, weight=1.0)
    assert [e.text for e in model_only] == [best[0], entries[0].text, best[1], entries[3].text]
    list_only = rescore(list(entries), sources, translator, weight=0.0)
    assert [e.text for e in list_only] == [entries[0].text, best[0], entries[3].text, best[1]]
    for e in rescore(list(entries), sources, translator, weight=0.5):
        assert e.combined == pytest.approx(0.5 * e.model_score + 0.5 * e.score)


def test_read_nbest_format(tmp_path):
    path = tmp_path / "n.txt"
    path.write_text("0 ||| le chat ||| -1.5\n0 ||| un chat ||| f=1 2 ||| -2.0\n")
    assert [(e.source, e.text, e.score) for e in read_nbest(path)] == [
        (0, "le chat", -1.5), (0, "un chat", -2.0)]
    path.write_text("0 ||| le chat\n")
    with pytest.raises(DataError, match="n.txt line 1"):
        read_nbest(path)


def test_plot_commands_write_readable_files(capsys, tmp_path, trained_run, corpus):
    model = str(trained_run / "best.pt")
    src, ref = str(corpus["valid_src"]), str(corpus["valid_tgt"])
    for kind in ("length", "rarity"):
        code = main(["plot", kind, "--model", model, "--src", src, "--ref", ref, "--beam", "1",
                     "--out", str(tmp_path / kind)])
        assert code == 0
        assert (tmp_path / f"{kind}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (tmp_path / f"{kind}.svg").exists()
        data = json.loads((tmp_path / f"{kind}.json").read_text())
        assert sum(b["sentences"] for b in data["buckets"]) == 100
    code = main(["plot", "pca", "--model", model, "--phrases", "examples/phrases.en",
                 "--out", str(tmp_path / "pca")])
    assert code == 0 and (tmp_path / "pca.png").stat().st_size > 10_000
    capsys.readouterr()
    code = main(["evaluate", "--model", model, "--src", src, "--ref", ref, "--beam", "1",
                 "--by-length"])
    assert code == 0 and "src words | sentences |  BLEU" in capsys.readouterr().out
    main(["evaluate", "--model", model, "--src", src, "--ref", ref, "--beam", "1",
          "--by-length", "--json"])
    by_length = json.loads(capsys.readouterr().out)["by_length"]["buckets"]
    plotted = json.loads((tmp_path / "length.json").read_text())["buckets"]
    assert by_length == plotted  # one length measure and one bucketing for both verbs


def test_plot_rarity_by_training_words_and_profile(capsys, tmp_path, trained_run, corpus):
    from seq2seq.translator import Translator

    model = str(trained_run / "best.pt")
    src, ref = str(corpus["valid_src"]), str(corpus["valid_tgt"])
    hyps = tmp_path / "hyps.fr"
    hyps.write_text(corpus["valid_tgt"].read_text())  # perfect translations: no decoding
    code = main(["plot", "rarity", "--measure", "train-words", "--train-src",
                 str(corpus["train_src"]), "--model", model, "--src", src, "--ref", ref,
                 "--hyps", str(hyps), "--buckets", "4", "--out", str(tmp_path / "rarity")])
    assert code == 0
    buckets = json.loads((tmp_path / "rarity.json").read_text())["buckets"]
    sources = list(read_lines(src))
    _, rarity = experiments_rarity(corpus["train_src"], sources)
    assert [(b["low"], b["high"], b["sentences"]) for b in buckets] == [
        (b.low, b.high, b.sentences) for b in bleu_by_bucket(
            rarity, sources, sources, equal_count_buckets(rarity, 4))]
    assert (tmp_path / "rarity.png").exists() and (tmp_path / "rarity.svg").exists()

    capsys.readouterr()
    code = main(["plot", "profile", "--model", model, "--src", src, "--ref", ref,
                 "--out", str(tmp_path / "profile")])
    assert code == 0
    assert (tmp_path / "profile.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "profile.svg").exists()
    data = json.loads((tmp_path / "profile.json").read_text())
    refs = list(read_lines(ref))
    nlls = token_nlls(Translator.load(model, device="cpu"), sources, refs)
    expected = nll_profile(nlls, source_words(sources))
    for key in ("by_length", "by_position"):
        assert [b["tokens"] for b in data[key]] == [b["tokens"] for b in expected[key]]
        assert [b["ppl"] for b in data[key]] == pytest.approx(
            [b["ppl"] for b in expected[key]], nan_ok=True)
    assert data["sentences"] == 100
    assert data["ppl"] == pytest.approx(token_perplexity(nlls))
    # The tiny model's tokens are Moses words, so per word and per piece agree.
    total = sum(float(x.sum()) for x in nlls)
    assert data["ppl_per_word"] == pytest.approx(
        perplexity_per_word(total, sum(target_words(refs)), len(refs)))
    assert data["ppl_per_word"] == pytest.approx(data["ppl"])
    assert "tgt position | tokens |     ppl" in capsys.readouterr().out


def test_plot_curves_draws_runs_and_reports_their_validation(capsys, tmp_path, trained_run):
    import matplotlib

    backend = matplotlib.get_backend()
    other = tmp_path / "other"
    other.mkdir()
    lines = [{"step": 10, "loss": 5.0, "ppl": 148.4, "elapsed_s": 3.0},
             {"step": 20, "valid_ppl": 90.0, "valid_bleu": 1.5, "elapsed_s": 6.5},
             {"step": 40, "valid_ppl": 70.0, "valid_bleu": 2.5, "elapsed_s": 12.0}]
    (other / "metrics.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n")
    code = main(["plot", "curves", str(trained_run), str(other), "--out", str(tmp_path / "c")])
    assert code == 0
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "c.svg").exists()
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.strip().startswith("other"))
    assert [c.strip() for c in row.split("|")][:4] == ["other", "40", "70.00", "70.00"]
    # The trained run's own records: every validation line carries the wall time so far.
    records = RunDir(trained_run).read_metrics()
    valid = [r for r in records if "valid_ppl" in r]
    assert [r["step"] for r in valid] == [60, 120]
    assert 0 < valid[0]["elapsed_s"] < valid[1]["elapsed_s"]
    assert matplotlib.get_backend() == backend  # plotting left pyplot's backend alone


def test_plot_curves_errors_name_the_run(capsys, tmp_path):
    assert main(["plot", "curves", str(tmp_path), "--out", str(tmp_path / "c")]) == 2
    assert f"{tmp_path}/metrics.jsonl: not found" in capsys.readouterr().err
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\nnot json\n')
    assert main(["plot", "curves", str(tmp_path), "--out", str(tmp_path / "c")]) == 2
    assert "metrics.jsonl line 2: not JSON" in capsys.readouterr().err
    assert main(["plot", "curves", "--out", str(tmp_path / "c")]) == 2
    assert "needs at least one RUN_DIR" in capsys.readouterr().err
    assert main(["plot", "length", str(tmp_path), "--out", str(tmp_path / "c")]) == 2
    assert "takes no RUN_DIR" in capsys.readouterr().err


@pytest.mark.parametrize("line", ['{"step": "10", "ppl": 3.0}', '{"step": 10, "ppl": [1]}',
                                  '{"step": true}'])
def test_plot_curves_refuses_a_record_with_a_wrong_typed_number(capsys, tmp_path, line):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "ppl": 9.0}\n' + line + "\n")
    assert main(["plot", "curves", str(tmp_path), "--out", str(tmp_path / "c")]) == 2
    assert "metrics.jsonl line 2: '" in capsys.readouterr().err
