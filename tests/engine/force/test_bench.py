"""`spikeboard bench force` runs end to end at a tiny size and reports per-point seconds and ratios."""

import json

from app.cli import main


def test_bench_force_reports_both_loops(capsys):
    assert main(["bench", "force", "--n", "30", "--batches", "1", "2", "--fraction", "0.0004", "--json"]) == 0
    out = capsys.readouterr().out
    report = json.loads(out.strip().splitlines()[-1])
    assert {(r["backend"], r["batch"]) for r in report["rows"]} == {
        (b, n) for b in ("reference", "compiled") for n in (1, 2)}
    assert all(r["per_point_s"] > 0 for r in report["rows"])
    assert [s["batch"] for s in report["summary"]] == [1, 2] and "x at the same batch" in out


def test_bench_force_profiles_the_compiled_pieces(capsys):
    assert main(["bench", "force", "--n", "30", "--profile", "2", "--json"]) == 0
    out = capsys.readouterr().out
    row, = json.loads(out.strip().splitlines()[-1])["profile"]
    assert row["batch"] == 2 and all(row[k] > 0 for k in ("gemm_us", "lif_step_us", "rate_step_us"))
    assert "rate gemm" in out and "per update and point" in out
