"""A prototype, not used by training: one LSTM layer for bf16 training whose per-step gate
arithmetic, forward and backward, is each one `torch.compile`d kernel, timed against
`nn.LSTM` under bf16 autocast (oneDNN's fused kernel) on the same shapes.

The layer: the input projection of all steps as one bf16 product, one recurrent bf16
product per step, the gates in float32 inside the compiled kernel; backward runs the
steps in reverse (compiled gate gradients, one recurrent product each), then the weight
and input gradients as single products over all steps. Prints its error against float32
beside oneDNN bf16's, the median time and GFLOP/s of forward + backward for both, and
with `--profile` where the prototype's time goes. The first call compiles (~20 s; needs
a C++ compiler). bench/LOG.md, History, 2026-12-07, has its figures and what they say.

    .venv/bin/python -m bench.lstm_compiled                     # 64 x 17 steps, 256 -> 512
    .venv/bin/python -m bench.lstm_compiled --input 512 --profile
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

BF16 = torch.bfloat16


def cell_forward(projected: torch.Tensor, recurrent: torch.Tensor, c: torch.Tensor,
                 h_out: torch.Tensor, c_out: torch.Tensor, acts_out: torch.Tensor,
                 tanh_out: torch.Tensor) -> None:
    """One step's gates from its input projection and recurrent product (B, 4H, bf16) and
    the cell (B, H, float32), written into the step's slots of the saved tensors: h
    (bf16), the new cell, the activations i, f, g, o (bf16) and tanh of the new cell."""
    gates = projected.float() + recurrent.float()
    i, f, g, o = gates.chunk(4, 1)
    i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
    c = f * c + i * g
    tc = c.tanh()
    h_out.copy_((o * tc).to(BF16))
    c_out.copy_(c)
    acts_out.copy_(torch.cat([i, f, g, o], 1).to(BF16))
    tanh_out.copy_(tc)


def cell_backward(dh_recurrent: torch.Tensor, dh_out: torch.Tensor, dc: torch.Tensor,
                  acts: torch.Tensor, tc: torch.Tensor, c_prev: torch.Tensor,
                  grad_out: torch.Tensor) -> torch.Tensor:
    """d loss / d h of a step (from the next step's recurrent product, bf16, and from the
    layer's output) and d loss / d c -> d loss / d pre-activations, written into
    `grad_out` (bf16), and d loss / d the previous cell (returned)."""
    dh = dh_recurrent.float() + dh_out.float()
    i, f, g, o = acts.float().chunk(4, 1)
    dc = dc + dh * o * (1 - tc * tc)
    grad_out.copy_(torch.cat([dc * g * i * (1 - i), dc * c_prev * f * (1 - f),
                              dc * i * (1 - g * g), dh * tc * o * (1 - o)], 1).to(BF16))
    return dc * f


class CompiledLayer(torch.autograd.Function):
    """One LSTM layer from zero state: x (B, T, E) -> h of every step (B, T, H), bf16."""

    forward_cell = backward_cell = None  # compiled at the first call

    @staticmethod
    def forward(ctx, x, w_ih, w_hh, bias):
        cls = CompiledLayer
        if cls.forward_cell is None:
            cls.forward_cell = torch.compile(cell_forward, dynamic=False)
            cls.backward_cell = torch.compile(cell_backward, dynamic=False)
        batch, steps, _ = x.shape
        hidden = w_hh.shape[1]
        w_ih, w_hh, x = w_ih.to(BF16), w_hh.to(BF16), x.to(BF16)
        projected = torch.addmm(bias.to(BF16), x.reshape(batch * steps, -1), w_ih.t())
        projected = projected.view(batch, steps, 4 * hidden)
        h = torch.zeros(batch, hidden, dtype=BF16)
        hs = torch.empty(batch, steps, hidden, dtype=BF16)
        acts = torch.empty(batch, steps, 4 * hidden, dtype=BF16)
        cells = torch.zeros(batch, steps + 1, hidden)
        tanh_cells = torch.empty(batch, steps, hidden)
        for t in range(steps):
            cls.forward_cell(projected[:, t], h @ w_hh.t(), cells[:, t], hs[:, t],
                             cells[:, t + 1], acts[:, t], tanh_cells[:, t])
            h = hs[:, t]
        ctx.save_for_backward(x, w_ih, w_hh, hs, acts, cells, tanh_cells)
        return hs

    @staticmethod
    def backward(ctx, grad_hs):
        x, w_ih, w_hh, hs, acts, cells, tanh_cells = ctx.saved_tensors
        batch, steps, hidden = hs.shape
        grad_gates = torch.empty(batch, steps, 4 * hidden, dtype=BF16)
        dh = torch.zeros(batch, hidden, dtype=BF16)
        dc = torch.zeros(batch, hidden)
        for t in reversed(range(steps)):
            dc = CompiledLayer.backward_cell(dh, grad_hs[:, t], dc, acts[:, t],
                                             tanh_cells[:, t], cells[:, t], grad_gates[:, t])
            dh = grad_gates[:, t] @ w_hh
        dg = grad_gates.view(batch * steps, 4 * hidden)
        h_prev = torch.cat([torch.zeros(batch, 1, hidden, dtype=BF16), hs[:, :-1]], 1)
        grad_w_hh = (dg.t() @ h_prev.reshape(batch * steps, hidden)).float()
        grad_w_ih = (dg.t() @ x.reshape(batch * steps, -1)).float()
        grad_x = (dg @ w_ih).view(batch, steps, -1).float()
        return grad_x, grad_w_ih, grad_w_hh, dg.float().sum(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=17, help="time steps")
    parser.add_argument("--input", type=int, default=256, help="input size (512: layer 2)")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(args.input, args.hidden, 1, batch_first=True)
    weights = [p.detach().clone().requires_grad_() for p in
               (lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0 + lstm.bias_hh_l0)]
    x = torch.randn(args.batch, args.steps, args.input, requires_grad=True)

    def ours():
        for p in (*weights, x):
            p.grad = None
        out = CompiledLayer.apply(x, *weights)
        out.float().sum().backward()
        return out.float(), weights[1].grad

    def onednn(precision):
        lstm.zero_grad(set_to_none=True)
        x.grad = None
        with torch.autocast("cpu", dtype=BF16, enabled=precision == "bf16"):
            out, _ = lstm(x)
        out.float().sum().backward()
        return out.float(), lstm.weight_hh_l0.grad

    start = time.perf_counter()
    mine = ours()
    print(f"first call (compiling): {time.perf_counter() - start:.1f} s")
    exact, theirs = onednn("fp32"), onednn("bf16")
    for name, (out, grad) in (("prototype", mine), ("oneDNN bf16", theirs)):
        print(f"{name}: max output error {(out - exact[0]).abs().max():.4f}, dW_hh relative "
              f"error {(grad - exact[1]).norm() / exact[1].norm():.4f} (against float32)")
    times: dict[str, list[float]] = {"prototype": [], "oneDNN bf16": []}
    for _ in range(args.repeats):
        for name, run in (("prototype", ours), ("oneDNN bf16", lambda: onednn("bf16"))):
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    flops = 6 * args.batch * args.steps * 4 * args.hidden * (args.input + args.hidden)
    for name, ts in times.items():
        median = statistics.median(ts)
        print(f"{name:12s} {median * 1e3:6.1f} ms  {flops / median / 1e9:5.0f} GFLOP/s "
              f"(forward + backward, median of {args.repeats})")
    if args.profile:
        from torch.profiler import profile
        with profile() as prof:
            for _ in range(5):
                ours()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
