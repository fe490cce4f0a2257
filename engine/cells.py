"""Conductance-based LIF cells: parameters, state and one pure step function.

With the canonical options the step follows MODEL.md's conventions literally:
decay the conductances, add the spikes arriving this step, one forward-Euler
membrane step with the new conductances, threshold (strict), reset, refractory
hold. The seed recipe's options (MODEL.md, last section) swap in pinglab's
choices one axis at a time: exponential Euler, kick-then-decay synapses, an
inclusive threshold, a countdown refractory, a voltage floor, µS/nF units.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


class CobaParams(NamedTuple):
    """One population's cell constants (ms, mV) and gradient settings."""

    tau_m_ms: float
    refractory_steps: int
    dt_ms: float = 0.1
    e_l_mv: float = -65.0
    v_reset_mv: float = -65.0
    v_th_mv: float = -50.0
    e_ampa_mv: float = 0.0
    e_gaba_mv: float = -80.0
    tau_ampa_ms: float = 2.0
    tau_gaba_ms: float = 9.0
    beta: float = 1.0
    v_grad_dampen: float = 1.0
    detach_reset: bool = True
    # model variant (canonical defaults; see engine.config VARIANT_CHOICES)
    integrator: str = "forward_euler"
    synapse_order: str = "decay_then_add"
    threshold_inclusive: bool = False
    refractory_mode: str = "hold"
    v_floor_mv: float | None = None
    # membrane capacitance and leak conductance: (tau_m, 1) in leak units,
    # (C in nF, C / tau_m in µS) with conductances in µS
    c_m: float | None = None  # None: tau_m_ms (leak units)
    g_l: float = 1.0

    @property
    def capacitance(self) -> float:
        return self.tau_m_ms if self.c_m is None else self.c_m

    @property
    def ampa_decay(self) -> float:
        return math.exp(-self.dt_ms / self.tau_ampa_ms)

    @property
    def gaba_decay(self) -> float:
        return math.exp(-self.dt_ms / self.tau_gaba_ms)


class CobaState(NamedTuple):
    """Membrane voltage, AMPA and GABA conductances, remaining refractory steps."""

    v: torch.Tensor
    g_ampa: torch.Tensor
    g_gaba: torch.Tensor
    refractory: torch.Tensor  # int32, steps the cell is still held at v_reset


def coba_initial_state(shape: tuple[int, ...], p: CobaParams, dtype: torch.dtype,
                       device: torch.device | str) -> CobaState:
    """V = E_L, conductances 0, no cell refractory (MODEL.md "initial state")."""
    zeros = torch.zeros(shape, dtype=dtype, device=device)
    return CobaState(
        v=torch.full(shape, p.e_l_mv, dtype=dtype, device=device),
        g_ampa=zeros,
        g_gaba=zeros.clone(),
        refractory=torch.zeros(shape, dtype=torch.int32, device=device),
    )


class SpikeFunction(torch.autograd.Function):
    """Heaviside forward (strict x > 0, or inclusive x >= 0); fast-sigmoid
    surrogate 1/(1 + beta|x|)^2 backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, beta: float, inclusive: bool = False) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.beta = beta
        return ((x >= 0) if inclusive else (x > 0)).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad_out / (1.0 + ctx.beta * x.abs()) ** 2, None, None


def dampen_gradient(dv: torch.Tensor, factor: float) -> torch.Tensor:
    """Keep dv's value, divide its gradient by `factor` (MODEL.md "Gradients")."""
    if factor == 1.0:
        return dv
    frozen = dv.detach()
    return frozen + (dv - frozen) / factor


def synapse_update(g: torch.Tensor, arriving: torch.Tensor | None, decay: float, order: str) -> torch.Tensor:
    """decay_then_add: g exp(-dt/tau) + arriving; add_then_decay: (g + arriving) exp(-dt/tau)."""
    if arriving is None:
        return g * decay
    return g * decay + arriving if order == "decay_then_add" else (g + arriving) * decay


def membrane_update(v: torch.Tensor, g_ampa: torch.Tensor, g_gaba: torch.Tensor,
                    p: CobaParams) -> torch.Tensor:
    """dv over one step with the conductances held at this step's values.

    forward_euler:      dv = dt/C (g_L (E_L - V) + g_ampa (E_ampa - V) + g_gaba (E_gaba - V))
    exponential_euler:  g_tot = g_L + g_ampa + g_gaba,
                        V_inf = (g_L E_L + g_ampa E_ampa + g_gaba E_gaba) / g_tot,
                        dv = (V_inf - V) (1 - exp(-dt g_tot / C))   (exact for constant g)
    In leak units C = tau_m and g_L = 1. The exponential form keeps pinglab's
    operation order (lif_step_expeuler) so that float64 runs agree bit for bit.
    """
    if p.integrator == "forward_euler":
        leak = (p.e_l_mv - v) if p.g_l == 1.0 else p.g_l * (p.e_l_mv - v)
        return p.dt_ms / p.capacitance * (
            leak + g_ampa * (p.e_ampa_mv - v) + g_gaba * (p.e_gaba_mv - v)
        )
    g_tot = p.g_l + (g_ampa + g_gaba)
    v_inf = (p.g_l * p.e_l_mv + (g_ampa * p.e_ampa_mv + g_gaba * p.e_gaba_mv)) / g_tot
    decay = torch.exp(-p.dt_ms / (p.capacitance / g_tot))
    return (v_inf - v) * (1.0 - decay)


def coba_step(state: CobaState, ampa_in: torch.Tensor | None, gaba_in: torch.Tensor | None,
              p: CobaParams, ampa_now: torch.Tensor | None = None,
              gaba_now: torch.Tensor | None = None) -> tuple[torch.Tensor, CobaState]:
    """Advance one population by one step of p.dt_ms.

    `ampa_in` / `gaba_in` are the conductance jumps arriving this step (already
    weighted sums of the presynaptic spikes of the previous step; None: none).
    `ampa_now` / `gaba_now` are added after the decay whatever the synapse order
    (the seed recipe's same-step input).

        g_ampa <- g_ampa exp(-dt/tau_ampa) + ampa_in     (decay_then_add)
                  (g_ampa + ampa_in) exp(-dt/tau_ampa)   (add_then_decay)
        g_gaba <- likewise with tau_gaba
        V      <- V + dv (membrane_update), clamped below at v_floor if set
        s      <- H(V - V_th);  V <- V_reset where s = 1, then refractory:
          hold:      held at V_reset for the R steps after a spike, no integration
          countdown: a counter set to R on a spike is decremented before the
                     threshold test; while it is nonzero the cell cannot spike
                     and V is set to V_reset (R - 1 held steps)
    """
    # conductances: this step's arrivals and the decay, in the configured order
    g_ampa = synapse_update(state.g_ampa, ampa_in, p.ampa_decay, p.synapse_order)
    g_gaba = synapse_update(state.g_gaba, gaba_in, p.gaba_decay, p.synapse_order)
    if ampa_now is not None:
        g_ampa = g_ampa + ampa_now
    if gaba_now is not None:
        g_gaba = g_gaba + gaba_now
    v = state.v + dampen_gradient(membrane_update(state.v, g_ampa, g_gaba, p), p.v_grad_dampen)
    if p.v_floor_mv is not None:
        v = v.clamp(min=p.v_floor_mv)
    if p.refractory_mode == "hold":
        # refractory cells are held at V_reset and carry no gradient; V_reset < V_th,
        # so their spike is exactly 0
        held = state.refractory > 0
        v = torch.where(held, torch.full_like(v, p.v_reset_mv), v)
        spikes = SpikeFunction.apply(v - p.v_th_mv, p.beta, p.threshold_inclusive)
        countdown = (state.refractory - 1).clamp(min=0)
    else:
        countdown = (state.refractory - 1).clamp(min=0)
        held = countdown > 0
        # a held cell's spike is exactly 0 and carries no surrogate gradient
        spikes = SpikeFunction.apply(v - p.v_th_mv, p.beta, p.threshold_inclusive) * (~held).to(v.dtype)
        v = torch.where(held, torch.full_like(v, p.v_reset_mv), v)
    # reset, detached from the graph unless asked otherwise
    gate = spikes.detach() if p.detach_reset else spikes
    v = v * (1.0 - gate) + p.v_reset_mv * gate
    fired = spikes.detach() > 0
    refractory = torch.where(fired, torch.full_like(state.refractory, p.refractory_steps), countdown)
    return spikes, CobaState(v=v, g_ampa=g_ampa, g_gaba=g_gaba, refractory=refractory)
