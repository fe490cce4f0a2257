"""The fast backend's Triton kernels (engine.fast.gpu) against the reference, on CPU.

TRITON_INTERPRET=1, set before triton is imported, runs the same kernels through
numpy: float64 spikes must equal the reference's and gradients agree to 1e-6
relative, as for the CPU loops (tests/engine/test_fast_equivalence.py). The
interpreter costs about a millisecond per kernel operation, so the networks here
are tiny (16 cells, 12 steps, chunks of 5 steps so that every run crosses chunk
starts) with a strong input and loop, so that E and I both fire. The canonical
network runs in the slow-marked test.

The launch budget is counted too: Triton launches plus torch ops per training
step of the canonical network (batch 64, 2,000 steps) on the GPU code path, against
the issue's 178,000 for the torch-op loop.
"""

from __future__ import annotations

import importlib
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

if not torch.cuda.is_available():  # the interpreter, read when a kernel is defined
    os.environ["TRITON_INTERPRET"] = "1"
    for module in ("engine.fast.gpu_kernels", "engine.fast.gpu"):
        if module in sys.modules:
            importlib.reload(sys.modules[module])

import engine.fast.common  # noqa: E402
import engine.fast.network  # noqa: E402
from engine import Config, init_weights, poisson_events  # noqa: E402
from engine.data import load_tier  # noqa: E402
from engine.fast import gpu, simulate_fast, simulate_fast_runs  # noqa: E402
from engine.reference import simulate_reference  # noqa: E402

ALL_WEIGHTS = ("W_in", "W_ei", "W_ie", "W_out")
GRAD_RTOL = 1e-6
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# the torch-op loop's count per training step of the canonical network (issue 20)
TORCH_OP_LOOP_LAUNCHES = 178_000

TINY = dict(n_e=12, n_i=4, n_input=20, ei_strength=2.0, ie_strength=0.5, t_ms=1.2, dtype="float64",
            trainable=ALL_WEIGHTS, device=DEVICE)


@pytest.fixture(autouse=True)
def short_chunks(monkeypatch):
    """Chunks of 5 steps: the 12-step trials cross two chunk starts (and holds span them)."""
    monkeypatch.setattr(engine.fast.common, "_MAX_CHUNK_STEPS", 5)


@pytest.fixture
def triton_loop(monkeypatch):
    monkeypatch.setattr(engine.fast.network, "loop_family", lambda device: "triton")


def tiny_weights(config: Config) -> dict[str, torch.Tensor]:
    """Strong signed input (some W_in entries negative: GABA input) so both populations fire."""
    w = init_weights(config)
    sign = torch.where(torch.rand(w["W_in"].shape, generator=torch.Generator().manual_seed(5)) < 0.3, -1.0, 1.0)
    w["W_in"] = 20.0 * w["W_in"] * sign.to(w["W_in"])
    return w


def tiny_input(config: Config, batch: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(config.n_steps, batch, config.n_input, generator=gen) < 0.3).to(config.torch_dtype)


def on_cpu(config: Config) -> Config:
    """The reference runs on CPU (the spec's arithmetic, whatever the device under test)."""
    return Config.from_dict({**config.to_dict(), "device": "cpu"})


def run(backend, config: Config, x, labels, weights, record_voltage=False):
    device = config.torch_device
    w = {name: t.clone().to(device) for name, t in weights.items()}
    for name in config.trainable:
        w[name].requires_grad_(True)
    out = backend(w, x.to(device), config, record_voltage=record_voltage)
    out = {name: t.cpu() for name, t in out.items()}
    loss = (F.cross_entropy(out["logits"], labels.cpu()) + 0.01 * out["s_e"].sum(0).mean()
            + 0.01 * out["s_i"].sum(0).mean() + 0.003 * out["count_e"].pow(2).mean()
            + 0.002 * out["count_i"].mean())
    loss.backward()
    grads = {name: (w[name].grad if w[name].grad is not None else torch.zeros_like(w[name])).cpu()
             for name in config.trainable}
    return out, grads


def assert_matches_reference(config: Config, batch: int = 1, record_voltage: bool = False, weights=None):
    weights = weights if weights is not None else tiny_weights(config)
    x = tiny_input(config, batch)
    labels = torch.arange(batch) % config.n_out
    ref, ref_grads = run(simulate_reference, on_cpu(config), x, labels, weights, record_voltage)
    fast, grads = run(simulate_fast, config, x, labels, weights, record_voltage)
    assert ref["s_e"].sum() > 0 and torch.equal(fast["s_e"], ref["s_e"]), "E spikes differ"
    assert torch.equal(fast["s_i"], ref["s_i"]), "I spikes differ"
    torch.testing.assert_close(fast["logits"], ref["logits"], rtol=1e-10, atol=1e-12)
    if record_voltage:
        assert torch.equal(fast["v_e"], ref["v_e"]) and torch.equal(fast["v_i"], ref["v_i"])
    for name in config.trainable:
        reference = ref_grads[name]
        assert torch.isfinite(grads[name]).all(), name
        if reference.norm() == 0:
            assert grads[name].norm() == 0, name
            continue
        rel = float((grads[name] - reference).norm() / reference.norm())
        assert rel < GRAD_RTOL, f"{name}: relative gradient error {rel:.2e}"
    return ref


def test_ping_spikes_voltages_and_gradients_equal_the_reference(triton_loop):
    """Two samples (two programs), voltages recorded, every weight trainable."""
    ref = assert_matches_reference(Config(**TINY), batch=2, record_voltage=True)
    assert ref["s_i"].sum() > 0, "the I cells must fire for the E->I / I->E paths to be checked"


@pytest.mark.parametrize("changes", [
    {"arch": "coba", "ei_strength": 0.0},
    {"detach_reset": False, "v_grad_dampen": 1.0},
    {"detach_recurrent": True, "beta": 5.0},
    {"trainable": ("W_in",)},
    {"trainable": ("W_ei", "W_ie", "W_out")},
], ids=["coba", "keep_reset_undamped", "detach_recurrent", "train_W_in", "train_recurrent_readout"])
def test_flags_and_trainable_sets_equal_the_reference(triton_loop, changes):
    assert_matches_reference(Config(**{**TINY, **changes}))


def test_float32_matches_the_compiled_cpu_loops(triton_loop, monkeypatch):
    """float32: the same spikes as the compiled CPU loops (same operation order, no FMA),
    gradients to float32 rounding."""
    config = Config(**{**TINY, "dtype": "float32"})
    weights = tiny_weights(config)
    x, labels = tiny_input(config, 2), torch.tensor([0, 1])
    fast, grads = run(simulate_fast, config, x, labels, weights)
    monkeypatch.setattr(engine.fast.network, "loop_family", lambda device: "compiled")
    cpu, cpu_grads = run(simulate_fast, on_cpu(config), x, labels, weights)
    assert fast["s_e"].dtype == torch.float32 and fast["s_e"].sum() > 0
    assert torch.equal(fast["s_e"], cpu["s_e"]) and torch.equal(fast["s_i"], cpu["s_i"])
    for name in ALL_WEIGHTS:
        rel = float((grads[name] - cpu_grads[name]).norm() / cpu_grads[name].norm())
        assert rel < 1e-5, f"{name}: {rel:.1e}"


def test_packed_runs_each_equal_the_reference():
    """The run axis: a PING and a COBA run (own seeds, weights, v_grad_dampen and input)
    through one set of launches give each run's reference spikes and gradients."""
    configs = [Config(**{**TINY, "seed": 1}), Config(**{**TINY, "arch": "coba", "ei_strength": 0.0, "seed": 2})]
    assert configs[0].v_grad_dampen != configs[1].v_grad_dampen
    weights = [tiny_weights(config) for config in configs]
    inputs = [tiny_input(config, 1, seed=r) for r, config in enumerate(configs)]
    labels = torch.tensor([1])
    leaves = [{name: t.clone().to(DEVICE).requires_grad_(True) for name, t in w.items()} for w in weights]
    with gpu.counting_launches() as launches:
        outs = simulate_fast_runs(leaves, [x.to(DEVICE) for x in inputs], configs)
        sum(F.cross_entropy(out["logits"].cpu(), labels) + 0.01 * out["s_e"].sum(0).mean().cpu()
            for out in outs).backward()
    assert launches.launches == 3 * 3  # one set of launches for both runs
    for config, w, x, out, leaf in zip(configs, weights, inputs, outs, leaves):
        ref_leaf = {name: t.clone().requires_grad_(True) for name, t in w.items()}
        ref = simulate_reference(ref_leaf, x, on_cpu(config))
        (F.cross_entropy(ref["logits"], labels) + 0.01 * ref["s_e"].sum(0).mean()).backward()
        assert ref["s_e"].sum() > 0
        assert torch.equal(out["s_e"].cpu(), ref["s_e"]) and torch.equal(out["s_i"].cpu(), ref["s_i"])
        for name in ALL_WEIGHTS:
            expected = ref_leaf[name].grad if ref_leaf[name].grad is not None else torch.zeros_like(w[name])
            got = leaf[name].grad.cpu()
            assert float((got - expected).norm()) <= GRAD_RTOL * float(expected.norm()), (config.arch, name)


class OpCounter(TorchDispatchMode):
    """Torch ops dispatched, less those the Triton interpreter runs inside a launch."""

    def __init__(self, launches: gpu.LaunchCount):
        super().__init__()
        self.launches, self.ops = launches, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self.launches.inside:
            self.ops += 1
        return func(*args, **(kwargs or {}))


def count_training_step(config: Config, batch: int, dry_run: bool, weights=None, seed: int = 0):
    """(Triton launches, torch ops) of one training step as engine.train runs it."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 784, generator=gen)  # MNIST-sized intensities in [0, 1]
    x = poisson_events(images, config, gen).to(DEVICE)
    labels = (torch.arange(batch) % config.n_out).to(DEVICE)
    weights = weights if weights is not None else init_weights(config)
    for name in config.trainable:
        weights[name].requires_grad_(True)
    with gpu.counting_launches(dry_run) as launches, OpCounter(launches) as ops:
        out = simulate_fast(weights, x, config, spike_trains=False)
        F.cross_entropy(out["logits"], labels).backward()
    return launches.launches, ops.ops


def test_a_dry_run_counts_what_the_kernels_launch(triton_loop):
    """Counting with the kernels skipped (how the canonical network is counted below)
    gives the count of a real run."""
    config = Config(**{**TINY, "n_input": 784, "t_ms": 1.2})
    real = count_training_step(config, batch=1, dry_run=False, weights=tiny_weights(config))
    dry = count_training_step(config, batch=1, dry_run=True, weights=tiny_weights(config))
    assert real == dry and real[0] == 3 * 3  # 3 chunks: forward, recomputation, reverse


def test_canonical_training_step_launches_at_most_one_percent_of_the_torch_op_loop(triton_loop, monkeypatch):
    """2,000 steps, float32, every weight trainable: Triton launches plus torch ops, with
    the GPU's own chunk length. Counted at batch 16, whose chunks are batch 64's (the
    count depends on the batch only through them), in a quarter of the CPU time."""
    monkeypatch.setattr(engine.fast.common, "_MAX_CHUNK_STEPS", 200)
    config = Config(arch="ping", trainable=ALL_WEIGHTS, device=DEVICE)
    chunk = [engine.fast.common.fast_params(config, 2000, batch, "cpu", torch.float32,
                                            gpu.GPU_CHUNK_ELEMENTS).chunk for batch in (16, 64)]
    assert chunk == [200, 200]
    launches, ops = count_training_step(config, batch=16, dry_run=True)
    assert launches == 3 * 10  # 10 chunks of 200 steps: forward, recomputation, reverse
    assert launches + ops <= 0.01 * TORCH_OP_LOOP_LAUNCHES, (launches, ops)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["ping", "coba"])
def test_canonical_network_short_trial_equals_the_reference(triton_loop, monkeypatch, arch):
    """800 E / 200 I, MNIST Poisson input, 30 steps (in the interpreter, minutes)."""
    monkeypatch.setattr(engine.fast.common, "_MAX_CHUNK_STEPS", 16)
    config = Config(arch=arch, dtype="float64", t_ms=3.0, trainable=ALL_WEIGHTS, device=DEVICE)
    images = load_tier("smoke").train
    x = poisson_events(images.images[:1], config, torch.Generator().manual_seed(2)).to_dense(torch.float64)
    labels = images.labels[:1]
    weights = init_weights(config)
    ref, ref_grads = run(simulate_reference, on_cpu(config), x, labels, weights)
    fast, grads = run(simulate_fast, config, x, labels, weights)
    assert ref["s_e"].sum() > 0
    assert torch.equal(fast["s_e"], ref["s_e"]) and torch.equal(fast["s_i"], ref["s_i"])
    for name in ALL_WEIGHTS:
        if ref_grads[name].norm() == 0:
            assert grads[name].norm() == 0, name
            continue
        rel = float((grads[name] - ref_grads[name]).norm() / ref_grads[name].norm())
        assert rel < GRAD_RTOL, f"{name}: {rel:.2e}"


@pytest.mark.slow
def test_packed_training_gives_each_run_its_training_alone(triton_loop, monkeypatch, tmp_path):
    """engine.packed through the run axis: a PING and a COBA run trained as one pack
    (one set of launches per batch) against each trained alone on the Triton loop, two
    epochs of two batches, float64. Spikes equal, so accuracies, rates and active
    fractions are equal; the losses, norms and weights agree to PACKED_RTOL (the pack's
    weight gradients are batched matmuls, the single run's plain ones)."""
    from engine.data import Dataset, Split
    from engine.packed import train_packed
    from engine.rundir import RunDir

    training = importlib.import_module("engine.train")  # the module (engine.train is also the function)
    monkeypatch.setattr(training, "init_weights", tiny_weights)  # E and I both fire
    gen = torch.Generator().manual_seed(3)

    def split(n: int) -> Split:
        return Split(torch.rand(n, 20, generator=gen), torch.arange(n) % 10)

    dataset = Dataset(split(8), split(4), "random")
    tiny = {**TINY, "epochs": 2, "batch_size": 4, "max_rate_hz": 3000.0}
    configs = [Config(**{**tiny, "seed": 1}), Config(**{**tiny, "arch": "coba", "ei_strength": 0.0, "seed": 2})]
    for r, config in enumerate(configs):
        training.train(config, tmp_path / f"alone{r}", dataset=dataset)
    with gpu.counting_launches() as launches:
        outcomes = train_packed(configs, [tmp_path / "pack0", tmp_path / "pack1"], dataset=dataset,
                                shared_launches=True)
    assert all(isinstance(outcome, dict) for outcome in outcomes), outcomes
    # per epoch: 2 batches x 3 chunks x 3 kernels for both runs, then each run's test set (3 chunks)
    assert launches.launches == 2 * (2 * 3 * 3 + 2 * 3)
    for r in range(2):
        alone, packed = RunDir(tmp_path / f"alone{r}"), RunDir(tmp_path / f"pack{r}")
        assert alone.read_metrics()[-1]["rate_e_hz"] > 0
        for want, got in zip(alone.read_metrics(), packed.read_metrics(), strict=True):
            for key in ("epoch", "test_acc", "train_acc", "rate_e_hz", "rate_i_hz", "active_frac_e",
                        "active_frac_i"):
                assert got[key] == want[key], (r, key)
            for key in ("train_loss", "test_loss", "grad_norm"):
                assert got[key] == pytest.approx(want[key], rel=PACKED_RTOL, abs=1e-15), (r, key)
        for name, want in alone.load_weights("final").items():
            got = packed.load_weights("final")[name]
            assert float((got - want).norm()) <= PACKED_RTOL * float(want.norm()), (r, name)


PACKED_RTOL = 1e-9  # float64: two epochs of Adam steps from gradients equal to rounding
