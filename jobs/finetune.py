"""Fine-tunes: runs whose config's `init_run` names a trained run to start from.

A fine-tune starts from `init_run`'s final weights, W_in / W_ei / W_ie times the
config's `init_w_*_scale` multipliers (`engine.train.start_weights`); the What-if
page's "Save as run" launches one at the sliders' position. The job service
checks the source when the run is submitted (`check_source`: it exists, is a
train run that finished, and has this network's shape), and the worker copies
its final weights into the new run's folder before training
(`copy_start_weights`), so the fine-tune keeps its starting point even if the
source is deleted later, and a re-run or resume starts from the same file.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from jobs.models import Conflict, InvalidRequest, RunKind, RunNotFound, RunState
from jobs.paths import DataDir
from jobs.store import RunStore

SHAPE_FIELDS = ("n_input", "n_e", "n_i", "n_out")  # the weights' shapes


def source_weights(run_dir: Path) -> Path:
    """A train run's final weights in its folder."""
    return run_dir / "artifacts" / "weights_final.npz"


def check_source(store: RunStore, data: DataDir, config: dict[str, Any], where: str = "") -> None:
    """Refuse a config whose `init_run` cannot start it: 422 naming `init_run` for a
    run that does not exist or is no train run, or a network of another shape
    (naming the field); 409 for a source that has not finished with final weights."""
    source_id = config.get("init_run")
    if source_id is None:
        return
    field = f"{where}init_run"
    try:
        source = store.get_run(source_id)
    except RunNotFound:
        raise InvalidRequest(field, f"names run {source_id}, which does not exist") from None
    if source.kind is not RunKind.TRAIN:
        raise InvalidRequest(field, f"names run {source_id}, a {source.kind.value} run; "
                                    "a fine-tune starts from a train run")
    if source.state is not RunState.SUCCEEDED or not source_weights(data.run_dir(source_id)).exists():
        raise Conflict(f"init_run {source_id} is {source.state.value}, without final weights yet: "
                       "a fine-tune starts from a run that has succeeded")
    for name in SHAPE_FIELDS:
        if config[name] != source.config[name]:
            raise InvalidRequest(f"{where}{name}", f"must be {source.config[name]} like init_run {source_id}'s "
                                                   f"weights, got {config[name]}")


def copy_start_weights(source_dir: Path, run_dir: Path) -> None:
    """Before a fine-tune's first epoch: its source's final weights (from the folder
    the worker's transport gives for the source run: the store's own, or the
    server's copy for a remote worker) into its folder (engine.train.START_WEIGHTS),
    once; a resume or re-run finds them there."""
    from engine.train import START_WEIGHTS

    target = run_dir / START_WEIGHTS
    if target.exists():
        return
    source = source_weights(source_dir)
    if not source.exists():
        raise FileNotFoundError(f"the fine-tune's init_run has no final weights at {source} (deleted?)")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(source, partial)
    partial.replace(target)  # a killed copy leaves no half file that looks whole
