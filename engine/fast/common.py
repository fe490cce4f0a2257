"""What every loop family of the fast backend shares: constants, input events, checkpoints.

Layouts (engine.fast's docstring): a state row holds E then I cells (N = n_e + n_i),
a conductance row [AMPA of E | AMPA of I | GABA of E] (M = N + n_e). The chunk
length set here bounds every loop family's working memory and sets the input
events' chunk bounds, which the families share.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from engine.config import Config, ConfigError
from engine.encoding import InputEvents

# Elements of one [K, B, M] chunk buffer: bounds the backward's working memory.
_CHUNK_ELEMENTS = 4_000_000
_MAX_CHUNK_STEPS = 200


class FastParams(NamedTuple):
    """Constants of one simulation; per-column tensors cover E then I."""

    n_e: int
    n_i: int
    steps: int
    chunk: int
    e_l: float
    v_reset: float
    v_th: float
    e_ampa: float
    e_gaba: float
    beta: float
    v_grad_dampen: float | tuple[float, ...]  # one per run for packed runs (Triton loop only)
    detach_reset: bool
    detach_recurrent: bool
    c: torch.Tensor  # [N] dt / tau_m
    decay: torch.Tensor  # [M] conductance decay per step
    hold_from: torch.Tensor  # [T, N] long: held at t iff last spike >= hold_from[t]
    readout: torch.Tensor  # [T] weight c_t of step t's E spikes in sum_t u_t

    @property
    def n(self) -> int:
        return self.n_e + self.n_i

    @property
    def m(self) -> int:
        return self.n + self.n_e


class ArrivalEvents(NamedTuple):
    """Input spikes as sorted events, with each chunk's slice [bounds[c], bounds[c+1])."""

    step: torch.Tensor  # arrival step (spike step + 1)
    sample: torch.Tensor
    channel: torch.Tensor
    bounds: list[int]


class Checkpoint(NamedTuple):
    v: torch.Tensor  # [B, N] after the previous step
    g: torch.Tensor  # [B, M]
    last_spike: torch.Tensor  # [B, N] long, step of the last spike (or far in the past)


class Recurrence(NamedTuple):
    """Recurrent weights and which arrivals to compute (W_ei == 0 skips E->I)."""

    w_ei: torch.Tensor
    w_ie: torch.Tensor
    use_ei: bool
    use_ie: bool


def fast_params(config: Config, steps: int, batch: int, device, dtype,
                chunk_elements: int | None = None) -> FastParams:
    """The constants of one simulation; chunks of at most `chunk_elements` [K, B, M]
    elements (default _CHUNK_ELEMENTS) and _MAX_CHUNK_STEPS steps."""
    n_e, n_i = config.n_e, config.n_i
    dt = config.dt_ms

    def per_column(e_value, i_value, kind):
        return torch.tensor([e_value] * n_e + [i_value] * n_i, dtype=kind, device=device)

    refractory = per_column(int(round(config.t_ref_e_ms / dt)), int(round(config.t_ref_i_ms / dt)), torch.long)
    t = torch.arange(steps, device=device, dtype=torch.long)
    decay = [math.exp(-dt / config.tau_ampa_ms)] * (n_e + n_i) + [math.exp(-dt / config.tau_gaba_ms)] * n_e
    out_decay = math.exp(-dt / config.tau_out_ms)
    remaining = torch.arange(steps, 0, -1, dtype=torch.float64)  # T - t
    readout = (1.0 - out_decay ** remaining) / (1.0 - out_decay)
    m = 2 * n_e + n_i
    chunk = max(1, min(steps, _MAX_CHUNK_STEPS, (chunk_elements or _CHUNK_ELEMENTS) // max(1, batch * m)))
    return FastParams(
        n_e=n_e, n_i=n_i, steps=steps, chunk=chunk, e_l=config.e_l_mv, v_reset=config.v_reset_mv,
        v_th=config.v_th_mv, e_ampa=config.e_ampa_mv, e_gaba=config.e_gaba_mv, beta=config.beta,
        v_grad_dampen=float(config.v_grad_dampen), detach_reset=config.detach_reset,
        detach_recurrent=config.detach_recurrent,
        c=per_column(dt / config.tau_m_e_ms, dt / config.tau_m_i_ms, dtype),
        decay=torch.tensor(decay, dtype=dtype, device=device),
        hold_from=t[:, None] - refractory[None, :],
        readout=readout.to(device=device, dtype=dtype),
    )


def input_events(spikes: torch.Tensor | InputEvents, p: FastParams) -> ArrivalEvents:
    """Arrivals of input spikes (a 0/1 [T, B, n_input] tensor, or events sorted as its
    nonzero() would be) one step later; the last step's spikes never arrive."""
    if isinstance(spikes, InputEvents):
        step, sample, channel = spikes.step, spikes.sample, spikes.channel
    else:
        step, sample, channel = (spikes if spikes.dtype == torch.bool else spikes != 0).nonzero(as_tuple=True)
    keep = step < p.steps - 1
    step, sample, channel = step[keep] + 1, sample[keep], channel[keep]
    return ArrivalEvents(step, sample, channel, chunk_bounds(step, p))


def chunk_bounds(step: torch.Tensor, p: FastParams) -> list[int]:
    """Where each chunk's events start in step-sorted events, and the end."""
    starts = torch.arange(0, p.steps, p.chunk, device=step.device)
    ends = torch.cat([starts, torch.tensor([p.steps], device=step.device)])
    return torch.searchsorted(step, ends).tolist()


def split_input_weights(w_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """clamp(min=0) of W and of -W; the negative part is None when it is all zero."""
    w_neg = (-w_in).clamp(min=0)
    return w_in.clamp(min=0), (w_neg if bool((w_in < 0).any()) else None)


def input_chunk(w_pos, w_neg, ev: ArrivalEvents, index: int, t0: int, length: int,
                batch: int, p: FastParams) -> torch.Tensor:
    """Arrivals of input spikes at steps t0 .. t0+length-1 as [length, B, M]."""
    x = torch.zeros(length, batch, p.m, dtype=w_pos.dtype, device=w_pos.device)
    lo, hi = ev.bounds[index], ev.bounds[index + 1]
    if hi > lo:
        rows = (ev.step[lo:hi] - t0) * batch + ev.sample[lo:hi]
        channel = ev.channel[lo:hi]
        flat = x.view(length * batch, p.m)
        # index_add_ into a contiguous buffer is several times faster than into a column slice
        flat[:, :p.n_e].copy_(sum_rows(w_pos, channel, rows, length * batch))
        if w_neg is not None:
            flat[:, p.n:].copy_(sum_rows(w_neg, channel, rows, length * batch))
    return x


def sum_rows(weight: torch.Tensor, cells: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """[n_rows, weight columns]: row r holds the sum of weight[cells[j]] over j with rows[j] == r."""
    out = torch.zeros(n_rows, weight.shape[1], dtype=weight.dtype, device=weight.device)
    return out.index_add_(0, rows, weight.index_select(0, cells))


def initial_checkpoint(batch: int, p: FastParams, dtype, device) -> Checkpoint:
    return Checkpoint(
        v=torch.full((batch, p.n), p.e_l, dtype=dtype, device=device),
        g=torch.zeros(batch, p.m, dtype=dtype, device=device),
        last_spike=torch.full((batch, p.n), -(1 << 40), dtype=torch.long, device=device),
    )


def filtered_count(s_e: torch.Tensor, p: FastParams) -> torch.Tensor:
    """sum_t c_t s_e[t]: the readout's time integral per E cell, [B, n_e]."""
    steps, batch, n_e = s_e.shape
    return (p.readout @ s_e.reshape(steps, batch * n_e)).view(batch, n_e)


class OutputGrads(NamedTuple):
    """dL/d of FusedNetwork's differentiable outputs; None where the loss does not reach."""

    s_e: torch.Tensor | None  # [T, B, n_e]
    s_i: torch.Tensor | None
    count_e: torch.Tensor | None  # [B, n_e]
    count_i: torch.Tensor | None
    filtered: torch.Tensor | None  # [B, n_e], of sum_t c_t s_e[t]


def spike_outputs(spikes: torch.Tensor, p: FastParams, dtype, trains: bool):
    """Float spike trains (or None, None), counts E and I, filtered E count, from bool spikes."""
    s_e = spikes[:, :, :p.n_e].to(dtype)
    s_i = spikes[:, :, p.n_e:].to(dtype)
    counts = (s_e.sum(0), s_i.sum(0))
    return ((s_e, s_i) if trains else (None, None)), counts, filtered_count(s_e, p)


def recurrence(w_ei: torch.Tensor, w_ie: torch.Tensor) -> Recurrence:
    # an all-zero W_ei (COBA) adds exact zeros: skip its arrivals and adjoint products
    return Recurrence(w_ei, w_ie, bool(w_ei.any()), bool(w_ie.any()))


def check_supported(config: Config) -> None:
    if config.mem_reg_weight > 0:
        raise ConfigError("backend", "'fast' does not compute the readout-membrane penalty "
                          "(u_excess, mem_reg_weight > 0); use backend 'reference'")
