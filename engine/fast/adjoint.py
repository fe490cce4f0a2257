"""The adjoint math every loop family's backward shares.

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
rows of the E cells that spiked, W_ie rows of the I cells (WeightGrads).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from engine.fast.common import ArrivalEvents, FastParams


class SpikeEvents(NamedTuple):
    """Recurrent spikes arriving in a chunk: flat row (step, sample) and cell."""

    rows_e: torch.Tensor
    cells_e: torch.Tensor
    rows_i: torch.Tensor
    cells_i: torch.Tensor


def spike_events(source: torch.Tensor, offset: int, p: FastParams) -> SpikeEvents:
    """The spikes source[k] [K, B, N], arriving at chunk row k + offset."""
    batch = source.shape[1]
    k, b, e = source[:, :, :p.n_e].nonzero(as_tuple=True)
    k2, b2, i = source[:, :, p.n_e:].nonzero(as_tuple=True)
    return SpikeEvents((k + offset) * batch + b, e, (k2 + offset) * batch + b2, i)


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
        self.accumulate_input(lam, ev, index, t0, batch, p)
        self.accumulate_recurrent(lam, sev, p)

    def accumulate_input(self, lam, ev: ArrivalEvents, index: int, t0: int, batch: int, p: FastParams) -> None:
        """accumulate's W_in shares alone."""
        lo, hi = ev.bounds[index], ev.bounds[index + 1]
        if self.pos is not None and hi > lo:
            rows = (ev.step[lo:hi] - t0) * batch + ev.sample[lo:hi]
            self.pos.index_add_(0, ev.channel[lo:hi], lam[:, :p.n_e].index_select(0, rows))
            self.neg.index_add_(0, ev.channel[lo:hi], lam[:, p.n:].index_select(0, rows))

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
