import json

import pytest

from engine import Config, init_weights
from engine.analyses.registry import ANALYSES, AnalysisCancelled, AnalysisError, run_analysis
from engine.evaluate import evaluate
from engine.inspect import test_subset as subset_of
from engine.rundir import RunDir


@pytest.fixture
def untrained_run(tmp_path):
    """A run folder whose 'final' weights are the initial ones (no training needed)."""
    config = Config(n_e=100, n_i=25, t_ms=100.0, ei_strength=0.2, tier="smoke")
    run = RunDir(tmp_path / "run")
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
