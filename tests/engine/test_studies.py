"""Study presets: expansion, overrides, and every preset run end to end at the
smoke tier with a tiny network, report included."""

import csv
import io

import pytest

from engine import Config, init_weights
from engine.data import load_tier
from engine.evaluate import evaluate
from engine.rundir import RunDir
from engine.studies import PRESETS, StudyError, expand, list_presets
from engine.studies.local import run_study_local
from engine.studies.report import (build_report, classify, entries_from_folder, rate_vs_gamma_section, report_csv,
                                   report_markdown, seed_row, spike_budget,
                                   spike_budget_so_far)

TINY = {"tier": "smoke", "epochs": 1, "n_e": 40, "n_i": 10, "t_ms": 20.0, "batch_size": 200}
# grids cut to two points per axis, analyses to a few images
SMALL_GRIDS = {
    "nb024": {"seed": [42]},
    "nb041": {"tau_gaba_ms": [4.5, 18.0], "seed": [42], "samples": 8},
    "nb044": {"arch": ["ping"], "dt_ms": [0.1, 0.5], "dts_ms": [0.1, 0.5], "samples": 8},
    "nb036": {"ei_strength": [0.0, 0.2], "ie_strength": [0.0, 1.0], "samples": 8},
}

SHORT_ANALYSES = {"coupling": {"factors": [0, 1]}, "nb038": {"input_scales": [0, 1], "loop_scales": [0, 1]}, "nb037": {"fractions": [0.25]}}


def test_presets_expand_to_the_study():
    nb024 = expand("nb024")
    assert [r.label for r in nb024.runs] == ["ping-seed42", "ping-seed43", "ping-seed44",
                                             "coba-seed42", "coba-seed43", "coba-seed44"]
    assert all(r.config["tier"] == "medium" and r.config["epochs"] == 100 for r in nb024.runs)
    # the study's own model by default (MODEL.md, last section), the canonical one an override away
    assert {(r.config["recipe"], r.config["ei_strength"], r.config["n_e"]) for r in nb024.runs} == {
        ("seed", 1.0, 1024), ("seed", 0.0, 1024)}
    canonical = expand("nb024", {"recipe": "canonical"})
    assert {(r.config["recipe"], r.config["ei_strength"], r.config["n_e"]) for r in canonical.runs} == {
        ("canonical", 0.05, 800), ("canonical", 0.0, 800)}
    assert all(r.config["recipe"] == "seed" for name in ("nb041", "nb044", "nb036") for r in expand(name).runs)
    # nb036's strengths are in each recipe's own units: 0 .. 2 x its defaults
    assert expand("nb036").grid["ei_strength"] == [0.0, 0.25, 0.5, 1.0, 2.0]
    assert expand("nb036", {"recipe": "canonical"}).grid["ei_strength"] == [0.0, 0.0125, 0.025, 0.05, 0.1]
    assert expand("nb036", {"recipe": "canonical", "ei_strength": [0.3]}).grid["ei_strength"] == [0.3]
    assert len(expand("nb036").runs) == 25 and len(expand("nb044").runs) == 8 and len(expand("nb041").runs) == 15
    assert sorted({r.config["seed"] for r in expand("nb041").runs}) == [42, 43, 44]  # the fit needs seeds
    assert sorted({r.config["dt_ms"] for r in expand("nb044").runs}) == [0.05, 0.1, 0.25, 0.5]
    # canonical: nb036's open-loop edges (ei = 0 or ie = 0) train undamped, like COBA (MODEL.md
    # "Gradients"); the seed recipe dampens by 1000 whatever the loop (MODEL.md, last section)
    for run in expand("nb036", {"recipe": "canonical"}).runs:
        closed = run.point["ei_strength"] > 0 and run.point["ie_strength"] > 0
        assert run.config["v_grad_dampen"] == (1000.0 if closed else 1.0), run.label
    assert {run.config["v_grad_dampen"] for run in expand("nb036").runs} == {1000.0}
    for name in ("coupling", "nb042", "nb037", "nb038"):
        plan = expand(name)
        assert plan.needs_source and not plan.runs and plan.analyses
    assert expand("coupling").analyses[0].params["factors"] == [0, 0.25, 0.5, 1, 2, 4, 6, 8, 10]
    # nb038: the f-I curves and the seed's inference-time loop transfer (strength 0, 0.1 .. 1)
    nb038 = expand("nb038").analyses
    assert [a.name for a in nb038] == ["fi_curve", "loop_transfer"]
    assert nb038[1].params["loop_scales"] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert {p["name"] for p in list_presets()} == set(PRESETS) == {
        "nb024", "coupling", "nb041", "nb042", "nb037", "nb038", "nb044", "nb036"}


def test_overrides_are_routed_by_key():
    plan = expand("nb024", {"tier": "small", "epochs": 5, "seed": [7], "n_e": 50})
    assert [r.label for r in plan.runs] == ["ping-seed7", "coba-seed7"]
    assert all((r.config["tier"], r.config["epochs"], r.config["n_e"]) == ("small", 5, 50) for r in plan.runs)
    assert expand("nb042", {"samples": 10}).analyses[0].params["samples"] == 10
    assert expand("nb041", {"samples": 10}).analyses[0].params["samples"] == 10


@pytest.mark.parametrize("name, overrides, field", [
    ("nope", {}, "name"),
    ("nb024", {"colour": 1}, "colour"),
    ("nb024", {"seed": 42}, "seed"),  # a grid axis takes a list
    ("nb024", {"n_e": -1}, "n_e"),
    ("nb024", {"tier": "huge"}, "tier"),
    ("nb042", {"tier": "small"}, "tier"),  # an inference preset trains nothing
    ("coupling", {"factors": [-1]}, "factors"),
    ("nb036", {"ei_strength": list(range(10)), "ie_strength": list(range(10))}, "grid"),
])
def test_bad_overrides_name_the_key(name, overrides, field):
    with pytest.raises(StudyError) as err:
        expand(name, overrides)
    assert err.value.field == field


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    """Untrained weights saved as a finished run: enough for the inference presets."""
    config = Config(n_e=40, n_i=10, t_ms=60.0, ei_strength=0.2, tier="smoke")  # 60 ms: room for a spectrum
    run = RunDir(tmp_path_factory.mktemp("source") / "run")
    run.create(config)
    run.save_arrays("weights_final", {k: v.numpy() for k, v in init_weights(config).items()})
    return run.root


def run_preset(name, out, source_run):
    overrides = dict(TINY, **SMALL_GRIDS.get(name, {})) if PRESETS[name].grid else {"samples": 8}
    overrides.update(SHORT_ANALYSES.get(name, {}))
    plan = expand(name, overrides)
    run_study_local(plan, out, source_run=source_run, log=lambda line: None)
    report = build_report(plan.to_dict(), entries_from_folder(out))
    return plan, report


def out_of(name, tmp_path):
    return tmp_path / name


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_runs_at_the_smoke_tier(name, tmp_path, source_run):
    plan, report = run_preset(name, out_of(name, tmp_path), source_run)
    assert all(r["state"] == "succeeded" for r in report["runs"])
    assert all(a["complete"] for a in report["analyses"])
    assert len(report["analyses"]) == max(1, len(plan.runs)) * len(plan.analyses)
    if plan.runs:
        table = report["seed_table"]
        assert [row["label"] for row in table] == [r.label for r in plan.runs]
        first = plan.runs[0]
        row = table[0]
        # the table's figures are those of the run's final weights, evaluated afresh here
        config = Config.from_dict(first.config)
        again = evaluate({k: v.to(config.torch_dtype) for k, v in RunDir(out_of(name, tmp_path) / "runs" / first.label)
                          .load_weights("final").items()}, load_tier(config.tier).test, config)
        assert row["epochs"] == 1 and row["final_acc_pct"] == again.accuracy_pct
        assert row["final_rate_e_hz"] == pytest.approx(again.rate_e_hz) and row["final_rate_e_hz"] > 0
        assert row["final_rate_i_hz"] == pytest.approx(again.rate_i_hz)
        # one spike-budget row per grid point other than the seed
        points = {tuple(v for k, v in r.point.items() if k != "seed") for r in plan.runs}
        assert len(report["spike_budget"]) == len(points)
        assert all(row["converged_rate_e"] is None and row["slope_window"] == 1 for row in table)  # 1 epoch: no verdict
    markdown = report_markdown(report)
    assert markdown.startswith(f"# {name}:")
    rows = list(csv.DictReader(io.StringIO(report_csv(report))))
    assert rows and len(rows) == (len(plan.runs) if plan.runs else sum(len(a["cells"]) for a in report["analyses"]))
    if name == "nb036":
        classes = {(r["ei_strength"], r["ie_strength"]): r["class"] for r in report["ei_grid"]["rows"]}
        assert classes[(0.0, 1.0)] == classes[(0.2, 0.0)] == "no loop"  # I silent / cut
    if name == "coupling":
        assert [d["scale"] for d in report["coupling"]["diagonal"]] == [0.0, 1.0]


def test_a_finished_run_is_not_trained_again_but_can_be_extended(tmp_path, source_run):
    plan, _ = run_preset("nb024", tmp_path, source_run)
    metrics = tmp_path / "runs" / "ping-seed42" / "metrics.jsonl"
    first = metrics.read_text()
    run_study_local(plan, tmp_path, log=lambda line: None)
    assert metrics.read_text() == first
    longer = expand("nb024", dict(TINY, seed=[42], arch=["ping"], epochs=2))
    run_study_local(longer, tmp_path, log=lambda line: None)
    assert metrics.read_text().startswith(first) and len(metrics.read_text().splitlines()) == 2


def test_classes_of_the_ei_grid():
    assert classify(0.0, {"rate_i_hz": 30.0, "gamma_prominence": 9.0}) == "no loop"
    assert classify(1.0, {"rate_i_hz": 0.0, "gamma_prominence": 9.0}) == "no loop"
    assert classify(1.0, {"rate_i_hz": 30.0, "gamma_prominence": 9.0}) == "PING"
    assert classify(1.0, {"rate_i_hz": 30.0, "gamma_prominence": 1.5}) == "stretched COBA"
    assert classify(1.0, {"rate_i_hz": 30.0, "gamma_prominence": None}) == "stretched COBA"


def _run_entry(point, config, metrics, analyses=None):
    return {"label": "x", "point": point, "config": config, "state": "succeeded", "metrics": metrics,
            "analyses": analyses or {}}


def test_spike_budget_pools_seeds_not_grid_points():
    """Hand-computed: two seeds of one grid point pool, another point stays apart."""
    def entry(ei, seed, rate_e, rate_i):
        return _run_entry({"ei_strength": ei, "seed": seed}, {"arch": "ping", "n_e": 800, "n_i": 200},
                          [{"rate_e_hz": rate_e, "rate_i_hz": rate_i}])

    rows = spike_budget([entry(0.05, 42, 10.0, 30.0), entry(0.05, 43, 20.0, 50.0), entry(0.1, 42, 4.0, 60.0)],
                        ["ei_strength"])
    by_ei = {r["ei_strength"]: r for r in rows}
    assert by_ei[0.05]["runs"] == 2 and by_ei[0.05]["rate_e_hz"] == 15.0 and by_ei[0.05]["rate_i_hz"] == 40.0
    assert by_ei[0.05]["rate_e_plus_i_hz"] == 55.0 and by_ei[0.05]["per_cell_total_hz"] == 20.0  # (800*15+200*40)/1000
    assert by_ei[0.1]["runs"] == 1 and by_ei[0.1]["per_cell_total_hz"] == pytest.approx(15.2)  # (3200+12000)/1000


def test_a_study_in_progress_tabulates_its_runs_so_far():
    """100-epoch runs train for hours: the seed table shows each run's latest epoch
    and its state; the spike budget of finished runs waits for them, the one so far does not."""
    metrics = [{"epoch": n, "test_acc": 50.0 + n, "rate_e_hz": 9.0, "rate_i_hz": 30.0, "train_acc": 0, "train_loss": 0,
                "test_loss": 0, "active_frac_e": 1, "active_frac_i": 1} for n in (1, 2, 3)]
    plan = {"name": "nb024", "overrides": {}, "runs": [{"label": "ping-seed42"}, {"label": "ping-seed43"}],
            "grid": {"arch": ["ping"], "seed": [42, 43]}, "analyses": []}
    config = {"arch": "ping", "seed": 42, "n_e": 800, "n_i": 200}
    running = dict(_run_entry({"arch": "ping", "seed": 42}, config, metrics), label="ping-seed42", state="running")
    queued = dict(_run_entry({"arch": "ping", "seed": 43}, dict(config, seed=43), []), label="ping-seed43",
                  state="queued")
    report = build_report(plan, [running, queued])
    assert [(r["label"], r["epochs"], r["final_acc_pct"], r["state"]) for r in report["seed_table"]] == [
        ("ping-seed42", 3, 53.0, "running")]
    assert report["spike_budget"] == []
    assert "running" in report_csv(report)
    # until every run has finished, the budget of each run's latest epoch stands beside it
    so_far = report["spike_budget_so_far"]
    assert [(r["group"], r["runs"], r["epochs"], r["rate_e_hz"], r["rate_i_hz"], r["seeds"], r["at_epoch"])
            for r in so_far] == [("ping", 1, "3", 9.0, 30.0, "42", 3)]
    assert "## Spike budget so far" in report_markdown(report)
    finished = build_report(plan, [dict(running, state="succeeded")])
    assert "spike_budget_so_far" not in finished and finished["spike_budget"][0]["epochs"] == "3"


def test_the_budget_so_far_compares_seeds_begun_everywhere_at_the_epoch_they_share():
    """nb024 at scale: PING 42 at epoch 5, COBA 42 at 3, PING 43 at 2, COBA 43 queued. The
    budget so far pooled each run's latest epoch (PING 42's 5th with PING 43's 2nd against
    COBA's 3rd); now seed 42 alone, both archs at epoch 3."""
    def metrics(n, rate_e):  # rate_e + epoch, so the epoch read shows in the rate
        return [{"epoch": k, "rate_e_hz": rate_e + k, "rate_i_hz": 10.0 * k} for k in range(1, n + 1)]

    def entry(arch, seed, n, rate_e):
        return dict(_run_entry({"arch": arch, "seed": seed}, {"arch": arch, "seed": seed, "n_e": 80, "n_i": 20},
                               metrics(n, rate_e)), state="running" if n else "queued")

    entries = [entry("ping", 42, 5, 8.0), entry("coba", 42, 3, 70.0), entry("ping", 43, 2, 6.0),
               entry("coba", 43, 0, 60.0)]
    rows = {r["arch"]: r for r in spike_budget_so_far(entries, ["arch"])}
    assert {a: (r["runs"], r["rate_e_hz"], r["rate_i_hz"], r["seeds"], r["at_epoch"]) for a, r in rows.items()} == {
        "ping": (1, 11.0, 30.0, "42", 3), "coba": (1, 73.0, 30.0, "42", 3)}
    entries[3] = entry("coba", 43, 1, 60.0)  # seed 43 has begun both: both seeds, at epoch 1
    rows = {r["arch"]: r for r in spike_budget_so_far(entries, ["arch"])}
    assert (rows["ping"]["runs"], rows["ping"]["rate_e_hz"], rows["ping"]["seeds"]) == (2, 8.0, "42, 43")
    assert spike_budget_so_far([entry("ping", 42, 5, 8.0), entry("coba", 42, 0, 70.0)], ["arch"]) == []


def test_converged_flags_follow_the_last_ten_epoch_slopes():
    """12 epochs, accuracy rising 0.5 pp/epoch (not converged), E rate 0.01 Hz/epoch (converged)."""
    metrics = [{"epoch": n, "test_acc": 50 + 0.5 * n, "rate_e_hz": 9 + 0.01 * n, "rate_i_hz": 30.0, "train_acc": 0,
                "train_loss": 0, "test_loss": 0, "active_frac_e": 1, "active_frac_i": 1} for n in range(1, 13)]
    row = seed_row(_run_entry({}, {"arch": "ping", "seed": 42}, metrics))
    assert row["acc_slope_pp_per_epoch"] == pytest.approx(0.5) and row["converged_acc"] is False
    assert row["rate_e_slope_hz_per_epoch"] == pytest.approx(0.01) and row["converged_rate_e"] is True
    flat = [dict(m, test_acc=88.0, rate_e_hz=9.0 + (0.2 if m["epoch"] % 2 else -0.2)) for m in metrics]
    row = seed_row(_run_entry({}, {"arch": "ping", "seed": 42}, flat))
    assert row["converged_acc"] is True and row["slope_window"] == 10


def test_rate_vs_gamma_fits_per_seed_with_the_spread_across_seeds():
    """nb041: seed 42 lies on rate = 2 + 0.1 f, seed 43 on rate = 4 + 0.3 f (hand-made):
    slopes 0.1 / 0.3 (mean 0.2, sd 0.1414), intercepts 2 / 4 (mean 3, sd 1.414)."""
    def entry(seed, f, rate):
        cell = {"rate_e_hz": rate, "rate_i_hz": 30.0, "gamma_peak_hz": f, "gamma_prominence": 5.0, "test_acc": 80.0}
        return _run_entry({"tau_gaba_ms": 1000 / f, "seed": seed}, {"arch": "ping"}, [],
                          {"rate_vs_gamma": {"cells": [cell]}})

    entries = [entry(42, f, 2 + 0.1 * f) for f in (40.0, 60.0)] + [entry(43, f, 4 + 0.3 * f) for f in (40.0, 50.0, 60.0)]
    section = rate_vs_gamma_section(entries)
    slopes = {f["seed"]: f["slope_hz_per_hz"] for f in section["per_seed"]}
    assert slopes == {42: pytest.approx(0.1), 43: pytest.approx(0.3)}
    spread = section["spread"]
    assert spread["seeds"] == 2 and spread["slope_hz_per_hz_mean"] == pytest.approx(0.2)
    assert spread["slope_hz_per_hz_sd"] == pytest.approx(2 ** 0.5 / 10)
    assert spread["intercept_hz_mean"] == pytest.approx(3.0) and spread["intercept_hz_sd"] == pytest.approx(2 ** 0.5)
    assert section["fit"]["points"] == 5


def test_cliff_position_and_dt_summary_against_hand_computed_values():
    from engine.studies.report import cliff_position, dt_summary

    # E 40 Hz at ie 0, 36 at 0.25, 8 at 0.5, 6 at 1: halfway (40 + 6) / 2 = 23 is crossed
    # between 0.25 and 0.5, at 0.25 + 0.25 * (36 - 23) / (36 - 8) = 0.36607
    assert cliff_position([0.0, 0.25, 0.5, 1.0], [40.0, 36.0, 8.0, 6.0]) == pytest.approx(0.25 + 0.25 * 13 / 28)
    assert cliff_position([0.0, 1.0], [5.0, 5.0]) is None
    # PING trained at dt 0.1 / 0.5: E 9 and 13 Hz, cycle 20 and 24 ms: slopes 10 Hz/ms and 10 ms/ms;
    # the run at 0.1 evaluated at 0.5 is not part of the reading
    rows = [{"arch": "ping", "dt_ms": 0.1, "trained_dt_ms": 0.1, "rate_e_hz": 9.0, "cycle_ms": 20.0},
            {"arch": "ping", "dt_ms": 0.5, "trained_dt_ms": 0.1, "rate_e_hz": 99.0, "cycle_ms": 99.0},
            {"arch": "ping", "dt_ms": 0.5, "trained_dt_ms": 0.5, "rate_e_hz": 13.0, "cycle_ms": 24.0}]
    (ping,) = dt_summary(rows)
    assert ping["dts_ms"] == [0.1, 0.5] and ping["rate_e_slope_hz_per_ms"] == pytest.approx(10.0)
    assert ping["cycle_slope_ms_per_ms"] == pytest.approx(10.0)


def test_report_figures_are_written_beside_the_markdown(tmp_path, source_run):
    """nb024's report holds the seed entry's figures: trajectories, ||W||_F and
    grad-ratio per epoch, per-cell rate and weight histograms, as PNG files."""
    from engine.studies.figures import figures_markdown, write_figures

    plan, _ = run_preset("nb024", tmp_path, source_run)
    figures = write_figures(tmp_path, entries_from_folder(tmp_path))
    names = {path for _, path in figures}
    for label in ("ping-seed42", "coba-seed42"):
        assert {f"figures/{label}-norms.png", f"figures/{label}-cell-rates.png", f"figures/{label}-weights.png"} <= names
    assert "figures/trajectories.png" in names
    for path in names:
        assert (tmp_path / path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![" in figures_markdown(figures)


def test_presets_run_their_recipe_on_a_backend_that_has_it():
    """The fast backend runs both recipes on every device, so a preset left to pick
    runs either on it; the reference backend stays one override away."""
    assert {r.config["backend"] for r in expand("nb024").runs} == {"fast"}
    assert {r.config["backend"] for r in expand("nb024", {"recipe": "canonical"}).runs} == {"fast"}
    assert {r.config["backend"] for r in expand("nb024", {"device": "cuda"}).runs} == {"fast"}
    assert {r.config["backend"] for r in expand("nb024", {"backend": "reference"}).runs} == {"reference"}


def test_the_report_says_where_forward_euler_was_unstable():
    cells = [{"ei_factor": s, "ie_factor": s, "rate_e_hz": 1.0, "euler_step_max": h} for s, h in ((1.0, 0.2), (8.0, 20.6))]
    report = {"name": "coupling", "title": "t", "overrides": {}, "runs": [], "analyses": [],
              "coupling": {"cells": cells, "diagonal": cells}}
    assert "in 1 of 2 cells: their rates are the integrator's" in report_markdown(report)
    report["coupling"]["cells"] = cells[:1]
    assert "integrator's" not in report_markdown(report)
