"""Study presets through the real server: queue, advance, finish, report."""

import base64
import csv
import json
import io
import re
import time

import httpx

from tests.conftest import small_config

TINY = {k: v for k, v in small_config(epochs=1).items() if k != "arch"}


def wait_study(http: httpx.Client, study_id: str, timeout_s: float = 240) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        study = http.get(f"/api/studies/{study_id}").json()
        if study["state"] in ("succeeded", "failed", "cancelled"):
            return study
        assert time.monotonic() < deadline, f"study still {study['state']}: {study['members']}"
        time.sleep(0.5)


def test_bad_study_requests(queue_only_server):
    with httpx.Client(base_url=queue_only_server.url) as http:
        presets = http.get("/api/studies/presets").json()
        assert presets["count"] == 8 and {"nb024", "coupling", "nb036"} <= {p["name"] for p in presets["data"]}
        nb024 = next(p for p in presets["data"] if p["name"] == "nb024")
        assert nb024["base"] == {"recipe": "seed", "tier": "medium", "epochs": 100} and nb024["grid"]["seed"] == [42, 43, 44]
        assert http.post("/api/studies/presets/nope", json={}).status_code == 404
        bad = http.post("/api/studies/presets/nb024", json={"overrides": {"colour": 1}})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "overrides", "colour"]
        bad = http.post("/api/studies/presets/nb024", json={"overrides": {"n_e": 0}})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "overrides", "n_e"]
        bad = http.post("/api/studies/presets/nb042", json={})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "source_run_id"]
        assert http.post("/api/studies/presets/nb042", json={"source_run_id": "missing"}).status_code == 404
        assert http.post("/api/studies/presets/nb024", json={"extra": 1}).status_code == 422
        assert http.get("/api/studies/missing").status_code == 404
        assert http.get("/api/studies/missing/report.md").status_code == 404


def test_queued_study_is_cancelled_with_its_runs(queue_only_server):
    with httpx.Client(base_url=queue_only_server.url) as http:
        study = http.post("/api/studies/presets/nb024", json={"overrides": {**TINY, "seed": [42, 43]}}).json()
        assert study["state"] == "running" and [m["label"] for m in study["members"]] == [
            "ping-seed42", "ping-seed43", "coba-seed42", "coba-seed43"]
        cancelled = http.post(f"/api/studies/{study['id']}/cancel").json()
        assert cancelled["state"] == "cancelled" and all(m["state"] == "cancelled" for m in cancelled["members"])
        assert http.post(f"/api/studies/{study['id']}/cancel").status_code == 409


def test_a_study_runs_to_its_report(server_factory):
    server = server_factory()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        # one PING run, then (queued by the server once it succeeds) its gamma analysis
        created = http.post("/api/studies/presets/nb041", json={"overrides": {
            **TINY, "t_ms": 60.0, "tau_gaba_ms": [9.0], "seed": [42], "samples": 8,
            "recipe": "canonical"}})  # canonical: nb042 below refuses seed-recipe runs (docs/studies.md)
        assert created.status_code == 201, created.text
        study = wait_study(http, created.json()["id"])
        assert study["state"] == "succeeded" and study["progress"] == 1.0
        assert [(m["role"], m["label"]) for m in study["members"]] == [
            ("train", "tau_gaba_ms9.0-seed42"), ("analysis", "tau_gaba_ms9.0-seed42")]
        report = http.get(f"/api/studies/{study['id']}/report").json()
        assert report["state"] == "succeeded" and len(report["seed_table"]) == 1
        assert report["rate_vs_gamma"]["rows"][0]["tau_gaba_ms"] == 9.0
        markdown = http.get(f"/api/studies/{study['id']}/report.md")
        assert markdown.headers["content-type"].startswith("text/markdown")
        assert markdown.text.startswith("# nb041:") and "## Seed table" in markdown.text
        # the seed entry's figures travel inside the served Markdown (issue 17, item 14)
        figures = dict(re.findall(r"!\[([^\]]+)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown.text))
        label = "tau_gaba_ms9.0-seed42"
        assert set(figures) == {"Trajectories: accuracy against E rate per epoch",
                                f"{label}: ||W||_F and grad / W per epoch",
                                f"{label}: per-cell E and I rates (test set)",
                                f"{label}: W_in and W_out at init and at the end"}
        for png in figures.values():
            data = base64.b64decode(png)
            assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 2000
        rows = list(csv.DictReader(io.StringIO(http.get(f"/api/studies/{study['id']}/report.csv").text)))
        assert len(rows) == 1 and rows[0]["label"] == "tau_gaba_ms9.0-seed42" and "inference.gamma_peak_hz" in rows[0]

        # an inference preset on the trained run
        trained = study["members"][0]["run_id"]
        shuffle = http.post("/api/studies/presets/nb042", json={"source_run_id": trained, "overrides": {"samples": 8}})
        assert shuffle.status_code == 201, shuffle.text
        done = wait_study(http, shuffle.json()["id"])
        assert done["state"] == "succeeded" and done["source_run_id"] == trained
        analyses = http.get(f"/api/studies/{done['id']}/report").json()["analyses"]
        assert analyses[0]["name"] == "phase_shuffle" and analyses[0]["complete"]
        assert analyses[0]["summary"]["samples"] == 8
        assert http.get("/api/studies").json()["count"] == 2


def test_cli_lists_queues_and_runs_studies(tmp_path, capsys):
    from app.cli import main
    from engine import Config, init_weights
    from engine.rundir import RunDir
    from jobs.paths import DataDir
    from jobs.store import RunStore

    assert main(["study"]) == 0 and "nb036" in capsys.readouterr().out
    data = tmp_path / "data"
    assert main(["study", "nb024", "--data-dir", str(data), "--tier", "smoke", "--epochs", "1",
                 "--set", "seed=[42]"]) == 0
    queued = json.loads(capsys.readouterr().out)
    store = RunStore(DataDir.at(data).db_path)
    try:
        study = store.get_study(queued["study_id"])
        assert [m.label for m in study.members] == ["ping-seed42", "coba-seed42"] == [
            r["label"] for r in study.plan["runs"]]
        assert all(r["config"]["tier"] == "smoke" and r["config"]["epochs"] == 1 for r in study.plan["runs"])
    finally:
        store.close()
    assert main(["study", "nb024", "--data-dir", str(data), "--set", "colour=1"]) == 2
    assert "colour" in capsys.readouterr().err

    config = Config(n_e=40, n_i=10, t_ms=60.0, ei_strength=0.2, tier="smoke")
    source = RunDir(tmp_path / "source")
    source.create(config)
    source.save_arrays("weights_final", {k: v.numpy() for k, v in init_weights(config).items()})
    out = tmp_path / "nb042"
    assert main(["study", "nb042", "--local", str(out), "--source", str(source.root), "--set", "samples=4"]) == 0
    assert capsys.readouterr().out.startswith("# nb042:")
    report = json.loads((out / "report.json").read_text())
    assert report["analyses"][0]["summary"]["samples"] == 4
    assert (out / "report.md").exists() and (out / "report.csv").read_text().startswith("analysis,")
