"""The plain reference network: MODEL.md as executable spec.

A Python loop over time, one `network_step` per dt, autograd storing whatever it
needs. Slow and memory-hungry by design: fast paths are tested against it spike
for spike (float64) and gradient for gradient. It runs both recipes (MODEL.md):
each option of the seed recipe is one branch here or in `engine.cells`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from engine.cells import CobaParams, CobaState, SpikeFunction, coba_initial_state, coba_step
from engine.config import Config
from engine.weights import Weights


class NetworkParams(NamedTuple):
    e: CobaParams
    i: CobaParams
    out_decay: float  # exp(-dt/tau_out): the readout's decay per step
    detach_recurrent: bool
    mem_theta: float | None  # None: no readout-membrane penalty is computed
    input_same_step: bool = False  # input of step t acts at t (seed), else at t+1
    lif_readout: bool = False  # output LIF with subtract reset (seed "mem-mean")
    readout_scale: float = 1.0  # lif_readout: (1 - out_decay) / dt, the per-spike kick
    readout_v_th: float = 1.0
    readout_beta: float = 1.0  # lif_readout surrogate slope


class NetworkState(NamedTuple):
    e: CobaState
    i: CobaState
    x_prev: torch.Tensor  # input spikes of the previous step [B, n_input]
    s_e_prev: torch.Tensor  # E spikes of the previous step [B, n_e]
    s_i_prev: torch.Tensor  # I spikes of the previous step [B, n_i]
    u: torch.Tensor  # readout membranes carried to the next step [B, n_out]
    u_read: torch.Tensor  # this step's term of the logits' time mean (leaky: u; LIF: u before reset)


def cell_params(config: Config, population: str) -> CobaParams:
    """One population's CobaParams from the config (population "e" or "i")."""
    tau_m = config.tau_m_e_ms if population == "e" else config.tau_m_i_ms
    t_ref = config.t_ref_e_ms if population == "e" else config.t_ref_i_ms
    steps = int(round(t_ref / config.dt_ms))
    if config.refractory_mode == "countdown":
        steps = max(1, steps)  # pinglab's ref_steps: a spike always blocks the next step
    if config.conductance_unit == "uS":
        c_m = config.c_m_e_nf if population == "e" else config.c_m_i_nf
        units = dict(c_m=c_m, g_l=c_m / tau_m)
    else:
        units = {}
    return CobaParams(
        tau_m_ms=tau_m, refractory_steps=steps, dt_ms=config.dt_ms, e_l_mv=config.e_l_mv,
        v_reset_mv=config.v_reset_mv, v_th_mv=config.v_th_mv, e_ampa_mv=config.e_ampa_mv,
        e_gaba_mv=config.e_gaba_mv, tau_ampa_ms=config.tau_ampa_ms, tau_gaba_ms=config.tau_gaba_ms,
        beta=config.beta, v_grad_dampen=config.v_grad_dampen, detach_reset=config.detach_reset,
        integrator=config.integrator, synapse_order=config.synapse_order,
        threshold_inclusive=config.threshold_inclusive, refractory_mode=config.refractory_mode,
        v_floor_mv=config.v_floor_mv, **units,
    )


def network_params(config: Config) -> NetworkParams:
    out_decay = math.exp(-config.dt_ms / config.tau_out_ms)
    return NetworkParams(
        e=cell_params(config, "e"), i=cell_params(config, "i"),
        out_decay=out_decay,
        detach_recurrent=config.detach_recurrent,
        mem_theta=config.mem_theta if config.mem_reg_weight > 0 else None,
        input_same_step=config.input_arrival == "same_step",
        lif_readout=config.readout == "lif_mem_mean",
        readout_scale=(1.0 - out_decay) / config.dt_ms,
        readout_v_th=config.readout_v_th,
        readout_beta=config.beta,
    )


def forward_weights(weights: Weights, config: Config) -> dict[str, torch.Tensor | None]:
    """The weights as the forward pass uses them: W_in split by sign with clamp (not
    relu: a zero entry keeps a gradient) into "W_in_pos" / "W_in_neg", and the
    `dale_weights` clamped >= 0 (the seed's Dale constraint; W_in_neg is then None)."""
    dale = set(config.dale_weights)
    return {
        "W_in_pos": weights["W_in"].clamp(min=0),
        "W_in_neg": None if "W_in" in dale else (-weights["W_in"]).clamp(min=0),
        "W_ei": weights["W_ei"], "W_ie": weights["W_ie"],
        "W_out": weights["W_out"].clamp(min=0) if "W_out" in dale else weights["W_out"],
    }


def initial_state(batch: int, config: Config, p: NetworkParams) -> NetworkState:
    dtype, device = config.torch_dtype, config.torch_device

    def zeros(n: int) -> torch.Tensor:
        return torch.zeros(batch, n, dtype=dtype, device=device)

    return NetworkState(
        e=coba_initial_state((batch, config.n_e), p.e, dtype, device),
        i=coba_initial_state((batch, config.n_i), p.i, dtype, device),
        x_prev=zeros(config.n_input), s_e_prev=zeros(config.n_e), s_i_prev=zeros(config.n_i),
        u=zeros(config.n_out), u_read=zeros(config.n_out),
    )


def network_step(state: NetworkState, x_t: torch.Tensor, w: dict[str, torch.Tensor | None],
                 p: NetworkParams, deliver=None) -> tuple[torch.Tensor, torch.Tensor, NetworkState]:
    """One dt of the whole network; `w` comes from `forward_weights`.

    `deliver(s_e) -> s_e'`, if given, replaces the E spikes that reach the targets
    (the readout now, I on the next step) while the returned s_e stays the emitted
    train (the drop/add-spikes analysis)."""
    s_e_pre, s_i_pre = state.s_e_prev, state.s_i_prev
    if p.detach_recurrent:
        s_e_pre, s_i_pre = s_e_pre.detach(), s_i_pre.detach()
    # spikes of step t-1 arrive now: I->E onto E, E->I onto I, and the input of
    # step t-1 (canonical) or of this step, after the decay (seed)
    x_in = x_t if p.input_same_step else state.x_prev
    ampa_x = x_in @ w["W_in_pos"]
    gaba_x = x_in @ w["W_in_neg"] if w["W_in_neg"] is not None else None
    gaba_ie = s_i_pre @ w["W_ie"]
    ampa_i = s_e_pre @ w["W_ei"]
    if p.input_same_step:
        s_e, e = coba_step(state.e, None, gaba_ie, p.e, ampa_now=ampa_x, gaba_now=gaba_x)
    else:
        gaba_e = gaba_x + gaba_ie if gaba_x is not None else gaba_ie
        s_e, e = coba_step(state.e, ampa_x, gaba_e, p.e)
    s_i, i = coba_step(state.i, ampa_i, None, p.i)
    sent = deliver(s_e) if deliver is not None else s_e
    u, u_read = readout_step(state.u, sent, w["W_out"], p)
    return s_e, s_i, NetworkState(e=e, i=i, x_prev=x_t, s_e_prev=sent, s_i_prev=s_i, u=u, u_read=u_read)


def readout_step(u: torch.Tensor, s_e: torch.Tensor, w_out: torch.Tensor,
                 p: NetworkParams) -> tuple[torch.Tensor, torch.Tensor]:
    """The readout driven by this step's E spikes (no delay); returns (u carried, u read).

    leaky:         u <- u exp(-dt/tau_out) + s_E W_out; read u
    lif_mem_mean:  u <- beta u + (1 - beta)/dt (s_E W_out), beta = exp(-dt/tau_out);
                   read u, then s = H(u - th) (inclusive, surrogate) and u <- u - th s
                   (subtract reset, kept in the graph)
    """
    if not p.lif_readout:
        u = u * p.out_decay + s_e @ w_out
        return u, u
    return lif_readout_step(u, s_e @ w_out, p)


def lif_readout_step(u: torch.Tensor, drive: torch.Tensor, p: NetworkParams) -> tuple[torch.Tensor, torch.Tensor]:
    """readout_step's output LIF from its drive s_E W_out [B, n_out] (the fast backend
    computes the drive in its time loop)."""
    u = p.out_decay * u + p.readout_scale * drive
    s_out = SpikeFunction.apply(u - p.readout_v_th, p.readout_beta, True)
    return u - s_out * p.readout_v_th, u


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
    w = forward_weights(weights, config)
    state = initial_state(batch, config, p)
    s_e, s_i, v_e, v_i = [], [], [], []
    u_sum = torch.zeros_like(state.u)
    u_excess = torch.zeros(batch, dtype=x.dtype, device=x.device)
    for x_t in x.unbind(0):
        spikes_e, spikes_i, state = network_step(state, x_t, w, p)
        s_e.append(spikes_e)
        s_i.append(spikes_i)
        u_sum = u_sum + state.u_read
        if p.mem_theta is not None:
            u_excess = u_excess + (state.u_read - p.mem_theta).clamp(min=0).pow(2).sum(-1)
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
