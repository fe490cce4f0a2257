"""The plain reference network: MODEL.md as executable spec.

A Python loop over time, one `network_step` per dt, autograd storing whatever it
needs. Slow and memory-hungry by design: fast paths are tested against it spike
for spike (float64) and gradient for gradient.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from engine.cells import CobaParams, CobaState, coba_initial_state, coba_step
from engine.config import Config
from engine.weights import Weights


class NetworkParams(NamedTuple):
    e: CobaParams
    i: CobaParams
    out_decay: float
    detach_recurrent: bool
    mem_theta: float | None  # None: no readout-membrane penalty is computed


class NetworkState(NamedTuple):
    e: CobaState
    i: CobaState
    x_prev: torch.Tensor  # input spikes of the previous step [B, n_input]
    s_e_prev: torch.Tensor  # E spikes of the previous step [B, n_e]
    s_i_prev: torch.Tensor  # I spikes of the previous step [B, n_i]
    u: torch.Tensor  # readout integrators [B, n_out]


def network_params(config: Config) -> NetworkParams:
    shared = dict(
        dt_ms=config.dt_ms, e_l_mv=config.e_l_mv, v_reset_mv=config.v_reset_mv,
        v_th_mv=config.v_th_mv, e_ampa_mv=config.e_ampa_mv, e_gaba_mv=config.e_gaba_mv,
        tau_ampa_ms=config.tau_ampa_ms, tau_gaba_ms=config.tau_gaba_ms, beta=config.beta,
        v_grad_dampen=config.v_grad_dampen, detach_reset=config.detach_reset,
    )
    return NetworkParams(
        e=CobaParams(tau_m_ms=config.tau_m_e_ms,
                     refractory_steps=int(round(config.t_ref_e_ms / config.dt_ms)), **shared),
        i=CobaParams(tau_m_ms=config.tau_m_i_ms,
                     refractory_steps=int(round(config.t_ref_i_ms / config.dt_ms)), **shared),
        out_decay=math.exp(-config.dt_ms / config.tau_out_ms),
        detach_recurrent=config.detach_recurrent,
        mem_theta=config.mem_theta if config.mem_reg_weight > 0 else None,
    )


def initial_state(batch: int, config: Config, p: NetworkParams) -> NetworkState:
    dtype, device = config.torch_dtype, config.torch_device

    def zeros(n: int) -> torch.Tensor:
        return torch.zeros(batch, n, dtype=dtype, device=device)

    return NetworkState(
        e=coba_initial_state((batch, config.n_e), p.e, dtype, device),
        i=coba_initial_state((batch, config.n_i), p.i, dtype, device),
        x_prev=zeros(config.n_input), s_e_prev=zeros(config.n_e), s_i_prev=zeros(config.n_i),
        u=zeros(config.n_out),
    )


def network_step(state: NetworkState, x_t: torch.Tensor, w: Weights,
                 p: NetworkParams) -> tuple[torch.Tensor, torch.Tensor, NetworkState]:
    """One dt of the whole network. `w` holds W_in split into "W_in_pos"/"W_in_neg"."""
    s_e_pre, s_i_pre = state.s_e_prev, state.s_i_prev
    if p.detach_recurrent:
        s_e_pre, s_i_pre = s_e_pre.detach(), s_i_pre.detach()
    # spikes of step t-1 arrive now: input and I->E onto E, E->I onto I
    ampa_e = state.x_prev @ w["W_in_pos"]
    gaba_e = state.x_prev @ w["W_in_neg"] + s_i_pre @ w["W_ie"]
    ampa_i = s_e_pre @ w["W_ei"]
    s_e, e = coba_step(state.e, ampa_e, gaba_e, p.e)
    s_i, i = coba_step(state.i, ampa_i, torch.zeros_like(ampa_i), p.i)
    # readout integrates this step's E spikes (no delay)
    u = state.u * p.out_decay + s_e @ w["W_out"]
    return s_e, s_i, NetworkState(e=e, i=i, x_prev=x_t, s_e_prev=s_e, s_i_prev=s_i, u=u)


def simulate_reference(weights: Weights, input_spikes: torch.Tensor, config: Config,
                       record_voltage: bool = False, spike_trains: bool = True) -> dict[str, torch.Tensor]:
    """Run the network over input_spikes [T, B, n_input] (0/1).

    Returns s_e [T, B, n_e], s_i [T, B, n_i] (left out without spike_trains), the
    spike counts count_e [B, n_e], count_i [B, n_i], logits [B, n_out] (time-mean of
    the readout), and with record_voltage v_e / v_i [T, B, n] (after reset).
    With a readout-membrane penalty configured, also u_excess: the time-mean of
    sum_k relu(u_k - mem_theta)^2, per sample.
    """
    p = network_params(config)
    x = input_spikes.to(dtype=config.torch_dtype)
    steps, batch = x.shape[0], x.shape[1]
    # split W_in by sign with clamp (not relu): a zero entry keeps a gradient
    w = {
        "W_in_pos": weights["W_in"].clamp(min=0),
        "W_in_neg": (-weights["W_in"]).clamp(min=0),
        "W_ei": weights["W_ei"], "W_ie": weights["W_ie"], "W_out": weights["W_out"],
    }
    state = initial_state(batch, config, p)
    s_e, s_i, v_e, v_i = [], [], [], []
    u_sum = torch.zeros_like(state.u)
    u_excess = torch.zeros(batch, dtype=x.dtype, device=x.device)
    for x_t in x.unbind(0):
        spikes_e, spikes_i, state = network_step(state, x_t, w, p)
        s_e.append(spikes_e)
        s_i.append(spikes_i)
        u_sum = u_sum + state.u
        if p.mem_theta is not None:
            u_excess = u_excess + (state.u - p.mem_theta).clamp(min=0).pow(2).sum(-1)
        if record_voltage:
            v_e.append(state.e.v.detach())
            v_i.append(state.i.v.detach())
    s_e, s_i = torch.stack(s_e), torch.stack(s_i)
    out = {"count_e": s_e.sum(0), "count_i": s_i.sum(0), "logits": u_sum / steps}
    if spike_trains:
        out["s_e"], out["s_i"] = s_e, s_i
    if p.mem_theta is not None:
        out["u_excess"] = u_excess / steps
    if record_voltage:
        out["v_e"], out["v_i"] = torch.stack(v_e), torch.stack(v_i)
    return out
