"""The packing decision (jobs/packing.py) on runs queued in a real SQLite store:
which queued runs could share one GPU job."""

from __future__ import annotations

import dataclasses

from engine.studies.presets import expand
from jobs.models import RunKind, RunState
from jobs.packing import claim_pack, pack_key, plan_packs
from jobs.service import validate_config

GPU = dict(backend="fast", device="cuda", tier="medium", epochs=100)


def queue(store, *configs):
    """Queued training runs, as the store returns them, in queue order."""
    return [store.create_run(RunKind.TRAIN, validate_config(config)) for config in configs]


def test_nb024s_six_cells_are_one_pack(store):
    plan = expand("nb024", {"tier": "medium", "epochs": 100, "backend": "fast", "device": "cuda",
                            "recipe": "canonical"})
    runs = queue(store, *(dict(run.config) for run in plan.runs))
    assert len(runs) == 6 and {run.config["arch"] for run in runs} == {"ping", "coba"}
    jobs = plan_packs(runs, max_runs=8)
    assert [[run.id for run in job] for job in jobs] == [[run.id for run in runs]]


def test_seed_recipe_runs_train_alone_until_the_triton_kernels_run_it(store):
    """Packs run on the Triton kernels, which lack the seed recipe (engine.fast: a single
    GPU run of it takes the torch-op loop)."""
    plan = expand("nb024", {"tier": "medium", "epochs": 100, "backend": "fast", "device": "cuda"})
    runs = queue(store, *(dict(run.config) for run in plan.runs))
    assert {run.config["recipe"] for run in runs} == {"seed"}
    assert all(pack_key(run) is None for run in runs)
    assert [len(job) for job in plan_packs(runs, max_runs=8)] == [1] * 6


def test_runs_that_differ_in_shape_or_schedule_are_not_packed(store):
    base = queue(store, {**GPU, "seed": 1})[0]
    others = queue(store, {**GPU, "seed": 2, "t_ms": 100.0},  # another trial length
                   {**GPU, "seed": 3, "n_e": 400},  # other shapes
                   {**GPU, "seed": 4, "batch_size": 32},  # another schedule
                   {**GPU, "seed": 5, "dtype": "float64"},
                   {**GPU, "seed": 6, "lr": 1e-2, "arch": "coba"})  # per-run fields only: packs
    jobs = plan_packs([base, *others], max_runs=8)
    assert [[run.id for run in job] for job in jobs] == [
        [base.id, others[4].id], [others[0].id], [others[1].id], [others[2].id], [others[3].id]]


def test_cpu_and_reference_runs_train_alone_resumed_runs_pack(store):
    cpu = queue(store, {**GPU, "device": "cpu"}, {**GPU, "device": "cpu", "seed": 2})
    reference = queue(store, {**GPU, "backend": "reference"})[0]
    assert pack_key(cpu[0]) is None and pack_key(reference) is None
    gpu = queue(store, GPU, {**GPU, "seed": 2})
    assert pack_key(gpu[0]) is not None and pack_key(gpu[0]) == pack_key(gpu[1])
    # each run of a pack continues from its own checkpoint (engine.packed)
    resumed = dataclasses.replace(gpu[1], resumed_from_epoch=3)
    assert pack_key(resumed) == pack_key(gpu[0])
    finished = dataclasses.replace(gpu[1], state=RunState.SUCCEEDED)
    assert pack_key(finished) is None
    jobs = plan_packs([*cpu, reference, gpu[0], resumed], max_runs=4)
    assert [len(job) for job in jobs] == [1, 1, 1, 2]


def test_packs_are_first_come_first_served_and_capped(store):
    runs = queue(store, *({**GPU, "seed": seed} for seed in range(5)))
    other = queue(store, {**GPU, "t_ms": 50.0})[0]
    more = queue(store, {**GPU, "seed": 9})[0]
    jobs = plan_packs([*runs, other, more], max_runs=2)
    assert [[run.id for run in job] for job in jobs] == [
        [runs[0].id, runs[1].id], [runs[2].id, runs[3].id], [runs[4].id, more.id], [other.id]]


def test_pack_mates_are_taken_in_queue_order(store):
    """A run moved to the front is claimed as a pack-mate before older ones."""
    first, *rest = queue(store, *({**GPU, "seed": seed} for seed in range(4)))
    store.move_to_front(rest[2].id)
    claimed = store.claim_next()
    assert claimed.id == rest[2].id
    pack = claim_pack(store, claimed, max_runs=3)
    assert [run.id for run in pack] == [rest[2].id, first.id, rest[0].id]
