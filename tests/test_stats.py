"""seq2seq.stats on inputs small enough to compute by hand."""

import math

import numpy as np
import pytest

from seq2seq.stats import (
    paired_bleu,
    paired_effect,
    paired_perplexity,
    perplexity_per_word,
    t_cdf,
    t_quantile,
)


@pytest.mark.parametrize("df, t", [(1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622),
                                   (30, 2.0423)])
def test_t_quantile_matches_the_printed_table(df, t):
    assert t_quantile(0.975, df) == pytest.approx(t, abs=1e-4)
    assert t_quantile(0.025, df) == pytest.approx(-t, abs=1e-4)


def test_t_cdf_matches_closed_forms():
    # df 1 is the Cauchy distribution; df 2 has F(t) = 1/2 + t / (2 sqrt(2 + t^2)).
    for t in (-3.0, -0.5, 0.0, 1.0, 7.5):
        assert t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


def test_paired_effect_by_hand():
    # Differences 1, 2, 2: mean 5/3, sd sqrt(1/3), half-width t(0.975, 2) * sd / sqrt(3).
    e = paired_effect([1.0, 2.0, 3.0], [2.0, 4.0, 5.0])
    assert e.differences == [1.0, 2.0, 2.0] and e.n == 3
    assert e.mean == pytest.approx(5 / 3)
    assert e.sd == pytest.approx(math.sqrt(1 / 3))
    assert (e.low, e.high) == pytest.approx((5 / 3 - 4.30265 / 3, 5 / 3 + 4.30265 / 3),
                                            abs=1e-4)
    # t = (5/3) / (sqrt(1/3) / sqrt(3)) = 5; two-sided p = 1 - 5 / sqrt(27) with df 2.
    assert e.p == pytest.approx(1 - 5 / math.sqrt(27), abs=1e-10)


def test_paired_effect_sign_and_degenerate_cases():
    assert paired_effect([3.0, 5.0], [1.0, 2.0]).mean == pytest.approx(-2.5)  # treated - control
    one = paired_effect([1.0], [2.0])
    assert one.mean == 1.0 and math.isnan(one.low) and math.isnan(one.p)
    same = paired_effect([1.0, 2.0], [2.0, 3.0])  # no spread: the interval is the point
    assert (same.low, same.high, same.p) == (1.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="pairs"):
        paired_effect([1.0, 2.0], [1.0])


def test_perplexity_per_word_spreads_the_same_nll_over_words():
    # 2 sentences, total NLL 12 over 4 words + 2 </s>: exp(2). Per piece (say 10 pieces
    # + 2 </s>) the same NLL gives exp(1).
    assert perplexity_per_word(12.0, words=4, sentences=2) == pytest.approx(math.exp(2))


def test_paired_perplexity_by_hand():
    # Every sentence is 1 nat better per 2 units: the ratio is exp(-0.5) in every resample,
    # so the interval is that point and no resample reaches 0 (p = 1 / (samples + 1)).
    r = paired_perplexity(np.array([[2.0, 4.0]]), np.array([[1.0, 3.0]]), np.array([2, 2]),
                          samples=200)
    assert r.ratio == pytest.approx(math.exp(-0.5))
    assert (r.low, r.high) == pytest.approx((math.exp(-0.5), math.exp(-0.5)))
    assert r.p == pytest.approx(1 / 201)


def test_paired_perplexity_pools_seeds_and_finds_no_effect_in_noise():
    rng = np.random.default_rng(0)
    control = rng.gamma(5.0, 2.0, size=(3, 400))
    noise = rng.normal(0.0, 1.0, size=(3, 400))
    units = rng.integers(5, 20, size=400)
    null = paired_perplexity(control, control + noise - noise.mean(), units)
    assert null.p > 0.2 and null.low < 1.0 < null.high
    real = paired_perplexity(control, control - 0.5 + noise, units)
    expected = math.exp((-0.5 * 1200 + noise.sum()) / (3 * units.sum()))
    assert real.ratio == pytest.approx(expected) and real.high < 1.0 and real.p < 0.01
    with pytest.raises(ValueError, match="pair up"):
        paired_perplexity(control, control[:2], units)


REFS = ["the cat sat on the mat", "a dog barks at night", "it rains in paris today",
        "we like green tea", "the house is very big", "she reads a long book"] * 10


def test_paired_bleu_uses_sacrebleu_and_separates_systems():
    broken = [" ".join(r.split()[:2]) for r in REFS]  # two words of each reference
    one_off = [broken[0], *REFS[1:]]  # one sentence of sixty differs: no real difference
    close = paired_bleu(REFS, one_off, REFS)
    assert close.control == pytest.approx(100.0) and close.treated < 100.0 and close.p > 0.05
    for test in ("bs", "ar"):
        worse = paired_bleu(REFS, broken, REFS, test=test)
        assert worse.treated < worse.control and worse.p < 0.01 and worse.test == test
    # Equal BLEU is no difference at all (sacreBLEU alone would say p = 1 / 1,001).
    assert paired_bleu(broken, list(broken), REFS).p == 1.0
    with pytest.raises(ValueError, match="pair up"):
        paired_bleu(REFS, broken[:3], REFS)
