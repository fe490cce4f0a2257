"""The LIF network and its parameter-matched rate twin, as pure step functions.

Both share the static weights `omega = G * omega0`, the encoders `eta = Q *
eta0`, the bias, the double-exponential filter and the seed (FORCE.md). A batch
dimension B runs many (Q, G) points at once: every state tensor is (B, N), and
`g`, `q` are (B,) tensors, so one omega0 (N, N) serves the whole batch.

Current into neuron i:  I = omega r_syn + eta z + eta_in u + bias  (mV)
LIF:   tau_m dv/dt = I - v (off during tau_ref after a spike); spike at v_peak, reset.
Rate:  R = 1 / (tau_ref + tau_m ln((I - v_reset) / (I - v_peak))) for I > v_peak, else 0.
Filter (both, x = spikes or R dt):  r <- r e^{-dt/tr} + hr dt;  hr <- hr e^{-dt/td} + x / (tr td).

The synaptic current is the same double-exponential filter applied to
omega x, so it equals omega r exactly. The LIF step keeps it as its own
state, driven only by the columns of spiking neurons (about 2 per step at N
2000: cheap); the rate twin has no spikes, so it pays the dense omega r.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from engine.force.config import ForceConfig
from engine.seeding import derive_seed


class ForceWeights(NamedTuple):
    """Unscaled static weights and encoders, drawn once from the seed."""
    omega0: torch.Tensor  # (N, N): N(0,1) Bernoulli(p) / (p sqrt N), rows' non-zeros sum to 0
    eta0: torch.Tensor  # (N, k): U[-1, 1] or U[0, 1] - 0.5
    eta_in0: torch.Tensor | None  # (N, m) input encoder, same law


class ForceParams(NamedTuple):
    """Constants of one batch (seconds, mV); g and q are per batch element."""
    g: torch.Tensor  # (B,)
    q: torch.Tensor  # (B,)
    input_gain: float
    dt: float
    tau_m: float
    tau_ref: float
    v_reset: float
    v_peak: float
    bias: float
    decay_r: float  # e^{-dt/tr}
    decay_d: float  # e^{-dt/td}
    jump: float  # 1 / (tr td)
    jump_g: torch.Tensor  # (B,) g / (tr td): a spike's jump into the current filter
    ref_steps: int
    # GPU: the spikes' input as one dense product s @ omega0^T, with no host sync
    # (picking the spiking columns needs their count on the host every step)
    dense_spikes: bool = False


class LIFState(NamedTuple):
    v: torch.Tensor  # (B, N) mV
    ref: torch.Tensor  # (B, N) refractory steps left
    ipsc: torch.Tensor  # (B, N) synaptic current (filtered omega s)
    h: torch.Tensor
    r: torch.Tensor  # (B, N) filtered spike trains, Hz
    hr: torch.Tensor


class RateState(NamedTuple):
    r: torch.Tensor  # (B, N) filtered rates, Hz
    hr: torch.Tensor


def make_weights(config: ForceConfig, k: int, m: int) -> ForceWeights:
    """omega0 and the encoders for (seed, N, p): the same for every (Q, G) and both twins."""
    n = config.n
    rng = np.random.default_rng(derive_seed(config.seed, "force-weights", n))
    omega = rng.standard_normal((n, n)) * (rng.random((n, n)) < config.p) / (config.p * math.sqrt(n))
    nonzero = omega != 0
    counts = np.maximum(nonzero.sum(axis=1, keepdims=True), 1)
    omega = np.where(nonzero, omega - omega.sum(axis=1, keepdims=True) / counts, 0.0)

    def encoder(columns: int) -> np.ndarray:
        u = rng.random((n, columns))
        return 2.0 * u - 1.0 if config.encoder == "symmetric" else u - 0.5

    eta, eta_in = encoder(k), (encoder(m) if m else None)
    as_tensor = lambda a: torch.as_tensor(a, dtype=config.torch_dtype, device=config.device)
    return ForceWeights(as_tensor(omega), as_tensor(eta), None if eta_in is None else as_tensor(eta_in))


def make_params(config: ForceConfig, g, q) -> ForceParams:
    vector = lambda x: torch.as_tensor(x, dtype=config.torch_dtype, device=config.device).reshape(-1)
    dt, tr, td = config.dt_s, config.tau_r_ms * 1e-3, config.tau_d_ms * 1e-3
    return ForceParams(g=vector(g), q=vector(q), input_gain=config.input_gain, dt=dt,
                       tau_m=config.tau_m_ms * 1e-3, tau_ref=config.tau_ref_ms * 1e-3,
                       v_reset=config.v_reset_mv, v_peak=config.v_peak_mv, bias=config.bias_mv,
                       decay_r=math.exp(-dt / tr), decay_d=math.exp(-dt / td), jump=1.0 / (tr * td), jump_g=vector(g) / (tr * td),
                       ref_steps=int(round(config.tau_ref_ms / config.dt_ms)),
                       dense_spikes=config.device.startswith("cuda"))


def lif_init(config: ForceConfig, batch: int, generator: torch.Generator) -> LIFState:
    """Every batch row starts from the same draw: a point's initial state depends on
    (seed, N) alone, like omega0, so a point alone and in any batch are the same network."""
    low, high = config.v_init_low_mv, config.v_init_high_mv
    v = low + (high - low) * torch.rand((1, config.n), generator=generator, dtype=config.torch_dtype)
    shape = (batch, config.n)
    zeros = lambda: torch.zeros(shape, dtype=config.torch_dtype, device=config.device)
    return LIFState(v.expand(shape).to(config.device, copy=True).contiguous(), zeros(), zeros(), zeros(), zeros(),
                    zeros())


def rate_init(config: ForceConfig, batch: int, generator: torch.Generator) -> RateState:
    # All-silent is a fixed point of the rate twin (the bias sits at threshold), so it starts active;
    # one draw for every batch row, as lif_init.
    r = config.rate_init_hz * torch.rand((1, config.n), generator=generator, dtype=config.torch_dtype)
    r = r.expand(batch, config.n).to(config.device, copy=True).contiguous()
    return RateState(r, torch.zeros_like(r))


def encoded(z: torch.Tensor, u: torch.Tensor | None, w: ForceWeights, p: ForceParams) -> torch.Tensor:
    """eta z + eta_in u + bias for a batch: z (B, k), u (m,) or None -> (B, N)."""
    drive = (z @ w.eta0.T) * p.q[:, None] + p.bias
    if u is not None:
        drive = drive + p.input_gain * (w.eta_in0 @ u)
    return drive


def lif_step(state: LIFState, drive: torch.Tensor, w: ForceWeights, p: ForceParams) -> tuple[LIFState, torch.Tensor]:
    """One dt of the LIF network given `drive` = eta z + eta_in u + bias (B, N); returns (state, spikes)."""
    v, ref, ipsc, h, r, hr = state
    # Membrane: Euler step towards the current; held at reset while refractory
    v = torch.lerp(v, ipsc + drive, p.dt / p.tau_m).masked_fill_(ref > 0, p.v_reset)
    ref = (ref - 1).clamp_(min=0)
    spikes = v >= p.v_peak
    s = spikes.to(v.dtype)
    # Filters: each rise stage integrates its decay stage's value from before this step's jump
    ipsc = torch.add(ipsc * p.decay_r, h, alpha=p.dt)
    h = h * p.decay_d
    if p.dense_spikes:  # a fixed number of kernel launches per step, whatever the batch and spikes
        h = torch.addcmul(h, s @ w.omega0.T, p.jump_g[:, None])
    else:
        fired = spikes.any(dim=0).nonzero().squeeze(1)
        if fired.numel():  # only the spiking columns of omega0 are summed
            h = h + (s[:, fired] @ w.omega0[:, fired].T) * p.jump_g[:, None]
    r = torch.add(r * p.decay_r, hr, alpha=p.dt)
    hr = torch.add(hr * p.decay_d, s, alpha=p.jump)
    # Reset and refractoriness of the neurons that spiked
    v = v.masked_fill_(spikes, p.v_reset)
    ref = ref.masked_fill_(spikes, p.ref_steps)
    return LIFState(v, ref, ipsc, h, r, hr), s


def f_i_rate(current: torch.Tensor, p: ForceParams) -> torch.Tensor:
    """The LIF f-I curve (Hz), 1 / (tau_ref + tau_m ln(1 + (v_peak - v_reset) / (I - v_peak))):
    at or below v_peak the log is infinite and the rate exactly 0."""
    above = (current - p.v_peak).clamp_(min=0.0)
    log_term = torch.log1p((p.v_peak - p.v_reset) / above)
    return (log_term.mul_(p.tau_m).add_(p.tau_ref)).reciprocal_()


def rate_step(state: RateState, drive: torch.Tensor, w: ForceWeights, p: ForceParams) -> tuple[RateState, torch.Tensor]:
    """One dt of the rate twin given `drive` (B, N); returns (state, instantaneous rates)."""
    r, hr = state
    current = torch.addcmul(drive, r @ w.omega0.T, p.g[:, None])
    rate = f_i_rate(current, p)
    r = torch.add(r * p.decay_r, hr, alpha=p.dt)
    hr = torch.add(hr * p.decay_d, rate, alpha=p.jump * p.dt)
    return RateState(r, hr), rate
