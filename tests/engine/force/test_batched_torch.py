"""The batched torch path (the reference loop, used on CUDA): a step of any number of
(Q, G, alpha) points is a fixed sequence of tensor operations (kernel launches on a
GPU), counted here on the CPU with a dispatch mode, and it never waits for the host."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from engine.force import simulate
from engine.force.config import ForceConfig

CONFIG = {"n": 40, "p": 0.3, "warmup_s": 0.0025, "learn_s": 0.005, "test_s": 0.0025, "dtype": "float64", "backend": "reference",
              "update_every": 10}
SYNCS = {"aten.nonzero.default", "aten._local_scalar_dense.default", "aten.item.default", "aten.is_nonzero.default"}


class _Count(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _gpu_style(setup):
    """The setup as on CUDA (dense spike product), on the CPU."""
    return setup._replace(params=setup.params._replace(dense_spikes=True))


def _ops(network: str, batch: int) -> list[str]:
    config = ForceConfig(**CONFIG)
    setup = _gpu_style(simulate.make_setup(config, [0.5] * batch, [10.0] * batch))
    trained = simulate.learn(network, setup, [1e-3] * batch)  # compile-free warm run: shapes, caches
    with _Count() as count:
        trained = simulate.learn(network, setup, [1e-3] * batch)
        simulate.test(network, setup, trained)
    return count.ops


def test_operations_per_step_do_not_grow_with_the_points():
    config = ForceConfig(**CONFIG)
    for network in ("lif", "rate"):
        one, many = _ops(network, 1), _ops(network, 32)
        assert one == many, network  # the same operations in the same order: O(1) launches in the points
        per_step = len(one) / config.n_steps
        assert per_step < 40, per_step  # measured 32.5 (LIF), a few dozen elementwise ops and products per step
        assert not SYNCS & set(one), SYNCS & set(one)  # nothing that waits for the device


def test_dense_spike_product_matches_the_spiking_columns():
    config = ForceConfig(**CONFIG)
    setup = simulate.make_setup(config, [0.5, 1.0, 1.5], [10.0, 5.0, 20.0])
    sparse = simulate.learn("lif", setup, [1e-3] * 3)
    dense = simulate.learn("lif", _gpu_style(setup), [1e-3] * 3)
    assert sparse.state.r.sum() > 0
    assert torch.equal(sparse.state.ref, dense.state.ref)
    torch.testing.assert_close(dense.outputs, sparse.outputs, rtol=1e-9, atol=1e-12)
