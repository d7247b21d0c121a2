"""Int8LSTM: PyTorch's dynamic-quantization arithmetic with merged products and its own
gate arithmetic, against a plain float64 reference of the same int8 arithmetic."""

import pytest
import torch
from torch import nn

from seq2seq.device import quantize_int8
from seq2seq.int8 import Int8LSTM

INPUT, HIDDEN, LAYERS = 12, 16, 2


def float_lstm(seed: int = 0) -> nn.LSTM:
    torch.manual_seed(seed)
    lstm = nn.LSTM(INPUT, HIDDEN, LAYERS, batch_first=True)
    for p in lstm.parameters():  # wide enough that gates saturate and tanh(c) bends
        nn.init.uniform_(p, -0.5, 0.5)
    return lstm.eval()


def reference(lstm: nn.LSTM, int8: Int8LSTM, x: torch.Tensor, state):
    """The same int8 arithmetic written plainly in float64: each layer's product of
    [input, h] quantized as fbgemm does (one scale per call, 7-bit with reduce_range) with
    its int8 weights, nn.LSTM's gate order and biases, torch.tanh."""
    h, c = (s.double().clone() for s in state)
    outputs = []
    for t in range(x.shape[1]):
        below = x[:, t]
        for k, weight in enumerate(int8.weights()):
            i, f, o, g2 = weight.dequantize().double().split(HIDDEN)  # rows (i, f, o, 2 g)
            rows = torch.cat([i, f, g2 / 2, o])
            bias = (getattr(lstm, f"bias_ih_l{k}") + getattr(lstm, f"bias_hh_l{k}")).double()
            inputs = torch.cat([below.float(), h[k].float()], 1)
            quantized = torch.quantize_per_tensor_dynamic(inputs, torch.quint8, True)
            gates = quantized.dequantize().double() @ rows.T + bias
            gi, gf, gg, go = gates.split(HIDDEN, 1)
            c[k] = torch.sigmoid(gf) * c[k] + torch.sigmoid(gi) * torch.tanh(gg)
            h[k] = below = torch.sigmoid(go) * torch.tanh(c[k])
        outputs.append(below)
    return torch.stack(outputs, 1), (h, c)


def test_int8_lstm_runs_the_int8_arithmetic_of_the_reference():
    lstm = float_lstm()
    int8 = Int8LSTM(lstm)
    x = torch.randn(5, 7, INPUT)
    state = torch.randn(LAYERS, 5, HIDDEN).tanh(), torch.randn(LAYERS, 5, HIDDEN)
    out, (h, c) = int8(x, state)
    want, (want_h, want_c) = reference(lstm, int8, x, state)
    # float32 against float64 (~1e-7 here); a step's activations could in principle round
    # to the other side of a 7-bit boundary and differ by ~5e-3, which these seeds do not
    assert out.dtype == torch.float32 and out.shape == (5, 7, HIDDEN)
    assert torch.allclose(out.double(), want, atol=1e-5)
    assert torch.allclose(h.double(), want_h, atol=1e-5)
    assert torch.allclose(c.double(), want_c, atol=1e-5)
    float_out, _ = lstm(x, state)
    assert (out - float_out).abs().max() < 0.1


def test_int8_lstm_weights_are_nn_lstm_s_quantized_per_gate_unit():
    # The reference above reads the weights under test; here they are made independently:
    # [W_ih | W_hh] of each layer, gates (i, f, o, 2 g), one symmetric scale per row.
    lstm = float_lstm(3)
    for k, weight in enumerate(Int8LSTM(lstm).weights()):
        rows = torch.cat([getattr(lstm, f"weight_ih_l{k}"), getattr(lstm, f"weight_hh_l{k}")],
                         1).detach()
        i, f, g, o = rows.split(HIDDEN)
        rows = torch.cat([i, f, o, 2 * g])
        scales = rows.abs().amax(1, keepdim=True).double() / 127.5
        assert torch.allclose(weight.q_per_channel_scales(), scales[:, 0], rtol=1e-6)
        # each value the nearest multiple of its row's scale
        assert ((weight.dequantize().double() - rows).abs() <= scales * 0.5001).all()


def test_int8_lstm_steps_one_at_a_time_as_in_one_call():
    int8 = Int8LSTM(float_lstm(1))
    x = torch.randn(4, 6, INPUT)
    whole, final = int8(x)
    state, outs = None, []
    for t in range(6):
        out, state = int8(x[:, t:t + 1], state)
        outs.append(out)
    assert torch.equal(torch.cat(outs, 1), whole)
    assert torch.equal(state[0], final[0]) and torch.equal(state[1], final[1])


def test_int8_lstm_refuses_a_state_of_other_layers():
    int8 = Int8LSTM(float_lstm(2))
    state = torch.zeros(LAYERS + 1, 3, HIDDEN)
    with pytest.raises(ValueError, match="a state of 3 layers for an LSTM of 2"):
        int8(torch.randn(3, 2, INPUT), (state, state))


@pytest.mark.parametrize("kwargs", [{"bidirectional": True}, {"batch_first": False},
                                    {"bias": False}, {"proj_size": 4}])
def test_int8_lstm_refuses_what_it_does_not_run(kwargs):
    lstm = nn.LSTM(INPUT, HIDDEN, LAYERS, **{"batch_first": True, **kwargs})
    with pytest.raises(ValueError, match="unidirectional, batch-first"):
        Int8LSTM(lstm)


def test_quantize_int8_swaps_every_lstm_and_quantizes_the_linears():
    model = nn.Sequential(float_lstm(), nn.Linear(HIDDEN, 3))
    model[0] = nn.ModuleDict({"inner": model[0]})
    quantize_int8(model)
    assert isinstance(model[0]["inner"], Int8LSTM)
    assert model[1].weight().dtype == torch.qint8
