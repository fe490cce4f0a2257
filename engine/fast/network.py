"""FusedNetwork, the fast backend's autograd Function, and simulate_fast: which time loop runs.

On CPU the compiled loops (engine.fast.cpu); elsewhere the torch-op loop
(engine.fast.torch_ops). Both keep what backward needs in ctx and recompute the
rest chunk by chunk.
"""

from __future__ import annotations

import torch

from engine.config import Config
from engine.encoding import InputEvents
from engine.fast import torch_ops
from engine.fast.common import ArrivalEvents, FastParams, OutputGrads, check_supported, fast_params, \
    input_events, recurrence, spike_outputs
from engine.weights import Weights


class FusedNetwork(torch.autograd.Function):
    """(W_in, W_ei, W_ie) -> (s_e, s_i, count_e, count_i, sum_t c_t s_e[t], v_e, v_i)
    with a hand-written BPTT; s_e / s_i are empty unless `trains`, v_e / v_i unless
    `record_voltage`."""

    @staticmethod
    def forward(ctx, w_in, w_ei, w_ie, ev: ArrivalEvents, batch: int, p: FastParams,
                trains: bool, record_voltage: bool):
        rec = recurrence(w_ei, w_ie)
        compiled = compiled_loops(w_in.device)
        if compiled:
            from engine.fast.cpu import run_forward as run_compiled

            (s_e, s_i), (count_e, count_i), filtered, saved, voltages = run_compiled(
                w_in, rec, ev, batch, p, trains, record_voltage)
            spikes = None  # the compiled backward recomputes them from `saved`
        else:
            spikes, saved, voltages = torch_ops.run_forward(w_in, rec, ev, batch, p, record_voltage)
            (s_e, s_i), (count_e, count_i), filtered = spike_outputs(spikes, p, w_in.dtype, trains)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(w_in, w_ei, w_ie)
        ctx.spikes, ctx.saved, ctx.events, ctx.params, ctx.compiled = spikes, saved, ev, p, compiled
        empty = w_in.new_empty(0)
        s_e, s_i = (s_e, s_i) if trains else (empty, empty.clone())
        v_e = voltages[:, :, :p.n_e] if voltages is not None else empty.clone()
        v_i = voltages[:, :, p.n_e:] if voltages is not None else empty.clone()
        ctx.mark_non_differentiable(v_e, v_i)
        return s_e, s_i, count_e, count_i, filtered, v_e, v_i

    @staticmethod
    def backward(ctx, grad_s_e, grad_s_i, grad_count_e, grad_count_i, grad_filtered, _grad_v_e, _grad_v_i):
        w_in, w_ei, w_ie = ctx.saved_tensors
        need = ctx.needs_input_grad[:3]
        trains = grad_s_e is not None and grad_s_e.numel() > 0, grad_s_i is not None and grad_s_i.numel() > 0
        out_grads = OutputGrads(grad_s_e if trains[0] else None, grad_s_i if trains[1] else None,
                                grad_count_e, grad_count_i, grad_filtered)
        if ctx.compiled:
            from engine.fast.cpu import network_backward as compiled_backward

            grads = compiled_backward(w_in, w_ei, w_ie, ctx.saved, ctx.events, ctx.params, out_grads, need)
        else:
            grads = torch_ops.network_backward(w_in, w_ei, w_ie, ctx.spikes, ctx.saved, ctx.events, ctx.params,
                                     out_grads, need)
        return (*grads, None, None, None, None, None)


def compiled_loops(device: torch.device) -> bool:
    """Whether the time loops run compiled (engine.fast.cpu): on CPU; CUDA keeps torch ops."""
    return device.type == "cpu"


def simulate_fast(weights: Weights, input_spikes: torch.Tensor | InputEvents, config: Config,
                  record_voltage: bool = False, spike_trains: bool = True) -> dict[str, torch.Tensor]:
    """`engine.reference.simulate_reference`'s contract, event-driven and fused.

    s_e / s_i and count_e / count_i are differentiable (surrogate gradient) like the
    reference's, so a rate regulariser on them trains; logits are the time-mean of
    the readout. Without `spike_trains` the [T, B, n] trains are neither built nor
    returned: the counts are all a training step needs.
    """
    check_supported(config)
    dtype, device = config.torch_dtype, config.torch_device
    w = {name: weights[name].to(device=device, dtype=dtype) for name in ("W_in", "W_ei", "W_ie", "W_out")}
    steps, batch = input_spikes.shape[0], input_spikes.shape[1]
    p = fast_params(config, steps, batch, device, dtype)
    ev = input_events(input_spikes.to(device), p)
    s_e, s_i, count_e, count_i, filtered, v_e, v_i = FusedNetwork.apply(
        w["W_in"], w["W_ei"], w["W_ie"], ev, batch, p, spike_trains, record_voltage)
    out = {"count_e": count_e, "count_i": count_i, "logits": (filtered @ w["W_out"]) / steps}
    if spike_trains:
        out["s_e"], out["s_i"] = s_e, s_i
    if record_voltage:
        out["v_e"], out["v_i"] = v_e, v_i
    return out
