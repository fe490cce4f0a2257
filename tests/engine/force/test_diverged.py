"""A diverged run (NaN/inf output) says so in result.json and on the FORCE page,
instead of a null error and success False that read like a pending or failed point."""

import json
import math

from engine.force import measures
from engine.force.results import write_json


def test_a_non_finite_error_is_diverged_in_result_json(tmp_path):
    finite = measures.network_result(1e-4, 1000, 5e-5, 1, 20.0)
    assert finite["diverged"] is False and finite["success"] is True
    for bad in (math.nan, math.inf):
        result = measures.network_result(bad, 1000, 5e-5, 1, math.nan)
        write_json(tmp_path / "result.json", {"lif": result})
        stored = json.loads((tmp_path / "result.json").read_text())["lif"]
        assert stored["diverged"] is True and stored["success"] is False
        assert stored["test_error"] is None and stored["log10_error"] is None and stored["rmse"] is None


def test_the_page_says_diverged():
    from app.dashboard import force_plots
    from app.dashboard.force_page import _fmt_result

    diverged = json.loads(json.dumps(measures.network_result(math.nan, 10, 5e-5, 1, 1.0), allow_nan=True)
                          .replace("NaN", "null"))
    done = measures.network_result(1e-4, 1000, 5e-5, 1, 20.0)
    result = {"points": [{"q": 5.0, "g": 0.1, "lif": diverged, "rate": done}]}
    heat = force_plots.grid_heatmap(result, [5.0, 10.0], [0.1], "lif", "log10_error", (-6, -3), None)
    labels = list(heat.get(1).data["text"])
    assert labels == ["diverged", "…"]  # the pending point (Q 10) keeps its ellipsis
    assert _fmt_result(diverged, "test_error") == "diverged" and _fmt_result(diverged, "success") == "diverged"
    assert _fmt_result(done, "success") == "yes"
