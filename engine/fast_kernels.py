"""Compiled CPU loops of the fast backend (numba): per-sample time loops, one adjoint step.

Each function works on a range of samples [b0, b1) of numpy views of the fast
backend's tensors, and releases the GIL, so `engine.fast_cpu` runs sample ranges
on several threads. Layouts are engine.fast's: a state row holds E then I cells
(N = n_e + n_i), a conductance row [AMPA of E | AMPA of I | GABA of E] (M = N + n_e).

Bit-exactness with the reference (float64) rests on two things kept here:
- every sum is formed in engine.fast's order, which is the reference's: arrivals
  start from 0 and add the presynaptic rows in ascending index; the GABA arrival
  is (input's negative part) + (I->E sum), each summed apart;
- no fused multiply-add: numba compiles without fastmath, so LLVM does not
  contract a * b + c, and the membrane update rounds after every operation as
  torch's elementwise ops do.
Scalars come in `const` (same dtype as the state), so float32 stays float32.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Layout of `const`.
E_L, V_RESET, V_TH, E_AMPA, E_GABA, BETA = range(6)
NEVER = -(1 << 40)  # "last spike" of a cell that never fired

_compiled = njit(nogil=True, cache=True, boundscheck=False)


@_compiled
def _copy(dst, src):
    """dst[:len(src)] = src[:len(dst)] as a plain loop: numba's slice assignment
    checks for overlap and costs about a microsecond per call, once per step here."""
    for j in range(min(dst.shape[0], src.shape[0])):
        dst[j] = src[j]


@_compiled
def _fired_cells(fired, cells):
    """Indices of the True entries of `fired` (length a multiple of 8), ascending; their count."""
    words = fired.view(np.uint64)
    count = 0
    for w in range(words.shape[0]):
        if words[w] != 0:  # spikes are rare: test eight cells at once
            for j in range(8 * w, 8 * w + 8):
                if fired[j]:
                    cells[count] = j
                    count += 1
    return count


@_compiled
def _add_arrivals(t, n_e, n, ev_step, ev_channel, cursor, end, cells, count,
                  w_pos, w_neg, w_ei, w_ie, use_ei, use_ie, has_neg, a, ie_sum):
    """Step t's conductance jumps of one sample into a [M], from the input events at
    `cursor` and the previous step's spiking cells cells[:count] (ascending);
    returns the cursor past step t."""
    a[:] = 0
    while cursor < end and ev_step[cursor] == t:
        channel = ev_channel[cursor]
        for j in range(n_e):
            a[j] += w_pos[channel, j]
        if has_neg:
            for j in range(n_e):
                a[n + j] += w_neg[channel, j]
        cursor += 1
    if not (use_ei or use_ie):
        return cursor
    # I->E sums apart from the input's negative part, then added once; with no
    # negative part that is 0 + sum, so it can sum in place
    ie = ie_sum if has_neg else a[n:]
    started = False
    for index in range(count):
        cell = cells[index]
        if cell < n_e:
            if use_ei:
                for j in range(n - n_e):
                    a[n_e + j] += w_ei[cell, j]
        elif use_ie:
            if has_neg and not started:
                ie[:] = 0
            started = True
            for j in range(n_e):
                ie[j] += w_ie[cell - n_e, j]
    if has_neg and started:  # no I spike adds exact zeros: skipped
        for j in range(n_e):
            a[n + j] = a[n + j] + ie_sum[j]
    return cursor


@_compiled
def _membrane_step(t, n_e, const, c, decay, refractory, a, v, g, last, fired, v2):
    """One step of MODEL.md's cell update for one sample, in the reference's rounding order.

    v2 gets the voltage after the Euler step and the hold, before the reset. One
    loop per written array (E with GABA, I without, then hold, threshold, reset as
    selects): with few arrays per loop LLVM vectorises them.
    """
    n = v.shape[0]
    e_l, e_ampa, e_gaba = const[E_L], const[E_AMPA], const[E_GABA]
    v_reset, v_th = const[V_RESET], const[V_TH]
    for j in range(g.shape[0]):
        g[j] = g[j] * decay[j] + a[j]
    for j in range(n_e):
        vj = v[j]
        dv = e_l - vj
        dv = dv + (e_ampa - vj) * g[j]
        dv = dv + (e_gaba - vj) * g[n + j]
        v2[j] = vj + dv * c[j]
    for j in range(n_e, n):
        vj = v[j]
        dv = e_l - vj
        dv = dv + (e_ampa - vj) * g[j]
        v2[j] = vj + dv * c[j]
    for j in range(n):
        v2[j] = v_reset if last[j] >= t - refractory[j] else v2[j]
    for j in range(n):
        fired[j] = v2[j] > v_th
    for j in range(n):
        v[j] = v_reset if v2[j] > v_th else v2[j]
    for j in range(n):
        last[j] = t if v2[j] > v_th else last[j]


@_compiled
def _scratch(n, n_e, m, dtype):
    """Per-thread buffers: arrivals, I->E sum, spikes (padded to whole words), cell list."""
    return (np.empty(m, dtype=dtype), np.empty(n_e, dtype=dtype),
            np.zeros((n + 7) // 8 * 8, dtype=np.bool_), np.empty(n, dtype=np.int64))


@_compiled
def forward_samples(b0, b1, n_e, ev_ptr, ev_step, ev_channel, w_pos, w_neg, w_ei, w_ie,
                    use_ei, use_ie, has_neg, const, c, decay, refractory, chunk, readout,
                    spikes, count_e, count_i, filtered, s_e, s_i, ck_v, ck_g, ck_last, voltages):
    """Simulate samples [b0, b1) from rest.

    Writes bool spikes [T, B, N], spike counts [B, n_e] / [B, n_i], the readout's filtered E count
    sum_t readout[t] s_e[t] [B, n_e], the state at every chunk start
    (ck_*[chunk index, b]), and where those arrays are not empty the float spike
    trains s_e [T, B, n_e] / s_i [T, B, n_i] and the voltages [T, B, N]."""
    steps, n = spikes.shape[0], spikes.shape[2]
    m = decay.shape[0]
    a, ie_sum, fired, cells = _scratch(n, n_e, m, decay.dtype)
    v2 = np.empty(n, dtype=decay.dtype)
    trains, record_voltage = s_e.shape[0] > 0, voltages.shape[0] > 0
    for b in range(b0, b1):
        v = np.full(n, const[E_L], dtype=decay.dtype)
        g = np.zeros(m, dtype=decay.dtype)
        last = np.full(n, NEVER, dtype=np.int64)
        count = 0
        cursor, end = ev_ptr[b], ev_ptr[b + 1]
        for t in range(steps):
            if t % chunk == 0:
                _copy(ck_v[t // chunk, b], v)
                _copy(ck_g[t // chunk, b], g)
                _copy(ck_last[t // chunk, b], last)
            cursor = _add_arrivals(t, n_e, n, ev_step, ev_channel, cursor, end, cells, count,
                                   w_pos, w_neg, w_ei, w_ie, use_ei, use_ie, has_neg, a, ie_sum)
            _membrane_step(t, n_e, const, c, decay, refractory, a, v, g, last, fired[:n], v2)
            _copy(spikes[t, b], fired)
            count = _fired_cells(fired, cells)
            for index in range(count):
                cell = cells[index]
                if cell < n_e:
                    count_e[b, cell] += 1
                    filtered[b, cell] += readout[t]
                else:
                    count_i[b, cell - n_e] += 1
            if trains:
                row_e, row_i = s_e[t, b], s_i[t, b]
                for j in range(n_e):
                    row_e[j] = fired[j]
                for j in range(n - n_e):
                    row_i[j] = fired[n_e + j]
            if record_voltage:
                _copy(voltages[t, b], v)


@_compiled
def recompute_samples(b0, b1, index, t0, n_e, ev_ptr, ev_step, ev_channel, w_pos, w_neg, w_ei, w_ie,
                      use_ei, use_ie, has_neg, const, c, decay, refractory,
                      spikes, ck_v, ck_g, ck_last, tape_v, tape_leak, tape_surrogate, tape_reset):
    """Re-run chunk `index` (steps t0 .. t0 + L - 1) of samples [b0, b1) from its checkpoint.

    Writes the adjoint's per-step factors, [L, B, N]: the voltage before the step,
    the leak 1 + g_a + g_g, the surrogate 1 / (1 + beta |v2 - V_th|)^2 signed
    (0 where held; negative where the cell spiked, so that its sign says whether
    dL/dv passes the reset: one array fewer to write and read) and, when the reset
    keeps its gradient (tape_reset not empty), V_reset - v2.
    """
    length, n = tape_v.shape[0], spikes.shape[2]
    dtype = decay.dtype
    v_reset, v_th, beta = const[V_RESET], const[V_TH], const[BETA]
    one, zero = dtype.type(1.0), dtype.type(0.0)
    keep_reset = tape_reset.shape[0] > 0
    a, ie_sum, fired, cells = _scratch(n, n_e, decay.shape[0], dtype)
    held = np.empty(n, dtype=np.bool_)
    v2 = np.empty(n, dtype=dtype)
    for b in range(b0, b1):
        v = ck_v[index, b].copy()
        g = ck_g[index, b].copy()
        last = ck_last[index, b].copy()
        lo, end = ev_ptr[b], ev_ptr[b + 1]
        cursor = lo + np.searchsorted(ev_step[lo:end], t0)
        count = 0
        if t0 > 0:
            _copy(fired, spikes[t0 - 1, b])
            count = _fired_cells(fired, cells)
        for k in range(length):
            t = t0 + k
            _copy(tape_v[k, b], v)
            cursor = _add_arrivals(t, n_e, n, ev_step, ev_channel, cursor, end, cells, count,
                                   w_pos, w_neg, w_ei, w_ie, use_ei, use_ie, has_neg, a, ie_sum)
            for j in range(n):
                held[j] = last[j] >= t - refractory[j]
            _membrane_step(t, n_e, const, c, decay, refractory, a, v, g, last, fired[:n], v2)
            count = _fired_cells(fired, cells)
            leak, surrogate = tape_leak[k, b], tape_surrogate[k, b]
            for j in range(n_e):
                leak[j] = one + g[j] + g[n + j]
            for j in range(n_e, n):
                leak[j] = one + g[j]
            for j in range(n):
                x = abs(v2[j] - v_th) * beta + one
                sg = one / (x * x)
                surrogate[j] = zero if held[j] else (-sg if fired[j] else sg)
            if keep_reset:
                for j in range(n):
                    tape_reset[k, b, j] = v_reset - v2[j]


@_compiled
def _add_row(grad, part, b):
    """grad += part[b], unless part is empty."""
    if part.shape[0] > 0:
        for j in range(grad.shape[0]):
            grad[j] += part[b, j]


@_compiled
def _add_column(grad, part, b):
    """grad += part[:, b] ([cells, B], a presynaptic product), unless part is empty."""
    if part.shape[0] > 0:
        for j in range(grad.shape[0]):
            grad[j] += part[j, b]


@_compiled
def adjoint_step(b0, b1, k, n_e, const, k_dv, decay, tape_v, tape_leak, tape_surrogate, tape_reset,
                 readout_t, grad_filtered, grad_count_e, grad_count_i, grad_s_e, grad_s_i, arrival_e, arrival_i,
                 spike_grad, lam_v, lam_next, lam_out):
    """One reverse step (engine.fast_backward's docstring has the derivation).

    dL/ds of the step is assembled in spike_grad [B, N] (scratch) from its parts,
    each [B, n_e] / [B, n_i] and each left out when empty: the readout
    (grad_filtered * readout_t, E only), the spike counts, this step's row of the
    spike trains' gradient, the next step's arrivals (W @ lam.T, so [n_e, B] /
    [n_i, B]) and the reset. Updates lam_v (dL/dv) in place, writes dL/dg of the
    step into lam_out.
    """
    n = lam_v.shape[1]
    e_ampa, e_gaba = const[E_AMPA], const[E_GABA]
    zero = decay.dtype.type(0.0)
    keep_reset = tape_reset.shape[0] > 0
    for b in range(b0, b1):
        v_prev, leak, surrogate = tape_v[k, b], tape_leak[k, b], tape_surrogate[k, b]
        lv, out, nxt = lam_v[b], lam_out[b], lam_next[b]
        out_gaba, nxt_gaba, decay_gaba = out[n:], lam_next[b, n:], decay[n:]
        grad = spike_grad[b]
        grad_e, grad_i = grad[:n_e], grad[n_e:]
        # one loop per part, each vectorisable; the branches test whole parts
        if grad_filtered.shape[0] > 0:
            for j in range(n_e):
                grad_e[j] = grad_filtered[b, j] * readout_t
        else:
            grad_e[:] = zero
        grad_i[:] = zero
        _add_row(grad_e, grad_count_e, b)
        _add_row(grad_i, grad_count_i, b)
        _add_row(grad_e, grad_s_e, b)
        _add_row(grad_i, grad_s_i, b)
        _add_column(grad_e, arrival_e, b)
        _add_column(grad_i, arrival_i, b)
        if keep_reset:
            reset = tape_reset[k, b]
            for j in range(n):
                grad[j] += lv[j] * reset[j]
        for j in range(n_e):  # E: AMPA and GABA
            sg = surrogate[j]
            e = (lv[j] if sg > zero else zero) + grad[j] * abs(sg)
            ed = e * k_dv[j]
            out[j] = nxt[j] * decay[j] + ed * (e_ampa - v_prev[j])
            out_gaba[j] = nxt_gaba[j] * decay_gaba[j] + ed * (e_gaba - v_prev[j])
            lv[j] = e - ed * leak[j]
        for j in range(n_e, n):  # I: AMPA only
            sg = surrogate[j]
            e = (lv[j] if sg > zero else zero) + grad[j] * abs(sg)
            ed = e * k_dv[j]
            out[j] = nxt[j] * decay[j] + ed * (e_ampa - v_prev[j])
            lv[j] = e - ed * leak[j]
