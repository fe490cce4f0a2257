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

The seed recipe's options (engine.fast.common.Variant) change these factors:
- add_then_decay, g_t = (g_{t-1} + a_t) decay: lam_g keeps its recursion, and
  dL/da_t = decay lam_g_t for those arrivals (arrival_scales); same-step input,
  g_t = (...) + x_t, has dL/dx_t = lam_g_t.
- exponential Euler, dv = (V_inf - v) f with f = 1 - exp(-dt g_tot / C),
  V_inf = (g_L E_L + sum g E_syn) / g_tot: lam_v_{t-1} = e - ed f and
  lam_g_t = decay lam_g_{t+1} + ed ((E_syn - V_inf) f / g_tot + (V_inf - v_{t-1}) dt/C (1 - f)),
  with ed = e / D.
- forward Euler in µS: k = dt / C and the leak factor g_L + g_a + g_g.
- a countdown refractory of R is a hold of R - 1; an inclusive threshold spikes at
  v2 >= V_th; a voltage floor passes no gradient where it clamped (v1 < floor, as
  torch.clamp's backward).
- Dale's W_in has no negative part: W_in's gradient is the AMPA part where W_in >= 0.
- the output-LIF readout's drive r_t = s_e[t] @ W_out adds dL/dr_t W_out^T to dL/ds_e[t]
  and its E spikes' dL/dr_t to W_out's rows.
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


def arrival_scales(p: FastParams) -> tuple[float, float, float, float]:
    """dL/da over dL/dg for the arrivals of W_in's AMPA and GABA parts, W_ei and W_ie:
    the decay where an arrival is kicked, then decayed (add_then_decay; same-step
    input is added after the decay), else 1."""
    if not p.variant.kick_first:
        return 1.0, 1.0, 1.0, 1.0
    d_ampa, d_gaba = float(p.decay[0]), float(p.decay[p.n])
    input_scales = (1.0, 1.0) if p.variant.same_step else (d_ampa, d_gaba)
    return (*input_scales, d_ampa, d_gaba)


class WeightGrads:
    """dL/d(W_in_pos, W_in_neg, W_ei, W_ie) accumulated from the conductance
    adjoint dL/dg at each arrival (scaled to dL/da in `result`)."""

    def __init__(self, pos, neg, ei, ie, p: FastParams | None = None):
        self.pos, self.neg, self.ei, self.ie = pos, neg, ei, ie
        self.scales = (1.0, 1.0, 1.0, 1.0) if p is None else arrival_scales(p)
        self.dale_in = p is not None and p.variant.dale_in

    @classmethod
    def zeros(cls, w_in, w_ei, w_ie, need, p: FastParams | None = None):
        def make(w, flag):
            return torch.zeros_like(w) if flag else None

        dale_in = p is not None and p.variant.dale_in  # no negative part: nothing to accumulate
        return cls(make(w_in, need[0]), make(w_in, need[0] and not dale_in), make(w_ei, need[1]),
                   make(w_ie, need[2]), p)

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
            if self.neg is not None:
                self.neg.index_add_(0, ev.channel[lo:hi], lam[:, p.n:].index_select(0, rows))

    def accumulate_recurrent(self, lam, sev: SpikeEvents, p: FastParams) -> None:
        """accumulate's W_ei / W_ie shares alone."""
        if self.ei is not None:
            self.ei.index_add_(0, sev.cells_e, lam[:, p.n_e:p.n].index_select(0, sev.rows_e))
        if self.ie is not None:
            self.ie.index_add_(0, sev.cells_i, lam[:, p.n:].index_select(0, sev.rows_i))

    def result(self, w_in):
        # clamp's backward passes where x >= min: an exact zero gets both parts
        in_ampa, in_gaba, ei, ie = self.scales
        d_in = None
        if self.pos is not None:
            d_in = _scaled(self.pos, in_ampa) * (w_in >= 0)
            if not self.dale_in:
                d_in = d_in - _scaled(self.neg, in_gaba) * (w_in <= 0)
        return d_in, _scaled(self.ei, ei), _scaled(self.ie, ie)


def _scaled(grad: torch.Tensor | None, scale: float) -> torch.Tensor | None:
    return grad if grad is None or scale == 1.0 else grad * scale
