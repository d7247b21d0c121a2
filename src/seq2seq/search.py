"""Decoding: greedy and batched beam search over an ensemble of one or more models.

A hypothesis' score is its log-probability sum_t log p(y_t | y_<t, S). Beam search ranks
complete hypotheses by that score, as in the paper, unless given a length penalty alpha > 0:
then by score / lp(n), lp(n) = ((5 + n) / 6) ** alpha for n tokens with </s> (the length
normalisation of Wu et al., 2016), which offsets the sum's bias toward short outputs.
An ensemble averages the models' log-probabilities at every step. With a vocabulary
shortlist (`seq2seq.shortlist`), each batch is decoded over its candidate target words only,
and the log-probabilities are normalised over them.
A hypothesis may hold at most `max_len_a * len(source) + max_len_b` tokens before </s>;
at that length </s> is the only choice left.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from seq2seq.data import source_batch, target_batch
from seq2seq.errors import MAX_BEAM, MAX_LENGTH_PENALTY, check_integer, check_number
from seq2seq.model import Seq2Seq, State
from seq2seq.shortlist import OutputRows, Shortlist
from seq2seq.vocab import BOS_ID, EOS_ID


@dataclass
class Hypothesis:
    tokens: list[int]  # target ids, without <s> and </s>
    score: float  # log p(tokens </s> | source)


# Output length limits: 100 x the source + 10,000 tokens is beyond any translation, and
# keeps the limit an integer a tensor can hold (1e300 x a length is not)
MAX_LEN_A, MAX_LEN_B = 100.0, 10_000


def check_decoding(beam: int = 12, nbest: int = 1, batch_size: int = 64,
                   max_len_a: float = 2.0, max_len_b: int = 10,
                   length_penalty: float = 0.0) -> None:
    """ArgumentError naming the first decoding argument outside its range: the one check
    behind `Translator`, the CLI's decoding verbs and the server."""
    check_integer("beam", beam, 1, MAX_BEAM)
    check_integer("nbest", nbest, 1, beam, " (at most beam)")
    check_integer("batch_size", batch_size, 1)
    check_integer("max_len_b", max_len_b, 0, MAX_LEN_B)
    check_number("max_len_a", max_len_a, 0.0, MAX_LEN_A)
    check_number("length_penalty", length_penalty, 0.0, MAX_LENGTH_PENALTY)


def length_norm(n: int | torch.Tensor, alpha: float):
    """lp(n) = ((5 + n) / 6) ** alpha: the divisor of a score of n tokens (</s> included)."""
    return ((5 + n) / 6) ** alpha


class Ensemble:
    """Models decoded together: one state per model, log-probabilities averaged per step;
    with a `shortlist`, over each batch's candidate words (`for_sources`)."""

    def __init__(self, models: list[Seq2Seq], shortlist: Shortlist | None = None):
        self.models = models
        self.shortlist = shortlist
        self.device = next(models[0].parameters()).device
        self.vocab_size = models[0].decoder.output.out_features
        # Restricted to some words (`for_sources`): the output layers of those words, one
        # per model, and their ids in the whole vocabulary (vocab_size,). None: all words.
        self.outputs = self.vocab_ids = None
        self._rows: list[OutputRows] | None = None

    def for_sources(self, sources: list[list[int]]) -> Ensemble:
        """The ensemble that decodes `sources`: itself, or with a shortlist, a copy whose
        output layers score only the batch's candidates (`Shortlist.candidates`), every
        model the same ones; its `top_tokens` gives ids of the whole vocabulary."""
        if self.shortlist is None:
            return self
        if self._rows is None:  # at the first batch, once a Translator cast or quantized
            self._rows = [OutputRows(m.decoder.output) for m in self.models]
        ids = self.shortlist.candidates(sources).to(self.device)
        restricted = copy.copy(self)
        restricted.shortlist, restricted.vocab_ids, restricted.vocab_size = None, ids, len(ids)
        restricted.outputs = [rows.take(ids) for rows in self._rows]
        return restricted

    def encode(self, sources: list[list[int]]) -> list[State]:
        """Each model encodes the sources with its own reversal setting."""
        states = []
        for model in self.models:
            src, lens = source_batch(sources, model.source_order)
            states.append(model.encode(src.to(self.device), lens))
        return states

    def advance(self, tokens: torch.Tensor,
                states: list[State]) -> tuple[list[torch.Tensor], list[State]]:
        """Feed tokens (n,) to every model: their top-layer outputs (n, hidden), new states."""
        out = [m.decode_hidden(tokens, s) for m, s in zip(self.models, states)]
        return [o[0] for o in out], [o[1] for o in out]

    def log_probs(self, hiddens: list[torch.Tensor], lo: int, hi: int) -> torch.Tensor:
        """Mean log-probabilities (hi - lo, vocab) of rows lo:hi of `advance`'s outputs."""
        outputs = self.outputs or [None] * len(self.models)  # None: the model's own layer
        logp = self.models[0].log_probs(hiddens[0][lo:hi], outputs[0])
        for model, output, h in zip(self.models[1:], outputs[1:], hiddens[1:]):
            logp += model.log_probs(h[lo:hi], output)
        return logp / len(self.models) if len(self.models) > 1 else logp

    def top_tokens(self, hiddens: list[torch.Tensor], lo: int, hi: int, k: int,
                   only_eos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The k most probable next tokens of rows lo:hi of `advance`'s outputs.

        Returns their float32 log-probabilities and ids, (hi - lo, k) each, best first.
        Rows marked in `only_eos` (hi - lo,) may only end: </s> is their one finite choice.
        """
        logp = self.log_probs(hiddens, lo, hi)  # (rows, vocab)
        if bool(only_eos.any()):
            logp[only_eos, :EOS_ID] = logp[only_eos, EOS_ID + 1:] = float("-inf")
        values, ids = logp.topk(k, dim=1)
        return values, ids if self.vocab_ids is None else self.vocab_ids[ids]

    @staticmethod
    def select(states: list[State], rows: torch.Tensor) -> list[State]:
        """Keep (and reorder, or repeat) the batch rows `rows` of every state."""
        return [(h.index_select(1, rows), c.index_select(1, rows)) for h, c in states]

    def token_logprobs(self, sources: list[list[int]], targets: list[list[int]]) -> torch.Tensor:
        """Teacher-forced mean log p(y_t | ...) of every target token and </s>: (batch, tgt_len)."""
        tgt_in, tgt_out = (t.to(self.device) for t in target_batch(targets))
        total = 0
        for model in self.models:
            src, lens = source_batch(sources, model.source_order)
            total = total - model.token_nll(src.to(self.device), lens, tgt_in, tgt_out)
        return total / len(self.models)


CACHE_FLOATS = 1 << 22  # 16 MB of float32 (within L3): what one chunk of scores may span


def cache_ranges(n: int, rows_per_item: int, vocab: int) -> list[tuple[int, int]]:
    """(lo, hi) ranges over n sentences, each spanning about CACHE_FLOATS scores: the
    sentences whose next-token scores beam and greedy search compute at once."""
    per = max(1, CACHE_FLOATS // (rows_per_item * vocab))
    return [(lo, min(n, lo + per)) for lo in range(0, n, per)]


def _max_lens(sources: list[list[int]], a: float, b: int, device) -> torch.Tensor:
    return torch.tensor([int(a * len(s) + b) for s in sources], device=device)


@torch.inference_mode()
def greedy_search(
    ensemble: Ensemble, sources: list[list[int]], max_len_a: float = 2.0, max_len_b: int = 10,
) -> list[Hypothesis]:
    """The most probable next token at every step, for a batch of sources."""
    ensemble = ensemble.for_sources(sources)
    device = ensemble.device
    states = ensemble.encode(sources)
    n = len(sources)
    max_lens = _max_lens(sources, max_len_a, max_len_b, device)
    alive = torch.arange(n, device=device)  # original index of each remaining row
    tokens = torch.full((n,), BOS_ID, device=device)
    scores = torch.zeros(n, device=device)
    history = torch.zeros((n, 0), dtype=torch.long, device=device)
    results: list[Hypothesis | None] = [None] * n
    t = 0
    while len(alive):
        hiddens, states = ensemble.advance(tokens, states)
        at_max = t >= max_lens
        maxima = [ensemble.top_tokens(hiddens, lo, hi, 1, at_max[lo:hi])
                  for lo, hi in cache_ranges(len(alive), 1, ensemble.vocab_size)]
        best = torch.cat([v for v, _ in maxima])[:, 0]
        tokens = torch.cat([i for _, i in maxima])[:, 0]
        scores = scores + best
        done = tokens == EOS_ID
        for row in done.nonzero()[:, 0].tolist():
            results[alive[row]] = Hypothesis(history[row].tolist(), scores[row].item())
        keep = (~done).nonzero()[:, 0]
        history = torch.cat([history[keep], tokens[keep, None]], 1)
        alive, tokens, scores, max_lens = alive[keep], tokens[keep], scores[keep], max_lens[keep]
        states = Ensemble.select(states, keep)
        t += 1
    return results


@torch.inference_mode()
def beam_search(
    ensemble: Ensemble, sources: list[list[int]], beam_size: int = 12, nbest: int = 1,
    max_len_a: float = 2.0, max_len_b: int = 10, length_penalty: float = 0.0,
) -> list[list[Hypothesis]]:
    """Batched beam search: the `nbest` best complete hypotheses of each source, best first.

    All live hypotheses of all sentences form one flat (batch * beam) batch. Each step takes
    the top 2 * beam candidates over (beam x vocab) per sentence, so that `beam` non-</s>
    candidates survive even if up to `beam` of them end. A candidate ending in </s> among
    the top `beam` is complete. Only each row's `beam + 1` best words are candidates: a
    sentence's `beam` best candidates are among its rows' `beam` best, its `beam` best
    that do not end among its rows' `beam + 1` best (each row has one </s>), and these are
    within the sentence's top 2 * beam of them (at most `beam` ending candidates, one per
    row, rank above them): the result of scoring every word, with less top-k work per
    row. A sentence leaves the batch once its nbest-th complete score is at least its best
    live score: scores only fall, so no live hypothesis can overtake it.

    With `length_penalty` alpha > 0, complete hypotheses are ranked by score / lp(length)
    and a sentence leaves once its nbest-th normalised score is at least its best live
    score / lp(longest allowed length): the most any live hypothesis could still reach.
    Hypothesis.score stays the log-probability.

    The first step decodes one row per sentence, not `beam` copies of it: every
    hypothesis starts from the same <s> and state, so the other rows would only repeat it.
    """
    check_decoding(beam_size, nbest, 1, max_len_a, max_len_b, length_penalty)
    ensemble = ensemble.for_sources(sources)
    device, k = ensemble.device, beam_size
    n = len(sources)
    states = ensemble.encode(sources)
    max_lens = _max_lens(sources, max_len_a, max_len_b, device)  # (b,)
    alpha = length_penalty
    alive = torch.arange(n, device=device)  # (b,) original index of each live sentence
    # r live hypotheses per sentence: one (<s>) at the start, then k.
    tokens = torch.full((n,), BOS_ID, device=device)  # (b * r,) last token of each hypothesis
    history = torch.zeros((n, 0), dtype=torch.long, device=device)  # (b * r, t)
    scores = torch.zeros((n, 1), device=device)  # (b, r)
    best_done = torch.full((n, nbest), float("-inf"), device=device)  # (b, nbest) ranking scores
    results: list[list[Hypothesis]] = [[] for _ in range(n)]
    t = 0
    vocab = ensemble.vocab_size
    while len(alive):
        hiddens, states = ensemble.advance(tokens, states)
        at_max = t >= max_lens  # (b,)
        # Score in chunks of sentences whose (rows x vocab) scores stay in the CPU's cache.
        # Each row's k + 1 best words (see above), then the best 2k of the r x (k + 1) per
        # sentence.
        r = scores.shape[1]
        tops = []
        for lo, hi in cache_ranges(len(alive), r, vocab):
            logp, token = ensemble.top_tokens(hiddens, lo * r, hi * r, min(k + 1, vocab),
                                              at_max[lo:hi].repeat_interleave(r))  # (rows, c)
            c = logp.shape[1]
            candidates = (scores[lo:hi, :, None] + logp.view(-1, r, c)).view(-1, r * c)
            top_scores, top = candidates.topk(min(2 * k, r * c), dim=1)  # (s, 2k)
            tops.append((top_scores, top // c, token.view(-1, r * c).gather(1, top)))
        top_scores, top_beam, top_token = (torch.cat(parts) for parts in zip(*tops))  # (b, 2k)
        rows = torch.arange(len(alive), device=device)[:, None] * r + top_beam  # (b, 2k) into b*r

        # Complete hypotheses: </s> among the top k candidates.
        ends = (top_token == EOS_ID) & torch.isfinite(top_scores)
        ends[:, k:] = False
        if bool(ends.any()):
            _collect(results, ends, alive, rows, history, top_scores)
            ended = top_scores.masked_fill(~ends, float("-inf")) / length_norm(t + 1, alpha)
            best_done = torch.cat([best_done, ended], 1).topk(nbest, dim=1).values

        # Live hypotheses: the k best candidates that do not end (positions keep score order).
        # With fewer than k of them (a first step over a vocabulary smaller than the beam),
        # the ending candidates that fill the beam are dead: score -inf.
        width = top_scores.shape[1]
        is_eos = top_token == EOS_ID
        order = is_eos.long() * width + torch.arange(width, device=device)
        pick = order.topk(min(k, width), dim=1, largest=False).indices  # (b, k'), k' <= k
        scores = top_scores.gather(1, pick).masked_fill(is_eos.gather(1, pick), float("-inf"))
        reachable = scores[:, 0] / length_norm(max_lens + 1, alpha) if alpha else scores[:, 0]
        done = at_max | (best_done[:, -1] >= reachable)

        keep = (~done).nonzero()[:, 0]  # (b',)
        keep_rows = rows.gather(1, pick)[keep].view(-1)  # (b' * k,)
        tokens = top_token.gather(1, pick)[keep].view(-1)
        history = torch.cat([history[keep_rows], tokens[:, None]], 1)
        states = Ensemble.select(states, keep_rows)
        scores, best_done = scores[keep], best_done[keep]
        alive, max_lens = alive[keep], max_lens[keep]
        t += 1
    def rank(h: Hypothesis) -> float:
        return -h.score / length_norm(len(h.tokens) + 1, alpha)

    return [sorted(r, key=rank)[:nbest] for r in results]


def _collect(results, ends, alive, rows, history, top_scores) -> None:
    """Append the hypotheses marked in `ends` (b, 2k) to `results` of their sentences."""
    b, c = ends.nonzero(as_tuple=True)
    sentences = alive[b].tolist()
    prefixes = history[rows[b, c]].tolist()
    for sentence, prefix, score in zip(sentences, prefixes, top_scores[b, c].tolist()):
        results[sentence].append(Hypothesis(prefix, score))
