"""An LSTM with int8 weights for decoding on the CPU (`seq2seq.device.quantize_int8`).

It runs the arithmetic of PyTorch's dynamic quantized LSTM with fewer and cheaper steps:

- one product per layer and time step, of [input, h] with the concatenated weights
  [W_ih | W_hh] (int8, one scale per gate unit) and the two biases summed, where PyTorch's
  takes two at a decoding step (over a sequence, it projects all steps' inputs at once
  and then takes one product a step, as many as this one): each fbgemm call quantizes its
  input and reads its weights once, and at decoding's few rows a product of 64 x 768
  costs little more than one of 64 x 512;
- the gates' rows reordered to (input, forget, output, cell) and the cell gate's doubled
  (exact in floating point), so that one sigmoid over the whole gate tensor gives the three
  sigmoid gates and sigma(2x), from which tanh(x) = 2 sigma(2x) - 1; the new cell's tanh is
  taken the same way. On this build `torch.tanh` runs ~4x as long as `torch.sigmoid` (55-60
  vs 14-15 us for 64 x 512 floats, 2 threads, Zen 4; `bench.int8_lstm` prints both), and
  PyTorch's quantized LSTM takes three sigmoids and two tanh at every step, over strided
  slices of its gates.

On the benchmark model's shapes (2 layers of 512, embeddings 256; `python -m
bench.int8_lstm`, 2 threads, Zen 4) a decoder step runs 1.23-1.29x as fast as PyTorch's at
64 rows (greedy) and 1.25-1.27x at 768 (beam 12), an encoder pass 1.05-1.13x. Its outputs
differ from PyTorch's quantized LSTM's as two int8 models do (the input and h share an
activation scale, a gate unit's input and recurrent weights a weight scale), and are as
close to the float model's: `python -m bench.int8_decode --model M` counts the
translations equal to fp32's (bench/LOG.md, History, 2026-12-08).
"""

from __future__ import annotations

import torch
from torch import nn

from seq2seq.device import quantization_quieted
from seq2seq.model import State


def prepack(weight: torch.Tensor, bias: torch.Tensor) -> torch.ScriptObject:
    """float32 weight (out, in) and bias (out,) -> fbgemm's packed int8 weight, one
    symmetric scale per output row, as `torch.ao.quantization.per_channel_dynamic_qconfig`
    makes them for PyTorch's quantized Linear."""
    from torch.ao.quantization import per_channel_dynamic_qconfig

    observer = per_channel_dynamic_qconfig.weight()
    observer(weight)
    scales, zero_points = observer.calculate_qparams()
    with quantization_quieted():
        int8 = torch.quantize_per_channel(weight, scales, zero_points, 0, torch.qint8)
    return torch.ops.quantized.linear_prepack(int8, bias)


def _reordered(rows: torch.Tensor, hidden: int) -> torch.Tensor:
    """nn.LSTM's gate rows (input, forget, cell, output) -> (input, forget, output, 2 cell)."""
    i, f, g, o = rows.split(hidden)
    return torch.cat([i, f, o, 2 * g])


class Int8LSTM(nn.Module):
    """A unidirectional, batch-first `nn.LSTM` with biases, for decoding: its inputs (a
    (batch, steps, input) tensor, not a packed sequence) and outputs, int8 weights (see the
    module's docstring), no dropout, no gradients."""

    def __init__(self, lstm: nn.LSTM):
        super().__init__()
        if lstm.bidirectional or lstm.proj_size or not lstm.bias or not lstm.batch_first:
            raise ValueError("Int8LSTM takes a unidirectional, batch-first nn.LSTM with "
                             "biases and no projection")
        self.hidden_size = lstm.hidden_size
        self.packed = []  # per layer: [W_ih | W_hh] with b_ih + b_hh, packed for fbgemm
        with torch.no_grad():
            for k in range(lstm.num_layers):
                weight = torch.cat([getattr(lstm, f"weight_ih_l{k}"),
                                    getattr(lstm, f"weight_hh_l{k}")], 1).float()
                bias = getattr(lstm, f"bias_ih_l{k}") + getattr(lstm, f"bias_hh_l{k}")
                self.packed.append(prepack(_reordered(weight, self.hidden_size),
                                           _reordered(bias.float(), self.hidden_size)))

    def weights(self) -> list[torch.Tensor]:
        """Each layer's int8 weight (4 hidden, input + hidden), gates (i, f, o, 2 g)."""
        return [torch.ops.quantized.linear_unpack(p)[0] for p in self.packed]

    def forward(self, x: torch.Tensor, state: State | None = None
                ) -> tuple[torch.Tensor, State]:
        """x (batch, steps, input) float32, state (h, c) (layers, batch, hidden) or zeros
        -> the top layer's outputs (batch, steps, hidden), the final (h, c)."""
        batch, steps, _ = x.shape
        if state is None:
            zeros = x.new_zeros(len(self.packed), batch, self.hidden_size)
            state = zeros, zeros
        elif state[0].shape[0] != len(self.packed) or state[1].shape[0] != len(self.packed):
            raise ValueError(f"a state of {state[0].shape[0]} layers for an LSTM of "
                             f"{len(self.packed)}")
        h, c = list(state[0].unbind()), list(state[1].unbind())
        outputs = []
        for t in range(steps):
            below = x[:, t]
            for k, packed in enumerate(self.packed):
                gates = torch.ops.quantized.linear_dynamic(torch.cat([below, h[k]], 1),
                                                           packed, True).sigmoid_()
                i, f, o, g = gates.chunk(4, 1)  # g = sigma(2 y) of the cell gate's y
                c[k] = torch.addcmul(f * c[k], i, g.mul(2).sub_(1))
                h[k] = below = torch.sigmoid(2 * c[k]).mul_(2).sub_(1).mul_(o)
            outputs.append(below)
        return torch.stack(outputs, 1), (torch.stack(h), torch.stack(c))
