"""The fast backend's time loops on CPU, compiled (engine.fast.cpu_kernels, numba).

engine.fast.torch_ops's loop costs about 25 small tensor ops per step forward and 45
backward, each a few tens of microseconds however little it computes: on CPU it is
bound by per-op overhead. Here the forward (which also writes the spike counts and,
when asked, the float spike trains), the backward's recomputation of each chunk,
each reverse step's elementwise adjoint and W_in's gradient (added in the reverse
step, while each new adjoint row is in cache) are compiled loops, and so are the
adjoint's two recurrent products per step while W_ei / W_ie are sparse (the default
masks): a chunk's reverse steps are one compiled call. Dense ones go to BLAS
(PresynapticProduct) between compiled steps.
Samples are independent, so sample ranges run on `torch.get_num_threads()`
threads: the forward's per loop, the backward's whole.

Saved for backward: only the state at each chunk start (ChunkStarts; the cells
that spiked on the step before are those of age 1); the recomputation reproduces a
chunk's spikes where W_ei's / W_ie's gradients need them. Not keeping bool spikes
[T, B, N] spares 128 MB of fresh memory per training step at batch 64, whose page
faults alone cost about 40 ms. The chunk length is engine.fast.common's, so the input
events' chunk bounds and the W_ei / W_ie gradients' accumulation
(engine.fast.adjoint.WeightGrads) are shared with the torch-op loop.
"""

from __future__ import annotations

import math
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch

from engine.fast import cpu_kernels as kernels
from engine.fast.adjoint import WeightGrads, arrival_scales, spike_events
from engine.fast.common import (ArrivalEvents, FastParams, OutputGrads, Recurrence, chunk_bounds,
                                recurrence, split_input_weights)

_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


class SampleEvents(NamedTuple):
    """Input arrivals ordered by (sample, step, channel); sample b's are [ptr[b], ptr[b+1])."""

    ptr: np.ndarray
    step: np.ndarray
    channel: np.ndarray


class Loop(NamedTuple):
    """What every compiled loop takes after its sample range: events, weights, constants."""

    n_e: int
    ptr: np.ndarray
    step: np.ndarray
    channel: np.ndarray
    w_pos: np.ndarray
    w_neg: np.ndarray  # empty when W_in has no negative entry
    w_ei: np.ndarray
    w_ie: np.ndarray
    use_ei: bool
    use_ie: bool
    has_neg: bool
    const: np.ndarray  # kernels.E_L ... kernels.KICK_FIRST, in the state's dtype
    refractory: np.ndarray  # steps held, E and I
    exp_euler: bool | None  # True, or None for forward Euler (kernels._step: None compiles the branch out)
    same_step: bool | None  # True, or None for input arriving one step later

    @classmethod
    def build(cls, w_in: torch.Tensor, rec: Recurrence, events: SampleEvents, p: FastParams) -> "Loop":
        w_pos, w_neg = split_input_weights(w_in.detach(), p.variant.dale_in)
        return cls(p.n_e, *events, _np(w_pos), _np(w_neg if w_neg is not None else w_pos[:0]),
                   _np(rec.w_ei), _np(rec.w_ie), rec.use_ei, rec.use_ie, w_neg is not None,
                   kernel_constants(p, w_in.dtype), _np((-p.hold_from[0][[0, p.n_e]]).to(torch.int32)),
                   True if p.variant.exp_euler else None, True if p.variant.same_step else None)


def kernel_constants(p: FastParams, dtype: torch.dtype) -> np.ndarray:
    """engine.fast.cpu_kernels' `const`, in `dtype`."""
    e, i, gaba = 0, p.n_e, p.n  # first column of E, of I, of the GABA conductances
    # the membrane update's gradient is k_dv times the adjoint's factors: dt / C / D
    # for forward Euler, whose factors leave dt / C out; 1 / D for exponential Euler
    k_dv = (torch.ones_like(p.c) if p.variant.exp_euler else p.c) / p.v_grad_dampen
    cell_e, cell_i = p.cells
    th = torch.tensor(p.v_th, dtype=dtype)
    spike_bound = th if p.variant.inclusive else torch.nextafter(th, torch.tensor(math.inf, dtype=dtype))
    constants = [
        p.e_l, p.v_reset, p.v_th, p.e_ampa, p.e_gaba, p.beta,
        *torch.stack([p.c[e], p.c[i], p.decay[e], p.decay[gaba], k_dv[e], k_dv[i]]).tolist(),
        # as the reference forms them: Python floats (g_L E_L too), rounded once to dtype
        cell_e.g_l, cell_i.g_l, cell_e.g_l * cell_e.e_l_mv, cell_i.g_l * cell_i.e_l_mv,
        cell_e.capacitance, cell_i.capacitance, -cell_e.dt_ms,
        -math.inf if p.variant.v_floor is None else p.variant.v_floor,
    ]
    kick_first = 1.0 if p.variant.kick_first else 0.0
    return _np(torch.cat([torch.tensor(constants, dtype=dtype), spike_bound[None],
                          torch.tensor([kick_first], dtype=dtype)]))


def sample_events(ev: ArrivalEvents, batch: int) -> SampleEvents:
    """engine.fast.common's (step, sample, channel)-sorted events, re-sorted by sample (stable)."""
    order = torch.sort(ev.sample, stable=True).indices
    sample = ev.sample[order]
    ptr = torch.searchsorted(sample, torch.arange(batch + 1, device=sample.device))
    return SampleEvents(_np(ptr), _np(ev.step[order]), _np(ev.channel[order]))


class ChunkStarts(NamedTuple):
    """The compiled loops' state at each chunk start, [C, B, ...]: all that backward keeps."""

    v: torch.Tensor  # [C, B, N]
    g: torch.Tensor  # [C, B, M]
    age: torch.Tensor  # [C, B, N] int32, steps since the last spike


def run_forward(w_in, rec: Recurrence, ev: ArrivalEvents, batch: int, p: FastParams, trains: bool,
                record_voltage: bool, w_out: torch.Tensor | None = None):
    """Float trains (s_e, s_i), or (None, None) unless `trains`; spike counts
    (E [B, n_e], I [B, n_i]); the filtered E count [B, n_e]; the state saved for
    backward; voltages [T, B, N] or None; with the output-LIF readout
    (p.variant.lif_readout) its drive s_e[t] @ w_out [T, B, n_out], else None."""
    dtype = w_in.dtype
    events = sample_events(ev, batch)
    loop = Loop.build(w_in, rec, events, p)
    n_chunks = math.ceil(p.steps / p.chunk)
    count_e = torch.zeros(batch, p.n_e, dtype=dtype)
    count_i = torch.zeros(batch, p.n_i, dtype=dtype)
    filtered = torch.zeros(batch, p.n_e, dtype=dtype)
    starts = ChunkStarts(v=torch.empty(n_chunks, batch, p.n, dtype=dtype),
                         g=torch.empty(n_chunks, batch, p.m, dtype=dtype),
                         age=torch.empty(n_chunks, batch, p.n, dtype=torch.int32))
    # the trains are written by the loops, on their threads: filling fresh memory
    # of this size is a cost of its own (page faults), worth sharing
    t_trains, t_voltages = (p.steps if trains else 0), (p.steps if record_voltage else 0)
    s_e = torch.empty(t_trains, batch, p.n_e, dtype=dtype)
    s_i = torch.empty(t_trains, batch, p.n_i, dtype=dtype)
    voltages = torch.empty(t_voltages, batch, p.n, dtype=dtype)
    lif = p.variant.lif_readout
    w_out = w_out.detach().contiguous() if lif else torch.zeros(p.n_e, 0, dtype=dtype)
    drive = torch.zeros(p.steps if lif else 0, batch, w_out.shape[1], dtype=dtype)
    no_population = torch.empty(0, batch, 2, dtype=torch.int32)
    _over_samples(kernels.forward_samples, batch, *loop, p.chunk, _np(p.readout), _np(count_e),
                  _np(count_i), _np(filtered), _np(s_e), _np(s_i), *(_np(s) for s in starts), _np(voltages),
                  _np(w_out), _np(drive), _np(no_population))
    return ((s_e, s_i) if trains else (None, None), (count_e, count_i),
            filtered, (starts, loop), voltages if record_voltage else None, drive if lif else None)


class Summary(NamedTuple):
    """An inference without its [T, B, n] spike trains (run_summary)."""

    count_e: torch.Tensor  # [B, n_e]
    count_i: torch.Tensor  # [B, n_i]
    filtered: torch.Tensor  # [B, n_e]: sum_t c_t s_e[t], the linear readout's input
    drive: torch.Tensor | None  # [T, B, n_out]: the output LIF's drive s_e[t] @ W_out; None (linear readout)
    population: torch.Tensor  # [T, B, 2] int32: E and I cells that spiked at each step
    s_e: torch.Tensor  # [T, K, n_e]: the float spike trains of the first K samples only
    s_i: torch.Tensor  # [T, K, n_i]


def run_summary(w_in, rec: Recurrence, ev: ArrivalEvents, batch: int, p: FastParams,
                w_out: torch.Tensor | None = None, trains_of: int = 1, threads: int = 1) -> Summary:
    """run_forward's inference outputs for a caller that needs population rates and
    a few samples' spikes, not every train: the spikes are the same loop's.

    A what-if at the canonical size (17 samples x 2000 steps x 1000 cells) keeps
    136 MB of float trains only to sum them over cells and read one sample's
    spikes; the loop counts them per step instead and writes the trains of the
    first `trains_of` samples. The samples run on `threads` threads in ranges of
    about two samples, taken in turn: a thread that lost its core for a while
    (a loaded machine, a browser drawing) is not left holding half the batch."""
    dtype = w_in.dtype
    loop = Loop.build(w_in, rec, sample_events(ev, batch), p)
    lif = p.variant.lif_readout
    w_out = w_out.detach().contiguous() if lif else torch.zeros(p.n_e, 0, dtype=dtype)
    kept = min(trains_of, batch)
    out = Summary(count_e=torch.zeros(batch, p.n_e, dtype=dtype), count_i=torch.zeros(batch, p.n_i, dtype=dtype),
                  filtered=torch.zeros(batch, p.n_e, dtype=dtype),
                  drive=torch.zeros(p.steps if lif else 0, batch, w_out.shape[1], dtype=dtype),
                  population=torch.empty(p.steps, batch, 2, dtype=torch.int32),
                  s_e=torch.empty(p.steps if kept else 0, kept, p.n_e, dtype=dtype),
                  s_i=torch.empty(p.steps if kept else 0, kept, p.n_i, dtype=dtype))
    n_chunks = math.ceil(p.steps / p.chunk)
    starts = (torch.empty(n_chunks, batch, p.n, dtype=dtype), torch.empty(n_chunks, batch, p.m, dtype=dtype),
              torch.empty(n_chunks, batch, p.n, dtype=torch.int32))  # written by the loop, unused here
    args = (*loop, p.chunk, _np(p.readout), _np(out.count_e), _np(out.count_i), _np(out.filtered), _np(out.s_e),
            _np(out.s_i), *(_np(s) for s in starts), _np(torch.empty(0, batch, p.n, dtype=dtype)),
            _np(w_out), _np(out.drive), _np(out.population))
    ranges = [(lo, min(batch, lo + 2)) for lo in range(0, batch, 2)]
    if threads <= 1 or len(ranges) == 1:
        kernels.forward_samples(0, batch, *args)
    else:
        with ThreadPoolExecutor(min(threads, len(ranges)), thread_name_prefix="spikeboard-summary") as pool:
            for future in [pool.submit(kernels.forward_samples, lo, hi, *args) for lo, hi in ranges]:
                future.result()
    return out._replace(drive=out.drive if lif else None)


class ChunkFactors(NamedTuple):
    """One chunk's adjoint factors (engine.fast.cpu_kernels.recompute_samples)."""

    v2: torch.Tensor  # [L + 1, B, N]: the voltage before the chunk, then each step's before reset
    #                   (+inf: held, -inf: clamped by the floor)
    leak: torch.Tensor  # [L, B, N]: g_L + g_a + g_g (forward Euler), f = 1 - exp(-dt g_tot / C) (exponential)
    f_per_g: torch.Tensor | None  # [L, B, N] exponential Euler's f / g_tot, else None
    v_inf: torch.Tensor | None  # [L, B, N] exponential Euler's V_inf, else None

    @classmethod
    def empty(cls, length: int, batch: int, p: FastParams, dtype) -> "ChunkFactors":
        def rows(extra=0):
            return torch.empty(length + extra, batch, p.n, dtype=dtype)

        return cls(rows(1), rows(), *((rows(), rows()) if p.variant.exp_euler else (None, None)))

    def head(self, length: int) -> "ChunkFactors":
        return ChunkFactors(self.v2[:length + 1], *(None if f is None else f[:length] for f in self[1:]))


def network_backward(w_in, w_ei, w_ie, saved, ev: ArrivalEvents, p: FastParams, out_grads: OutputGrads, need,
                     w_out: torch.Tensor | None = None):
    """Gradients (W_in, W_ei, W_ie, W_out), None where not needed: engine.fast.adjoint's math.

    A batch's weight gradient is the sum of its samples', and the adjoint of one
    sample never looks at another's. So each of `torch.get_num_threads()` threads
    runs the whole backward of one sample range, its recurrent products included
    (one intra-op thread each), with no hand-off per step; the sums are added last.
    """
    batch = saved[0].v.shape[1]
    ranges = _sample_ranges(batch)
    rec = recurrence(w_ei, w_ie)
    # the presynaptic products' operands, built once for all ranges (None: no product);
    # a kicked-then-decayed arrival's gradient is the decay times its conductance's
    scale_ei, scale_ie = arrival_scales(p)[2:]
    operands = (product_operand(w_ei * scale_ei) if rec.use_ei and not p.detach_recurrent else None,
                product_operand(w_ie * scale_ie) if rec.use_ie and not p.detach_recurrent else None)
    # detached: the worker threads run with autograd on (grad mode is per thread)
    w_out = w_out.detach() if p.variant.lif_readout and out_grads.drive is not None else None
    if len(ranges) == 1:
        return _backward_range(w_in, w_ei, w_ie, w_out, operands, saved, ev, p, out_grads, need, 0, batch)

    def one_range(lo, hi):
        torch.set_num_threads(1)  # this worker thread's own setting: the ranges share the cores
        return _backward_range(w_in, w_ei, w_ie, w_out, operands, saved, ev, p, out_grads, need, lo, hi)

    parts = [future.result() for future in [_pool(len(ranges)).submit(one_range, lo, hi) for lo, hi in ranges]]
    return tuple(None if grads[0] is None else sum(grads[1:], grads[0]) for grads in zip(*parts))


def _backward_range(w_in, w_ei, w_ie, w_out, operands, saved, ev: ArrivalEvents, p: FastParams,
                    out_grads: OutputGrads, need, b0: int, b1: int):
    """network_backward of samples [b0, b1)."""
    starts, loop = saved
    if (b0, b1) != (0, starts.v.shape[1]):
        starts = ChunkStarts(*(s[:, b0:b1] for s in starts))
        loop = loop._replace(ptr=loop.ptr[b0:b1 + 1])
        ev = _events_of_samples(ev, b0, b1, p)
        out_grads = OutputGrads(*(None if g is None else g[:, b0:b1] if g.dim() == 3 else g[b0:b1]
                                  for g in out_grads))
    if out_grads.drive is not None:
        out_grads = out_grads._replace(drive=out_grads.drive.contiguous())
    batch, dtype = starts.v.shape[1], w_in.dtype
    to_e, to_i = (None if w is None else PresynapticProduct.of(w, batch, dtype) for w in operands)
    dense = [(product, columns) for product, columns in ((to_e, slice(p.n_e, p.n)), (to_i, slice(p.n, p.m)))
             if product is not None and product.dense is not None]
    # in the state's dtype: a Python float would be typed float64 by numba and
    # promote the whole float32 adjoint to float64 (half the vector width)
    readout = _np(p.readout.to(dtype))
    grads = WeightGrads.zeros(w_in, w_ei, w_ie, need, p)
    np_pos, np_neg = (None if g is None else _np(g) for g in (grads.pos, grads.neg))
    # the output LIF's drive r_t = s_e[t] @ W_out: dL/ds_e[t] gets dL/dr_t @ W_out^T (a
    # chunk at a time, as a spike-train part), W_out's gradient its E spikes' dL/dr_t
    want_w_out = w_out is not None and need[3]
    grad_w_out = torch.zeros_like(w_out) if want_w_out else None
    drive_part = torch.empty(p.chunk, batch, p.n_e, dtype=dtype) if w_out is not None else None
    want_recurrent = grads.ei is not None or grads.ie is not None
    full = ChunkFactors.empty(p.chunk, batch, p, dtype)
    lam_full = torch.empty(p.chunk, batch, p.m, dtype=dtype)
    lam_v = torch.zeros(batch, p.n, dtype=dtype)
    lam_next = torch.zeros(batch, p.m, dtype=dtype)
    filtered, count_e, count_i, s_e, s_i = (None if g is None else _np(g.contiguous()) for g in
                                            (out_grads.filtered, out_grads.count_e, out_grads.count_i,
                                             out_grads.s_e, out_grads.s_i))
    products = tuple(None if product is None else product.compiled for product in (to_e, to_i))
    arrivals = tuple(None if product is None else _np(product.out) for product in (to_e, to_i))
    # the spikes arriving in a chunk, recomputed with it: W_ei's / W_ie's gradients need them
    spikes = torch.empty(p.chunk, batch, p.n, dtype=torch.bool) if want_recurrent else None
    ck = tuple(_np(s) for s in starts)
    np_lam_v, np_lam = _np(lam_v), _np(lam_full)
    for index in reversed(range(starts.v.shape[0])):
        t0 = index * p.chunk
        length = min(p.chunk, p.steps - t0)
        steps = slice(t0, t0 + length)
        np_tape = tuple(None if s is None else _np(s) for s in full.head(length))
        grad_drive = None if w_out is None else out_grads.drive[steps]
        kernels.recompute_samples(index, t0, *loop, *ck, *np_tape,
                                  None if spikes is None else _np(spikes[:length]),
                                  _np(grad_drive) if want_w_out else None, _np(grad_w_out) if want_w_out else None)
        train_e = s_e
        if w_out is not None:  # the readout's share of dL/ds_e, with the spike trains' own
            part = torch.matmul(grad_drive, w_out.t(), out=drive_part[:length])
            if s_e is not None:
                part += out_grads.s_e[steps]
            train_e = _np(drive_part)  # rows from 0: the chunk's steps
        
        lo, hi = ev.bounds[index], ev.bounds[index + 1]
        input_events = (_np(ev.step[lo:hi] - t0), _np(ev.sample[lo:hi]), _np(ev.channel[lo:hi]))

        def reverse(k1, k0, lam_after):
            """Reverse steps k1 - 1 .. k0 of the chunk; lam_after: dL/dg of step k1."""
            kernels.reverse_steps(k1, k0, p.n_e, loop.const, readout[steps], *np_tape, not p.detach_reset,
                                  filtered, count_e, count_i,
                                  None if train_e is None else train_e if w_out is not None else train_e[steps],
                                  None if s_i is None else s_i[steps],
                                  *products, *arrivals, input_events, np_pos, np_neg, np_lam_v, _np(lam_after),
                                  np_lam)

        if not dense:
            reverse(length, 0, lam_next)
        else:  # BLAS's dense products run between the compiled steps
            for k in reversed(range(length)):
                lam_after = lam_next if k == length - 1 else lam_full[k + 1]
                for product, columns in dense:
                    product.write_dense(lam_after[:, columns])
                reverse(k + 1, k, lam_after)
        lam = lam_full[:length]
        if want_recurrent:
            grads.accumulate_recurrent(lam.view(length * batch, p.m), spike_events(spikes[:length], 0, p), p)
        lam_next = lam[0].clone()  # lam_full is overwritten by the next chunk
    return (*grads.result(w_in), grad_w_out)


# Fraction of nonzero entries up to which the presynaptic product is sparse.
SPARSE_UP_TO = 0.4


def presynaptic_operand(w: torch.Tensor) -> torch.Tensor:
    """W for PresynapticProduct: as CSR while sparse, else dense.

    The product is most of the backward's arithmetic. The default W_ei / W_ie are
    Bernoulli(0.2) masks; at that density the compiled sparse product
    (kernels.presynaptic_product) is about 2x faster than dense BLAS on one core
    (and 1.3x faster than MKL's sparse product); at 40 % nonzero 1.3x, at 50 % they
    are about even (measured at B = 32). A trained W_ei / W_ie is usually dense.
    """
    w = w.detach()
    if w.count_nonzero() > SPARSE_UP_TO * w.numel():
        return w
    with warnings.catch_warnings():  # torch flags its CSR layout as beta; products are stable
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta state")
        return w.to_sparse_csr()


def product_operand(w: torch.Tensor) -> torch.Tensor | tuple[np.ndarray, np.ndarray, np.ndarray]:
    """W as PresynapticProduct takes it: the dense tensor, or (while presynaptic_operand
    keeps it sparse) kernels.presynaptic_product's CSR, one per tile of kernels.TILE
    targets, concatenated: row pointers [tiles, sources + 1], columns counted from
    each tile's first, values."""
    w = presynaptic_operand(w)
    if w.layout == torch.strided:
        return w
    row_of = np.repeat(np.arange(w.shape[0]), np.diff(_np(w.crow_indices())))
    columns, values = _np(w.col_indices()), _np(w.values())
    ptr, idx, val, offset = [], [], [], 0
    for c0 in range(0, w.shape[1], kernels.TILE):
        keep = (columns >= c0) & (columns < c0 + kernels.TILE)  # CSR order: by row, then column
        rows = row_of[keep]
        ptr.append(offset + np.searchsorted(rows, np.arange(w.shape[0] + 1)))
        idx.append(columns[keep] - c0)
        val.append(values[keep])
        offset += rows.size
    return np.stack(ptr), np.concatenate(idx), np.concatenate(val)


class PresynapticProduct(NamedTuple):
    """lam @ W.T: the presynaptic spikes' gradient [B, sources] from their targets'
    conductance adjoint lam [B, targets], for W [sources, targets]."""

    dense: torch.Tensor | None  # W for BLAS (write_dense), or None when sparse
    compiled: tuple[np.ndarray, ...] | None  # when sparse: kernels.presynaptic_product's tiled CSR and scratch
    out: torch.Tensor  # the product, [B, sources]

    @classmethod
    def of(cls, operand, batch: int, dtype: torch.dtype) -> "PresynapticProduct":
        """For W from product_operand, with this range's output and scratch."""
        if isinstance(operand, torch.Tensor):
            return cls(operand, None, torch.empty(batch, operand.shape[0], dtype=dtype))
        sources = operand[0].shape[1] - 1
        out = torch.empty(batch, sources, dtype=dtype)
        scalar = _np(out).dtype
        return cls(None, (*operand, np.zeros((kernels.TILE, kernels.BLOCK), scalar),
                          np.zeros((sources, kernels.BLOCK), scalar)), out)

    def write_dense(self, lam: torch.Tensor) -> None:
        torch.mm(lam, self.dense.t(), out=self.out)


def _events_of_samples(ev: ArrivalEvents, b0: int, b1: int, p: FastParams) -> ArrivalEvents:
    """The input events of samples [b0, b1), renumbered from 0, step-sorted as before."""
    keep = (ev.sample >= b0) & (ev.sample < b1)
    step = ev.step[keep]
    return ArrivalEvents(step, ev.sample[keep] - b0, ev.channel[keep], chunk_bounds(step, p))


def _sample_ranges(batch: int) -> list[tuple[int, int]]:
    """The batch split into torch.get_num_threads() ranges (fewer for a small batch)."""
    threads = max(1, min(torch.get_num_threads(), batch))
    bounds = [round(batch * i / threads) for i in range(threads + 1)]
    return list(zip(bounds[:-1], bounds[1:]))


def _pool(threads: int) -> ThreadPoolExecutor:
    with _pools_lock:
        pool = _pools.get(threads)
        if pool is None:
            pool = _pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="spikeboard-kernel")
        return pool


def _over_samples(kernel, batch: int, *args) -> None:
    """kernel(b0, b1, *args) over the batch, split across torch's intra-op thread count."""
    ranges = _sample_ranges(batch)
    if len(ranges) == 1:
        kernel(0, batch, *args)
        return
    futures = [_pool(len(ranges)).submit(kernel, lo, hi, *args) for lo, hi in ranges]
    for future in futures:
        future.result()


def _np(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().numpy()
