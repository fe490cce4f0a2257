"""The fast backend's torch-op time loop: the forward, and its adjoint (engine.fast.adjoint's
notation) by chunk: recompute a chunk from its checkpoint, then run it in reverse.

About 25 tensor ops per step forward and 45 backward: only torch ops, so it runs on
any device. On CPU the compiled loops (engine.fast.cpu) replace it; it stays the
readable version of the fused loop and is tested against the reference like them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from engine.fast.adjoint import SpikeEvents, WeightGrads, spike_events
from engine.fast.common import (ArrivalEvents, Checkpoint, FastParams, Recurrence, initial_checkpoint,
                                input_chunk, recurrence, split_input_weights, sum_rows)


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


class Tape(NamedTuple):
    """One chunk recomputed: what the adjoint needs, [L, B, ...]."""

    g: torch.Tensor  # conductances after each step's update [L, B, M]
    v: torch.Tensor  # voltages [L+1, B, N]: v[k] before step k
    v2: torch.Tensor  # voltage after the Euler step and the hold, before reset
    held: torch.Tensor  # bool


def chunk_spike_events(spikes: torch.Tensor, t0: int, length: int, p: FastParams) -> SpikeEvents:
    """E and I spikes of steps t0-1 .. t0+length-2, keyed by their arrival row."""
    first = max(t0 - 1, 0)
    return spike_events(spikes[first:t0 + length - 1], first + 1 - t0, p)


def add_recurrent_chunk(arrivals: torch.Tensor, ev: SpikeEvents, rec, p: FastParams) -> None:
    """The E->I and I->E arrivals of a whole chunk, summed in the forward's order."""
    length, batch = arrivals.shape[:2]
    flat = arrivals.view(length * batch, p.m)
    if rec.use_ei:
        flat[:, p.n_e:p.n].add_(sum_rows(rec.w_ei, ev.cells_e, ev.rows_e, length * batch))
    if rec.use_ie:
        flat[:, p.n:].add_(sum_rows(rec.w_ie, ev.cells_i, ev.rows_i, length * batch))


def recompute_chunk(cp: Checkpoint, arrivals: torch.Tensor, spikes: torch.Tensor, t0: int,
                    p: FastParams) -> Tape:
    """Re-run the chunk's membrane from its checkpoint with the known spikes (bit-exact)."""
    length, batch = arrivals.shape[:2]
    dtype, device = arrivals.dtype, arrivals.device
    g_all = torch.empty(length, batch, p.m, dtype=dtype, device=device)
    v_all = torch.empty(length + 1, batch, p.n, dtype=dtype, device=device)
    v2_all = torch.empty(length, batch, p.n, dtype=dtype, device=device)
    held = torch.empty(length, batch, p.n, dtype=torch.bool, device=device)
    v_all[0].copy_(cp.v)
    g, last = cp.g, cp.last_spike.clone()
    for k in range(length):
        t = t0 + k
        g = torch.mul(g, p.decay, out=g_all[k]).add_(arrivals[k])
        v = v_all[k]
        v2 = torch.add(v, membrane_update(v, g, p), out=v2_all[k])
        v2.masked_fill_(torch.ge(last, p.hold_from[t], out=held[k]), p.v_reset)
        v_all[k + 1].copy_(v2).masked_fill_(spikes[t], p.v_reset)
        last.masked_fill_(spikes[t], t)
    return Tape(g_all, v_all, v2_all, held)


class Coefficients(NamedTuple):
    keep_v: torch.Tensor  # (1 - s) * not held
    surrogate: torch.Tensor  # sg * not held
    drive: torch.Tensor  # [L, B, M] E_syn - v_{t-1}
    leak: torch.Tensor  # [L, B, N] 1 + g_a + g_g
    reset: torch.Tensor | None  # V_reset - v2 (only when the reset keeps its gradient)


def adjoint_coefficients(tape: Tape, spikes: torch.Tensor, p: FastParams) -> Coefficients:
    """Per-step factors of the adjoint, vectorised over the chunk."""
    dtype = tape.g.dtype
    free = ~tape.held
    keep_v = (free & ~spikes).to(dtype)
    surrogate = (tape.v2 - p.v_th).abs_().mul_(p.beta).add_(1.0).pow_(-2).mul_(free)
    v_prev = tape.v[:-1]
    drive = torch.empty_like(tape.g)
    drive[:, :, :p.n].copy_(p.e_ampa - v_prev)
    drive[:, :, p.n:].copy_(p.e_gaba - v_prev[:, :, :p.n_e])
    leak = tape.g[:, :, :p.n] + 1.0
    leak[:, :, :p.n_e].add_(tape.g[:, :, p.n:])
    reset = None if p.detach_reset else (p.v_reset - tape.v2)
    return Coefficients(keep_v, surrogate, drive, leak, reset)


class Adjoint(NamedTuple):
    lam_v: torch.Tensor  # dL/dv after the step before the chunk
    lam_next: torch.Tensor  # dL/dg (= dL/d arrivals) of the chunk's first step


def adjoint_chunk(state: Adjoint, co: Coefficients, lam: torch.Tensor, t0: int, ctx: dict) -> Adjoint:
    """Reverse loop over one chunk; writes dL/da_t of each step into lam [L, B, M]."""
    p: FastParams = ctx["p"]
    lam_v, lam_next = state
    for k in reversed(range(lam.shape[0])):
        t = t0 + k
        a_e, a_i = spike_adjoint(t, lam_next, ctx)
        a_s = torch.cat([a_e, a_i], 1)
        if co.reset is not None:
            a_s.addcmul_(lam_v, co.reset[k])
        e = (lam_v * co.keep_v[k]).addcmul_(a_s, co.surrogate[k])
        ed = e.index_select(1, ctx["ext"]).mul_(ctx["k_ext"])
        lam_next = torch.mul(lam_next, p.decay, out=lam[k]).addcmul_(ed, co.drive[k])
        lam_v = torch.addcmul(e, ed[:, :p.n], co.leak[k], value=-1.0)
    return Adjoint(lam_v, lam_next)


def spike_adjoint(t: int, lam_next: torch.Tensor, ctx: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """dL/ds_t of E and I: readout, direct output gradients, next step's arrivals."""
    p: FastParams = ctx["p"]
    a_e, a_i = ctx["zeros_e"], ctx["zeros_i"]
    grads = ctx["out_grads"]
    if grads.filtered is not None:
        a_e = grads.filtered * ctx["readout"][t]
    if grads.count_e is not None:
        a_e = a_e + grads.count_e
    if grads.s_e is not None:
        a_e = a_e + grads.s_e[t]
    if grads.count_i is not None:
        a_i = a_i + grads.count_i
    if grads.s_i is not None:
        a_i = a_i + grads.s_i[t]
    if ctx["adjoint_ei"]:
        a_e = torch.addmm(a_e, lam_next[:, p.n_e:p.n], ctx["w_ei_t"])
    if ctx["adjoint_ie"]:
        a_i = torch.addmm(a_i, lam_next[:, p.n:], ctx["w_ie_t"])
    return a_e, a_i


def network_backward(w_in, w_ei, w_ie, spikes, checkpoints, ev: ArrivalEvents, p: FastParams,
                     out_grads, need):
    """Gradients (W_in, W_ei, W_ie), None where not needed."""
    batch, dtype, device = spikes.shape[1], w_in.dtype, w_in.device
    rec = recurrence(w_ei, w_ie)
    w_pos, w_neg = split_input_weights(w_in)
    ext = torch.cat([torch.arange(p.n, device=device), torch.arange(p.n_e, device=device)])
    ctx = {
        "p": p, "ext": ext, "k_ext": (p.c / p.v_grad_dampen)[ext],
        "out_grads": out_grads,
        "readout": p.readout.tolist(),
        "zeros_e": torch.zeros(batch, p.n_e, dtype=dtype, device=device),
        "zeros_i": torch.zeros(batch, p.n_i, dtype=dtype, device=device),
        "adjoint_ei": rec.use_ei and not p.detach_recurrent,
        "adjoint_ie": rec.use_ie and not p.detach_recurrent,
        "w_ei_t": w_ei.t(), "w_ie_t": w_ie.t(),
    }
    grads = WeightGrads.zeros(w_in, w_ei, w_ie, need)
    state = Adjoint(torch.zeros(batch, p.n, dtype=dtype, device=device),
                    torch.zeros(batch, p.m, dtype=dtype, device=device))
    for index in reversed(range(len(checkpoints))):
        t0 = index * p.chunk
        length = min(p.chunk, p.steps - t0)
        arrivals = input_chunk(w_pos, w_neg, ev, index, t0, length, batch, p)
        sev = chunk_spike_events(spikes, t0, length, p)
        add_recurrent_chunk(arrivals, sev, rec, p)
        tape = recompute_chunk(checkpoints[index], arrivals, spikes, t0, p)
        del arrivals
        co = adjoint_coefficients(tape, spikes[t0:t0 + length], p)
        del tape
        lam = torch.empty(length, batch, p.m, dtype=dtype, device=device)
        state = adjoint_chunk(state, co, lam, t0, ctx)
        grads.accumulate(lam.view(length * batch, p.m), ev, index, t0, batch, sev, p)
    return grads.result(w_in)
