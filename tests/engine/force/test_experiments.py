"""Each FORCE experiment runs end to end at a tiny size, writes its documented
result files, reports progress, stops on request and resumes a grid point-wise."""

import json
import math

import numpy as np
import pytest

from engine.force import grid as grid_module
from engine.force.experiments import EXPERIMENTS, ExperimentError, run_experiment, validate
from engine.force.simulate import ForceCancelled

TINY = {"n": 30, "warmup_s": 0.02, "learn_s": 0.05, "test_s": 0.02}
EXTRA = {"grid": {"q_values": [5.0, 10.0], "g_values": [0.05, 0.1], "batch": 3},
         "size": {"n_values": [20, 30], "trials": 2}, "bias_variance": {"trials": 3}, "pca": {"components": 5},
         "transfer_protocols": {"run_in_s": 0.01}}


@pytest.mark.parametrize("name", sorted(EXPERIMENTS))
def test_experiment_completes_with_its_files(name, tmp_path):
    progress = []
    result = run_experiment(name, {"config": TINY, **EXTRA.get(name, {})}, tmp_path,
                            on_progress=lambda done, total: progress.append((done, total)))
    on_disk = json.loads((tmp_path / "result.json").read_text())
    assert on_disk["complete"] and on_disk["experiment"] == name and on_disk["params"] == result["params"]
    assert progress[-1][0] == progress[-1][1] and all(a[0] <= b[0] for a, b in zip(progress, progress[1:]))
    files = {p.name for p in tmp_path.iterdir()}
    expected = {"train": {"traces_lif.npz", "traces_rate.npz", "decoders.npz"},
                "alpha": {"decoders_alpha0.npz", "decoders_alpha1.npz"},
                "transfer": {"transfer_lif_to_rate.npz", "transfer_rate_to_lif.npz", "decoders.npz"},
                "transfer_protocols": {"protocols_lif_to_rate.npz", "protocols_rate_to_lif.npz"},
                "bias_variance": {"trials_lif.npz", "trials_rate.npz"},
                "pca": {"pca_lif.npz", "pca_rate.npz"}}.get(name, set())
    assert expected <= files and not any(".tmp" in f for f in files)


def test_train_traces_cover_the_run(tmp_path):
    run_experiment("train", {"config": TINY}, tmp_path)
    traces = np.load(tmp_path / "traces_rate.npz")
    n = round((0.02 + 0.05 + 0.02) / 1e-3)  # one sample per trace_every_ms = 1 ms
    assert traces["t_s"].shape == (n,) and traces["target"].shape == (n, 1) and traces["output"].shape == (n, 1)
    assert np.allclose(traces["target"][:, 0], np.sin(2 * np.pi * 5 * traces["t_s"]))
    phi = np.load(tmp_path / "decoders.npz")
    assert phi["phi_lif"].shape == (30, 1) and np.abs(phi["phi_rate"]).sum() > 0


def test_grid_progress_moves_with_the_work():
    """A grid's progress weighs each step by what it costs: at N 2000 the LIF half of a
    batch is cheap and the rate twin's products are most of it (the even split it used
    to report sat at 50 % for most of an hour), and learning steps (RLS) cost more."""
    from engine.force.config import ForceConfig

    config = ForceConfig(n=2000, warmup_s=5.0, learn_s=5.0, test_s=5.0)
    progress = grid_module.batch_progress(config, ["lif", "rate"])
    lif_done = progress(0, config.n_steps)
    assert progress(0, 0) == 0.0 and progress(1, config.n_steps) == pytest.approx(1.0)
    assert 0.05 < lif_done < 0.35 and progress(1, 0) == lif_done
    warm, learn = config.warmup_steps, config.learn_steps
    # per step, learning costs more than the warm-up, in both twins
    assert progress(0, warm + 10) - progress(0, warm) > progress(0, 10) - progress(0, 0)
    assert progress(1, warm + learn) - progress(1, warm) > progress(1, warm) - progress(1, 0)
    # a small network's LIF step costs about as much as its rate step: no longer cheap
    small = ForceConfig(n=100, warmup_s=0.1, learn_s=0.1, test_s=0.1)
    assert grid_module.batch_progress(small, ["lif", "rate"])(0, small.n_steps) == pytest.approx(0.5)


@pytest.mark.parametrize("name", ["transfer", "bias_variance"])
def test_progress_rises_to_the_total(name, tmp_path):
    """Runs long enough for ticks inside every phase (TICK_STEPS steps apart)."""
    progress = []
    config = {"n": 20, "warmup_s": 0.05, "learn_s": 0.1, "test_s": 0.1}
    run_experiment(name, {"config": config}, tmp_path, on_progress=lambda done, total: progress.append((done, total)))
    done = [d for d, _ in progress]
    assert len(done) > 6 and done == sorted(done) and done[-1] == progress[-1][1]
    assert len(set(done)) > 6  # the extra test phases move it too


def test_grid_resumes_point_by_point(tmp_path, monkeypatch):
    params = {"config": TINY, "q_values": [5.0, 10.0], "g_values": [0.05, 0.1, 0.15], "batch": 2}
    batches = []
    real_batch = grid_module.grid_batch

    def counting(config, points, networks, tick=None):
        batches.append(list(points))
        return real_batch(config, points, networks, tick)

    monkeypatch.setattr(grid_module, "grid_batch", counting)
    with pytest.raises(ForceCancelled):
        run_experiment("grid", params, tmp_path, should_stop=lambda: len(batches) >= 1 and bool(
            json.loads((tmp_path / "result.json").read_text()).get("points")))
    partial = json.loads((tmp_path / "result.json").read_text())
    assert not partial["complete"] and len(partial["points"]) == 2
    batches.clear()
    result = run_experiment("grid", params, tmp_path)
    assert sum(len(b) for b in batches) == 4  # only the points not yet in the result
    assert result["complete"] and len(result["points"]) == 6
    assert result["points"][:2] == partial["points"]
    for point in result["points"]:
        assert {"q", "g", "lif", "rate", "decoder_fit"} <= set(point)
        for net in ("lif", "rate"):
            measured = point[net]
            # log10_error is null only for a diverged network (a NaN error); otherwise
            # it is the error's log10, and this tiny task's errors are below 1
            assert (measured["log10_error"] is None) == measured["diverged"]
            if not measured["diverged"]:
                assert measured["log10_error"] == pytest.approx(math.log10(measured["test_error"]))
                assert measured["log10_error"] < 0
    assert not any(p[net]["diverged"] for p in result["points"] for net in ("lif", "rate"))


@pytest.mark.slow
def test_grid_in_a_pool_of_processes(tmp_path):
    params = {"config": TINY, "q_values": [5.0, 10.0], "g_values": [0.05, 0.1], "batch": 2, "processes": 2}
    result = run_experiment("grid", params, tmp_path)
    alone = run_experiment("grid", {**params, "processes": 1}, tmp_path / "alone")
    key = lambda p: (p["q"], p["g"])
    assert sorted(result["points"], key=key) == sorted(alone["points"], key=key)  # same numbers either way


@pytest.mark.parametrize("name, params, field", [
    ("grid", {"q_values": []}, "q_values"), ("grid", {"batch": 0}, "batch"),
    ("grid", {"config": {"n": 1}}, "config.n"), ("size", {"n_values": [10.5]}, "n_values"),
    ("train", {"networks": ["lif", "lif"]}, "networks"), ("train", {"epochs": 3}, "epochs"),
    ("pca", {"alphas": ["fast"]}, "alphas"), ("nope", {}, "experiment"),
    ("bias_variance", {"config": {"task": "xor"}}, "config.task"), ("alpha", {"config": []}, "config"),
    # these raised TypeError (a list or dict looked up in a dict) and OverflowError (int(inf) steps)
    ("transfer_protocols", {"protocols": [["own"]]}, "protocols"), ("train", {"networks": [{}]}, "networks"),
    ("train", {"config": {"dt_ms": 1e-310}}, "config.test_s"),
])
def test_bad_parameter_is_named(name, params, field):
    with pytest.raises(ExperimentError) as caught:
        validate(name, params)
    assert caught.value.field == field


def test_defaults_are_complete_and_valid():
    for name, spec in EXPERIMENTS.items():
        checked = validate(name, {})
        assert set(checked) == set(spec.defaults) and checked["config"]["n"] == 2000
        assert validate(name, checked) == checked  # a stored params dict validates to itself


def test_work_counts_network_steps_times_n_squared():
    """The FORCE form's time estimate scales a measured pace by `work`: network-steps x N^2
    over every network, batch row, extra test phase and size the experiment simulates."""
    from engine.force.experiments import work

    def w(name, config=None, **extra):
        return work(name, validate(name, {"config": {**TINY, **(config or {})}, **extra}))

    steps = 400 + 1000 + 400  # TINY's phases at dt 0.05 ms
    assert w("train") == 2 * steps * 30 ** 2
    assert w("train", networks=["rate"]) == steps * 30 ** 2
    assert w("train", {"n": 60}) == 4 * w("train")
    assert w("alpha", alphas=[1e-5, 1e-4, 1e-3]) == 3 * w("train")
    assert w("grid", q_values=[1.0, 2.0, 3.0], g_values=[0.1, 0.2]) == 6 * w("train")
    assert w("transfer") == w("train") + 2 * 400 * 30 ** 2  # two swapped test phases
    assert w("bias_variance", trials=5) == w("train") + 2 * 5 * 400 * 30 ** 2
    assert w("size", n_values=[30, 60], trials=0) == w("train") + w("train", {"n": 60})
    assert w("pca") == 2 * (400 + 1000) * 30 ** 2  # learning only, no test phase
    protocols = w("transfer_protocols", alphas=[1e-5], protocols=["own", "swap_both"], run_in_s=0.01)
    assert protocols == w("train") + 2 * 2 * (400 + 200) * 30 ** 2  # both receivers x 2 protocols x closed loop
    assert all(work(n, validate(n, {})) > 0 for n in EXPERIMENTS)
