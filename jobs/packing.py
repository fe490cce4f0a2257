"""Which queued training runs share one GPU job (issue 20, item 4): the packing decision.

A packed job trains K runs in lockstep in one worker (engine.packed.train_packed:
on a GPU one set of kernel launches per batch through engine.fast's run axis; each
run its own weights, optimizer state, RNG, record, checkpoints and store row).
Runs can share the launches when everything that sets the kernels' shapes and the
training loop's schedule is equal; what lives in each run's own weights and
optimizer may differ (PER_RUN_FIELDS): so nb024's six cells (PING and COBA x three
seeds, one tier, one trial length) are one pack.

The scheduler (jobs.scheduler, `pack_runs` > 1) claims a pack with `claim_pack`;
the local executor starts one worker for it (jobs.worker.main_pack). Packs are for
GPUs (PACK_DEVICES), where they share launches; tests pass devices=("cpu",).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from engine.config import Config, ConfigError
from engine.fast.common import triton_runs
from engine.fast.network import PER_RUN_FIELDS
from jobs.models import Run, RunKind, RunState
from jobs.store import RunStore

# Devices whose runs are packed: a GPU, where one set of kernel launches serves K runs.
# On CPU the compiled loops have no run axis, so a pack would only serialise its runs;
# tests pass ("cpu",) to exercise the packed worker there (same code, same results).
PACK_DEVICES = ("cuda",)


def pack_key(run: Run, devices: Sequence[str] = PACK_DEVICES) -> tuple[tuple[str, Any], ...] | None:
    """What a run must share with its pack-mates, or None if it trains alone: only
    training runs (queued, or the one just claimed) of the fast backend on one of
    `devices` whose model the Triton kernels run. A resumed run packs too: each run of
    a pack continues from its own checkpoint (engine.packed)."""
    if run.kind != RunKind.TRAIN or run.state not in (RunState.QUEUED, RunState.RUNNING):
        return None
    try:
        parsed = Config.from_dict(run.config)
    except (ConfigError, TypeError, ValueError):  # the worker reports a bad config as the run's failure
        return None
    config = parsed.to_dict()
    if config["backend"] != "fast" or not str(config["device"]).startswith(tuple(devices)):
        return None
    if not triton_runs(parsed):  # packs run on the Triton kernels, which lack the seed recipe
        return None
    return tuple(sorted((name, _hashable(value)) for name, value in config.items()
                        if name not in PER_RUN_FIELDS))


def plan_packs(queued: Sequence[Run], max_runs: int, devices: Sequence[str] = PACK_DEVICES) -> list[list[Run]]:
    """Queued runs (oldest first) as jobs of at most `max_runs` compatible runs each.

    First come first served: each job starts with the oldest run not yet placed and
    takes the next compatible ones in queue order, so packing never makes a run
    wait behind a younger one. Runs that cannot be packed are jobs of one.
    """
    if max_runs < 1:
        raise ValueError("max_runs must be at least 1")
    keys = [pack_key(run, devices) for run in queued]
    placed = [False] * len(queued)
    jobs: list[list[Run]] = []
    for i, run in enumerate(queued):
        if placed[i]:
            continue
        placed[i] = True
        job = [run]
        if keys[i] is not None:
            for j in range(i + 1, len(queued)):
                if len(job) == max_runs:
                    break
                if not placed[j] and keys[j] == keys[i]:
                    placed[j] = True
                    job.append(queued[j])
        jobs.append(job)
    return jobs


def claim_pack(store: RunStore, first: Run, max_runs: int, devices: Sequence[str] = PACK_DEVICES,
               now: float | None = None) -> list[Run]:
    """`first` (just claimed) and up to max_runs - 1 compatible queued runs, in queue
    order, each claimed (queued -> running) in the store: the runs of one job."""
    key = pack_key(first, devices) if max_runs > 1 else None
    if key is None:
        return [first]
    queued, _ = store.list_runs(state=RunState.QUEUED, kind=RunKind.TRAIN, limit=10_000)
    pack = [first]
    for run in sorted(queued, key=lambda r: r.queue_key):
        if len(pack) == max_runs:
            break
        if pack_key(run, devices) == key:
            claimed = store.claim(run.id, now)
            if claimed is not None:  # None: cancelled or claimed meanwhile
                pack.append(claimed)
    return pack


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value
