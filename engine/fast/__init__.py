"""The fast backend: event-driven input, sparse recurrence, a fused BPTT time loop.

Same contract and step conventions as `engine.reference` (MODEL.md "Step
conventions"); in float64 it returns the reference's spikes exactly and its
gradients to rounding. What makes it fast (issue 6):

- E and I share one state tensor [B, N] (N = n_e + n_i) and one conductance
  tensor [B, M] laid out as [AMPA of E | AMPA of I | GABA of E] (M = N + n_e;
  I has no GABA input), so each step is about 25 tensor ops for both populations.
- Input spikes are events: per chunk of K steps, the W_in rows of the channels
  that spiked are index-added into a [K, B, M] arrival buffer. W_in's gradient is
  index-added back onto only those rows.
- E->I and I->E arrivals are the W_ei / W_ie rows of the cells that spiked on the
  previous step (index_add), not dense products.
- A custom autograd Function keeps only bool spikes and the state every K steps
  (the compiled CPU loops, engine.fast.cpu, only the state); backward recomputes
  one chunk's voltages and conductances from its checkpoint and runs the
  hand-written adjoint (engine.fast.adjoint) in reverse.
- The canonical readout is linear: the time-mean of u is (sum_t c_t s_e[t]) @ W_out / T
  with c_t = sum_{k < T-t} exp(-dt/tau_out)^k, so it is computed from one filtered
  spike count by autograd outside the Function. The seed recipe's output LIF
  (subtract reset) is not: the loop returns its drive r_t = s_e[t] @ W_out
  [T, B, n_out], and autograd runs the readout on that outside the Function.

Both recipes (MODEL.md, last section): the seed recipe's options are flags of
common.Variant. The compiled CPU loop and the torch-op loop run them all; the
Triton kernels do not (engine.config.FAST_TRITON_SUPPORTED): a single
GPU run of such a model takes the torch-op loop, packed runs refuse it with a ConfigError.

One module per loop family, no import cycle (each imports only those above it):

    common      params, input events, checkpoints, output gradients (all families)
    adjoint     the adjoint's notation, spike events, weight-gradient accumulation
    torch_ops   the loop as torch tensor ops: any device, the readable version
    cpu_kernels the compiled CPU loops (numba); cpu drives them over sample ranges
    gpu_kernels the Triton kernels (one program per sample); gpu launches them per chunk
    network     FusedNetwork (the autograd Function) and simulate_fast: picks the loop
"""


from engine.fast.common import FastParams, check_supported, fast_params
from engine.fast.network import LOOPS, PER_RUN_FIELDS, FusedNetwork, loop_family, simulate_fast, simulate_fast_runs

__all__ = ["LOOPS", "PER_RUN_FIELDS", "FastParams", "FusedNetwork", "check_supported", "fast_params", "loop_family",
           "simulate_fast", "simulate_fast_runs"]
