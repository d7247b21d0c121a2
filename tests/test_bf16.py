import logging

import pytest
import torch

from conftest import needs_bf16
from seq2seq import bf16
from seq2seq.config import config_from_dict
from seq2seq.int8 import Int8LSTM
from seq2seq.model import Seq2Seq, chunked_loss, run_lstm, softmax_gradient
from seq2seq.train import Trainer
from test_model import CFG, SRC, TGT, batch

needs_kernel = pytest.mark.skipif(bf16.kernels() is None,
                                  reason="the gate kernel needs an x86-64 CPU with AVX-512 "
                                         "and a C compiler")
pytestmark = [needs_bf16, needs_kernel]

BF16 = torch.bfloat16


def lstm_and_input(layers=2, inputs=12, hidden=24, batch=5, steps=7, seed=0):
    torch.manual_seed(seed)
    lstm = torch.nn.LSTM(inputs, hidden, layers, batch_first=True)
    with torch.no_grad():
        for p in lstm.parameters():
            p.uniform_(-0.5, 0.5)
    return lstm, torch.randn(batch, steps, inputs)


def everything(lstm, x, state, run):
    """Outputs, last state and the gradients of x, the initial state and every parameter
    of a loss that reads all three outputs."""
    x = x.clone().requires_grad_()
    state = tuple(s.clone().requires_grad_() for s in state)
    lstm.zero_grad(set_to_none=True)
    out, (h, c) = run(x, state)
    loss = (out.double() * torch.linspace(-1, 1, out.shape[-1], dtype=torch.float64)).sum() \
        + 0.5 * h.double().sum() - 0.3 * (c.double() ** 2).sum()
    loss.backward()
    return [out, h, c, x.grad, *(s.grad for s in state),
            *(p.grad for p in lstm.parameters())]


def relative_error(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm())


def test_lstm_matches_float64_nn_lstm_in_outputs_and_every_gradient():
    """The LSTM of bf16 training against `nn.LSTM` in float64 on the same weights: within
    bf16's rounding in every output and gradient, and no further than oneDNN's own bf16."""
    lstm, x = lstm_and_input()
    state = (torch.randn(2, 5, 24) * 0.5, torch.randn(2, 5, 24) * 0.5)
    exact = everything(lstm.double(), x.double(), tuple(s.double() for s in state),
                       lambda x, s: lstm(x, s))
    lstm.float()

    def with_autocast(forward):
        def run(x, s):
            with torch.autocast("cpu", dtype=BF16):
                return forward(x, s)
        return run

    ours = everything(lstm, x, state, with_autocast(lambda x, s: bf16.lstm_forward(lstm, x, s)))
    onednn = everything(lstm, x, state, with_autocast(lambda x, s: lstm(x, s)))
    names = ["out", "h", "c", "x", "h0", "c0"] + [n for n, _ in lstm.named_parameters()]
    for name, a, b, e in zip(names, ours, onednn, exact):
        assert a.shape == e.shape, name
        assert relative_error(a, e) < 0.01, name
        assert relative_error(a, e) < 2 * relative_error(b, e) + 1e-3, name


@pytest.mark.parametrize("last_state_loss", ["expanded", "transposed"])
def test_gradients_of_the_last_state_in_any_layout(last_state_loss):
    """d loss / d h_n arriving expanded (a sum in bf16) or strided (a transposed read):
    the same gradients as float64 nn.LSTM's (the kernel reads dense rows)."""
    lstm, x = lstm_and_input()
    weight = torch.linspace(-1, 1, 2 * 24 * 5).view(2, 24, 5)

    def loss_of(h):
        if last_state_loss == "expanded":
            return h.sum().double()
        return (h.transpose(1, 2).double() * weight.double()).sum()

    def grads(run, dtype):
        lstm.zero_grad(set_to_none=True)
        _, (h, _) = run(x.to(dtype))
        loss_of(h).backward()
        return [p.grad.clone() for p in lstm.parameters()]

    exact = grads(lambda x: lstm.double()(x), torch.float64)
    lstm.float()
    with torch.autocast("cpu", dtype=BF16):
        ours = grads(lambda x: bf16.lstm_forward(lstm, x), torch.float32)
    for a, e in zip(ours, exact):
        assert relative_error(a, e) < 0.02


def test_one_step_of_the_kernel_is_the_lstm_cell_in_float32():
    """The forward kernel's gates, cell and h against PyTorch's float32 arithmetic on the
    same bf16 pre-activations: the same up to float32 rounding (h: bf16's)."""
    lstm, x = lstm_and_input(layers=1, steps=1, batch=3, hidden=40)
    xb = x.transpose(0, 1).to(BF16).contiguous()
    w_ih, w_hh = lstm.weight_ih_l0.detach().to(BF16), lstm.weight_hh_l0.detach().to(BF16)
    bias = (lstm.bias_ih_l0 + lstm.bias_hh_l0).detach()
    h0, c0 = torch.randn(3, 40).to(BF16), torch.randn(3, 40)
    with torch.no_grad():
        out, h, c = bf16._Layer.apply(xb, h0, c0, w_ih, w_hh, bias)
    pre = torch.mm(xb[0], w_ih.t()).addmm_(h0, w_hh.t()).float() + bias  # as the layer
    i, f, g, o = pre.chunk(4, 1)
    cell = i.sigmoid() * g.tanh() + f.sigmoid() * c0
    torch.testing.assert_close(c, cell, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(h.float(), (o.sigmoid() * cell.tanh()).to(BF16).float(),
                               rtol=8e-3, atol=1e-6)
    assert torch.equal(out[0], h)


def test_dropout_between_layers_as_nn_lstm():
    lstm, x = lstm_and_input(layers=3)
    lstm.dropout = 0.5
    with torch.autocast("cpu", dtype=BF16):
        lstm.eval()  # no dropout: the same as without it
        evaluated = bf16.lstm_forward(lstm, x)[0]
        lstm.dropout = 0.0
        assert torch.equal(bf16.lstm_forward(lstm, x)[0], evaluated)
        lstm.dropout = 0.5
        lstm.train()
        dropped = [bf16.lstm_forward(lstm, x)[0] for _ in range(2)]
        one_layer = torch.nn.LSTM(12, 24, 1, batch_first=True, dropout=0.0)
        kept = bf16.lstm_forward(one_layer, x)[0]
        one_layer.dropout = 0.5  # nn.LSTM drops nothing after its last layer
        assert torch.equal(bf16.lstm_forward(one_layer, x)[0], kept)
    assert not torch.equal(dropped[0], evaluated) and not torch.equal(*dropped)


def test_applies_to_bf16_training_on_the_cpu_only():
    lstm, x = lstm_and_input()
    assert not bf16.lstm_applies(lstm, x)  # no autocast: fp32
    with torch.autocast("cpu", dtype=BF16):
        assert bf16.lstm_applies(lstm, x)
        with torch.no_grad():  # decoding, validation
            assert not bf16.lstm_applies(lstm, x)
        lstm.requires_grad_(False)
        assert not bf16.lstm_applies(lstm, x)
        lstm.requires_grad_(True)
        assert not bf16.lstm_applies(torch.nn.LSTM(12, 24, batch_first=True, bidirectional=True), x)
        assert not bf16.lstm_applies(torch.nn.LSTM(12, 24, batch_first=False), x)
        assert not bf16.lstm_applies(lstm, x[0])  # unbatched: nn.LSTM's
        int8 = Int8LSTM(torch.nn.LSTM(12, 24, batch_first=True))  # decoding's, no weights
        assert not bf16.lstm_applies(int8, x)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_model_loss_and_gradients_with_and_without_the_kernels(smoothing):
    """The model's bf16 training loss and gradients through `seq2seq.bf16` (sources of
    several lengths: the encoder's segments, each from the last one's state) against
    PyTorch's: equal up to bf16's rounding."""
    torch.manual_seed(0)
    m = Seq2Seq(50, 40, CFG).train()
    b = batch(SRC, TGT)
    grads = {}
    for kernel in (True, False):
        m.use_bf16_kernels(kernel)
        m.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=BF16):
            loss, _ = m(b.src, b.src_lens, b.tgt_in, b.tgt_out, label_smoothing=smoothing)
        loss.backward()
        grads[kernel] = [loss.detach()] + [p.grad for p in m.parameters()]
    for name, a, e in zip(["loss"] + [n for n, _ in m.named_parameters()], *grads.values()):
        assert relative_error(a, e) < 0.02, name


@pytest.mark.parametrize("keep", [1.0, 0.9])
def test_softmax_gradient_kernel_equals_pytorch_s(keep):
    """The loss's softmax gradient in one pass a row against `model.softmax_gradient`
    (PyTorch's float32 log-softmax) on the same bf16 logits: a vocabulary of no whole
    number of vectors, logits far from 0 (the row's maximum must be taken out first)."""
    torch.manual_seed(0)
    logits = (torch.randn(7, 1003) * 30 + torch.linspace(-200, 200, 7)[:, None]).to(BF16)
    targets = torch.randint(0, 1003, (7,))
    targets[0] = logits[0].float().argmax()
    grads, biases, logps = [], [], []
    for fn in (bf16.softmax_gradient, softmax_gradient):
        g, bias = logits.clone(), torch.full((1003,), 0.5)
        logps.append(fn(g, targets, keep, bias))
        grads.append(g)
        biases.append(bias)
    torch.testing.assert_close(logps[0], logps[1], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grads[0].float(), grads[1].float(), rtol=8e-3, atol=1e-6)
    torch.testing.assert_close(biases[0], biases[1], rtol=1e-5, atol=1e-6)
    for row in range(7):  # p - keep at the target
        assert float(grads[0][row, targets[row]]) == pytest.approx(
            float(logps[0][row].exp()) - keep, abs=4e-3)


def test_softmax_gradient_kernel_keeps_a_nan_row_nan_and_refuses_bad_input():
    logits = torch.zeros(3, 40, dtype=BF16)
    logits[1, 5] = float("nan")
    logp = bf16.softmax_gradient(logits, torch.tensor([0, 1, 2]), 1.0, torch.zeros(40))
    assert logp[1].isnan() and logp[[0, 2]].isfinite().all()
    with pytest.raises(ValueError, match="bf16 logits"):
        bf16.softmax_gradient(logits.float(), torch.tensor([0, 1, 2]), 1.0, torch.zeros(40))
    for targets in ([0, 1, 40], [0, -100, 2], [0, 1]):  # out of the vocabulary, too few
        with pytest.raises(ValueError, match=r"one target in \[0, 40\)"):
            bf16.softmax_gradient(logits, torch.tensor(targets), 1.0, torch.zeros(40))


def test_bf16_loss_gradients_the_same_in_one_chunk_or_several():
    """The output layer's weight gradient is scaled from bf16 in one pass when the loss
    is one chunk, summed in float32 over several: the same gradients either way."""
    torch.manual_seed(0)
    hidden = torch.randn(13, 24).to(BF16).requires_grad_()
    weight = torch.randn(40, 24, requires_grad=True)
    bias = torch.randn(40, requires_grad=True)
    targets = torch.randint(0, 40, (13,))
    grads = []
    for chunk in (4096, 4):
        for t in (hidden, weight, bias):
            t.grad = None
        with torch.autocast("cpu", dtype=BF16):
            loss, _ = chunked_loss(hidden, weight, bias, targets, chunk)
        (loss * 0.37).backward()
        grads.append([hidden.grad, weight.grad, bias.grad])
    for one, several in zip(*grads):
        assert one.dtype == several.dtype
        assert relative_error(one, several) < 0.01


def test_trainer_runs_the_lstm_the_config_names(data_dir, tmp_path, monkeypatch):
    from conftest import tiny_config

    calls = []
    forward = bf16.lstm_forward
    monkeypatch.setattr(bf16, "lstm_forward",
                        lambda *args: calls.append(1) or forward(*args))
    for kernel in (True, False):
        calls.clear()
        cfg = tiny_config(optim={"max_steps": 2}, train={"valid_every": 2, "precision": "bf16",
                                                         "bf16_kernels": kernel})
        Trainer(config_from_dict(cfg), data_dir, tmp_path / str(kernel)).train()
        assert bool(calls) == kernel


def test_without_a_compiler_training_runs_nn_lstm(monkeypatch, caplog):
    lstm, x = lstm_and_input()
    monkeypatch.setenv("CC", "/nonexistent/cc")
    bf16.kernels.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="seq2seq.bf16"):
            assert bf16.kernels() is None
        assert "could not build" in caplog.text
        with torch.autocast("cpu", dtype=BF16):
            assert not bf16.lstm_applies(lstm, x)
            out, _ = run_lstm(lstm, x)  # nn.LSTM's
        assert out.shape == (5, 7, 24)
    finally:
        monkeypatch.delenv("CC")
        bf16.kernels.cache_clear()
    assert bf16.kernels() is not None
