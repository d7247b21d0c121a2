"""bf16 training on the CPU: PyTorch's bf16 products, our kernels between them.

Two parts of the bf16 training step run in seq2seq's own C kernels
(`csrc/bf16_kernels.c`), the products around them staying `torch.mm` in bf16 (oneDNN's
GEMMs):

- The LSTMs (`lstm_forward`). `nn.LSTM` under bf16 autocast runs oneDNN's fused LSTM,
  whose backward takes ~2.4x its forward's time for twice its FLOPs (bench/RESULTS.md,
  "Where the bf16 step goes"). Here each layer of an `nn.LSTM`, with its parameters, runs
  forward as the input's product for all time steps at once, then per step the recurrent
  product h_{t-1} W_hh^T (added in place to the input's) and one pass of gate arithmetic
  (bias, sigmoids, tanh, the new cell and h); backward, steps in reverse, as one pass of
  gate gradients (the activations recomputed from the kept pre-activations) and the
  recurrent product d gates_t W_hh per step, then the gradients of the weights and of the
  input as single products over all steps. Cells, gate values and the bias's gradient
  are float32.
- The output layer's softmax gradient (`softmax_gradient`): per row of bf16 logits, the
  target's log-probability, softmax - onehot written back over the logits in one pass
  (three in PyTorch: a float32 log-softmax, its exp, the copy back), and the bias's
  gradient. The training loss (`seq2seq.model.chunked_loss`) calls it.

Results equal PyTorch's under autocast up to bf16 rounding (tests/test_bf16.py). Both run
when training in bf16 on a CPU with AVX-512 (`applies`), unless `train.bf16_kernels` is
off. The kernels are compiled once per process by the system C compiler (~0.3 s); where
there is none, training runs PyTorch's code instead and says so once. They run on one
thread (the products on PyTorch's): their gain is measured at the benchmark's 2 threads.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

log = logging.getLogger(__name__)

BF16 = torch.bfloat16
SOURCE = Path(__file__).with_name("csrc") / "bf16_kernels.c"
# AVX-512 (F, BW, DQ, VL: every CPU PyTorch counts as "AVX512" has them) and FMA, named one
# by one rather than -march=x86-64-v4, which gcc < 11 and clang < 12 do not know.
CFLAGS = ["-O3", "-mavx512f", "-mavx512bw", "-mavx512dq", "-mavx512vl", "-mfma",
          "-mprefer-vector-width=512", "-fno-math-errno", "-fno-trapping-math", "-shared",
          "-fPIC"]


@functools.cache
def kernels() -> ctypes.CDLL | None:
    """The compiled kernels, or None (logged once) where they cannot run: not an x86-64 CPU
    with AVX-512 under Linux or macOS (`platform.machine()` x86_64), no C compiler, or the
    compiler failed."""
    if platform.machine() != "x86_64" or \
            torch.backends.cpu.get_cpu_capability() != "AVX512":
        log.info("bf16 training: PyTorch's code only (seq2seq's kernels need an x86-64 CPU "
                 "with AVX-512)")
        return None
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        log.warning("bf16 training: no C compiler (cc, gcc or $CC) to build seq2seq's "
                    "kernels; training runs PyTorch's code instead (slower)")
        return None
    with tempfile.TemporaryDirectory() as tmp:
        library = Path(tmp) / "bf16_kernels.so"
        try:
            proc = subprocess.run([compiler, *CFLAGS, str(SOURCE), "-o", str(library), "-lm"],
                                  capture_output=True, text=True)
            error = proc.stderr.strip()[:500] if proc.returncode else None
        except OSError as e:
            error = str(e)
        if error is not None:
            log.warning(f"bf16 training: {compiler} could not build {SOURCE} ({error}); "
                        "training runs PyTorch's code instead (slower)")
            return None
        lib = ctypes.CDLL(str(library))  # mapped: the file can go
    i, n, p = ctypes.c_int, ctypes.c_long, ctypes.c_void_p
    lib.lstm_forward_step.argtypes = [i, i, p, p, p, p, p]
    lib.lstm_forward_step.restype = None
    lib.lstm_backward_step.argtypes = [i, i, p, p, n, p, p, p, p, p, p, p]
    lib.lstm_backward_step.restype = None
    lib.softmax_grad_rows.argtypes = [i, i, p, n, p, ctypes.c_float, p, p, p]
    lib.softmax_grad_rows.restype = None
    return lib


def applies(x: torch.Tensor) -> bool:
    """Whether a computation on `x` may run here: training (gradients on) under the CPU's
    bf16 autocast, the kernels at hand."""
    return (x.device.type == "cpu" and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == BF16 and torch.is_grad_enabled()
            and kernels() is not None)


def lstm_applies(lstm: nn.LSTM, x: torch.Tensor) -> bool:
    """Whether `lstm`'s call on `x` runs here (`applies`): a plain unidirectional
    batch-first LSTM being trained."""
    return (isinstance(lstm, nn.LSTM) and isinstance(x, torch.Tensor) and x.dim() == 3
            and applies(x) and lstm.batch_first
            and not lstm.bidirectional and lstm.proj_size == 0 and lstm.bias
            and lstm.weight_hh_l0.requires_grad)


def lstm_forward(lstm: nn.LSTM, x: torch.Tensor,
                 state: tuple[torch.Tensor, torch.Tensor] | None = None
                 ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """`lstm(x, state)` (batch-first) on this path: x (batch, steps, input) ->
    (outputs (batch, steps, hidden) bf16, (h (layers, batch, hidden) bf16,
    c (layers, batch, hidden) float32)). Dropout between layers as `nn.LSTM`'s."""
    layers, hidden = lstm.num_layers, lstm.hidden_size
    batch = x.shape[0]
    if state is None:
        zeros = x.new_zeros(layers, batch, hidden, dtype=torch.float32)
        state = (zeros, zeros)
    out = x.transpose(0, 1).to(BF16).contiguous()  # time-major
    finals_h, finals_c = [], []
    for k in range(layers):
        if k > 0 and lstm.dropout:
            out = F.dropout(out, lstm.dropout, lstm.training)
        w_ih, w_hh = getattr(lstm, f"weight_ih_l{k}"), getattr(lstm, f"weight_hh_l{k}")
        bias = getattr(lstm, f"bias_ih_l{k}") + getattr(lstm, f"bias_hh_l{k}")
        out, h, c = _Layer.apply(out, state[0][k], state[1][k], w_ih.to(BF16), w_hh.to(BF16),
                                 bias.float())
        finals_h.append(h)
        finals_c.append(c)
    return out.transpose(0, 1), (torch.stack(finals_h), torch.stack(finals_c))


class _Layer(torch.autograd.Function):
    """One LSTM layer over a time-major batch: x (steps, batch, input) bf16, h0, c0
    (batch, hidden), w_ih (4h, input) and w_hh (4h, hidden) bf16, bias (4h) float32 ->
    (h of every step (steps, batch, hidden) bf16, last h bf16, last c float32).

    Kept for backward: the gates' pre-activations (bf16, what the kernel read) and the
    cells (float32), not the activations: backward recomputes those from the same inputs
    by the same code, which costs a few exponentials a cell and saves 16 bytes a cell of
    memory and its traffic.
    """

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, bias):
        steps, batch, _ = x.shape
        hidden = w_hh.shape[1]
        lib = kernels()
        # The pre-activations: the input's product for all steps at once, then each step's
        # recurrent product added in place (one rounding to bf16 of the sum).
        pre = torch.mm(x.view(steps * batch, -1), w_ih.t()).view(steps, batch, 4 * hidden)
        h_all = torch.empty(steps + 1, batch, hidden, dtype=BF16)  # h_0 .. h_T
        h_all[0] = h0
        cells = torch.empty(steps + 1, batch, hidden)  # c_0 .. c_T, float32
        cells[0] = c0
        w_hh_t = w_hh.t()
        # Each step's slice of the buffers by address: one ctypes call a step, no views.
        bytes_h, bytes_c, bytes_pre = batch * hidden * 2, batch * hidden * 4, batch * hidden * 8
        for t in range(steps):
            pre[t].addmm_(h_all[t], w_hh_t)
            lib.lstm_forward_step(
                batch, hidden, pre.data_ptr() + t * bytes_pre, bias.data_ptr(),
                cells.data_ptr() + t * bytes_c, cells.data_ptr() + (t + 1) * bytes_c,
                h_all.data_ptr() + (t + 1) * bytes_h)
        ctx.save_for_backward(x, w_ih, w_hh, bias, h_all, cells, pre)
        ctx.state_dtypes = (h0.dtype, c0.dtype)
        return h_all[1:], h_all[steps], cells[steps]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, grad_h_last, grad_c_last):
        x, w_ih, w_hh, bias, h_all, cells, pre = ctx.saved_tensors
        steps, batch, hidden = pre.shape[0], pre.shape[1], w_hh.shape[1]
        lib = kernels()
        if grad_out is None:
            grad_out = torch.zeros(steps, batch, hidden, dtype=BF16)
        grad_out = grad_out.to(BF16)
        if grad_out.stride(2) != 1:  # the kernel reads rows of contiguous values
            grad_out = grad_out.contiguous()
        # The kernel reads dense rows of dh and updates dc in place: both private and dense
        # (a final state's gradient may be expanded or strided).
        dh = (torch.zeros(batch, hidden, dtype=BF16) if grad_h_last is None
              else grad_h_last.to(BF16).contiguous())
        dc = (torch.zeros(batch, hidden) if grad_c_last is None
              else grad_c_last.float().clone(memory_format=torch.contiguous_format))
        grad_gates = torch.empty(steps, batch, 4 * hidden, dtype=BF16)
        grad_bias = torch.zeros(4 * hidden)
        bytes_c, bytes_pre = batch * hidden * 4, batch * hidden * 8
        out_step, out_row = grad_out.stride(0) * 2, grad_out.stride(1)
        for t in reversed(range(steps)):
            lib.lstm_backward_step(
                batch, hidden, dh.data_ptr(), grad_out.data_ptr() + t * out_step, out_row,
                dc.data_ptr(), pre.data_ptr() + t * bytes_pre, bias.data_ptr(),
                cells.data_ptr() + t * bytes_c, cells.data_ptr() + (t + 1) * bytes_c,
                grad_gates.data_ptr() + t * bytes_pre, grad_bias.data_ptr())
            dh = torch.mm(grad_gates[t], w_hh)  # d loss / d h_{t-1}
        gates = grad_gates.view(steps * batch, 4 * hidden)
        grad_x = (torch.mm(gates, w_ih).view(steps, batch, -1)
                  if ctx.needs_input_grad[0] else None)
        grad_w_ih = torch.mm(gates.t(), x.view(steps * batch, -1))
        grad_w_hh = torch.mm(gates.t(), h_all[:steps].view(steps * batch, hidden))
        return (grad_x, dh.to(ctx.state_dtypes[0]), dc.to(ctx.state_dtypes[1]), grad_w_ih,
                grad_w_hh, grad_bias)


def softmax_gradient(logits: torch.Tensor, targets: torch.Tensor, keep: float,
                     grad_bias: torch.Tensor) -> torch.Tensor:
    """In place: logits (rows, vocab) bf16 -> d loss / d logits = softmax - keep x
    onehot(targets) (keep = 1 - label smoothing's eps), in bf16; that gradient summed over
    the rows is added to grad_bias (vocab) float32. Returns the targets' log-probabilities
    (rows) float32."""
    rows, vocab = logits.shape
    if (logits.dtype != BF16 or logits.stride(1) != 1 or logits.device.type != "cpu"
            or grad_bias.dtype != torch.float32 or grad_bias.shape != (vocab,)
            or not grad_bias.is_contiguous()):
        raise ValueError("softmax_gradient takes CPU bf16 logits with contiguous rows and a "
                         f"dense float32 grad_bias of their width, got {logits.dtype} "
                         f"{tuple(logits.shape)} {logits.stride()} and {grad_bias.dtype} "
                         f"{tuple(grad_bias.shape)}")
    targets = targets.to(torch.int64).contiguous()
    if targets.shape != (rows,) or (rows and not 0 <= int(targets.min()) <= int(targets.max())
                                    < vocab):
        raise ValueError(f"softmax_gradient takes one target in [0, {vocab}) per row of "
                         f"logits ({rows}), got {tuple(targets.shape)} targets"
                         + (f" in [{int(targets.min())}, {int(targets.max())}]"
                            if targets.numel() else ""))
    target_logp = torch.empty(rows)
    scratch = torch.empty(vocab)
    kernels().softmax_grad_rows(rows, vocab, logits.data_ptr(), logits.stride(0),
                               targets.data_ptr(), keep, target_logp.data_ptr(),
                               grad_bias.data_ptr(), scratch.data_ptr())
    return target_logp
