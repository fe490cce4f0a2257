"""Training entry point: `train(config, run_dir, ...)`.

Imports no database, HTTP or UI code: callers observe a run through callbacks
(`on_epoch`, `on_progress`) and stop it with `should_stop`. Every epoch ends with
its record appended to metrics.jsonl and a checkpoint, so a killed run resumes
at the next epoch and, because every random draw is keyed on (seed, epoch,
batch), produces the metrics an uninterrupted run would have.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from engine.config import Config
from engine.convergence import summarise
from engine.data import Dataset, load_tier
from engine.divergence import divergence_reasons
from engine.encoding import poisson_events
from engine.evaluate import batches, evaluate
from engine.rundir import RunDir
from engine.seeding import batch_generator
from engine.simulate import simulate
from engine.weights import init_weights

EpochCallback = Callable[[dict[str, Any]], None]
ProgressCallback = Callable[[int, int], None]  # (batches done, batches in the run)


class TrainingCancelled(Exception):
    """`should_stop` asked the run to stop; the last finished epoch is checkpointed."""


class NonFiniteError(RuntimeError):
    """Loss or gradient became NaN/inf; the last good checkpoint is kept."""


def train(config: Config, run_dir: str | Path, *, resume: bool = True,
          on_epoch: EpochCallback | None = None, should_stop: Callable[[], bool] | None = None,
          on_progress: ProgressCallback | None = None, dataset: Dataset | None = None) -> dict[str, Any]:
    """Train `config` into `run_dir`; return the summary.

    With `resume` and a checkpoint in the folder, training continues after the
    checkpoint's epoch and `on_epoch` is first called again, in order, with the
    records already stored (sinks must be idempotent on the epoch number).
    """
    dataset = dataset or load_tier(config.tier)
    trainee = Trainee(config, run_dir, resume, dataset, on_epoch)
    while not trainee.finished_training:
        trainee.begin_epoch()
        for b, index in enumerate(trainee.batches):
            if should_stop and should_stop():
                raise TrainingCancelled(f"stopped during epoch {trainee.epoch}")
            x, labels = trainee.batch_input(b, index)
            out = simulate(trainee.weights, x, config, spike_trains=False)
            loss = trainee.loss(out, labels, b)
            if loss is not None:
                trainee.zero_grad()
                loss.backward()
                trainee.step(b)
            if on_progress:
                on_progress(*trainee.progress(b + 1))
        trainee.end_epoch()
    return trainee.finish()


class Trainee:
    """One run's training state between batches: its weights, optimiser, epoch, the
    running epoch's statistics and its run folder. `train` drives one; the packed
    loop (engine.packed) drives K in lockstep, with one simulation and one backward
    for all of them per batch, through these same methods."""

    def __init__(self, config: Config, run_dir: str | Path, resume: bool, dataset: Dataset,
                 on_epoch: EpochCallback | None = None):
        self.config, self.dataset, self.on_epoch = config, dataset, on_epoch
        self.run = RunDir(run_dir)
        self.weights, self.optimizer, self.epoch = _start(config, self.run, resume)  # epoch: the last one done
        for record in self.run.truncate_metrics(self.epoch):
            if on_epoch:
                on_epoch(record)
        self.n_batches = math.ceil(len(dataset.train.labels) / config.batch_size)
        self.test = None

    @property
    def finished_training(self) -> bool:
        return self.epoch >= self.config.epochs

    def begin_epoch(self) -> None:
        self.epoch += 1
        self.started = time.perf_counter()
        train = self.dataset.train
        order = torch.randperm(len(train.labels), generator=batch_generator(self.config.seed, "order", self.epoch, 0))
        self.n_samples = len(order)
        self.batches = batches(len(order), self.config.batch_size, order)
        self.stats = _EpochStats(self.config.trainable)

    def batch_input(self, b: int, index: torch.Tensor):
        """Batch b's input events (keyed on (seed, epoch, batch)) and labels."""
        train, config = self.dataset.train, self.config
        x = poisson_events(train.images[index], config, batch_generator(config.seed, "train", self.epoch, b))
        self._labels = train.labels[index].to(config.torch_device)
        return x, self._labels

    def loss(self, out: dict[str, torch.Tensor], labels: torch.Tensor, b: int) -> torch.Tensor | None:
        """The batch's loss, or None if the step is skipped (non-finite under skip_nonfinite)."""
        config = self.config
        trial_s = config.n_steps * config.dt_ms / 1000.0
        cross_entropy = F.cross_entropy(out["logits"], labels)
        loss = cross_entropy
        rate_reg = mem_reg = torch.zeros(())
        if config.rate_reg_weight > 0:
            rate_e = out["count_e"].mean() / trial_s  # Hz, mean over cells and samples
            rate_reg = config.rate_reg_weight * (rate_e - config.rate_target_hz) ** 2
            loss = loss + rate_reg
        if config.mem_reg_weight > 0:
            mem_reg = config.mem_reg_weight * out["u_excess"].mean()
            loss = loss + mem_reg
        if not torch.isfinite(loss) and config.skip_nonfinite:
            self.stats.skip(len(labels))
            return None
        if not torch.isfinite(loss):
            raise NonFiniteError(f"loss became {float(loss.detach())} in epoch {self.epoch}, batch {b + 1}")
        self._batch = (out, labels, cross_entropy, rate_reg, mem_reg)
        return loss

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self, b: int) -> None:
        """After the backward of the batch's loss: the optimiser step and the statistics."""
        config, weights, epoch = self.config, self.weights, self.epoch
        out, labels, cross_entropy, rate_reg, mem_reg = self._batch
        self._batch = None
        params = [weights[name] for name in config.trainable]
        grad_norm = float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))
        if not math.isfinite(grad_norm):
            if config.skip_nonfinite:  # the seed recipe: drop this step, keep training
                self.stats.skip(len(labels))
                return
            raise NonFiniteError(f"gradient norm became {grad_norm} in epoch {epoch}, batch {b + 1}")
        for name in config.trainable:
            w = weights[name]
            self.stats.ratios[name].append(float(w.grad.norm() / w.detach().norm().clamp(min=1e-12)))
        if config.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        try:
            self.optimizer.step()
        except RuntimeError as exc:  # Adam's step size lr / (1 - beta1^t) itself overflowed the dtype
            if "overflow" not in str(exc):
                raise
            raise NonFiniteError(f"the optimiser step overflowed {config.dtype} in epoch {epoch}, batch {b + 1} "
                                 f"(lr {config.lr:g}): {exc}") from exc
        project_dale(weights, config)
        _check_weights(weights, config, epoch, b + 1)
        n = len(labels)
        self.stats.ce_sum += float(cross_entropy.detach()) * n
        self.stats.rate_reg_sum += float(rate_reg.detach()) * n
        self.stats.mem_reg_sum += float(mem_reg.detach()) * n
        self.stats.correct += int((out["logits"].argmax(-1) == labels).sum())
        self.stats.grad_norms.append(grad_norm)

    def progress(self, done: int) -> tuple[int, int]:
        """(batches done, batches in the run) after `done` batches of this epoch."""
        return (self.epoch - 1) * self.n_batches + done, self.n_batches * self.config.epochs

    def end_epoch(self) -> dict[str, Any]:
        """Evaluate, record and checkpoint the epoch; returns its record."""
        config, weights, epoch = self.config, self.weights, self.epoch
        stats = self.stats.summary(self.n_samples, epoch)
        test = self.test = evaluate(weights, self.dataset.test, config)
        record = {
            "epoch": epoch, "test_acc": test.accuracy_pct, "train_acc": stats["train_acc"],
            # train_loss is the cross-entropy (MODEL.md's record), like test_loss; the
            # optional regularisers' weighted terms are recorded beside it, 0 when off
            "train_loss": stats["train_loss"], "test_loss": test.loss,
            "train_rate_reg": stats["train_rate_reg"], "train_mem_reg": stats["train_mem_reg"],
            "rate_e_hz": test.rate_e_hz, "rate_i_hz": test.rate_i_hz,
            "active_frac_e": test.active_frac_e, "active_frac_i": test.active_frac_i,
            "grad_norm": stats["grad_norm"],
            "w_norm": {name: float(weights[name].detach().norm()) for name in config.trainable},
            "grad_ratio": stats["grad_ratio"],
            **({"skipped_steps": stats["skipped_steps"]} if config.skip_nonfinite else {}),
            "epoch_s": time.perf_counter() - self.started,
        }
        _check_finite(record, epoch)
        diverged = divergence_reasons([*self.run.read_metrics(), record], config)
        record["divergence"] = "; ".join(diverged) or None  # flagged, not failed: the numbers are finite
        self.run.append_metrics(record)
        self.run.save_checkpoint(_checkpoint(config, weights, self.optimizer, epoch))
        # every epoch, not only at the end: a 100-epoch run's per-cell rates are seen while it trains
        self.run.save_arrays("rates", _cell_rates(test, epoch))
        if self.on_epoch:
            self.on_epoch(record)
        return record

    def finish(self) -> dict[str, Any]:
        """The final weights and rates, and the summary."""
        # a run resumed after its last epoch (killed before this point) finishes here
        test = self.test or evaluate(self.weights, self.dataset.test, self.config)
        _finish(self.run, self.weights, _cell_rates(test, self.epoch))
        return _summary(self.run)


class _EpochStats:
    """The running sums of one epoch's training steps."""

    def __init__(self, trainable):
        self.ce_sum, self.rate_reg_sum, self.mem_reg_sum, self.correct = 0.0, 0.0, 0.0, 0
        self.grad_norms: list[float] = []
        self.skipped, self.skipped_samples = 0, 0
        self.ratios: dict[str, list[float]] = {name: [] for name in trainable}

    def skip(self, n: int) -> None:
        self.skipped, self.skipped_samples = self.skipped + 1, self.skipped_samples + n

    def summary(self, n_samples: int, epoch: int) -> dict[str, Any]:
        if not self.grad_norms:
            raise NonFiniteError(f"every step of epoch {epoch} was non-finite")
        n = n_samples - self.skipped_samples  # train loss and accuracy over the steps taken
        return {
            "train_loss": self.ce_sum / n, "train_rate_reg": self.rate_reg_sum / n,
            "train_mem_reg": self.mem_reg_sum / n, "train_acc": 100.0 * self.correct / n,
            "grad_norm": sum(self.grad_norms) / len(self.grad_norms),
            "grad_ratio": {name: sum(v) / len(v) for name, v in self.ratios.items()},
            "skipped_steps": self.skipped,
        }


def _start(config: Config, run: RunDir, resume: bool):
    """Fresh weights, or those of the last checkpoint; returns (weights, optimiser, epoch done)."""
    checkpoint = run.load_checkpoint() if resume else None
    if checkpoint is None:
        run.create(config)
        weights = start_weights(config, run.root) if config.init_run else init_weights(config)
        run.save_arrays("weights_init", {k: v.cpu().numpy() for k, v in weights.items()})
        epoch = 0
    else:
        stored = run.read_config()
        if stored.replace(epochs=config.epochs) != config:
            raise ValueError(f"{run.root} holds a run of another config; resume needs the same one "
                             "(only epochs may grow)")
        run.create(config)  # records a raised epoch count
        weights = {k: v.to(config.torch_device, config.torch_dtype) for k, v in checkpoint["weights"].items()}
        epoch = checkpoint["epoch"]
    for name in config.trainable:
        weights[name].requires_grad_(True)
    optimizer = torch.optim.Adam([weights[name] for name in config.trainable], lr=config.lr)
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
    return weights, optimizer, epoch


START_WEIGHTS = "start_weights.npz"  # in a fine-tune's run folder: the weights of its config's init_run


def start_weights(config: Config, run_dir: str | Path) -> dict[str, torch.Tensor]:
    """A fine-tune's epoch-0 weights: `init_run`'s trained weights, which the job
    service copied into this run's folder as START_WEIGHTS, with W_in, W_ei and
    W_ie multiplied by `init_w_in_scale`, `init_w_ei_scale`, `init_w_ie_scale`."""
    path = Path(run_dir) / START_WEIGHTS
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: a run with init_run {config.init_run!r} starts from that "
                                "run's trained weights, copied there when it is launched")
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    shapes = {"W_in": (config.n_input, config.n_e), "W_ei": (config.n_e, config.n_i),
              "W_ie": (config.n_i, config.n_e), "W_out": (config.n_e, config.n_out)}
    for name, shape in shapes.items():
        if name not in arrays or arrays[name].shape != shape:
            found = arrays[name].shape if name in arrays else "none"
            raise ValueError(f"{path}: {name} must be {list(shape)} for this config, found {found}")
    scales = {"W_in": config.init_w_in_scale, "W_ei": config.init_w_ei_scale, "W_ie": config.init_w_ie_scale}
    return {name: (torch.from_numpy(arrays[name]).to(torch.float64) * scales.get(name, 1.0))
            .to(device=config.torch_device, dtype=config.torch_dtype) for name in shapes}


def _check_weights(weights, config: Config, epoch: int, batch: int) -> None:
    """A weight that an optimiser step made NaN or inf fails the run here, before
    the next batch simulates with it (the last good checkpoint stays)."""
    for name in config.trainable:
        w = weights[name].detach()
        if not bool(torch.isfinite(w).all()):
            bad = int((~torch.isfinite(w)).sum())
            raise NonFiniteError(f"weight {name} became non-finite ({bad} of {w.numel()} entries) in "
                                 f"epoch {epoch}, batch {batch}; lower lr ({config.lr:g})")


def _check_finite(record: dict[str, Any], epoch: int, prefix: str = "") -> None:
    """Every figure of an epoch record is finite (JSON has no inf), e.g. a norm
    that overflowed float32 although each weight is finite."""
    for key, value in record.items():
        if isinstance(value, dict):
            _check_finite(value, epoch, f"{prefix}{key}.")
        elif isinstance(value, float) and not math.isfinite(value):
            raise NonFiniteError(f"{prefix}{key} became {value} in epoch {epoch}")


@torch.no_grad()
def project_dale(weights, config: Config) -> None:
    """Clamp the trainable `dale_weights` to >= 0 after a step (pinglab's project_dales):
    the stored weights are then the ones the forward pass uses."""
    for name in config.dale_weights:
        if name in config.trainable:
            weights[name].clamp_(min=0)


def _checkpoint(config: Config, weights, optimizer, epoch: int) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "weights": {k: v.detach().cpu().clone() for k, v in weights.items()},
        "optimizer": optimizer.state_dict(),
        # Batches draw from generators keyed on (seed, epoch, batch): the seed is
        # the whole RNG state a resume needs (see engine.seeding).
        "rng": {"scheme": "counter", "seed": config.seed},
    }


def _cell_rates(test, epoch: int) -> dict[str, np.ndarray]:
    """artifacts/rates.npz: each cell's rate on the test set after `epoch`."""
    return {"rate_e_hz": test.cell_rates_e_hz, "rate_i_hz": test.cell_rates_i_hz, "epoch": np.array(epoch)}


def _finish(run: RunDir, weights, rates: dict[str, np.ndarray]) -> None:
    run.save_arrays("weights_final", {k: v.detach().cpu().numpy() for k, v in weights.items()})
    run.save_arrays("rates", rates)


def _summary(run: RunDir) -> dict[str, Any]:
    records = run.read_metrics()
    summary = summarise(records)
    summary["divergence"] = records[-1].get("divergence") if records else None
    run.save_summary(summary)
    return summary
