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

from engine.cells import CobaParams
from engine.config import FAST_TRITON_SUPPORTED, Config, ConfigError
from engine.encoding import InputEvents
from engine.reference import cell_params

# Elements of one [K, B, M] chunk buffer: bounds the backward's working memory.
_CHUNK_ELEMENTS = 4_000_000
_MAX_CHUNK_STEPS = 200


class Variant(NamedTuple):
    """The seed recipe's options (engine.config VARIANT_CHOICES), canonical by default.

    Hold and countdown refractory need no flag: a countdown of R is a hold of R - 1
    steps (engine.cells.coba_step), gradient included, so FastParams' hold_from
    carries it. µS units need none either: they set the per-column c = dt / C and
    g_l that every loop reads.
    """

    exp_euler: bool = False  # exponential Euler with g held over the step (else forward Euler)
    kick_first: bool = False  # synapses add this step's arrivals, then decay (else decay, then add)
    same_step: bool = False  # input spikes act at their own step, after the decay (else one step later)
    inclusive: bool = False  # spike iff V >= V_th (else V > V_th)
    v_floor: float | None = None  # V clamped below after the membrane update
    dale_in: bool = False  # W_in clamped >= 0: no GABA input part
    lif_readout: bool = False  # output LIF readout: the Function returns r_t = s_e[t] @ W_out

    @classmethod
    def of(cls, config: Config) -> "Variant":
        return cls(exp_euler=config.integrator == "exponential_euler",
                   kick_first=config.synapse_order == "add_then_decay",
                   same_step=config.input_arrival == "same_step", inclusive=bool(config.threshold_inclusive),
                   v_floor=config.v_floor_mv, dale_in="W_in" in config.dale_weights,
                   lif_readout=config.readout == "lif_mem_mean")


CANONICAL = Variant()


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
    c: torch.Tensor  # [N] dt / C (C = tau_m in leak units)
    decay: torch.Tensor  # [M] conductance decay per step
    hold_from: torch.Tensor  # [T, N] long: held at t iff last spike >= hold_from[t]
    readout: torch.Tensor  # [T] weight c_t of step t's E spikes in sum_t u_t
    g_l: torch.Tensor | None = None  # [N] leak conductance in µS; None in leak units (1)
    capacitance: torch.Tensor | None = None  # [N] C (tau_m in leak units)
    variant: Variant = CANONICAL
    cells: tuple[CobaParams, CobaParams] | None = None  # E's and I's constants as Python floats

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

    cells = cell_params(config, "e"), cell_params(config, "i")
    refractory = per_column(*(held_steps(c) for c in cells), torch.long)
    t = torch.arange(steps, device=device, dtype=torch.long)
    decay = [math.exp(-dt / config.tau_ampa_ms)] * (n_e + n_i) + [math.exp(-dt / config.tau_gaba_ms)] * n_e
    out_decay = math.exp(-dt / config.tau_out_ms)
    remaining = torch.arange(steps, 0, -1, dtype=torch.float64)  # T - t
    readout = (1.0 - out_decay ** remaining) / (1.0 - out_decay)
    chunk = chunk_steps(steps, batch, 2 * n_e + n_i, chunk_elements)
    return FastParams(
        n_e=n_e, n_i=n_i, steps=steps, chunk=chunk, e_l=config.e_l_mv, v_reset=config.v_reset_mv,
        v_th=config.v_th_mv, e_ampa=config.e_ampa_mv, e_gaba=config.e_gaba_mv, beta=config.beta,
        v_grad_dampen=float(config.v_grad_dampen), detach_reset=config.detach_reset,
        detach_recurrent=config.detach_recurrent,
        c=per_column(*(dt / c.capacitance for c in cells), dtype),
        decay=torch.tensor(decay, dtype=dtype, device=device),
        hold_from=t[:, None] - refractory[None, :],
        readout=readout.to(device=device, dtype=dtype),
        g_l=per_column(*(c.g_l for c in cells), dtype) if config.conductance_unit == "uS" else None,
        capacitance=per_column(*(c.capacitance for c in cells), dtype),
        variant=Variant.of(config), cells=cells,
    )


def chunk_steps(steps: int, batch: int, m: int, chunk_elements: int | None = None) -> int:
    """Steps per chunk: at most `chunk_elements` (default _CHUNK_ELEMENTS) [K, B, M]
    elements and _MAX_CHUNK_STEPS steps (jobs.limits sizes memory with it)."""
    return max(1, min(steps, _MAX_CHUNK_STEPS, (chunk_elements or _CHUNK_ELEMENTS) // max(1, batch * m)))


def held_steps(cell: CobaParams) -> int:
    """Steps a cell is held after a spike: a countdown of R blocks R - 1 (engine.cells.coba_step)."""
    return cell.refractory_steps - 1 if cell.refractory_mode == "countdown" else cell.refractory_steps


def input_events(spikes: torch.Tensor | InputEvents, p: FastParams) -> ArrivalEvents:
    """Arrivals of input spikes (a 0/1 [T, B, n_input] tensor, or events sorted as its
    nonzero() would be) one step later, the last step's never; with same-step input
    (the seed recipe) at their own step."""
    if isinstance(spikes, InputEvents):
        step, sample, channel = spikes.step, spikes.sample, spikes.channel
    else:
        step, sample, channel = (spikes if spikes.dtype == torch.bool else spikes != 0).nonzero(as_tuple=True)
    if not p.variant.same_step:
        keep = step < p.steps - 1
        step, sample, channel = step[keep] + 1, sample[keep], channel[keep]
    return ArrivalEvents(step, sample, channel, chunk_bounds(step, p))


def chunk_bounds(step: torch.Tensor, p: FastParams) -> list[int]:
    """Where each chunk's events start in step-sorted events, and the end."""
    starts = torch.arange(0, p.steps, p.chunk, device=step.device)
    ends = torch.cat([starts, torch.tensor([p.steps], device=step.device)])
    return torch.searchsorted(step, ends).tolist()


def split_input_weights(w_in: torch.Tensor, dale: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """clamp(min=0) of W and of -W; the negative part is None when it is all zero,
    and under Dale's constraint on W_in (`dale`: W_in is clamped >= 0)."""
    if dale:
        return w_in.clamp(min=0), None
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
    drive: torch.Tensor | None = None  # [T, B, n_out], of the output LIF's drive s_e[t] @ W_out


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


def triton_runs(config: Config) -> bool:
    """Whether the Triton kernels run `config`'s model (engine.config.FAST_TRITON_SUPPORTED)."""
    return all(getattr(config, name) in supported for name, supported in FAST_TRITON_SUPPORTED.items())


def check_loop_runs(config: Config, loop: str) -> None:
    """Refuse a seed-recipe option that `loop` does not run (never run the canonical
    model in its place): the compiled CPU loop and the torch-op loop run them all,
    the Triton kernels what engine.config.FAST_TRITON_SUPPORTED lists."""
    if loop != "triton":
        return
    for name, supported in FAST_TRITON_SUPPORTED.items():
        value = getattr(config, name)
        if value not in supported:
            raise ConfigError(name, f"{value!r} is not run by the fast backend's Triton kernels yet "
                                    f"(they run {list(supported)}); a single run on a GPU takes the torch-op loop")
