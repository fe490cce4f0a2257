"""Packed training: K runs trained in lockstep by one process (issue 20, item 4).

`train_packed(configs, run_dirs)` trains K runs whose configs agree on everything
but engine.fast.PER_RUN_FIELDS (seed, arch, weight initialisation, optimiser and
loss terms). Each run keeps what `engine.train` gives a run alone: its own weights,
Adam state, batch order and input spikes (keyed on its own seed, epoch and batch),
epoch records, evaluation, checkpoints and run folder; it goes through the same
`engine.train.Trainee` methods, so a packed run's records and weights are the ones
it gets alone. What is shared per batch:

- the simulation: on a GPU the K runs' batches are the programs of one set of
  Triton launches (engine.fast.simulate_fast_runs); elsewhere each run simulates
  its own batch (the CPU's compiled loops have no run axis), same results;
- one backward for the K losses (the runs' graphs are disjoint, so each weight's
  gradient is its own run's).

Runs leave the pack on their own: a run whose `should_stop(k)` turns true ends
`TrainingCancelled`, a run that goes non-finite `NonFiniteError`, and the others go
on. Each run resumes from its own checkpoint, so runs of one pack may be at
different epochs (a worker killed between two runs' checkpoints): all epochs have
the same batches, so each round trains every run's own next epoch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from engine.config import Config
from engine.data import Dataset, load_tier
from engine.fast.common import triton_runs
from engine.fast.network import check_packable, simulate_fast_runs
from engine.simulate import simulate
from engine.train import EpochCallback, Trainee, TrainingCancelled

PackedEpochCallback = Callable[[int, dict[str, Any]], None]  # (run index, epoch record)
PackedProgressCallback = Callable[[int, int, int], None]  # (run index, batches done, batches in the run)
Outcome = dict[str, Any] | BaseException  # a run's summary, or why it stopped


def packs_launches(config: Config) -> bool:
    """Whether packed runs of `config` share the simulation's launches: the fast
    backend on a GPU with the Triton kernels (engine.fast.network.loop_family)."""
    from engine.fast.network import loop_family

    return config.backend == "fast" and loop_family(config.torch_device) == "triton" and triton_runs(config)


def train_packed(configs: list[Config], run_dirs: list[str | Path], *, resume: bool = True,
                 on_epoch: PackedEpochCallback | None = None,
                 should_stop: Callable[[int], bool] | None = None,
                 on_progress: PackedProgressCallback | None = None,
                 on_done: Callable[[int, Outcome], None] | None = None, dataset: Dataset | None = None,
                 shared_launches: bool | None = None) -> list[Outcome]:
    """Train run k of `configs` into `run_dirs[k]`, in lockstep; returns each run's
    summary (as `engine.train.train` returns it) or the exception that ended it.

    The callbacks get the run's index first; `on_done(k, outcome)` is called as run k
    leaves the pack (stopped, failed or finished), so a caller records each run's end
    when it happens. `shared_launches` (default: `packs_launches`)
    runs the K batches through engine.fast.simulate_fast_runs; on CPU that needs the
    Triton interpreter (tests)."""
    if len(configs) != len(run_dirs) or not configs:
        raise ValueError("train_packed needs one run folder per config, and at least one run")
    check_packable(configs)
    shared_launches = packs_launches(configs[0]) if shared_launches is None else shared_launches
    dataset = dataset or load_tier(configs[0].tier)
    outcomes: list[Outcome | None] = [None] * len(configs)
    trainees: dict[int, Trainee] = {}

    def leave(k: int, outcome: Outcome) -> None:
        outcomes[k] = outcome
        trainees.pop(k, None)
        if on_done:
            on_done(k, outcome)

    def drop(k: int, exc: BaseException) -> None:
        if k in trainees or outcomes[k] is None:
            leave(k, exc)

    for k, (config, run_dir) in enumerate(zip(configs, run_dirs)):
        try:
            trainees[k] = Trainee(config, run_dir, resume, dataset, _for_run(on_epoch, k))
        except Exception as exc:  # e.g. a folder holding another config: this run only
            drop(k, exc)

    def finish_trained() -> None:  # a run leaves as soon as its last epoch is done
        for k in [k for k, t in trainees.items() if t.finished_training]:
            try:
                summary = trainees[k].finish()
            except Exception as exc:
                drop(k, exc)
            else:
                leave(k, summary)

    finish_trained()  # e.g. a run resumed after its last epoch
    while training := list(trainees):
        for k in training:
            trainees[k].begin_epoch()
        for b in range(trainees[training[0]].n_batches):  # equal for all: one tier, one batch size
            for k in training:
                if should_stop and should_stop(k):
                    drop(k, TrainingCancelled(f"stopped during epoch {trainees[k].epoch}"))
            training = [k for k in training if k in trainees]
            if not training:
                break
            batch = {k: trainees[k].batch_input(b, trainees[k].batches[b]) for k in training}
            try:
                outs = _simulate(trainees, batch, shared_launches)
            except Exception as exc:  # the shared simulation failed: every run in it
                for k in training:
                    drop(k, exc)
                break
            losses = {}
            for k in training:
                try:
                    loss = trainees[k].loss(outs[k], batch[k][1], b)
                except Exception as exc:
                    drop(k, exc)
                    continue
                if loss is not None:
                    trainees[k].zero_grad()
                    losses[k] = loss
            if losses:
                try:
                    torch.autograd.backward(list(losses.values()))
                except Exception as exc:
                    for k in losses:
                        drop(k, exc)
            for k in losses:
                if k in trainees:
                    try:
                        trainees[k].step(b)
                    except Exception as exc:
                        drop(k, exc)
            training = [k for k in training if k in trainees]
            if on_progress:
                for k in training:
                    on_progress(k, *trainees[k].progress(b + 1))
        for k in [k for k in training if k in trainees]:
            try:
                trainees[k].end_epoch()
            except Exception as exc:
                drop(k, exc)
        finish_trained()
    return outcomes  # type: ignore[return-value]  # every run has its outcome now


def _simulate(trainees: dict[int, Trainee], batch: dict[int, tuple], shared_launches: bool) -> dict[int, dict]:
    """Each run's simulate() result for its batch: one set of launches, or one call per run."""
    runs = list(batch)
    if shared_launches:
        outs = simulate_fast_runs([trainees[k].weights for k in runs], [batch[k][0] for k in runs],
                                  [trainees[k].config for k in runs], spike_trains=False)
        return dict(zip(runs, outs))
    return {k: simulate(trainees[k].weights, batch[k][0], trainees[k].config, spike_trains=False) for k in runs}


def _for_run(callback: PackedEpochCallback | None, k: int) -> EpochCallback | None:
    return None if callback is None else (lambda record: callback(k, record))
