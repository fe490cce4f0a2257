"""Compiled CPU loops of the fast backend (numba): per-sample time loops, a chunk's reverse steps.

The functions work on numpy views of the fast backend's tensors and release the
GIL, so `engine.fast.cpu` runs sample ranges on several threads: the forward takes
its range [b0, b1), the recomputation and the reverse steps (whose recurrent
products block the samples together) all samples of the arrays they are given,
one range's. Layouts are engine.fast's: a state row holds E then I cells
(N = n_e + n_i), a conductance row [AMPA of E | AMPA of I | GABA of E] (M = N + n_e).

Bit-exactness with the reference (float64) rests on two things kept here:
- every sum is formed in engine.fast's order, which is the reference's: arrivals
  start from 0 and add the presynaptic rows in ascending index; the GABA arrival
  is (input's negative part) + (I->E sum), each summed apart;
- no fused multiply-add: numba compiles without fastmath, so LLVM does not
  contract a * b + c, and the membrane update rounds after every operation as
  torch's elementwise ops do.
Scalars come in `const`, in the state's dtype, and so do the reverse steps'
readout weights, so their float32 vector loops stay float32.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.extending import intrinsic, overload

# Layout of `const`, in the state's dtype: MODEL.md's constants, then the
# per-population ones (membrane dt/C, conductance decay per step, and the
# adjoint's dt/C / v_grad_dampen, or 1 / v_grad_dampen with exponential Euler),
# then the seed recipe's (engine.fast.common.Variant): leak conductance g_L and
# g_L E_L per population, capacitance C, -dt, the voltage floor (-inf: none), the
# threshold test's bound (spike iff v >= V_SPIKE: V_th when inclusive, else the
# next float above it, so one comparison serves both), and 1 where synapses kick
# first, then decay (0: decay, then add).
(E_L, V_RESET, V_TH, E_AMPA, E_GABA, BETA, C_E, C_I, DECAY_AMPA, DECAY_GABA, K_DV_E, K_DV_I,
 G_L_E, G_L_I, REST_E, REST_I, CAP_E, CAP_I, NEG_DT, V_FLOOR, V_SPIKE, KICK_FIRST) = range(22)
# A cell's age (steps since its last spike) is int32: half the bytes stored per
# step of an int64 (stores bound the cell update, see _step). A cell that never
# fired starts at _NEVER, 2**30 steps short of overflowing.
_AGE = np.int32
_ONE_STEP = _AGE(1)
_NEVER = 1 << 30

# error_model="numpy": a float division has no zero check (whose raise would
# keep LLVM from vectorising the loop around it)
_compiled = njit(nogil=True, cache=True, boundscheck=False, error_model="numpy")


@intrinsic
def _select(typingctx, condition, if_true, if_false):
    """`if_true if condition else if_false` as one LLVM select.

    numba lowers the conditional expression to branches; in a vectorised loop LLVM
    turns a store behind them into masked stores (vmaskmov), several times slower
    than a blend and a plain store on the AMD cores measured (docs/PERFORMANCE.md).
    For the same reason a cell's refractory state is its age (steps since its last
    spike, counted up every step) rather than the step of its last spike: storing
    `t if spiked else last` back to `last` is again a conditional store.
    """
    if not isinstance(condition, types.Boolean) or if_true != if_false:
        return None

    def codegen(context, builder, signature, args):
        return builder.select(*args)

    return if_true(condition, if_true, if_false), codegen


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


def _slice(a, lo, hi):
    """a[lo:hi], or None where a is None (an absent buffer or tape row)."""


@overload(_slice)
def _slice_typed(a, lo, hi):
    if isinstance(a, types.NoneType):
        return lambda a, lo, hi: None
    return lambda a, lo, hi: a[lo:hi]


def _rows(a, k, b, lo, hi):
    """a[k, b, lo:hi], or None where a is None."""


@overload(_rows)
def _rows_typed(a, k, b, lo, hi):
    if isinstance(a, types.NoneType):
        return lambda a, k, b, lo, hi: None
    return lambda a, k, b, lo, hi: a[k, b, lo:hi]


def _buffer_if(flag, m, dtype):
    """np.empty(m, dtype), or None where `flag` is None (typed apart, so a None
    buffer's branches are compiled out)."""


@overload(_buffer_if)
def _buffer_if_typed(flag, m, dtype):
    if isinstance(flag, types.NoneType):
        return lambda flag, m, dtype: None
    return lambda flag, m, dtype: np.empty(m, dtype=dtype)


@_compiled
def _add_input(t, n_e, n, ev_step, ev_channel, cursor, end, w_pos, w_neg, has_neg, a):
    """Add the W_in rows of the input events at `cursor` with step t into a [M]
    (AMPA of E, and the negative part into GABA of E); returns the cursor past them."""
    while cursor < end and ev_step[cursor] == t:
        channel = ev_channel[cursor]
        for j in range(n_e):
            a[j] += w_pos[channel, j]
        if has_neg:
            for j in range(n_e):
                a[n + j] += w_neg[channel, j]
        cursor += 1
    return cursor


@_compiled
def _add_arrivals(t, n_e, n, ev_step, ev_channel, cursor, end, cells, count,
                  w_pos, w_neg, w_ei, w_ie, use_ei, use_ie, has_neg, a, ie_sum, x):
    """Step t's conductance jumps of one sample into a [M], from the input events at
    `cursor` and the previous step's spiking cells cells[:count] (ascending);
    returns the cursor past step t. With same-step input `x` is a buffer [M]
    (else None): the input's jumps go there, to be added after the synapses'
    update (_step_e), and a holds the recurrent ones alone."""
    a[:] = 0
    neg_in_a = has_neg
    if x is None:
        cursor = _add_input(t, n_e, n, ev_step, ev_channel, cursor, end, w_pos, w_neg, has_neg, a)
    else:
        x[:] = 0
        cursor = _add_input(t, n_e, n, ev_step, ev_channel, cursor, end, w_pos, w_neg, has_neg, x)
        neg_in_a = False
    if not (use_ei or use_ie):
        return cursor
    # I->E sums apart from the input's negative part, then added once; with no
    # negative part that is 0 + sum, so it can sum in place
    ie = ie_sum if neg_in_a else a[n:]
    started = False
    for index in range(count):
        cell = cells[index]
        if cell < n_e:
            if use_ei:
                for j in range(n - n_e):
                    a[n_e + j] += w_ei[cell, j]
        elif use_ie:
            if neg_in_a and not started:
                ie[:] = 0
            started = True
            for j in range(n_e):
                ie[j] += w_ie[cell - n_e, j]
    if neg_in_a and started:  # no I spike adds exact zeros: skipped
        for j in range(n_e):
            a[n + j] = a[n + j] + ie_sum[j]
    return cursor


@_compiled
def _threshold(j, v1, refractory, const, v, age, fired, factors):
    """Cell j after its membrane update v1: floor, hold, threshold, reset; its
    adjoint factor v2 when `factors` is not None (see _step)."""
    v_reset, floor = const[V_RESET], const[V_FLOOR]
    clamped = v1 < floor  # torch.clamp's gradient passes at v1 == floor: not clamped
    held = age[j] <= refractory
    v2 = _select(held, v_reset, _select(clamped, floor, v1))
    spiked = v2 >= const[V_SPIKE]
    fired[j] = spiked
    v[j] = _select(spiked, v_reset, v2)
    age[j] = _select(spiked, _ONE_STEP, _AGE(age[j] + 1))
    if factors is not None:
        inf = const.dtype.type(np.inf)
        factors[0][j] = _select(held, inf, _select(clamped, -inf, v2))


@_compiled
def _synapse(g, arriving, decay, kick_first):
    """decay, then add (g decay + arriving), or kick first, then decay ((g + arriving) decay)."""
    return _select(kick_first, (g + arriving) * decay, g * decay + arriving)


@_compiled
def _membrane(vj, ga, gg, g_l, rest, cap, c, e_l, e_ampa, e_gaba, neg_dt, one, factors, j, exp_euler):
    """v1 = v + dv (engine.cells.membrane_update, in its operation order) and the
    adjoint's factors: forward Euler's leak g_L + g_a + g_g; exponential Euler's
    f = 1 - exp(-dt g_tot / C), f / g_tot and V_inf (engine.fast.adjoint)."""
    if exp_euler is None:
        dv = g_l * (e_l - vj)
        dv = dv + (e_ampa - vj) * ga
        dv = dv + (e_gaba - vj) * gg
        if factors is not None:
            factors[1][j] = g_l + ga + gg
        return vj + dv * c
    g_tot = g_l + (ga + gg)
    v_inf = (rest + (ga * e_ampa + gg * e_gaba)) / g_tot
    f = one - np.exp(neg_dt / (cap / g_tot))
    if factors is not None:
        factors[1][j] = f
        factors[2][j] = f / g_tot
        factors[3][j] = v_inf
    return vj + (v_inf - vj) * f


@_compiled
def _step_e(const, refractory, a_ampa, a_gaba, x_ampa, x_gaba, v, g_ampa, g_gaba, age, fired, factors,
            exp_euler):
    """One step of the E cells of one sample: AMPA and GABA (see _step)."""
    e_l, e_ampa, e_gaba, c = const[E_L], const[E_AMPA], const[E_GABA], const[C_E]
    d_ampa, d_gaba, one = const[DECAY_AMPA], const[DECAY_GABA], const.dtype.type(1.0)
    g_l, rest, cap, neg_dt = const[G_L_E], const[REST_E], const[CAP_E], const[NEG_DT]
    kick_first = const[KICK_FIRST] != 0
    for j in range(v.shape[0]):
        ga = _synapse(g_ampa[j], a_ampa[j], d_ampa, kick_first)
        gg = _synapse(g_gaba[j], a_gaba[j], d_gaba, kick_first)
        if x_ampa is not None:  # same-step input, after the decay
            ga = ga + x_ampa[j]
            gg = gg + x_gaba[j]
        g_ampa[j] = ga
        g_gaba[j] = gg
        v1 = _membrane(v[j], ga, gg, g_l, rest, cap, c, e_l, e_ampa, e_gaba, neg_dt, one, factors, j, exp_euler)
        _threshold(j, v1, refractory, const, v, age, fired, factors)


@_compiled
def _step_i(const, refractory, a_ampa, v, g_ampa, age, fired, factors, exp_euler):
    """One step of the I cells of one sample: AMPA only (see _step). Its GABA
    conductance is 0, which adds exact zeros in the reference's sums."""
    e_l, e_ampa, e_gaba, c = const[E_L], const[E_AMPA], const[E_GABA], const[C_I]
    d_ampa, one = const[DECAY_AMPA], const.dtype.type(1.0)
    g_l, rest, cap, neg_dt = const[G_L_I], const[REST_I], const[CAP_I], const[NEG_DT]
    kick_first = const[KICK_FIRST] != 0
    zero = const.dtype.type(0.0)
    for j in range(v.shape[0]):
        ga = _synapse(g_ampa[j], a_ampa[j], d_ampa, kick_first)
        g_ampa[j] = ga
        v1 = _membrane_i(v[j], ga, zero, g_l, rest, cap, c, e_l, e_ampa, e_gaba, neg_dt, one, factors, j,
                         exp_euler)
        _threshold(j, v1, refractory, const, v, age, fired, factors)


@_compiled
def _membrane_i(vj, ga, zero, g_l, rest, cap, c, e_l, e_ampa, e_gaba, neg_dt, one, factors, j, exp_euler):
    """_membrane without a GABA conductance: the same value (x + 0 g = x), fewer operations."""
    if exp_euler is None:
        dv = g_l * (e_l - vj)
        dv = dv + (e_ampa - vj) * ga
        if factors is not None:
            factors[1][j] = g_l + ga
        return vj + dv * c
    g_tot = g_l + ga
    v_inf = (rest + ga * e_ampa) / g_tot
    f = one - np.exp(neg_dt / (cap / g_tot))
    if factors is not None:
        factors[1][j] = f
        factors[2][j] = f / g_tot
        factors[3][j] = v_inf
    return vj + (v_inf - vj) * f


def _columns(rows, lo, hi):
    """Columns [lo, hi) of each of the tape's rows (two, or four with exponential Euler)."""


@overload(_columns)
def _columns_typed(rows, lo, hi):
    if len(rows) == 2:
        return lambda rows, lo, hi: (rows[0][lo:hi], rows[1][lo:hi])
    return lambda rows, lo, hi: (rows[0][lo:hi], rows[1][lo:hi], rows[2][lo:hi], rows[3][lo:hi])


def _tape_rows(v2, leak, f_per_g, v_inf):
    """The tape's rows as _step takes them: (v2, leak), with exponential Euler's two more."""


@overload(_tape_rows)
def _tape_rows_typed(v2, leak, f_per_g, v_inf):
    if isinstance(f_per_g, types.NoneType):
        return lambda v2, leak, f_per_g, v_inf: (v2, leak)
    return lambda v2, leak, f_per_g, v_inf: (v2, leak, f_per_g, v_inf)


@_compiled
def _step(n_e, const, refractory, a, x, v, g, age, fired, factors, exp_euler):
    """One step of MODEL.md's cell update for one sample, in the reference's rounding order.

    Reads the arrivals a [M] (and with same-step input x [M], else None); updates
    v, g and age (steps since the last spike) in place; fired[j] says whether cell
    j spiked. `exp_euler` is None (forward Euler) or True (exponential Euler).
    `factors` is None (the forward) or the rows [N] of the adjoint's tape: the
    voltage v2 before the reset (+inf where the cell is held, -inf where the
    floor clamped it), the leak factor, and with exponential Euler f / g_tot and
    V_inf (_membrane). From v2 the adjoint derives all else it needs
    (_voltage_adjoint, _voltage_before): the surrogate, whether the cell was held,
    clamped or spiked, the reset's V_reset - v2, and the voltage after the step,
    which the next step's drive needs. numba compiles the cases apart (a None
    argument's branches are pruned), so the forward
    stores nothing it does not keep: on the Zen 1 cores measured a 256-bit store
    takes two cycles, and stores bound this loop (a tape of four factors per cell,
    surrogate and V_reset - v2 included, made the recomputation 1.8x the forward).
    One fused loop per population; the E and I rows of every array are separate
    views, so LLVM vectorises with one overlap check per array.
    """
    n = v.shape[0]
    e = (const, refractory[0], a[:n_e], a[n:], _slice(x, 0, n_e), _slice(x, n, a.shape[0]), v[:n_e], g[:n_e],
         g[n:], age[:n_e], fired[:n_e])
    i = (const, refractory[1], a[n_e:n], v[n_e:], g[n_e:n], age[n_e:], fired[n_e:n])
    if factors is None:
        _step_e(*e, None, exp_euler)
        _step_i(*i, None, exp_euler)
    else:
        _step_e(*e, _columns(factors, 0, n_e), exp_euler)
        _step_i(*i, _columns(factors, n_e, n), exp_euler)


@_compiled
def _scratch(n, n_e, m, dtype):
    """Per-thread buffers: arrivals, I->E sum, spikes (padded to whole words), cell list, ages."""
    return (np.empty(m, dtype=dtype), np.empty(n_e, dtype=dtype),
            np.zeros((n + 7) // 8 * 8, dtype=np.bool_), np.empty(n, dtype=np.int64), np.empty(n, dtype=_AGE))


@_compiled
def forward_samples(b0, b1, n_e, ev_ptr, ev_step, ev_channel, w_pos, w_neg, w_ei, w_ie,
                    use_ei, use_ie, has_neg, const, refractory, exp_euler, same_step, chunk, readout,
                    count_e, count_i, filtered, s_e, s_i, ck_v, ck_g, ck_age, voltages, w_out, drive_out,
                    population):
    """Simulate samples [b0, b1) from rest.

    Writes spike counts [B, n_e] / [B, n_i], the readout's filtered E count
    sum_t readout[t] s_e[t] [B, n_e], the state at every chunk start (ck_*[chunk
    index, b]: v, g and ages), and where those arrays
    are not empty the float spike trains s_e [T, K, n_e] / s_i [T, K, n_i] of the
    first K samples (K = B for training; fewer when only some samples' trains are
    kept), the voltages [T, B, N], the output LIF's drive s_e[t] @ w_out, drive_out
    [T, B, n_out] (zeros on entry), and the number of E and I cells that spiked at
    each step, population [T, B, 2] (int32): the population rate without the
    trains. `exp_euler` and `same_step` are None or True (_step, _add_arrivals)."""
    steps, n, m = readout.shape[0], ck_v.shape[2], ck_g.shape[2]
    dtype = const.dtype
    a, ie_sum, fired, cells, age = _scratch(n, n_e, m, dtype)
    x = _buffer_if(same_step, m, dtype)
    trains, record_voltage, lif = s_e.shape[0] > 0, voltages.shape[0] > 0, drive_out.shape[0] > 0
    populations = population.shape[0] > 0
    for b in range(b0, b1):
        v = np.full(n, const[E_L], dtype=dtype)
        g = np.zeros(m, dtype=dtype)
        age[:] = _NEVER
        count = 0
        cursor, end = ev_ptr[b], ev_ptr[b + 1]
        for t in range(steps):
            if t % chunk == 0:
                _copy(ck_v[t // chunk, b], v)
                _copy(ck_g[t // chunk, b], g)
                _copy(ck_age[t // chunk, b], age)
            cursor = _add_arrivals(t, n_e, n, ev_step, ev_channel, cursor, end, cells, count,
                                   w_pos, w_neg, w_ei, w_ie, use_ei, use_ie, has_neg, a, ie_sum, x)
            _step(n_e, const, refractory, a, x, v, g, age, fired, None, exp_euler)
            count = _fired_cells(fired, cells)
            fired_e = 0
            for index in range(count):
                cell = cells[index]
                if cell < n_e:
                    fired_e += 1
                    count_e[b, cell] += 1
                    filtered[b, cell] += readout[t]
                    if lif:
                        row = drive_out[t, b]
                        for o in range(row.shape[0]):
                            row[o] += w_out[cell, o]
                else:
                    count_i[b, cell - n_e] += 1
            if populations:
                population[t, b, 0] = fired_e
                population[t, b, 1] = count - fired_e
            if trains and b < s_e.shape[1]:
                row_e, row_i = s_e[t, b], s_i[t, b]
                for j in range(n_e):
                    row_e[j] = fired[j]
                for j in range(n - n_e):
                    row_i[j] = fired[n_e + j]
            if record_voltage:
                _copy(voltages[t, b], v)


@_compiled
def recompute_samples(index, t0, n_e, ev_ptr, ev_step, ev_channel, w_pos, w_neg, w_ei, w_ie,
                      use_ei, use_ie, has_neg, const, refractory, exp_euler, same_step, ck_v, ck_g, ck_age,
                      tape_v2, tape_leak, tape_p, tape_vinf, spikes, grad_drive, grad_w_out):
    """Re-run chunk `index` (steps t0 .. t0 + L - 1) of every sample from its checkpoint.

    Writes the tape (_step's factors): tape_v2 [L + 1, B, N], whose row 0 is the
    voltage before the chunk and row k + 1 step k's v2; tape_leak [L, B, N]; with
    exponential Euler (else None) tape_p and tape_vinf [L, B, N]; and
    unless `spikes` is None, the spikes arriving in the chunk, those of steps
    t0 - 1 .. t0 + L - 2, into spikes [L, B, N]. Unless grad_w_out is None, adds
    the output LIF's W_out gradient: each E spike of chunk step k adds its
    sample's grad_drive[k] [n_out] to its row of grad_w_out [n_e, n_out].
    """
    length, n = tape_leak.shape[0], ck_v.shape[2]
    a, ie_sum, fired, cells, age = _scratch(n, n_e, ck_g.shape[2], const.dtype)
    x = _buffer_if(same_step, ck_g.shape[2], const.dtype)
    for b in range(ck_v.shape[1]):
        v = ck_v[index, b].copy()
        g = ck_g[index, b].copy()
        _copy(tape_v2[0, b], v)
        _copy(age, ck_age[index, b])
        for j in range(n):
            fired[j] = age[j] == _ONE_STEP  # the cells that spiked on the step before the chunk
        lo, end = ev_ptr[b], ev_ptr[b + 1]
        cursor = lo + np.searchsorted(ev_step[lo:end], t0)
        count = _fired_cells(fired, cells)
        for k in range(length):
            if spikes is not None:
                _copy(spikes[k, b], fired)
            cursor = _add_arrivals(t0 + k, n_e, n, ev_step, ev_channel, cursor, end, cells, count,
                                   w_pos, w_neg, w_ei, w_ie, use_ei, use_ie, has_neg, a, ie_sum, x)
            factors = _tape_rows(tape_v2[k + 1, b], tape_leak[k, b], _part(tape_p, (k, b)), _part(tape_vinf, (k, b)))
            _step(n_e, const, refractory, a, x, v, g, age, fired, factors, exp_euler)
            count = _fired_cells(fired, cells)
            if grad_w_out is not None:
                lam = grad_drive[k, b]
                for index_e in range(count):
                    cell = cells[index_e]
                    if cell < n_e:
                        row = grad_w_out[cell]
                        for o in range(row.shape[0]):
                            row[o] += lam[o]


# Samples per block of the presynaptic product: its accumulators, BLOCK floats,
# stay in registers (four 256-bit ones in float32).
BLOCK = 32
# Targets per tile of the presynaptic product: a tile's transposed adjoint,
# TILE x BLOCK floats (25 KiB in float32), stays in the L1 cache while every row
# of W reads from it. Untiled, W_ie's 800 targets were read from L2, 1.3x slower
# per nonzero than W_ei's 200. Both products of the canonical net per 2000 steps
# at B = 32 (docs/PERFORMANCE.md's machine): untiled 0.57 s; tiles of 64, 128,
# 200, 256 targets: 0.60, 0.54, 0.52, 0.52 s.
TILE = 200


@intrinsic
def _block_row(typingctx, table, idx, val, k0, k1, out, row, accumulate):
    """out[row] = (out[row] if accumulate else 0) + sum over k in [k0, k1) of
    val[k] * table[idx[k]], for rows of BLOCK values (table [targets, BLOCK],
    out [sources, BLOCK], C-contiguous), summed in k's order.

    Written as LLVM vector code because numba's own loops cannot keep a block of
    accumulators in registers: with the block as an inner loop of runtime length
    they go through memory (1.2x to 1.4x slower than MKL's sparse product here),
    with a constant one LLVM needs its SLP vectoriser, which numba switches off
    process-wide. No fast-math flags: a multiply and an add, as in numba's loops.
    """
    rows = (table, out)
    if not all(isinstance(a, types.Array) and a.ndim == 2 and a.layout == "C" for a in rows) \
            or not table.dtype == out.dtype == val.dtype or not isinstance(accumulate, types.Boolean):
        return None  # the rows are read and written as whole vectors of table's dtype
    sig = types.void(table, idx, val, k0, k1, out, row, accumulate)

    def codegen(context, builder, signature, args):
        table_t, idx_t, val_t, _, _, out_t, row_t, _ = signature.args
        table_v, idx_v, val_v, k0_v, k1_v, out_v, row_v, accumulate_v = args
        table_a, idx_a, val_a, out_a = (context.make_array(t)(context, builder, v) for t, v in
                                        ((table_t, table_v), (idx_t, idx_v), (val_t, val_v), (out_t, out_v)))
        scalar = context.get_value_type(table_t.dtype)
        block = ir.VectorType(scalar, BLOCK)
        align = context.get_abi_sizeof(scalar)
        intp = context.get_value_type(types.intp)
        width = ir.Constant(intp, BLOCK)
        splat = ir.Constant(ir.VectorType(ir.IntType(32), BLOCK), [0] * BLOCK)
        row_out = builder.bitcast(cgutils.gep(builder, out_a.data,
                                              builder.mul(context.cast(builder, row_v, row_t, types.intp), width)),
                                  block.as_pointer())
        start = builder.select(context.cast(builder, accumulate_v, types.boolean, types.boolean),
                               builder.load(row_out, align=align), ir.Constant(block, None))
        acc = cgutils.alloca_once_value(builder, start)
        with cgutils.for_range_slice(builder, k0_v, k1_v, ir.Constant(intp, 1), intp=intp) as (k, _):
            j = context.cast(builder, builder.load(cgutils.gep(builder, idx_a.data, k)), idx_t.dtype, types.intp)
            row_j = builder.bitcast(cgutils.gep(builder, table_a.data, builder.mul(j, width)), block.as_pointer())
            w = builder.insert_element(ir.Constant(block, ir.Undefined),
                                       builder.load(cgutils.gep(builder, val_a.data, k)), ir.Constant(ir.IntType(32), 0))
            w = builder.shuffle_vector(w, ir.Constant(block, ir.Undefined), splat)
            builder.store(builder.fadd(builder.load(acc), builder.fmul(w, builder.load(row_j, align=align))), acc)
        builder.store(builder.load(acc), row_out, align=align)
        return context.get_dummy_value()

    return sig, codegen


@_compiled
def presynaptic_product(ptr, idx, val, lam_t, acc, lam, out):
    """out [B, sources] = lam @ W.T, for lam [B, targets]: the presynaptic spikes'
    gradient from their targets' conductance adjoint.

    W [sources, targets] comes as one CSR per tile of TILE targets: row i of tile r
    is idx[ptr[r, i]:ptr[r, i + 1]] (columns counted from the tile's first) and its
    values val. Block by block of BLOCK samples and tile by tile: lam's block and
    tile transposed (zero-padded) into the scratch lam_t [TILE, BLOCK], each row of
    W summed into the scratch acc [sources, BLOCK] (continuing the previous tiles'
    sum, so every output is summed in ascending column order as untiled); acc is
    written out transposed, as the reverse step reads it: one sample's row at a time.
    """
    batch, targets = lam.shape
    zero = lam.dtype.type(0.0)
    for b0 in range(0, batch, BLOCK):
        width = min(BLOCK, batch - b0)
        for r in range(ptr.shape[0]):
            c0 = r * TILE
            for j in range(min(TILE, targets - c0)):
                for u in range(BLOCK):
                    lam_t[j, u] = lam[b0 + u, c0 + j] if u < width else zero
            for i in range(ptr.shape[1] - 1):
                _block_row(lam_t, idx, val, ptr[r, i], ptr[r, i + 1], acc, i, r > 0)
        # row by row of acc: its reads are contiguous and the BLOCK rows written
        # to stay in L1 (column by column, each read would be a cache line of its own)
        for i in range(ptr.shape[1] - 1):
            for u in range(width):
                out[b0 + u, i] = acc[i, u]


def _part(a, index):
    """a[index], or None where a is None (a part of dL/ds the loss does not reach)."""


@overload(_part)
def _part_typed(a, index):
    # resolved at typing: the callee is compiled for None, and its `is None`
    # branches are pruned, so an absent part costs no load in the vector loops
    if isinstance(a, types.NoneType):
        return lambda a, index: None
    return lambda a, index: a[index]


@_compiled
def _voltage_adjoint(j, const, keep_reset, readout_t, arrival, filtered, count, spike_train, v2, lam_v):
    """e = dL/dv1 of cell j (engine.fast.adjoint's docstring), from its v2 on the tape.

    dL/ds is the sum of its parts, in the torch-op loop's order: the readout
    (filtered * readout_t), the spike count, this step's spike-train gradient, the
    next step's arrivals (its presynaptic products, `arrival`) and, when the reset
    keeps its gradient, lam_v (V_reset - v2). A part is None where the loss does
    not reach. A held cell (v2 = +inf) or one the floor clamped (v2 = -inf) passes
    nothing; one that spiked passes no lam_v.
    """
    zero, one = lam_v.dtype.type(0.0), lam_v.dtype.type(1.0)
    x = v2[j]
    grad = zero
    if filtered is not None:
        grad = filtered[j] * readout_t
    if count is not None:
        grad = grad + count[j]
    if spike_train is not None:
        grad = grad + spike_train[j]
    if arrival is not None:
        grad = grad + arrival[j]
    if keep_reset:
        grad = grad + lam_v[j] * (const[V_RESET] - x)
    d = abs(x - const[V_TH]) * const[BETA] + one
    e = _select(x >= const[V_SPIKE], zero, lam_v[j]) + grad * (one / (d * d))
    return _select(abs(x) == np.inf, zero, e)


@_compiled
def _voltage_before(j, const, v2_prev):
    """The voltage after the previous step from that step's tape entry: its v2
    unless the cell spiked or was held (+inf), else V_reset; the floor where it
    clamped (-inf). (Row 0 of the tape, the voltage before the chunk, passes
    unchanged: it is below V_SPIKE or V_reset.)"""
    x = v2_prev[j]
    return _select(x >= const[V_SPIKE], const[V_RESET], _select(x == -np.inf, const[V_FLOOR], x))


@_compiled
def _drive(e_syn, v_prev, c, one, f, f_per_g, v_inf):
    """d dv / d g_syn over dv / dv's -leak (engine.fast.adjoint): forward Euler's
    E_syn - v (f_per_g None; dt / C is in k_dv), exponential Euler's
    (E_syn - V_inf) f / g_tot + (V_inf - v) dt / C (1 - f)."""
    if f_per_g is None:
        return e_syn - v_prev
    return (e_syn - v_inf) * f_per_g + (v_inf - v_prev) * c * (one - f)


@_compiled
def _adjoint_e(readout_t, const, keep_reset, arrival, filtered, count, spike_train, v2, v2_prev, leak,
               f_per_g, v_inf, lam_v, next_ampa, next_gaba, lam_ampa, lam_gaba):
    """One reverse step of the E cells of one sample: lam_v in place, lam_ampa and
    lam_gaba. f_per_g and v_inf: the exponential Euler tape rows (else None)."""
    k_dv, e_ampa, e_gaba, c = const[K_DV_E], const[E_AMPA], const[E_GABA], const[C_E]
    d_ampa, d_gaba, one = const[DECAY_AMPA], const[DECAY_GABA], const.dtype.type(1.0)
    for j in range(lam_v.shape[0]):
        e = _voltage_adjoint(j, const, keep_reset, readout_t, arrival, filtered, count, spike_train, v2, lam_v)
        ed = e * k_dv
        v_prev = _voltage_before(j, const, v2_prev)
        f, fg, vi = leak[j], _part(f_per_g, j), _part(v_inf, j)
        lam_ampa[j] = next_ampa[j] * d_ampa + ed * _drive(e_ampa, v_prev, c, one, f, fg, vi)
        lam_gaba[j] = next_gaba[j] * d_gaba + ed * _drive(e_gaba, v_prev, c, one, f, fg, vi)
        lam_v[j] = e - ed * f


@_compiled
def _adjoint_i(const, keep_reset, arrival, count, spike_train, v2, v2_prev, leak, f_per_g, v_inf, lam_v,
               next_ampa, lam_ampa):
    """One reverse step of the I cells of one sample (no readout): lam_v in place, lam_ampa."""
    k_dv, e_ampa, d_ampa, c = const[K_DV_I], const[E_AMPA], const[DECAY_AMPA], const[C_I]
    no_readout, one = const.dtype.type(0.0), const.dtype.type(1.0)
    for j in range(lam_v.shape[0]):
        e = _voltage_adjoint(j, const, keep_reset, no_readout, arrival, None, count, spike_train, v2, lam_v)
        ed = e * k_dv
        v_prev = _voltage_before(j, const, v2_prev)
        f = leak[j]
        lam_ampa[j] = next_ampa[j] * d_ampa + ed * _drive(e_ampa, v_prev, c, one, f, _part(f_per_g, j),
                                                            _part(v_inf, j))
        lam_v[j] = e - ed * f


@_compiled
def reverse_steps(k1, k0, n_e, const, readout, tape_v2, tape_leak, tape_p, tape_vinf, keep_reset,
                  filtered, count_e, count_i, s_e, s_i, product_e, product_i, arrival_e, arrival_i,
                  input_events, grad_pos, grad_neg, lam_v, lam_next, lam):
    """Reverse steps k1 - 1 down to k0 of one chunk, for the whole batch
    (engine.fast.adjoint's docstring has the derivation).

    Takes the chunk's tape (recompute_samples's) and readout [L]; whether the reset
    keeps its gradient; the parts of dL/ds, None where the loss does not reach:
    the readout's (filtered [B, n_e] times readout[k]), the counts' [B, n_*], the
    chunk's spike-train rows [L, B, n_*]; and the next step's arrivals' share, the
    presynaptic products [B, n_*] into arrival_e / arrival_i: computed here each
    step from product_* (presynaptic_product's CSR and scratch) where that is not
    None, else given (a dense product), or None (no share). Updates lam_v [B, N]
    (dL/dv) in place and writes dL/dg [B, M] of step k into lam[k], from lam[k + 1],
    or lam_next for step k1 - 1. (dL/dg is also dL/da of the arrivals, except
    kicked-then-decayed ones: engine.fast.cpu scales theirs by the decay.) With
    exponential Euler the tape has tape_p and tape_vinf, else they are None.

    Unless grad_pos is None, also adds W_in's shares: each input event (k, sample,
    channel) of input_events (chunk steps k, sorted by step and sample) adds its
    sample's new lam[k] row to row `channel` of grad_pos (the AMPA part) and of
    grad_neg (the GABA part of E), while that row is still in cache.
    """
    batch, n = lam_v.shape
    ev_k, ev_sample, ev_channel = input_events
    cursor = np.searchsorted(ev_k, k1)  # events of steps k < k1 lie before it
    for k in range(k1 - 1, k0 - 1, -1):
        nxt = lam_next if k == k1 - 1 else lam[k + 1]
        if product_e is not None:
            presynaptic_product(*product_e, nxt[:, n_e:n], arrival_e)
        if product_i is not None:
            presynaptic_product(*product_i, nxt[:, n:], arrival_i)
        spike_e, spike_i = _part(s_e, k), _part(s_i, k)
        event, stop = np.searchsorted(ev_k[:cursor], k), cursor  # step k's input events
        cursor = event
        for b in range(batch):
            v2, v2_prev, leak, lv = tape_v2[k + 1, b], tape_v2[k, b], tape_leak[k, b], lam_v[b]
            nxt_b, out = nxt[b], lam[k, b]
            _adjoint_e(readout[k], const, keep_reset, _part(arrival_e, b), _part(filtered, b), _part(count_e, b),
                       _part(spike_e, b), v2[:n_e], v2_prev[:n_e], leak[:n_e], _rows(tape_p, k, b, 0, n_e),
                       _rows(tape_vinf, k, b, 0, n_e), lv[:n_e], nxt_b[:n_e], nxt_b[n:], out[:n_e], out[n:])
            _adjoint_i(const, keep_reset, _part(arrival_i, b), _part(count_i, b), _part(spike_i, b), v2[n_e:],
                       v2_prev[n_e:], leak[n_e:], _rows(tape_p, k, b, n_e, n), _rows(tape_vinf, k, b, n_e, n),
                       lv[n_e:], nxt_b[n_e:n], out[n_e:n])
            if grad_pos is not None:
                while event < stop and ev_sample[event] == b:
                    pos = grad_pos[ev_channel[event]]
                    for j in range(n_e):
                        pos[j] += out[j]
                    if grad_neg is not None:  # None under Dale's constraint on W_in
                        neg = grad_neg[ev_channel[event]]
                        for j in range(n_e):
                            neg[j] += out[n + j]
                    event += 1
