"""Statistics for comparing two kinds of model, as a reviewer reads them.

Two designs, both paired:

- **Over seeds.** Model A-k and model B-k share everything but the one thing compared
  (seed k fixes the initial weights and the batch order): `paired_effect` gives the mean of
  the per-seed differences B-k - A-k with a 95% Student-t interval. Few seeds make a wide
  interval, as they should.
- **Over test sentences.** Both kinds decode the same sentences: `paired_bleu` runs
  sacreBLEU's paired bootstrap resampling or approximate randomization (Koehn 2004; Riezler
  & Maxwell 2005) on their translations; `paired_perplexity` resamples sentences to put an
  interval and a p-value on a perplexity ratio.

Perplexity per word spreads the same total NLL over words (and one </s> a sentence) instead
of pieces: `perplexity_per_word`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from seq2seq.errors import check_integer, check_number

# ------------------------------------------------------------------ Student's t


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """I_x(a, b), the regularized incomplete beta function."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    log_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                 + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: int) -> float:
    """The t with P(T <= t) = p (0 < p < 1), by bisection on `t_cdf`."""
    check_number("p", p, 0.0, 1.0, above=True, below=True)
    check_integer("df", df, 1)
    lo, hi = -1e6, 1e6
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


# ------------------------------------------------------------------ over seeds


@dataclass
class PairedEffect:
    """The mean of paired differences (treated - control) and its interval."""

    n: int
    mean: float
    sd: float  # of the differences (n - 1 in the denominator); nan for one pair
    low: float  # the interval at `level`; nan for one pair
    high: float
    p: float  # two-sided paired t-test of mean = 0; nan for one pair
    level: float
    differences: list[float]

    def to_dict(self) -> dict:
        return asdict(self)


def paired_effect(control: Sequence[float], treated: Sequence[float],
                  level: float = 0.95) -> PairedEffect:
    """treated[k] - control[k] for each pair k (e.g. seed k of two kinds of model): their
    mean, standard deviation, Student-t interval at `level` and paired t-test p-value."""
    if len(control) != len(treated) or not control:
        raise ValueError(f"paired_effect needs pairs: got {len(control)} and {len(treated)} "
                         "values")
    d = [float(t) - float(c) for c, t in zip(control, treated)]
    n, mean = len(d), sum(d) / len(d)
    if n == 1:
        nan = float("nan")
        return PairedEffect(1, mean, nan, nan, nan, nan, level, d)
    sd = math.sqrt(sum((x - mean) ** 2 for x in d) / (n - 1))
    half = t_quantile(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    if sd == 0.0:
        p = 1.0 if mean == 0.0 else 0.0
    else:
        p = 2.0 * (1.0 - t_cdf(abs(mean) / (sd / math.sqrt(n)), n - 1))
    return PairedEffect(n, mean, sd, mean - half, mean + half, p, level, d)


# ------------------------------------------------------------------ over sentences


def perplexity_per_word(total_nll: float, words: int, sentences: int) -> float:
    """exp(total NLL / (words + sentences)): the NLL of every target piece and </s>
    spread over the words and one </s> per sentence, as a per-word perplexity is."""
    return math.exp(total_nll / (words + sentences))


@dataclass
class RatioTest:
    """treated / control perplexity over the same sentences, with a paired bootstrap."""

    ratio: float
    low: float
    high: float
    p: float
    samples: int
    level: float

    def to_dict(self) -> dict:
        return asdict(self)


def paired_perplexity(control: np.ndarray, treated: np.ndarray, units: np.ndarray,
                      samples: int = 1000, level: float = 0.95, seed: int = 12345
                      ) -> RatioTest:
    """Perplexity ratio treated / control and its paired bootstrap over sentences.

    `control` and `treated` are (models, sentences) arrays of each sentence's total NLL
    (one row per seed: seed k of both kinds in row k); `units` (sentences,) counts what
    perplexity is per (pieces + </s>, or words + </s>). Each resample draws sentences with
    replacement, the same draw for every model. The interval is the percentile interval;
    p is two-sided, from the resampled log-ratios centred on their mean (as sacreBLEU's
    paired bootstrap does): how often chance alone moves the log-ratio as far from 0 as
    observed.
    """
    control, treated = np.atleast_2d(control), np.atleast_2d(treated)
    units = np.asarray(units, dtype=np.float64)
    if control.shape != treated.shape or control.shape[1] != len(units):
        raise ValueError(f"paired_perplexity: shapes {control.shape}, {treated.shape} and "
                         f"{units.shape} do not pair up")
    delta = (treated - control).sum(0)  # each sentence's NLL difference, summed over seeds
    scale = control.shape[0]
    observed = delta.sum() / (scale * units.sum())
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(units), size=(samples, len(units)))
    resampled = delta[draws].sum(1) / (scale * units[draws].sum(1))
    tail = (1.0 - level) / 2
    low, high = np.quantile(resampled, [tail, 1.0 - tail])
    centred = np.abs(resampled - resampled.mean())
    p = (np.count_nonzero(centred >= abs(observed)) + 1) / (samples + 1)
    return RatioTest(math.exp(observed), math.exp(low), math.exp(high), float(p), samples,
                     level)


@dataclass
class BleuTest:
    """sacreBLEU's paired test of treated against control on the same references."""

    control: float
    treated: float
    p: float
    test: str  # "bs" (paired bootstrap resampling) or "ar" (approximate randomization)
    samples: int

    def to_dict(self) -> dict:
        return asdict(self)


def paired_bleu(control: Sequence[str], treated: Sequence[str], refs: Sequence[str],
                test: str = "bs", samples: int | None = None) -> BleuTest:
    """BLEU of both hypothesis lists and sacreBLEU's p-value that treated differs from
    control by chance (`test` "bs": 1,000 bootstrap samples; "ar": 10,000 shuffles)."""
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    if not len(control) == len(treated) == len(refs):
        raise ValueError(f"paired_bleu: {len(control)}, {len(treated)} and {len(refs)} "
                         "lines do not pair up")
    samples = samples or (1000 if test == "bs" else 10000)
    paired = PairedTest([("control", list(control)), ("treated", list(treated))],
                        {"BLEU": BLEU()}, [list(refs)], test_type=test, n_samples=samples)
    _, scores = paired()
    base, other = scores["BLEU"]
    # sacreBLEU counts resamples whose difference strictly exceeds the observed one, so two
    # systems of equal BLEU would get p = 1 / (samples + 1): a zero difference called
    # significant. Equal scores leave nothing to attribute to chance or not: p = 1.
    p = 1.0 if base.score == other.score else float(other.p_value)
    return BleuTest(base.score, other.score, p, test, samples)
