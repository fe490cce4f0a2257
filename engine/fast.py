"""The fast backend: event-driven input, sparse recurrence, a fused BPTT time loop.

Same contract and step conventions as `engine.reference` (MODEL.md "Step
conventions"); in float64 it returns the reference's spikes exactly and its
gradients to rounding. What makes it fast (issue 6):

- E and I share one state tensor [B, N] (N = n_e + n_i) and one conductance
  tensor [B, M] laid out as [AMPA of E | AMPA of I | GABA of E] (M = N + n_e;
  I has no GABA input), so each step is about 25 tensor ops for both populations.
- Input spikes are events: per chunk of K steps, the W_in rows of the channels
  that spiked are index-added into a [K, B, M] arrival buffer. W_in's gradient is
  index-added back onto only those rows.
- E->I and I->E arrivals are the W_ei / W_ie rows of the cells that spiked on the
  previous step (index_add), not dense products.
- A custom autograd Function keeps only bool spikes and the state every K steps
  (the compiled CPU loops, engine.fast_cpu, only the state); backward recomputes
  one chunk's voltages and conductances from its checkpoint and runs the
  hand-written adjoint (engine.fast_backward) in reverse.
- The readout is linear: the time-mean of u is (sum_t c_t s_e[t]) @ W_out / T
  with c_t = sum_{k < T-t} exp(-dt/tau_out)^k, so it is computed from one filtered
  spike count by autograd outside the Function.

Only torch tensor ops are used, so the same code runs on CPU and CUDA.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from engine.config import Config, ConfigError
from engine.encoding import InputEvents
from engine.weights import Weights

# Elements of one [K, B, M] chunk buffer: bounds the backward's working memory.
_CHUNK_ELEMENTS = 4_000_000
_MAX_CHUNK_STEPS = 200


class FastParams(NamedTuple):
    """Constants of one simulation; per-column tensors cover E then I."""

    n_e: int
    n_i: int
    steps: int
    chunk: int
    e_l: float
    v_reset: float
    v_th: float
    e_ampa: float
    e_gaba: float
    beta: float
    v_grad_dampen: float
    detach_reset: bool
    detach_recurrent: bool
    c: torch.Tensor  # [N] dt / tau_m
    decay: torch.Tensor  # [M] conductance decay per step
    hold_from: torch.Tensor  # [T, N] long: held at t iff last spike >= hold_from[t]
    readout: torch.Tensor  # [T] weight c_t of step t's E spikes in sum_t u_t

    @property
    def n(self) -> int:
        return self.n_e + self.n_i

    @property
    def m(self) -> int:
        return self.n + self.n_e


class ArrivalEvents(NamedTuple):
    """Input spikes as sorted events, with each chunk's slice [bounds[c], bounds[c+1])."""

    step: torch.Tensor  # arrival step (spike step + 1)
    sample: torch.Tensor
    channel: torch.Tensor
    bounds: list[int]


class Checkpoint(NamedTuple):
    v: torch.Tensor  # [B, N] after the previous step
    g: torch.Tensor  # [B, M]
    last_spike: torch.Tensor  # [B, N] long, step of the last spike (or far in the past)


class Recurrence(NamedTuple):
    """Recurrent weights and which arrivals to compute (W_ei == 0 skips E->I)."""

    w_ei: torch.Tensor
    w_ie: torch.Tensor
    use_ei: bool
    use_ie: bool


def fast_params(config: Config, steps: int, batch: int, device, dtype) -> FastParams:
    n_e, n_i = config.n_e, config.n_i
    dt = config.dt_ms

    def per_column(e_value, i_value, kind):
        return torch.tensor([e_value] * n_e + [i_value] * n_i, dtype=kind, device=device)

    refractory = per_column(int(round(config.t_ref_e_ms / dt)), int(round(config.t_ref_i_ms / dt)), torch.long)
    t = torch.arange(steps, device=device, dtype=torch.long)
    decay = [math.exp(-dt / config.tau_ampa_ms)] * (n_e + n_i) + [math.exp(-dt / config.tau_gaba_ms)] * n_e
    out_decay = math.exp(-dt / config.tau_out_ms)
    remaining = torch.arange(steps, 0, -1, dtype=torch.float64)  # T - t
    readout = (1.0 - out_decay ** remaining) / (1.0 - out_decay)
    m = 2 * n_e + n_i
    chunk = max(1, min(steps, _MAX_CHUNK_STEPS, _CHUNK_ELEMENTS // max(1, batch * m)))
    return FastParams(
        n_e=n_e, n_i=n_i, steps=steps, chunk=chunk, e_l=config.e_l_mv, v_reset=config.v_reset_mv,
        v_th=config.v_th_mv, e_ampa=config.e_ampa_mv, e_gaba=config.e_gaba_mv, beta=config.beta,
        v_grad_dampen=float(config.v_grad_dampen), detach_reset=config.detach_reset,
        detach_recurrent=config.detach_recurrent,
        c=per_column(dt / config.tau_m_e_ms, dt / config.tau_m_i_ms, dtype),
        decay=torch.tensor(decay, dtype=dtype, device=device),
        hold_from=t[:, None] - refractory[None, :],
        readout=readout.to(device=device, dtype=dtype),
    )


def input_events(spikes: torch.Tensor | InputEvents, p: FastParams) -> ArrivalEvents:
    """Arrivals of input spikes (a 0/1 [T, B, n_input] tensor, or events sorted as its
    nonzero() would be) one step later; the last step's spikes never arrive."""
    if isinstance(spikes, InputEvents):
        step, sample, channel = spikes.step, spikes.sample, spikes.channel
    else:
        step, sample, channel = (spikes if spikes.dtype == torch.bool else spikes != 0).nonzero(as_tuple=True)
    keep = step < p.steps - 1
    step, sample, channel = step[keep] + 1, sample[keep], channel[keep]
    return ArrivalEvents(step, sample, channel, chunk_bounds(step, p))


def chunk_bounds(step: torch.Tensor, p: FastParams) -> list[int]:
    """Where each chunk's events start in step-sorted events, and the end."""
    starts = torch.arange(0, p.steps, p.chunk, device=step.device)
    ends = torch.cat([starts, torch.tensor([p.steps], device=step.device)])
    return torch.searchsorted(step, ends).tolist()


def split_input_weights(w_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """clamp(min=0) of W and of -W; the negative part is None when it is all zero."""
    w_neg = (-w_in).clamp(min=0)
    return w_in.clamp(min=0), (w_neg if bool((w_in < 0).any()) else None)


def input_chunk(w_pos, w_neg, ev: ArrivalEvents, index: int, t0: int, length: int,
                batch: int, p: FastParams) -> torch.Tensor:
    """Arrivals of input spikes at steps t0 .. t0+length-1 as [length, B, M]."""
    x = torch.zeros(length, batch, p.m, dtype=w_pos.dtype, device=w_pos.device)
    lo, hi = ev.bounds[index], ev.bounds[index + 1]
    if hi > lo:
        rows = (ev.step[lo:hi] - t0) * batch + ev.sample[lo:hi]
        channel = ev.channel[lo:hi]
        flat = x.view(length * batch, p.m)
        # index_add_ into a contiguous buffer is several times faster than into a column slice
        flat[:, :p.n_e].copy_(sum_rows(w_pos, channel, rows, length * batch))
        if w_neg is not None:
            flat[:, p.n:].copy_(sum_rows(w_neg, channel, rows, length * batch))
    return x


def sum_rows(weight: torch.Tensor, cells: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """[n_rows, weight columns]: row r holds the sum of weight[cells[j]] over j with rows[j] == r."""
    out = torch.zeros(n_rows, weight.shape[1], dtype=weight.dtype, device=weight.device)
    return out.index_add_(0, rows, weight.index_select(0, cells))


def initial_checkpoint(batch: int, p: FastParams, dtype, device) -> Checkpoint:
    return Checkpoint(
        v=torch.full((batch, p.n), p.e_l, dtype=dtype, device=device),
        g=torch.zeros(batch, p.m, dtype=dtype, device=device),
        last_spike=torch.full((batch, p.n), -(1 << 40), dtype=torch.long, device=device),
    )


def add_recurrent(arrivals: torch.Tensor, spikes_prev: torch.Tensor, rec: Recurrence,
                  p: FastParams) -> None:
    """Add the previous step's E->I and I->E arrivals to `arrivals` [B, M] in place.

    Each sum is formed apart and added once, so the rounding matches the
    reference's `x @ W_in_neg + s_i @ W_ie` (and `0 + s_e @ W_ei`).
    """
    batch = arrivals.shape[0]
    if rec.use_ei:
        sample, cell = spikes_prev[:, :p.n_e].nonzero(as_tuple=True)
        arrivals[:, p.n_e:p.n].add_(sum_rows(rec.w_ei, cell, sample, batch))
    if rec.use_ie:
        sample, cell = spikes_prev[:, p.n_e:].nonzero(as_tuple=True)
        arrivals[:, p.n:].add_(sum_rows(rec.w_ie, cell, sample, batch))


def membrane_update(v: torch.Tensor, g: torch.Tensor, p: FastParams) -> torch.Tensor:
    """dv of one forward-Euler step, with the reference's operation order."""
    n_e = p.n_e
    total = p.e_l - v
    total.add_((p.e_ampa - v).mul_(g[:, :p.n]))
    total[:, :n_e].add_((p.e_gaba - v[:, :n_e]).mul_(g[:, p.n:]))
    return total.mul_(p.c)


def forward_chunk(state: Checkpoint, arrivals: torch.Tensor, spikes: torch.Tensor, t0: int,
                  rec: Recurrence, p: FastParams, voltages: torch.Tensor | None) -> None:
    """Advance `state` in place over len(arrivals) steps, writing bool spikes [T, B, N]."""
    v, g, last = state
    for k in range(arrivals.shape[0]):
        t = t0 + k
        x = arrivals[k]
        if t > 0:
            add_recurrent(x, spikes[t - 1], rec, p)
        # conductances: decay, then this step's arrivals
        g.mul_(p.decay).add_(x)
        # Euler step; held cells sit at V_reset; strict threshold; reset
        v.add_(membrane_update(v, g, p))
        v.masked_fill_(last >= p.hold_from[t], p.v_reset)
        fired = torch.gt(v, p.v_th, out=spikes[t])
        v.masked_fill_(fired, p.v_reset)
        last.masked_fill_(fired, t)
        if voltages is not None:
            voltages[t].copy_(v)


def run_forward(w_in, rec: Recurrence, ev: ArrivalEvents, batch: int, p: FastParams,
                record_voltage: bool):
    """Spikes bool [T, B, N], the checkpoints at every chunk start, voltages or None."""
    dtype, device = w_in.dtype, w_in.device
    w_pos, w_neg = split_input_weights(w_in)
    spikes = torch.empty(p.steps, batch, p.n, dtype=torch.bool, device=device)
    voltages = torch.empty(p.steps, batch, p.n, dtype=dtype, device=device) if record_voltage else None
    state = initial_checkpoint(batch, p, dtype, device)
    checkpoints = []
    for index, t0 in enumerate(range(0, p.steps, p.chunk)):
        checkpoints.append(Checkpoint(*(s.clone() for s in state)))
        length = min(p.chunk, p.steps - t0)
        arrivals = input_chunk(w_pos, w_neg, ev, index, t0, length, batch, p)
        forward_chunk(state, arrivals, spikes, t0, rec, p, voltages)
    return spikes, checkpoints, voltages


def filtered_count(s_e: torch.Tensor, p: FastParams) -> torch.Tensor:
    """sum_t c_t s_e[t]: the readout's time integral per E cell, [B, n_e]."""
    steps, batch, n_e = s_e.shape
    return (p.readout @ s_e.reshape(steps, batch * n_e)).view(batch, n_e)


class OutputGrads(NamedTuple):
    """dL/d of FusedNetwork's differentiable outputs; None where the loss does not reach."""

    s_e: torch.Tensor | None  # [T, B, n_e]
    s_i: torch.Tensor | None
    count_e: torch.Tensor | None  # [B, n_e]
    count_i: torch.Tensor | None
    filtered: torch.Tensor | None  # [B, n_e], of sum_t c_t s_e[t]


def spike_outputs(spikes: torch.Tensor, p: FastParams, dtype, trains: bool):
    """Float spike trains (or None, None), counts E and I, filtered E count, from bool spikes."""
    s_e = spikes[:, :, :p.n_e].to(dtype)
    s_i = spikes[:, :, p.n_e:].to(dtype)
    counts = (s_e.sum(0), s_i.sum(0))
    return ((s_e, s_i) if trains else (None, None)), counts, filtered_count(s_e, p)


class FusedNetwork(torch.autograd.Function):
    """(W_in, W_ei, W_ie) -> (s_e, s_i, count_e, count_i, sum_t c_t s_e[t], v_e, v_i)
    with a hand-written BPTT; s_e / s_i are empty unless `trains`, v_e / v_i unless
    `record_voltage`."""

    @staticmethod
    def forward(ctx, w_in, w_ei, w_ie, ev: ArrivalEvents, batch: int, p: FastParams,
                trains: bool, record_voltage: bool):
        rec = recurrence(w_ei, w_ie)
        compiled = compiled_loops(w_in.device)
        if compiled:
            from engine.fast_cpu import run_forward as run_compiled

            (s_e, s_i), (count_e, count_i), filtered, saved, voltages = run_compiled(
                w_in, rec, ev, batch, p, trains, record_voltage)
            spikes = None  # the compiled backward recomputes them from `saved`
        else:
            spikes, saved, voltages = run_forward(w_in, rec, ev, batch, p, record_voltage)
            (s_e, s_i), (count_e, count_i), filtered = spike_outputs(spikes, p, w_in.dtype, trains)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(w_in, w_ei, w_ie)
        ctx.spikes, ctx.saved, ctx.events, ctx.params, ctx.compiled = spikes, saved, ev, p, compiled
        empty = w_in.new_empty(0)
        s_e, s_i = (s_e, s_i) if trains else (empty, empty.clone())
        v_e = voltages[:, :, :p.n_e] if voltages is not None else empty.clone()
        v_i = voltages[:, :, p.n_e:] if voltages is not None else empty.clone()
        ctx.mark_non_differentiable(v_e, v_i)
        return s_e, s_i, count_e, count_i, filtered, v_e, v_i

    @staticmethod
    def backward(ctx, grad_s_e, grad_s_i, grad_count_e, grad_count_i, grad_filtered, _grad_v_e, _grad_v_i):
        w_in, w_ei, w_ie = ctx.saved_tensors
        need = ctx.needs_input_grad[:3]
        trains = grad_s_e is not None and grad_s_e.numel() > 0, grad_s_i is not None and grad_s_i.numel() > 0
        out_grads = OutputGrads(grad_s_e if trains[0] else None, grad_s_i if trains[1] else None,
                                grad_count_e, grad_count_i, grad_filtered)
        if ctx.compiled:
            from engine.fast_cpu import network_backward as compiled_backward

            grads = compiled_backward(w_in, w_ei, w_ie, ctx.saved, ctx.events, ctx.params, out_grads, need)
        else:
            from engine.fast_backward import network_backward

            grads = network_backward(w_in, w_ei, w_ie, ctx.spikes, ctx.saved, ctx.events, ctx.params,
                                     out_grads, need)
        return (*grads, None, None, None, None, None)


def compiled_loops(device: torch.device) -> bool:
    """Whether the time loops run compiled (engine.fast_cpu): on CPU; CUDA keeps torch ops."""
    return device.type == "cpu"


def recurrence(w_ei: torch.Tensor, w_ie: torch.Tensor) -> Recurrence:
    # an all-zero W_ei (COBA) adds exact zeros: skip its arrivals and adjoint products
    return Recurrence(w_ei, w_ie, bool(w_ei.any()), bool(w_ie.any()))


def check_supported(config: Config) -> None:
    if config.mem_reg_weight > 0:
        raise ConfigError("backend", "'fast' does not compute the readout-membrane penalty "
                          "(u_excess, mem_reg_weight > 0); use backend 'reference'")


def simulate_fast(weights: Weights, input_spikes: torch.Tensor | InputEvents, config: Config,
                  record_voltage: bool = False, spike_trains: bool = True) -> dict[str, torch.Tensor]:
    """`engine.reference.simulate_reference`'s contract, event-driven and fused.

    s_e / s_i and count_e / count_i are differentiable (surrogate gradient) like the
    reference's, so a rate regulariser on them trains; logits are the time-mean of
    the readout. Without `spike_trains` the [T, B, n] trains are neither built nor
    returned: the counts are all a training step needs.
    """
    check_supported(config)
    dtype, device = config.torch_dtype, config.torch_device
    w = {name: weights[name].to(device=device, dtype=dtype) for name in ("W_in", "W_ei", "W_ie", "W_out")}
    steps, batch = input_spikes.shape[0], input_spikes.shape[1]
    p = fast_params(config, steps, batch, device, dtype)
    ev = input_events(input_spikes.to(device), p)
    s_e, s_i, count_e, count_i, filtered, v_e, v_i = FusedNetwork.apply(
        w["W_in"], w["W_ei"], w["W_ie"], ev, batch, p, spike_trains, record_voltage)
    out = {"count_e": count_e, "count_i": count_i, "logits": (filtered @ w["W_out"]) / steps}
    if spike_trains:
        out["s_e"], out["s_i"] = s_e, s_i
    if record_voltage:
        out["v_e"], out["v_i"] = v_e, v_i
    return out
