import itertools

import pytest
import torch

from seq2seq import search
from seq2seq.config import ModelConfig
from seq2seq.model import Seq2Seq
from seq2seq.search import Ensemble, beam_search, greedy_search

SOURCES = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14], [4, 15, 16, 17, 18, 19, 20], [21], [7, 7]]


def untrained(seed):
    torch.manual_seed(seed)
    # A large init spreads the output distribution, so hypotheses differ and end at
    # different lengths; a tiny vocabulary makes </s> likely early.
    cfg = ModelConfig(embed_dim=16, hidden_size=24, num_layers=2, init_range=0.5)
    return Seq2Seq(30, 12, cfg).eval()


@pytest.fixture(scope="module")
def ensemble():
    return Ensemble([untrained(0)])


def test_beam_one_equals_greedy(ensemble):
    greedy = greedy_search(ensemble, SOURCES)
    beam = beam_search(ensemble, SOURCES, beam_size=1)
    for g, (b,) in zip(greedy, beam):
        assert g.tokens == b.tokens
        assert g.score == pytest.approx(b.score, abs=1e-4)


@pytest.mark.parametrize("beam", [1, 3, 12])
def test_batched_beam_equals_one_at_a_time(ensemble, beam):
    batched = beam_search(ensemble, SOURCES, beam_size=beam, nbest=min(beam, 3))
    for src, hyps in zip(SOURCES, batched):
        (alone,) = beam_search(ensemble, [src], beam_size=beam, nbest=min(beam, 3))
        assert [h.tokens for h in hyps] == [h.tokens for h in alone]
        assert [h.score for h in hyps] == pytest.approx([h.score for h in alone], abs=1e-4)


def test_batched_greedy_equals_one_at_a_time(ensemble):
    batched = greedy_search(ensemble, SOURCES)
    for src, hyp in zip(SOURCES, batched):
        assert greedy_search(ensemble, [src])[0].tokens == hyp.tokens


def test_beam_scores_are_log_probabilities_of_the_hypotheses(ensemble):
    hyps = beam_search(ensemble, SOURCES, beam_size=4, nbest=4)
    for src, nbest in zip(SOURCES, hyps):
        scores = [h.score for h in nbest]
        assert scores == sorted(scores, reverse=True)
        teacher = ensemble.token_logprobs([src] * len(nbest), [h.tokens for h in nbest]).sum(1)
        assert teacher.tolist() == pytest.approx(scores, abs=1e-4)


def test_wider_beam_finds_at_least_as_probable_translations(ensemble):
    narrow = beam_search(ensemble, SOURCES, beam_size=1)
    wide = beam_search(ensemble, SOURCES, beam_size=8)
    assert all(w[0].score >= n[0].score - 1e-5 for n, w in zip(narrow, wide))
    assert any(w[0].score > n[0].score + 1e-3 for n, w in zip(narrow, wide))


def test_max_length_bound(ensemble):
    for a, b in [(0.0, 0), (0.0, 2), (1.0, 1)]:
        for src, hyp in zip(SOURCES, greedy_search(ensemble, SOURCES, a, b)):
            assert len(hyp.tokens) <= a * len(src) + b
        for src, (hyp,) in zip(SOURCES, beam_search(ensemble, SOURCES, 3, 1, a, b)):
            assert len(hyp.tokens) <= a * len(src) + b


def test_ensemble_of_identical_models_equals_single_model(ensemble):
    twice = Ensemble([untrained(0), untrained(0)])
    single = beam_search(ensemble, SOURCES, beam_size=3)
    double = beam_search(twice, SOURCES, beam_size=3)
    assert [h[0].tokens for h in single] == [h[0].tokens for h in double]


def test_ensemble_averages_log_probabilities():
    a, b = untrained(1), untrained(2)
    ens = Ensemble([a, b])
    states = ens.encode(SOURCES[:2])
    tokens = torch.tensor([2, 2])
    hiddens, _ = ens.advance(tokens, states)
    logp = ens.log_probs(hiddens, 0, len(tokens))
    la, lb = (m.log_probs(m.decode_hidden(tokens, s)[0]) for m, s in zip((a, b), states))
    assert torch.allclose(logp, (la + lb) / 2)


def test_nbest_must_fit_in_the_beam(ensemble):
    with pytest.raises(ValueError, match="nbest"):
        beam_search(ensemble, SOURCES, beam_size=2, nbest=3)


@pytest.mark.parametrize("beam", [1, 4])
def test_scoring_in_chunks_of_one_sentence_changes_nothing(ensemble, beam, monkeypatch):
    whole = beam_search(ensemble, SOURCES, beam_size=beam, nbest=beam)
    greedy = greedy_search(ensemble, SOURCES)
    monkeypatch.setattr(search, "CACHE_FLOATS", 1)  # every sentence its own chunk
    assert search.cache_ranges(len(SOURCES), beam, 12) == [(i, i + 1) for i in range(len(SOURCES))]
    chunked = beam_search(ensemble, SOURCES, beam_size=beam, nbest=beam)
    for a, b in zip(chunked, whole):  # matmuls of fewer rows may round differently
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-4)
    for a, b in zip(greedy_search(ensemble, SOURCES), greedy):
        assert a.tokens == b.tokens and a.score == pytest.approx(b.score, abs=1e-4)


@pytest.mark.parametrize("beam", [1, 4])
def test_ensemble_of_one_model_twice_equals_the_model(ensemble, beam):
    # The same log-probabilities, averaged: the same hypotheses and scores. And the
    # per-row top-k that beam search builds on equals the top-k of the full distribution.
    twice = Ensemble(ensemble.models * 2)
    for a, b in zip(beam_search(ensemble, SOURCES, beam_size=beam, nbest=beam),
                    beam_search(twice, SOURCES, beam_size=beam, nbest=beam)):
        assert [h.tokens for h in a] == [h.tokens for h in b]
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-5)
    with torch.inference_mode():
        states = ensemble.encode(SOURCES[:2])
        hiddens, _ = ensemble.advance(torch.full((2,), search.BOS_ID), states)
        logp, tokens = ensemble.top_tokens(hiddens, 0, 2, 3, torch.tensor([False, True]))
        full = ensemble.log_probs(hiddens, 0, 2)
    assert torch.allclose(logp[0], full[0].topk(3).values, atol=1e-5)
    assert tokens[0].tolist() == full[0].topk(3).indices.tolist()
    assert tokens[1, 0] == search.EOS_ID
    assert float(logp[1, 0]) == pytest.approx(float(full[1, search.EOS_ID]), abs=1e-5)
    assert torch.isinf(logp[1, 1:]).all()


@pytest.fixture(scope="module")
def few_words():
    """A model that can only say </s> and three words (ids 5-7), so that every output of up
    to 4 words can be listed: 1 + 3 + 9 + 27 + 81 of them."""
    model = untrained(0)
    with torch.no_grad():
        out = model.decoder.output
        banned = torch.ones(out.out_features, dtype=torch.bool)
        banned[[search.EOS_ID, *FEW_WORDS]] = False
        out.weight[banned], out.bias[banned] = 0.0, -50.0
        out.weight.mul_(0.3)
    return Ensemble([model])


FEW_WORDS = [5, 6, 7]


def _exhaustive_best(ensemble, src, max_tokens, alpha):
    """Every output of up to `max_tokens` words, scored by teacher forcing: the best by
    log p / lp(length with </s>)."""
    outputs = [[]]
    for n in range(1, max_tokens + 1):
        outputs += [list(t) for t in itertools.product(FEW_WORDS, repeat=n)]
    with torch.inference_mode():
        logp = ensemble.token_logprobs([src] * len(outputs), outputs).sum(1).tolist()
    ranked = [lp / search.length_norm(len(o) + 1, alpha) for o, lp in zip(outputs, logp)]
    best = max(range(len(outputs)), key=ranked.__getitem__)
    return outputs[best], logp[best]


def test_beam_with_length_penalty_finds_the_exhaustive_best(few_words):
    # A beam of 81 keeps every prefix of up to 4 words alive, so beam search must find the
    # exhaustive best: its early stop may not cut off a hypothesis that would rank first.
    lengths = set()
    for alpha in (0.0, 1.0, 3.0):
        for src in SOURCES:
            ((hyp,),) = beam_search(few_words, [src], beam_size=81, max_len_a=0.0,
                                    max_len_b=4, length_penalty=alpha)
            tokens, logp = _exhaustive_best(few_words, src, 4, alpha)
            assert hyp.tokens == tokens
            assert hyp.score == pytest.approx(logp, abs=1e-4)  # the score stays log p
            lengths.add(len(tokens))
    assert len(lengths) > 1  # the penalty changed which output ranks first


def test_length_penalty_ranks_by_normalised_score_and_lengthens(few_words):
    plain = beam_search(few_words, SOURCES, beam_size=6, nbest=6)
    long = beam_search(few_words, SOURCES, beam_size=6, nbest=6, length_penalty=2.0)
    for nbest in long:
        ranked = [h.score / search.length_norm(len(h.tokens) + 1, 2.0) for h in nbest]
        assert ranked == sorted(ranked, reverse=True)
    lengths = [[len(nb[0].tokens) for nb in hyps] for hyps in (plain, long)]
    assert all(b >= a for a, b in zip(*lengths)) and sum(lengths[1]) > sum(lengths[0])


def _textbook_beam(model, src, k, nbest, max_len_a=2.0, max_len_b=10):
    """Beam search written plainly, one sentence: every live hypothesis is extended by every
    word, the candidates sorted; </s> among the best k completes one, the best k others
    live on; stop at the length limit or once the nbest-th complete score is at least
    the best live one."""
    max_len = int(max_len_a * len(src) + max_len_b)
    x, lens = search.source_batch([src], model.source_order)
    state = model.encode(x, lens)
    live, done = [([], 0.0)], []
    for t in range(max_len + 1):
        candidates = []
        for tokens, score in live:
            tgt_in = torch.tensor([[search.BOS_ID, *tokens]])
            hidden, _ = model.decoder(tgt_in, state)
            logp = model.log_probs(hidden[0, -1]).tolist()
            words = [search.EOS_ID] if t == max_len else range(len(logp))
            candidates += [(score + logp[w], tokens, w) for w in words]
        candidates.sort(key=lambda c: -c[0])
        done += [(tokens, s) for s, tokens, w in candidates[:k] if w == search.EOS_ID]
        live = [(tokens + [w], s) for s, tokens, w in candidates if w != search.EOS_ID][:k]
        best_done = sorted((s for _, s in done), reverse=True)
        if t == max_len or (len(best_done) >= nbest and best_done[nbest - 1] >= live[0][1]):
            break
    return sorted(done, key=lambda d: -d[1])[:nbest]


@pytest.mark.parametrize("beam", [2, 3, 5, 20])  # 20: wider than the vocabulary (12)
def test_beam_search_equals_the_textbook_search(beam):
    # The batched search scores only each row's k + 1 best words (then the sentence's best
    # 2k of those): the same hypotheses as extending every row by every word. Among these
    # sources, some have </s> among their k best first words (where k per row would
    # leave the beam short of one live hypothesis).
    model = untrained(1)
    with torch.no_grad():  # </s> often among a row's best words, yet not always first
        model.decoder.output.bias[search.EOS_ID] += 1.0
    gen = torch.Generator().manual_seed(0)
    sources = SOURCES + [torch.randint(4, 30, (n,), generator=gen).tolist()
                         for n in [1, 2, 3, 4, 6, 8] * 2]
    found = beam_search(Ensemble([model]), sources, beam_size=beam, nbest=beam)
    with torch.inference_mode():
        ensemble = Ensemble([model])
        hiddens, _ = ensemble.advance(torch.full((len(sources),), search.BOS_ID),
                                      ensemble.encode(sources))
        logp = model.log_probs(hiddens[0])
        above_eos = (logp > logp[:, [search.EOS_ID]]).sum(1)
        assert int((above_eos < beam).sum()) >= 3  # </s> among the k best first words
        for src, hyps in zip(sources, found):
            expected = _textbook_beam(model, src, beam, beam)
            assert [h.tokens for h in hyps] == [tokens for tokens, _ in expected]
            assert [h.score for h in hyps] == pytest.approx([s for _, s in expected],
                                                            abs=1e-4)


def test_first_step_decodes_one_row_per_sentence(ensemble, monkeypatch):
    # Every hypothesis starts from <s> and the same state: the first step feeds each
    # sentence once, later steps feed its `beam` live hypotheses.
    rows = []
    advance = Ensemble.advance

    def spy(self, tokens, states):
        rows.append(len(tokens))
        return advance(self, tokens, states)

    monkeypatch.setattr(Ensemble, "advance", spy)
    beam_search(ensemble, SOURCES, beam_size=5)
    assert rows[0] == len(SOURCES)
    assert rows[1] == 5 * len(SOURCES)
