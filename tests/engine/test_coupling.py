import json

import pytest

from engine import Config, init_weights
from engine.analyses.registry import ANALYSES, AnalysisCancelled, AnalysisError, run_analysis
from engine.evaluate import evaluate
from engine.inspect import test_subset as subset_of
from engine.rundir import RunDir
from engine.stability import forward_euler_check


@pytest.fixture
def untrained_run(tmp_path):
    """A run folder whose 'final' weights are the initial ones (no training needed)."""
    return untrained(tmp_path / "run", Config(n_e=100, n_i=25, t_ms=100.0, ei_strength=0.2, tier="smoke"))


def untrained(folder, config: Config):
    """A run folder of `config` whose final weights are its initial ones."""
    run = RunDir(folder)
    run.create(config)
    run.save_arrays("weights_final", {k: v.numpy() for k, v in init_weights(config).items()})
    return run.root


def test_open_loop_edges_have_no_effective_inhibition(untrained_run, tmp_path):
    progress = []
    result = run_analysis("coupling_sweep", untrained_run, {"factors": [0, 1, 4], "samples": 10},
                          tmp_path / "out", on_progress=lambda done, total: progress.append((done, total)))
    cells = {(c["ei_factor"], c["ie_factor"]): c for c in result["cells"]}
    assert len(cells) == 9 and progress[-1] == (9, 9) and result["complete"]
    # W_ei scaled to 0: I receives nothing and never fires
    assert all(cells[(0.0, ie)]["rate_i_hz"] == 0 for ie in (0.0, 1.0, 4.0))
    # W_ie scaled to 0: E never sees I, so E is the same whatever W_ei does
    assert len({cells[(ei, 0.0)]["rate_e_hz"] for ei in (0.0, 1.0, 4.0)}) == 1
    # closing the loop on both sides lowers E
    assert cells[(4.0, 4.0)]["rate_e_hz"] < cells[(0.0, 0.0)]["rate_e_hz"]
    # the trained point (1, 1) is the run itself: the same rates as a plain evaluation
    run = RunDir(untrained_run)
    config = run.read_config()
    plain = evaluate(run.load_weights("final"), subset_of(config, 10), config)
    assert cells[(1.0, 1.0)]["rate_e_hz"] == pytest.approx(plain.rate_e_hz)
    assert cells[(1.0, 1.0)]["rate_i_hz"] == pytest.approx(plain.rate_i_hz) and plain.rate_i_hz > 0
    assert cells[(1.0, 1.0)]["test_acc"] == plain.accuracy_pct
    assert json.loads((tmp_path / "out" / "result.json").read_text())["cells"] == result["cells"]
    # forward Euler (the canonical integrator): each cell says how close it came to instability
    assert result["euler_check"] == {"integrator": "forward_euler", "unstable_at": 2.0, "samples": 2}
    check = forward_euler_check(run.load_weights("final"), subset_of(config, 10), config)
    assert cells[(1.0, 1.0)]["euler_step_max"] == check.step_factor_max
    assert all(0 < c["euler_step_max"] < 2 and c["euler_unstable_share"] == 0 for c in cells.values())
    assert result["summary"]["euler_unstable_cells"] == 0


def test_cells_past_forward_eulers_stable_range_are_counted(untrained_run, tmp_path):
    result = run_analysis("coupling_sweep", untrained_run, {"factors": [1, 100], "samples": 2}, tmp_path / "out")
    flagged = {(c["ei_factor"], c["ie_factor"]) for c in result["cells"] if c["euler_step_max"] >= 2}
    assert (100.0, 100.0) in flagged and (1.0, 1.0) not in flagged
    assert result["summary"]["euler_unstable_cells"] == len(flagged)


def test_partial_result_survives_a_stop(untrained_run, tmp_path):
    with pytest.raises(AnalysisCancelled):
        run_analysis("coupling_sweep", untrained_run, {"factors": [0, 1], "samples": 4},
                     tmp_path / "out", should_stop=lambda: True)
    partial = json.loads((tmp_path / "out" / "result.json").read_text())
    assert len(partial["cells"]) == 1 and partial["complete"] is False


@pytest.mark.parametrize("params, field", [
    ({"factors": []}, "factors"), ({"factors": [-1]}, "factors"), ({"factors": "1,2"}, "factors"),
    ({"samples": 0}, "samples"), ({"weights": "best"}, "weights"), ({"colour": 1}, "colour"),
])
def test_bad_parameters_name_the_field(params, field):
    with pytest.raises(AnalysisError) as err:
        ANALYSES["coupling_sweep"].validate(params)
    assert err.value.field == field


def test_unknown_analysis_is_an_error(tmp_path):
    with pytest.raises(AnalysisError, match="name must be one of"):
        run_analysis("nope", tmp_path, {}, tmp_path / "out")


def test_a_stopped_sweep_resumes_where_it_stopped(untrained_run, tmp_path):
    """A server restart used to run a stopped analysis from its first cell again."""
    params = {"factors": [0, 1], "samples": 4}
    with pytest.raises(AnalysisCancelled):  # stops after its first cell
        run_analysis("coupling_sweep", untrained_run, params, tmp_path / "out", should_stop=lambda: True)
    progress = []
    resumed = run_analysis("coupling_sweep", untrained_run, params, tmp_path / "out",
                           on_progress=lambda done, total: progress.append(done))
    assert progress == [2, 3, 4]  # the first cell was not run again
    whole = run_analysis("coupling_sweep", untrained_run, params, tmp_path / "whole")
    assert resumed["cells"] == whole["cells"] and resumed["complete"]
    # other parameters into the same folder: nothing is taken from the stopped sweep
    with pytest.raises(AnalysisCancelled):
        run_analysis("coupling_sweep", untrained_run, params, tmp_path / "other", should_stop=lambda: True)
    progress.clear()
    other = run_analysis("coupling_sweep", untrained_run, {"factors": [0, 2], "samples": 4}, tmp_path / "other",
                         on_progress=lambda done, total: progress.append(done))
    assert progress == [1, 2, 3, 4] and {c["ei_factor"] for c in other["cells"]} == {0.0, 2.0}


def test_a_stopped_drop_add_analysis_resumes_from_its_sums(tmp_path):
    """nb037 sums over test batches: a resume starts from the saved sums at the next batch."""
    run = untrained(tmp_path / "run", Config(n_e=100, n_i=25, t_ms=50.0, ei_strength=0.2, tier="smoke", batch_size=4))
    params = {"fractions": [0.5], "samples": 12}
    with pytest.raises(AnalysisCancelled):  # after the first of 3 batches
        run_analysis("drop_add_spikes", run, params, tmp_path / "out", should_stop=lambda: True)
    state = tmp_path / "out" / "resume_state.pt"
    assert 0 < state.stat().st_size < 1_000_000  # population counts, not trains (those were 7 MB here)
    progress = []
    resumed = run_analysis("drop_add_spikes", run, params, tmp_path / "out",
                           on_progress=lambda done, total: progress.append((done, total)))
    assert progress == [(2, 3), (3, 3)]
    whole = run_analysis("drop_add_spikes", run, params, tmp_path / "whole")
    assert resumed["cells"] == whole["cells"] and resumed["done"] == 3
    assert not (tmp_path / "out" / "resume_state.pt").exists()  # finished: nothing left to resume


def test_a_state_saved_by_an_older_version_is_not_resumed(tmp_path):
    import torch

    run = untrained(tmp_path / "run", Config(n_e=60, n_i=15, t_ms=50.0, ei_strength=0.2, tier="smoke", batch_size=4))
    params = {"fractions": [0.5], "samples": 8}
    with pytest.raises(AnalysisCancelled):
        run_analysis("drop_add_spikes", run, params, tmp_path / "out", should_stop=lambda: True)
    state = torch.load(tmp_path / "out" / "resume_state.pt")
    torch.save({"sums": state["sums"], "batches": state["batches"]}, tmp_path / "out" / "resume_state.pt")  # format 1
    progress = []
    run_analysis("drop_add_spikes", run, params, tmp_path / "out", on_progress=lambda d, n: progress.append(d))
    assert progress == [1, 2]  # from the first batch again


@pytest.mark.parametrize("name, params", [
    ("fi_curve", {"input_scales": [0.5, 1.0]}),
    ("loop_transfer", {"loop_scales": [0.0, 0.5, 1.0]}),
    ("rate_vs_gamma", {"tau_gaba_scales": [0.5, 1.0, 2.0]}),
    ("dt_audit", {"dts_ms": [0.1, 0.2, 0.25]}),
])
def test_analyses_with_ordered_cells_resume_at_the_next_cell(untrained_run, tmp_path, name, params):
    params = {**params, "samples": 4}
    with pytest.raises(AnalysisCancelled):  # stops after its first cell
        run_analysis(name, untrained_run, params, tmp_path / "out", should_stop=lambda: True)
    progress = []
    resumed = run_analysis(name, untrained_run, params, tmp_path / "out",
                           on_progress=lambda done, total: progress.append(done))
    assert progress[0] == 2  # the first cell was not run again
    whole = run_analysis(name, untrained_run, params, tmp_path / "whole")
    assert resumed["cells"] == whole["cells"] and resumed.get("summary") == whole.get("summary")


def test_a_stopped_phase_shuffle_resumes_at_the_next_batch(tmp_path):
    """nb042 ran from its first batch again after every server restart (hours on a 100-epoch
    seed run); its shuffles draw per batch, so a resumed result equals an uninterrupted one."""
    run = untrained(tmp_path / "run", Config(n_e=60, n_i=15, t_ms=50.0, ei_strength=0.2, tier="smoke", batch_size=4))
    params = {"samples": 12}
    with pytest.raises(AnalysisCancelled):  # after the first of 3 batches
        run_analysis("phase_shuffle", run, params, tmp_path / "out", should_stop=lambda: True)
    progress = []
    resumed = run_analysis("phase_shuffle", run, params, tmp_path / "out",
                           on_progress=lambda done, total: progress.append((done, total)))
    assert progress == [(2, 3), (3, 3)]
    whole = run_analysis("phase_shuffle", run, params, tmp_path / "whole")
    assert resumed["cells"] == whole["cells"] and resumed["summary"] == whole["summary"]


def test_a_stopped_analysis_of_a_training_run_resumes_on_the_weights_it_began_with(untrained_run, tmp_path):
    """`weights=last` of a run that trains on: the next attempt used to find a newer checkpoint,
    start over on it, and so never finish while the run trained (nb037 on the study's runs)."""
    import torch

    run = RunDir(untrained_run)
    weights = run.load_weights("final")
    run.save_checkpoint({"weights": weights, "epoch": 3})
    params = {"factors": [0, 1], "samples": 4, "weights": "last"}
    with pytest.raises(AnalysisCancelled):  # stops after its first cell, on epoch 3
        run_analysis("coupling_sweep", untrained_run, params, tmp_path / "out", should_stop=lambda: True)
    run.save_checkpoint({"weights": {k: 2 * v for k, v in weights.items()}, "epoch": 4})  # trained on meanwhile
    progress = []
    resumed = run_analysis("coupling_sweep", untrained_run, params, tmp_path / "out",
                           on_progress=lambda done, total: progress.append(done))
    assert progress == [2, 3, 4] and resumed["weights_epoch"] == 3
    whole = run_analysis("coupling_sweep", untrained_run, {**params, "weights": "final"}, tmp_path / "whole")
    assert resumed["cells"] == whole["cells"]  # epoch 3's weights throughout
    assert not (tmp_path / "out" / "analysed_weights.pt").exists()  # finished: the pin is let go
    # the next analysis into the same folder takes the latest checkpoint
    again = run_analysis("coupling_sweep", untrained_run, params, tmp_path / "out")
    assert again["weights_epoch"] == 4 and again["cells"] != whole["cells"]
