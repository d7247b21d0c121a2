import pytest
import torch
import torch.nn.functional as F

from conftest import needs_bf16
from seq2seq.config import ModelConfig
from seq2seq.data import Batch, DataDir, SourceOrder, collate, source_batch, target_batch
from seq2seq.model import Seq2Seq, chunked_loss, count_parameters, parameter_shapes

CFG = ModelConfig(embed_dim=16, hidden_size=24, num_layers=2, src_vocab=50, tgt_vocab=40)
SRC = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14], [4, 15, 16, 17, 18, 19, 20]]
TGT = [[5, 6, 7], [8, 9, 10, 11, 12, 13], [14], [15, 16, 17, 18]]



def chunked_nll(hidden, weight, bias, targets, chunk):
    """The output layer's summed NLL alone (the loss without label smoothing)."""
    return chunked_loss(hidden, weight, bias, targets, chunk)[0]

PIECES, NONE = SourceOrder("pieces"), SourceOrder("none")


def model(seed=0, reverse="pieces"):
    torch.manual_seed(seed)
    cfg = ModelConfig(**{**vars(CFG), "reverse_source": reverse})
    return Seq2Seq(50, 40, cfg).eval()


def batch(src, tgt, reverse="pieces"):
    return Batch(*source_batch(src, SourceOrder(reverse)), *target_batch(tgt))


def test_padded_batch_loss_is_mean_of_sentence_losses():
    m = model()
    b = batch(SRC, TGT)
    batch_loss = m(b.src, b.src_lens, b.tgt_in, b.tgt_out)[1] / b.size
    one_by_one = [m(*vars(batch([s], [t])).values())[1] for s, t in zip(SRC, TGT)]
    assert torch.allclose(batch_loss, torch.stack(one_by_one).mean(), rtol=1e-5)
    # ... and each sentence loss is -log p(T|S), the sum of its token losses.
    per_token = m.token_nll(b.src, b.src_lens, b.tgt_in, b.tgt_out).sum(1)
    assert torch.allclose(per_token, torch.stack(one_by_one), rtol=1e-5)


# The loss's float32 softmax block: the default (one block a chunk on these sizes), or 3
# rows, so that a chunk of 10 or 6 rows is made in several blocks, the last one short.
SOFTMAX_BLOCKS = [None, "3 rows"]


def set_softmax_block(monkeypatch, block, vocab):
    if block == "3 rows":
        monkeypatch.setattr("seq2seq.model.SOFTMAX_BLOCK_FLOATS", 3 * vocab)


@pytest.mark.parametrize("block", SOFTMAX_BLOCKS)
def test_chunked_nll_matches_cross_entropy_in_value_and_gradient(monkeypatch, block):
    set_softmax_block(monkeypatch, block, 29)
    torch.manual_seed(1)
    hidden = torch.randn(37, 8, requires_grad=True)
    weight = torch.randn(29, 8, requires_grad=True)
    bias = torch.randn(29, requires_grad=True)
    targets = torch.randint(0, 29, (37,))
    ours = chunked_nll(hidden, weight, bias, targets, chunk=10) * 0.5
    ours.backward()
    grads = [t.grad.clone() for t in (hidden, weight, bias)]
    for t in (hidden, weight, bias):
        t.grad = None
    ref = F.cross_entropy(hidden @ weight.t() + bias, targets, reduction="sum") * 0.5
    ref.backward()
    assert torch.allclose(ours, ref, rtol=1e-5)
    for g, t in zip(grads, (hidden, weight, bias)):
        assert torch.allclose(g, t.grad, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(chunked_nll(hidden, weight, bias, targets, 7) * 0.5, ref)


# Without gradients the loss takes no softmax blocks: only the default is run.
@pytest.mark.parametrize("grad, block", [(True, None), (True, "3 rows"), (False, None)])
def test_label_smoothing_matches_cross_entropy_in_value_and_gradient(monkeypatch, grad, block):
    set_softmax_block(monkeypatch, block, 31)
    torch.manual_seed(2)
    hidden = torch.randn(23, 8, requires_grad=grad)
    weight = torch.randn(31, 8, requires_grad=grad)
    bias = torch.randn(31, requires_grad=grad)
    targets = torch.randint(0, 31, (23,))
    loss, nll = chunked_loss(hidden, weight, bias, targets, chunk=6, label_smoothing=0.1)
    logits = hidden @ weight.t() + bias
    ref = F.cross_entropy(logits, targets, reduction="sum", label_smoothing=0.1)
    assert torch.allclose(loss, ref, rtol=1e-5)
    assert torch.allclose(nll, F.cross_entropy(logits, targets, reduction="sum"), rtol=1e-5)
    assert loss.item() != pytest.approx(nll.item(), rel=1e-3)  # smoothing did something
    if grad:
        assert not nll.requires_grad
        expected = torch.autograd.grad(ref, (hidden, weight, bias))
        loss.backward()
        for g, t in zip(expected, (hidden, weight, bias)):
            assert torch.allclose(t.grad, g, rtol=1e-4, atol=1e-6)


def test_model_loss_is_its_nll_without_smoothing_and_differs_with_it():
    m = model()
    b = batch(SRC, TGT)
    loss, nll = m(b.src, b.src_lens, b.tgt_in, b.tgt_out)
    assert torch.equal(loss, nll)
    smoothed, nll2 = m(b.src, b.src_lens, b.tgt_in, b.tgt_out, label_smoothing=0.2)
    assert torch.allclose(nll2, nll) and not torch.allclose(smoothed, nll)


def test_chunked_nll_is_exact_for_confidently_wrong_predictions():
    # Target logits 150-300 below the best: p(target) underflows float32, the loss does not.
    hidden = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]], requires_grad=True)
    weight = torch.tensor([[300.0, 0.0], [0.0, 300.0], [0.0, 0.0]], requires_grad=True)
    bias = torch.zeros(3, requires_grad=True)
    targets = torch.tensor([1, 0, 2])
    ours = chunked_nll(hidden, weight, bias, targets, chunk=2)
    ref = F.cross_entropy(hidden @ weight.t() + bias, targets, reduction="sum")
    assert torch.isfinite(ours) and torch.allclose(ours, ref, rtol=1e-6)
    assert ours.item() > 600


@pytest.mark.parametrize("block", SOFTMAX_BLOCKS)
def test_chunked_loss_in_bf16_matches_float32_on_the_same_logits(monkeypatch, block):
    # In bf16 the logits are bf16; from there on the loss and its gradient must be those
    # of float32 cross-entropy on the same logits: each row's NLL to float32 rounding, also
    # where p(target) underflows or is within 0.5% of 1, and the gradients to bf16 rounding.
    # With 3-row softmax blocks, each block's float32 gradient is written back into the
    # bf16 chunk it came from.
    set_softmax_block(monkeypatch, block, 300)
    torch.manual_seed(3)
    hidden = torch.randn(60, 16).bfloat16()
    weight = (torch.randn(300, 16) * 3).bfloat16()
    weight[7] = 200.0  # rows whose hidden points along it put word 7 far ahead
    bias = torch.randn(300).bfloat16()
    targets = torch.randint(0, 300, (60,))
    # Confidently right rows: logits = bias, word 11 at 10 and the rest at 0, so
    # p(target) = e^10 / (e^10 + 299) ~ 0.987.
    confident = torch.arange(40, 60)
    targets[confident] = 11
    hidden[confident] = 0.0
    bias[:] = 0.0
    bias[11] = 10.0
    logits = torch.addmm(bias, hidden, weight.t()).float()
    ref_rows = F.cross_entropy(logits, targets, reduction="none")
    assert ref_rows.max() > 150  # some targets' probabilities underflow float32
    assert 0.005 < ref_rows[confident].max() < 0.05
    # With gradients wanted, so the training path (`_ChunkedLoss`) is the one checked.
    hidden.requires_grad_()
    weight.requires_grad_()
    bias.requires_grad_()
    for i in range(60):  # one row at a time: a sum over rows would hide one row's error
        _, nll = chunked_loss(hidden[i:i + 1], weight, bias, targets[i:i + 1], chunk=4)
        assert nll.item() == pytest.approx(ref_rows[i].item(), rel=1e-5, abs=1e-6)
    loss, _ = chunked_loss(hidden, weight, bias, targets, chunk=16)
    loss.backward()
    logits.requires_grad_()
    F.cross_entropy(logits, targets, reduction="sum").backward()
    # d loss / d bias is the column sum of softmax - onehot: the confident rows' -0.015s
    # must survive the cast to bf16 (formed as bf16(p) - 1 they would be off by ~25%).
    assert torch.allclose(bias.grad.float(), logits.grad.sum(0), rtol=1e-2, atol=1e-3)
    ref_hidden_grad = logits.grad @ weight.float()
    err = (hidden.grad.float() - ref_hidden_grad).norm() / ref_hidden_grad.norm()
    assert err < 1e-2


def test_encoder_reads_mixed_lengths_as_one_sentence_at_a_time():
    m = model()
    sources = SRC + [[21, 22, 23], [24]]  # lengths 5 2 3 7 3 1: a repeated length, a single
    src, lens = source_batch(sources, PIECES)
    h, c = m.encode(src, lens)  # mixed lengths: read in segments
    (h.sum() + c.sum()).backward()
    batched = [p.grad.clone() for p in m.encoder.parameters()]
    m.zero_grad()
    for i, s in enumerate(sources):
        hi, ci = m.encode(*source_batch([s], PIECES))  # one sentence: one rectangular call
        assert torch.allclose(h[:, i], hi[:, 0], atol=1e-6)
        assert torch.allclose(c[:, i], ci[:, 0], atol=1e-6)
        (hi.sum() + ci.sum()).backward()
    for g, p in zip(batched, m.encoder.parameters()):
        assert torch.allclose(g, p.grad, atol=1e-5)


def test_encoder_segments_start_from_contiguous_states():
    # cuDNN refuses a non-contiguous initial state; the CPU kernel would not notice.
    m = model()
    states = []
    m.encoder.lstm.register_forward_pre_hook(lambda _, args: states.append(args[1:]))
    m.encode(*source_batch(SRC, PIECES))
    carried = [s[0] for s in states if s and s[0] is not None]
    assert len(carried) == 3  # 4 lengths: 3 segments start from a carried state
    assert all(h.is_contiguous() and c.is_contiguous() for h, c in carried)


def test_encoder_receives_reversed_source_in_training(data_dir):
    data = DataDir(data_dir)
    corpus = data.split("train")
    b = collate(corpus, [3, 1], PIECES)
    seen = []
    m = Seq2Seq(len(data.src_vocab), len(data.tgt_vocab), CFG)
    m.encoder.embed.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].clone()))
    m(b.src, b.src_lens, b.tgt_in, b.tgt_out)
    for row, i in enumerate([3, 1]):
        n = len(corpus.src[i])
        assert seen[0][row, :n].tolist() == corpus.src[i].tolist()[::-1]
    # The target keeps its order.
    assert b.tgt_out[0, :len(corpus.tgt[3])].tolist() == corpus.tgt[3].tolist()


def test_reversal_changes_the_encoding():
    fwd, rev = model(reverse="none"), model(reverse="pieces")
    rev.load_state_dict(fwd.state_dict())
    h_fwd, _ = fwd.encode(*source_batch(SRC[:1], fwd.source_order))
    h_rev, _ = rev.encode(*source_batch([SRC[0][::-1]], NONE))
    h_rev2, _ = rev.encode(*source_batch(SRC[:1], rev.source_order))
    assert torch.allclose(h_rev, h_rev2)
    assert not torch.allclose(h_fwd, h_rev)


def test_paper_init_range():
    m = model()
    for p in m.parameters():
        assert p.abs().max() <= 0.08
    assert max(p.abs().max() for p in m.parameters()) > 0.07


def test_paper_model_has_384m_parameters():
    paper = ModelConfig(embed_dim=1000, hidden_size=1000, num_layers=4)
    counts = count_parameters(parameter_shapes(160_000, 80_000, paper))  # 1.5 GB if built
    assert counts["total"] == pytest.approx(384e6, rel=0.002)
    assert counts["encoder_lstm"] == counts["decoder_lstm"] == pytest.approx(32e6, rel=0.002)


@needs_bf16
@pytest.mark.parametrize("precision", [torch.bfloat16])
def test_bf16_autocast_loss_close_to_fp32(precision):
    m = model()
    b = batch(SRC, TGT)
    ref = m(b.src, b.src_lens, b.tgt_in, b.tgt_out)[1]
    with torch.autocast("cpu", dtype=precision):
        low = m(b.src, b.src_lens, b.tgt_in, b.tgt_out)[1]
    assert low.dtype == torch.float32
    assert torch.allclose(low, ref, rtol=0.02)
    # The smoothed loss too, as training computes it (with gradients).
    ref, _ = m(b.src, b.src_lens, b.tgt_in, b.tgt_out, label_smoothing=0.1)
    with torch.autocast("cpu", dtype=precision):
        low, _ = m(b.src, b.src_lens, b.tgt_in, b.tgt_out, label_smoothing=0.1)
    assert low.dtype == torch.float32 and low.requires_grad
    assert torch.allclose(low, ref, rtol=0.02)


@pytest.mark.parametrize("layers", [1, 3])
def test_parameter_shapes_are_the_model_s(layers):
    cfg = ModelConfig(embed_dim=5, hidden_size=7, num_layers=layers)
    model = Seq2Seq(11, 13, cfg)
    assert parameter_shapes(11, 13, cfg) == {k: tuple(v.shape)
                                             for k, v in model.state_dict().items()}
    assert count_parameters(parameter_shapes(11, 13, cfg)) == count_parameters(model)


def test_token_nll_is_the_same_in_chunks_of_one_position():
    m, b = model(), batch(SRC, TGT)
    with torch.no_grad():
        whole = m.token_nll(b.src, b.src_lens, b.tgt_in, b.tgt_out)
        by_one = m.token_nll(b.src, b.src_lens, b.tgt_in, b.tgt_out, block_floats=40)
    assert torch.allclose(whole, by_one) and (whole[b.tgt_out == 0] == 0).all()
