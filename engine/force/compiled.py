"""The FORCE time loop compiled for the CPU (numba): simulate.py's loop without a
torch dispatch per operation, for a batch of points that share omega0 and eta0.

`advance_compiled` is a drop-in for simulate's `advance`: same arguments, same
results (networks.py and rls.py stay the executable spec; tests/engine/force/
test_compiled.py holds this loop to them). What changes is how the work is done:

- LIF: each point runs its own steps; a step touches its N cells once and adds
  only the rows of omega0^T (columns of omega0) of the cells that spiked, about
  two per step at N 2000. Points are independent, so ranges of points run on
  threads (the kernels release the GIL), each range through every step of a chunk.
- Rate twin: one matrix product per step for a range's points, R (b, N) @ omega0^T
  with torch's MKL gemm (the only O(N^2) work of a step: batched, omega0 is read
  once per step for the range's points), then the f-I curve and filters
  elementwise; ranges of points on threads as for LIF, one MKL thread each.
- RLS, every `update_every` steps of learning: P in float64 as in rls.py, but only
  one triangle is kept up to date, and an update is one pass over it: the rank-one
  term of update m (P -= s s^T, s = sqrt(c) k) is held back and applied in the
  pass that computes update m+1's k = P r (the same P, row by row: each element is
  updated, then used), so P is read and written once per update, where BLAS dsymv
  then dsyr read it twice and wrote it once (an update is memory-bound: 5.5 -> 3.1
  ms at N 2000, measured under load). The last held-back term is applied and the
  other triangle filled in when the loop returns, so P is exact and symmetric
  wherever it is read.

Every step's arithmetic is the reference's, operation for operation; where torch
fuses a multiply-add (lerp, add with alpha) or sums in another order (BLAS), the
results agree to rounding: in float64 the spikes are the same over a short run
and the outputs agree to ~1e-12 (the networks are chaotic, so not for long).
"""

from __future__ import annotations

import ctypes
import itertools
import os
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from llvmlite import ir
from numba import njit
from numba.core import types
from numba.extending import intrinsic

from engine.force.rls import RLSState

# error_model="numpy": a float division has no zero check (the f-I curve divides
# by zero below threshold on purpose: log1p(inf) = inf, 1 / inf = 0, as in torch)
_compiled = njit(nogil=True, cache=True, boundscheck=False, error_model="numpy")

def _call_codegen(context, builder, sig, args):
    """Call the void function at address args[0] with the pointers args[1:]."""
    byte_ptr = ir.IntType(8).as_pointer()
    function_type = ir.FunctionType(ir.VoidType(), [byte_ptr] * (len(args) - 1))
    function = builder.inttoptr(args[0], function_type.as_pointer())
    builder.call(function, [builder.inttoptr(a, byte_ptr) for a in args[1:]])


@intrinsic
def _call13(typingctx, address, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, p12, p13):
    """Calls the void function at `address` with thirteen pointers (addresses as integers)."""
    return types.void(address, p1, p2, p3, p4, p5, p6, p7, p8, p9, p10, p11, p12, p13), _call_codegen


@_compiled
def _recurrent(out, r, omega0, trans, blas, ints, scalars):
    """out (m, N) = r (m, N) @ omega0^T with the gemm at blas[2] (Fortran: out^T = omega0 r^T)."""
    m, n = r.shape
    ints[0] = n
    ints[1] = m
    scalars[0] = 1
    scalars[1] = 0
    n_, m_ = ints.ctypes.data, ints[1:].ctypes.data
    _call13(blas[2], trans.ctypes.data, trans[1:].ctypes.data, n_, m_, n_, scalars.ctypes.data, omega0.ctypes.data,
            n_, r.ctypes.data, n_, scalars[1:].ctypes.data, out.ctypes.data, n_)


# The rate twin's product: torch's MKL sgemm_/dgemm_ (exported by libtorch_cpu), 6 to 15x
# faster than scipy's OpenBLAS for these shapes here (measured, one thread, (1-8) x 2000 x 2000).
_TORCH_CPU = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
_GEMM = {np.dtype(np.float32): ctypes.cast(_TORCH_CPU.sgemm_, ctypes.c_void_p).value,
         np.dtype(np.float64): ctypes.cast(_TORCH_CPU.dgemm_, ctypes.c_void_p).value}


def _blas_table(dtype) -> np.ndarray:
    """The gemm's address (Fortran calling convention: every argument a pointer), passed to the kernels
    as an integer (a ctypes function would be a dynamic global, and numba could not cache them)."""
    return np.array([0, 0, _GEMM[np.dtype(dtype)]], dtype=np.int64)

# Layout of `const` (float64)
DT, DECAY_R, DECAY_D, JUMP, KDV, V_RESET, V_PEAK, BIAS, TAU_M, TAU_REF, REF_STEPS, RATE_JUMP = range(12)


# fastmath: k's sums in any order (vectorised); the result agrees with rls.py's to rounding
@njit(nogil=True, cache=True, boundscheck=False, error_model="numpy", fastmath=True)
def _rls_pass(P, held, r, k):
    """One pass over P's upper triangle (i <= j): P -= held held^T, then k = P r with that P."""
    n = r.shape[0]
    k[:] = 0.0
    for i in range(n):
        a, ri = held[i], r[i]
        row = P[i]
        pii = row[i] - a * held[i]
        row[i] = pii
        acc = pii * ri
        for j in range(i + 1, n):
            pij = row[j] - a * held[j]
            row[j] = pij
            acc += pij * r[j]
            k[j] += pij * ri
        k[i] += acc


@_compiled
def _rls_update(P, phi, phi_fast, r, z, target, k, held):
    """rls.py's update of one point on P's upper triangle, with the previous update's rank-one
    term `held` (s, or zeros) applied in the same pass: k = P r; c = 1/(1 + r.k); phi -= c k e^T,
    e = z - target; and this update's s = sqrt(c) k is left in `held` for the next pass."""
    n = r.shape[0]
    _rls_pass(P, held, r, k)
    rk = 0.0
    for i in range(n):
        rk += r[i] * k[i]
    c = 1.0 / (1.0 + rk)
    root = np.sqrt(c)
    for i in range(n):
        held[i] = k[i] * root
    for j in range(phi.shape[1]):
        e = np.float64(z[j]) - target[j]
        for i in range(n):
            phi[i, j] = phi[i, j] - (c * k[i]) * e
            phi_fast[i, j] = phi[i, j]


@_compiled
def _drive(out, z, eta0, q, bias, inputs, has_inputs):
    """eta z + bias (+ the input's encoded drive) of one point: networks.encoded."""
    n, outputs = eta0.shape
    for i in range(n):
        acc = z[0] * eta0[i, 0]
        for j in range(1, outputs):
            acc = acc + z[j] * eta0[i, j]
        out[i] = acc * q + bias
        if has_inputs:
            out[i] = out[i] + inputs[i]


@_compiled
def _readout(z, r, phi_fast):
    for j in range(phi_fast.shape[1]):
        acc = z[j] * 0
        for i in range(r.shape[0]):
            acc += r[i] * phi_fast[i, j]
        z[j] = acc


@_compiled
def _lif_points(b0, b1, start, stop, phase_start, every, learning, v, ref, ipsc, h, r, hr, z, columns, eta0,
                g_jump, q, const, inputs, has_inputs, phi_fast, P, phi, target, outputs, held, r64, blas):
    """Steps [start, stop) of points [b0, b1) of the LIF network; returns the RLS updates made."""
    n = v.shape[1]
    dtype = v.dtype.type
    dt, decay_r, decay_d, jump = dtype(const[DT]), dtype(const[DECAY_R]), dtype(const[DECAY_D]), dtype(const[JUMP])
    kdv, v_reset, v_peak = dtype(const[KDV]), dtype(const[V_RESET]), dtype(const[V_PEAK])
    bias, ref_steps = dtype(const[BIAS]), dtype(const[REF_STEPS])
    drive = np.empty(n, v.dtype)
    acc = np.empty(n, v.dtype)
    fired = np.empty(n, np.int64)
    k = np.empty(n)
    updates = 0
    for b in range(b0, b1):
        updates = 0
        vb, refb, ipscb, hb, rb, hrb, zb = v[b], ref[b], ipsc[b], h[b], r[b], hr[b], z[b]
        for t in range(start, stop):
            _drive(drive, zb, eta0, q[b], bias, inputs[t - start], has_inputs)
            count = 0
            for i in range(n):
                # membrane: lerp towards the current, held at reset while refractory
                vi = vb[i] + kdv * ((ipscb[i] + drive[i]) - vb[i])
                if refb[i] > 0:
                    vi = v_reset
                refb[i] = max(refb[i] - 1, dtype(0))
                # filters: each rise stage integrates its decay stage's value from before this step
                ipscb[i] = ipscb[i] * decay_r + dt * hb[i]
                hb[i] = hb[i] * decay_d
                rb[i] = rb[i] * decay_r + dt * hrb[i]
                if vi >= v_peak:
                    hrb[i] = hrb[i] * decay_d + jump
                    vi = v_reset
                    refb[i] = ref_steps
                    fired[count] = i
                    count += 1
                else:
                    hrb[i] = hrb[i] * decay_d
                vb[i] = vi
            if count:  # only the spiking cells' columns of omega0
                row = columns[fired[0]]
                for i in range(n):
                    acc[i] = row[i]
                for f in range(1, count):
                    row = columns[fired[f]]
                    for i in range(n):
                        acc[i] += row[i]
                gj = g_jump[b]
                for i in range(n):
                    hb[i] = hb[i] + acc[i] * gj
            _readout(zb, rb, phi_fast[b])
            outputs[t - start, b] = zb
            if learning and (t - phase_start) % every == 0:
                for i in range(n):
                    r64[i] = rb[i]
                _rls_update(P[b], phi[b], phi_fast[b], r64, zb, target[t], k, held[b])
                updates += 1
    return updates


@_compiled
def _rate_points(b0, b1, start, stop, phase_start, every, learning, r, hr, z, omega0, eta0, g, q, const, inputs,
                 has_inputs, phi_fast, P, phi, target, outputs, held, r64, blas):
    """Steps [start, stop) of points [b0, b1) of the rate twin, in lockstep; returns the RLS updates made."""
    n = r.shape[1]
    dtype = r.dtype.type
    dt, decay_r, decay_d = dtype(const[DT]), dtype(const[DECAY_R]), dtype(const[DECAY_D])
    v_reset, v_peak, bias = dtype(const[V_RESET]), dtype(const[V_PEAK]), dtype(const[BIAS])
    tau_m, tau_ref, rate_jump = dtype(const[TAU_M]), dtype(const[TAU_REF]), dtype(const[RATE_JUMP])
    span = v_peak - v_reset
    drive = np.empty(n, r.dtype)
    k = np.empty(n)
    recurrent = np.empty((b1 - b0, n), r.dtype)
    gemm_ints, gemm_scalars = np.empty(2, np.int32), np.empty(2, r.dtype)
    trans = np.empty(2, np.uint8)
    trans[0], trans[1] = 84, 78  # 'T', 'N'
    updates = 0
    for t in range(start, stop):
        # (b1 - b0, N): the range's omega0 r in one BLAS product
        _recurrent(recurrent, r[b0:b1], omega0, trans, blas, gemm_ints, gemm_scalars)
        for b in range(b0, b1):
            rb, hrb, zb, gb = r[b], hr[b], z[b], g[b]
            _drive(drive, zb, eta0, q[b], bias, inputs[t - start], has_inputs)
            for i in range(n):
                current = drive[i] + recurrent[b - b0, i] * gb
                above = max(current - v_peak, dtype(0))
                # at or below threshold the reference's 1 / (log1p(span / 0) tau_m + tau_ref) is exactly 0:
                # about half the cells at the study's points, so the log is skipped for them
                rate = dtype(1) / (np.log1p(span / above) * tau_m + tau_ref) if above > 0 else dtype(0)
                rb[i] = rb[i] * decay_r + dt * hrb[i]
                hrb[i] = hrb[i] * decay_d + rate_jump * rate
            _readout(zb, rb, phi_fast[b])
            outputs[t - start, b] = zb
        if learning and (t - phase_start) % every == 0:
            for b in range(b0, b1):
                for i in range(n):
                    r64[i] = r[b, i]
                _rls_update(P[b], phi[b], phi_fast[b], r64, z[b], target[t], k, held[b])
            updates += 1
    return updates


@_compiled
def _finish(P, held):
    """P -= held held^T on the upper triangle (the last update's rank-one term), then P[j, i] =
    P[i, j] for i < j: the triangle the updates did not keep. In tiles of 64 x 64 (a column of P
    is 16 KB apart at N 2000: one cell per cache line without them)."""
    n = P.shape[0]
    for i in range(n):
        a = held[i]
        for j in range(i, n):
            P[i, j] = P[i, j] - a * held[j]
    tile = 64
    for i0 in range(0, n, tile):
        for j0 in range(i0, n, tile):
            for i in range(i0, min(i0 + tile, n)):
                for j in range(max(j0, i + 1), min(j0 + tile, n)):
                    P[j, i] = P[i, j]


# --- the drop-in for simulate.advance --------------------------------------------------------
_columns_cache: dict[int, np.ndarray] = {}
_pools: dict[int, ThreadPoolExecutor] = {}
_lock = threading.Lock()


def _columns(omega0: torch.Tensor) -> np.ndarray:
    """omega0's columns as contiguous rows (omega0^T), once per weights tensor."""
    key = id(omega0)
    with _lock:
        if key not in _columns_cache:
            _columns_cache[key] = np.ascontiguousarray(omega0.numpy().T)
            weakref.finalize(omega0, _columns_cache.pop, key, None)
        return _columns_cache[key]


def _pool(threads: int) -> ThreadPoolExecutor:
    with _lock:
        if threads not in _pools:
            _pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="spikeboard-force")
        return _pools[threads]


_controller = None


def _blas_threads(count: int):
    """A context that sets the BLAS libraries' thread count (threadpoolctl; the
    libraries are looked up once: that costs milliseconds)."""
    global _controller
    from threadpoolctl import ThreadpoolController

    with _lock:
        if _controller is None:
            _controller = ThreadpoolController()
    return _controller.limit(limits=count, user_api="blas")


def _constants(p) -> np.ndarray:
    const = np.zeros(12)
    const[[DT, DECAY_R, DECAY_D, JUMP, KDV, V_RESET, V_PEAK, BIAS, TAU_M, TAU_REF, REF_STEPS, RATE_JUMP]] = [
        p.dt, p.decay_r, p.decay_d, p.jump, p.dt / p.tau_m, p.v_reset, p.v_peak, p.bias, p.tau_m, p.tau_ref,
        p.ref_steps, p.jump * p.dt]
    return const


def _boundaries(start: int, stop: int, every: int, tick_steps: int, per_update: bool) -> list[int]:
    """Chunk ends: every TICK_STEPS of the run (progress, stop checks), and with
    `per_update` right after each RLS update (a sample of r is taken there)."""
    ends = {stop} | set(range((start // tick_steps + 1) * tick_steps, stop, tick_steps))
    if per_update:
        ends |= set(range(start + 1, stop, every))
    return sorted(ends)


def advance_compiled(network: str, setup, state, z: torch.Tensor, phi: torch.Tensor, start: int, stop: int,
                     outputs: torch.Tensor, tick=None, rls: RLSState | None = None, samples: list | None = None):
    """simulate.advance, compiled: steps [start, stop) from `state` (not modified),
    readouts into `outputs[i - start]`, RLS every `update_every` steps from `start` with `rls`."""
    from engine.force.simulate import TICK_STEPS

    c, w, p = setup.config, setup.weights, setup.params
    dtype = c.torch_dtype
    batch = setup.batch
    state = type(state)(*(x.detach().to("cpu", dtype).clone().contiguous() for x in state))
    arrays = [x.numpy() for x in state]
    z = z.detach().to(dtype).clone().contiguous()
    z_np = z.numpy()
    learning = rls is not None
    if learning:
        P, phi64 = rls.P, rls.phi.clone().contiguous()
    else:
        P, phi64 = torch.zeros(batch, 1, 1, dtype=torch.float64), phi.to(torch.float64).clone().contiguous()
    phi_fast = phi64.to(dtype).contiguous()
    P_np, phi_np, phi_fast_np = P.numpy(), phi64.numpy(), phi_fast.numpy()
    out_np = outputs.numpy()
    target = setup.target.numpy()
    eta0 = w.eta0.numpy()
    const = _constants(p)
    q, g = p.q.numpy(), p.g.numpy()
    r64 = np.empty(c.n)
    held = np.zeros((batch, c.n) if learning else (batch, 1))  # each point's rank-one term not yet in P
    updates = 0
    # Ranges of points on threads; BLAS on one thread each (nested BLAS threads on
    # a busy machine made a product 10x slower, measured), never more threads than cores.
    torch_threads = torch.get_num_threads()
    threads = max(1, min(torch_threads, batch))
    bounds = [round(batch * i / threads) for i in range(threads + 1)]
    ends = _boundaries(start, stop, c.update_every, TICK_STEPS, samples is not None and learning)
    kernel = _lif_points if network == "lif" else _rate_points
    blas = _blas_table(eta0.dtype)
    weights = _columns(w.omega0) if network == "lif" else w.omega0.numpy()
    extra = (p.jump_g.numpy(), q) if network == "lif" else (g, q)
    torch.set_num_threads(1)  # MKL's threads (the rate twin's product): each range runs on one core
    try:
        with _blas_threads(1):
            a = start
            for b_end in ends:
                if setup.inputs is None:
                    inputs, has_inputs = np.zeros((b_end - a, 1), dtype=eta0.dtype), False
                else:
                    u = setup.inputs[a:b_end].numpy()
                    inputs, has_inputs = np.ascontiguousarray(p.input_gain * (u @ w.eta_in0.numpy().T)), True
                args = (a, b_end, start, c.update_every, learning, *arrays, z_np, weights, eta0, *extra, const, inputs,
                        has_inputs, phi_fast_np, P_np, phi_np, target, out_np[a - start:b_end - start], held)
                if threads == 1:
                    made = [kernel(0, batch, *args, r64, blas)]
                else:
                    futures = [_pool(threads).submit(kernel, b0, b1, *args, np.empty(c.n), blas)
                               for b0, b1 in itertools.pairwise(bounds)]
                    made = [f.result() for f in futures]
                updates += made[0]
                if samples is not None and learning and (b_end - 1 - start) % c.update_every == 0:
                    samples.append(state.r.clone())
                a = b_end
                if tick is not None and b_end % TICK_STEPS == 0:
                    tick(b_end)
    finally:
        torch.set_num_threads(torch_threads)
    if learning:
        if updates:
            for b in range(batch):
                _finish(P_np[b], held[b])
        rls = RLSState(P, phi64, rls.updates + updates)
    return state, z, rls
