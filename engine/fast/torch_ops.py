"""The fast backend's torch-op time loop: the forward, and its adjoint (engine.fast.adjoint's
notation) by chunk: recompute a chunk from its checkpoint, then run it in reverse.

About 25 tensor ops per step forward and 45 backward: only torch ops, so it runs on
any device. On CPU the compiled loops (engine.fast.cpu) replace it; it stays the
readable version of the fused loop and is tested against the reference like them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from engine.fast.adjoint import SpikeEvents, WeightGrads, arrival_scales, spike_events
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
    """dv of one step, with the reference's operation order (engine.cells.membrane_update):
    forward Euler, or exponential Euler with g held over the step (I has no GABA
    conductance: x + 0 g is x, so its sums leave that term out)."""
    n_e = p.n_e
    if p.variant.exp_euler:
        g_tot, v_inf, f = exponential_factors(g, p)
        return (v_inf - v).mul_(f)
    total = p.e_l - v
    if p.g_l is not None:  # None in leak units (g_L = 1)
        total.mul_(p.g_l)
    total.add_((p.e_ampa - v).mul_(g[:, :p.n]))
    total[:, :n_e].add_((p.e_gaba - v[:, :n_e]).mul_(g[:, p.n:]))
    return total.mul_(p.c)


def exponential_factors(g: torch.Tensor, p: FastParams):
    """Exponential Euler's g_tot = g_L + g_a + g_g, V_inf and f = 1 - exp(-dt g_tot / C)
    for g [..., M], in engine.cells.membrane_update's order."""
    n_e, n = p.n_e, p.n
    g_a, g_g = g[..., :n], g[..., n:]
    g_tot = g_a.clone()
    g_tot[..., :n_e].add_(g_g)
    g_l = 1.0 if p.g_l is None else p.g_l
    g_tot = g_l + g_tot
    drive = g_a * p.e_ampa
    drive[..., :n_e].add_(g_g * p.e_gaba)
    v_inf = (g_l * p.e_l + drive) / g_tot
    f = 1.0 - torch.exp(-p.cells[0].dt_ms / (p.capacitance / g_tot))
    return g_tot, v_inf, f


def update_conductances(g: torch.Tensor, arriving: torch.Tensor, now: torch.Tensor | None,
                        p: FastParams, out: torch.Tensor | None = None) -> torch.Tensor:
    """g after one step: the arrivals and the decay in the configured order, then the
    same-step input (`now`, else None) after the decay."""
    if p.variant.kick_first:
        g = torch.add(g, arriving, out=out).mul_(p.decay)
    else:
        g = torch.mul(g, p.decay, out=out).add_(arriving)
    return g if now is None else g.add_(now)


def threshold(v: torch.Tensor, p: FastParams, out: torch.Tensor) -> torch.Tensor:
    return torch.ge(v, p.v_th, out=out) if p.variant.inclusive else torch.gt(v, p.v_th, out=out)


def forward_chunk(state: Checkpoint, arrivals: torch.Tensor, spikes: torch.Tensor, t0: int,
                  rec: Recurrence, p: FastParams, voltages: torch.Tensor | None) -> None:
    """Advance `state` in place over len(arrivals) steps, writing bool spikes [T, B, N].
    With same-step input `arrivals` holds the input alone, added after the decay."""
    v, g, last = state
    for k in range(arrivals.shape[0]):
        t = t0 + k
        x, now = arrivals[k], None
        if p.variant.same_step:
            x, now = torch.zeros_like(x), x
        if t > 0:
            add_recurrent(x, spikes[t - 1], rec, p)
        # conductances: this step's arrivals and the decay in the configured order
        update_conductances(g, x, now, p, out=g)
        # membrane step; the floor; held cells sit at V_reset; threshold; reset
        v.add_(membrane_update(v, g, p))
        if p.variant.v_floor is not None:
            v.clamp_(min=p.variant.v_floor)
        v.masked_fill_(last >= p.hold_from[t], p.v_reset)
        fired = threshold(v, p, spikes[t])
        v.masked_fill_(fired, p.v_reset)
        last.masked_fill_(fired, t)
        if voltages is not None:
            voltages[t].copy_(v)


def run_forward(w_in, rec: Recurrence, ev: ArrivalEvents, batch: int, p: FastParams,
                record_voltage: bool):
    """Spikes bool [T, B, N], the checkpoints at every chunk start, voltages or None."""
    dtype, device = w_in.dtype, w_in.device
    w_pos, w_neg = split_input_weights(w_in, p.variant.dale_in)
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
    v2: torch.Tensor  # voltage after the membrane step, the floor and the hold, before reset
    held: torch.Tensor  # bool
    clamped: torch.Tensor | None = None  # bool: the floor clamped the cell (no gradient passes)


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
    """Re-run the chunk's membrane from its checkpoint with the known spikes (bit-exact).
    With same-step input `arrivals` is a list of (recurrent, input) pairs, one per step."""
    length, (batch, _) = len(arrivals), cp.v.shape
    dtype, device = cp.v.dtype, cp.v.device
    g_all = torch.empty(length, batch, p.m, dtype=dtype, device=device)
    v_all = torch.empty(length + 1, batch, p.n, dtype=dtype, device=device)
    v2_all = torch.empty(length, batch, p.n, dtype=dtype, device=device)
    held = torch.empty(length, batch, p.n, dtype=torch.bool, device=device)
    floor = p.variant.v_floor
    clamped = torch.empty(length, batch, p.n, dtype=torch.bool, device=device) if floor is not None else None
    v_all[0].copy_(cp.v)
    g, last = cp.g, cp.last_spike.clone()
    for k in range(length):
        t = t0 + k
        x, now = (arrivals[k], None) if not p.variant.same_step else arrivals[k]
        g = update_conductances(g, x, now, p, out=g_all[k])
        v = v_all[k]
        v2 = torch.add(v, membrane_update(v, g, p), out=v2_all[k])
        if floor is not None:  # torch.clamp's gradient passes at v == floor
            torch.lt(v2, floor, out=clamped[k])
            v2.clamp_(min=floor)
        v2.masked_fill_(torch.ge(last, p.hold_from[t], out=held[k]), p.v_reset)
        v_all[k + 1].copy_(v2).masked_fill_(spikes[t], p.v_reset)
        last.masked_fill_(spikes[t], t)
    return Tape(g_all, v_all, v2_all, held, clamped)


class Coefficients(NamedTuple):
    keep_v: torch.Tensor  # (1 - s) * not held
    surrogate: torch.Tensor  # sg * not held
    drive: torch.Tensor  # [L, B, M] E_syn - v_{t-1}
    leak: torch.Tensor  # [L, B, N] 1 + g_a + g_g
    reset: torch.Tensor | None  # V_reset - v2 (only when the reset keeps its gradient)


def adjoint_coefficients(tape: Tape, spikes: torch.Tensor, p: FastParams) -> Coefficients:
    """Per-step factors of the adjoint, vectorised over the chunk."""
    dtype = tape.g.dtype
    free = ~tape.held if tape.clamped is None else ~(tape.held | tape.clamped)
    keep_v = (free & ~spikes).to(dtype)
    surrogate = (tape.v2 - p.v_th).abs_().mul_(p.beta).add_(1.0).pow_(-2).mul_(free)
    v_prev = tape.v[:-1]
    drive = torch.empty_like(tape.g)
    n, n_e = p.n, p.n_e
    if p.variant.exp_euler:
        # d dv / d g_syn = (E_syn - V_inf) f / g_tot + (V_inf - v) dt / C (1 - f)   (engine.fast.adjoint)
        g_tot, v_inf, f = exponential_factors(tape.g, p)
        f_per_g = f / g_tot
        common = (v_inf - v_prev).mul_(p.c).mul_(1.0 - f)
        drive[:, :, :n].copy_((p.e_ampa - v_inf).mul_(f_per_g).add_(common))
        drive[:, :, n:].copy_(((p.e_gaba - v_inf).mul_(f_per_g).add_(common))[:, :, :n_e])
        leak = f
    else:
        drive[:, :, :n].copy_(p.e_ampa - v_prev)
        drive[:, :, n:].copy_(p.e_gaba - v_prev[:, :, :n_e])
        leak = tape.g[:, :, :n] + (1.0 if p.g_l is None else p.g_l)
        leak[:, :, :n_e].add_(tape.g[:, :, n:])
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
    if grads.drive is not None:  # the output LIF's drive s_e[t] @ W_out
        a_e = a_e + grads.drive[t] @ ctx["w_out_t"]
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
                     out_grads, need, w_out: torch.Tensor | None = None):
    """Gradients (W_in, W_ei, W_ie, W_out), None where not needed (W_out's: with the
    output-LIF readout, whose drive's gradient out_grads.drive carries)."""
    batch, dtype, device = spikes.shape[1], w_in.dtype, w_in.device
    rec = recurrence(w_ei, w_ie)
    w_pos, w_neg = split_input_weights(w_in, p.variant.dale_in)
    ext = torch.cat([torch.arange(p.n, device=device), torch.arange(p.n_e, device=device)])
    # the membrane update's gradient: dt / C / D times forward Euler's factors, 1 / D times exponential Euler's
    k_dv = (torch.ones_like(p.c) if p.variant.exp_euler else p.c) / p.v_grad_dampen
    scale_ei, scale_ie = arrival_scales(p)[2:]  # kicked-then-decayed arrivals: dL/da = decay dL/dg
    lif = out_grads.drive is not None and w_out is not None
    ctx = {
        "p": p, "ext": ext, "k_ext": k_dv[ext], "w_out_t": w_out.t() if lif else None,
        "out_grads": out_grads,
        "readout": p.readout.tolist(),
        "zeros_e": torch.zeros(batch, p.n_e, dtype=dtype, device=device),
        "zeros_i": torch.zeros(batch, p.n_i, dtype=dtype, device=device),
        "adjoint_ei": rec.use_ei and not p.detach_recurrent,
        "adjoint_ie": rec.use_ie and not p.detach_recurrent,
        "w_ei_t": (w_ei * scale_ei).t(), "w_ie_t": (w_ie * scale_ie).t(),
    }
    grads = WeightGrads.zeros(w_in, w_ei, w_ie, need, p)
    grad_w_out = torch.zeros_like(w_out) if lif and need[3] else None
    state = Adjoint(torch.zeros(batch, p.n, dtype=dtype, device=device),
                    torch.zeros(batch, p.m, dtype=dtype, device=device))
    for index in reversed(range(len(checkpoints))):
        t0 = index * p.chunk
        length = min(p.chunk, p.steps - t0)
        arrivals = input_chunk(w_pos, w_neg, ev, index, t0, length, batch, p)
        sev = chunk_spike_events(spikes, t0, length, p)
        if p.variant.same_step:  # the input apart, added after the decay
            recurrent = torch.zeros_like(arrivals)
            add_recurrent_chunk(recurrent, sev, rec, p)
            arrivals = list(zip(recurrent.unbind(0), arrivals.unbind(0)))
        else:
            add_recurrent_chunk(arrivals, sev, rec, p)
        tape = recompute_chunk(checkpoints[index], arrivals, spikes, t0, p)
        del arrivals
        co = adjoint_coefficients(tape, spikes[t0:t0 + length], p)
        del tape
        lam = torch.empty(length, batch, p.m, dtype=dtype, device=device)
        state = adjoint_chunk(state, co, lam, t0, ctx)
        grads.accumulate(lam.view(length * batch, p.m), ev, index, t0, batch, sev, p)
        if grad_w_out is not None:  # each E spike of the chunk adds its step's dL/dr row
            s_e = spikes[t0:t0 + length, :, :p.n_e].reshape(length * batch, p.n_e).to(dtype)
            grad_w_out.addmm_(s_e.t(), out_grads.drive[t0:t0 + length].reshape(length * batch, -1))
    return (*grads.result(w_in), grad_w_out)


def readout_drive(spikes: torch.Tensor, w_out: torch.Tensor, p: FastParams) -> torch.Tensor:
    """The output LIF's drive s_e[t] @ W_out [T, B, n_out], a chunk at a time."""
    steps, batch = spikes.shape[:2]
    drive = torch.empty(steps, batch, w_out.shape[1], dtype=w_out.dtype, device=w_out.device)
    for t0 in range(0, steps, p.chunk):
        s_e = spikes[t0:t0 + p.chunk, :, :p.n_e].to(w_out.dtype)
        torch.matmul(s_e, w_out, out=drive[t0:t0 + p.chunk])
    return drive
