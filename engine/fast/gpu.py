"""The fast backend's time loop on a GPU: engine.fast.gpu_kernels' Triton kernels, launched per chunk.

Per training step: the forward is one `time_loop` launch per chunk; the backward,
per chunk, one `time_loop` launch that recomputes the chunk's tape from its
checkpoint and one `reverse_chunk` launch; around them a few torch ops per chunk
(W_in's gradient rows by index_add, W_ei's / W_ie's as one matmul each) and O(1)
per step, against engine.fast.torch_ops' ~70 per step. `counting_launches` counts
the launches, and marks them so that a torch op counter can leave out what the
Triton interpreter does inside one (tests/engine/test_gpu_kernels.py).

Saved for backward: the int8 spikes [T, B, N] (the recurrent arrivals and the
W_ei / W_ie gradients read them) and the state at each chunk start. Chunks are
longer here (GPU_CHUNK_ELEMENTS): GPU memory is plentiful and launches are the cost.

Packed runs (engine.fast.network.simulate_fast_runs): the weights come stacked,
W_in [K, n_input, n_e] and so on; the K x B samples are the programs, program b
belongs to run b // B and reads that run's W_in rows, W_rec and v_grad_dampen;
the gradients come back stacked. One run is K = 1.

Runs wherever Triton does: CUDA, or the CPU with TRITON_INTERPRET=1 set before
triton is imported (how CI tests it).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import NamedTuple

import torch
import triton

from engine.fast import gpu_kernels as kernels
from engine.fast.adjoint import WeightGrads
from engine.fast.common import ArrivalEvents, FastParams, OutputGrads, Recurrence, split_input_weights

# Elements of one [K, B, M] chunk buffer on the GPU (the tape is about 3 of them):
# at batch 64 of the canonical network, chunks of _MAX_CHUNK_STEPS steps.
GPU_CHUNK_ELEMENTS = 64_000_000


class ChunkStates(NamedTuple):
    """The state at each chunk start, [C, B, ...]."""

    v: torch.Tensor  # [C, B, N]
    g: torch.Tensor  # [C, B, M]
    last: torch.Tensor  # [C, B, N] int32, step of the last spike (kernels.NEVER: none)


class KernelInputs(NamedTuple):
    """What both kernels read besides the state: constants, input events, weights."""

    const: torch.Tensor  # [6] kernels.E_L ... kernels.BETA, in the state's dtype
    refractory: torch.Tensor  # [N] int32, steps
    k_dv: torch.Tensor  # [K, N] dt / tau_m / v_grad_dampen, per run
    ev_ptr: torch.Tensor  # [B, T + 1]: sample b's arrivals at step t are ev_channel[ev_ptr[b, t]:ev_ptr[b, t + 1]]
    ev_channel: torch.Tensor  # by (sample, step, channel)
    w_pos: torch.Tensor  # [K * n_input, n_e]: packed runs' rows one run after another
    w_neg: torch.Tensor  # w_pos when W_in has no negative entry (then not read)
    has_neg: bool
    block_n: int  # N rounded up to a power of two: a state row in registers

    @classmethod
    def build(cls, w_in: torch.Tensor, ev: ArrivalEvents, batch: int, p: FastParams) -> KernelInputs:
        """W_in [n_input, n_e], or [K, n_input, n_e] for K packed runs (run_count)."""
        dtype, device = w_in.dtype, w_in.device
        w_pos, w_neg = split_input_weights(w_in.detach().reshape(-1, p.n_e))
        dampen = p.v_grad_dampen if isinstance(p.v_grad_dampen, tuple) else (p.v_grad_dampen,) * run_count(w_in)
        k_dv = p.c[None, :] / torch.tensor(dampen, dtype=dtype, device=device)[:, None]
        const = torch.tensor([p.e_l, p.v_reset, p.v_th, p.e_ampa, p.e_gaba, p.beta], dtype=dtype, device=device)
        # ev is sorted by (step, sample, channel): a stable sort by (sample, step) keeps channels ascending
        key = ev.sample * (p.steps + 1) + ev.step
        key, order = torch.sort(key, stable=True)
        queries = torch.arange(batch * (p.steps + 1), device=device)
        ev_ptr = torch.searchsorted(key, queries).view(batch, p.steps + 1)
        return cls(const, (-p.hold_from[0]).to(torch.int32), k_dv.contiguous(), ev_ptr,
                   ev.channel[order], w_pos.contiguous(), (w_neg if w_neg is not None else w_pos).contiguous(),
                   w_neg is not None, triton.next_power_of_2(p.n))


def run_count(w_in: torch.Tensor) -> int:
    """K, the packed runs of a stacked W_in [K, n_input, n_e]; 1 for one run's [n_input, n_e]."""
    return w_in.shape[0] if w_in.dim() == 3 else 1


class LaunchCount:
    """Kernel launches counted by counting_launches; `inside` is True during each one."""

    def __init__(self, dry_run: bool):
        self.launches = 0
        self.inside = False
        self.dry_run = dry_run


_counter: LaunchCount | None = None


@contextmanager
def counting_launches(dry_run: bool = False):
    """Count the kernel launches in the block. With `dry_run` the kernels are counted,
    not run: the launches and the torch ops around them depend only on the shapes and
    the input events, so a training step of the canonical network can be counted in
    seconds on a CPU (its results are then garbage)."""
    global _counter
    outer, _counter = _counter, LaunchCount(dry_run)
    try:
        yield _counter
    finally:
        _counter = outer


def _launch(kernel, batch: int, block_n: int, *args, **meta) -> None:
    """kernel[(batch,)]: one program per sample, without fused multiply-add (bit-exactness).

    The recurrent product's tile is [ROWS, BLOCK_N]: at most 4,096 elements
    (8 rows of the canonical network's 1,024 columns), so it stays in registers.
    """
    meta.update(BLOCK_N=block_n, ROWS=max(8, 4096 // block_n), num_warps=max(1, min(16, block_n // 128)),
                enable_fp_fusion=False)
    if _counter is None:
        kernel[(batch,)](*args, **meta)
        return
    _counter.launches += 1
    if _counter.dry_run:
        return
    _counter.inside = True
    try:
        kernel[(batch,)](*args, **meta)
    finally:
        _counter.inside = False


class Recurrent(NamedTuple):
    """The recurrent weights as the kernels read them."""

    w_rec: torch.Tensor  # [K, N, N]: W_ei in the E rows x I columns, W_ie in the I rows x E columns
    any: bool  # whether W_ei or W_ie has a nonzero entry

    @classmethod
    def build(cls, rec: Recurrence, p: FastParams) -> Recurrent:
        w_ei, w_ie = (w.detach().reshape(-1, *w.shape[-2:]) for w in (rec.w_ei, rec.w_ie))
        w_rec = torch.zeros(w_ei.shape[0], p.n, p.n, dtype=w_ei.dtype, device=w_ei.device)
        w_rec[:, :p.n_e, p.n_e:] = w_ei
        w_rec[:, p.n_e:, :p.n_e] = w_ie
        return cls(w_rec, rec.use_ei or rec.use_ie)

    def adjoint(self, rec: Recurrence, p: FastParams) -> torch.Tensor | None:
        """W_rec^T with the blocks whose adjoint does not flow zeroed; None when none flows."""
        adjoint_ei = rec.use_ei and not p.detach_recurrent
        adjoint_ie = rec.use_ie and not p.detach_recurrent
        if not (adjoint_ei or adjoint_ie):
            return None
        w_t = self.w_rec.transpose(1, 2).contiguous()
        if not adjoint_ei:
            w_t[:, p.n_e:, :p.n_e] = 0
        if not adjoint_ie:
            w_t[:, :p.n_e, p.n_e:] = 0
        return w_t


def _time_loop(k: KernelInputs, r: Recurrent, p: FastParams, batch: int, t0: int, length: int,
               state: ChunkStates, spikes: torch.Tensor, *, checkpoint=None, voltages=None, tape=None) -> None:
    """One time_loop launch: the forward (tape None) or a chunk's recomputation into `tape`."""
    forward = tape is None
    ck = checkpoint if checkpoint is not None else state
    tv, tv2, theld, tg = tape if tape is not None else (state.v, state.v, spikes, state.g)
    _launch(kernels.time_loop, batch, k.block_n,
            t0, length, p.n_e, p.n, p.m, k.w_pos.shape[0], batch,
            k.const, p.c, p.decay, k.refractory, k.ev_ptr, k.ev_channel, k.w_pos, k.w_neg, r.w_rec,
            state.v, state.g, state.last, ck.v, ck.g, ck.last,
            spikes, voltages if voltages is not None else state.v, tv, tv2, theld, tg, p.steps + 1,
            batch // r.w_rec.shape[0], HAS_NEG=k.has_neg, RECURRENT=r.any, FORWARD=forward,
            CHECKPOINT=checkpoint is not None, RECORD=voltages is not None)


def run_forward(w_in, rec: Recurrence, ev: ArrivalEvents, batch: int, p: FastParams, record_voltage: bool):
    """Spikes int8 [T, B, N], the state at each chunk start, voltages [T, B, N] or None, the kernels' inputs."""
    dtype, device = w_in.dtype, w_in.device
    k = KernelInputs.build(w_in, ev, batch, p)
    r = Recurrent.build(rec, p)
    spikes = torch.empty(p.steps, batch, p.n, dtype=torch.int8, device=device)
    voltages = torch.empty(p.steps, batch, p.n, dtype=dtype, device=device) if record_voltage else None
    state = ChunkStates(torch.full((batch, p.n), p.e_l, dtype=dtype, device=device),
                        torch.zeros(batch, p.m, dtype=dtype, device=device),
                        torch.full((batch, p.n), kernels.NEVER, dtype=torch.int32, device=device))
    n_chunks = math.ceil(p.steps / p.chunk)
    starts = ChunkStates(torch.empty(n_chunks, batch, p.n, dtype=dtype, device=device),
                         torch.empty(n_chunks, batch, p.m, dtype=dtype, device=device),
                         torch.empty(n_chunks, batch, p.n, dtype=torch.int32, device=device))
    for index, t0 in enumerate(range(0, p.steps, p.chunk)):
        _time_loop(k, r, p, batch, t0, min(p.chunk, p.steps - t0), state, spikes,
                   checkpoint=ChunkStates(*(s[index] for s in starts)), voltages=voltages)
    return spikes, starts, voltages, (k, r, rec)


def network_backward(w_in, w_ei, w_ie, spikes, saved, ev: ArrivalEvents, p: FastParams,
                     out_grads: OutputGrads, need):
    """Gradients (W_in, W_ei, W_ie), None where not needed: engine.fast.adjoint's math, chunk by chunk."""
    starts, (k, r, rec) = saved
    batch, dtype, device = spikes.shape[1], w_in.dtype, w_in.device
    runs = run_count(w_in)
    w_rec_t = r.adjoint(rec, p)
    grad_count = torch.cat([_or_zeros(out_grads.count_e, (batch, p.n_e), w_in),
                            _or_zeros(out_grads.count_i, (batch, p.n_i), w_in)], 1)
    has_filtered = out_grads.filtered is not None
    grad_filtered = out_grads.filtered.contiguous() if has_filtered else grad_count
    has_trains = out_grads.s_e is not None or out_grads.s_i is not None
    grad_trains = grad_count
    if has_trains:
        grad_trains = torch.cat([_or_zeros(out_grads.s_e, (p.steps, batch, p.n_e), w_in),
                                 _or_zeros(out_grads.s_i, (p.steps, batch, p.n_i), w_in)], 2)
    # packed runs: W_in's gradient rows one run after another, as the events' channels count them
    flat_in = w_in.reshape(-1, p.n_e)
    grads = WeightGrads.zeros(flat_in, w_ei.reshape(runs, p.n_e, p.n_i), w_ie.reshape(runs, p.n_i, p.n_e), need)
    tape = (torch.empty(p.chunk, batch, p.n, dtype=dtype, device=device),
            torch.empty(p.chunk, batch, p.n, dtype=dtype, device=device),
            torch.empty(p.chunk, batch, p.n, dtype=torch.int8, device=device),
            torch.empty(p.chunk, batch, p.m, dtype=dtype, device=device))
    lam_full = torch.empty(p.chunk, batch, p.m, dtype=dtype, device=device)
    lam_v = torch.zeros(batch, p.n, dtype=dtype, device=device)
    lam_next = torch.zeros(batch, p.m, dtype=dtype, device=device)
    lam_pre = torch.zeros(batch, p.n, dtype=dtype, device=device)
    state = ChunkStates(*(torch.empty_like(s[0]) for s in starts))  # the checkpoints stay as they are
    for index in reversed(range(starts.v.shape[0])):
        t0 = index * p.chunk
        length = min(p.chunk, p.steps - t0)
        for now, start in zip(state, starts):
            now.copy_(start[index])
        _time_loop(k, r, p, batch, t0, length, state, spikes, tape=tape)
        _launch(kernels.reverse_chunk, batch, k.block_n,
                t0, length, p.n_e, p.n, p.m, batch, k.const, k.k_dv, p.decay, p.readout,
                *tape, spikes, grad_count, grad_filtered, grad_trains,
                r.w_rec if w_rec_t is None else w_rec_t, lam_pre, lam_v, lam_next, lam_full, batch // runs,
                HAS_FILTERED=has_filtered, HAS_TRAINS=has_trains, RECURRENT=w_rec_t is not None,
                KEEP_RESET=not p.detach_reset)
        lam = lam_full[:length].view(length * batch, p.m)
        grads.accumulate_input(lam, ev, index, t0, batch, p)
        _accumulate_recurrent(grads, lam, spikes, t0, length, runs, p)
    d_in, d_ei, d_ie = grads.result(flat_in)
    return tuple(None if g is None else g.view(w.shape) for g, w in ((d_in, w_in), (d_ei, w_ei), (d_ie, w_ie)))


def _accumulate_recurrent(grads: WeightGrads, lam: torch.Tensor, spikes: torch.Tensor, t0: int, length: int,
                          runs: int, p: FastParams) -> None:
    """dL/dW_ei += s_e[t-1]^T dL/da_I[t] and dL/dW_ie += s_i[t-1]^T dL/da_GABA[t] over the chunk's
    steps t, per run (grads.ei [K, n_e, n_i], grads.ie [K, n_i, n_e]; lam [L * B, M])."""
    if grads.ei is None and grads.ie is None:
        return
    first = 1 if t0 == 0 else 0  # step 0 has no previous spikes
    steps, per_run = length - first, spikes.shape[1] // runs

    def by_run(x):  # [steps, K * b, C] -> [K, steps * b, C]
        return x.view(steps, runs, per_run, x.shape[-1]).transpose(0, 1).reshape(runs, steps * per_run, -1)

    previous = by_run(spikes[t0 + first - 1:t0 + length - 1].to(lam.dtype))
    rows = by_run(lam.view(length, runs * per_run, p.m)[first:])
    if grads.ei is not None:
        grads.ei.baddbmm_(previous[:, :, :p.n_e].transpose(1, 2), rows[:, :, p.n_e:p.n])
    if grads.ie is not None:
        grads.ie.baddbmm_(previous[:, :, p.n_e:].transpose(1, 2), rows[:, :, p.n:])


def _or_zeros(grad: torch.Tensor | None, shape, like: torch.Tensor) -> torch.Tensor:
    return grad if grad is not None else torch.zeros(shape, dtype=like.dtype, device=like.device)
