"""The fast backend's time loop as Triton kernels: one program per sample, a chunk's steps inside.

Each program keeps its sample's membrane state on chip (registers) across the
steps it runs, so a chunk costs one launch instead of engine.fast.torch_ops's ~25
tensor ops per step forward and ~45 backward. Two kernels:

- `time_loop`: steps [t0, t0 + L) from the state in global memory, written back at
  the end. The forward writes the spikes [T, B, N] (and voltages when asked); the
  backward's recomputation of a chunk (same kernel, same arithmetic, so the same
  bits) writes the chunk's tape instead: v before each step, v after the Euler
  step and the hold (before reset), whether the cell was held, the conductances.
- `reverse_chunk`: the chunk's reverse steps (engine.fast.adjoint's notation),
  writing dL/da_t [L, B, M] for the weight gradients.

Layouts are engine.fast.common's: a state row holds E then I cells (N = n_e + n_i),
a conductance row [AMPA of E | AMPA of I | GABA of E] (M = N + n_e). In registers a
row is two BLOCK_N vectors: AMPA over all N cells, GABA over the first n_e.

Exactness (float64 spikes equal to the reference's) rests on:
- the same operation order as engine.fast.torch_ops, and no fused multiply-add
  (engine.fast.gpu launches with enable_fp_fusion=False);
- constants loaded from a tensor in the state's dtype (a Python float argument
  would be typed float32 and rounded);
- input arrivals start from 0 and add W_in rows in ascending channel order, and the
  GABA arrival is (input's negative part) + (I->E sum), each summed apart.
Recurrent arrivals are block sums (tl.sum), not the reference matmul's order: they
can differ from it in the last bit, which moves no spike in float64 (the tests
check the spikes).

The recurrent products are one product with W_rec [N, N] (W_ei in the E rows x I
columns, W_ie in the I rows x E columns; masked loads read only those blocks), over
blocks of ROWS presynaptic rows. Each step's spikes (forward) or recurrent adjoint
(reverse) goes to global memory and the next step reads it back in row blocks;
`tl.debug_barrier()` orders the program's stores before those loads.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Layout of `const`, in the state's dtype (as engine.fast.cpu_kernels' first six).
E_L, V_RESET, V_TH, E_AMPA, E_GABA, BETA = range(6)
# A cell that never fired: its last spike is this far in the past (int32).
NEVER = -(1 << 30)


@triton.jit
def _program_constants(const_ptr, decay_ptr, n_e, n, BLOCK_N: tl.constexpr, ROWS: tl.constexpr):
    """What both kernels load first: a state row's columns and rows of a W_rec block,
    the masks of its N and E cells, `const` (E_L .. BETA) and the conductance decays
    (AMPA of every cell, GABA of the E cells)."""
    cols = tl.arange(0, BLOCK_N)
    rows = tl.arange(0, ROWS)
    in_n = cols < n
    in_e = cols < n_e
    e_l = tl.load(const_ptr + 0)
    v_reset = tl.load(const_ptr + 1)
    v_th = tl.load(const_ptr + 2)
    e_ampa = tl.load(const_ptr + 3)
    e_gaba = tl.load(const_ptr + 4)
    beta = tl.load(const_ptr + 5)
    decay_a = tl.load(decay_ptr + cols, mask=in_n, other=0.0)
    decay_g = tl.load(decay_ptr + n + cols, mask=in_e, other=0.0)
    return cols, rows, in_n, in_e, e_l, v_reset, v_th, e_ampa, e_gaba, beta, decay_a, decay_g


@triton.jit
def time_loop(t0, length, n_e, n, m, n_input, batch,
              const_ptr, c_ptr, decay_ptr, refractory_ptr,
              ev_ptr_ptr, ev_channel_ptr, w_pos_ptr, w_neg_ptr, w_rec_ptr,
              v_ptr, g_ptr, last_ptr, ck_v_ptr, ck_g_ptr, ck_last_ptr,
              spikes_ptr, voltages_ptr, tape_v_ptr, tape_v2_ptr, tape_held_ptr, tape_g_ptr,
              steps_plus_one, batch_per_run,
              HAS_NEG: tl.constexpr, RECURRENT: tl.constexpr,
              FORWARD: tl.constexpr, CHECKPOINT: tl.constexpr, RECORD: tl.constexpr,
              BLOCK_N: tl.constexpr, ROWS: tl.constexpr):
    """Steps t0 .. t0 + length - 1 of sample `program_id(0)`.

    FORWARD: write spikes[t] (int8) and, with RECORD, voltages[t]; with CHECKPOINT
    first copy the state to ck_* (the chunk's checkpoint). Otherwise (the
    recomputation) write the tape [length, B, ...] and leave spikes as they are.
    Input events: sample b's arriving at step t are ev_channel[ev_ptr[b, t] : ev_ptr[b, t + 1]].
    W_rec [N, N] holds W_ei in its E rows x I columns and W_ie in its I rows x E
    columns (zeros elsewhere, never read).

    Packed runs (the run axis): the B programs are K runs of batch_per_run samples,
    run r's W_rec is [K, N, N][r], and its input events' channels are counted from
    r * n_input in W_in's [K * n_input, n_e] rows. One run: batch_per_run = B.
    """
    b = tl.program_id(0).to(tl.int64)
    w_rec_ptr += (b // batch_per_run) * n * n
    cols, rows, in_n, in_e, e_l, v_reset, v_th, e_ampa, e_gaba, _beta, decay_a, decay_g = _program_constants(
        const_ptr, decay_ptr, n_e, n, BLOCK_N, ROWS)
    c = tl.load(c_ptr + cols, mask=in_n, other=0.0)
    refractory = tl.load(refractory_ptr + cols, mask=in_n, other=0)
    v = tl.load(v_ptr + b * n + cols, mask=in_n, other=0.0)
    g_a = tl.load(g_ptr + b * m + cols, mask=in_n, other=0.0)
    g_g = tl.load(g_ptr + b * m + n + cols, mask=in_e, other=0.0)
    last = tl.load(last_ptr + b * n + cols, mask=in_n, other=0)
    if CHECKPOINT:
        tl.store(ck_v_ptr + b * n + cols, v, mask=in_n)
        tl.store(ck_g_ptr + b * m + cols, g_a, mask=in_n)
        tl.store(ck_g_ptr + b * m + n + cols, g_g, mask=in_e)
        tl.store(ck_last_ptr + b * n + cols, last, mask=in_n)
    for k in range(0, length):
        t = t0 + k
        # arrivals: input events (W_in rows, ascending channel), then the previous step's spikes
        a_a = tl.zeros([BLOCK_N], dtype=v.dtype)
        a_g = tl.zeros([BLOCK_N], dtype=v.dtype)
        lo = tl.load(ev_ptr_ptr + b * steps_plus_one + t)
        hi = tl.load(ev_ptr_ptr + b * steps_plus_one + t + 1)
        for e in range(lo, hi):
            channel = tl.load(ev_channel_ptr + e).to(tl.int64)
            a_a += tl.load(w_pos_ptr + channel * n_e + cols, mask=in_e, other=0.0)
            if HAS_NEG:
                a_g += tl.load(w_neg_ptr + channel * n_e + cols, mask=in_e, other=0.0)
        if RECURRENT:
            if t > 0:
                # the previous step's spikes s times W_rec: E columns get the I->E sum,
                # I columns the E->I sum; blocks of rows without a spike are skipped
                recurrent = tl.zeros([BLOCK_N], dtype=v.dtype)
                previous = spikes_ptr + ((t - 1) * batch + b) * n
                for r0 in range(0, n, ROWS):
                    r = r0 + rows
                    s = tl.load(previous + r, mask=r < n, other=0).to(v.dtype)
                    if tl.max(s, 0) != 0:
                        # only the block a row feeds: E rows -> I columns, I rows -> E columns
                        feeds = (r[:, None] < n) & in_n[None, :] & ((r[:, None] < n_e) != in_e[None, :])
                        w = tl.load(w_rec_ptr + r[:, None] * n + cols[None, :], mask=feeds, other=0.0)
                        recurrent += tl.sum(s[:, None] * w, 0)
                # onto the I cells' AMPA (from 0) and the E cells' GABA (summed apart, then added)
                a_a = tl.where(in_e, a_a, recurrent)
                a_g = tl.where(in_e, a_g + recurrent, a_g)
        g_a = g_a * decay_a + a_a
        g_g = g_g * decay_g + a_g
        v_before = v
        # forward Euler, engine.fast.torch_ops.membrane_update's order
        total = e_l - v
        total = total + (e_ampa - v) * g_a
        total = tl.where(in_e, total + (e_gaba - v) * g_g, total)
        total = total * c
        v = v + total
        held = last >= t - refractory
        v = tl.where(held, v_reset, v)
        fired = v > v_th
        if not FORWARD:
            row = (k * batch + b)
            tl.store(tape_v_ptr + row * n + cols, v_before, mask=in_n)
            tl.store(tape_v2_ptr + row * n + cols, v, mask=in_n)
            tl.store(tape_held_ptr + row * n + cols, held.to(tl.int8), mask=in_n)
            tl.store(tape_g_ptr + row * m + cols, g_a, mask=in_n)
            tl.store(tape_g_ptr + row * m + n + cols, g_g, mask=in_e)
        v = tl.where(fired, v_reset, v)
        last = tl.where(fired, t, last)
        if FORWARD:
            tl.store(spikes_ptr + (t * batch + b) * n + cols, fired.to(tl.int8), mask=in_n)
            if RECORD:
                tl.store(voltages_ptr + (t * batch + b) * n + cols, v, mask=in_n)
            tl.debug_barrier()  # this step's spikes are read back by the next
    tl.store(v_ptr + b * n + cols, v, mask=in_n)
    tl.store(g_ptr + b * m + cols, g_a, mask=in_n)
    tl.store(g_ptr + b * m + n + cols, g_g, mask=in_e)
    tl.store(last_ptr + b * n + cols, last, mask=in_n)


@triton.jit
def reverse_chunk(t0, length, n_e, n, m, batch,
                  const_ptr, k_dv_ptr, decay_ptr, readout_ptr,
                  tape_v_ptr, tape_v2_ptr, tape_held_ptr, tape_g_ptr, spikes_ptr,
                  grad_count_ptr, grad_filtered_ptr, grad_trains_ptr,
                  w_rec_t_ptr, lam_pre_ptr, lam_v_ptr, lam_next_ptr, lam_ptr, batch_per_run,
                  HAS_FILTERED: tl.constexpr, HAS_TRAINS: tl.constexpr,
                  RECURRENT: tl.constexpr, KEEP_RESET: tl.constexpr,
                  BLOCK_N: tl.constexpr, ROWS: tl.constexpr):
    """Reverse steps t0 + length - 1 .. t0 of sample `program_id(0)`.

    In: lam_v [B, N] (dL/dv after the chunk's last step), lam_next [B, M] (dL/dg of
    the step after the chunk), lam_pre [B, N] (its recurrent part by presynaptic
    cell: GABA of the E cells, AMPA of the I cells); all three are overwritten with
    the values before the chunk's first step. Out: lam [length, B, M], dL/da of
    each step. grad_count [B, N] holds dL/dcount of E then I (zeros where the loss
    does not reach), grad_filtered [B, n_e] dL/d(sum_t c_t s_e[t]), grad_trains
    [T, B, N] dL/ds_t. W_rec^T is the transpose of time_loop's W_rec, with the
    blocks whose adjoint is detached zeroed. Packed runs: W_rec^T [K, N, N] and
    k_dv [K, N], indexed by the program's run (time_loop's docstring).
    """
    b = tl.program_id(0).to(tl.int64)
    run = b // batch_per_run
    w_rec_t_ptr += run * n * n
    k_dv_ptr += run * n
    cols, rows, in_n, in_e, _e_l, v_reset, v_th, e_ampa, e_gaba, beta, decay_a, decay_g = _program_constants(
        const_ptr, decay_ptr, n_e, n, BLOCK_N, ROWS)
    k_dv = tl.load(k_dv_ptr + cols, mask=in_n, other=0.0)
    lam_v = tl.load(lam_v_ptr + b * n + cols, mask=in_n, other=0.0)
    lam_a = tl.load(lam_next_ptr + b * m + cols, mask=in_n, other=0.0)
    lam_g = tl.load(lam_next_ptr + b * m + n + cols, mask=in_e, other=0.0)
    grad_count = tl.load(grad_count_ptr + b * n + cols, mask=in_n, other=0.0)
    grad_filtered = tl.zeros([BLOCK_N], dtype=lam_v.dtype)
    if HAS_FILTERED:
        grad_filtered = tl.load(grad_filtered_ptr + b * n_e + cols, mask=in_e, other=0.0)
    for step in range(0, length):
        k = length - 1 - step
        t = t0 + k
        row = k * batch + b
        # dL/ds_t: readout, direct output gradients, the next step's arrivals
        a_s = tl.zeros([BLOCK_N], dtype=lam_v.dtype)
        if HAS_FILTERED:
            a_s = grad_filtered * tl.load(readout_ptr + t)
        a_s = a_s + grad_count
        if HAS_TRAINS:
            a_s = a_s + tl.load(grad_trains_ptr + (t * batch + b) * n + cols, mask=in_n, other=0.0)
        if RECURRENT:
            # the arrivals' share: E cells get (dL/dg of the I cells' AMPA) W_ei^T, I cells
            # (dL/dg of the E cells' GABA) W_ie^T
            for r0 in range(0, n, ROWS):
                r = r0 + rows
                x = tl.load(lam_pre_ptr + b * n + r, mask=r < n, other=0.0)
                feeds = (r[:, None] < n) & in_n[None, :] & ((r[:, None] < n_e) != in_e[None, :])
                w = tl.load(w_rec_t_ptr + r[:, None] * n + cols[None, :], mask=feeds, other=0.0)
                a_s += tl.sum(x[:, None] * w, 0)
        v2 = tl.load(tape_v2_ptr + row * n + cols, mask=in_n, other=0.0)
        if KEEP_RESET:
            a_s = a_s + lam_v * (v_reset - v2)
        free = tl.load(tape_held_ptr + row * n + cols, mask=in_n, other=1) == 0
        spiked = tl.load(spikes_ptr + (t * batch + b) * n + cols, mask=in_n, other=0) != 0
        keep_v = tl.where(free & ~spiked, 1.0, 0.0).to(lam_v.dtype)
        x = tl.abs(v2 - v_th) * beta + 1.0
        surrogate = tl.where(free, 1.0 / (x * x), 0.0)
        e = lam_v * keep_v + a_s * surrogate
        ed = e * k_dv
        v_prev = tl.load(tape_v_ptr + row * n + cols, mask=in_n, other=0.0)
        lam_a = lam_a * decay_a + ed * (e_ampa - v_prev)
        lam_g = tl.where(in_e, lam_g * decay_g + ed * (e_gaba - v_prev), 0.0)
        tl.store(lam_ptr + row * m + cols, lam_a, mask=in_n)
        tl.store(lam_ptr + row * m + n + cols, lam_g, mask=in_e)
        g_a = tl.load(tape_g_ptr + row * m + cols, mask=in_n, other=0.0)
        g_g = tl.load(tape_g_ptr + row * m + n + cols, mask=in_e, other=0.0)
        lam_v = e - ed * (g_a + 1.0 + g_g)
        if RECURRENT:  # the next (earlier) step's recurrent product reads this step's dL/dg
            tl.debug_barrier()
            tl.store(lam_pre_ptr + b * n + cols, tl.where(in_e, lam_g, lam_a), mask=in_n)
            tl.debug_barrier()
    tl.store(lam_v_ptr + b * n + cols, lam_v, mask=in_n)
    tl.store(lam_next_ptr + b * m + cols, lam_a, mask=in_n)
    tl.store(lam_next_ptr + b * m + n + cols, lam_g, mask=in_e)
