"""FusedNetwork, the fast backend's autograd Function, and simulate_fast: which time loop runs.

On CPU the compiled loops (engine.fast.cpu); on a GPU the Triton kernels
(engine.fast.gpu); the torch-op loop (engine.fast.torch_ops) runs anywhere and is
the GPU's fallback and the bench's baseline. Each keeps what backward needs in ctx
and recomputes the rest chunk by chunk.
"""

from __future__ import annotations

import torch

from engine.config import Config, ConfigError
from engine.encoding import InputEvents
from engine.fast import torch_ops
from engine.fast.common import ArrivalEvents, FastParams, OutputGrads, check_loop_runs, check_supported, \
    chunk_bounds, fast_params, input_events, recurrence, spike_outputs, triton_runs
from engine.reference import NetworkParams, lif_readout_step, network_params
from engine.weights import Weights


class FusedNetwork(torch.autograd.Function):
    """(W_in, W_ei, W_ie, W_out) -> (s_e, s_i, count_e, count_i, sum_t c_t s_e[t], drive, v_e, v_i)
    with a hand-written BPTT; s_e / s_i are empty unless `trains`, v_e / v_i unless
    `record_voltage`, drive (the output LIF's s_e[t] @ W_out, [T, B, n_out]) unless
    p.variant.lif_readout. W_in comes unclamped (the Function splits it by sign,
    or clamps it under Dale's constraint); W_out as the readout uses it. `loop` is
    one of LOOPS (loop_family)."""

    @staticmethod
    def forward(ctx, w_in, w_ei, w_ie, w_out, ev: ArrivalEvents, batch: int, p: FastParams,
                trains: bool, record_voltage: bool, loop: str = "torch_ops"):
        rec = recurrence(w_ei, w_ie)
        drive = None
        if loop == "compiled":
            from engine.fast.cpu import run_forward as run_compiled

            (s_e, s_i), (count_e, count_i), filtered, saved, voltages, drive = run_compiled(
                w_in, rec, ev, batch, p, trains, record_voltage, w_out)
            spikes = None  # the compiled backward recomputes them from `saved`
        elif loop == "triton":
            from engine.fast import gpu

            spikes, starts, voltages, inputs = gpu.run_forward(w_in, rec, ev, batch, p, record_voltage)
            saved = (starts, inputs)
            (s_e, s_i), (count_e, count_i), filtered = spike_outputs(spikes, p, w_in.dtype, trains)
        else:
            spikes, saved, voltages = torch_ops.run_forward(w_in, rec, ev, batch, p, record_voltage)
            (s_e, s_i), (count_e, count_i), filtered = spike_outputs(spikes, p, w_in.dtype, trains)
            if p.variant.lif_readout:
                drive = torch_ops.readout_drive(spikes, w_out.detach(), p)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(w_in, w_ei, w_ie, w_out)
        ctx.spikes, ctx.saved, ctx.events, ctx.params, ctx.loop = spikes, saved, ev, p, loop
        empty = w_in.new_empty(0)
        s_e, s_i = (s_e, s_i) if trains else (empty, empty.clone())
        v_e = voltages[:, :, :p.n_e] if voltages is not None else empty.clone()
        v_i = voltages[:, :, p.n_e:] if voltages is not None else empty.clone()
        ctx.mark_non_differentiable(v_e, v_i)
        drive = drive if drive is not None else empty.clone()
        return s_e, s_i, count_e, count_i, filtered, drive, v_e, v_i

    @staticmethod
    def backward(ctx, grad_s_e, grad_s_i, grad_count_e, grad_count_i, grad_filtered, grad_drive,
                 _grad_v_e, _grad_v_i):
        w_in, w_ei, w_ie, w_out = ctx.saved_tensors
        need = ctx.needs_input_grad[:4]
        trains = grad_s_e is not None and grad_s_e.numel() > 0, grad_s_i is not None and grad_s_i.numel() > 0
        grad_drive = grad_drive if grad_drive is not None and grad_drive.numel() > 0 else None
        out_grads = OutputGrads(grad_s_e if trains[0] else None, grad_s_i if trains[1] else None,
                                grad_count_e, grad_count_i, grad_filtered, grad_drive)
        if ctx.loop == "compiled":
            from engine.fast.cpu import network_backward as compiled_backward

            grads = compiled_backward(w_in, w_ei, w_ie, ctx.saved, ctx.events, ctx.params, out_grads, need, w_out)
        elif ctx.loop == "triton":
            from engine.fast import gpu

            grads = (*gpu.network_backward(w_in, w_ei, w_ie, ctx.spikes, ctx.saved, ctx.events, ctx.params,
                                           out_grads, need[:3]), None)
        else:
            grads = torch_ops.network_backward(w_in, w_ei, w_ie, ctx.spikes, ctx.saved, ctx.events, ctx.params,
                                               out_grads, need, w_out)
        return (*grads, None, None, None, None, None, None)


def lif_readout_logits(drive: torch.Tensor, p: NetworkParams) -> torch.Tensor:
    """The output-LIF readout's logits (engine.reference.readout_step, lif_mem_mean)
    from its drive r_t = s_e[t] @ W_out [T, B, n_out]: the time-mean of each step's
    membrane before the subtract reset, with autograd through the reset."""
    u = drive.new_zeros(drive.shape[1:])
    u_sum = torch.zeros_like(u)
    for r_t in drive.unbind(0):
        u, u_read = lif_readout_step(u, r_t, p)
        u_sum = u_sum + u_read
    return u_sum / drive.shape[0]


# The time loops: compiled CPU loops (engine.fast.cpu), Triton kernels (engine.fast.gpu),
# torch tensor ops (engine.fast.torch_ops, any device).
LOOPS = ("compiled", "triton", "torch_ops")


def loop_family(device: torch.device) -> str:
    """Which time loop runs on `device`: compiled on CPU, Triton on a GPU (the torch-op
    loop where Triton is missing)."""
    if device.type == "cpu":
        return "compiled"
    return "triton" if _has_triton() else "torch_ops"


def _has_triton() -> bool:
    try:
        import triton  # noqa: F401  (ships with CUDA builds of torch)
    except ImportError:
        return False
    return True


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
    loop = loop_family(device)
    if loop == "triton" and not triton_runs(config):
        loop = "torch_ops"  # the GPU's fallback runs every option of both recipes
    check_loop_runs(config, loop)
    p = fast_params(config, steps, batch, device, dtype, chunk_elements=_chunk_elements(loop))
    ev = input_events(input_spikes.to(device), p)
    w_out = w["W_out"].clamp(min=0) if "W_out" in config.dale_weights else w["W_out"]  # Dale: as the reference
    s_e, s_i, count_e, count_i, filtered, drive, v_e, v_i = FusedNetwork.apply(
        w["W_in"], w["W_ei"], w["W_ie"], w_out, ev, batch, p, spike_trains, record_voltage, loop)
    if p.variant.lif_readout:
        logits = lif_readout_logits(drive, network_params(config))
    else:  # linear: the time-mean of u from one filtered count (engine.fast's docstring)
        logits = (filtered @ w_out) / steps
    out = {"count_e": count_e, "count_i": count_i, "logits": logits}
    if spike_trains:
        out["s_e"], out["s_i"] = s_e, s_i
    if record_voltage:
        out["v_e"], out["v_i"] = v_e, v_i
    return out


def simulate_fast_runs(weights: list[Weights], inputs: list[torch.Tensor | InputEvents], configs: list[Config],
                       record_voltage: bool = False, spike_trains: bool = True) -> list[dict[str, torch.Tensor]]:
    """K packed runs through one set of Triton launches (the run axis): simulate_fast's
    result for each, from each run's own weights, input and config.

    The K x B samples are the kernels' programs; each run's weights, gradients and
    v_grad_dampen are its own. The configs must agree on everything but
    PER_RUN_FIELDS (checked here), and the
    inputs on their shape [T, B, n_input].
    """
    config = configs[0]
    check_supported(config)
    check_loop_runs(config, "triton")
    check_packable(configs)
    if len({tuple(x.shape) for x in inputs}) != 1:
        raise ConfigError("inputs", "packed runs need inputs of one shape [T, B, n_input]")
    dtype, device = config.torch_dtype, config.torch_device
    runs, (steps, batch, n_input) = len(configs), tuple(inputs[0].shape)
    w = {name: torch.stack([run[name].to(device=device, dtype=dtype) for run in weights])
         for name in ("W_in", "W_ei", "W_ie", "W_out")}
    p = fast_params(config, steps, runs * batch, device, dtype, chunk_elements=_chunk_elements("triton"))
    p = p._replace(v_grad_dampen=tuple(float(c.v_grad_dampen) for c in configs))
    ev = _packed_events([input_events(x.to(device), p) for x in inputs], batch, n_input, p)
    s_e, s_i, count_e, count_i, filtered, _drive, v_e, v_i = FusedNetwork.apply(
        w["W_in"], w["W_ei"], w["W_ie"], w["W_out"], ev, runs * batch, p, spike_trains, record_voltage, "triton")
    outs = []
    for r in range(runs):
        samples = slice(r * batch, (r + 1) * batch)
        out = {"count_e": count_e[samples], "count_i": count_i[samples],
               "logits": (filtered[samples] @ w["W_out"][r]) / steps}
        if spike_trains:
            out["s_e"], out["s_i"] = s_e[:, samples], s_i[:, samples]
        if record_voltage:
            out["v_e"], out["v_i"] = v_e[:, samples], v_i[:, samples]
        outs.append(out)
    return outs


# Config fields that packed runs may differ in: they set each run's initial weights
# (seed, arch and the connectivity they resolve), the adjoint's per-cell scale
# (v_grad_dampen) or its own optimizer and loss terms. The scheduler's packing
# (jobs.packing) uses the same set.
PER_RUN_FIELDS = frozenset({
    "seed", "arch", "w_in_sparsity", "w_in_scale", "p_ei", "ei_strength", "p_ie", "ie_strength",
    "w_out_std", "v_grad_dampen", "lr", "grad_clip", "rate_reg_weight", "rate_target_hz",
})


def check_packable(configs: list[Config]) -> None:
    """Packed runs agree on everything but PER_RUN_FIELDS (a ConfigError names the first field that differs)."""
    shared = {name: value for name, value in configs[0].to_dict().items() if name not in PER_RUN_FIELDS}
    for other in configs[1:]:
        differ = sorted(name for name, value in other.to_dict().items()
                        if name not in PER_RUN_FIELDS and shared[name] != value)
        if differ:
            raise ConfigError(differ[0], f"packed runs must agree on {differ}")


def _packed_events(events: list[ArrivalEvents], batch: int, n_input: int, p: FastParams) -> ArrivalEvents:
    """Each run's events as one batch of K x B samples, channels counted from r * n_input
    (the rows of the stacked W_in), sorted by (step, sample, channel) as input_events sorts."""
    runs = len(events)
    step = torch.cat([ev.step for ev in events])
    sample = torch.cat([ev.sample + r * batch for r, ev in enumerate(events)])
    channel = torch.cat([ev.channel + r * n_input for r, ev in enumerate(events)])
    order = torch.argsort((step * (runs * batch) + sample) * (runs * n_input) + channel)
    step = step[order]
    return ArrivalEvents(step, sample[order], channel[order], chunk_bounds(step, p))


def _chunk_elements(loop: str) -> int | None:
    """The Triton loop's longer chunks (engine.fast.gpu.GPU_CHUNK_ELEMENTS); the others' default."""
    if loop != "triton":
        return None
    from engine.fast.gpu import GPU_CHUNK_ELEMENTS

    return GPU_CHUNK_ELEMENTS
