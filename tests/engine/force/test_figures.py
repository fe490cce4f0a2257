"""Grid figures: each point lands in its (Q, G) cell, successes and missing points are marked."""

import math

from engine.force.figures import grid_arrays, write_grid_figure


def _result():
    cell = lambda e, ok: {"log10_error": e, "success": ok}  # noqa: E731
    return {"experiment": "grid", "q_values": [2.0, 10.0], "g_values": [0.0, 0.1, 0.2],
            "params": {"config": {"n": 30, "alpha": 5e-6}},
            "points": [{"q": 10.0, "g": 0.2, "lif": cell(-5.5, True), "rate": cell(-4.5, False),
                        "decoder_fit": {"r": 0.6}},
                       {"q": 2.0, "g": 0.1, "lif": cell(None, False), "rate": cell(-6.0, True),
                        "decoder_fit": {"r": None}}]}


def test_points_land_in_their_cells(tmp_path):
    a = grid_arrays(_result())
    assert a["lif"][1, 2] == -5.5 and a["rate"][1, 2] == -4.5 and a["decoder_r"][1, 2] == 0.6
    assert a["lif_success"][1, 2] and not a["rate_success"][1, 2] and a["rate_success"][0, 1]
    assert math.isnan(a["lif"][0, 1]) and math.isnan(a["lif"][0, 0]) and math.isnan(a["decoder_r"][0, 1])
    out = write_grid_figure(tmp_path / "grid.png", [_result()], ["slow"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
