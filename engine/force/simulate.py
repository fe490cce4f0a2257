"""The time loop: warm-up (no learning), learning (RLS every `update_every`
steps), test (learning off), for a batch of (Q, G, alpha) points of one network type.

`make_setup` builds what a batch shares (weights, params, supervisor);
`learn` runs warm-up and learning and returns the post-learning `Trained`
state; `test` runs the test phase from such a state with any decoders (its own,
or the twin's for a transfer). The readout z = phi^T r fed back at step i+1 is
the one computed at step i, before that step's RLS update (as in Nicola &
Clopath's code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch

from engine.force.config import ForceConfig
from engine.force.networks import (ForceParams, ForceWeights, LIFState, RateState, encoded, lif_init, lif_step,
                                   make_params, make_weights, rate_init, rate_step)
from engine.force.rls import RLSState, rls_init, rls_update
from engine.force.supervisors import Supervisor, make_supervisor
from engine.seeding import derive_seed

TICK_STEPS = 2000  # steps between progress reports / stop checks
State = LIFState | RateState


class ForceCancelled(Exception):
    """`should_stop` asked the run to stop; completed units stay in the result."""


class Setup(NamedTuple):
    config: ForceConfig
    weights: ForceWeights
    params: ForceParams
    supervisor: Supervisor
    target: torch.Tensor  # (n_steps, k) float64
    inputs: torch.Tensor | None  # (n_steps, m)

    @property
    def batch(self) -> int:
        return len(self.params.g)


@dataclass
class Trained:
    network: str
    state: State
    rls: RLSState
    outputs: torch.Tensor  # (warmup + learn steps, B, k) readout at every step
    rate_samples: torch.Tensor | None  # (M, B, N) r at each update, when asked


@dataclass
class Tested:
    outputs: torch.Tensor  # (test steps, B, k)
    sq_error: torch.Tensor  # (B,) sum over test steps of ||f - z||^2
    end_rate_hz: torch.Tensor  # (B,) population mean of the filtered rates at the end of the test


def make_setup(config: ForceConfig, g, q, supervisor: Supervisor | None = None,
               weights: ForceWeights | None = None) -> Setup:
    supervisor = supervisor or make_supervisor(config)
    weights = weights or make_weights(config, supervisor.k, supervisor.m)
    params = make_params(config, g, q)
    as_tensor = lambda a, dtype: torch.as_tensor(a, dtype=dtype, device=config.device)
    inputs = None if supervisor.inputs is None else as_tensor(supervisor.inputs, config.torch_dtype)
    return Setup(config, weights, params, supervisor, as_tensor(supervisor.target, torch.float64), inputs)


def initial_state(network: str, setup: Setup) -> State:
    """The state every point of the batch starts from: drawn from (seed, network) only, the same
    for every (Q, G, alpha) and batch position, so a point's result does not depend on its neighbours."""
    generator = torch.Generator().manual_seed(derive_seed(setup.config.seed, f"force-init-{network}"))
    init = lif_init if network == "lif" else rate_init
    return init(setup.config, setup.batch, generator)


def advance(network: str, setup: Setup, state: State, z: torch.Tensor, phi: torch.Tensor, start: int, stop: int,
            outputs: torch.Tensor, tick: Callable[[int], None] | None = None,
            rls: RLSState | None = None, samples: list | None = None) -> tuple[State, torch.Tensor, RLSState | None]:
    """Steps [start, stop); z of each step goes to outputs[i - start]. With `rls`,
    decoders are learned every `update_every` steps from `start`. `tick(n)` is
    called every TICK_STEPS steps with n the steps of the run done so far."""
    if setup.config.compiled:
        from engine.force.compiled import advance_compiled

        return advance_compiled(network, setup, state, z, phi, start, stop, outputs, tick, rls, samples)
    step = lif_step if network == "lif" else rate_step
    dtype = setup.config.torch_dtype
    phi_fast = (rls.phi if rls is not None else phi).to(dtype)
    with torch.inference_mode():
        return _advance(step, setup, state, z, phi_fast, start, stop, outputs, tick, rls, samples)


def _advance(step, setup: Setup, state: State, z, phi_fast, start, stop, outputs, tick, rls, samples):
    w, p, every, dtype = setup.weights, setup.params, setup.config.update_every, setup.config.torch_dtype
    for i in range(start, stop):
        u = None if setup.inputs is None else setup.inputs[i]
        state, _ = step(state, encoded(z, u, w, p), w, p)
        z = torch.bmm(state.r.unsqueeze(1), phi_fast).squeeze(1)
        outputs[i - start] = z
        if rls is not None and (i - start) % every == 0:
            rls = rls_update(rls, state.r, z.to(torch.float64) - setup.target[i])
            phi_fast = rls.phi.to(dtype)
            if samples is not None:
                samples.append(state.r.clone())
        if tick is not None and (i + 1) % TICK_STEPS == 0:
            tick(i + 1)
    return state, z, rls


def learn(network: str, setup: Setup, alpha, *, tick=None, sample_rates: bool = False,
          outputs: torch.Tensor | None = None) -> Trained:
    """Warm-up then RLS learning from the seeded initial state; the readout of
    every step goes to `outputs` (warmup + learn steps, B, k) (allocated if not given)."""
    c = setup.config
    state = initial_state(network, setup)
    k = setup.supervisor.k
    z = torch.zeros(setup.batch, k, dtype=c.torch_dtype, device=c.device)
    rls = rls_init(alpha, c.n, k, c.device)
    if len(rls.phi) != setup.batch:
        raise ValueError(f"alpha has {len(rls.phi)} entries for a batch of {setup.batch}")
    if outputs is None:
        outputs = torch.empty(c.warmup_steps + c.learn_steps, setup.batch, k, dtype=c.torch_dtype, device=c.device)
    state, z, _ = advance(network, setup, state, z, rls.phi, 0, c.warmup_steps, outputs, tick)
    samples: list | None = [] if sample_rates else None
    state, z, rls = advance(network, setup, state, z, rls.phi, c.warmup_steps, c.warmup_steps + c.learn_steps,
                            outputs[c.warmup_steps:], tick, rls=rls if c.learn_steps else None, samples=samples)
    rls = rls or rls_init(alpha, c.n, k, c.device)
    stacked = torch.stack(samples) if samples else None
    return Trained(network, state, rls, outputs, stacked)


def test(network: str, setup: Setup, trained: Trained, phi: torch.Tensor | None = None, *, tick=None,
         state: State | None = None) -> Tested:
    """The test phase from the post-learning state (or `state`) with decoders `phi`
    (default: the ones it learned). Learning is off."""
    c = setup.config
    phi = trained.rls.phi if phi is None else phi
    start = c.warmup_steps + c.learn_steps
    outputs = torch.empty(c.test_steps, setup.batch, setup.supervisor.k, dtype=c.torch_dtype, device=c.device)
    # Start from the receiving network's state; the first feedback uses the test decoders.
    start_state = state if state is not None else trained.state
    z = torch.bmm(start_state.r.unsqueeze(1), phi.to(c.torch_dtype)).squeeze(1)
    final, _, _ = advance(network, setup, start_state, z, phi, start, c.n_steps, outputs, tick)
    diff = outputs.double() - setup.target[start:].unsqueeze(1)
    return Tested(outputs, (diff ** 2).sum(dim=(0, 2)), final.r.double().mean(dim=1))
