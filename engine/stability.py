"""Forward Euler's stable range, checked on a network's own conductances.

The canonical recipe integrates the membrane with forward Euler (MODEL.md). With
the conductances held over a step, V moves towards V_inf = (g_L E_L + g_ampa E_ampa +
g_gaba E_gaba) / g_tot, and one step multiplies the distance by (1 - h), where

    h = dt g_tot / C,   g_tot = g_L + g_ampa + g_gaba.

For h > 1 a step overshoots V_inf, and for h >= 2 the distance grows every step: the
voltage oscillates with growing amplitude and the cell fires from the numerics, not
from its inputs. Strong coupling (a coupling sweep's corner, a what-if at x8) gets
there: the rates it reports are then the integrator's. The exponential Euler is
exact for held conductances and stable for any h; this check does not apply to it.

`forward_euler_check` runs the reference loop (engine.reference, the executable
spec) over a few test images with the spikes the evaluation draws for them, and
reports the largest h and the share of (image, cell, step) triples at h >= 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from engine.config import Config
from engine.data import Split
from engine.encoding import test_input_events
from engine.reference import forward_weights, initial_state, network_params, network_step
from engine.weights import Weights

UNSTABLE_STEP_FACTOR = 2.0  # h at and above which forward Euler's error grows every step
# test images the check simulates: the reference loop costs about a second per image and
# 200 ms trial on 2 cores, as much as the sweep's own evaluation of 400 images (fast backend)
CHECK_SAMPLES = 2


@dataclass(frozen=True)
class EulerCheck:
    step_factor_max: float  # largest h = dt g_tot / C over images, E and I cells and steps
    unstable_share: float  # share of (image, cell, step) with h >= UNSTABLE_STEP_FACTOR
    samples: int

    @property
    def unstable(self) -> bool:
        return self.step_factor_max >= UNSTABLE_STEP_FACTOR


def step_factor(g_ampa: torch.Tensor, g_gaba: torch.Tensor, p) -> torch.Tensor:
    """h = dt (g_L + g_ampa + g_gaba) / C of each cell (p: engine.cells.CobaParams)."""
    return p.dt_ms * (p.g_l + (g_ampa + g_gaba)) / p.capacitance


class CheckStopped(Exception):
    """`should_stop` ended a check before its last step (nothing to report)."""


@torch.no_grad()
def forward_euler_check(weights: Weights, split: Split, config: Config, samples: int = CHECK_SAMPLES,
                        tag: str = "test", should_stop: Callable[[], bool] | None = None) -> EulerCheck | None:
    """h over the first `samples` images of `split` (their evaluation spikes); None where the
    run does not integrate with forward Euler or the split is empty. `should_stop`, asked
    every step, ends it early with CheckStopped (the What-if page's slider moved on)."""
    p = network_params(config)
    count = min(samples, len(split.labels))
    if p.e.integrator != "forward_euler" or count == 0:
        return None
    index = torch.arange(count)
    x = test_input_events(split.images[index], split.image_ids(index), config, tag).to_dense(config.torch_dtype)
    w = forward_weights(weights, config)
    state = initial_state(count, config, p)
    # on the run's device, read once at the end (no sync per step on a GPU)
    largest = torch.zeros((), dtype=torch.float64, device=x.device)
    unstable = torch.zeros((), dtype=torch.int64, device=x.device)
    for x_t in x.unbind(0):
        if should_stop is not None and should_stop():
            raise CheckStopped("stopped before the trial's end")
        _, _, state = network_step(state, x_t, w, p)
        for cells, params in ((state.e, p.e), (state.i, p.i)):
            h = step_factor(cells.g_ampa, cells.g_gaba, params)
            largest = torch.maximum(largest, h.max().to(torch.float64))
            unstable = unstable + (h >= UNSTABLE_STEP_FACTOR).sum()
    triples = x.shape[0] * count * (config.n_e + config.n_i)
    return EulerCheck(step_factor_max=float(largest), unstable_share=float(unstable) / triples, samples=count)
