"""Study presets: expansion, overrides, and every preset run end to end at the
smoke tier with a tiny network, report included."""

import csv
import io

import pytest

from engine import Config, init_weights
from engine.rundir import RunDir
from engine.studies import PRESETS, StudyError, expand, list_presets
from engine.studies.local import run_study_local
from engine.studies.report import build_report, classify, entries_from_folder, report_csv, report_markdown

TINY = {"tier": "smoke", "epochs": 1, "n_e": 40, "n_i": 10, "t_ms": 20.0, "batch_size": 200}
# grids cut to two points per axis, analyses to a few images
SMALL_GRIDS = {
    "nb024": {"seed": [42]},
    "nb041": {"tau_gaba_ms": [4.5, 18.0], "samples": 8},
    "nb044": {"arch": ["ping"], "dt_ms": [0.1, 0.5], "dts_ms": [0.1, 0.5], "samples": 8},
    "nb036": {"ei_strength": [0.0, 0.2], "ie_strength": [0.0, 1.0], "samples": 8},
}

SHORT_ANALYSES = {"coupling": {"factors": [0, 1]}, "nb038": {"input_scales": [0, 1]}, "nb037": {"fractions": [0.25]}}


def test_presets_expand_to_the_study():
    nb024 = expand("nb024")
    assert [r.label for r in nb024.runs] == ["ping-seed42", "ping-seed43", "ping-seed44",
                                             "coba-seed42", "coba-seed43", "coba-seed44"]
    assert all(r.config["tier"] == "medium" and r.config["epochs"] == 100 for r in nb024.runs)
    # the study's own model by default (MODEL.md, last section), the canonical one an override away
    assert {r.config["recipe"] for r in nb024.runs} == {"seed"}
    assert {r.config["ei_strength"] for r in nb024.runs} == {1.0, 0.0}
    canonical = expand("nb024", {"recipe": "canonical"})
    assert {(r.config["recipe"], r.config["ei_strength"], r.config["n_e"]) for r in canonical.runs} == {
        ("canonical", 0.05, 800), ("canonical", 0.0, 800)}
    assert all(r.config["recipe"] == "seed" for name in ("nb041", "nb044", "nb036") for r in expand(name).runs)
    # nb036's strengths are in each recipe's own units: 0 .. 2 x its defaults
    assert expand("nb036").grid["ei_strength"] == [0.0, 0.25, 0.5, 1.0, 2.0]
    assert expand("nb036", {"recipe": "canonical"}).grid["ei_strength"] == [0.0, 0.0125, 0.025, 0.05, 0.1]
    assert expand("nb036", {"recipe": "canonical", "ei_strength": [0.3]}).grid["ei_strength"] == [0.3]
    assert len(expand("nb036").runs) == 25 and len(expand("nb044").runs) == 8 and len(expand("nb041").runs) == 5
    assert sorted({r.config["dt_ms"] for r in expand("nb044").runs}) == [0.05, 0.1, 0.25, 0.5]
    for name in ("coupling", "nb042", "nb037", "nb038"):
        plan = expand(name)
        assert plan.needs_source and not plan.runs and plan.analyses
    assert expand("coupling").analyses[0].params["factors"] == [0, 0.25, 0.5, 1, 2, 4, 6, 8, 10]
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


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_runs_at_the_smoke_tier(name, tmp_path, source_run):
    plan, report = run_preset(name, tmp_path / name, source_run)
    assert all(r["state"] == "succeeded" for r in report["runs"])
    assert all(a["complete"] for a in report["analyses"])
    assert len(report["analyses"]) == max(1, len(plan.runs)) * len(plan.analyses)
    if plan.runs:
        table = report["seed_table"]
        assert [row["label"] for row in table] == [r.label for r in plan.runs]
        for row in table:
            assert row["epochs"] == 1 and 0 <= row["final_acc_pct"] <= 100 and row["final_rate_e_hz"] >= 0
            assert isinstance(row["converged_rate_e"], bool) and row["slope_window"] == 1
        for budget in report["spike_budget"]:
            assert budget["rate_e_plus_i_hz"] == pytest.approx(budget["rate_e_hz"] + budget["rate_i_hz"])
            assert budget["per_cell_total_hz"] == pytest.approx((40 * budget["rate_e_hz"] + 10 * budget["rate_i_hz"]) / 50)
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
