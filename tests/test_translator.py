import pytest
import torch

from conftest import needs_bf16
from seq2seq.data import DataDir
from seq2seq.device import cpu_has_bf16
from seq2seq.errors import ArgumentError, ConfigError
from seq2seq.evaluate import bleu_chrf, perplexity, tokenized_bleu
from seq2seq.translator import Translator

SENTENCES = ["Tom is here.", "I like cats very much.", "Where is the station?", "Go!",
             "We have to talk about what happened yesterday."]


def test_batched_translation_equals_one_sentence_at_a_time(translator):
    batched = translator.translate(SENTENCES, beam=4, batch_size=3)
    for sentence, result in zip(SENTENCES, batched):
        (alone,) = translator.translate([sentence], beam=4)
        assert alone.text == result.text
        assert alone.score == pytest.approx(result.score, abs=1e-4)


def test_beam_one_equals_greedy_on_a_trained_model(translator):
    greedy = translator.translate(SENTENCES, beam=1)
    beam = translator.translate(SENTENCES, beam=1, nbest=1)
    assert [t.text for t in greedy] == [t.text for t in beam]


def test_ensemble_of_one_checkpoint_twice_equals_the_checkpoint(trained_run, translator):
    pair = Translator.load([trained_run / "best.pt"] * 2, device="cpu")
    assert [t.text for t in pair.translate(SENTENCES, beam=3)] == [
        t.text for t in translator.translate(SENTENCES, beam=3)]


def test_encode_gives_sentence_vectors(translator):
    top = translator.encode(SENTENCES)
    every = translator.encode(SENTENCES, layers="all")
    assert top.shape == (5, 32) and every.shape == (5, 64)
    assert (every[:, 32:] == top).all()
    (single,) = translator.encode(SENTENCES[1:2])
    assert single == pytest.approx(top[1], abs=1e-6)


def test_perplexity_agrees_with_training_validation(trained_run, corpus, data_dir, translator):
    import json

    valid = [json.loads(line) for line in (trained_run / "metrics.jsonl").open()
             if "valid_ppl" in line]
    best = min(r["valid_ppl"] for r in valid)
    sources = corpus["valid_src"].read_text().splitlines()
    refs = corpus["valid_tgt"].read_text().splitlines()
    assert len(DataDir(data_dir).split("valid")) == len(sources)
    assert perplexity(translator, sources, refs) == pytest.approx(best, rel=1e-3)


def test_bleu_of_references_against_themselves():
    refs = ["Le chat est là.", "Il pleut des cordes aujourd'hui."]
    assert bleu_chrf(refs, refs)["bleu"] == pytest.approx(100)
    assert tokenized_bleu(refs, refs, "fr") == pytest.approx(100)
    assert bleu_chrf(["x y z"] * 2, refs)["bleu"] < 1


def test_tokenized_bleu_by_hand():
    # 5 tokens, the last one wrong: n-gram precisions 4/5, 3/4, 2/3, 1/2; equal lengths.
    score = tokenized_bleu(["le chat noir dort bien"], ["le chat noir dort mal"], "fr")
    assert score == pytest.approx(100 * (4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25, abs=1e-6)


@needs_bf16
def test_bf16_decoding_stays_close_to_fp32(trained_run, corpus):
    sources = corpus["valid_src"].read_text(encoding="utf-8").splitlines()[:40]
    targets = corpus["valid_tgt"].read_text(encoding="utf-8").splitlines()[:40]
    fp32 = Translator.load(trained_run / "best.pt", device="cpu")
    bf16 = Translator.load(trained_run / "best.pt", device="cpu", precision="bf16")
    # Scores of the same pairs: within 1% (bf16 keeps 8 bits of mantissa in the matmuls).
    s32, s16 = fp32.score(sources, targets), bf16.score(sources, targets)
    assert s16 == pytest.approx(s32, rel=0.01)
    # Beam search: most outputs are the same sentence.
    same = sum(a.text == b.text for a, b in zip(fp32.translate(sources, beam=4),
                                                bf16.translate(sources, beam=4)))
    assert same >= 0.8 * len(sources)


def test_precision_is_checked(trained_run):
    with pytest.raises(ConfigError, match="fp16 needs a CUDA"):
        Translator.load(trained_run / "best.pt", device="cpu", precision="fp16")
    with pytest.raises(ConfigError, match="precision must be one of"):
        Translator.load(trained_run / "best.pt", device="cpu", precision="int8")


def test_one_string_is_refused_not_split_into_characters(translator):
    with pytest.raises(ArgumentError, match=r"sentences must be a list of strings, not one"):
        translator.translate("How are you?")
    with pytest.raises(ArgumentError, match="sources must be a list of strings, not one"):
        translator.score("abc", ["xyz"])
    with pytest.raises(ArgumentError, match="targets must be a list of strings, not one"):
        translator.score(["abc"], "xyz")
    with pytest.raises(ArgumentError, match="sentences must be a list of strings"):
        translator.translate([1, 2])
    with pytest.raises(ArgumentError, match="sentences must be a list of strings, not one"):
        translator.encode("How are you?")
    with pytest.raises(ArgumentError, match="sentences must be a list of strings"):
        translator.translate(7)
    as_list = [t.text for t in translator.translate(["Go!", "Tom is here."], beam=2)]
    assert [t.text for t in translator.translate((s for s in ["Go!", "Tom is here."]),
                                                 beam=2)] == as_list  # any iterable
    with pytest.raises(ArgumentError, match="layers must be 'top' or 'all'"):
        translator.encode(["How are you?"], layers="middle")


@pytest.mark.parametrize("kwargs, message", [
    ({"beam": 0}, "beam must be an integer in 1..256, got 0"),
    ({"beam": 10_000}, "beam must be an integer in 1..256, got 10000"),
    ({"beam": 2.5}, "beam must be an integer in 1..256, got 2.5"),
    ({"beam": 3, "nbest": 4}, r"nbest must be an integer in 1..3 \(at most beam\), got 4"),
    ({"nbest": 0}, r"nbest must be an integer in 1..12 \(at most beam\), got 0"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1, got 0"),
    ({"max_len_a": -1.0}, "max_len_a must be a finite number >= 0, got -1.0"),
    ({"max_len_a": float("nan")}, "max_len_a must be a finite number >= 0, got nan"),
    ({"max_len_b": -1}, "max_len_b must be an integer >= 0, got -1"),
    ({"length_penalty": -0.5}, r"length_penalty must be a finite number in \[0, 10\], got -0.5"),
    ({"length_penalty": float("inf")}, r"length_penalty must be a finite number in \[0, 10\]"),
    ({"length_penalty": 11}, r"length_penalty must be a finite number in \[0, 10\], got 11"),
])
def test_decoding_arguments_are_checked_with_one_message(translator, kwargs, message):
    with pytest.raises(ArgumentError, match=message):
        translator.translate(["How are you?"], **kwargs)


def test_cli_gives_the_translator_s_message(capsys, trained_run):
    from seq2seq.cli import main

    code = main(["translate", "--model", str(trained_run / "best.pt"), "--beam", "10000"])
    assert code == 2
    assert "beam must be an integer in 1..256, got 10000" in capsys.readouterr().err


@pytest.mark.skipif(cpu_has_bf16(), reason="this CPU runs bf16")
def test_bf16_on_a_cpu_without_it_runs_fp32_with_a_warning(trained_run, caplog):
    t = Translator.load(trained_run / "best.pt", device="cpu", precision="bf16")
    assert t.precision == "fp32"
    assert {p.dtype for p in t.ensemble.models[0].parameters()} == {torch.float32}
    assert t.translate(["Tom is here."], beam=2)[0].text
    assert "bf16 needs a CPU with AVX-512 BF16 or AMX" in caplog.text
