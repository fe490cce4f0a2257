"""The adjoint of engine.fast's time loop: recompute a chunk, then run it in reverse.

Notation for one step t (per cell, k = dt/tau_m, D = v_grad_dampen):

    g_t   = decay * g_{t-1} + a_t                      (a_t: arrivals, [AMPA_E | AMPA_I | GABA_E])
    v1_t  = v_{t-1} + dv_t,  dv_t = k((E_L - v) + g_a (E_a - v) + g_g (E_g - v)),  gradient of dv / D
    v2_t  = V_reset if held_t else v1_t
    s_t   = H(v2_t - V_th),  surrogate sg_t = 1 / (1 + beta |v2_t - V_th|)^2
    v_t   = v2_t (1 - s_t) + V_reset s_t               (s_t detached here unless detach_reset is off)

Adjoints, going backwards (lam_v = dL/dv_t, lam_g = dL/dg_t, lam_s = dL/ds_t):

    lam_s  = c_t dL/dcount + dL/ds_t + arrivals' share: (lam_g_{t+1} on I AMPA) W_ei^T  (E),
             (lam_g_{t+1} on E GABA) W_ie^T (I), unless detach_recurrent
    lam_s += lam_v (V_reset - v2_t)                    (only if the reset is not detached)
    e      = [lam_v (1 - s_t) + lam_s sg_t] * not held_t          (= dL/dv1_t)
    ed     = e k / D
    lam_g_t   = decay * lam_g_{t+1} + ed (E_syn - v_{t-1})         (also dL/da_t)
    lam_v_{t-1} = e - ed (1 + g_a + g_g)

Weight gradients come from dL/da_t at the arrival of each spike: W_in rows of the
channels that spiked (then the clamp split: a zero entry gets both parts), W_ei
rows of the E cells that spiked, W_ie rows of the I cells.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from engine.fast import (Checkpoint, FastParams, ArrivalEvents, input_chunk, membrane_update,
                         recurrence, split_input_weights, sum_rows)


class Tape(NamedTuple):
    """One chunk recomputed: what the adjoint needs, [L, B, ...]."""

    g: torch.Tensor  # conductances after each step's update [L, B, M]
    v: torch.Tensor  # voltages [L+1, B, N]: v[k] before step k
    v2: torch.Tensor  # voltage after the Euler step and the hold, before reset
    held: torch.Tensor  # bool


class SpikeEvents(NamedTuple):
    """Recurrent spikes arriving in a chunk: flat row (step, sample) and cell."""

    rows_e: torch.Tensor
    cells_e: torch.Tensor
    rows_i: torch.Tensor
    cells_i: torch.Tensor


def chunk_spike_events(spikes: torch.Tensor, t0: int, length: int, p: FastParams) -> SpikeEvents:
    """E and I spikes of steps t0-1 .. t0+length-2, keyed by their arrival row."""
    first = max(t0 - 1, 0)
    return spike_events(spikes[first:t0 + length - 1], first + 1 - t0, p)


def spike_events(source: torch.Tensor, offset: int, p: FastParams) -> SpikeEvents:
    """The spikes source[k] [K, B, N], arriving at chunk row k + offset."""
    batch = source.shape[1]
    k, b, e = source[:, :, :p.n_e].nonzero(as_tuple=True)
    k2, b2, i = source[:, :, p.n_e:].nonzero(as_tuple=True)
    return SpikeEvents((k + offset) * batch + b, e, (k2 + offset) * batch + b2, i)


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


class WeightGrads:
    """dL/d(W_in_pos, W_in_neg, W_ei, W_ie) accumulated from dL/da at each arrival."""

    def __init__(self, pos, neg, ei, ie):
        self.pos, self.neg, self.ei, self.ie = pos, neg, ei, ie

    @classmethod
    def zeros(cls, w_in, w_ei, w_ie, need):
        def make(w, flag):
            return torch.zeros_like(w) if flag else None

        return cls(make(w_in, need[0]), make(w_in, need[0]), make(w_ei, need[1]), make(w_ie, need[2]))

    def accumulate(self, lam, ev: ArrivalEvents, index: int, t0: int, batch: int,
                   sev: SpikeEvents, p: FastParams) -> None:
        """Add chunk `index`'s shares; lam is its dL/da, [L * B, M] (row (step - t0) * B + sample)."""
        lo, hi = ev.bounds[index], ev.bounds[index + 1]
        if self.pos is not None and hi > lo:
            rows = (ev.step[lo:hi] - t0) * batch + ev.sample[lo:hi]
            self.pos.index_add_(0, ev.channel[lo:hi], lam[:, :p.n_e].index_select(0, rows))
            self.neg.index_add_(0, ev.channel[lo:hi], lam[:, p.n:].index_select(0, rows))
        self.accumulate_recurrent(lam, sev, p)

    def accumulate_recurrent(self, lam, sev: SpikeEvents, p: FastParams) -> None:
        """accumulate's W_ei / W_ie shares alone."""
        if self.ei is not None:
            self.ei.index_add_(0, sev.cells_e, lam[:, p.n_e:p.n].index_select(0, sev.rows_e))
        if self.ie is not None:
            self.ie.index_add_(0, sev.cells_i, lam[:, p.n:].index_select(0, sev.rows_i))

    def result(self, w_in):
        # clamp's backward passes where x >= min: an exact zero gets both parts
        d_in = None
        if self.pos is not None:
            d_in = self.pos * (w_in >= 0) - self.neg * (w_in <= 0)
        return d_in, self.ei, self.ie
