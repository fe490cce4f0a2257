"""Conductance-based LIF cells: parameters, state and one pure step function.

The step follows MODEL.md's conventions literally: decay the conductances, add the
spikes arriving this step, one forward-Euler membrane step with the new
conductances, threshold (strict), reset, refractory hold.
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
    """Heaviside forward (strict: x > 0); fast-sigmoid surrogate 1/(1 + beta|x|)^2 backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, beta: float) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.beta = beta
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad_out / (1.0 + ctx.beta * x.abs()) ** 2, None


def dampen_gradient(dv: torch.Tensor, factor: float) -> torch.Tensor:
    """Keep dv's value, divide its gradient by `factor` (MODEL.md "Gradients")."""
    if factor == 1.0:
        return dv
    frozen = dv.detach()
    return frozen + (dv - frozen) / factor


def coba_step(state: CobaState, ampa_in: torch.Tensor, gaba_in: torch.Tensor,
              p: CobaParams) -> tuple[torch.Tensor, CobaState]:
    """Advance one population by one step of p.dt_ms.

    `ampa_in` / `gaba_in` are the conductance jumps arriving this step (already
    weighted sums of the presynaptic spikes of the previous step).

        g_ampa <- g_ampa exp(-dt/tau_ampa) + ampa_in
        g_gaba <- g_gaba exp(-dt/tau_gaba) + gaba_in
        V      <- V + dt/tau_m ((E_L - V) + g_ampa (E_ampa - V) + g_gaba (E_gaba - V))
        s      <- H(V - V_th);  V <- V_reset where s = 1, held there for R steps
    """
    # conductances: decay, then this step's arrivals
    g_ampa = state.g_ampa * p.ampa_decay + ampa_in
    g_gaba = state.g_gaba * p.gaba_decay + gaba_in
    # forward-Euler membrane step with the new conductances
    v = state.v
    dv = p.dt_ms / p.tau_m_ms * (
        (p.e_l_mv - v) + g_ampa * (p.e_ampa_mv - v) + g_gaba * (p.e_gaba_mv - v)
    )
    v = v + dampen_gradient(dv, p.v_grad_dampen)
    # refractory cells are held at V_reset and carry no gradient; V_reset < V_th,
    # so their spike is exactly 0
    held = state.refractory > 0
    v = torch.where(held, torch.full_like(v, p.v_reset_mv), v)
    # strict threshold with surrogate gradient
    spikes = SpikeFunction.apply(v - p.v_th_mv, p.beta)
    # reset, detached from the graph unless asked otherwise
    gate = spikes.detach() if p.detach_reset else spikes
    v = v * (1.0 - gate) + p.v_reset_mv * gate
    fired = spikes.detach() > 0
    refractory = torch.where(fired, torch.full_like(state.refractory, p.refractory_steps),
                             (state.refractory - 1).clamp(min=0))
    return spikes, CobaState(v=v, g_ampa=g_ampa, g_gaba=g_gaba, refractory=refractory)
